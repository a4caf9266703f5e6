"""Where backends plug in: the web layer talks to an AET only through `IBackend`.

An interface module holds contracts only: it imports no implementation.  The DIMSE
backend (`dicomrst.backends.pacs`), the S3 backend (`dicomrst.backends.s3`) and the
LOCAL backend (`dicomrst.backends.local`) provide it, and so does the tests' fake.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from dicomrst.backends.values import ObjectRange, StoreOutcome, UploadedInstance
from dicomrst.common.identifiers import Found
from dicomrst.common.interfaces import IInstanceConsumer, IInstanceSink
from dicomrst.common.uids import STUDY_ROOT_FIND


class IBackend(Interface):
    """One configured AET (``aets[]``): a PACS reached over DIMSE, an S3 bucket, or a
    LOCAL directory."""

    aet: str = Attribute("The AE title this backend is published under (``/aets/{aet}``).")
    kind: str = Attribute('"DIMSE", "S3" or "LOCAL".')
    retrieve_syntaxes: tuple[str, ...] = Attribute(
        "The transfer syntaxes retrieved instances may arrive in, best first: a WADO-RS "
        "request none of which can be answered as asked is a 406 before anything moves."
    )
    store_concurrency: int = Attribute(
        "How many instances of one STOW-RS upload may be stored at once (``pool.size`` for "
        "DIMSE, ``concurrency`` for S3, a few file writers for LOCAL)."
    )

    def echo() -> Deferred[float]:
        """Check the backend is alive; fire with the round trip in milliseconds.

        Errbacks with `dicomrst.errors.UpstreamError` (refused, rejected, aborted) or
        `dicomrst.errors.UpstreamTimeout`.
        """

    def find(
        identifier: Dataset,
        *,
        limit: int | None,
        on_result: Callable[[Found], None],
        model: str = STUDY_ROOT_FIND,
    ) -> Deferred[None]:
        """Run a C-FIND of the information model `model` (the FIND SOP Class UID: Study
        Root for QIDO-RS, ``MODALITY_WORKLIST_FIND`` for MWL-RS) with `identifier` (it
        carries SpecificCharacterSet, match keys with values, return keys empty, and
        QueryRetrieveLevel for Study Root).  Call `on_result` with each match's identifier
        in PACS order, as it arrives: a decoded pydicom Dataset, or a `RawIdentifier` (the
        bytes as received; a `DataSetError` its decoding raises in `on_result` fails the
        find as the PACS's protocol error).  After `limit` results, stop pulling (C-CANCEL)
        and fire.  Fires None on success; errbacks with `dicomrst.errors.UpstreamError` (the
        message names the PACS status, e.g. 'C-FIND failed with status 0xA700 (Out of
        resources)'), `UpstreamTimeout`,
        `ServiceUnavailable(retry_after=…)` or `NotImplementedService` (a backend that cannot
        search; a backend that holds no worklist answers a worklist find with
        `ServiceUnavailable`).  Cancelling the Deferred cancels the find."""

    def retrieve(
        study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[int]:
        """Deliver the instances of a study, series or instance to `sink` as they arrive
        (`IInstanceSink` says how); fire once every instance was handed on, with how
        many were.

        Errbacks with `NotFound` (no such study, series or instance), `UpstreamError`,
        `UpstreamTimeout` or `ServiceUnavailable`; cancelling the Deferred stops the
        retrieve (C-CANCEL, or the downloads are dropped)."""

    def store_instance(instance: UploadedInstance) -> Deferred[StoreOutcome]:
        """Store one checked STOW-RS instance; fire with its outcome (a failure status is
        an outcome, not an errback).  Errbacks only with `ServiceUnavailable` when the
        backend cannot be reached at all (no association / connection could be had)."""

    def stop() -> Deferred[None]:
        """Release every association or connection held; called once at shutdown."""


class IRangedReads(Interface):
    """An optional capability of an `IBackend` that stores each instance as one Part-10
    object it can read any byte range of (S3: ``GET`` with ``Range``).

    Frames and bulk data use it on a cache miss (`dicomrst.wado.ranged`): the object's
    head to locate the values, then only their bytes, instead of the whole object.  A
    backend declares it with ``@implementer(IBackend, IRangedReads)``; the caller asks
    ``IRangedReads.providedBy(backend)``.
    """

    def read_range(
        study: str, series: str, sop: str, start: int, stop: int, *, version: str | None = None
    ) -> Deferred[ObjectRange]:
        """Bytes ``[start, stop)`` of the object of instance `sop` (fewer when the object
        ends first), with the object's size and version.

        `version`: the `ObjectRange.version` of an earlier read; the read fails with
        `ObjectChanged` when the object is no longer that version.  Errbacks with
        `NotFound` (no such object), `RangesRefused` (the store answered without a
        range), `UpstreamError`, `UpstreamTimeout` or `ServiceUnavailable`; cancelling the
        Deferred drops the read."""


class IIndexedSearch(Interface):
    """An optional capability of an `IBackend` whose searches run in a database (LOCAL and
    S3, through the index).  Its ``find`` matches every key of the identifier itself, as
    the gateway's own result filters would (`dicomrst.qido.query.Query.filters`, written
    for a PACS that may ignore keys): no key is ignored, an empty or absent attribute never
    matches a key with a value, and a date range with the time range of its pair (xDate
    and xTime, at the top level or in one sequence's items) is combined date-time matching
    (PS3.4 C.2.2.2.5).  So the gateway filters nothing, and ``find`` takes ``offset`` too:
    a QIDO-RS page far into the results costs the database's OFFSET, not a decoded result
    per skipped match."""

    def find(
        identifier: Dataset,
        *,
        limit: int | None,
        on_result: Callable[[Found], None],
        model: str = STUDY_ROOT_FIND,
        offset: int = 0,
    ) -> Deferred[None]:
        """`IBackend.find`, skipping the first `offset` matches."""


class IInstanceIntake(Interface):
    """Takes instances pushed into an archive AET (a ``server.dimse[]`` listener with
    ``store-to``), each as its data set arrives.

    The LOCAL backend provides it itself (the data set streams into a temporary file in
    its directory); any other backend that stores instances is given one that spools to a
    temporary file and then calls `IBackend.store_instance`
    (`dicomrst.backends.intake.SpoolingIntake`).
    """

    def receive(
        sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str
    ) -> IInstanceConsumer:
        """Open one instance (its data set in `transfer_syntax`, no file meta; `source_aet`
        the calling AE title); its consumer's ``done`` fires with the C-STORE status once
        the instance is stored durably (or was refused: a failure status), never earlier.
        Raises to refuse the instance at once."""

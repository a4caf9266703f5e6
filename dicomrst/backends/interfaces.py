"""Where backends plug in: the web layer talks to an AET only through IBackend."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from dicomrst.dimse.retrieve import InstanceSink
from dicomrst.stow.model import StoreOutcome, UploadedInstance


class IBackend(Interface):
    """One configured AET (``aets[]``): a PACS reached over DIMSE, or an S3 bucket."""

    aet: str = Attribute("The AE title this backend is published under (``/aets/{aet}``).")
    kind: str = Attribute('"DIMSE" or "S3".')

    def echo() -> Deferred[float]:
        """Check the backend is alive; fire with the round trip in milliseconds.

        Errbacks with `dicomrst.errors.UpstreamError` (refused, rejected, aborted) or
        `dicomrst.errors.UpstreamTimeout`.
        """

    def find(
        identifier: Dataset, *, limit: int | None, on_result: Callable[[Dataset], None]
    ) -> Deferred[None]:
        """Run a Study Root C-FIND with `identifier` (it carries QueryRetrieveLevel,
        SpecificCharacterSet, match keys with values and return keys empty).  Call
        `on_result` with each match's identifier (a decoded pydicom Dataset) in PACS order, as
        it arrives.  After `limit` results, stop pulling (C-CANCEL) and fire.  Fires None on
        success; errbacks with `dicomrst.errors.UpstreamError` (the message names the PACS status, e.g.
        'C-FIND failed with status 0xA700 (Out of resources)') → 502, `UpstreamTimeout` → 504,
        `ServiceUnavailable(retry_after=…)` → 503.  Cancelling the Deferred cancels the find."""

    def retrieve(
        study: str, series: str | None, instance: str | None, *, sink: InstanceSink
    ) -> Deferred[object]:
        """Deliver the instances of a study, series or instance to `sink` as they arrive:
        `sink.begin(sop_class_uid, sop_instance_uid, transfer_syntax)` per instance, then
        the instance's data set (without preamble and file meta) through the returned
        consumer; an instance counts as delivered when the consumer's `done` fires.
        Errbacks with `UpstreamError` (502), `UpstreamTimeout` (504), `NotFound` (404) or
        `ServiceUnavailable` (503); cancelling the Deferred stops the retrieve."""

    def store_instance(instance: UploadedInstance) -> Deferred[StoreOutcome]:
        """Store one checked STOW-RS instance; fire with its outcome (a failure status is
        an outcome, not an errback).  Errbacks only with `ServiceUnavailable` when the
        backend cannot be reached at all (no association / connection could be had)."""

    def stop() -> Deferred[None]:
        """Release every association or connection held; called once at shutdown."""

"""The contract between the backends that keep objects (LOCAL, S3) and the index."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from zope.interface import Interface


@attrs.frozen
class InstanceRow:
    """What the index writes for one record: column values per level, and the attributes."""

    study: dict[str, object]
    series: dict[str, object]
    instance: dict[str, object]
    attributes: str  # a DICOM JSON object


@attrs.frozen
class IndexRecord:
    """One stored object as the index keeps it.

    :ivar key: where the object is, relative to its AET's root: the S3 object key or the
        LOCAL path under ``aets[].path`` (``{study}/{series}/{sop}.dcm``).
    :ivar stamp: what changes when the object does: the S3 ETag, or
        ``"{mtime_ns}:{size}"`` for a file; the reconcile scan compares it.
    :ivar attributes: the object's data set up to (not including) Pixel Data, bulk values
        included or not as the producer read them; the index keeps what QIDO-RS can ask
        for (``includefield=all`` answers from it).  Read it, never change it: the records
        made by `dicomrst.index.records` share their decoded elements.  None when `row`
        is given.
    :ivar attributes_json: what the index stores of `attributes` (a DICOM JSON object),
        when the producer made it while reading them (`dicomrst.index.records`); None: the
        index makes it.
    :ivar row: what the index writes, when the producer made it from the object's bytes
        (the reconcile scans: `dicomrst.index.records.record_from_head` with ``raw``),
        the same as it would make from `attributes`.
    """

    aet: str
    study: str
    series: str
    sop_instance: str
    sop_class: str
    transfer_syntax: str
    key: str
    stamp: str
    size: int
    attributes: Dataset | None = attrs.field(eq=False, repr=False)
    attributes_json: str | None = attrs.field(default=None, eq=False, repr=False)
    row: InstanceRow | None = attrs.field(default=None, eq=False, repr=False)


class IIndex(Interface):
    """A searchable record of stored objects, for any number of AETs.

    Every method may be called on the reactor and never blocks it: database work runs in
    a thread of the index's own (SQLite) or a bounded pool (PostgreSQL).
    """

    def start() -> Deferred[None]:
        """Open the database, create or migrate the schema; errback (naming ``index.url``)
        when it cannot be opened or its schema is newer than this code knows."""

    def stop() -> Deferred[None]:
        """Finish what is under way and close; called once at shutdown."""

    def add(record: IndexRecord) -> Deferred[str | None]:
        """Insert or replace the record of ``(record.aet, record.sop_instance)``; fire once
        it is committed (durable: a crash after it fires does not lose it), with the
        ``key`` of the record it replaced (None: there was none).  A reconcile scan
        finding one instance under two keys learns so from it."""

    def add_many(records: list[IndexRecord]) -> Deferred[list[str | None]]:
        """`add` for each record, in order, committed together (as many per transaction as
        the index takes at once): what a reconcile scan uses.  Fire with each `add`'s
        result; of two records of one instance the later wins, and neither learns of
        the other."""

    def remove(aet: str, sop_instance: str) -> Deferred[bool]:
        """Delete one record; fire with whether there was one."""

    def remove_key(aet: str, key: str) -> Deferred[bool]:
        """Delete the record of the object at `key` (one a reconcile scan no longer
        finds: the scan knows keys, not what they held); fire with whether there was one."""

    def find(
        aet: str,
        identifier: Dataset,
        *,
        limit: int | None,
        offset: int,
        on_result: Callable[[Dataset], None],
    ) -> Deferred[None]:
        """Answer a C-FIND identifier (Study Root, QueryRetrieveLevel STUDY, SERIES or
        IMAGE) over the records of `aet`, with the matching rules of PS3.4 C.2.2.2 as a
        PACS applies them: call `on_result` with each match's identifier (the return keys
        filled), in a stable order, after skipping `offset`, at most `limit`."""

    def stamps(aet: str) -> Deferred[dict[str, str]]:
        """Every record's ``key`` → ``stamp`` for `aet`: what the reconcile scan compares
        the store with."""

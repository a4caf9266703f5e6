# -*- test-case-name: tests.unit.test_local -*-
"""Storing into a LOCAL directory: STOW-RS uploads and C-STOREs pushed to a listener with
``store-to``, on one durable path.

An instance is read up to its pixel data as the reconcile scan reads files
(`dicomrst.index.records.record_from_head`: what the index keeps; an object it cannot
read is refused, not stored), written under a temporary name (a STOW-RS upload: from
its part, in a thread, read before it is written; a C-STORE: its file meta, then each
data set fragment as it comes off the association, read back once written), fsynced,
given its final name (`dicomrst.backends.local.files.place`), its directory fsynced (one
fsync for the names placed meanwhile: `dicomrst.backends.local.syncs`), and then added to
the index (whose writes group the rows of the instances waiting).  Only when the index
has committed its row is the instance reported stored: a crash before leaves a file the
index does not know (the reconcile scan finds it), never an index row without its file.

At most `DISK_CONCURRENCY` instances of an AET are written and fsynced at once (each
holds a thread); one waiting for its directory's fsync or its index commit holds none.

An object already stored under the same SOP Instance UID is left alone: the same bytes
are success (a client retrying), different ones `FAILURE_CONFLICT`, as on S3.

C-STORE fragments are appended to their file on the reactor, as the instance cache does
(`dicomrst.cache.store`): one PDU's worth into the page cache costs less than a thread
hop, and the peer waits for our C-STORE-RSP anyway.  Everything that can wait on the disk
(fsync, the read back, directories, the link) runs in a thread.
"""

from __future__ import annotations

import errno
import os

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.backends.local.files import (
    InvalidObject,
    Placed,
    TemporaryObject,
    copy_into,
    make_directories,
    object_key,
    place,
    read_record,
    read_upload_record,
    safe_uid,
    stamp_of,
)
from dicomrst.backends.local.syncs import DirectorySyncs
from dicomrst.backends.local.threads import Threads
from dicomrst.backends.values import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_CONFLICT,
    FAILURE_OUT_OF_RESOURCES,
    FAILURE_PROCESSING,
    SUCCESS,
    StoreOutcome,
    UploadedInstance,
)
from dicomrst.common.interfaces import IInstanceConsumer
from dicomrst.common.part10 import file_meta
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.logs import logger

log = logger("dicomrst.local")

#: Instances of an AET written and fsynced at once (each holds a thread meanwhile; the
#: disk gained nothing from 8 in the index-stow bench).  An instance waiting for its
#: directory's fsync or its index commit holds none.
DISK_CONCURRENCY = 4

#: OS errors that mean the disk (or the user's quota) is full: out of resources, which
#: invites a retry later, rather than a processing failure.
_FULL = frozenset((errno.ENOSPC, errno.EDQUOT))


@attrs.frozen
class Written:
    """What the blocking part of a store did."""

    placed: Placed
    directory: str  # where it was placed (to be fsynced)
    study: str
    series: str
    # What the index gets (its key and stamp filled once the file has its name).
    record: IndexRecord = attrs.field(eq=False, repr=False)


class LocalStore:
    """Stores instances under `root` for AET `aet`, recording each in `index` (None: no
    index configured, files only)."""

    def __init__(
        self,
        aet: str,
        root: str,
        threads: Threads,
        index: IIndex | None,
        token: str,
        disk_concurrency: int = DISK_CONCURRENCY,
    ) -> None:
        self.aet = aet
        self.root = root
        self.threads = threads
        self.index = index
        self.token = token
        # Shared by every upload and association of the AET: what bounds its disk threads.
        self.disk = DeferredSemaphore(disk_concurrency)
        self.syncs = DirectorySyncs(threads)

    # -- STOW-RS -----------------------------------------------------------------------------

    async def store(self, instance: UploadedInstance) -> StoreOutcome:
        sop_class, sop = instance.sop_class_uid, instance.sop_instance_uid
        study, series = instance.study_instance_uid, instance.series_instance_uid
        if not series:
            return StoreOutcome(sop_class, sop, FAILURE_CANNOT_UNDERSTAND, "no Series Instance UID")
        if not (safe_uid(study) and safe_uid(series) and safe_uid(sop)):
            return StoreOutcome(sop_class, sop, FAILURE_CANNOT_UNDERSTAND, "a UID is not valid")
        try:
            written = await self.disk.run(self.threads.run, self._write_upload, instance, study, series)
        except Exception as e:
            return self.failed(sop_class, sop, e)
        return await self._stored(written, sop_class, sop, instance.transfer_syntax)

    def _write_upload(self, instance: UploadedInstance, study: str, series: str) -> Written:
        """Blocking: read the upload's record, write it into a temporary file in its series
        directory, place it."""
        record = read_upload_record(instance.open(), instance.size, self.aet)
        directory = make_directories(self.root, study, series)
        temporary = TemporaryObject(directory, instance.sop_instance_uid, self.token)
        try:
            if instance.data is not None:
                temporary.write(instance.data)  # not copied through a stream first
            else:
                copy_into(temporary, instance.open())
            temporary.finish()
        except BaseException:
            temporary.discard()
            raise
        target = os.path.join(directory, f"{instance.sop_instance_uid}.dcm")
        return Written(place(temporary.path, target), directory, study, series, record)

    # -- C-STORE (IInstanceIntake) ---------------------------------------------------------

    def receive(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str
    ) -> IInstanceConsumer:
        if not safe_uid(sop_instance_uid):
            raise InvalidObject(f"SOP Instance UID {sop_instance_uid!r} is not valid")
        return _Received(self, sop_class_uid, sop_instance_uid, transfer_syntax, source_aet)

    def _finish_received(self, temporary: TemporaryObject, sop: str) -> Written:
        """Blocking: make the received file durable, read where it belongs, commit."""
        try:
            temporary.finish()
            record = read_record(temporary.path, self.aet)
            study, series = record.study, record.series
            # The file meta was written from the command; the data set says what it holds.
            assert record.attributes is not None  # read_record reads with pydicom
            found = str(record.attributes.get("SOPInstanceUID", ""))
            if not (safe_uid(study) and safe_uid(series)):
                raise InvalidObject(f"no valid Study/Series Instance UID ({study!r}, {series!r})")
            if found != sop:
                raise InvalidObject(f"the data set's SOP Instance UID {found!r} is not the command's {sop!r}")
            directory = make_directories(self.root, study, series)
        except BaseException:
            temporary.discard()
            raise
        target = os.path.join(directory, f"{sop}.dcm")
        return Written(place(temporary.path, target), directory, study, series, record)

    async def finish_received(
        self, temporary: TemporaryObject, sop_class: str, sop: str, transfer_syntax: str
    ) -> StoreOutcome:
        try:
            written = await self.disk.run(self.threads.run, self._finish_received, temporary, sop)
        except Exception as e:
            return self.failed(sop_class, sop, e)
        return await self._stored(written, sop_class, sop, transfer_syntax)

    # -- both ----------------------------------------------------------------------------------

    def failed(self, sop_class: str, sop: str, error: Exception) -> StoreOutcome:
        if isinstance(error, InvalidObject):
            log.warn("{aet}: instance {sop} refused: {why}", aet=self.aet, sop=sop, why=str(error))
            return StoreOutcome(sop_class, sop, FAILURE_CANNOT_UNDERSTAND, str(error))
        if isinstance(error, OSError):
            why = f"cannot write into {self.root}: {error.strerror or error}"
            log.warn("{aet}: instance {sop} not stored: {why}", aet=self.aet, sop=sop, why=why)
            status = FAILURE_OUT_OF_RESOURCES if error.errno in _FULL else FAILURE_PROCESSING
            return StoreOutcome(sop_class, sop, status, why)
        log.failure("{aet}: storing {sop} failed", Failure(error), aet=self.aet, sop=sop)
        return StoreOutcome(sop_class, sop, FAILURE_PROCESSING, str(error))

    async def _stored(self, written: Written, sop_class: str, sop: str, transfer_syntax: str) -> StoreOutcome:
        key = object_key(written.study, written.series, sop)
        placed = written.placed
        if placed.stored:
            # Its name is durable once its directory is fsynced (also when it was found
            # there: another store's may be placed, and not yet durable).
            try:
                await self.syncs.sync(written.directory)
            except Exception as e:
                return self.failed(sop_class, sop, e)
        else:
            log.warn("{aet}: {key} exists with different content; not overwritten", aet=self.aet, key=key)
            return StoreOutcome(
                sop_class,
                sop,
                FAILURE_CONFLICT,
                "an instance with this SOP Instance UID is stored with different content",
            )
        assert placed.stat is not None
        if self.index is not None:
            # As the reconcile scan would read the file: same key, stamp and attributes.
            record = attrs.evolve(
                written.record, key=key, stamp=stamp_of(placed.stat), size=placed.stat.st_size
            )
            try:
                await self.index.add(record)
            except Exception as e:
                # The file is durable; the reconcile scan (or the client's retry, which
                # finds the same bytes) indexes it later.  Not reported stored meanwhile.
                log.warn("{aet}: {key} written but not indexed: {why}", aet=self.aet, key=key, why=str(e))
                return StoreOutcome(sop_class, sop, FAILURE_PROCESSING, f"stored, but not indexed: {e}")
        if placed.existed:
            return StoreOutcome(sop_class, sop, SUCCESS, "already stored with the same content")
        log.info("{aet}: stored {key} ({size} bytes)", aet=self.aet, key=key, size=placed.stat.st_size)
        return StoreOutcome(sop_class, sop, SUCCESS)


@implementer(IInstanceConsumer)
class _Received:
    """One C-STORE's data set into a temporary file in the root; ``done`` fires with the
    C-STORE status once it is stored durably and indexed (or refused)."""

    def __init__(
        self, store: LocalStore, sop_class: str, sop: str, transfer_syntax: str, source_aet: str
    ) -> None:
        self.store = store
        self.sop_class = sop_class
        self.sop = sop
        self.transfer_syntax = transfer_syntax
        self.done: Deferred[int] = Deferred()
        self.error: OSError | None = None
        header = file_meta(sop_class, sop, transfer_syntax, source_aet or None)
        self.temporary = TemporaryObject(store.root, sop, store.token)
        self._write(header)

    def _write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.temporary.write(data)
        except OSError as e:
            self.error = e

    def dataReceived(self, fragment: bytes) -> None:
        self._write(fragment)

    def dataFinished(self) -> None:
        if self.error is not None:
            self.temporary.discard()
            outcome = self.store.failed(self.sop_class, self.sop, self.error)
            self.done.callback(outcome.status)
            return
        stored = Deferred.fromCoroutine(
            self.store.finish_received(self.temporary, self.sop_class, self.sop, self.transfer_syntax)
        )
        stored.addCallback(lambda outcome: self.done.callback(outcome.status))
        stored.addErrback(self._crashed)

    def _crashed(self, reason: Failure) -> None:
        log.failure("{aet}: storing {sop} failed", reason, aet=self.store.aet, sop=self.sop)
        if not self.done.called:
            self.done.callback(FAILURE_PROCESSING)

    def dataFailed(self, reason: Failure) -> None:
        # The association ended mid data set: nothing is stored.
        self.temporary.discard()
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)

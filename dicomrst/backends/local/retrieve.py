# -*- test-case-name: tests.unit.test_local -*-
"""WADO-RS from a LOCAL directory: files streamed to an `IInstanceSink`, one after the
other in key order (series UID, then SOP Instance UID, as S3 lists them).

Every read is one bounded ``pread`` in a thread (`CHUNK` bytes), never on the reactor.
The next chunk is read while the current one is handed on, and no further: a retrieve
holds at most two chunks, whatever the study's size.  The sink pauses the retrieve (it
is the sink's attached producer) when the HTTP client reads slower than the disk; then
no chunk is handed on and no new read starts until it resumes.

A metadata retrieve (a sink that does not want bulk data) reads only the head of an
object whose pixel data ends it (`without_bulk_tail`, as the S3 backend does).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.backends.local.threads import Threads
from dicomrst.backends.objects import NotDicomObject, parse_file_meta, without_bulk_tail
from dicomrst.common.deferreds import shielded
from dicomrst.common.interfaces import IInstanceConsumer, IInstanceSink
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.errors import NotAcceptable, UpstreamError
from dicomrst.logs import logger

log = logger("dicomrst.local")

T = TypeVar("T")

#: Bytes read at a time (and the head read first: it holds the file meta, and for
#: metadata usually everything up to the pixel data).
CHUNK = 512 << 10


class _File:
    """One file open for reading.  Its descriptor belongs to whichever thread job runs:
    closing waits for the job in flight (a cancelled read still ends in its thread)."""

    def __init__(self, threads: Threads, path: str) -> None:
        self.threads = threads
        self.path = path
        self.fd: int | None = None
        self.job: Deferred[Any] | None = None
        self.closed = False

    def _open(self, n: int) -> tuple[bytes, int]:
        fd = os.open(self.path, os.O_RDONLY)
        self.fd = fd
        return os.pread(fd, n, 0), os.fstat(fd).st_size

    def _read(self, offset: int, n: int) -> bytes:
        assert self.fd is not None
        return os.pread(self.fd, n, offset)

    def open(self, n: int) -> Deferred[tuple[bytes, int]]:
        """The first `n` bytes and the file's size."""
        return self._track(self.threads.run(self._open, n))

    def read(self, offset: int, n: int) -> Deferred[bytes]:
        return self._track(self.threads.run(self._read, offset, n))

    def _track(self, job: Deferred[T]) -> Deferred[T]:
        self.job = job

        def ended(result: object) -> object:
            if self.job is job:
                self.job = None
            if self.closed:
                self._close_now()
            return result

        job.addBoth(ended)
        return shielded(job)

    def close(self) -> None:
        self.closed = True
        if self.job is None:
            self._close_now()

    def _close_now(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


@implementer(IPushProducer)
class LocalRetrieval:
    """One retrieve: `paths` delivered to `sink` in order; `run` returns how many were."""

    def __init__(self, threads: Threads, sink: IInstanceSink, paths: list[str], *, single: bool) -> None:
        self.threads = threads
        self.sink = sink
        self.paths = paths
        self.single = single
        self.paused = False
        self.stopped = False
        self.delivered = 0
        self.missing = 0
        self.bytes_read = 0
        self._waiting: Deferred[None] | None = None

    # -- the sink's throttle (sink.attach) -----------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(CancelledError("the response was stopped"))

    def _flowing(self) -> Deferred[None]:
        """Fires once the sink is not paused (at once when it is not)."""
        if self.stopped:
            raise CancelledError("the response was stopped")
        if not self.paused:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> int:
        self.sink.attach(self)
        try:
            for path in self.paths:
                if self.stopped:
                    raise CancelledError("the response was stopped")
                await self._one(path)
            return self.delivered
        finally:
            self.sink.attach(None)

    async def _one(self, path: str) -> None:
        f = _File(self.threads, path)
        consumer: IInstanceConsumer | None = None
        pending: Deferred[bytes] | None = None
        try:
            try:
                head, size = await f.open(CHUNK)
            except FileNotFoundError:
                self.missing += 1  # removed since the listing
                if not self.single:
                    log.warn("LOCAL object {path} disappeared after listing; skipped", path=path)
                return
            except OSError as e:
                raise UpstreamError(f"cannot read LOCAL object {path}: {e.strerror or e}") from None
            self.bytes_read += len(head)
            try:
                parsed = parse_file_meta(head, complete=len(head) >= size)
            except NotDicomObject as e:
                raise NotDicomObject(f"LOCAL object {path} is not a DICOM file: {e}") from None
            if parsed is None:
                raise NotDicomObject(f"LOCAL object {path} is not a DICOM file: its file meta is too long")
            offset, sop_class, sop_instance, syntax = parsed
            body, end = head[offset:], size
            native = syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
            if not self.sink.wants_bulk_data and len(head) < size and native:
                cut = without_bulk_tail(head, offset, syntax == IMPLICIT_VR_LE, size)
                if cut is not None:
                    body, end = cut, len(head)
            try:
                consumer = self.sink.begin(sop_class, sop_instance, syntax)
            except Exception as e:
                if self.sink.gone:
                    raise CancelledError() from e
                if isinstance(e, NotAcceptable) and not self.sink.started:
                    raise  # a 406: the sink refuses the rest too
                log.warn("instance {path} not delivered: {why}", path=path, why=str(e))
                return
            position = len(head)
            data = body
            while True:
                # The next chunk is read while this one is handed on, never while paused.
                await self._flowing()
                pending = f.read(position, min(CHUNK, end - position)) if position < end else None
                consumer.dataReceived(data)
                if pending is None:
                    break
                try:
                    data = await pending
                except OSError as e:
                    raise UpstreamError(f"cannot read LOCAL object {path}: {e.strerror or e}") from None
                pending = None
                if not data:
                    raise UpstreamError(f"LOCAL object {path} ended at byte {position} of {size}")
                position += len(data)
                self.bytes_read += len(data)
            finished, consumer = consumer, None
            finished.dataFinished()
            try:
                await shielded(finished.done)
                self.delivered += 1
            except Exception as e:
                log.warn("instance {path} not delivered: {why}", path=path, why=str(e))
        except BaseException as e:
            if pending is not None:
                pending.addErrback(lambda _: None)  # a read nobody waits for any more
            if consumer is not None:
                consumer.dataFailed(Failure(e))
            raise
        finally:
            f.close()

# -*- test-case-name: tests.unit.test_cache -*-
"""The sinks through which retrieved instances reach the cache.

* `TeeSink` wraps the sink of a WADO-RS response (instances, metadata): each instance's
  data set goes into its cache entry and on to the response, fragment by fragment, in
  the caller's turn.  It adds no buffer and no producer of its own, so the response's
  throttle still pauses the source exactly as before.
* `FillSink` is where the cache's own series retrieve writes: entries only.
* `PrivateSink` takes one instance into an anonymous temporary file, for a caller that
  must not share it (an AET with ``cache: false``).

The sinks get an instance's data set without its file meta (`IInstanceSink.begin`); the
writers they are given start each file with the preamble and file meta for the transfer
syntax it arrives in, so every entry is a Part-10 file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import BinaryIO, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.cache.store import CachedInstance
from dicomrst.common.interfaces import STORE_SUCCESS, IInstanceConsumer, IInstanceSink
from dicomrst.common.part10 import file_meta


class Writer(Protocol):
    """Where one instance's bytes go (`dicomrst.cache.store.EntryWriter`, `PrivateWriter`)."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> object: ...

    def discard(self, why: str | None = None) -> None: ...


#: Opens the writer for one arriving instance (SOP class, SOP instance, transfer syntax),
#: or None when it is not to be written.
OpenWriter = Callable[[str, str, str], Writer | None]


@implementer(IInstanceConsumer)
class EntryConsumer:
    """One instance: into `writer` (if any) and on to `inner` (if any).

    The entry is committed when the data set is complete, whatever became of the
    response (a client that left does not make the data set less whole); one that fails
    midway is discarded, so only whole instances become entries.
    """

    def __init__(self, writer: Writer | None, inner: IInstanceConsumer | None) -> None:
        self.writer = writer
        self.inner = inner
        self.done: Deferred[int] = inner.done if inner is not None else Deferred()

    def dataReceived(self, fragment: bytes) -> None:
        if self.writer is not None:
            self.writer.write(fragment)
        if self.inner is not None:
            self.inner.dataReceived(fragment)

    def dataFinished(self) -> None:
        # The entry first: whoever waits for it is served before the response's part is
        # converted or written.
        if self.writer is not None:
            self.writer.commit()
        if self.inner is not None:
            self.inner.dataFinished()
        else:
            self.done.callback(STORE_SUCCESS)

    def dataFailed(self, reason: Failure) -> None:
        if self.writer is not None:
            self.writer.discard()
        if self.inner is not None:
            self.inner.dataFailed(reason)
        elif not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)


@implementer(IInstanceSink)
class TeeSink:
    """A response's sink whose instances are also written into the cache (`open_writer`).

    Everything but `begin` is the response's: its state (`started`, `gone`), its
    throttle (`attach`) and its end.
    """

    def __init__(self, inner: IInstanceSink, open_writer: OpenWriter) -> None:
        self.inner = inner
        self.open_writer = open_writer

    @property
    def started(self) -> bool:
        return self.inner.started

    @property
    def gone(self) -> bool:
        return self.inner.gone

    @property
    def wants_bulk_data(self) -> bool:
        return self.inner.wants_bulk_data

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> EntryConsumer:
        # Opened first, so the instance counts as arrived even when the response refuses it.
        writer = self.open_writer(sop_class_uid, sop_instance_uid, transfer_syntax)
        try:
            inner = self.inner.begin(sop_class_uid, sop_instance_uid, transfer_syntax)
        except BaseException:
            # Refused: the source reads the data set and drops it, so no entry either.
            if writer is not None:
                writer.discard()
            raise
        return EntryConsumer(writer, inner)

    def attach(self, producer: IPushProducer | None) -> None:
        self.inner.attach(producer)

    def finish(self) -> None:
        self.inner.finish()

    def fail(self, reason: str) -> None:
        self.inner.fail(reason)

    def abandon(self) -> None:
        self.inner.abandon()


@implementer(IInstanceSink)
class FillSink:
    """Where the cache's own retrieve of a series writes: each instance into its entry.

    Nothing here waits on a client, so nothing is paused: each fragment is appended to
    its file as it arrives.  `started` stays False: a retry on a fresh association (the
    pool's, after a stale one) only finds complete entries already there, and skips them.
    """

    wants_bulk_data = True
    started = False

    def __init__(self, open_writer: OpenWriter) -> None:
        self.open_writer = open_writer
        self.gone = False

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> EntryConsumer:
        if self.gone:
            raise ConnectionError("the cache's retrieve was stopped")
        return EntryConsumer(self.open_writer(sop_class_uid, sop_instance_uid, transfer_syntax), None)

    def attach(self, producer: IPushProducer | None) -> None:
        pass  # nothing to pause it for

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        self.gone = True


class PrivateWriter:
    """One instance into an anonymous temporary file (unlinked from the start, so it
    vanishes with its last descriptor).  A write that fails is kept in `error`."""

    def __init__(
        self, directory: str, aet: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
    ) -> None:
        header = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, aet)
        self.file: BinaryIO = tempfile.TemporaryFile(dir=directory)  # handed on open, or closed in discard
        self.instance = CachedInstance(
            self.file, aet, sop_class_uid, sop_instance_uid, transfer_syntax, len(header), 0
        )
        self.complete = False
        self.error: str | None = None
        self.write(header)

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.file.write(data)
        except OSError as e:
            self.error = f"cannot write a temporary file: {e.strerror or e}"
            return
        self.instance.size += len(data)

    def commit(self) -> CachedInstance | None:
        if self.error is None:
            try:
                self.file.flush()
                self.file.seek(0)
            except OSError as e:
                self.error = f"cannot write a temporary file: {e.strerror or e}"
        if self.error is not None:
            self.file.close()
            return None
        self.complete = True
        return self.instance

    def discard(self, why: str | None = None) -> None:
        self.file.close()


@implementer(IInstanceSink)
class PrivateSink:
    """An instance-level retrieve into a `PrivateWriter`: `result` once it arrived whole,
    `error` if it could not be written."""

    wants_bulk_data = True
    started = False

    def __init__(self, directory: str, aet: str, sop_instance_uid: str) -> None:
        self.directory = directory
        self.aet = aet
        self.sop_instance_uid = sop_instance_uid
        self.gone = False
        self.writer: PrivateWriter | None = None
        self._error: str | None = None

    @property
    def result(self) -> CachedInstance | None:
        if self.writer is None or not self.writer.complete:
            return None
        return self.writer.instance

    @property
    def error(self) -> str | None:
        if self._error is None and self.writer is not None:
            return self.writer.error
        return self._error

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> EntryConsumer:
        if self.gone:
            raise ConnectionError("the request went away")
        if sop_instance_uid != self.sop_instance_uid or self.writer is not None:
            raise ValueError(f"instance {sop_instance_uid} was not asked for")
        try:
            self.writer = PrivateWriter(
                self.directory, self.aet, sop_class_uid, sop_instance_uid, transfer_syntax
            )
        except (OSError, ValueError) as e:
            self._error = f"cannot keep instance {sop_instance_uid}: {e}"
            raise
        return EntryConsumer(self.writer, None)

    def attach(self, producer: IPushProducer | None) -> None:
        pass

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        self.gone = True
        self.close()

    def close(self) -> None:
        """Drop the file unless it was handed on (`result`)."""
        if self.writer is not None and not self.writer.complete:
            self.writer.discard()

# -*- test-case-name: tests.unit.test_wado_frames -*-
"""Study and series ``.../pixeldata``: the retrieve's instances, one at a time, for the
response to send frame by frame (PS3.18 §10.4.1.1.4).

`SpoolSink` is the retrieve's sink (given to `InstanceCache.retrieve`, so the cache fills
as a side effect): each arriving instance is written to an anonymous temporary file as a
Part-10 object and, once complete, handed to the response through `next`.  Its
C-STORE status (the consumer's ``done``) fires only when the response has sent it
(`Spooled.sent`): the source's next instance waits for the client, so at most the
instances in flight at once are on local disk, never the study.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO

import attrs
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.common.interfaces import STORE_OUT_OF_RESOURCES, STORE_SUCCESS, IInstanceConsumer, IInstanceSink
from dicomrst.common.part10 import file_meta
from dicomrst.errors import ServiceUnavailable
from dicomrst.imaging.elements import open_instance

SERIES_INSTANCE_UID = 0x0020000E


@attrs.define
class Spooled:
    """One complete instance in `file` (a Part-10 object, at offset 0); `sent` (or
    `dropped`) answers its C-STORE."""

    sop_instance_uid: str
    file: BinaryIO
    done: Deferred[int]

    def sent(self) -> None:
        self.file.close()
        self.answer(STORE_SUCCESS)

    def dropped(self) -> None:
        self.file.close()
        self.answer(STORE_OUT_OF_RESOURCES)

    def answer(self, status: int) -> None:
        """The C-STORE status alone (whoever reads `file` closes it)."""
        if not self.done.called:
            self.done.callback(status)


def series_of(source: BinaryIO) -> str:
    """The Series Instance UID of the Part-10 instance in `source` (blocking)."""
    stored = open_instance(source)
    try:
        element = stored.find(stored.top, SERIES_INSTANCE_UID)
        if element is None:
            return ""
        return stored.read_value(element).decode("ascii", "replace").strip(" \x00")
    finally:
        stored.close()


@implementer(IInstanceConsumer)
class _SpoolConsumer:
    def __init__(self, sink: SpoolSink, sop_class: str, sop: str, syntax: str) -> None:
        self.sink = sink
        self.sop = sop
        self.file: BinaryIO = tempfile.TemporaryFile(dir=sink.directory)
        self.file.write(file_meta(sop_class, sop, syntax))
        self.done: Deferred[int] = Deferred()

    def dataReceived(self, fragment: bytes) -> None:
        self.file.write(fragment)

    def dataFinished(self) -> None:
        self.file.flush()
        self.file.seek(0)
        spooled = Spooled(self.sop, self.file, self.done)
        if self.sink.gone:
            spooled.dropped()
            return
        self.sink.queue.put(spooled)

    def dataFailed(self, reason: Failure) -> None:
        self.file.close()
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)


@implementer(IInstanceSink)
class SpoolSink:
    """A retrieve's instances, each spooled whole, for a response that sends them one by
    one (see the module).  `ended` with the retrieve's result marks the end."""

    wants_bulk_data = True

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.started = False
        self.gone = False
        self.queue: DeferredQueue[Spooled | Failure | None] = DeferredQueue()

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> _SpoolConsumer:
        if self.gone:
            raise ServiceUnavailable("the response was abandoned")
        return _SpoolConsumer(self, sop_class_uid, sop_instance_uid, transfer_syntax)

    def attach(self, producer: IPushProducer | None) -> None:
        pass  # paced by the C-STORE statuses instead (see the module)

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        self.gone = True
        while self.queue.pending:
            item = self.queue.pending.pop(0)
            if isinstance(item, Spooled):
                item.dropped()

    def ended(self, result: object) -> None:
        """The retrieve ended with `result` (a count, or a Failure): after the instances."""
        self.queue.put(result if isinstance(result, Failure) else None)

    def next(self) -> Deferred[Spooled | Failure | None]:
        """The next complete instance; None at the end; a Failure if the retrieve failed."""
        return self.queue.get()

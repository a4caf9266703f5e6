"""An `IInstanceSink` that records what a retrieve delivers, for tests that run one in process,
and `StubRequest`, what the response sinks use of a twisted.web request."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dicomrst.common.interfaces import STORE_SUCCESS


class RecordingPart:
    """One instance as the sink got it; `done` fires with success at its end when the sink's
    `auto_done` is set, else the test fires it (an HTTP client still being written to)."""

    def __init__(self, sink: RecordingSink, sop_class: str, sop: str, ts: str) -> None:
        self.sink = sink
        self.sop_class = sop_class
        self.sop = sop
        self.ts = ts
        self.data: list[bytes] = []
        self.done: Deferred[int] = Deferred()
        self.finished = False

    @property
    def meta(self) -> tuple[str, str, str]:
        return self.sop_class, self.sop, self.ts

    def dataReceived(self, fragment: bytes) -> None:
        if self.sink.keep:
            self.data.append(fragment)

    def dataFinished(self) -> None:
        self.finished = True
        if self.sink.auto_done:
            self.done.callback(STORE_SUCCESS)

    def dataFailed(self, reason: Failure) -> None:
        self.done.errback(reason)
        self.done.addErrback(lambda _: None)


class RecordingSink:
    """Takes every instance at once and keeps it (`keep` False: keeps nothing, for fuzzing);
    `refuse` makes `begin` fail as for a client that has gone."""

    started = False
    gone = False
    wants_bulk_data = True

    def __init__(self, auto_done: bool = True, keep: bool = True) -> None:
        self.auto_done = auto_done
        self.keep = keep
        self.parts: list[RecordingPart] = []
        self.attached: list[Any] = []
        self.refuse = False

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        pass

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> RecordingPart:
        if self.refuse:
            raise ConnectionError("client gone")
        part = RecordingPart(self, sop_class_uid, sop_instance_uid, transfer_syntax)
        if self.keep:
            self.parts.append(part)
        return part

    def attach(self, producer: Any) -> None:
        if self.keep:
            self.attached.append(producer)

    @property
    def sops(self) -> list[str]:
        return [p.sop for p in self.parts]

    def data(self, sop: str) -> bytes:
        return b"".join(next(p for p in self.parts if p.sop == sop).data)


class StubRequest:
    """What `MultipartSink` and `MetadataSink` use of a twisted.web request: the status,
    the producer registered, and every write."""

    def __init__(self) -> None:
        self.transport = None
        self.written: list[bytes] = []
        self.producer: Any = None
        self.code: int | None = None

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

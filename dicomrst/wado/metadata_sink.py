# -*- test-case-name: tests.integration.test_wado_metadata -*-
"""WADO-RS metadata as it arrives: one DICOM JSON array, an object per retrieved instance.

`MetadataSink` is the `IInstanceSink` a metadata retrieve writes into (and, like the
multipart sink, the request's push producer, `ResponseThrottle`).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from dicomrst.common.interfaces import STORE_OUT_OF_RESOURCES, STORE_SUCCESS, IInstanceConsumer, IInstanceSink
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.uids import IMPLICIT_VR_LE
from dicomrst.common.walker import UIDPeeker
from dicomrst.logs import logger
from dicomrst.wado.metadata import instance_metadata_json
from dicomrst.wado.sinks import UNPEEKABLE
from dicomrst.wado.throttle import ResponseThrottle

log = logger("dicomrst.wado")


@implementer(IInstanceSink)
class MetadataSink(ResponseThrottle):
    """Retrieved instances written as one DICOM JSON array, an object per instance.

    Each instance is held until it is complete (the JSON needs the whole data set to
    place its BulkDataURIs), converted off the reactor, written, and dropped.  The source
    is answered (C-STORE-RSP) as soon as the conversion is under way, not when it is done:
    a PACS sends a series one instance at a time, each after the previous one's answer,
    so waiting for the conversion would make the retrieve as slow as converting the
    series.  At most `MAX_CONVERTING` instances are converted at once; the next one is
    answered only when one of those is done, which bounds what is held to that many
    data sets plus those arriving meanwhile.  A conversion that fails drops its instance
    (the response is cut off at the end, as before); `settled` says when all are done.
    """

    MAX_CONVERTING = 4

    # Pixel Data only ever becomes a BulkDataURI here, so a backend that can read just the
    # head of an object (S3, with a ranged GET) may hand over a placeholder instead.
    wants_bulk_data = False

    def __init__(
        self,
        request: Request,  # concrete: its producer and transport are used
        reactor: IGatewayReactor,
        media_type: str,
        location: str,
        study: str,
        series: str | None,
        abort: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.request = request
        self.reactor = reactor
        self.abort = abort
        self.media_type = media_type
        self.location = location
        self.study = study
        self.series = series
        self._converting = 0
        self._queued: list[tuple[Deferred[None], bytes, str, str, str]] = []
        self._settled: list[Deferred[None]] = []
        self._next_slot = 0  # the arrival number of the next conversion
        self._next_write = 0  # of the next object to write
        self._done: dict[int, bytes | None] = {}  # converted (None: failed), not yet written

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> MetadataConsumer:
        self.refuse_if_gone()
        return MetadataConsumer(self, sop_instance_uid, transfer_syntax)

    def write_object(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self.request.setResponseCode(200)
            self.request.setHeader(b"Content-Type", self.media_type.encode("ascii"))
            self.request.registerProducer(self, True)
            data = b"[" + data
        else:
            data = b"," + data
        self.parts += 1
        self.bytes += len(data)
        self.request.write(data)

    def finish(self) -> None:
        if self.started:
            self.bytes += 1
            self.request.write(b"]")
            self.request.unregisterProducer()

    def fail(self, reason: str) -> None:
        """Cut the started response off (the client sees a truncated body)."""
        if self.abort is not None:
            self.abort(reason)

    def settled(self) -> Deferred[None]:
        if not self._converting and not self._queued:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._settled.append(d)
        return d

    def convert(self, data: bytes, transfer_syntax: str, bulk_base: str, sop_instance: str) -> Deferred[None]:
        """Convert one complete data set and write it; fires when the source may be
        answered (the conversion began), not when it is done."""
        if self._converting < self.MAX_CONVERTING:
            self._begin(data, transfer_syntax, bulk_base, sop_instance)
            return succeed(None)
        ready: Deferred[None] = Deferred()
        self._queued.append((ready, data, transfer_syntax, bulk_base, sop_instance))
        return ready

    def _begin(self, data: bytes, transfer_syntax: str, bulk_base: str, sop_instance: str) -> None:
        self._converting += 1
        # Conversions run in several threads and may end in any order; objects are
        # written in the order their instances arrived, so the array's order is the
        # source's (the S3 key order, the PACS's), as it was when one ran at a time.
        slot = self._next_slot
        self._next_slot += 1
        reactor = self.reactor
        d = deferToThreadPool(
            reactor, reactor.getThreadPool(), instance_metadata_json, data, transfer_syntax, bulk_base
        )

        def failed(f: Failure) -> None:
            log.warn("cannot describe {uid}: {why}", uid=sop_instance, why=f.getErrorMessage())
            self.dropped += 1
            return None

        d.addCallbacks(lambda encoded: encoded, failed).addCallback(self._converted, slot)

    def _converted(self, encoded: bytes | None, slot: int) -> None:
        self._done[slot] = encoded
        while self._next_write in self._done:
            ready_object = self._done.pop(self._next_write)
            self._next_write += 1
            if ready_object is not None and not self.gone:
                self.write_object(ready_object)
        self._converting -= 1
        if self._queued:
            ready, data, transfer_syntax, bulk_base, sop_instance = self._queued.pop(0)
            self._begin(data, transfer_syntax, bulk_base, sop_instance)
            ready.callback(None)
        elif not self._converting:
            waiting, self._settled = self._settled, []
            for d in waiting:
                d.callback(None)


@implementer(IInstanceConsumer)
class MetadataConsumer:
    def __init__(self, sink: MetadataSink, sop_instance: str, transfer_syntax: str) -> None:
        self.sink = sink
        self.sop_instance = sop_instance
        self.transfer_syntax = transfer_syntax
        self.done: Deferred[int] = Deferred()
        self._parts: list[bytes] = []
        self._series = sink.series
        self._peeker: UIDPeeker | None = None
        if self._series is None and transfer_syntax not in UNPEEKABLE:
            self._peeker = UIDPeeker(implicit=transfer_syntax == IMPLICIT_VR_LE)

    def dataReceived(self, fragment: bytes) -> None:
        # The series UID is in the first kilobytes: look for it as they arrive rather
        # than copy the whole instance once more at the end.
        if self._peeker is not None and not self._peeker.done:
            self._peeker.feed(fragment)
        self._parts.append(fragment)

    def dataFinished(self) -> None:
        data = b"".join(self._parts)
        self._parts = []
        series = self._series or (self._peeker.uids.series if self._peeker is not None else None)
        bulk_base = (
            f"{self.sink.location}/studies/{self.sink.study}/series/{series or ''}"
            f"/instances/{self.sop_instance}/bulkdata"
        )
        if self.sink.gone:
            self.done.callback(STORE_OUT_OF_RESOURCES)
            return
        # The source is answered once the conversion is under way (see MetadataSink).
        self.sink.convert(data, self.transfer_syntax, bulk_base, self.sop_instance).addCallback(
            lambda _: STORE_SUCCESS
        ).chainDeferred(self.done)

    def dataFailed(self, reason: Failure) -> None:
        self._parts = []
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)

# -*- test-case-name: tests.unit.test_wado_sink -*-
"""WADO-RS instances as the parts of one ``multipart/related`` response, as they arrive.

`MultipartSink` is the `IInstanceSink` a retrieve of instances writes into: each instance
becomes a part (header, Part-10 file meta, then the data set's bytes as they come off the
wire), written in pieces of `PART_HOLD` bytes at most, so an instance larger than that is
never held whole when its transfer syntax can pass through.  A part in Implicit VR or big
endian is held and converted (off the reactor) to Explicit VR LE, which is all PS3.18
allows over HTTP.  It is also the request's push producer (`ResponseThrottle`).

An instance that cannot be served as the client asked (its syntax has no decoder here,
or decoding it failed, and the client did not accept the stored syntax) is refused with
`CannotTranscode`; a decoding failure first falls back to the stored syntax when the
Accept allows it.  What the client then sees depends on whether the response started:

* not yet (the first instance, always so for a single instance): the sink refuses every
  later instance too and `dicomrst.wado.retrieve.send` answers 406 naming the instance,
  its syntax and the Accept that would get it (PS3.18 §8.7.8.1: nothing acceptable →
  406).  A 200 with the other instances would claim a complete study;
* already (a later instance of a study or series): the status line is out and cannot
  become a 406 or 206.  The instances that follow are still written, then the body is
  cut off (the connection is closed without the multipart's closing delimiter or, over
  HTTP/1.1 chunked, without the last chunk), so the client sees an incomplete response
  and no clean multipart that lacks an instance.  A part in a syntax it did not accept
  (§8.7.8.1) would be worse: a client that only decodes Explicit VR LE would take it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITransport
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from dicomrst.common.interfaces import STORE_OUT_OF_RESOURCES, STORE_SUCCESS, IInstanceConsumer, IInstanceSink
from dicomrst.common.part10 import file_meta
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.transcode import CannotTranscode, to_explicit_le
from dicomrst.common.twisted_internals import set_send_limit, set_write_buffer
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE, NOT_FOR_WEB
from dicomrst.common.walker import UIDPeeker
from dicomrst.logs import logger
from dicomrst.wado.multipart import MultipartWriter, part_content_type
from dicomrst.wado.negotiation import TransferSyntaxChoice, part_transfer_syntax
from dicomrst.wado.throttle import ResponseThrottle

log = logger("dicomrst.wado")

# Syntaxes whose top-level elements are not Explicit or Implicit VR LE (the compressed
# ones are Explicit VR LE up to the pixel data's fragments).
UNPEEKABLE = frozenset((EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE))
# Bytes the response's transport may hold unsent before it pauses the association,
# from the second part on.  Twisted's default (64 KiB) is less than one PDU's fragment
# (128 KiB): every fragment of every instance then paused the PACS until the kernel took
# it, a round trip through the reactor per PDU that kept C-MOVE retrieves well below
# DCMTK's rate.  With this a 512x512 slice goes through unpaused when the client keeps
# up.  It bounds each response, so memory still does not grow with the study.  The
# first part goes out under the connection's own size (`dicomrst.web.site.RECEIVE_BUFFER`
# on TCP, Twisted's 64 KiB under TLS).  (That once was what got the status line out
# before a failure inside the first instance, by pausing the PACS under a large
# fragment; an abort now hands what is buffered to the kernel first, `abort_connection`.)
RESPONSE_BUFFER = 1 << 20
# A part's bytes are written to the response when this many have arrived, or when its data
# set ends.  A C-MOVE's PACS sends the next instance only after our C-STORE-RSP, and that
# goes out once the data set is read: while a slice (~0.5 MB) arrives, writing each of its
# fragments made the reactor send to the client between the reads of the next ones
# (Twisted writes from its buffer on every turn), each send on the PACS's critical path.
# Held, the slice's reads follow each other; the response is written in one go after the
# C-STORE-RSP, while the PACS reads its next instance.  Captured per instance (Orthanc to
# the listener, the CT study), last data byte to C-STORE-RSP: median 0.70-0.94 -> 0.45-0.57 ms.
PART_HOLD = 1 << 20
# How much of the response's buffer a turn of the reactor sends at most while a multipart
# streams (Twisted's SEND_LIMIT, 128 KiB): a held slice then goes out in one send, not in
# four turns, each a pass through the reactor between the PACS's reads.
RESPONSE_SEND = 1 << 20


@implementer(IInstanceSink)
class MultipartSink(ResponseThrottle):
    """Receives retrieved instances and writes them as parts of one response."""

    wants_bulk_data = True

    def __init__(
        self,
        request: Request,  # concrete: its producer and transport are used
        reactor: IGatewayReactor,
        choice: TransferSyntaxChoice,
        location: str,
        study: str,
        series: str | None,
        source_aet: str | None = None,
        abort: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.request = request
        self.reactor = reactor
        self.choice = choice
        self.abort = abort
        self.location = location  # .../aets/{aet}
        self.study = study
        self.series = series
        self.source_aet = source_aet
        self.writer = MultipartWriter()
        self._narrow: tuple[ITransport | None, int] | None = None  # the transport widened, its size before
        self._send_limit: tuple[ITransport | None, int] | None = None  # the same for its send limit

    # -- IInstanceSink -----------------------------------------------------------

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> PartConsumer:
        self.refuse_if_gone()
        if self.refused is not None:
            # The answer is a 406 (see the module's docstring): nothing more goes out.
            raise self.refused
        out = part_transfer_syntax(self.choice, transfer_syntax)
        if out is None:
            raise self.unservable(sop_instance_uid, transfer_syntax, "decoded here (no decoder for it)")
        return PartConsumer(self, sop_class_uid, sop_instance_uid, transfer_syntax, out)

    def unservable(self, sop_instance_uid: str, transfer_syntax: str, why: str) -> CannotTranscode:
        """Count an instance that cannot be served as asked; the error to refuse it with.
        Before the response started it becomes the answer (406)."""
        self.dropped += 1
        if transfer_syntax in NOT_FOR_WEB:
            hint = "it cannot be sent over HTTP as stored"
        else:
            hint = f"ask with transfer-syntax=* or transfer-syntax={transfer_syntax} to get it as stored"
        error = CannotTranscode(
            f"instance {sop_instance_uid} is stored in transfer syntax {transfer_syntax}, which cannot "
            f"be {why} into one the Accept allows; {hint}"
        )
        if not self.started and self.refused is None:
            self.refused = error
        return error

    def start(self) -> None:
        """Status line and headers (once), before the first part's header."""
        if self.started:
            return
        self.started = True
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", self.writer.content_type("application/dicom").encode("ascii"))
        request.registerProducer(self, True)

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.request.write(data)

    def part_written(self) -> None:
        self.parts += 1
        if self.parts == 1:
            transport = self.request.transport
            size = set_write_buffer(transport, RESPONSE_BUFFER)
            if size is not None and size < RESPONSE_BUFFER:
                self._narrow = (transport, size)
            elif size is not None:
                set_write_buffer(transport, size)  # already larger: leave it
            limit = set_send_limit(transport, RESPONSE_SEND)
            if limit is not None:
                self._send_limit = (transport, limit)

    def finish(self) -> None:
        """After the last instance: the closing delimiter."""
        if self.started:
            self.write(self.writer.close())
            self.request.unregisterProducer()
        self._restore_buffer()

    def fail(self, reason: str) -> None:
        """Cut the started response off (the client sees a truncated body)."""
        self._restore_buffer()
        if self.abort is not None:
            self.abort(reason)

    def _restore_buffer(self) -> None:
        if self._narrow is not None:
            # The connection may carry another request, whose first part must again go
            # out under the default.
            transport, size = self._narrow
            set_write_buffer(transport, size)
            self._narrow = None
        if self._send_limit is not None:
            transport, size = self._send_limit
            set_send_limit(transport, size)
            self._send_limit = None

    def part_location(self, series: str | None, sop_instance_uid: str) -> str:
        path = f"{self.location}/studies/{self.study}"
        if series:
            path += f"/series/{series}/instances/{sop_instance_uid}"
        return path


@implementer(IInstanceConsumer)
class PartConsumer:
    """One instance: part header, Part-10 meta, then the data set as it arrives."""

    def __init__(
        self, sink: MultipartSink, sop_class: str, sop_instance: str, stored_ts: str, out_ts: str
    ) -> None:
        self.sink = sink
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        self.stored_ts = stored_ts
        self.out_ts = out_ts
        self.done: Deferred[int] = Deferred()
        self.convert = out_ts != stored_ts
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._header_written = False
        self._series = sink.series
        self._peeker: UIDPeeker | None = None
        if self._series is None and stored_ts not in UNPEEKABLE:
            self._peeker = UIDPeeker(implicit=stored_ts == IMPLICIT_VR_LE)

    def _refused_meanwhile(self) -> bool:
        """Another instance was refused before anything went out (the answer is a 406)
        while this one was on its way: it must not start the response."""
        return self.sink.refused is not None and not self._header_written

    def dataReceived(self, fragment: bytes) -> None:
        if self._refused_meanwhile():
            self._held = []
            return
        peeker = self._peeker
        if peeker is not None and not peeker.done and not self._header_written:
            if peeker.feed(fragment) and peeker.uids.series:
                self._series = peeker.uids.series
        self._held.append(fragment)
        self._held_bytes += len(fragment)
        if self.convert or self._held_bytes < PART_HOLD:
            return  # see PART_HOLD
        if not self._header_written:
            # The series (for the part's Content-Location) is looked for in the first
            # PEEK_LIMIT bytes only, no more than PART_HOLD.
            self._write_header()
        self._flush()

    def _write_header(self) -> None:
        sink = self.sink
        sink.start()
        location = sink.part_location(self._series, self.sop_instance)
        content_type = part_content_type("application/dicom", self.out_ts)
        sink.write(sink.writer.part_header(content_type, location))
        sink.write(file_meta(self.sop_class, self.sop_instance, self.out_ts, sink.source_aet))
        self._header_written = True

    def _flush(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        for piece in held:
            self.sink.write(piece)

    def dataFinished(self) -> None:
        if self.sink.gone or self._refused_meanwhile():
            self.done.callback(STORE_OUT_OF_RESOURCES)
            return
        if not self.convert:
            if not self._header_written:
                self._write_header()
            self._flush()
            self.sink.part_written()
            self.done.callback(STORE_SUCCESS)
            return
        # Implicit VR or big endian must not go out over HTTP (PS3.18 8.7.3): convert,
        # off the reactor, then write.  Such instances are held whole; Explicit VR LE
        # ones (what we propose first) stream through untouched.
        data = b"".join(self._held)
        self._held = []
        reactor = self.sink.reactor
        d = deferToThreadPool(reactor, reactor.getThreadPool(), to_explicit_le, data, self.stored_ts)

        def converted(explicit: bytes) -> int:
            if self.sink.gone or self._refused_meanwhile():
                return STORE_OUT_OF_RESOURCES
            self._write_header()
            self.sink.write(explicit)
            self.sink.part_written()
            return STORE_SUCCESS

        def failed(f: Failure) -> int | Failure:
            if self.sink.gone:
                return STORE_OUT_OF_RESOURCES
            if f.check(CannotTranscode) and self.stored_acceptable():
                # The decoder gave up on this one: the client also takes it as stored.
                log.info(
                    "cannot decode {uid} from {ts} ({why}); sent as stored",
                    uid=self.sop_instance,
                    ts=self.stored_ts,
                    why=f.getErrorMessage(),
                )
                self.out_ts = self.stored_ts
                return converted(data)
            log.warn(
                "cannot convert {uid} from {ts}: {why}",
                uid=self.sop_instance,
                ts=self.stored_ts,
                why=f.getErrorMessage(),
            )
            if f.check(CannotTranscode):
                return Failure(self.sink.unservable(self.sop_instance, self.stored_ts, "decoded"))
            self.sink.dropped += 1
            return f

        d.addCallbacks(converted, failed).chainDeferred(self.done)

    def stored_acceptable(self) -> bool:
        """The client also takes this instance in its stored syntax."""
        return self.stored_ts not in NOT_FOR_WEB and self.sink.choice.quality(self.stored_ts) > 0

    def dataFailed(self, reason: Failure) -> None:
        self._held = []
        if not self.done.called:
            # Lost on our side, whether part of it is in the body already or all of it was
            # still held (`PART_HOLD`).  A C-MOVE goes on after its sub-operation
            # association died (the PACS reports the instance failed, perhaps with a
            # warning only, which ends the retrieve well): the body must not then end
            # cleanly, as if the study were complete.
            self.sink.dropped += 1
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)

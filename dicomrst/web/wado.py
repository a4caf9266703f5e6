# -*- test-case-name: tests.test_wado_pacs -*-
"""WADO-RS instance retrieves: C-GET sub-operations streamed as multipart parts.

The response starts with the first instance, so a retrieve that yields nothing is a
404 and one that fails before anything arrived is a 502.  After that a failure can
only truncate the body (the web error handler aborts the connection): a multipart
that ends cleanly always holds every instance the PACS delivered.

This object is also the request's push producer: when the HTTP client reads slower
than the PACS sends, twisted.web pauses it and it pauses the association, which stops
reading from the PACS socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from dicomrst.dimse.peek import UIDPeeker
from dicomrst.dimse.retrieve import (
    STORE_OUT_OF_RESOURCES,
    STORE_SUCCESS,
    RetrieveFailed,
    hold_paused,
    release_paused,
)
from dicomrst.logs import logger
from dicomrst.ul.negotiation import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.wado import part10
from dicomrst.wado.multipart import MultipartWriter
from dicomrst.wado.negotiation import part_transfer_syntax

log = logger("dicomrst.wado")

# Bytes we hold back at most while looking for the study/series UIDs of a part.
PEEK_LIMIT = 1 << 20
# Syntaxes whose top-level elements are not Explicit or Implicit VR LE (the compressed
# ones are Explicit VR LE up to the pixel data's fragments).
UNPEEKABLE = frozenset((EXPLICIT_VR_BE, part10.DEFLATED_EXPLICIT_VR_LE))
# Bytes the response's transport may hold unsent before it pauses the association,
# from the second part on.  Twisted's default (64 KiB) is less than one PDU's fragment
# (128 KiB): every fragment of every instance then paused the PACS until the kernel took
# it, a round trip through the reactor per PDU that kept C-MOVE retrieves well below
# DCMTK's rate.  With this a 512x512 slice goes through unpaused when the client keeps
# up.  It bounds each response, so memory still does not grow with the study.  The
# first part goes out under the default: a failure inside it aborts the connection,
# which drops what is still buffered, and the status line and the part's start must
# have reached the client by then (or it sees no response, and retries a GET).
RESPONSE_BUFFER = 1 << 20


@implementer(IPushProducer)
class _AssociationThrottle:
    """The HTTP request's push producer: pauses the association feeding the response.

    Shared by the multipart and the metadata sinks; they set `started`, `parts` and
    `bytes` as they write.
    """

    def __init__(self) -> None:
        self.started = False
        self.parts = 0
        self.bytes = 0
        self.client_gone = False
        # Instances the PACS delivered that we could not write (conversion failed,
        # syntax not servable): a response missing them must not end cleanly.
        self.dropped = 0
        self._association: Any = None
        self._paused = False

    def refuse_if_gone(self) -> None:
        """Called for every arriving instance.  Once the handler was cancelled (client
        gone, or the request timed out and was answered) a late C-STORE of the
        cancelled retrieve must be refused here, not written into a dead request."""
        if self.client_gone:
            raise ConnectionError("HTTP client disconnected or request already answered")

    def attach(self, association: Any) -> None:
        """Pause and resume `association` with the response.  Another association (a
        PACS may send one move's instances over several) takes its place, and the one
        left reads again if we paused it; None lets go of the one attached: once its
        operation has ended it may serve another request, which this response must no
        longer pause.  Several responses may pause one association (hold_paused)."""
        previous, self._association = self._association, association
        if previous is association or not self._paused:
            return
        if previous is not None:
            release_paused(previous, self)
        if association is not None:
            hold_paused(association, self)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._association is not None:
            hold_paused(self._association, self)

    def resumeProducing(self) -> None:
        self._paused = False
        if self._association is not None:
            release_paused(self._association, self)

    def stopProducing(self) -> None:
        # The client went away; Klein cancels the handler, which C-CANCELs the get.
        # The association must read again, or it would never see the end of the get
        # (what still arrives is refused or dropped, as client_gone says).
        self.client_gone = True
        if self._paused:
            self._paused = False
            if self._association is not None:
                release_paused(self._association, self)


class MultipartSink(_AssociationThrottle):
    """Receives retrieved instances and writes them as parts of one response."""

    def __init__(
        self,
        request: IRequest,
        clock: IReactorTime,
        choice: Any,
        location: str,
        study: str,
        series: str | None,
        source_aet: str | None = None,
    ) -> None:
        super().__init__()
        self.request = request
        self.clock = clock
        self.choice = choice
        self.location = location  # .../aets/{aet}
        self.study = study
        self.series = series
        self.source_aet = source_aet
        self.writer = MultipartWriter()
        self._narrow: tuple[Any, int] | None = None  # the transport widened, its size before

    # -- InstanceSink ------------------------------------------------------------

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> PartConsumer:
        self.refuse_if_gone()
        out = part_transfer_syntax(self.choice, transfer_syntax)
        if out is None:
            self.dropped += 1
            raise ValueError(f"transfer syntax {transfer_syntax} cannot be served as requested")
        return PartConsumer(self, sop_class_uid, sop_instance_uid, transfer_syntax, out)

    def _start(self) -> None:
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
            transport = getattr(self.request, "transport", None)
            size = getattr(transport, "bufferSize", RESPONSE_BUFFER)
            if size < RESPONSE_BUFFER:
                transport.bufferSize = RESPONSE_BUFFER
                self._narrow = (transport, size)

    def finish(self) -> None:
        """After the last instance: the closing delimiter."""
        if self.started:
            self.write(self.writer.close())
            self.request.unregisterProducer()
        if self._narrow is not None:
            # The connection may carry another request, whose first part must again go
            # out under the default.
            transport, size = self._narrow
            transport.bufferSize = size
            self._narrow = None

    def part_location(self, series: str | None, sop_instance_uid: str) -> str:
        path = f"{self.location}/studies/{self.study}"
        if series:
            path += f"/series/{series}/instances/{sop_instance_uid}"
        return path


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

    def dataReceived(self, fragment: bytes) -> None:
        if self.convert or not self._header_written:
            if self._peeker is not None and not self._peeker.done:
                if self._peeker.feed(fragment) and self._peeker.uids.series:
                    self._series = self._peeker.uids.series
            self._held.append(fragment)
            self._held_bytes += len(fragment)
            if self.convert:
                return
            if self._peeker is None or self._peeker.done or self._held_bytes > PEEK_LIMIT:
                self._write_header()
                self._flush()
            return
        self.sink.write(fragment)

    def _write_header(self) -> None:
        sink = self.sink
        sink._start()
        location = sink.part_location(self._series, self.sop_instance)
        content_type = f"application/dicom; transfer-syntax={self.out_ts}"
        sink.write(sink.writer.part_header(content_type, location))
        sink.write(part10.file_meta(self.sop_class, self.sop_instance, self.out_ts, sink.source_aet))
        self._header_written = True

    def _flush(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        for piece in held:
            self.sink.write(piece)

    def dataFinished(self) -> None:
        if self.sink.client_gone:
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
        d = deferToThread(part10.to_explicit_le, data, self.stored_ts)

        def converted(explicit: bytes) -> int:
            if self.sink.client_gone:
                return STORE_OUT_OF_RESOURCES
            self._write_header()
            self.sink.write(explicit)
            self.sink.part_written()
            return STORE_SUCCESS

        def failed(f: Failure) -> Failure:
            log.warn(
                "cannot convert {uid} from {ts}: {why}",
                uid=self.sop_instance,
                ts=self.stored_ts,
                why=f.getErrorMessage(),
            )
            self.sink.dropped += 1
            return f

        d.addCallbacks(converted, failed)
        d.chainDeferred(self.done)

    def dataFailed(self, reason: Failure) -> None:
        self._held = []
        if self._header_written and not self.done.called:
            # Part of it is in the body already.  A C-MOVE goes on after its
            # sub-operation association died (the PACS reports the instance failed,
            # perhaps with a warning only): the body must not then end cleanly.
            self.sink.dropped += 1
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)


NO_CONVERSION = (EXPLICIT_VR_LE,)
MUST_CONVERT = (IMPLICIT_VR_LE, EXPLICIT_VR_BE)


async def retrieve(
    app: Any,
    request: IRequest,
    aet: str,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    metadata: bool = False,
) -> Any:
    """Answer a WADO-RS instance (or, with `metadata`, metadata) retrieve at the study,
    series or instance level."""
    from urllib.parse import quote

    from dicomrst.errors import BadRequest, DicomrstError, NotAcceptable, NotFound, UpstreamError
    from dicomrst.qido.query import is_uid
    from dicomrst.wado.negotiation import select_instance_media, select_metadata_media
    from dicomrst.web.qido import _base_url

    backend = app.backend(aet)
    for name, uid in (("study", study), ("series", series), ("instance", instance)):
        if uid is not None and not is_uid(uid):
            raise BadRequest(f"malformed {name} UID {uid!r}")
    accept = request.getHeader(b"accept")
    accept_param = request.args.get(b"accept", [None])[0]
    accept_text = accept.decode("latin-1") if accept else None
    param_text = accept_param.decode("latin-1") if accept_param else None
    location = f"{_base_url(app, request)}/aets/{quote(aet, safe='')}"
    sink: MultipartSink | MetadataSink
    if metadata:
        media = select_metadata_media(accept_text, param_text)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", media.encode("ascii"))
            return b""
        sink = MetadataSink(request, media, location, study, series)
    else:
        choice = select_instance_media(accept_text, param_text)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b'multipart/related; type="application/dicom"')
            return b""
        receivable = getattr(backend, "retrieve_syntaxes", (EXPLICIT_VR_LE, IMPLICIT_VR_LE))
        if all(part_transfer_syntax(choice, ts) is None for ts in receivable):
            # Nothing the backend's retrieves could deliver could be served as asked:
            # say so before moving anything.
            raise NotAcceptable(
                "none of the transfer syntaxes instances arrive in from this AET "
                f"({', '.join(receivable)}) can be produced as asked"
            )
        sink = MultipartSink(request, app.clock, choice, location, study, series, source_aet=aet)
    what = (
        f"study {study}"
        + (f" series {series}" if series else "")
        + (f" instance {instance}" if instance else "")
    )
    try:
        try:
            await backend.retrieve(study, series, instance, sink=sink)
        except CancelledError:
            # Client gone or request timed out: C-STOREs still in flight are refused.
            sink.client_gone = True
            raise
        except RetrieveFailed as e:
            # Some PACS (Orthanc among them) answer a C-GET for an unknown UID with a
            # failure and no sub-operations instead of Success with none.  Ask with a
            # C-FIND whether the entity exists: if not, that is a 404, not a PACS failure.
            nothing = e.maybe_not_found and e.result.completed == e.result.failed == e.result.received == 0
            if not nothing or await _exists(backend, study, series, instance):
                raise
    except DicomrstError as e:
        if not sink.started:
            raise
        # The status line is out: only a cut-off body can tell the client.  An expected
        # PACS failure, logged in one line (its message has the sub-operation counts),
        # not as an unhandled error with a traceback.
        log.warn(
            "{aet} failed after {n} instance(s), {bytes} bytes for {what}: {why}; response cut off",
            aet=aet,
            n=sink.parts,
            bytes=sink.bytes,
            what=what,
            why=e.message,
        )
        return _cut_off(request)
    if sink.dropped:
        # The PACS delivered instances we could not write: a body that ends cleanly
        # would claim a complete study.
        if not sink.started:
            raise UpstreamError(f"{aet}: none of the {sink.dropped} instance(s) for {what} could be served")
        log.warn(
            "{n} instance(s) for {what} from {aet} could not be served; response cut off",
            n=sink.dropped,
            what=what,
            aet=aet,
        )
        return _cut_off(request)
    if sink.parts == 0:
        raise NotFound(f"{aet} has no instance for {what}")
    sink.finish()
    log.info(
        "retrieved {n} instance(s){kind}, {bytes} bytes from {aet} for {what}",
        kind=" as metadata" if metadata else "",
        n=sink.parts,
        bytes=sink.bytes,
        aet=aet,
        what=what,
    )
    return b""


def _cut_off(request: IRequest) -> Any:
    """Abort the connection under a started response; a resource for Klein that writes
    nothing and never finishes."""
    from dicomrst.web.app import _NoResponse
    from dicomrst.web.site import abort_connection

    abort_connection(request)
    return _NoResponse()


async def _exists(backend: Any, study: str, series: str | None, instance: str | None) -> bool:
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE" if instance else "SERIES" if series else "STUDY"
    identifier.StudyInstanceUID = study
    if series or instance:
        identifier.SeriesInstanceUID = series or ""
    if instance:
        identifier.SOPInstanceUID = instance
    found: list[object] = []
    await backend.find(identifier, limit=1, on_result=found.append)
    return bool(found)


class MetadataSink(_AssociationThrottle):
    """Retrieved instances written as one DICOM JSON array, an object per instance.

    Each instance is held until it is complete (the JSON needs the whole data set to
    place its BulkDataURIs), converted off the reactor, written, and dropped; C-GET
    sends instances one at a time, so one is held at most.
    """

    # Pixel Data only ever becomes a BulkDataURI here, so a backend that can read just the
    # head of an object (S3, with a ranged GET) may hand over a placeholder instead.
    wants_bulk_data = False

    def __init__(
        self, request: IRequest, media_type: str, location: str, study: str, series: str | None
    ) -> None:
        super().__init__()
        self.request = request
        self.media_type = media_type
        self.location = location
        self.study = study
        self.series = series

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
        from dicomrst.wado.metadata import instance_metadata_json

        data = b"".join(self._parts)
        self._parts = []
        series = self._series or (self._peeker.uids.series if self._peeker is not None else None)
        bulk_base = (
            f"{self.sink.location}/studies/{self.sink.study}/series/{series or ''}"
            f"/instances/{self.sop_instance}/bulkdata"
        )
        d = deferToThread(instance_metadata_json, data, self.transfer_syntax, bulk_base)

        def write(encoded: bytes) -> int:
            if self.sink.client_gone:
                return STORE_OUT_OF_RESOURCES
            self.sink.write_object(encoded)
            return STORE_SUCCESS

        def failed(f: Failure) -> Failure:
            log.warn("cannot describe {uid}: {why}", uid=self.sop_instance, why=f.getErrorMessage())
            self.sink.dropped += 1
            return f

        d.addCallbacks(write, failed)
        d.chainDeferred(self.done)

    def dataFailed(self, reason: Failure) -> None:
        self._parts = []
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)

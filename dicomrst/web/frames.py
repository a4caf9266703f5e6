# -*- test-case-name: tests.unit.test_wado_frames -*-
"""WADO-RS frames, bulk data and pixel data of an instance over HTTP.

Checks in order: unknown AET (404), malformed UIDs or frame list (400), Accept (406).
Then the instance comes from the instance cache (`WebContext.cache`: one series retrieve
serves a viewer's many frame calls) and everything that reads or decodes the file runs
in `WebContext.cpu`, never on the reactor: the response is prepared there (so a frame
past Number of Frames, no pixel data or a refused Accept is a status, not a cut-off
body) with its first batch of bytes, then streamed batch by batch (`BATCH` bytes each,
`dicomrst.wado.frames`), each batch read only once the client has taken the previous
one (the request's push producer), so a 300-frame response never sits in memory.
HEAD prepares the same response (the instance is fetched) and sends its headers only.
Study and series ``pixeldata`` (`study_pixeldata`) stream a retrieve instead, instance by
instance; their HEAD answers the default media type without retrieving anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from dicomrst.backends.interfaces import IBackend, IRangedReads
from dicomrst.cache import CachedInstance
from dicomrst.common.identifiers import describe_target
from dicomrst.common.interfaces import STORE_OUT_OF_RESOURCES, STORE_SUCCESS
from dicomrst.common.pacing import Pacer
from dicomrst.common.uids import is_uid
from dicomrst.errors import BadRequest, NotFound, UpstreamError
from dicomrst.imaging.bulkdata import parse_bulk_path
from dicomrst.imaging.byterange import ByteRange
from dicomrst.imaging.framelist import parse_frame_list
from dicomrst.imaging.frames import NoPixelData
from dicomrst.wado.frames import PartChoice, Prepared, prepare_bulk, prepare_frames, select_part_media
from dicomrst.wado.multipart import MultipartWriter
from dicomrst.wado.pixeldata import Spooled, SpoolSink, series_of
from dicomrst.wado.ranged import RangedBody
from dicomrst.web.context import WebContext
from dicomrst.web.requests import header_text, query_param
from dicomrst.web.responses import NoResponse


def _check_uids(study: str, series: str, instance: str) -> None:
    for name, uid in (("study", study), ("series", series), ("instance", instance)):
        if not is_uid(uid):
            raise BadRequest(f"malformed {name} UID {uid!r}")


def _instance_url(context: WebContext, request: IRequest, aet: str, study: str, series: str, sop: str) -> str:
    return f"{context.service_url(request, aet)}/studies/{study}/series/{series}/instances/{sop}"


def _choice(request: IRequest, *, single_part: bool = False) -> PartChoice:
    return select_part_media(
        header_text(request, b"accept"), query_param(request, b"accept"), single_part=single_part
    )


async def frames(
    context: WebContext, request: IRequest, aet: str, study: str, series: str, sop: str, frame_list: str
) -> bytes | IResource:
    """``.../instances/{sop}/frames/{frame_list}``: one part per frame, in the order asked."""
    return await _frames(context, request, aet, study, series, sop, frame_list)


async def pixeldata(
    context: WebContext, request: IRequest, aet: str, study: str, series: str, sop: str
) -> bytes | IResource:
    """``.../instances/{sop}/pixeldata``: every frame, one part each (PS3.18 §10.4.1.1.4;
    §8.7.3.3.2: multi-frame pixel data is one part per frame)."""
    return await _frames(context, request, aet, study, series, sop, None)


async def _frames(
    context: WebContext,
    request: IRequest,
    aet: str,
    study: str,
    series: str,
    sop: str,
    frame_list: str | None,
) -> bytes | IResource:
    """The frames `frame_list` names of an instance (None: all), by range where the
    backend can, else from the instance cache."""
    backend = context.backend(aet)
    _check_uids(study, series, sop)
    numbers = parse_frame_list(frame_list) if frame_list is not None else None
    choice = _choice(request)
    location = _instance_url(context, request, aet, study, series, sop) + "/frames"
    ranged = await _ranged(context, backend, (study, series, sop), numbers, choice, location)
    if ranged is not None:
        return await _send_ranged(context, request, ranged)
    found = await context.cache.instance(backend, study, series, sop)
    head = request.method == b"HEAD"
    return await _send(
        context, request, found, lambda: prepare_frames(found.file, numbers, choice, location, first=not head)
    )


async def bulkdata(
    context: WebContext, request: IRequest, aet: str, study: str, series: str, sop: str, path: str
) -> bytes | IResource:
    """``.../instances/{sop}/bulkdata/{path}``: the value a BulkDataURI of the metadata
    names; ``Range`` on a single-part (``application/octet-stream``) answer."""
    backend = context.backend(aet)
    _check_uids(study, series, sop)
    bulk_path = parse_bulk_path(path)
    choice = _choice(request, single_part=True)
    url = _instance_url(context, request, aet, study, series, sop)
    location = f"{url}/bulkdata/{bulk_path}"
    range_header = header_text(request, b"range")
    if _ranged_reads(context, backend, (study, series, sop)):
        ranged = await context.ranged.prepare_bulk(
            context.cpu,
            IRangedReads(backend),
            aet,
            (study, series, sop),
            bulk_path,
            choice,
            location,
            f"{url}/frames",
            range_header,
        )
        if ranged is not None:
            return await _send_ranged(context, request, ranged)
    found = await context.cache.instance(backend, study, series, sop)
    head = request.method == b"HEAD"
    return await _send(
        context,
        request,
        found,
        lambda: prepare_bulk(
            found.file, bulk_path, choice, location, f"{url}/frames", range_header, first=not head
        ),
    )


async def _ranged(
    context: WebContext,
    backend: IBackend,
    where: tuple[str, str, str],
    numbers: Sequence[int] | None,
    choice: PartChoice,
    location: str,
) -> RangedBody | None:
    """The frames read by range from the stored object (see `_ranged_reads`); None: take
    the cache's path."""
    if not _ranged_reads(context, backend, where):
        return None
    return await context.ranged.prepare(
        context.cpu, IRangedReads(backend), backend.aet, where, numbers, choice, location
    )


def _ranged_reads(context: WebContext, backend: IBackend, where: tuple[str, str, str]) -> bool:
    """Try ranged reads: the backend can, the cache does not hold the instance (a file on
    local disk beats any read over the network) and no retrieve is bringing its series
    into the cache already (it is on its way)."""
    study, series, sop = where
    cache = context.cache
    return (
        IRangedReads.providedBy(backend)
        and not cache.holds(backend.aet, sop)
        and not cache.filling(backend.aet, study, series)
    )


async def _send_ranged(context: WebContext, request: IRequest, body: RangedBody) -> bytes | IResource:
    request.setHeader(b"Content-Type", body.content_type.encode("ascii"))
    _length_headers(request, body.length, body.byte_range)
    if request.method == b"HEAD":
        return b""
    concrete = cast(Request, request)
    pacer = Pacer()
    concrete.registerProducer(pacer, True)
    try:
        for piece in body.first:
            request.write(piece)
        while not body.done:
            await pacer.ready()
            if pacer.gone:
                return NoResponse()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            for piece in await body.next():
                request.write(piece)
    finally:
        if _connected(concrete):
            concrete.unregisterProducer()
    return b""


async def _send(
    context: WebContext, request: IRequest, found: CachedInstance, prepare: Callable[[], Prepared]
) -> bytes | IResource:
    try:
        prepared = await context.cpu.run(prepare)
    except BaseException:
        found.close()
        raise
    reader = prepared.reader
    # Closed with the reader, which waits for a batch still running in a thread.
    reader.close_also(found.close)
    try:
        _headers(request, prepared)
        if request.method == b"HEAD":
            return b""
        # Klein hands on the twisted.web.server.Request the site made; its producer API
        # (not in IRequest) paces the batches.
        concrete = cast(Request, request)
        pacer = Pacer()
        concrete.registerProducer(pacer, True)
        try:
            if not await _stream(context, request, pacer, prepared):
                return NoResponse()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        finally:
            if _connected(concrete):
                concrete.unregisterProducer()
        return b""
    finally:
        reader.close()


def _connected(request: Request) -> bool:
    """The request still has its connection (a client that left takes it away, and
    Klein cancels the handler: nothing may be unregistered from it then)."""
    return request.channel is not None


async def _stream(context: WebContext, request: IRequest, pacer: Pacer, prepared: Prepared) -> bool:
    """Write `prepared`'s body, a batch at a time; False if the client left."""
    reader = prepared.reader
    for piece in prepared.first:
        request.write(piece)
    while not reader.done:
        await pacer.ready()
        if pacer.gone:
            return False
        for piece in await context.cpu.run(reader.batch):
            request.write(piece)
    return True


async def study_pixeldata(
    context: WebContext, request: IRequest, aet: str, study: str, series: str | None = None
) -> bytes | IResource:
    """``.../studies/{study}[/series/{series}]/pixeldata``: every frame of every instance
    with pixel data, one part each, located at its frame URL; instances without pixel
    data are left out.  The study or series is retrieved through the cache (which fills
    as it goes) into a `SpoolSink`; each instance is sent as soon as it is complete, and
    the source waits for the client (see `dicomrst.wado.pixeldata`).  Once the response
    has begun, an instance that cannot be served as asked cuts it off."""
    backend = context.backend(aet)
    for name, uid in (("study", study), ("series", series)):
        if uid is not None and not is_uid(uid):
            raise BadRequest(f"malformed {name} UID {uid!r}")
    choice = _choice(request)
    base = f"{context.service_url(request, aet)}/studies/{study}/series/"
    if request.method == b"HEAD":
        # The media type depends on what is stored: the multipart's default.
        request.setHeader(b"Content-Type", b'multipart/related; type="application/octet-stream"')
        return b""
    sink = SpoolSink()
    retrieval = context.cache.retrieve(backend, study, series, None, sink=sink)
    retrieval.addBoth(sink.ended)
    writer = MultipartWriter()
    concrete = cast(Request, request)
    pacer = Pacer()
    item: Spooled | Failure | None = None
    try:
        while True:
            item = await sink.next()
            if item is None:
                break
            if isinstance(item, Failure):
                if not sink.started:
                    item.raiseException()
                raise UpstreamError(f"{aet}: the retrieve failed midway: {item.getErrorMessage()}")
            source = item.file
            own_series = series if series is not None else await context.cpu.run(series_of, source)
            location = f"{base}{own_series}/instances/{item.sop_instance_uid}/frames"
            try:
                prepared = await context.cpu.run(
                    prepare_frames, source, None, choice, location, writer=writer, close_body=False
                )
            except NoPixelData:
                item.sent()
                continue
            # The reader closes the file: a batch may still run in a thread when the
            # client leaves.
            spooled, item = item, None
            reader = prepared.reader
            reader.close_also(spooled.file.close)
            try:
                if not sink.started:
                    sink.started = True
                    request.setHeader(b"Content-Type", prepared.content_type().encode("ascii"))
                    concrete.registerProducer(pacer, True)
                if not await _stream(context, request, pacer, prepared):
                    spooled.answer(STORE_OUT_OF_RESOURCES)
                    return NoResponse()  # type: ignore[no-untyped-call]  # unannotated in Twisted
                spooled.answer(STORE_SUCCESS)
            except BaseException:
                spooled.answer(STORE_OUT_OF_RESOURCES)
                raise
            finally:
                reader.close()
        if not sink.started:
            raise NotFound(
                f"{aet} has no instance with pixel data for {describe_target(study, series, None)}"
            )
        request.write(writer.close())
        concrete.unregisterProducer()
        return b""
    finally:
        if isinstance(item, Spooled):
            item.dropped()
        if not retrieval.called:
            sink.abandon()
            retrieval.cancel()


def _headers(request: IRequest, prepared: Prepared) -> None:
    request.setHeader(b"Content-Type", prepared.content_type().encode("ascii"))
    _length_headers(request, prepared.length, prepared.byte_range)


def _length_headers(request: IRequest, length: int | None, byte_range: ByteRange | None) -> None:
    """A single-part value's length, and the range of it sent (206)."""
    if length is None:
        return
    request.setHeader(b"Accept-Ranges", b"bytes")
    request.setHeader(b"Content-Length", b"%d" % length)
    if byte_range is not None:
        request.setResponseCode(206)
        request.setHeader(b"Content-Range", byte_range.content_range.encode("ascii"))

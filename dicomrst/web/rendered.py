# -*- test-case-name: tests.unit.test_rendered_web -*-
"""WADO-RS rendered and thumbnail resources over HTTP (PS3.18 §10.4, §8.3.5).

Checks in order: unknown AET (404), malformed UID or frame list (400), Accept (406, or 400
for DICOM and rendered types mixed), query parameters (400).  Then the instance comes
from the instance cache (an instance-level resource) or a retrieve of the study or series
(`dicomrst.wado.rendered.CollectSink`), and every read of a file and every pixel is done in
`WebContext.cpu`, never on the reactor: a full line there is a 503, and a request whose
client left is taken out of it.  What each resource returns is described in
`dicomrst.wado.rendered`.

Media types: ``image/jpeg`` (default), ``image/png``, ``image/gif``, from the ``accept``
parameter, then the Accept header; ``multipart/related; type="image/…"`` ranges count as
their image type.  A resource that is one image (an instance, one frame, a thumbnail) is
answered single-part; one of several images (a study, a series, a list of frames) as
``multipart/related; type="image/…"`` with a Content-Location per part.  Annotations are
never burned in: asking for them adds the Warning of §8.3.5.1.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast
from urllib.parse import quote

from twisted.internet.defer import CancelledError
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from dicomrst.common.accept import parse_accept
from dicomrst.common.uids import is_uid
from dicomrst.errors import BadRequest, NotAcceptable, NotFound
from dicomrst.imaging.framelist import parse_frame_list
from dicomrst.imaging.params import RenderOptions, parse_rendered_query, select_rendered_media
from dicomrst.imaging.render import RenderFailed
from dicomrst.logs import logger
from dicomrst.wado.multipart import MultipartWriter
from dicomrst.wado.rendered import (
    CollectSink,
    FileHandoff,
    Member,
    describe_all,
    render_instance,
    render_thumbnail,
    representative,
)
from dicomrst.web.context import WebContext
from dicomrst.web.requests import header_text, query_param

log = logger("dicomrst.web")

#: The query parameters `parse_rendered_query` reads (the rest are ignored, §8.3).
_PARAMETERS = ("viewport", "window", "quality", "annotation")


def _as_image_ranges(text: str | None, *, query: bool = False) -> str | None:
    """An Accept value with each ``multipart/related; type="image/…"`` range replaced by
    its image type (same q), for `select_rendered_media`, which knows single types."""
    if text is None or not text.strip():
        return text
    parsed = parse_accept(text, query=query)
    if not parsed:
        return text  # nothing usable: as it came, so it stays "nothing acceptable" (406)
    ranges = []
    for rng in parsed:
        inner = rng.params.get("type")
        if rng.media == "multipart/related" and inner is not None and inner.startswith("image/"):
            ranges.append(f"{inner};q={rng.q}")
        elif rng.media == "multipart/related":
            ranges.append(f'{rng.media};type="{inner or "application/dicom"}";q={rng.q}')
        else:
            ranges.append(f"{rng.media};q={rng.q}")
    return ",".join(ranges)


def _options(request: IRequest, *, thumbnail: bool) -> RenderOptions:
    accept = _as_image_ranges(header_text(request, b"accept"))
    accept_param = query_param(request, b"accept")
    media = select_rendered_media(accept, _as_image_ranges(accept_param, query=True))
    params = {name: query_param(request, name.encode("ascii")) for name in _PARAMETERS}
    return parse_rendered_query(params, media, thumbnail=thumbnail)


def _check_uids(study: str, series: str | None, sop: str | None) -> None:
    for name, uid in (("study", study), ("series", series), ("instance", sop)):
        if uid is not None and not is_uid(uid):
            raise BadRequest(f"malformed {name} UID {uid!r}")


async def rendered(
    context: WebContext,
    request: IRequest,
    aet: str,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    frames: str | None = None,
    *,
    thumbnail: bool = False,
) -> bytes:
    """Answer a rendered (or, with `thumbnail`, thumbnail) request for a study, series,
    instance or (`frames`: the frame list as in the URL) frames of an instance."""
    backend = context.backend(aet)
    _check_uids(study, series, sop)
    numbers = parse_frame_list(frames) if frames is not None else None
    options = _options(request, thumbnail=thumbnail)
    service = context.service_url(request, aet)
    warning = options.warning(service)
    if warning is not None:
        request.setHeader(b"Warning", warning.encode("utf-8"))
    if sop is not None:
        assert series is not None
        return await _instance(context, request, aet, study, series, sop, numbers, options, thumbnail)
    sink = CollectSink(context.cache.directory, aet)
    try:
        await context.cache.retrieve(backend, study, series, None, sink=sink)
    except CancelledError:
        sink.abandon()
        raise
    except BaseException:
        sink.close()
        raise
    failed = sink.failed
    handoffs = [(i.sop_instance_uid, FileHandoff(i.file)) for i in sink.take_instances()]
    try:
        if not handoffs:
            what = f"series {series}" if series is not None else f"study {study}"
            if failed:
                raise RenderFailed(f"no instance of {what} could be kept: {failed[0]}")
            raise NotFound(f"{aet} has no instance in {what}")
        members = await context.cpu.run(describe_all, handoffs)
        if thumbnail:
            chosen = representative(members)
            if chosen is None:
                raise NotAcceptable("no instance here has pixel data to make a thumbnail of")
            image = await context.cpu.run(
                render_thumbnail, chosen.handoff, options.viewport, options.media_type
            )
            return _single(request, options.media_type, image)
        return await _multipart_of_instances(context, request, service, study, members, options)
    finally:
        # Each closes now, or when the worker reading it is done: not under a thread.
        for _, handoff in handoffs:
            handoff.drop()


async def _instance(
    context: WebContext,
    request: IRequest,
    aet: str,
    study: str,
    series: str,
    sop: str,
    numbers: tuple[int, ...] | None,
    options: RenderOptions,
    thumbnail: bool,
) -> bytes:
    found = await context.cache.instance(context.backend(aet), study, series, sop)
    handoff = FileHandoff(found.file)
    try:
        if thumbnail:
            frame = numbers[0] if numbers else None
            image = await context.cpu.run(
                render_thumbnail, handoff, options.viewport, options.media_type, frame
            )
            return _single(request, options.media_type, image)
        images = await context.cpu.run(render_instance, handoff, options, numbers)
    finally:
        handoff.drop()
    if numbers is None or len(numbers) == 1:
        return _single(request, options.media_type, images[0])
    base = _instance_url(context.service_url(request, aet), study, series, sop)
    writer = MultipartWriter()
    request.setHeader(b"Content-Type", writer.content_type(options.media_type).encode("ascii"))
    body = []
    for n, image in zip(numbers, images, strict=True):
        body.append(writer.part_header(options.media_type, f"{base}/frames/{n}/rendered", len(image)))
        body.append(image)
    body.append(writer.close())
    return b"".join(body)


def _single(request: IRequest, media_type: str, image: bytes) -> bytes:
    request.setHeader(b"Content-Type", media_type.encode("ascii"))
    return image


def _instance_url(service: str, study: str, series: str, sop: str) -> str:
    return f"{service}/studies/{quote(study)}/series/{quote(series)}/instances/{quote(sop)}"


async def _multipart_of_instances(
    context: WebContext,
    request: IRequest,
    service: str,
    study: str,
    members: Sequence[Member],
    options: RenderOptions,
) -> bytes:
    """One part per image, written as each is rendered (the response starts with the
    first): instances that cannot be rendered are left out with a log line; when none
    can, the first one's error answers the request."""
    images = [m for m in members if m.image]
    if not images:
        raise NotAcceptable("no instance here has pixel data to render")
    # Klein's request is the site's twisted.web Request; IRequest has no `write` types
    # for a body written in pieces while the handler still runs.
    concrete = cast(Request, request)
    writer: MultipartWriter | None = None
    first_error: BaseException | None = None
    for member in images:
        try:
            # Never a 503 once under way: each call is made in the turn its predecessor's
            # place in the line was given up (`CpuWorkers` releases before it answers).
            parts = await context.cpu.run(render_instance, member.handoff, options)
        except (NotAcceptable, RenderFailed, NotFound) as e:
            log.warn(
                "rendered: leaving out instance {sop}: {why}",
                sop=member.sop,
                why=e.message,
            )
            first_error = first_error or e
            continue
        finally:
            member.handoff.drop()
        if writer is None:
            writer = MultipartWriter()
            concrete.setHeader(b"Content-Type", writer.content_type(options.media_type).encode("ascii"))
        url = _instance_url(service, study, member.series_uid, member.sop) + "/rendered"
        concrete.write(writer.part_header(options.media_type, url, len(parts[0])))
        concrete.write(parts[0])
    if writer is None:
        assert first_error is not None
        raise first_error
    return writer.close()

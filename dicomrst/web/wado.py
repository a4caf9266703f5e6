# -*- test-case-name: tests.unit.test_tap -*-
"""WADO-RS over HTTP: instances and metadata of a study, series or instance.

Checks in order: unknown AET (404), malformed UID (400), Accept (406/400); HEAD stops
there with the headers a GET would carry (no retrieve); an Accept that nothing the AET's
retrieves deliver can satisfy is a 406 before anything moves.  Then the response's sink
is made and `dicomrst.wado.retrieve.send` streams the retrieve into it (and into the
instance cache on the way).
"""

from __future__ import annotations

from typing import cast

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from dicomrst.common.uids import is_uid
from dicomrst.errors import BadRequest, NotAcceptable
from dicomrst.wado import retrieve as wado_retrieve
from dicomrst.wado.metadata_sink import MetadataSink
from dicomrst.wado.negotiation import part_transfer_syntax, select_instance_media, select_metadata_media
from dicomrst.wado.sinks import MultipartSink
from dicomrst.web.context import WebContext
from dicomrst.web.requests import header_text, query_param
from dicomrst.web.responses import NoResponse
from dicomrst.web.site import abort_connection


async def retrieve(
    context: WebContext,
    request: IRequest,
    aet: str,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    metadata: bool = False,
) -> bytes | IResource:
    """Answer a WADO-RS instance (or, with `metadata`, metadata) retrieve at the study,
    series or instance level."""
    backend = context.backend(aet)
    for name, uid in (("study", study), ("series", series), ("instance", instance)):
        if uid is not None and not is_uid(uid):
            raise BadRequest(f"malformed {name} UID {uid!r}")
    accept = header_text(request, b"accept")
    accept_param = query_param(request, b"accept")
    location = context.service_url(request, aet)

    def abort(why: str) -> None:
        abort_connection(request, why)

    # Klein hands on the twisted.web.server.Request the site made (a GatewayRequest), and
    # the sinks are its producer and write through its transport, which IRequest lacks.
    concrete = cast(Request, request)

    sink: MultipartSink | MetadataSink
    if metadata:
        media = select_metadata_media(accept, accept_param)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", media.encode("ascii"))
            return b""
        sink = MetadataSink(concrete, context.reactor, media, location, study, series, abort=abort)
    else:
        choice = select_instance_media(accept, accept_param)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b'multipart/related; type="application/dicom"')
            return b""
        receivable = backend.retrieve_syntaxes
        if all(part_transfer_syntax(choice, ts) is None for ts in receivable):
            # Nothing the backend's retrieves could deliver could be served as asked:
            # say so before moving anything.
            raise NotAcceptable(
                "none of the transfer syntaxes instances arrive in from this AET "
                f"({', '.join(receivable)}) can be produced as asked"
            )
        sink = MultipartSink(
            concrete, context.reactor, choice, location, study, series, source_aet=aet, abort=abort
        )
    if await wado_retrieve.send(backend, sink, study, series, instance, cache=context.cache):
        return b""
    # Cut off: a resource for Klein that writes nothing and never finishes.
    return NoResponse()  # type: ignore[no-untyped-call]  # Resource.__init__, unannotated in Twisted

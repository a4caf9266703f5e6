# -*- test-case-name: tests.unit.test_qido_web -*-
"""QIDO-RS and MWL-RS over HTTP: the request's parameters and Accept in, the search's JSON out.

The routes in `dicomrst.web.app` call `search` with the resource's target: a `Target`,
or the `WorklistTarget` of ``/modality-scheduled-procedure-steps`` (PS3.18 §14.4 is the
QIDO search on the worklist model, with the same parameters and media types). Order of
checks: unknown AET (404), malformed path UID or query (400), Accept (406); HEAD stops
there with the headers a GET would carry (no C-FIND). Otherwise `dicomrst.qido.search`
runs the find, and the response is written once it has ended.

Retrieve URL (0008,1190) is ``{scheme}://{Host}{base-path}/aets/{aet}/studies/…``
(`WebContext.service_url`).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest

from dicomrst.qido import search as qido_search
from dicomrst.qido.negotiation import select_search_media
from dicomrst.qido.query import MORE_RESULTS_WARNING, parse_query
from dicomrst.qido.target import SearchTarget
from dicomrst.web.context import WebContext
from dicomrst.web.requests import header_text, query_args, query_param


def _set_warnings(request: IRequest, service: str, texts: list[str]) -> None:
    for text in texts:
        request.responseHeaders.addRawHeader(b"Warning", f"299 {service}: {text}".encode())


async def search(
    context: WebContext, request: IRequest, aet: str, target: Callable[..., SearchTarget], *uids: str
) -> bytes:
    """Answer one QIDO-RS or MWL-RS request (see the module docstring).

    :param target: a `SearchTarget` constructor, called with the path's `uids` once the
        AET is known to exist (so an unknown AET is a 404 before a bad UID is a 400).
    """
    backend = context.backend(aet)
    query = parse_query(target(*uids), query_args(request))
    media_type = select_search_media(header_text(request, b"accept"), query_param(request, b"accept"))

    service = context.service_url(request, aet)
    request.setHeader(b"Vary", b"Accept")
    if request.method == b"HEAD":
        request.setHeader(b"Content-Type", media_type.encode("ascii"))
        _set_warnings(request, service, query.warnings)
        return b""

    outcome = await qido_search.search(backend, query, service, context.reactor)
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", media_type.encode("ascii"))
    request.setHeader(b"Content-Length", b"%d" % len(outcome.body))
    warnings = list(query.warnings)
    if outcome.more:
        warnings.append(MORE_RESULTS_WARNING)
    _set_warnings(request, service, warnings)
    return outcome.body

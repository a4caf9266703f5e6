# -*- test-case-name: tests.unit.test_qido_web -*-
"""Reading a request's query parameters and headers as text.

Each reader is total: it returns text or raises `BadRequest` naming what is wrong.
"""

from __future__ import annotations

import re

from twisted.web.http import Request
from twisted.web.iweb import IRequest

from dicomrst.errors import BadRequest

# RFC 9110 §7.2 / RFC 3986 §3.2.2: an IP literal, or a name of unreserved characters (which
# covers DNS names and IPv4 addresses), with an optional port.  reg-name's sub-delims
# (',' ';' '(' ...) are left out on purpose: no real host has them, and the Host goes
# into the URLs this gateway answers with (Retrieve URL, Content-Location, Warning).
HOST_PATTERN = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]{2,64}\]|[0-9A-Za-z._~-]{1,253})(?::[0-9]{1,5})?")


def query_args(request: IRequest) -> dict[str, list[str]]:
    """The query parameters, percent-decoded, as UTF-8 text; `BadRequest` if not UTF-8."""
    try:
        return {
            name.decode("utf-8"): [v.decode("utf-8") for v in values] for name, values in request.args.items()
        }
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8 (percent-encode UTF-8 bytes)") from None


def query_param(request: IRequest, name: bytes) -> str | None:
    """A query parameter's values joined with commas (None when absent)."""
    values = request.args.get(name)
    if not values:
        return None
    return b",".join(values).decode("utf-8", "replace")


def header_text(request: IRequest, name: bytes) -> str | None:
    """A header's value as text (HTTP header bytes are Latin-1), None when absent."""
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def request_host(request: IRequest) -> str | None:
    """The request's Host (``name[:port]``), None when it sent an empty one or, in
    HTTP/1.0, none; `BadRequest` when a client sent several, an HTTP/1.1 request sent
    none, or the value is not a host (RFC 9112 §3.2 asks for a 400 in each case)."""
    values: list[bytes] = request.requestHeaders.getRawHeaders(b"host") or []
    if len(values) > 1:
        raise BadRequest("more than one Host header")
    if not values:
        # clientproto is twisted.web.http.Request's (not in IRequest).
        if isinstance(request, Request) and request.clientproto == b"HTTP/1.1":
            raise BadRequest("an HTTP/1.1 request needs a Host header")
        return None
    value = values[0]
    if value == b"":
        return None
    text = value.decode("latin-1")
    if not HOST_PATTERN.fullmatch(text):
        shown = repr(text) if len(text) <= 64 else f"{text[:64]!r}..."
        raise BadRequest(f"invalid Host header {shown}: expected a host name or address and an optional port")
    return text

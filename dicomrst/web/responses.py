# -*- test-case-name: tests.unit.test_web -*-
"""Small pieces every response shares: JSON bodies, the Server header, CORS, and the
resource that answers nothing (a response already cut off).

Kept apart from `dicomrst.web.app` so the site (request timeouts) writes the same
JSON error shape without importing the routes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from dicomrst import NAME, __version__

SERVER = f"{NAME}/{__version__}".encode()

JSON_TYPE = b"application/json"

ALLOW_METHODS = b"GET, HEAD, POST, OPTIONS"

# Browsers hide every response header not listed here from cross-origin scripts;
# viewers need Location/Content-Location after STOW and Retry-After on a 503.
# WWW-Authenticate: a browser app learns why its token was refused (RFC 6750 error=...).
EXPOSE_HEADERS = (
    b"Content-Type, Content-Length, Content-Location, Location, Warning, Retry-After, WWW-Authenticate, "
    b"X-Request-ID"
)

# Offered in a preflight that did not name its headers (rare; browsers always do).
DEFAULT_ALLOW_HEADERS = b"Accept, Authorization, Content-Type, Cache-Control, X-Requested-With"

PREFLIGHT_MAX_AGE = b"600"


@attrs.frozen
class CorsPolicy:
    """Which browser origins may read the gateway's responses
    (``server.http.cors.allowed-origins``).

    Any origin (`origins` None): ``Access-Control-Allow-Origin: *`` and never
    ``Access-Control-Allow-Credentials``: the Fetch standard refuses ``*`` for a request
    made with credentials (cookies, the browser's own HTTP authentication, TLS client
    certificates), and a wildcard must not hand those to every site.  A script that sets
    ``Authorization`` itself (a viewer with an OIDC token) sends no credentials in the
    Fetch sense, so it works with ``*`` (the preflight names ``Authorization``, and the
    gateway echoes the header names asked for).  A list: an ``Origin`` on it is echoed,
    with ``Access-Control-Allow-Credentials: true`` (the operator trusts it) and
    ``Vary: Origin``; any other origin gets no CORS headers, so the browser keeps the
    response from it.
    """

    origins: frozenset[str] | None = None

    @classmethod
    def allowing(cls, origins: Iterable[str] | None) -> CorsPolicy:
        return cls(None if origins is None else frozenset(o.lower() for o in origins))

    def apply(self, request: IRequest) -> None:
        if self.origins is None:
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            request.setHeader(b"Access-Control-Expose-Headers", EXPOSE_HEADERS)
            return
        request.setHeader(b"Vary", b"Origin")
        origin = request.getHeader(b"origin")
        if origin is not None and origin.decode("latin-1").lower() in self.origins:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
            request.setHeader(b"Access-Control-Expose-Headers", EXPOSE_HEADERS)


ANY_ORIGIN = CorsPolicy()


def set_common_headers(request: IRequest, cors: CorsPolicy = ANY_ORIGIN) -> None:
    """Headers every response carries, errors and 404s included."""
    request.setHeader(b"Server", SERVER)
    # No response may be sniffed into another type (a JSON error into HTML, say).
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    cors.apply(request)


def response_started(request: IRequest) -> bool:
    """The status line and headers went out: an error can no longer change them."""
    return isinstance(request, Request) and bool(request.startedWriting)


def json_body(request: IRequest, obj: Any, status: int = 200) -> bytes:
    """Set status, Content-Type and Content-Length for `obj` and return its bytes.

    An explicit Content-Length keeps small bodies from being sent chunked.
    """
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def error_body(request: IRequest, status: int, message: str) -> bytes:
    """The one shape of an error body: ``{"error": message}``."""
    return json_body(request, {"error": message}, status)


class NoResponse(Resource):
    """Handed to Klein after a response was cut off, so it neither writes nor finishes."""

    isLeaf = True

    def render(self, request: IRequest) -> int:
        return NOT_DONE_YET

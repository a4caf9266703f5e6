# -*- test-case-name: tests.unit.test_web -*-
"""The one place a failure becomes an HTTP status and a response.

The error types (`dicomrst.errors`, and the more specific ones lower layers derive from
them) say what went wrong; which status a client sees for that is decided here only.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from dicomrst.errors import (
    BadRequest,
    Conflict,
    DicomrstError,
    Forbidden,
    NotAcceptable,
    NotFound,
    NotImplementedService,
    PayloadTooLarge,
    RangeNotSatisfiable,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
)
from dicomrst.logs import logger
from dicomrst.web.responses import NoResponse, error_body, response_started
from dicomrst.web.site import abort_connection

log = logger("dicomrst.web")

#: By error type; a subclass answers with the status of its nearest listed base.
HTTP_STATUS: dict[type[BaseException], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    NotAcceptable: 406,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    RangeNotSatisfiable: 416,
    DicomrstError: 500,
    NotImplementedService: 501,
    UpstreamError: 502,
    ServiceUnavailable: 503,
    UpstreamTimeout: 504,
}


def http_status(error: BaseException) -> int:
    """The status a request that failed with `error` is answered with (500 if unknown)."""
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def set_error_headers(request: IRequest, error: DicomrstError) -> None:
    """The headers `error`'s status comes with: ``WWW-Authenticate`` (one field per
    challenge), ``Retry-After``, ``Content-Range``."""
    if isinstance(error, (Unauthorized, Forbidden)):
        request.responseHeaders.removeHeader(b"WWW-Authenticate")
        for challenge in error.challenges:
            request.responseHeaders.addRawHeader(b"WWW-Authenticate", challenge.encode("ascii", "replace"))
    if isinstance(error, ServiceUnavailable) and error.retry_after is not None:
        request.setHeader(b"Retry-After", b"%d" % error.retry_after)
    if isinstance(error, RangeNotSatisfiable):
        # RFC 9110 §15.5.17: the current length, so the client can ask again.
        request.setHeader(b"Content-Range", b"bytes */%d" % error.length)


def _path_for_log(request: IRequest) -> str:
    path = request.path if request.path is not None else b"-"
    return path.decode("utf-8", "backslashreplace")


def error_response(request: IRequest, failure: Failure) -> bytes | IResource:
    """The one place a failure becomes an HTTP error response.

    `DicomrstError` subclasses answer with their status (`http_status`) and message;
    routing misses with 404/405; anything else is a 500 whose traceback is logged
    here, once, and never sent.
    """
    if response_started(request):
        # Status and headers are already out (a stream failed midway): a 5xx is
        # impossible, and finishing would make a truncated body look complete.
        log.failure(
            "{method} {path} failed after the response began; aborting",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=_path_for_log(request),
        )
        abort_connection(request)
        return NoResponse()  # type: ignore[no-untyped-call]  # Resource.__init__, unannotated in Twisted

    error = failure.value
    if isinstance(error, DicomrstError):
        set_error_headers(request, error)
        return error_body(request, http_status(error), error.message)
    if isinstance(error, MethodNotAllowed):
        allowed = {m.upper() for m in error.valid_methods or ()} | {"OPTIONS"}
        request.setHeader(b"Allow", ", ".join(sorted(allowed)).encode("ascii"))
        method = request.method.decode("ascii", "replace")
        return error_body(request, 405, f"method {method} not allowed")
    if isinstance(error, RouteNotFound):
        return error_body(request, 404, "not found")
    if isinstance(error, HTTPException) and error.code is not None and error.code < 500:
        # Other werkzeug routing outcomes (redirects cannot happen: the map has
        # strict_slashes off and the path is normalised first).
        response = error.get_response()
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return error_body(request, error.code, error.name.lower())

    log.failure(
        "Unhandled error in {method} {path}",
        failure,
        method=request.method.decode("ascii", "replace"),
        path=_path_for_log(request),
    )
    return error_body(request, 500, "internal error")

# -*- test-case-name: tests.test_web -*-
"""The gateway's routes, as one Klein app whose handlers are methods.

Klein's app is a class attribute and all state (backends, clock, timeouts) lives on
the `GatewayApp` instance, so tests build as many independent apps as they like.
New routes (QIDO, WADO, STOW under ``/aets/<aet>/studies``) are further methods
decorated with ``@app.route``; they inherit the base path, trailing-slash
handling, CORS, the Server header and the error mapping from `resource()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from klein import Klein
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from dicomrst import NAME, __version__
from dicomrst.backends.interfaces import IBackend
from dicomrst.errors import BadRequest, DicomrstError, NotFound, ServiceUnavailable, UpstreamTimeout
from dicomrst.logs import logger
from dicomrst.qido.query import Target
from dicomrst.web import qido, stow, wado
from dicomrst.web.responses import (
    ALLOW_METHODS,
    DEFAULT_ALLOW_HEADERS,
    PREFLIGHT_MAX_AGE,
    error_body,
    json_body,
    set_common_headers,
)
from dicomrst.web.site import abort_connection

log = logger("dicomrst.web")


def _path_for_log(request: IRequest) -> str:
    path = request.path if request.path is not None else b"-"
    return path.decode("utf-8", "backslashreplace")


def error_response(request: IRequest, failure: Failure) -> bytes | IResource:
    """The one place a failure becomes an HTTP error response.

    `DicomrstError` subclasses answer with their ``http_status`` and message;
    routing misses with 404/405; anything else is a 500 whose traceback is logged
    here, once, and never sent.
    """
    if getattr(request, "startedWriting", False):
        # Status and headers are already out (a stream failed midway): a 5xx is
        # impossible, and finishing would make a truncated body look complete.
        log.failure(
            "{method} {path} failed after the response began; aborting",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=_path_for_log(request),
        )
        abort_connection(request)
        return _NoResponse()

    error = failure.value
    if isinstance(error, DicomrstError):
        if isinstance(error, ServiceUnavailable) and error.retry_after is not None:
            request.setHeader(b"Retry-After", b"%d" % error.retry_after)
        return error_body(request, error.http_status, error.message)
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


class _NoResponse(Resource):
    """Handed to Klein after an abort so it neither writes nor finishes."""

    isLeaf = True

    def render(self, request: IRequest) -> int:
        return NOT_DONE_YET


def _split_base(base_path: str) -> list[bytes]:
    return [s.encode("utf-8") for s in base_path.split("/") if s]


class _GatewayRoot(Resource):
    """Everything that must happen before routing, for every request.

    Headers common to all responses, CORS preflight, the base path and trailing
    slashes are handled here rather than in Klein so routes added later cannot
    forget them.
    """

    isLeaf = True

    def __init__(self, routes: IResource, base: list[bytes], app: GatewayApp | None = None) -> None:
        super().__init__()
        self._routes = routes
        self._base = base
        self._app = app

    def bodyConsumerFactory(self, request: IRequest) -> Any:
        """`GatewaySite`'s hook: STOW-RS bodies are parsed as they arrive."""
        return stow.body_consumer(self._app, request) if self._app is not None else None

    def render(self, request: IRequest) -> bytes | int:
        set_common_headers(request)
        try:
            if request.method == b"OPTIONS":
                return self._preflight(request)
            postpath: list[bytes] = request.postpath  # type: ignore[attr-defined]
            n = len(self._base)
            if postpath[:n] != self._base:
                return self._respond(request, error_response(request, Failure(NotFound("not found"))))
            rest = postpath[n:]
            try:
                b"/".join(rest).decode("utf-8")
            except UnicodeDecodeError:
                # Checked here so the 400 has our JSON shape (Klein answers in text).
                bad = Failure(BadRequest("path is not UTF-8"))
                return self._respond(request, error_response(request, bad))
            # "/studies/" is "/studies" for every route, with no redirect.
            while rest and rest[-1] == b"":
                rest.pop()
            request.prepath.extend(postpath[:n])  # type: ignore[attr-defined]
            request.postpath = rest or [b""]  # type: ignore[attr-defined]
            return self._routes.render(request)  # type: ignore[no-any-return]
        except Exception:
            return self._respond(request, error_response(request, Failure()))

    def _preflight(self, request: IRequest) -> int:
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
        asked = request.getHeader(b"Access-Control-Request-Headers")
        request.setHeader(b"Access-Control-Allow-Headers", asked if asked else DEFAULT_ALLOW_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        # The answer depends on the asked headers; caches must not mix them up.
        request.setHeader(b"Vary", b"Access-Control-Request-Headers")
        return self._respond(request, b"")

    @staticmethod
    def _respond(request: IRequest, body: bytes | IResource) -> int:
        # Written by hand rather than returned: twisted.web would add
        # "Content-Length: 0" to a 204 and log a warning for HEAD bodies.
        if isinstance(body, bytes):
            request.write(body)
            request.finish()
        return NOT_DONE_YET


class GatewayApp:
    """The DICOMweb gateway's HTTP routes.

    :param backends: the configured AETs, keyed by AE title (``/aets/{aet}``).
    :param clock: the reactor, for timeouts (a `Clock` in tests).
    :param base_path: URL prefix all routes live under, e.g. ``"/dicomweb"``.
    :param echo_timeout: seconds ``GET /aets/{aet}`` waits for the echo.
    :param stow_spool_dir: where STOW-RS parts larger than `stow_spool_threshold` bytes
        are spooled (None: the system's temporary directory).
    """

    app = Klein()
    # Set before any route is added (werkzeug copies them into each rule):
    # a rule written with a trailing slash must not answer with a redirect,
    # and "//" must not be redirected (the Location would use the wrong scheme
    # behind a TLS-terminating proxy).
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

    def __init__(
        self,
        backends: Mapping[str, IBackend],
        clock: IReactorTime,
        base_path: str = "/",
        echo_timeout: float = 10.0,
        stow_spool_dir: str | None = None,
        stow_spool_threshold: int = 1024 * 1024,
    ) -> None:
        self.backends = backends
        self.clock = clock
        self.base_path = base_path
        self.echo_timeout = echo_timeout
        self.stow_spool_dir = stow_spool_dir
        self.stow_spool_threshold = stow_spool_threshold

    def resource(self) -> IResource:
        """The root resource for a `Site`: base path, CORS, Server header, errors, routes."""
        return _GatewayRoot(self.app.resource(), _split_base(self.base_path), self)

    def backend(self, aet: str) -> IBackend:
        """The backend for `aet`; `NotFound` (404) if no such AET is configured."""
        try:
            return self.backends[aet]
        except KeyError:
            raise NotFound(f"unknown AET '{aet}'") from None

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes | IResource:
        return error_response(request, failure)

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        return json_body(request, {"name": NAME, "version": __version__})

    @app.route("/aets", methods=["GET"])
    def aets(self, request: IRequest) -> bytes:
        return json_body(request, list(self.backends))

    @app.route("/aets/<aet>", methods=["GET"])
    async def aet_health(self, request: IRequest, aet: str) -> bytes:
        backend = self.backend(aet)
        echo = backend.echo()
        echo.addTimeout(self.echo_timeout, self.clock)
        try:
            round_trip_ms = await echo
        except DeferredTimeoutError:
            raise UpstreamTimeout(
                f"{aet} did not answer the echo within {round(self.echo_timeout * 1000)} ms"
            ) from None
        return json_body(request, {"aet": aet, "status": "ok", "round_trip_ms": float(round_trip_ms)})

    # -- QIDO-RS (dicomrst.web.qido); HEAD is answered from the same handlers ----------

    @app.route("/aets/<aet>/studies", methods=["GET"])
    async def search_studies(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self, request, aet, Target.studies)

    @app.route("/aets/<aet>/studies/<study>/series", methods=["GET"])
    async def search_study_series(self, request: IRequest, aet: str, study: str) -> bytes:
        return await qido.search(self, request, aet, Target.study_series, study)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances", methods=["GET"])
    async def search_series_instances(self, request: IRequest, aet: str, study: str, series: str) -> bytes:
        return await qido.search(self, request, aet, Target.study_series_instances, study, series)

    @app.route("/aets/<aet>/studies/<study>/instances", methods=["GET"])
    async def search_study_instances(self, request: IRequest, aet: str, study: str) -> bytes:
        return await qido.search(self, request, aet, Target.study_instances, study)

    @app.route("/aets/<aet>/series", methods=["GET"])
    async def search_series(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self, request, aet, Target.all_series)

    @app.route("/aets/<aet>/instances", methods=["GET"])
    async def search_instances(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self, request, aet, Target.all_instances)

    # -- WADO-RS instances (dicomrst.web.wado) --------------------------------------------

    @app.route("/aets/<aet>/studies/<study>", methods=["GET"])
    async def retrieve_study(self, request: IRequest, aet: str, study: str) -> bytes:
        return await wado.retrieve(self, request, aet, study)

    @app.route("/aets/<aet>/studies/<study>/series/<series>", methods=["GET"])
    async def retrieve_series(self, request: IRequest, aet: str, study: str, series: str) -> bytes:
        return await wado.retrieve(self, request, aet, study, series)

    # Not <instance>: Klein's route executor takes the bound object as `instance`.
    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>", methods=["GET"])
    async def retrieve_instance(
        self, request: IRequest, aet: str, study: str, series: str, sop: str
    ) -> bytes:
        return await wado.retrieve(self, request, aet, study, series, sop)

    # -- WADO-RS metadata -----------------------------------------------------------------

    @app.route("/aets/<aet>/studies/<study>/metadata", methods=["GET"])
    async def study_metadata(self, request: IRequest, aet: str, study: str) -> Any:
        return await wado.retrieve(self, request, aet, study, metadata=True)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/metadata", methods=["GET"])
    async def series_metadata(self, request: IRequest, aet: str, study: str, series: str) -> Any:
        return await wado.retrieve(self, request, aet, study, series, metadata=True)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/metadata", methods=["GET"])
    async def instance_metadata(self, request: IRequest, aet: str, study: str, series: str, sop: str) -> Any:
        return await wado.retrieve(self, request, aet, study, series, sop, metadata=True)

    # -- STOW-RS (dicomrst.web.stow) ------------------------------------------------------

    @app.route("/aets/<aet>/studies", methods=["POST"])
    async def store_instances(self, request: IRequest, aet: str) -> bytes:
        return await stow.store(self, request, aet, None)

    @app.route("/aets/<aet>/studies/<study>", methods=["POST"])
    async def store_study_instances(self, request: IRequest, aet: str, study: str) -> bytes:
        return await stow.store(self, request, aet, study)

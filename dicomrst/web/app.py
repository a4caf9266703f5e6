# -*- test-case-name: tests.unit.test_web -*-
"""The gateway's routes, as one Klein app whose handlers are methods.

Klein's app is a class attribute and all state lives on the `GatewayApp` instance (its
`WebContext`), so tests build as many independent apps as they like.  Handlers are thin:
each hands the request and the context to the module of its service (`dicomrst.web.qido`,
`.wado`, `.stow`).  Routes inherit the base path, trailing-slash handling, CORS, the
Server header and the error mapping from `GatewayRoot`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from dicomrst import NAME, __version__
from dicomrst.auth.principal import Principal
from dicomrst.backends.interfaces import IBackend
from dicomrst.cache import InstanceCache
from dicomrst.common.cpu import CpuWorkers
from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.twisted_internals import request_disconnected
from dicomrst.errors import BadRequest, DicomrstError, NotFound, UpstreamTimeout
from dicomrst.logs import logger
from dicomrst.qido.target import Target
from dicomrst.qido.worklist import WorklistTarget
from dicomrst.stow.upload import StowUpload
from dicomrst.web import frames, qido, rendered, stow, wado
from dicomrst.web.access import ADMITTED, AccessGate, Need, Requirement
from dicomrst.web.audit import WebAudit
from dicomrst.web.context import DEFAULT_SPOOL_THRESHOLD, WebContext
from dicomrst.web.dispatch import Routes
from dicomrst.web.errors import error_response, http_status, set_error_headers
from dicomrst.web.requests import request_host
from dicomrst.web.responses import (
    ALLOW_METHODS,
    ANY_ORIGIN,
    DEFAULT_ALLOW_HEADERS,
    PREFLIGHT_MAX_AGE,
    CorsPolicy,
    json_body,
    set_common_headers,
)
from dicomrst.web.site import BodyConsumer, GatewayRequest, IStreamedBodies
from dicomrst.web.urls import PublicUrls

log = logger("dicomrst.web")

# A comma-separated list of RFC 9110 tokens (header names), as long as a header block allows.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER_NAMES = re.compile(rb"[ \t]*" + _TOKEN + rb"(?:[ \t]*,[ \t]*" + _TOKEN + rb")*[ \t]*")

#: The STOW-RS routes: their bodies are parsed as they arrive (`GatewayRoot.bodyConsumerFactory`).
STOW_ENDPOINTS = frozenset(("store_instances", "store_study_instances"))

#: What each route (by endpoint: its handler's name) asks of the caller, checked by
#: `GatewayRoot` before Klein sees the request (`dicomrst.web.access`).  Every route of
#: the URL map must be here: `GatewayRoot` refuses to build otherwise, so a route added
#: without a line here fails every test rather than going out unchecked.
ROUTE_ACCESS: Mapping[str, Need] = {
    "root": Need.ADMITTED,
    "aets": Need.ADMITTED,  # lists only the AETs the caller may read
    "aet_health": Need.READ,
    # QIDO-RS and MWL-RS
    "search_studies": Need.READ,
    "search_study_series": Need.READ,
    "search_series_instances": Need.READ,
    "search_study_instances": Need.READ,
    "search_series": Need.READ,
    "search_instances": Need.READ,
    "search_worklist": Need.READ,
    # WADO-RS
    "retrieve_study": Need.READ,
    "retrieve_series": Need.READ,
    "retrieve_instance": Need.READ,
    "study_metadata": Need.READ,
    "series_metadata": Need.READ,
    "instance_metadata": Need.READ,
    "retrieve_frames": Need.READ,
    "instance_pixeldata": Need.READ,
    "study_pixeldata": Need.READ,
    "series_pixeldata": Need.READ,
    "instance_bulkdata": Need.READ,
    "rendered_study": Need.READ,
    "rendered_series": Need.READ,
    "rendered_instance": Need.READ,
    "rendered_frames": Need.READ,
    "thumbnail_study": Need.READ,
    "thumbnail_series": Need.READ,
    "thumbnail_instance": Need.READ,
    "thumbnail_frames": Need.READ,
    # STOW-RS
    "store_instances": Need.WRITE,
    "store_study_instances": Need.WRITE,
}


class _RouteLabelling(Klein):
    """Klein, telling each request it routes which route took it (`GatewayRequest.route`,
    the metrics' label): its template, one string per route whatever the URL."""

    def execute_endpoint(self, endpoint: str, request: IRequest, *args: Any, **kwargs: Any) -> Any:
        if isinstance(request, GatewayRequest):
            request.route = ROUTE_TEMPLATES.get(endpoint, endpoint)
        return super().execute_endpoint(endpoint, request, *args, **kwargs)


#: A route Klein's URL map matched: its endpoint and the path's values.
_Route = tuple[str, Mapping[str, Any]]


def _label(request: IRequest | None, route: _Route | None) -> None:
    """Tell `request` its route's template before Klein does (a refused request never
    reaches Klein; the metrics label it all the same)."""
    if route is not None and isinstance(request, GatewayRequest):
        request.route = ROUTE_TEMPLATES.get(route[0], route[0])


def unchecked_routes(app: Klein) -> set[str]:
    """Endpoints of `app`'s URL map that `ROUTE_ACCESS` does not name (empty when all are)."""
    return {str(rule.endpoint) for rule in app.url_map.iter_rules()} - set(ROUTE_ACCESS)


def _gone(request: IRequest) -> bool:
    """The response was finished (a 504 at the deadline) or the client left."""
    return isinstance(request, Request) and (bool(request.finished) or request_disconnected(request))


def _split_base(base_path: str) -> list[bytes]:
    return [s.encode("utf-8") for s in base_path.split("/") if s]


@implementer(IStreamedBodies)
class GatewayRoot(Resource):
    """Everything that must happen before routing, for every request.

    Headers common to all responses, CORS preflight, the base path, trailing slashes
    and the access check (`dicomrst.web.access`) are handled here rather than in Klein
    so routes added later cannot forget them.  It is also the `GatewaySite`'s hook for
    request bodies: a STOW-RS body (found through Klein's URL map, as the route itself
    is) is parsed as it arrives, once its access check allows it.
    """

    isLeaf = True

    def __init__(self, app: GatewayApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        unchecked = unchecked_routes(app.app)
        if unchecked:
            raise RuntimeError(f"routes missing from ROUTE_ACCESS: {', '.join(sorted(unchecked))}")
        self._app = app
        self._routes = app.routes
        self._base = _split_base(app.context.base_path)
        self._gate = app.context.access
        self._audit = app.context.audit
        self._cors = app.cors

    def requirement(self, path: bytes, method: str, request: IRequest | None = None) -> Requirement:
        """What a request for `path` with `method` asks of its caller (`ROUTE_ACCESS`);
        a path no route matches asks to be admitted (and is then a 404 or 405).  `request`,
        when given, learns its route (the metrics' label, also when it is refused)."""
        route = self._app.route_of(path, method)
        _label(request, route)
        return self._requirement_of(route)

    @staticmethod
    def _requirement_of(route: _Route | None) -> Requirement:
        if route is None:
            return ADMITTED
        endpoint, values = route
        need = ROUTE_ACCESS[endpoint]
        return Requirement(need, values.get("aet") if need is not Need.ADMITTED else None)

    def bodyConsumerFactory(self, request: GatewayRequest) -> BodyConsumer | None:
        """A `StowUpload` for a STOW-RS request (behind its access check); a consumer that
        drops the body of a request no route takes (a 404 or 405 whatever it holds: it
        need not be kept, up to ``max-upload-size``, in memory or a temporary file); None
        for any other."""
        if request.method in (b"GET", b"HEAD", b"OPTIONS") or request.path is None:
            return None
        route = self._app.route_of(request.path, request.method.decode("ascii", "replace"))
        if route is None:
            return DroppedBody()
        if route[0] not in STOW_ENDPOINTS:
            return None
        values = route[1]

        def upload() -> StowUpload:
            return stow.body_consumer(self._app.context, request, values["aet"], values.get("study"))

        requirement = Requirement(ROUTE_ACCESS[route[0]], values["aet"])

        def refuse(request: GatewayRequest, failure: Failure) -> None:
            self._refuse_body(request, failure, route)

        return self._gate.streamed_body(request, requirement, upload, refuse)

    def _refuse_body(
        self, request: GatewayRequest, failure: Failure, route: _Route | None = None
    ) -> None:
        """The access check refused a STOW-RS request whose body is still arriving."""
        if request.state != "body":
            return  # the body is in (the route answers with the same decision) or the request is over
        error = failure.value
        if not isinstance(error, DicomrstError):
            log.failure("access check of {path} failed", failure, path=request.path)
            error = DicomrstError("internal error")
        if route is not None:
            self._audit.begin(request, route[0], route[1], None, refusal=error.message)
        set_error_headers(request, error)
        request.refuse(http_status(error), error.message)

    def render(self, request: IRequest) -> bytes | int:
        set_common_headers(request, self._cors)
        try:
            # Before Klein (which answers a non-UTF-8 Host with a bare text 400, and passes
            # others to werkzeug) and before any URL is built from it.
            request_host(request)
            if request.method == b"OPTIONS":
                return self._preflight(request)
            postpath: list[bytes] = request.postpath
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
            # Matching the route costs about 0.1 ms a request; an open gate and no audit
            # trail need none.
            route = None
            if self._audit.enabled or not self._gate.unrestricted:
                route = self._app.route_of(request.path or b"/", request.method.decode("ascii", "replace"))
                _label(request, route)
            requirement = ADMITTED if self._gate.unrestricted else self._requirement_of(route)
            request.prepath.extend(postpath[:n])
            request.postpath = rest or [b""]
            principal = self._gate.admitted_at_once(request)
            if principal is not None:
                # An open gate: what the Deferred below would do, without it.
                try:
                    self._route(principal, request, route)
                except Exception:
                    self._refused(Failure(), request, route)
                return NOT_DONE_YET
            decision = self._gate.check(request, requirement)
            decision.addCallback(self._route, request, route)
            decision.addErrback(self._refused, request, route)
            return NOT_DONE_YET
        except Exception:
            return self._respond(request, error_response(request, Failure()))

    def _route(self, principal: object, request: IRequest, route: _Route | None) -> None:
        if _gone(request):
            return
        if route is not None and isinstance(principal, Principal):
            self._audit.begin(request, route[0], route[1], principal)
        self._routes.render(request)

    def _refused(self, failure: Failure, request: IRequest, route: _Route | None) -> None:
        if not _gone(request):
            if route is not None:
                error = failure.value
                why = error.message if isinstance(error, DicomrstError) else "access check failed"
                self._audit.begin(request, route[0], route[1], None, refusal=why)
            self._respond(request, error_response(request, failure))

    def _preflight(self, request: IRequest) -> int:
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
        asked = request.getHeader(b"Access-Control-Request-Headers")
        # Echoed only when it is what browsers send, a list of header names.
        valid = asked is not None and _HEADER_NAMES.fullmatch(asked) is not None
        request.setHeader(b"Access-Control-Allow-Headers", asked if valid else DEFAULT_ALLOW_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        # The answer depends on the asked headers (and the origin, with a list of them);
        # caches must not mix them up.
        vary = b"Access-Control-Request-Headers"
        request.setHeader(b"Vary", vary if self._cors.origins is None else b"Origin, " + vary)
        return self._respond(request, b"")

    @staticmethod
    def _respond(request: IRequest, body: bytes | IResource) -> int:
        # Written by hand rather than returned: twisted.web would add
        # "Content-Length: 0" to a 204 and log a warning for HEAD bodies.
        if isinstance(body, bytes):
            request.write(body)
            request.finish()
        return NOT_DONE_YET


class DroppedBody:
    """The body of a request that will be answered 404 or 405: read, and dropped."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def bodyFinished(self) -> None:
        pass

    def bodyTooLarge(self, reason: str) -> bool:
        return False

    def requestOver(self) -> None:
        pass


class GatewayApp:
    """The DICOMweb gateway's HTTP routes.

    :param backends: the configured AETs, keyed by AE title (``/aets/{aet}``).
    :param reactor: for timeouts and the thread pool (a `Clock` in tests that need neither
        threads nor sockets).
    :param base_path: URL prefix all routes live under, e.g. ``"/dicomweb"``.
    :param echo_timeout: seconds ``GET /aets/{aet}`` waits for the echo.
    :param stow_spool_dir: where STOW-RS parts larger than `stow_spool_threshold` bytes
        are spooled (None: the system's temporary directory).
    :param cache: the instance cache (None: one that keeps nothing, `InstanceCache.off`).
    :param cpu: the bounded line of image work (None: `CpuWorkers` on `reactor`'s thread
        pool; tests without threads pass one with a pool of their own).
    :param access: ``server.auth`` and ``aets[].access`` (None: everyone may do everything).
    :param cors: ``server.http.cors`` (None: any origin).
    :param metrics: what counts STOW-RS instances (None: metrics are off).
    :param urls: ``server.http.public-url`` and ``trusted-proxies`` (None: neither).
    :param audit: ``telemetry.audit`` (None: no audit trail).
    """

    app = _RouteLabelling()
    # Set before any route is added (werkzeug copies them into each rule):
    # a rule written with a trailing slash must not answer with a redirect,
    # and "//" must not be redirected (the Location would use the wrong scheme
    # behind a TLS-terminating proxy).
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

    def __init__(
        self,
        backends: Mapping[str, IBackend],
        reactor: IGatewayReactor,
        base_path: str = "/",
        echo_timeout: float = 10.0,
        stow_spool_dir: str | None = None,
        stow_spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
        cache: InstanceCache | None = None,
        cpu: CpuWorkers | None = None,
        access: AccessGate | None = None,
        cors: CorsPolicy | None = None,
        urls: PublicUrls | None = None,
        metrics: Metrics | None = None,
        audit: WebAudit | None = None,
    ) -> None:
        # Left out, the context makes its own (one per gateway, the ranged reads' too).
        optional: dict[str, Any] = {"cpu": cpu} if cpu is not None else {}
        if access is not None:
            optional["access"] = access
        if urls is not None:
            optional["urls"] = urls
        if metrics is not None:
            optional["metrics"] = metrics
        if audit is not None:
            optional["audit"] = audit
        self.cors = cors if cors is not None else ANY_ORIGIN
        self.context = WebContext(
            backends,
            reactor,
            base_path,
            echo_timeout,
            stow_spool_dir,
            stow_spool_threshold,
            cache if cache is not None else InstanceCache.off(reactor),
            **optional,
        )
        #: Klein's routes of this instance, matched and dispatched (`Routes`).
        self.routes = Routes(self.app)

    def resource(self) -> IResource:
        """The root resource for a `Site`: base path, CORS, Server header, errors, routes."""
        return GatewayRoot(self)

    def route_of(self, path: bytes, method: str) -> tuple[str, Mapping[str, Any]] | None:
        """The endpoint and path values Klein's URL map gives `path` (a request's path,
        base path included), or None if it matches no route.  Segments are unquoted as
        twisted.web unquotes them for the routes, so both agree."""
        segments = [unquote_to_bytes(s) for s in path.split(b"/")[1:]]
        base = _split_base(self.context.base_path)
        if segments[: len(base)] != base:
            return None
        rest = segments[len(base) :]
        while rest and rest[-1] == b"":
            rest.pop()
        try:
            path_info = "/" + "/".join(s.decode("utf-8") for s in rest)
            return self.routes.match(method, path_info)
        except (UnicodeDecodeError, HTTPException):
            return None

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes | IResource:
        return error_response(request, failure)

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        return json_body(request, {"name": NAME, "version": __version__})

    @app.route("/aets", methods=["GET"])
    def aets(self, request: IRequest) -> bytes:
        return json_body(request, self.context.access.readable(request, self.context.backends))

    @app.route("/aets/<aet>", methods=["GET"])
    async def aet_health(self, request: IRequest, aet: str) -> bytes:
        context = self.context
        echo = context.backend(aet).echo()
        echo.addTimeout(context.echo_timeout, context.reactor)
        try:
            round_trip_ms = await echo
        except DeferredTimeoutError:
            raise UpstreamTimeout(
                f"{aet} did not answer the echo within {round(context.echo_timeout * 1000)} ms"
            ) from None
        return json_body(request, {"aet": aet, "status": "ok", "round_trip_ms": float(round_trip_ms)})

    # -- QIDO-RS (dicomrst.web.qido); HEAD is answered from the same handlers ----------

    @app.route("/aets/<aet>/studies", methods=["GET"])
    async def search_studies(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self.context, request, aet, Target.studies)

    @app.route("/aets/<aet>/studies/<study>/series", methods=["GET"])
    async def search_study_series(self, request: IRequest, aet: str, study: str) -> bytes:
        return await qido.search(self.context, request, aet, Target.study_series, study)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances", methods=["GET"])
    async def search_series_instances(self, request: IRequest, aet: str, study: str, series: str) -> bytes:
        return await qido.search(self.context, request, aet, Target.study_series_instances, study, series)

    @app.route("/aets/<aet>/studies/<study>/instances", methods=["GET"])
    async def search_study_instances(self, request: IRequest, aet: str, study: str) -> bytes:
        return await qido.search(self.context, request, aet, Target.study_instances, study)

    @app.route("/aets/<aet>/series", methods=["GET"])
    async def search_series(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self.context, request, aet, Target.all_series)

    @app.route("/aets/<aet>/instances", methods=["GET"])
    async def search_instances(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self.context, request, aet, Target.all_instances)

    # -- MWL-RS: the QIDO search on the Modality Worklist model (dicomrst.qido.worklist) ---

    @app.route("/aets/<aet>/modality-scheduled-procedure-steps", methods=["GET"])
    async def search_worklist(self, request: IRequest, aet: str) -> bytes:
        return await qido.search(self.context, request, aet, WorklistTarget)

    # -- WADO-RS instances and metadata (dicomrst.web.wado) -------------------------------

    @app.route("/aets/<aet>/studies/<study>", methods=["GET"])
    async def retrieve_study(self, request: IRequest, aet: str, study: str) -> bytes | IResource:
        return await wado.retrieve(self.context, request, aet, study)

    @app.route("/aets/<aet>/studies/<study>/series/<series>", methods=["GET"])
    async def retrieve_series(
        self, request: IRequest, aet: str, study: str, series: str
    ) -> bytes | IResource:
        return await wado.retrieve(self.context, request, aet, study, series)

    # Not <instance>: Klein's route executor takes the bound object as `instance`.
    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>", methods=["GET"])
    async def retrieve_instance(
        self, request: IRequest, aet: str, study: str, series: str, sop: str
    ) -> bytes | IResource:
        return await wado.retrieve(self.context, request, aet, study, series, sop)

    @app.route("/aets/<aet>/studies/<study>/metadata", methods=["GET"])
    async def study_metadata(self, request: IRequest, aet: str, study: str) -> bytes | IResource:
        return await wado.retrieve(self.context, request, aet, study, metadata=True)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/metadata", methods=["GET"])
    async def series_metadata(
        self, request: IRequest, aet: str, study: str, series: str
    ) -> bytes | IResource:
        return await wado.retrieve(self.context, request, aet, study, series, metadata=True)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/metadata", methods=["GET"])
    async def instance_metadata(
        self, request: IRequest, aet: str, study: str, series: str, sop: str
    ) -> bytes | IResource:
        return await wado.retrieve(self.context, request, aet, study, series, sop, metadata=True)

    # -- WADO-RS frames, pixel data and bulk data of an instance (dicomrst.web.frames) ----

    @app.route(
        "/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/frames/<frame_list>", methods=["GET"]
    )
    async def retrieve_frames(
        self, request: IRequest, aet: str, study: str, series: str, sop: str, frame_list: str
    ) -> bytes | IResource:
        return await frames.frames(self.context, request, aet, study, series, sop, frame_list)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/pixeldata", methods=["GET"])
    async def instance_pixeldata(
        self, request: IRequest, aet: str, study: str, series: str, sop: str
    ) -> bytes | IResource:
        return await frames.pixeldata(self.context, request, aet, study, series, sop)

    @app.route("/aets/<aet>/studies/<study>/pixeldata", methods=["GET"])
    async def study_pixeldata(self, request: IRequest, aet: str, study: str) -> bytes | IResource:
        return await frames.study_pixeldata(self.context, request, aet, study)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/pixeldata", methods=["GET"])
    async def series_pixeldata(
        self, request: IRequest, aet: str, study: str, series: str
    ) -> bytes | IResource:
        return await frames.study_pixeldata(self.context, request, aet, study, series)

    @app.route(
        "/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/bulkdata/<path:bulk>", methods=["GET"]
    )
    async def instance_bulkdata(
        self, request: IRequest, aet: str, study: str, series: str, sop: str, bulk: str
    ) -> bytes | IResource:
        return await frames.bulkdata(self.context, request, aet, study, series, sop, bulk)

    # -- STOW-RS (dicomrst.web.stow) ------------------------------------------------------

    @app.route("/aets/<aet>/studies", methods=["POST"])
    async def store_instances(self, request: IRequest, aet: str) -> bytes:
        return await stow.store(self.context, request, aet, None)

    @app.route("/aets/<aet>/studies/<study>", methods=["POST"])
    async def store_study_instances(self, request: IRequest, aet: str, study: str) -> bytes:
        return await stow.store(self.context, request, aet, study)

    # -- WADO-RS rendered and thumbnail (dicomrst.web.rendered) ----------------------------

    @app.route("/aets/<aet>/studies/<study>/rendered", methods=["GET"])
    async def rendered_study(self, request: IRequest, aet: str, study: str) -> bytes:
        return await rendered.rendered(self.context, request, aet, study)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/rendered", methods=["GET"])
    async def rendered_series(self, request: IRequest, aet: str, study: str, series: str) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, series)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/rendered", methods=["GET"])
    async def rendered_instance(
        self, request: IRequest, aet: str, study: str, series: str, sop: str
    ) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, series, sop)

    @app.route(
        "/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/rendered",
        methods=["GET"],
    )
    async def rendered_frames(
        self, request: IRequest, aet: str, study: str, series: str, sop: str, frames: str
    ) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, series, sop, frames)

    @app.route("/aets/<aet>/studies/<study>/thumbnail", methods=["GET"])
    async def thumbnail_study(self, request: IRequest, aet: str, study: str) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, thumbnail=True)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/thumbnail", methods=["GET"])
    async def thumbnail_series(self, request: IRequest, aet: str, study: str, series: str) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, series, thumbnail=True)

    @app.route("/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/thumbnail", methods=["GET"])
    async def thumbnail_instance(
        self, request: IRequest, aet: str, study: str, series: str, sop: str
    ) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, series, sop, thumbnail=True)

    @app.route(
        "/aets/<aet>/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/thumbnail",
        methods=["GET"],
    )
    async def thumbnail_frames(
        self, request: IRequest, aet: str, study: str, series: str, sop: str, frames: str
    ) -> bytes:
        return await rendered.rendered(self.context, request, aet, study, series, sop, frames, thumbnail=True)


#: Each route's template by endpoint (``/aets/<aet>/studies/<study>``): the metrics'
#: route label (`_RouteLabelling`).
ROUTE_TEMPLATES: Mapping[str, str] = {
    str(rule.endpoint): rule.rule for rule in GatewayApp.app.url_map.iter_rules()
}

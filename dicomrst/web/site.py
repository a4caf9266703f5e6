# -*- test-case-name: tests.test_web -*-
"""The HTTP site: one structured log line per request, request timeouts, in-flight tracking.

Twisted's own pieces are kept where they fit (`Site`, `HTTPChannel`'s idle timeout);
what it lacks is a deadline on the *response*: once a request is fully received the
channel switches its idle timeout off, so a handler waiting on a stuck PACS would
hold the connection forever.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from dicomrst.logs import logger
from dicomrst.web.responses import error_body, set_common_headers

log = logger("dicomrst.web")

DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may sit idle (or a client may stall mid-upload).

Twisted's default is twelve hours, which lets idle browser connections pile up.
"""

# Outcomes named in the per-request log line.
COMPLETE = "complete"
TIMEOUT = "timeout"
DISCONNECTED = "disconnected"
SHUTDOWN = "shutdown"
ERROR = "error"


class RequestTimedOut(Exception):
    """Delivered to ``notifyFinish()`` waiters when the request deadline passes.

    Klein cancels a handler's Deferred when ``notifyFinish()`` errbacks, so this is
    how a timed-out handler learns to let go of its association.
    """

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"request timed out after {timeout_ms} ms")
        self.timeout_ms = timeout_ms


def abort_connection(request: IRequest, why: str = ERROR) -> None:
    """Drop the connection under `request` without finishing the response.

    For failures after the status line went out: the client must see a truncated
    body, not a response that looks complete. `why` names the outcome in the log.
    """
    if isinstance(request, GatewayRequest) and request.abortReason is None:
        request.abortReason = why
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is not None:
        transport.abortConnection()


def format_address(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address) if address is not None else "-"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


class BodyConsumer(Protocol):
    """Takes a request body as it arrives, instead of twisted.web buffering it whole.

    Made by the site's `bodyConsumerFactory` once the request headers are in (STOW-RS
    uploads); the request's ``content`` then stays empty.
    """

    def dataReceived(self, data: bytes) -> None: ...

    def bodyFinished(self) -> None:
        """The whole body arrived (the resource is about to render)."""

    def requestOver(self) -> None:
        """The request ended, whichever way: answered, rejected as too large, or lost."""


class GatewayRequest(Request):
    """A `Request` that reports its end to its `GatewaySite` and keeps a deadline.

    It also enforces ``max-upload-size`` (413 from Content-Length before the body is
    read, or as soon as a chunked body passes it) and hands bodies to a `BodyConsumer`
    where the site has one for the request.
    """

    abortReason: str | None = None
    timedOut: bool = False
    bodyConsumer: BodyConsumer | None = None
    _bodyReceived = 0
    _bodyRejected = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        self._gateway: GatewaySite | None = site if isinstance(site, GatewaySite) else None
        self._deadline: IDelayedCall | None = None
        self._outcome: str | None = None
        # Created at the request line, so an upload in progress counts as in flight
        # and the logged duration includes receiving the body.
        self._started = 0.0
        if self._gateway is not None:
            self._started = self._gateway.clock.seconds()
            self._gateway._request_started(self)

    def gotLength(self, length: int | None) -> None:
        gateway = self._gateway
        channel = self.channel
        command = getattr(channel, "_command", None)
        uri = getattr(channel, "_path", None)
        version = getattr(channel, "_version", None)
        if gateway is None or command is None or uri is None or version is None:
            super().gotLength(length)
            return
        # The request line is known (HTTPChannel keeps it until the body is in); set it
        # now so a body consumer can route and a 413 can be answered and logged.
        self.method, self.uri, self.clientproto = command, uri, version
        self.path = uri.split(b"?", 1)[0]
        limit = gateway.maxUploadSize
        if limit is not None and length is not None and length > limit:
            self.content = BytesIO()
            self._bodyRejected = True
            # Answered before the body is read: no "100 Continue" after the 413.
            self.requestHeaders.removeHeader(b"Expect")
            self._reject_body()
            return
        factory = gateway.bodyConsumerFactory
        consumer = factory(self) if factory is not None else None
        if consumer is None:
            super().gotLength(length)
            return
        self.bodyConsumer = consumer
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._bodyRejected:
            return
        self._bodyReceived += len(data)
        gateway = self._gateway
        limit = gateway.maxUploadSize if gateway is not None else None
        if gateway is not None and limit is not None and self._bodyReceived > limit:
            # A chunked body (no Content-Length) grew past the limit.  Answered from the
            # reactor, not from inside the channel's body decoder, which may still hold
            # the rest of this read.
            self._bodyRejected = True
            self._release_body()
            gateway.clock.callLater(0, self._reject_body)
            return
        if self.bodyConsumer is not None:
            self.bodyConsumer.dataReceived(data)
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._bodyRejected:
            self._reject_body()  # the rest of the body came in the read that crossed the limit
            return
        if self.bodyConsumer is not None:
            self.bodyConsumer.bodyFinished()
        super().requestReceived(command, path, version)

    def pauseBody(self) -> None:
        """Stop reading the request body (a body consumer is behind)."""
        transport = getattr(getattr(self, "channel", None), "transport", None)
        if transport is not None and not self.finished and not self._disconnected:
            transport.pauseProducing()

    def resumeBody(self) -> None:
        transport = getattr(getattr(self, "channel", None), "transport", None)
        if transport is not None and not self.finished and not self._disconnected:
            transport.resumeProducing()

    def bodyProgress(self) -> None:
        """Reading is paused but work is getting done: hold off the idle timeout."""
        channel = getattr(self, "channel", None)
        reset = getattr(channel, "resetTimeout", None)
        if reset is not None:
            reset()

    def _reject_body(self) -> None:
        if self.finished or self._disconnected or self._gateway is None:
            return
        self._release_body()
        limit = self._gateway.maxUploadSize
        set_common_headers(self)
        # The rest of the body is not read: the connection cannot carry another request.
        self.setHeader(b"Connection", b"close")
        if hasattr(self.channel, "persistent"):
            self.channel.persistent = False
        self.write(error_body(self, 413, f"request body larger than max-upload-size ({limit} bytes)"))
        self.finish()

    def _release_body(self) -> None:
        consumer, self.bodyConsumer = self.bodyConsumer, None
        if consumer is not None:
            consumer.requestOver()

    def process(self) -> None:
        gateway = self._gateway
        # Armed only once the body is in: until then HTTPChannel's idle timeout
        # guards a stalled upload, and a large STOW is not cut off by this deadline.
        if gateway is not None and gateway.requestTimeout and self._outcome is None:
            self._deadline = gateway.clock.callLater(gateway.requestTimeout, self._deadline_passed)
        super().process()

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self._draining():
            self._close_after_response()
        super().write(data)

    def finish(self) -> None:
        if self._draining():
            self._close_after_response()
        super().finish()
        if self.finished:
            self._over(TIMEOUT if self.timedOut else COMPLETE)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if not self.finished:
            self._over(self.abortReason or DISCONNECTED)

    def _draining(self) -> bool:
        gateway = self._gateway
        return gateway is not None and gateway.draining and not (self.finished or self._disconnected)

    def _close_after_response(self) -> None:
        # During a graceful stop, keep-alive connections must not outlive their
        # last response or the stop would wait on idle browsers.
        if not self.startedWriting:
            self.setHeader(b"Connection", b"close")
        if hasattr(self.channel, "persistent"):
            self.channel.persistent = False

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.finished or self._disconnected or self._gateway is None:
            return
        self.timedOut = True
        timeout_ms = round(self._gateway.requestTimeout * 1000)
        if self.startedWriting:
            # The status line is out; only a truncated body can say "failed".
            abort_connection(self, TIMEOUT)
            return
        # Cancel the handler (Klein listens on notifyFinish) before answering, so it
        # releases what it holds and does not write into our 504.
        waiting, self.notifications = self.notifications, []
        for d in waiting:
            d.errback(Failure(RequestTimedOut(timeout_ms)))
        if self.finished or self._disconnected:
            return
        self.write(error_body(self, 504, f"request timed out after {timeout_ms} ms"))
        self.finish()

    def _over(self, outcome: str) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        self._release_body()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._gateway is not None:
            self._gateway._request_over(self, outcome)


class GatewaySite(Site):
    """A `Site` that logs through `dicomrst.logs` and knows its in-flight requests.

    :ivar clock: times request deadlines, idle timeouts and logged durations.
    :ivar requestTimeout: seconds from a fully received request to a finished
        response; 0 disables the deadline.
    :ivar draining: set by `drain`; responses then close their connection.
    :ivar maxUploadSize: largest request body in bytes (413 beyond); None: no limit.
    :ivar bodyConsumerFactory: called with each request once its headers are in; a
        `BodyConsumer` it returns takes the body as it arrives.  Taken from the
        resource's ``bodyConsumerFactory`` attribute when it has one.
    """

    requestFactory = GatewayRequest
    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        request_timeout: float,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_upload_size: int | None = None,
    ) -> None:
        # parsePOSTFormSubmission: STOW bodies are never forms; parsing would only
        # cost memory on large uploads.
        super().__init__(resource, timeout=idle_timeout, reactor=clock, parsePOSTFormSubmission=False)
        self.clock = clock
        self.requestTimeout = request_timeout
        self.draining = False
        self.maxUploadSize = max_upload_size
        self.bodyConsumerFactory: Callable[[GatewayRequest], BodyConsumer | None] | None = getattr(
            resource, "bodyConsumerFactory", None
        )
        self._inflight: dict[GatewayRequest, None] = {}
        self._idle_waiters: list[Deferred[None]] = []

    @property
    def inflight(self) -> int:
        """Requests started (request line seen) and not yet finished or lost."""
        return len(self._inflight)

    def when_idle(self) -> Deferred[None]:
        """Fire once no request is in flight (now, if none is). Cancellable."""
        if not self._inflight:
            return succeed(None)
        d: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(d)
        return d

    def drain(self) -> None:
        """From now on, close each connection once its response is finished."""
        self.draining = True

    def abort_inflight(self, why: str = SHUTDOWN) -> int:
        """Abort the connection of every in-flight request; return how many."""
        requests = list(self._inflight)
        for request in requests:
            abort_connection(request, why)
        return len(requests)

    def startFactory(self) -> None:
        # Only sets up the combined access log (and a once-a-second timer for its
        # date stamp), which `log` replaces.
        pass

    def log(self, request: Request) -> None:
        # GatewayRequest logs its own line, including for lost connections,
        # which Site.log never sees.
        pass

    def _request_started(self, request: GatewayRequest) -> None:
        self._inflight[request] = None

    def _request_over(self, request: GatewayRequest, outcome: str) -> None:
        self._inflight.pop(request, None)
        path = request.path if request.path is not None else b"-"
        fields = dict(
            method=request.method.decode("ascii", "replace"),
            # The path only: query strings carry patient names and IDs.
            path=path.decode("utf-8", "backslashreplace"),
            # 0: no status line was sent (lost or aborted before the response began).
            status=request.code if request.startedWriting else 0,
            bytes_sent=request.sentLength,
            duration_ms=(self.clock.seconds() - request._started) * 1000.0,
            client=format_address(request.getClientAddress()),
            outcome=outcome,
        )
        fmt = "{method} {path} {status} {bytes_sent}B {duration_ms:.1f}ms {client} {outcome}"
        if outcome in (COMPLETE, DISCONNECTED):
            log.info(fmt, **fields)
        else:
            log.warn(fmt, **fields)
        if not self._inflight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)


def make_site(
    resource: IResource,
    clock: IReactorTime,
    request_timeout: float,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_upload_size: int | None = None,
) -> GatewaySite:
    """The `Site` the gateway listens with.

    :param resource: usually ``GatewayApp(...).resource()``.
    :param clock: the reactor (a `Clock` in tests).
    :param request_timeout: seconds a fully received request has to finish its
        response: 504 if nothing was sent yet, else the connection is aborted.
    :param idle_timeout: seconds an idle or stalled connection is kept open.
    :param max_upload_size: ``server.http.max-upload-size``: larger bodies get 413.
    """
    return GatewaySite(resource, clock, request_timeout, idle_timeout, max_upload_size)

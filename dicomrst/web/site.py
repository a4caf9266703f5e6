# -*- test-case-name: tests.unit.test_web -*-
"""The HTTP site: one structured log line per request, request timeouts, streamed
request bodies and ``max-upload-size``, in-flight tracking for a graceful stop, and a
status for every request head it will not take.

Twisted's own pieces are kept where they fit (`Site`, `HTTPChannel`'s idle timeout);
what it lacks is a deadline on the *response*: once a request is fully received the
channel switches its idle timeout off, so a handler waiting on a stuck PACS would
hold the connection forever.  Nor does it bound the *head*: its idle timeout restarts
with every byte, so a client trickling a request line and headers held the connection
forever; and a head over its limits got the connection closed with no status or a bare
400.  `GatewayChannel` adds the head deadline (``server.http.header-timeout``) and
answers 414, 431, 400 and 408 through the request's lifecycle.  The Twisted internals
this needs are in `dicomrst.common.twisted_internals`.
"""

from __future__ import annotations

import re
from io import BytesIO
from random import getrandbits
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import Interface, implementer

from dicomrst.common.addresses import format_address
from dicomrst.common.machine import Machine, Run, transitions
from dicomrst.common.metrics import Metrics
from dicomrst.common.tls import tls_failure
from dicomrst.common.twisted_internals import (
    BadRequestHook,
    BodyReading,
    close_after_response,
    current_request,
    fail_finish_waiters,
    flush_now,
    flush_tls_writes,
    request_disconnected,
    request_line,
    site_of,
    write_now,
)
from dicomrst.logs import REQUEST_ID, info_enabled, logger
from dicomrst.web.responses import ANY_ORIGIN, CorsPolicy, error_body, set_common_headers

log = logger("dicomrst.web")

DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may sit idle (or a client may stall mid-upload).

Twisted's default is twelve hours, which lets idle browser connections pile up.
"""

DEFAULT_HEADER_TIMEOUT = 20.0
"""Seconds from a connection being ready for a request (just opened, or its previous
response sent) to that request's last header: ``server.http.header-timeout``."""

MAX_REQUEST_LINE = 16 * 1024
"""Bytes in a request line (method, target, version); longer is a 414."""

MAX_HEADER_BLOCK = 16 * 1024
"""Bytes in a request's header fields together (and so in any one of them); more is a 431."""

MAX_HEADERS = 100
"""Header fields in one request; more is a 431."""

#: Writes an abort makes before the reset, each of at most 128 KiB (Twisted's SEND_LIMIT):
#: enough for what a response may have buffered (1 MiB from a multipart's second part,
#: `dicomrst.wado.sinks.RESPONSE_BUFFER`); one with nothing to send, or that the kernel
#: refuses, costs a send that takes nothing.
_ABORT_WRITES = 8

RECEIVE_BUFFER = 256 * 1024
"""Bytes read from a TCP connection at a time (Twisted's default is 64 KiB): a STOW-RS body
is read in a quarter of the reads, each costing the reactor a pass through HTTP, the
multipart parser and the Part-10 checks (the 106 MB CT study: 13% less of the gateway's
CPU).  Twisted also pauses a response's producer only above this many bytes unsent, so a
connection may hold up to 256 KiB of a response (a WADO-RS multipart widens that itself,
`dicomrst.wado.sinks.RESPONSE_BUFFER`).  Under TLS it sets the wrapper's attribute, not
the TCP transport's: no effect there."""

#: An incoming X-Request-ID taken as it is: a bounded token of characters no log reader
#: or proxy trips on; anything else is replaced by a generated one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,128}")

REQUEST_ID_HEADER = b"X-Request-ID"

#: The largest write `GatewayChannel` hands the socket at once (`write_now`): a whole
#: search response, say; a larger one waits for the reactor's turn (`_write_later`).
_SEND_AT_ONCE = 64 * 1024

#: Reason phrases Twisted's table lacks or words differently (RFC 9110 §15).
_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}

# Outcomes named in the per-request log line.
COMPLETE = "complete"
TIMEOUT = "timeout"
DISCONNECTED = "disconnected"
SHUTDOWN = "shutdown"
ERROR = "error"
REJECTED = "rejected"


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
    if isinstance(request, GatewayRequest):
        request.abort(why)
    elif isinstance(request, Request) and request.channel is not None:
        _abort_transport(request.channel)


def _abort_transport(channel: HTTPChannel) -> None:
    # abortConnection drops what Twisted still buffers: all that was written in this
    # reactor turn, perhaps the status line too (a PACS's A-ABORT read together with an
    # instance's first fragment).  The client then saw a reset before any response, and
    # may send the GET again, instead of a body that is cut off.  So what the kernel takes
    # now is handed to it first (the reset still discards what it has not sent by then);
    # the rest (a client not reading) is dropped, not waited for.
    # Nothing written after this goes out (GatewayRequest.write, .finish).
    flush_tls_writes(channel.transport)  # TLS gathers small writes for the next turn
    for _ in range(_ABORT_WRITES):
        flush_now(channel.transport)  # over TLS, the TCP transport's (the wrapper passes it on)
    # An HTTPChannel runs over TCP (or TLS over TCP): its transport is an ITCPTransport,
    # which Protocol.transport's type (ITransport | None) does not say.
    cast(ITCPTransport, channel.transport).abortConnection()


class IStreamedBodies(Interface):
    """A resource that takes some request bodies as they arrive (STOW-RS)."""

    def bodyConsumerFactory(request: GatewayRequest) -> BodyConsumer | None:
        """Called once `request`'s headers are in: a `BodyConsumer` for its body, or None
        to let twisted.web buffer it."""


class BodyConsumer(Protocol):
    """Takes a request body as it arrives, instead of twisted.web buffering it whole.

    Made by the site's `bodyConsumerFactory` once the request headers are in (STOW-RS
    uploads); the request's ``content`` then stays empty.
    """

    def dataReceived(self, data: bytes) -> None: ...

    def bodyFinished(self) -> None:
        """The whole body arrived (the resource is about to render)."""

    def bodyTooLarge(self, reason: str) -> bool:
        """The body grew past ``max-upload-size``; nothing more of it comes.  True if the
        consumer has taken something it must report (STOW-RS: instances stored): the
        resource then renders and answers with it; False lets the site answer 413."""

    def requestOver(self) -> None:
        """The request ended, whichever way: answered, rejected as too large, or lost."""


REQUEST = Machine(
    name="http-request",
    initial="head",
    states={
        "head": "request line in, headers arriving",
        "body": "headers in, body arriving (to a body consumer, or buffered)",
        "rejected": "answered without the whole request (413 body over max-upload-size, or the body "
        "consumer's report of what it took; 400/414/431 head or body it cannot take; 408 head too "
        "slow; 401/403 streamed body refused); the rest of the request is discarded",
        "handling": "body in, the resource is rendering; the deadline runs",
        "responding": "the status line is out",
        "timing-out": "deadline passed before the response began: the 504 is written",
        "aborting": "the connection is being aborted under the response",
        "finished": "the response was finished (logged)",
        "lost": "the connection went before the response was finished (logged)",
    },
    events={
        "headers": "gotLength: all headers in, the body may stream",
        "head-deadline": "server.http.header-timeout passed with the request line in, not all headers",
        "bad-request": "the channel cannot take the head (400 malformed, 414 line, 431 header fields) "
        "or the chunked body (400)",
        "too-large": "the declared or received body is over max-upload-size",
        "refused": "the access check refused a request whose body streams (401, 403): it is not read",
        "chunk": "a piece of the body arrived",
        "complete": "requestReceived: the whole body is in",
        "written": "the first write: the status line goes out",
        "finish": "finish(): the response is complete",
        "deadline": "request-timeout passed",
        "abort": "abort_connection(): a failure after the status line, or shutdown",
        "lost": "connectionLost",
    },
    transitions=transitions(
        [
            ("head", "headers", "body", "_take_body"),
            ("head", "too-large", "rejected", "_reject_now"),
            ("head", "head-deadline", "rejected", "_answer_slow_head"),
            ("head", "bad-request", "rejected", "_reject_bad"),
            ("head", "abort", "aborting", "_abort"),
            ("head", "lost", "lost", "_lost"),
            ("body", "chunk", "body", "_feed"),
            ("body", "too-large", "rejected", "_reject_later"),
            ("body", "bad-request", "rejected", "_reject_bad"),
            ("body", "refused", "rejected", "_reject_bad"),
            ("body", "complete", "handling", "_handle"),
            ("body", "abort", "aborting", "_abort"),
            ("body", "lost", "lost", "_lost"),
            ("rejected", "chunk", "rejected", None),
            ("rejected", "complete", "rejected", "_reject_now"),
            ("rejected", "written", "rejected", None),
            ("rejected", "finish", "finished", "_finished"),
            ("rejected", "abort", "aborting", "_abort"),
            ("rejected", "lost", "lost", "_lost"),
            ("handling", "written", "responding", None),
            ("handling", "deadline", "timing-out", "_answer_timeout"),
            ("handling", "abort", "aborting", "_abort"),
            ("handling", "lost", "lost", "_lost"),
            ("responding", "finish", "finished", "_finished"),
            ("responding", "deadline", "aborting", "_abort_late"),
            ("responding", "abort", "aborting", "_abort"),
            ("responding", "lost", "lost", "_lost"),
            ("timing-out", "written", "timing-out", None),
            ("timing-out", "finish", "finished", "_finished"),
            ("timing-out", "abort", "aborting", "_abort"),
            ("timing-out", "lost", "lost", "_lost"),
            ("aborting", "chunk", "aborting", None),
            ("aborting", "complete", "aborting", None),
            ("aborting", "deadline", "aborting", None),
            ("aborting", "abort", "aborting", None),
            ("aborting", "lost", "lost", "_lost"),
            # twisted.web drops writes after a loss; cutting off a lost response is moot.
            ("lost", "written", "lost", None),
            ("lost", "abort", "lost", None),
            # A request finished before its body was read whole closed the connection
            # (GatewayChannel drops what still arrives); a finished request is no longer
            # the channel's, so no loss reaches it.
            ("finished", "abort", "finished", None),
        ]
    ),
)


@implementer(IStreamedBodies)
class _NoStreamedBodies:
    def bodyConsumerFactory(self, request: GatewayRequest) -> BodyConsumer | None:
        return None


class GatewayRequest(Request):
    """A `Request` that keeps a deadline, enforces ``max-upload-size``, streams bodies to
    a `BodyConsumer` where the site has one for the request, and reports its end to its
    `GatewaySite` (one log line).

    Its lifecycle is the machine `REQUEST` (``docs/state-machines/http-request.dot``):
    the overridden twisted.web methods fire its events, its actions do the work.  413 is
    answered from Content-Length before the body is read, or as soon as a chunked body
    passes the limit.
    """

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        site = site_of(channel)
        if not isinstance(site, GatewaySite):
            raise TypeError("a GatewayRequest is served by a GatewaySite")
        self.gateway = site
        self.bodyConsumer: BodyConsumer | None = None
        self.abortReason: str | None = None
        self.reading = BodyReading(channel)
        self._run = Run(REQUEST, self)
        self._body_received = 0
        self._deadline: IDelayedCall | None = None
        # Created at the request line, so an upload in progress counts as in flight
        # and the logged duration includes receiving the body.
        self.started = site.clock.seconds()
        self.timed_out = False
        self._outcome: str | None = None  # logged instead of complete/timeout when set
        self._reporting = False  # over max-upload-size, the body consumer reports what it took
        self._rendering = False  # ... and the resource is rendering that report
        self._request_id: str | None = None
        #: The template of the route that took it (``/aets/<aet>/studies``), set by the
        #: app when it routes the request: the metrics' label (None: no route took it).
        self.route: str | None = None
        #: An HTTP/1.0 request that asked for ``Connection: keep-alive`` (the channel's
        #: `GatewayChannel.checkPersistence`): kept when its response has a length.
        self.keep_alive_10 = False
        site.request_started(self)

    @property
    def request_id(self) -> str:
        """The client's ``X-Request-ID`` when it is a sane token, else a generated one;
        on the request's log lines (and those of the work it causes) and its response."""
        if self._request_id is None:
            given = self.requestHeaders.getRawHeaders(REQUEST_ID_HEADER) or []
            text = given[-1].decode("latin-1") if len(given) == 1 else ""
            self._request_id = text if _REQUEST_ID.fullmatch(text) else _new_request_id()
        return self._request_id

    @property
    def state(self) -> str:
        return self._run.state

    @property
    def body_received(self) -> int:
        """Bytes of the request body received so far."""
        return self._body_received

    # -- twisted.web's calls, as events -----------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        line = request_line(self.channel)
        if line is None:
            # This Twisted keeps the request line elsewhere: no early routing or 413
            # (the body consumers see no method and decline).
            self._run.fire("headers", length)
            return
        # The request line is known (HTTPChannel keeps it until the body is in); set it
        # now so a body consumer can route and a 413 can be answered and logged.
        self.method, self.uri, self.clientproto = line
        self.path = self.uri.split(b"?", 1)[0]
        limit = self.gateway.maxUploadSize
        if limit is not None and length is not None and length > limit:
            self._run.fire("too-large")
        else:
            self._run.fire("headers", length)

    def handleContentChunk(self, data: bytes) -> None:
        self._run.fire("chunk", data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._run.fire("complete", command, path, version)

    def write(self, data: bytes) -> None:
        if self.state == "aborting":
            return  # see finish
        if not self.startedWriting:
            self.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))  # type: ignore[no-untyped-call]  # unannotated in Twisted
            if self.keep_alive_10:
                self._head_of_a_kept_http10_response()
            if self._draining():
                self._close_after_response()
            self._run.fire("written")
            super().write(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted
            # The head waits in the channel for the body's first bytes (GatewayChannel.
            # writeHeaders); with none in this write (HEAD, an empty body, a stream that
            # sends its head first), it goes out alone, now.
            channel = self.channel
            if isinstance(channel, GatewayChannel):
                channel.write_head()
            return
        super().write(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def finish(self) -> None:
        if self.state == "aborting":
            # Twisted's abortConnection drops the connection on the reactor's next turn: the
            # final chunk written meanwhile could reach the client just before the reset and
            # make a cut-off body look complete.  The loss ends the request (and logs it).
            return
        unsized = not self.responseHeaders.hasHeader(b"Content-Length")
        if self.keep_alive_10 and not self.startedWriting and unsized:
            # Nothing was written: the length is known, and HTTP/1.0 needs it to keep going.
            self.setHeader(b"Content-Length", b"0")  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._draining():
            self._close_after_response()
        transport = self.channel.transport if self.channel is not None else None
        super().finish()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self.finished:
            # The response's end goes to the kernel now, not on the reactor's next turn
            # (an epoll round and two epoll_ctl calls per response; a QIDO answer waited
            # for them on the client's clock).
            flush_now(transport)
            self._run.fire("finish")

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._run.fire("lost")

    def abort(self, why: str) -> None:
        """Drop the connection without finishing the response (see `abort_connection`)."""
        if self.abortReason is None:
            self.abortReason = why
        self._run.fire("abort")

    # -- the channel's calls (GatewayChannel) -------------------------------------------------

    def reject(self, status: int, message: str, line: bytes | None = None) -> None:
        """The channel cannot take this request's head or chunked body: answer `status`
        with `message` and close.  `line`: the start of an oversized request line."""
        self._run.fire("bad-request", status, message, line)

    def refuse(self, status: int, message: str) -> None:
        """The access check refused this request while its body is arriving: answer
        `status` with `message` (the caller set ``WWW-Authenticate``) and close, without
        reading the rest of the body.  Only in state ``body``."""
        self._run.fire("refused", status, message, None)

    def head_timed_out(self) -> None:
        """``server.http.header-timeout`` passed before this request's headers were in."""
        self._run.fire("head-deadline")

    # -- the body ---------------------------------------------------------------------------

    def pause_body(self, holder: object) -> None:
        """`holder` (a body consumer that is behind) wants the body paused."""
        if not (self.finished or request_disconnected(self)):
            self.reading.hold(holder)

    def resume_body(self, holder: object) -> None:
        if not (self.finished or request_disconnected(self)):
            self.reading.release(holder)

    def body_progress(self) -> None:
        """Reading is paused but work is getting done: hold off the idle timeout."""
        if self.channel is not None:
            self.channel.resetTimeout()

    # -- actions ----------------------------------------------------------------------------

    def _take_body(self, length: int | None) -> None:
        # request_scope's work without its generator (twice per request: issue 15).
        token = REQUEST_ID.set(self.request_id)
        try:
            consumer = self.gateway.bodyConsumers.bodyConsumerFactory(self)
        finally:
            REQUEST_ID.reset(token)
        if consumer is None:
            super().gotLength(length)  # type: ignore[no-untyped-call]  # unannotated in Twisted
            return
        self.bodyConsumer = consumer
        self.content = BytesIO()

    def _feed(self, data: bytes) -> None:
        self._body_received += len(data)
        limit = self.gateway.maxUploadSize
        if limit is not None and self._body_received > limit:
            # A chunked body (no Content-Length) grew past the limit.  Answered from the
            # reactor, not from inside the channel's body decoder, which may still hold
            # the rest of this read.
            self._run.fire("too-large")
            return
        if self.bodyConsumer is not None:
            token = REQUEST_ID.set(self.request_id)
            try:
                self.bodyConsumer.dataReceived(data)
            finally:
                REQUEST_ID.reset(token)
        else:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _reject_now(self, *ignored: object) -> None:
        self.content = BytesIO()
        # Answered before the body is read: no "100 Continue" after the 413.
        self.requestHeaders.removeHeader(b"Expect")
        self._answer_too_large()

    def _reject_later(self) -> None:
        consumer = self.bodyConsumer
        reason = f"request body larger than max-upload-size ({self.gateway.maxUploadSize} bytes)"
        if consumer is not None and consumer.bodyTooLarge(reason):
            # What it took so far (instances stored) is answered by the resource, as if
            # the body had ended here; the rest is read and discarded.
            self._reporting = True
        else:
            self._release_body()
        self.gateway.clock.callLater(0, self._answer_too_large)

    def _answer_too_large(self) -> None:
        if self.finished or request_disconnected(self) or self._rendering:
            return
        set_common_headers(self, self.gateway.cors)
        # The rest of the body is not read: the connection cannot carry another request.
        self.setHeader(b"Connection", b"close")  # type: ignore[no-untyped-call]  # unannotated in Twisted
        close_after_response(self.channel)
        if self._reporting:
            self._rendering = True
            super().requestReceived(  # type: ignore[no-untyped-call]  # unannotated in Twisted
                self.method, self.uri, self.clientproto
            )
            return
        self._release_body()
        limit = self.gateway.maxUploadSize
        self.write(error_body(self, 413, f"request body larger than max-upload-size ({limit} bytes)"))
        self.finish()

    def _reject_bad(self, status: int, message: str, line: bytes | None) -> None:
        self._outcome = REJECTED
        self._answer_early(status, message, line)

    def _answer_slow_head(self) -> None:
        self.timed_out = True
        timeout_ms = round(self.gateway.headerTimeout * 1000)
        self._answer_early(408, f"request headers not received within {timeout_ms} ms", None)

    def _answer_early(self, status: int, message: str, line: bytes | None) -> None:
        """Answer before the request was read whole (its head, or its chunked body, is
        what is wrong), and close the connection: the rest cannot be parsed."""
        self._release_body()
        known = request_line(self.channel)
        if known is not None:
            self.method, self.uri, _ = known
            self.path = self.uri.split(b"?", 1)[0]
        elif line is not None:
            # An oversized request line: its method and the start of its target, for the log.
            method, _, target = line.partition(b" ")
            self.method = method if 0 < len(method) <= 16 and method.isalpha() else b"-"
            self.uri = self.path = target[:64] + b"..." if target else b"-"
        else:
            # A request line Twisted could not parse: nothing of it is known.
            self.method, self.uri, self.path = b"-", b"-", b"-"
        if not self.clientproto.startswith(b"HTTP/"):
            self.clientproto = b"HTTP/1.1"  # the version of the line we could not read
        self.content = BytesIO()
        set_common_headers(self, self.gateway.cors)
        self.setHeader(b"Connection", b"close")  # type: ignore[no-untyped-call]  # unannotated in Twisted
        close_after_response(self.channel)
        body = error_body(self, status, message)
        self.setResponseCode(status, _REASONS.get(status))
        self.write(body)
        self.finish()

    def _handle(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.bodyConsumer is not None:
            self.bodyConsumer.bodyFinished()
        # Armed only once the body is in: until then HTTPChannel's idle timeout guards a
        # stalled upload, and a large STOW is not cut off by this deadline.
        if self.gateway.requestTimeout:
            self._deadline = self.gateway.clock.callLater(
                self.gateway.requestTimeout, self._run.fire, "deadline"
            )
        # The resource renders in the request's scope: the coroutines it starts (Klein's
        # handlers, the backends they await) log with its ID (`dicomrst.logs`).
        token = REQUEST_ID.set(self.request_id)
        try:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        finally:
            REQUEST_ID.reset(token)

    def _answer_timeout(self) -> None:
        self._deadline = None
        self.timed_out = True
        timeout_ms = round(self.gateway.requestTimeout * 1000)
        # Cancel the handler (Klein listens on notifyFinish) before answering, so it
        # releases what it holds and does not write into our 504.
        fail_finish_waiters(self, Failure(RequestTimedOut(timeout_ms)))
        if self.finished or request_disconnected(self):
            return
        self.write(error_body(self, 504, f"request timed out after {timeout_ms} ms"))
        self.finish()

    def _abort_late(self) -> None:
        # The status line is out; only a truncated body can say "failed".
        self._deadline = None
        self.timed_out = True
        if self.abortReason is None:
            self.abortReason = TIMEOUT
        self._abort()

    def _abort(self) -> None:
        _abort_transport(self.channel)

    def _finished(self) -> None:
        self._over(self._outcome or (TIMEOUT if self.timed_out else COMPLETE))

    def _lost(self) -> None:
        self._over(self.abortReason or DISCONNECTED)

    # -- helpers ----------------------------------------------------------------------------

    def _release_body(self) -> None:
        consumer, self.bodyConsumer = self.bodyConsumer, None
        if consumer is not None:
            consumer.requestOver()

    def _head_of_a_kept_http10_response(self) -> None:
        # HTTP/1.0 has no chunked coding: only a response whose length is in its head can
        # end without closing the connection.  Any other (a stream) closes it, as before.
        sized = (
            self.responseHeaders.hasHeader(b"Content-Length")
            or self.method == b"HEAD"
            or self.code in http.NO_BODY_CODES
        )
        if sized:
            self.setHeader(b"Connection", b"keep-alive")  # type: ignore[no-untyped-call]  # unannotated in Twisted
        else:
            close_after_response(self.channel)

    def _draining(self) -> bool:
        return self.gateway.draining and not (self.finished or request_disconnected(self))

    def _close_after_response(self) -> None:
        # During a graceful stop, keep-alive connections must not outlive their
        # last response or the stop would wait on idle browsers.
        if not self.startedWriting:
            self.setHeader(b"Connection", b"close")  # type: ignore[no-untyped-call]  # unannotated in Twisted
        close_after_response(self.channel)

    def _over(self, outcome: str) -> None:
        self._release_body()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.gateway.request_over(self, outcome)
        # The run refers back to this request: left so, every request was freed by the
        # cyclic garbage collector rather than when its last reference went (issue 15).
        # The events still possible from here (finished, lost) carry no action.
        self._run.owner = None


#: A version 4 UUID as an integer: the version and variant bits (RFC 4122 §4.4) cleared,
#: then set.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def _new_request_id() -> str:
    """A random (version 4) UUID's 32 hex digits, as ``uuid.uuid4().hex`` writes them, at
    a fraction of its cost: no UUID object, and Python's generator rather than the
    kernel's (a getrandom system call per request): an ID tells requests apart in the
    logs, it guards nothing."""
    return f"{getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


def _reading(channel: HTTPChannel, *states: str) -> GatewayRequest | None:
    """The request `channel` is reading (the last it made), if it is in one of `states`."""
    request = current_request(channel)
    if isinstance(request, GatewayRequest) and request.state in states:
        return request
    return None


class GatewayChannel(BadRequestHook):
    """An `HTTPChannel` that bounds each request head in time and size, and answers what
    it will not take with a status, a JSON body and the request's log line.

    * **Deadline.** From the moment the connection is ready for a request (opened, or its
      previous response sent) to that request's last header, at most the site's
      ``headerTimeout``: then a 408 if the request line was in, else the connection is
      closed (one log line).  So a client that trickles its head, and an idle keep-alive
      connection, are both let go.  The idle timeout (``Site.timeOut``) still guards a
      stalled body.
    * **Size.** A request line over `MAX_REQUEST_LINE` bytes is a 414; header fields over
      `MAX_HEADER_BLOCK` bytes in all, or more than `MAX_HEADERS` of them, a 431.
    * **Malformed.** What Twisted cannot parse (request line, a header field, the chunked
      body) is a 400 through the request (`BadRequestHook`), not Twisted's bare one.

    Each answer closes the connection: the rest of its bytes cannot be parsed.  HTTP/1.1
    only (the site does not negotiate HTTP/2).
    """

    # LineReceiver: the longest line; the request line and any header field line.
    MAX_LENGTH = max(MAX_REQUEST_LINE, MAX_HEADER_BLOCK)
    maxHeaders = MAX_HEADERS
    # Twisted's own total (request line and headers) is a backstop: ours are checked first.
    totalHeadersSize = MAX_REQUEST_LINE + MAX_HEADER_BLOCK + 1024

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        # The head deadline's call, which may outlive its arming: disarming leaves it
        # scheduled and the next arming moves it, rather than a cancel and a new call for
        # every request (issue 15).  It does nothing when it fires disarmed.
        self._deadline: IDelayedCall | None = None
        self._armed = False
        self._head_bytes = 0  # received since the deadline was armed
        self._header_bytes = 0  # header field lines of the request being read
        self._header_count = 0
        self._closed = False  # answered (or given up on): the rest of the input is dropped
        self._secure: bool | None = None
        self._addresses: tuple[IAddress, IAddress] | None = None
        self._head: bytes | None = None  # a response's head, until its body's first bytes

    def getHost(self) -> IAddress:
        # Each request asks (twisted.web's Request.__init__), and a TCP transport answers
        # with a getsockname() system call and a new address every time; the connection's
        # addresses do not change.
        return self._connection_addresses()[0]

    def getPeer(self) -> IAddress:
        return self._connection_addresses()[1]

    def _connection_addresses(self) -> tuple[IAddress, IAddress]:
        addresses = self._addresses
        if addresses is None:
            host: IAddress = super().getHost()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            peer: IAddress = super().getPeer()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            addresses = self._addresses = (host, peer)
        return addresses

    # -- writing --------------------------------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """The status line and headers, as Twisted writes them, kept for the body's first
        bytes: one send for a whole small response, not two writes into Twisted's buffer
        (`write_now`).  `GatewayRequest.write` sends the head alone when no body follows."""
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)  # type: ignore[no-untyped-call]  # unannotated in Twisted
            return
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self._head = b"".join(head)

    def write_head(self) -> None:
        """Send the head `writeHeaders` kept, if it is still here."""
        head = self._head
        if head is not None:
            self._head = None
            write_now(self.transport, head)

    def write(self, data: bytes) -> None:
        head = self._head
        if len(data) > _SEND_AT_ONCE:
            self._write_later(head, [data])
            return
        if head is not None:
            self._head = None
            data = head + data
        write_now(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        head = self._head
        if sum(map(len, iovec)) > _SEND_AT_ONCE:
            self._write_later(head, iovec)
            return
        if head is not None:
            self._head = None
            iovec = [head, *iovec]
        write_now(self.transport, b"".join(iovec))

    def _write_later(self, head: bytes | None, iovec: list[bytes]) -> None:
        """A large write (a part of a streamed retrieve) goes into Twisted's buffer, sent
        on the reactor's turn: sent here, it would hold up what the caller does next (the
        C-STORE-RSP that lets the PACS send its next instance) while the kernel copies
        it.  Nor is it joined to the head, a copy of the whole part."""
        if head is not None:
            self._head = None
            iovec = [head, *iovec]
        self.transport.writeSequence(iovec)  # type: ignore[union-attr]  # connected while writing

    def isSecure(self) -> bool:
        # Asked for every URL a response carries (the service URL of each search); the
        # transport (TCP, or TLS over it) is the connection's for its life, and asking
        # it adapts it to ISSLTransport each time.
        secure = self._secure
        if secure is None:
            secure = bool(super().isSecure())  # type: ignore[no-untyped-call]  # unannotated in Twisted
            if self.transport is not None:
                self._secure = secure
        return secure

    @property
    def _site(self) -> GatewaySite:
        site = site_of(self)
        if not isinstance(site, GatewaySite):
            raise TypeError("a GatewayChannel is built by a GatewaySite")
        return site

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """HTTP/1.1 as Twisted decides; an HTTP/1.0 request with ``Connection:
        keep-alive`` is kept too (RFC 7230 A.1.2; ``ab -k`` and older load balancers send
        it), provided its response has a length (decided at its head,
        `GatewayRequest.write`).  Twisted closes every HTTP/1.0 connection."""
        if version == b"HTTP/1.0" and isinstance(request, GatewayRequest):
            tokens = b",".join(request.requestHeaders.getRawHeaders(b"Connection") or [])
            if b"keep-alive" in (t.strip().lower() for t in tokens.split(b",")):
                request.keep_alive_10 = True
                return True
        return bool(super().checkPersistence(request, version))  # type: ignore[no-untyped-call]  # unannotated in Twisted

    # -- the deadline -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        transport: Any = self.transport
        if hasattr(transport, "bufferSize"):  # Twisted's TCP transports read that many at a time
            transport.bufferSize = RECEIVE_BUFFER
        self._arm()

    def requestDone(self, request: Request) -> None:
        # Armed first: pipelined bytes of the next request are parsed inside requestDone.
        if self.persistent and not self._closed:
            self._arm()
        super().requestDone(request)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def loseConnection(self) -> None:
        self._closed = True  # what still arrives is not parsed (there is no request for it)
        super().loseConnection()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # Twisted's is unannotated
        self._disarm()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        # A client refused in the TLS handshake (server.http.tls: no certificate, or one of
        # another CA) sent no request, so no request line would tell of it.
        failed = tls_failure(reason)
        if failed is not None:
            log.info(
                "TLS with {client} failed: {reason}",
                client=format_address(self.transport.getPeer()) if self.transport is not None else "-",
                reason=failed,
            )
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _arm(self) -> None:
        self._head_bytes = 0
        self._armed = True
        timeout = self._site.headerTimeout
        call = self._deadline
        if call is not None and call.active():
            call.reset(timeout)
        else:
            self._deadline = self._site.clock.callLater(timeout, self._deadline_passed)

    def _disarm(self) -> None:
        self._armed = False

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._armed:
            self._armed = False
            self._head_timed_out()

    def _head_timed_out(self) -> None:
        request = _reading(self, "head")
        self._closed = True
        if request is not None:
            request.head_timed_out()
            return
        # No request line yet: there is no request to answer.
        received = self._head_bytes
        (log.info if received else log.debug)(
            "HTTP connection from {client} closed: no request line within {timeout_ms} ms "
            "({received} bytes received)",
            client=format_address(self.transport.getPeer()) if self.transport is not None else "-",
            timeout_ms=round(self._site.headerTimeout * 1000),
            received=received,
        )
        self.loseConnection()

    # -- reading the head -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._armed:
            self._head_bytes += len(data)
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def lineReceived(self, line: bytes) -> None:
        if self._closed:
            return
        # `_reading(self, "head")` inline, for every line of every head (issue 15).
        request = current_request(self)
        if not isinstance(request, GatewayRequest) or request._run.state != "head":
            request = None
        if request is None:  # a request line (or the blank line some clients send first)
            self._header_bytes = self._header_count = 0
        else:
            self._header_bytes += len(line) + 2
            if self._header_bytes > MAX_HEADER_BLOCK:
                self._reject(431, f"request header fields larger than {MAX_HEADER_BLOCK} bytes in all")
                return
        super().lineReceived(line)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if request is not None and request._run.state != "head":
            self._disarm()  # the head is in

    def headerReceived(self, line: bytes) -> bool:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._reject(431, f"more than {MAX_HEADERS} request header fields")
            return False
        return bool(super().headerReceived(line))  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def lineLengthExceeded(self, line: bytes) -> None:
        if _reading(self, "head") is None:
            self._reject(414, f"request line longer than {MAX_REQUEST_LINE} bytes", line)
        else:
            self._reject(431, f"a request header field longer than {self.MAX_LENGTH} bytes")

    def badRequest(self) -> None:
        request = current_request(self)
        if request is None:
            super().badRequest()  # nothing to answer through: Twisted's bare 400
            self._closed = True
            return
        if not isinstance(request, GatewayRequest) or request.state not in ("head", "body"):
            # Already answered (a 413 on its way): it closes the connection itself.
            self._closed = True
            return
        if request.state == "body":
            why = "malformed chunked request body"
        elif request_line(self) is None:
            why = "malformed request line"
        else:
            why = "malformed request header field (or Content-Length, Transfer-Encoding)"
        self._reject(400, why)

    def _reject(self, status: int, message: str, line: bytes | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._disarm()
        request = _reading(self, "head", "body")
        if request is None:
            # The line that is too long to be a request line made no request: make the one
            # HTTPChannel would have, so the answer and its log line are a request's.
            made = self.requestFactory(self)
            if not isinstance(made, GatewayRequest):
                raise TypeError("a GatewayChannel makes GatewayRequests")
            self.requests.append(made)
            request = made
        request.reject(status, message, line)


class GatewaySite(Site):
    """A `Site` that logs through `dicomrst.logs` and knows its in-flight requests.

    :ivar clock: times request deadlines, idle timeouts and logged durations.
    :ivar requestTimeout: seconds from a fully received request to a finished
        response; 0 disables the deadline.
    :ivar headerTimeout: seconds from a connection being ready for a request to that
        request's last header (`GatewayChannel`).
    :ivar draining: set by `drain`; responses then close their connection.
    :ivar maxUploadSize: largest request body in bytes (413 beyond); None: no limit.
    :ivar bodyConsumers: asked for each request once its headers are in; a
        `BodyConsumer` it returns takes the body as it arrives.  The resource, when it
        provides `IStreamedBodies`.
    :ivar cors: the CORS headers of the answers the site writes itself (400, 408, 413,
        414, 431); the resource sets its own on the others.
    :ivar metrics: counts each request once it is over, and the bytes of its bodies
        (None: metrics are off).
    """

    requestFactory = GatewayRequest
    # Twisted types it as its HTTP/2-switching proxy around an HTTPChannel; this site
    # speaks HTTP/1.1 only (no ALPN is offered), so the channel is the protocol itself.
    protocol = GatewayChannel  # type: ignore[assignment]
    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        request_timeout: float,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_upload_size: int | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        cors: CorsPolicy = ANY_ORIGIN,
        metrics: Metrics | None = None,
    ) -> None:
        # parsePOSTFormSubmission: STOW bodies are never forms; parsing would only
        # cost memory on large uploads.
        super().__init__(  # type: ignore[no-untyped-call]  # unannotated in Twisted
            resource, timeout=idle_timeout, reactor=clock, parsePOSTFormSubmission=False
        )
        self.clock = clock
        self.requestTimeout = request_timeout
        self.headerTimeout = header_timeout
        self.draining = False
        self.maxUploadSize = max_upload_size
        self.cors = cors
        self.metrics = metrics
        self.bodyConsumers: IStreamedBodies = (
            resource if IStreamedBodies.providedBy(resource) else _NoStreamedBodies()
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

    def log(self, request: http.Request) -> None:
        # GatewayRequest logs its own line, including for lost connections,
        # which Site.log never sees.
        pass

    def request_started(self, request: GatewayRequest) -> None:
        self._inflight[request] = None

    def request_over(self, request: GatewayRequest, outcome: str) -> None:
        self._inflight.pop(request, None)
        # 0: no status line was sent (lost or aborted before the response began).
        status = request.code if request.startedWriting else 0
        seconds = self.clock.seconds() - request.started
        metrics = self.metrics
        if metrics is not None:
            metrics.http_request(request.route, request.method, status, seconds)
            metrics.http_received(request.body_received)
            metrics.http_sent(request.sentLength)
        quiet = outcome in (COMPLETE, DISCONNECTED)
        if not quiet or info_enabled():
            self._log_request(request, outcome, status, seconds, quiet)
        if not self._inflight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _log_request(
        self, request: GatewayRequest, outcome: str, status: int, seconds: float, quiet: bool
    ) -> None:
        # Called only when the line is shown: at WARN, gathering its fields for the
        # level filter to drop was ~5% of a request's CPU (bench.http_requests, issue 15).
        path = request.path if request.path is not None else b"-"
        fields = dict(
            method=request.method.decode("ascii", "replace"),
            # The path only: query strings carry patient names and IDs.
            path=path.decode("utf-8", "backslashreplace"),
            status=status,
            bytes_sent=request.sentLength,
            duration_ms=seconds * 1000.0,
            client=format_address(request.getClientAddress()),  # type: ignore[no-untyped-call]  # unannotated in Twisted
            outcome=outcome,
            request_id=request.request_id,
        )
        fmt = "{method} {path} {status} {bytes_sent}B {duration_ms:.1f}ms {client} {outcome}"
        if quiet:
            log.info(fmt, **fields)
        else:
            log.warn(fmt, **fields)


def make_site(
    resource: IResource,
    clock: IReactorTime,
    request_timeout: float,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_upload_size: int | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    cors: CorsPolicy = ANY_ORIGIN,
    metrics: Metrics | None = None,
) -> GatewaySite:
    """The `Site` the gateway listens with.

    :param resource: usually ``GatewayApp(...).resource()``.
    :param clock: the reactor (a `Clock` in tests).
    :param request_timeout: seconds a fully received request has to finish its
        response: 504 if nothing was sent yet, else the connection is aborted.
    :param idle_timeout: seconds an idle or stalled connection is kept open.
    :param max_upload_size: ``server.http.max-upload-size``: larger bodies get 413.
    :param header_timeout: ``server.http.header-timeout`` in seconds: the most a request
        head may take, counted from when the connection is ready for it.
    :param cors: ``server.http.cors``, for the answers the site writes itself.
    :param metrics: what counts the requests (None: metrics are off).
    """
    return GatewaySite(
        resource, clock, request_timeout, idle_timeout, max_upload_size, header_timeout, cors, metrics
    )

"""Tests for dicomrst.web: routes, site (logging, request timeout) and the HTTP service.

Everything runs in memory: StubTreq for the app, StringTransport + Clock for the
site, MemoryReactorClock for the service. The backend is tests.support.fakes's FakeBackend,
whose echo Deferreds the tests fire by hand.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from treq.testing import StubTreq
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionAborted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    RaisingMemoryReactor,
    StringTransport,
)
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

import dicomrst
from dicomrst.backends.interfaces import IBackend
from dicomrst.common.tls import client_tls, server_tls
from dicomrst.errors import (
    BadRequest,
    NotAcceptable,
    NotImplementedService,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from dicomrst.web.app import GatewayApp
from dicomrst.web.errors import error_response, http_status
from dicomrst.web.service import HTTPService
from dicomrst.web.site import (
    MAX_HEADER_BLOCK,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    GatewaySite,
    RequestTimedOut,
    abort_connection,
    make_site,
)
from tests.support.fakes import FakeBackend
from tests.support.http import CLIENT, Connection
from tests.support.tls import Authority

SERVER = f"dicomrst/{dicomrst.__version__}".encode()
ROOT_URL = "http://gateway.example"
LINE_FIELDS = ("method", "path", "status", "bytes_sent", "duration_ms", "client", "outcome")


def web_events(observer: EventLoggingObserver) -> list[dict[str, Any]]:
    return [e for e in observer if e.get("log_namespace") == "dicomrst.web"]


def request_lines(observer: EventLoggingObserver) -> list[dict[str, Any]]:
    """The per-request log events (the ones carrying an outcome)."""
    return [e for e in web_events(observer) if "outcome" in e]


class AppTestCase(SynchronousTestCase):
    """Routes and cross-cutting behaviour of GatewayApp through StubTreq."""

    base_path = "/"

    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.other = FakeBackend("ARCHIVE")
        self.app = GatewayApp(
            {"PACS": self.pacs, "ARCHIVE": self.other},
            self.clock,
            base_path=self.base_path,
            echo_timeout=10.0,
        )
        self.stub = StubTreq(self.app.resource())

    def start(self, method: str, path: str, **kwargs: Any) -> Deferred[Any]:
        d = self.stub.request(method, ROOT_URL + path, **kwargs)
        self.stub.flush()
        return d

    def finish(self, d: Deferred[Any]) -> tuple[Any, bytes]:
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def fetch(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        return self.finish(self.start(method, path, **kwargs))

    def assertJSON(self, response: Any, body: bytes, status: int, expected: object) -> None:
        self.assertEqual(response.code, status, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(json.loads(body), expected)

    def assertCommonHeaders(self, response: Any) -> None:
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"Server"), [SERVER])
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])
        [exposed] = headers.getRawHeaders(b"Access-Control-Expose-Headers")
        names = {h.strip().lower() for h in exposed.decode().split(",")}
        self.assertTrue(
            {"content-type", "content-length", "content-location", "location", "warning", "retry-after"}
            <= names,
            exposed,
        )


class RouteTests(AppTestCase):
    def test_fake_backend_provides_ibackend(self) -> None:
        verifyObject(IBackend, self.pacs)

    def test_root(self) -> None:
        response, body = self.fetch("GET", "/")
        self.assertJSON(response, body, 200, {"name": "dicomrst", "version": dicomrst.__version__})
        self.assertCommonHeaders(response)

    def test_aets_lists_names_in_configured_order(self) -> None:
        response, body = self.fetch("GET", "/aets")
        self.assertJSON(response, body, 200, ["PACS", "ARCHIVE"])

    def test_head_has_headers_and_no_body(self) -> None:
        response, body = self.fetch("HEAD", "/aets")
        self.assertEqual((response.code, body), (200, b""))
        self.assertCommonHeaders(response)

    def test_health_waits_for_the_echo(self) -> None:
        d = self.start("GET", "/aets/PACS")
        self.assertNoResult(d)
        self.assertEqual(len(self.pacs.echoes), 1)
        self.pacs.echoes[0].callback(12.5)
        response, body = self.finish(d)
        self.assertJSON(response, body, 200, {"aet": "PACS", "status": "ok", "round_trip_ms": 12.5})
        self.assertCommonHeaders(response)

    def test_health_echoes_the_named_aet_only(self) -> None:
        d = self.start("GET", "/aets/ARCHIVE")
        self.assertEqual((len(self.pacs.echoes), len(self.other.echoes)), (0, 1))
        self.other.echoes[0].callback(1)
        response, body = self.finish(d)
        self.assertJSON(response, body, 200, {"aet": "ARCHIVE", "status": "ok", "round_trip_ms": 1.0})

    def test_health_upstream_error_is_502_naming_the_pacs_error(self) -> None:
        d = self.start("GET", "/aets/PACS")
        self.pacs.echoes[0].errback(UpstreamError("association rejected: called AE title not recognised"))
        response, body = self.finish(d)
        self.assertJSON(
            response, body, 502, {"error": "association rejected: called AE title not recognised"}
        )
        self.assertCommonHeaders(response)

    def test_health_upstream_timeout_is_504(self) -> None:
        d = self.start("GET", "/aets/PACS")
        self.pacs.echoes[0].errback(UpstreamTimeout("no A-ASSOCIATE-AC within 5 s"))
        response, body = self.finish(d)
        self.assertJSON(response, body, 504, {"error": "no A-ASSOCIATE-AC within 5 s"})

    def test_health_slow_echo_is_cancelled_and_504(self) -> None:
        d = self.start("GET", "/aets/PACS")
        self.clock.advance(9.999)
        self.stub.flush()
        self.assertNoResult(d)
        self.assertEqual(self.pacs.echo_cancels, 0)
        self.clock.advance(0.001)
        response, body = self.finish(d)
        self.assertJSON(response, body, 504, {"error": "PACS did not answer the echo within 10000 ms"})
        self.assertEqual(self.pacs.echo_cancels, 1)
        self.assertCommonHeaders(response)

    def test_health_unknown_aet_is_404(self) -> None:
        response, body = self.fetch("GET", "/aets/NOPE")
        self.assertJSON(response, body, 404, {"error": "unknown AET 'NOPE'"})
        self.assertCommonHeaders(response)

    def test_unknown_route_is_404(self) -> None:
        response, body = self.fetch("GET", "/no/such/thing")
        self.assertJSON(response, body, 404, {"error": "not found"})
        self.assertCommonHeaders(response)

    def test_double_slash_is_not_redirected(self) -> None:
        response, body = self.fetch("GET", "/aets//PACS")
        self.assertJSON(response, body, 404, {"error": "not found"})

    def test_wrong_method_is_405_with_allow(self) -> None:
        response, body = self.fetch("POST", "/aets", data=b"x")
        self.assertJSON(response, body, 405, {"error": "method POST not allowed"})
        [allow] = response.headers.getRawHeaders(b"Allow")
        self.assertEqual(allow, b"GET, HEAD, OPTIONS")
        self.assertCommonHeaders(response)

    def test_non_utf8_path_is_400(self) -> None:
        response, body = self.fetch("GET", "/aets/%FF")
        self.assertJSON(response, body, 400, {"error": "path is not UTF-8"})


class TrailingSlashTests(AppTestCase):
    def test_every_route_ignores_one_trailing_slash(self) -> None:
        for path in ("/aets", "/aets/PACS", "/aets/NOPE", "/no/such/thing"):
            answers = []
            for variant in (path, path + "/"):
                d = self.start("GET", variant)
                if self.pacs.echoes and not self.pacs.echoes[-1].called:
                    self.pacs.echoes[-1].callback(2.0)
                response, body = self.finish(d)
                answers.append((response.code, json.loads(body)))
            self.assertEqual(answers[0], answers[1], path)

    def test_root_with_and_without_slash(self) -> None:
        self.assertEqual(self.fetch("GET", "")[1], self.fetch("GET", "/")[1])


class BasePathTests(AppTestCase):
    base_path = "/dicomweb/"

    def test_routes_live_under_the_base_path(self) -> None:
        response, body = self.fetch("GET", "/dicomweb/aets")
        self.assertJSON(response, body, 200, ["PACS", "ARCHIVE"])

    def test_base_path_itself_is_the_root(self) -> None:
        for path in ("/dicomweb", "/dicomweb/"):
            response, body = self.fetch("GET", path)
            self.assertJSON(response, body, 200, {"name": "dicomrst", "version": dicomrst.__version__})

    def test_paths_outside_the_base_are_404(self) -> None:
        for path in ("/", "/aets", "/dicomwebx/aets", "/other/dicomweb/aets"):
            response, body = self.fetch("GET", path)
            self.assertJSON(response, body, 404, {"error": "not found"})
            self.assertCommonHeaders(response)

    def test_trailing_slash_under_the_base(self) -> None:
        response, body = self.fetch("GET", "/dicomweb/aets/")
        self.assertJSON(response, body, 200, ["PACS", "ARCHIVE"])


class CORSTests(AppTestCase):
    def test_preflight_echoes_requested_headers(self) -> None:
        response, body = self.fetch(
            "OPTIONS",
            "/aets/PACS/studies",
            headers={
                "Origin": "https://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "accept, authorization",
            },
        )
        self.assertEqual((response.code, body), (204, b""))
        headers = response.headers
        self.assertEqual(
            headers.getRawHeaders(b"Access-Control-Allow-Methods"), [b"GET, HEAD, POST, OPTIONS"]
        )
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Headers"), [b"accept, authorization"])
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Max-Age"), [b"600"])
        self.assertCommonHeaders(response)
        self.assertEqual(self.pacs.echoes, [])

    def test_preflight_without_requested_headers_offers_a_safe_list(self) -> None:
        response, _ = self.fetch("OPTIONS", "/anything/at/all")
        self.assertEqual(response.code, 204)
        [allowed] = response.headers.getRawHeaders(b"Access-Control-Allow-Headers")
        names = {h.strip().lower() for h in allowed.decode().split(",")}
        self.assertTrue({"accept", "authorization", "content-type"} <= names, allowed)

    def test_cors_and_server_on_every_kind_of_response(self) -> None:
        responses = [
            self.fetch("GET", "/")[0],
            self.fetch("GET", "/aets/NOPE")[0],
            self.fetch("GET", "/nope")[0],
            self.fetch("PUT", "/aets", data=b"")[0],
            self.fetch("OPTIONS", "/aets")[0],
        ]
        d = self.start("GET", "/aets/PACS")
        self.pacs.echoes[0].errback(UpstreamError("refused"))
        responses.append(self.finish(d)[0])
        self.assertEqual([r.code for r in responses], [200, 404, 404, 405, 204, 502])
        for response in responses:
            self.assertCommonHeaders(response)


class ErrorMappingTests(AppTestCase):
    def fail_echo(self, error: BaseException) -> tuple[Any, bytes]:
        d = self.start("GET", "/aets/PACS")
        self.pacs.echoes[-1].errback(error)
        return self.finish(d)

    def test_each_error_type_maps_to_its_status(self) -> None:
        for error in (
            BadRequest("bad"),
            NotAcceptable("no such type"),
            PayloadTooLarge("too big"),
            NotImplementedService("not yet"),
            UpstreamError("refused"),
            ServiceUnavailable("busy"),
            UpstreamTimeout("slow"),
        ):
            response, body = self.fail_echo(error)
            self.assertJSON(response, body, http_status(error), {"error": error.message})
            self.assertIsNone(response.headers.getRawHeaders(b"Retry-After"))
            self.assertCommonHeaders(response)

    def test_service_unavailable_sets_retry_after(self) -> None:
        response, body = self.fail_echo(ServiceUnavailable("association pool exhausted", retry_after=7))
        self.assertJSON(response, body, 503, {"error": "association pool exhausted"})
        self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"7"])

    def test_unexpected_error_is_500_and_logged_once(self) -> None:
        response, body = self.fail_echo(RuntimeError("secret: /etc/dicomrst/key.pem"))
        self.assertJSON(response, body, 500, {"error": "internal error"})
        self.assertNotIn(b"secret", body)
        self.assertNotIn(b"Traceback", body)
        self.assertCommonHeaders(response)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# -- site ------------------------------------------------------------------


class SlowResource(Resource):
    """Answers nothing until the test says so; remembers its requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: IRequest) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class SiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = SlowResource()
        self.site = make_site(self.resource, self.clock, request_timeout=5.0)
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_site_settings(self) -> None:
        self.assertIsInstance(self.site, GatewaySite)
        self.assertFalse(self.site.noisy)
        self.assertEqual(self.site.timeOut, 60.0)
        self.assertEqual(make_site(self.resource, self.clock, 5.0, idle_timeout=15).timeOut, 15)

    def test_one_log_line_per_request_with_fields(self) -> None:
        conn = Connection(self.site)
        conn.send("GET", "/slow/path?PatientName=DOE%5EJOHN")
        [request] = self.resource.requests
        self.clock.advance(1.5)
        request.write(b"hello")
        request.finish()
        self.assertTrue(conn.transport.value().startswith(b"HTTP/1.1 200 "))
        [line] = request_lines(self.logs)
        self.assertEqual(
            {k: line[k] for k in LINE_FIELDS},
            {
                "method": "GET",
                "path": "/slow/path",
                "status": 200,
                "bytes_sent": 5,
                "duration_ms": 1500.0,
                "client": "192.0.2.7:50123",
                "outcome": "complete",
            },
        )
        text = formatEvent(line)
        self.assertRegex(
            text, "^GET /slow/path 200 5B 1500.0ms 192.0.2.7:50123 complete request_id=[0-9a-f]{32}$"
        )
        self.assertNotIn("DOE", text)
        self.assertEqual(self.site.inflight, 0)

    def test_finished_request_is_not_timed_out_later(self) -> None:
        conn = Connection(self.site)
        conn.send()
        [request] = self.resource.requests
        request.finish()
        sent = conn.transport.value()
        self.clock.advance(30)
        self.assertEqual(conn.transport.value(), sent)
        self.assertFalse(conn.transport.disconnected)
        self.assertEqual(len(request_lines(self.logs)), 1)

    def test_client_disconnect_logs_one_line(self) -> None:
        conn = Connection(self.site)
        conn.send()
        self.clock.advance(0.25)
        conn.lose()
        [line] = request_lines(self.logs)
        self.assertEqual((line["outcome"], line["status"], line["duration_ms"]), ("disconnected", 0, 250.0))
        self.assertEqual(self.site.inflight, 0)
        self.clock.advance(10)
        self.assertEqual(len(request_lines(self.logs)), 1)

    def test_timeout_before_headers_is_504_and_cancels_the_handler(self) -> None:
        conn = Connection(self.site)
        conn.send()
        [request] = self.resource.requests
        finished = request.notifyFinish()
        self.clock.advance(4.999)
        self.assertEqual(conn.transport.value(), b"")
        self.assertNoResult(finished)
        self.clock.advance(0.001)
        head, body = conn.head_and_body()
        self.assertTrue(head.startswith(b"HTTP/1.1 504 "), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(json.loads(body), {"error": "request timed out after 5000 ms"})
        self.failureResultOf(finished, RequestTimedOut)
        [line] = request_lines(self.logs)
        self.assertEqual((line["status"], line["outcome"]), (504, "timeout"))
        self.assertEqual(line["log_level"].name, "warn")
        self.assertEqual(self.site.inflight, 0)

    def test_timeout_after_headers_aborts_the_connection(self) -> None:
        conn = Connection(self.site)
        conn.send()
        [request] = self.resource.requests
        request.write(b"--boundary\r\npartial")
        self.clock.advance(5)
        self.assertTrue(conn.transport.disconnected)
        self.assertNotIn(b"504", conn.transport.value())
        self.assertEqual(request_lines(self.logs), [])
        conn.lose(ConnectionAborted())
        [line] = request_lines(self.logs)
        self.assertEqual((line["status"], line["outcome"], line["bytes_sent"]), (200, "timeout", 19))

    def test_request_timeout_through_the_app_cancels_the_echo(self) -> None:
        pacs = FakeBackend("PACS")
        app = GatewayApp({"PACS": pacs}, self.clock, echo_timeout=60)
        site = make_site(app.resource(), self.clock, request_timeout=2)
        conn = Connection(site)
        conn.send("GET", "/aets/PACS")
        self.assertEqual(len(pacs.echoes), 1)
        self.clock.advance(2)
        head, body = conn.head_and_body()
        self.assertTrue(head.startswith(b"HTTP/1.1 504 "), head)
        self.assertIn(b"Server: " + SERVER, head)
        self.assertIn(b"Access-Control-Allow-Origin: *", head)
        self.assertEqual(json.loads(body), {"error": "request timed out after 2000 ms"})
        self.assertEqual(pacs.echo_cancels, 1)

    def test_error_after_headers_aborts_instead_of_finishing(self) -> None:
        conn = Connection(self.site)
        conn.send()
        [request] = self.resource.requests
        request.write(b"partial")
        result = error_response(request, Failure(UpstreamError("PACS aborted the association")))
        self.assertTrue(IResource.providedBy(result))
        self.assertTrue(conn.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(UpstreamError)), 1)
        conn.lose(ConnectionAborted())
        [line] = request_lines(self.logs)
        self.assertEqual(line["outcome"], "error")

    def test_nothing_is_written_after_an_abort_not_even_the_last_chunk(self) -> None:
        """Twisted's abortConnection drops the connection on the reactor's next turn; a
        write or the final chunk in between (the handler finishing its cut-off response)
        would make the body look complete to the client just before the reset."""
        conn = Connection(self.site)
        conn.send()
        [request] = self.resource.requests
        request.write(b"--boundary\r\npartial")
        abort_connection(request)
        sent = conn.transport.value()
        self.assertTrue(sent.endswith(b"partial\r\n"), sent[-40:])
        request.write(b"more")
        request.finish()
        self.assertEqual(conn.transport.value(), sent)
        conn.lose(ConnectionAborted())
        [line] = request_lines(self.logs)
        self.assertEqual(line["outcome"], "error")


class _Socket:
    """The kernel under a real `twisted.internet.tcp.Server`: takes whatever is sent, and
    notes how the connection ends (a reset: SO_LINGER 0 before close)."""

    def __init__(self) -> None:
        self.sent = b""
        self.sends = 0
        self.linger: bytes | None = None
        self.shut = False
        self.closed = False

    def send(self, data: bytes) -> int:
        self.sends += 1
        self.sent += bytes(data)
        return len(data)

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("192.0.2.1", 8080)

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.linger = value

    def shutdown(self, how: int) -> None:
        self.shut = True

    def close(self) -> None:
        self.closed = True

    @property
    def reset(self) -> bool:
        return self.closed and not self.shut and self.linger == struct.pack("ii", 1, 0)


class AbortOverTcpTests(SynchronousTestCase):
    """`abort_connection` on Twisted's own TCP transport, whose writes beyond what the
    kernel takes at once wait in its buffer for the reactor's next turn and whose
    abortConnection drops that buffer."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resource = SlowResource()
        site = make_site(self.resource, self.reactor, request_timeout=5.0)
        self.socket = _Socket()
        protocol = site.buildProtocol(CLIENT)
        assert protocol is not None

        class Port:
            _realPortNumber = 8080

        self.transport = tcp.Server(
            self.socket, protocol, (CLIENT.host, CLIENT.port), Port(), 1, self.reactor
        )
        protocol.makeConnection(self.transport)
        protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: gateway.example\r\n\r\n")

    def test_what_was_written_before_an_abort_goes_out_before_the_reset(self) -> None:
        """A failure in the same reactor turn as the writes before it (a PACS's A-ABORT
        read with the first fragment of an instance): the status line and the part's
        start must reach the client before the reset.  Dropped with Twisted's buffer,
        the client saw a reset before any response and, on a kept-alive connection,
        sent the GET again (as Twisted's client and browsers do): the cut-off response
        was never seen as one."""
        [request] = self.resource.requests
        # More than Twisted hands the kernel in one write (128 KiB).
        part = b"--boundary\r\n" + b"p" * 300_000
        request.write(part)
        # A part this large waits in Twisted's buffer for the reactor's turn.
        self.assertEqual(self.socket.sent, b"")
        self.assertEqual(self.reactor.getWriters(), [self.transport])
        abort_connection(request)
        request.finish()  # the handler ending its cut-off response (nothing more goes out)
        self.reactor.advance(0)  # abortConnection drops the connection on the next turn
        self.assertTrue(self.socket.reset)
        sent = self.socket.sent
        self.assertTrue(sent.startswith(b"HTTP/1.1 200 "), sent[:40])
        self.assertTrue(sent.endswith(b"%x\r\n%s\r\n" % (len(part), part)), (len(sent), sent[-40:]))

    def test_a_finished_response_reaches_the_socket_in_the_same_turn(self) -> None:
        """A small answer (a QIDO search's) is handed to the kernel when it is finished, not
        on the reactor's next turn: the client's latency does not wait for an epoll round."""
        [request] = self.resource.requests
        request.write(b"[]")
        request.finish()
        sent = self.socket.sent
        self.assertTrue(sent.startswith(b"HTTP/1.1 200 "), sent[:40])
        self.assertTrue(sent.endswith(b"2\r\n[]\r\n0\r\n\r\n"), sent[-40:])
        # Straight to the socket: the head with the body's first bytes, then the last
        # chunk; never through Twisted's buffer and the reactor's write registration.
        self.assertEqual(self.socket.sends, 2)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_a_sized_response_is_one_send(self) -> None:
        [request] = self.resource.requests
        request.setHeader(b"Content-Length", b"2")
        request.write(b"[]")
        request.finish()
        self.assertEqual(self.socket.sends, 1)
        head, body = self.socket.sent.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"\r\nContent-Length: 2\r\n", head + b"\r\n")
        self.assertEqual(body, b"[]")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_a_large_part_waits_for_the_reactor_s_turn(self) -> None:
        """A streamed retrieve's part (up to 1 MiB) is not copied into the kernel inside
        the write: its caller sends the C-STORE-RSP next, and the PACS's next instance
        waits for that.  It goes out, after the head, on the reactor's turn."""
        [request] = self.resource.requests
        request.setHeader(b"Content-Length", b"%d" % (70_000 + 3))
        request.write(b"p" * 70_000)
        self.assertEqual(self.socket.sends, 0)
        self.assertEqual(self.reactor.getWriters(), [self.transport])
        request.write(b"end")  # behind it, not before it
        self.assertEqual(self.socket.sends, 0)
        self.transport.doWrite()
        head, body = self.socket.sent.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:40])
        self.assertEqual(body, b"p" * 70_000 + b"end")

    def test_a_head_without_a_body_goes_out_at_once(self) -> None:
        """A stream that writes nothing yet (a WADO-RS response waiting for the PACS's first
        instance) shows its status line and headers to the client now."""
        [request] = self.resource.requests
        request.write(b"")
        self.assertTrue(self.socket.sent.startswith(b"HTTP/1.1 200 OK\r\n"), self.socket.sent[:40])
        self.assertTrue(self.socket.sent.endswith(b"\r\n\r\n"), self.socket.sent[-40:])
        request.write(b"part")
        self.assertTrue(self.socket.sent.endswith(b"\r\n\r\n4\r\npart\r\n"), self.socket.sent[-40:])

    def test_what_the_kernel_does_not_take_waits_in_twisted_s_buffer(self) -> None:
        [request] = self.resource.requests
        sends: list[bytes] = []

        def partly(data: bytes) -> int:
            sends.append(bytes(data))
            return 10 if len(sends) == 1 else 0

        self.socket.send = partly  # type: ignore[method-assign]  # the client's window fills up
        request.setHeader(b"Content-Length", b"4")
        request.write(b"body")
        request.finish()
        self.assertEqual(self.reactor.getWriters(), [self.transport])  # the rest, on the next turn
        self.socket.send = _Socket.send.__get__(self.socket)  # type: ignore[method-assign]  # the window opens
        self.transport.doWrite()
        self.assertEqual(sends[0][:10] + self.socket.sent, sends[0])
        self.assertTrue(self.socket.sent.endswith(b"\r\n\r\nbody"), self.socket.sent[-20:])
        self.assertEqual(self.reactor.getWriters(), [])

    def test_pipelined_requests_are_answered_in_order(self) -> None:
        self.transport.protocol.dataReceived(b"GET /two HTTP/1.1\r\nHost: gateway.example\r\n\r\n")
        first, *later = self.resource.requests
        self.assertEqual(later, [])  # waits for the first's response
        first.setHeader(b"Content-Length", b"3")
        first.write(b"one")
        first.finish()
        [_, second] = self.resource.requests
        second.setHeader(b"Content-Length", b"3")
        second.write(b"two")
        second.finish()
        sent = self.socket.sent
        self.assertEqual(sent.count(b"HTTP/1.1 200 OK\r\n"), 2)
        self.assertTrue(sent.index(b"\r\n\r\none") < sent.index(b"\r\n\r\ntwo"), sent)
        self.assertEqual(self.socket.sends, 2)

    def test_a_client_that_stopped_reading_does_not_hold_the_abort(self) -> None:
        """What the kernel will not take now is dropped with the connection: the abort
        does not wait for the client."""
        [request] = self.resource.requests
        self.socket.send = lambda data: 0  # type: ignore[method-assign]  # the client's window is full
        request.write(b"x" * 1000)
        abort_connection(request)
        self.reactor.advance(0)
        self.assertTrue(self.socket.reset)
        self.assertEqual(self.socket.sent, b"")


class AbortOverTlsTests(SynchronousTestCase):
    """The same over HTTPS (``server.http.tls``): Twisted's TLS wrapper over its TCP
    transport, a real handshake with a client in memory."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resource = SlowResource()
        site = make_site(self.resource, self.reactor, request_timeout=5.0)
        ca = Authority.create(self.mktemp())
        issued = ca.issue("gateway", server=True)
        server = TLSMemoryBIOFactory(server_tls(issued.cert, issued.key), False, site, self.reactor)
        self.wrapper = server.buildProtocol(CLIENT)
        self.socket = _Socket()

        class Port:
            _realPortNumber = 8443

        self.tcp = tcp.Server(self.socket, self.wrapper, (CLIENT.host, CLIENT.port), Port(), 1, self.reactor)
        self.wrapper.makeConnection(self.tcp)
        self.received = bytearray()
        received = self.received

        class Client(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.extend(data)

        client = TLSMemoryBIOFactory(
            client_tls("127.0.0.1", ca.ca), True, Factory.forProtocol(Client), self.reactor
        )
        self.client = client.buildProtocol(CLIENT)
        self.client_transport = StringTransport()
        self.client.makeConnection(self.client_transport)
        self.delivered = 0
        self.pump()
        self.client.write(b"GET /slow HTTP/1.1\r\nHost: gateway.example\r\n\r\n")
        self.pump()

    def pump(self) -> None:
        """Both ways until quiet, the gateway's side written as the reactor would."""
        for _ in range(10):
            self.reactor.advance(0)  # the TLS layers send what they gathered
            data = self.client_transport.value()
            self.client_transport.clear()
            if data:
                self.wrapper.dataReceived(data)
            self.tcp.doWrite()
            self.deliver()

    def deliver(self) -> None:
        new = self.socket.sent[self.delivered :]
        self.delivered = len(self.socket.sent)
        if new:
            self.client.dataReceived(new)

    def abort_after(self, written: bytes) -> bytes:
        [request] = self.resource.requests
        request.write(written)
        abort_connection(request)
        self.reactor.advance(0)
        self.assertTrue(self.socket.reset)
        self.deliver()
        return bytes(self.received)

    def test_a_large_write_goes_out_before_the_reset(self) -> None:
        part = b"--boundary\r\n" + b"p" * 200_000
        received = self.abort_after(part)
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received[:40])
        self.assertTrue(received.endswith(b"%x\r\n%s\r\n" % (len(part), part)), len(received))

    def test_a_small_write_goes_out_before_the_reset(self) -> None:
        """Twisted's TLS gathers small writes until the reactor's next turn."""
        received = self.abort_after(b"--boundary\r\npartial")
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received[:40])
        self.assertTrue(received.endswith(b"--boundary\r\npartial\r\n"), received[-40:])


# -- service ---------------------------------------------------------------


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resource = SlowResource()
        self.site = make_site(self.resource, self.reactor, request_timeout=300)
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.events: list[str] = []

    def service(self, graceful: bool = True, grace_period: float = 30) -> HTTPService:
        svc = HTTPService("tcp:8080:interface=127.0.0.1", self.site, self.reactor, graceful, grace_period)
        svc.startService()
        assert svc.port is not None
        self.stopped: Deferred[None] = Deferred()
        real_stop = svc.port.stopListening

        def stop_listening() -> Deferred[None]:
            self.events.append("stopListening")
            real_stop()
            return self.stopped

        svc.port.stopListening = stop_listening  # type: ignore[method-assign]
        return svc

    def inflight(self, n: int) -> list[Connection]:
        conns = [Connection(self.site) for _ in range(n)]
        for conn in conns:
            conn.send()
        self.assertEqual(self.site.inflight, n)
        return conns

    def test_listens_on_the_endpoint(self) -> None:
        svc = self.service()
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        self.assertIs(factory, self.site)
        self.assertIs(self.successResultOf(svc.whenListening), svc.port)
        self.assertIn("HTTP listening on ", [formatEvent(e)[:18] for e in web_events(self.logs)])

    def test_listen_error_is_raised_from_start(self) -> None:
        in_use = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        reactor = RaisingMemoryReactor(listenException=in_use)
        svc = HTTPService("tcp:8080", self.site, reactor, True, 30)
        self.assertRaises(CannotListenError, svc.startService)
        self.assertIsNone(svc.port)
        self.assertFalse(svc.running)
        self.failureResultOf(svc.whenListening, CannotListenError)

    def test_stop_with_nothing_in_flight(self) -> None:
        svc = self.service()
        d = svc.stopService()
        self.assertEqual(self.events, ["stopListening"])
        self.assertNoResult(d)
        self.stopped.callback(None)
        self.successResultOf(d)

    def test_graceful_stop_waits_for_in_flight_requests(self) -> None:
        svc = self.service()
        [conn] = self.inflight(1)
        d = svc.stopService()
        self.assertEqual(self.events, ["stopListening"])
        self.stopped.callback(None)
        self.assertNoResult(d)
        self.reactor.advance(29)
        self.assertNoResult(d)
        [request] = self.resource.requests
        request.write(b"done")
        request.finish()
        self.successResultOf(d)
        # The connection closes after its last response rather than idling on.
        head, _ = conn.head_and_body()
        self.assertIn(b"Connection: close", head)
        self.assertTrue(conn.transport.disconnecting)
        self.assertFalse(conn.transport.disconnected)

    def test_graceful_stop_aborts_what_is_left_after_the_grace_period(self) -> None:
        svc = self.service(grace_period=30)
        first, second = self.inflight(2)
        d = svc.stopService()
        self.stopped.callback(None)
        self.resource.requests[0].finish()
        self.reactor.advance(29.999)
        self.assertNoResult(d)
        self.assertFalse(second.transport.disconnected)
        self.reactor.advance(0.001)
        self.successResultOf(d)
        self.assertFalse(first.transport.disconnected)
        self.assertTrue(second.transport.disconnected)
        second.lose(ConnectionAborted())
        outcomes = [e["outcome"] for e in request_lines(self.logs)]
        self.assertEqual(outcomes, ["complete", "shutdown"])
        self.assertEqual(self.site.inflight, 0)

    def test_stop_does_not_drain_until_the_port_is_closed(self) -> None:
        svc = self.service(graceful=False)
        [conn] = self.inflight(1)
        d = svc.stopService()
        self.assertFalse(conn.transport.disconnected)
        self.stopped.callback(None)
        self.successResultOf(d)
        self.assertTrue(conn.transport.disconnected)


# -- malformed headers ------------------------------------------------------


class HostHeaderTests(SynchronousTestCase):
    """The Host goes into every URL the gateway answers with.  A non-ASCII one got no
    answer (a WADO-RS response cut off at its first part header) or Klein's text 400
    (issue 11); now every malformed Host is our JSON 400 before anything starts."""

    STUDY = "1.2.826.0.1.3680043.8.498.1"

    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.site = make_site(GatewayApp({"PACS": self.pacs}, self.clock).resource(), self.clock, 60)
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def request(self, head: bytes) -> tuple[int, dict[str, Any]]:
        conn = Connection(self.site)
        conn.protocol.dataReceived(head + b"\r\n")
        head_bytes, body = conn.head_and_body()
        status = int(head_bytes.split(b" ", 2)[1])
        return status, (json.loads(body) if body.startswith(b"{") else {"raw": body})

    def test_malformed_hosts_are_400_naming_host(self) -> None:
        paths = (
            b"GET /aets/PACS/studies?fuzzymatching=true",
            b"GET /aets/PACS/studies/" + self.STUDY.encode(),
            b"GET /aets/PACS/studies/" + self.STUDY.encode() + b"/metadata",
            b"OPTIONS /aets/PACS/studies",
        )
        hosts = (b"h\xe9llo", b"h\xc3\xa9llo", b"gw.example:80:80", b"a b", b"gw,evil", b"x" * 300, b"gw/x")
        for path in paths:
            for host in hosts:
                status, body = self.request(path + b" HTTP/1.1\r\nHost: " + host + b"\r\n")
                self.assertEqual(status, 400, (path, host, body))
                self.assertIn("Host", body["error"], (path, host))
                self.assertLess(len(body["error"]), 200)
        self.assertEqual((self.pacs.finds, self.pacs.retrieves), ([], []))
        statuses = [e["status"] for e in request_lines(self.logs)]
        self.assertEqual(statuses, [400] * len(paths) * len(hosts))  # one line each

    def test_stow_with_a_malformed_host_stores_nothing(self) -> None:
        status, body = self.request(
            b"POST /aets/PACS/studies HTTP/1.1\r\nHost: h\xc3\xa9llo\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            b"Content-Length: 9\r\n\r\n--b--\r\n\r\n"
        )
        self.assertEqual(status, 400)
        self.assertIn("Host", body["error"])
        self.assertEqual(self.pacs.received, [])

    def test_several_or_missing_hosts(self) -> None:
        status, body = self.request(b"GET /aets HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n")
        self.assertEqual((status, body["error"]), (400, "more than one Host header"))
        status, body = self.request(b"GET /aets HTTP/1.1\r\n")
        self.assertEqual((status, body["error"]), (400, "an HTTP/1.1 request needs a Host header"))

    def test_valid_hosts(self) -> None:
        valid = (b"gw.example", b"gw.example:8443", b"127.0.0.1:8080", b"[::1]:8080", b"[fe80::1%2]", b"")
        for host in valid:
            status, _ = self.request(b"GET /aets HTTP/1.1\r\nHost: " + host + b"\r\n")
            self.assertEqual(status, 200, host)
        self.pacs.results = []
        conn = Connection(self.site)
        conn.protocol.dataReceived(b"GET /aets/PACS/studies HTTP/1.0\r\n\r\n")  # HTTP/1.0: Host optional
        self.assertTrue(conn.transport.value().startswith(b"HTTP/1.0 200 "), conn.transport.value()[:80])

    def test_preflight_echoes_only_a_list_of_header_names(self) -> None:
        for asked, echoed in ((b"accept, authorization", True), (b"accept\x1b[2J", False), (b"a;b", False)):
            conn = Connection(self.site)
            head = b"OPTIONS /aets HTTP/1.1\r\nHost: gw\r\nAccess-Control-Request-Headers: "
            conn.protocol.dataReceived(head + asked + b"\r\n\r\n")
            head, _ = conn.head_and_body()
            self.assertEqual(b"Access-Control-Allow-Headers: " + asked in head, echoed, head)


# -- request heads: deadline and limits ---------------------------------------


class HeadTestCase(SynchronousTestCase):
    header_timeout = 20.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = SlowResource()
        self.site = make_site(
            self.resource, self.clock, request_timeout=60, header_timeout=self.header_timeout
        )
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def answer(self, conn: Connection, since: int = 0) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
        head, _, body = conn.transport.value()[since:].partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
        return int(status_line.split(b" ")[1]), headers, json.loads(body)

    def assertClosedWith(
        self, conn: Connection, status: int, *fragments: str, since: int = 0
    ) -> dict[str, Any]:
        code, headers, body = self.answer(conn, since)
        self.assertEqual(code, status, body)
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"connection"], b"close")
        for fragment in fragments:
            self.assertIn(fragment, body["error"])
        self.assertTrue(conn.transport.disconnecting)
        return body

    def lines(self) -> list[dict[str, Any]]:
        return request_lines(self.logs)


class HeadDeadlineTests(HeadTestCase):
    """A client that trickles its request head was held forever: Twisted's idle timeout
    restarts with every byte (issue 11).  The head now has `header_timeout` in all."""

    def trickle(self, conn: Connection, data: bytes, every: float) -> None:
        for i in range(len(data)):
            conn.protocol.dataReceived(data[i : i + 1])
            self.clock.advance(every)

    def test_a_trickled_head_is_a_408_at_the_deadline(self) -> None:
        conn = Connection(self.site)
        self.trickle(conn, b"GET /slow HTTP/1.1\r\nHost: gw\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaa", 0.5)
        self.assertClosedWith(conn, 408, "request headers not received within 20000 ms")
        self.assertEqual(self.resource.requests, [])
        [line] = self.lines()
        self.assertEqual(
            (line["method"], line["path"], line["status"], line["outcome"], line["duration_ms"]),
            ("GET", "/slow", 408, "timeout", 10_500.0),  # the request line was in at 9.5 s
        )

    def test_no_request_line_by_the_deadline_closes_without_an_answer(self) -> None:
        conn = Connection(self.site)
        self.trickle(conn, b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1.0)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(conn.transport.value(), b"")
        self.assertEqual(self.lines(), [])
        [event] = web_events(self.logs)
        self.assertEqual(
            formatEvent(event),
            "HTTP connection from 192.0.2.7:50123 closed: no request line within 20000 ms "
            "(20 bytes received)",
        )

    def test_an_idle_keep_alive_connection_is_closed(self) -> None:
        conn = Connection(self.site)
        conn.send()
        [request] = self.resource.requests
        self.clock.advance(30)  # a slow handler: the head deadline is not the request's
        request.finish()
        self.assertFalse(conn.transport.disconnecting)
        self.clock.advance(19.9)
        self.assertFalse(conn.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(len(self.lines()), 1)  # the request's; the idle close is a debug line

    def test_the_next_request_on_a_connection_has_its_own_deadline(self) -> None:
        conn = Connection(self.site)
        conn.send()
        self.resource.requests[0].finish()
        self.clock.advance(19)
        conn.send()  # in time
        self.resource.requests[1].finish()
        since = len(conn.transport.value())
        self.trickle(conn, b"GET /slow HTTP/1.1\r\nHost: gw\r\n", 1.0)
        self.assertClosedWith(conn, 408, since=since)
        self.assertEqual([line["status"] for line in self.lines()], [200, 200, 408])

    def test_one_head_deadline_call_per_connection_moved_for_each_request(self) -> None:
        conn = Connection(self.site)

        def head_calls() -> list[Any]:
            return [c for c in self.clock.getDelayedCalls() if c.func == conn.protocol._deadline_passed]

        [first] = head_calls()
        for _ in range(3):
            conn.send()
            self.resource.requests[-1].finish()
            self.clock.advance(15)  # within the deadline each time: it starts again
        self.assertEqual(head_calls(), [first])
        self.assertFalse(conn.transport.disconnecting)
        conn.lose()
        self.assertEqual(head_calls(), [])

    def test_a_slow_body_is_not_cut_off_by_the_head_deadline(self) -> None:
        conn = Connection(self.site)
        conn.protocol.dataReceived(b"POST /slow HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n")
        self.trickle(conn, b"0123456789", 10.0)  # 100 s, never 60 s idle
        self.assertFalse(conn.transport.disconnecting)
        [request] = self.resource.requests
        self.assertEqual(request.content.read(), b"0123456789")


class Http10KeepAliveTests(HeadTestCase):
    """HTTP/1.0 clients that ask for keep-alive (``ab -k``, older proxies) get it when the
    response's length is known; Twisted closed every HTTP/1.0 connection (issue 15)."""

    def ask(self, conn: Connection, connection: bytes = b"Keep-Alive") -> Any:
        conn.protocol.dataReceived(b"GET /slow HTTP/1.0\r\nConnection: " + connection + b"\r\n\r\n")
        return self.resource.requests[-1]

    def head(self, conn: Connection, since: int = 0) -> dict[bytes, bytes]:
        head, _, _ = conn.transport.value()[since:].partition(b"\r\n\r\n")
        fields = (line.partition(b": ") for line in head.split(b"\r\n")[1:])
        return {name.lower(): value for name, _, value in fields}

    def test_a_sized_response_keeps_the_connection_for_the_next_request(self) -> None:
        conn = Connection(self.site)
        request = self.ask(conn)
        request.setHeader(b"Content-Length", b"2")
        request.write(b"{}")
        request.finish()
        self.assertEqual(self.head(conn)[b"connection"], b"keep-alive")
        self.assertFalse(conn.transport.disconnecting)
        since = len(conn.transport.value())
        self.ask(conn, b"keep-alive").finish()  # nothing written: Content-Length 0
        self.assertEqual(self.head(conn, since)[b"content-length"], b"0")
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(len(self.resource.requests), 2)

    def test_a_stream_without_a_length_closes_as_before(self) -> None:
        conn = Connection(self.site)
        request = self.ask(conn)
        request.write(b"part")  # HTTP/1.0 has no chunked coding: the close ends it
        request.finish()
        self.assertNotIn(b"transfer-encoding", self.head(conn))
        self.assertTrue(conn.transport.disconnecting)

    def test_without_keep_alive_http_10_closes(self) -> None:
        for connection in (b"close", b"upgrade"):
            conn = Connection(self.site)
            request = self.ask(conn, connection)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            self.assertTrue(conn.transport.disconnecting, connection)


class HeadLimitTests(HeadTestCase):
    """An oversized request line got the connection closed with no status, an oversized
    header block Twisted's bare 400 (issue 11); they are 414 and 431 now, and what Twisted
    cannot parse is our 400, each with one log line."""

    def send(self, data: bytes) -> Connection:
        conn = Connection(self.site)
        conn.protocol.dataReceived(data)
        return conn

    def test_a_long_request_line_is_414(self) -> None:
        conn = self.send(b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        self.assertClosedWith(conn, 414, f"request line longer than {MAX_REQUEST_LINE} bytes")
        self.assertTrue(conn.transport.value().startswith(b"HTTP/1.1 414 URI Too Long\r\n"))
        [line] = self.lines()
        self.assertEqual((line["method"], line["status"], line["outcome"]), ("GET", 414, "rejected"))
        self.assertEqual(line["path"], "/" + "a" * 63 + "...")
        # Before its end arrives, too: the line is already too long.
        conn = self.send(b"GET /" + b"a" * (MAX_REQUEST_LINE + 10))
        self.assertClosedWith(conn, 414)

    def test_the_longest_request_line_is_taken(self) -> None:
        target = b"/" + b"a" * (MAX_REQUEST_LINE - len(b"GET  HTTP/1.1") - 1)
        conn = self.send(b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        self.assertEqual(len(self.resource.requests), 1)
        self.assertFalse(conn.transport.disconnecting)

    def test_large_header_fields_are_431(self) -> None:
        many_small = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(90))
        for headers, why in (
            (b"X-Big: " + b"v" * (MAX_HEADER_BLOCK + 1) + b"\r\n", "longer than"),
            (many_small, f"larger than {MAX_HEADER_BLOCK} bytes in all"),
            (b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)), f"more than {MAX_HEADERS}"),
        ):
            conn = self.send(b"GET /slow HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n")
            self.assertClosedWith(conn, 431, why)
            status_line = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            self.assertTrue(conn.transport.value().startswith(status_line))
        self.assertEqual(self.resource.requests, [])
        self.assertEqual([(line["path"], line["status"]) for line in self.lines()], [("/slow", 431)] * 3)

    def test_headers_within_the_limits_are_taken(self) -> None:
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEADERS - 1))
        self.send(b"GET /slow HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n")
        self.assertEqual(len(self.resource.requests), 1)

    def test_what_twisted_cannot_parse_is_our_400(self) -> None:
        for data, why in (
            (b"GET /\x01 HTTP/1.1\r\n\r\n", "malformed request line"),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "malformed request header field"),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "malformed request header field"),
            (b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", "Content-Length"),
            (b"POST /slow HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n", "chunked"),
        ):
            conn = self.send(data)
            self.assertClosedWith(conn, 400, why)
        lines = self.lines()
        self.assertEqual([line["status"] for line in lines], [400] * 5)
        self.assertEqual([(line["method"], line["path"]) for line in lines[:2]], [("-", "-"), ("GET", "/")])

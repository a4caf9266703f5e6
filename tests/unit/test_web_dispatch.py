"""Tests for dicomrst.web.dispatch: Klein's routes matched once per (method, path) and
dispatched without KleinResource, answering as Klein did (404, 405, HEAD, percent-encoded
segments, query strings), with the cache bounded; a request leaves no reference cycle
behind (issue 15: it was freed only by the cyclic garbage collector); and what the site
does for every request (request ID, access line) it still does."""

from __future__ import annotations

import gc
import json
import uuid
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from zope.interface import directlyProvides

from dicomrst.logs import set_level
from dicomrst.web import dispatch
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import GatewayRequest, make_site
from tests.support.fakes import FakeBackend
from tests.support.http import CLIENT, AppRequests, Connection


class RouteCacheTests(AppRequests):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.app = GatewayApp({"PACS": self.pacs}, self.clock)
        self.routes = self.app.routes
        self.stub = StubTreq(self.app.resource())

    def oracle(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        """What werkzeug's URL map says, matched afresh."""
        endpoint, values = self.app.app.url_map.bind("").match(path, method=method)
        return str(endpoint), dict(values)

    def test_a_match_is_werkzeugs_the_first_time_and_after(self) -> None:
        for path in (
            "/",
            "/aets",
            "/aets/PACS",
            "/aets/PACS/studies",
            "/aets/PACS/studies/1.2.3/series/4.5/instances/6.7/frames/1,2",
            "/aets/PACS/studies/1.2.3/series/4.5/instances/6.7/bulkdata/a/b/c",
        ):
            for _ in range(2):
                endpoint, values = self.routes.match("GET", path)
                self.assertEqual((endpoint, dict(values)), self.oracle("GET", path), path)

    def test_the_method_is_part_of_the_key(self) -> None:
        self.assertEqual(self.routes.match("GET", "/aets/PACS/studies")[0], "search_studies")
        self.assertEqual(self.routes.match("POST", "/aets/PACS/studies")[0], "store_instances")
        self.assertEqual(self.routes.match("HEAD", "/aets/PACS/studies")[0], "search_studies")
        self.assertEqual(self.routes.match("GET", "/aets/PACS/studies")[0], "search_studies")

    def test_misses_are_not_kept_and_stay_404_and_405(self) -> None:
        for _ in range(2):
            self.assertRaises(NotFound, self.routes.match, "GET", "/nowhere")
            error = self.assertRaises(MethodNotAllowed, self.routes.match, "DELETE", "/aets/PACS/studies")
            self.assertIn("GET", error.valid_methods or [])
        self.assertNotIn(("GET", "/nowhere"), self.routes._matches)

    def test_the_cache_is_bounded(self) -> None:
        for n in range(dispatch.CACHE_SIZE + 10):
            self.routes.match("GET", f"/aets/PACS/studies/1.2.{n}")
        self.assertLessEqual(len(self.routes._matches), dispatch.CACHE_SIZE)
        long = "/aets/PACS/studies/" + "1." * dispatch.CACHED_PATH_LENGTH + "1"
        self.assertEqual(self.routes.match("GET", long)[1]["study"], long.rsplit("/", 1)[1])
        self.assertNotIn(("GET", long), self.routes._matches)

    def test_404_and_405_through_the_app_twice(self) -> None:
        for _ in range(2):
            response, body = self.fetch("/aets/PACS/nothing")
            self.assertEqual((response.code, json.loads(body)), (404, {"error": "not found"}))
            response, body = self.fetch("/aets/PACS/studies", method="DELETE")
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers.getRawHeaders(b"Allow"), [b"GET, HEAD, OPTIONS, POST"])

    def test_percent_encoded_segments_reach_the_handler_decoded(self) -> None:
        self.pacs.echo_ms = 1.0
        for _ in range(2):
            response, body = self.fetch("/aets/PA%43S")
            self.assertEqual(response.code, 200, body)
            self.assertEqual(json.loads(body)["aet"], "PACS")
        # An encoded slash is part of its segment for twisted.web, and then a separator
        # for the URL map, as it was for Klein: no such route.
        response, _ = self.fetch("/aets/PA%2FCS")
        self.assertEqual(response.code, 404)

    def test_each_request_gets_its_own_query(self) -> None:
        for patient in ("P1", "P2", "P1"):
            response, _ = self.fetch(f"/aets/PACS/studies?PatientID={patient}")
            self.assertEqual(response.code, 200)
            self.assertEqual(self.pacs.finds[-1].identifier.PatientID, patient)

    def test_head_answers_like_get_without_a_body(self) -> None:
        get, _ = self.fetch("/aets/PACS/studies")
        head, body = self.fetch("/aets/PACS/studies", method="HEAD")
        self.assertEqual((head.code, body), (200, b""))
        self.assertEqual(
            head.headers.getRawHeaders(b"Content-Type"), get.headers.getRawHeaders(b"Content-Type")
        )
        self.assertEqual(len(self.pacs.finds), 1)  # HEAD does not search

    def test_handlers_cannot_change_the_kept_values(self) -> None:
        self.fetch("/aets/PACS/studies/1.2.3/series")
        endpoint, values = self.routes.match("GET", "/aets/PACS/studies/1.2.3/series")
        self.assertEqual((endpoint, dict(values)), ("search_study_series", {"aet": "PACS", "study": "1.2.3"}))


class NoCycleTests(AppRequests):
    """A finished request is freed when its last reference goes, not by the cyclic
    garbage collector (which then ran every few dozen requests under load)."""

    def test_a_finished_request_is_not_cyclic_garbage(self) -> None:
        clock = Clock()
        pacs = FakeBackend("PACS")
        site = make_site(GatewayApp({"PACS": pacs}, clock).resource(), clock, request_timeout=30)
        connection = Connection(site)
        paths = ("/", "/aets/PACS/studies?PatientID=P1", "/aets/PACS/nothing")
        for path in paths:  # imports and caches settle first
            connection.send("GET", path)
        connection.transport.clear()
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            gc.set_debug(gc.DEBUG_SAVEALL)
            for path in paths:
                connection.send("GET", path)
            gc.collect()
            left = [o for o in gc.garbage if isinstance(o, GatewayRequest)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if enabled:
                gc.enable()
        self.assertEqual(connection.transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(connection.transport.value().count(b"HTTP/1.1 404 Not Found"), 1)
        self.assertEqual(left, [])


class RequestBookkeepingTests(AppRequests):
    """What every request still gets, done more cheaply: a generated request ID, and the
    access line only where it is shown (warnings always)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.site = make_site(GatewayApp({"PACS": self.pacs}, self.clock).resource(), self.clock, 5)
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(set_level, "INFO")

    def lines(self) -> list[dict[str, Any]]:
        return [e for e in self.logs if e.get("log_namespace") == "dicomrst.web" and "outcome" in e]

    def test_a_generated_request_id_is_a_random_uuid(self) -> None:
        ids = set()
        for _ in range(50):
            connection = Connection(self.site)
            connection.send("GET", "/")
            head, _ = connection.head_and_body()
            [line] = [h for h in head.split(b"\r\n") if h.lower().startswith(b"x-request-id:")]
            text = line.split(b":", 1)[1].strip().decode()
            self.assertEqual(uuid.UUID(hex=text).hex, text)
            self.assertEqual(uuid.UUID(hex=text).version, 4)
            self.assertEqual(uuid.UUID(hex=text).variant, uuid.RFC_4122)
            ids.add(text)
        self.assertEqual(len(ids), 50)

    def test_the_access_line_follows_the_level(self) -> None:
        set_level("WARN")
        Connection(self.site).send("GET", "/")
        self.assertEqual(self.lines(), [])
        # A timed-out request is a warning: logged at WARN too.
        self.pacs.hold = True
        Connection(self.site).send("GET", "/aets/PACS/studies")
        self.clock.advance(5)
        [line] = self.lines()
        self.assertEqual((line["status"], line["outcome"]), (504, "timeout"))
        set_level("INFO")
        Connection(self.site).send("GET", "/")
        self.assertEqual([e["status"] for e in self.lines()], [504, 200])

    def test_the_scheme_is_the_connections(self) -> None:
        for secure in (False, True):
            connection = Connection(self.site)
            if secure:
                directlyProvides(connection.transport, ISSLTransport)
            for _ in range(2):  # asked once, remembered
                connection.send("GET", "/aets/PACS/studies?PatientID=P1")
                self.assertTrue(connection.protocol.isSecure() is secure)
        self.assertEqual([find.identifier.PatientID for find in self.pacs.finds], ["P1"] * 4)

    def test_the_addresses_are_the_connections_asked_once(self) -> None:
        connection = Connection(self.site)
        asked: list[str] = []
        transport = connection.transport
        for name in ("getHost", "getPeer"):
            method = getattr(transport, name)

            def counted(method: Any = method, name: str = name) -> Any:
                asked.append(name)
                return method()

            setattr(transport, name, counted)
        for _ in range(3):
            connection.send("GET", "/aets/PACS/studies?PatientID=P1")
        self.assertEqual(sorted(asked), ["getHost", "getPeer"])
        self.assertEqual(connection.protocol.getPeer(), CLIENT)
        self.assertEqual(connection.protocol.getHost(), transport.getHost())
        self.assertEqual([e["client"] for e in self.lines()], ["192.0.2.7:50123"] * 3)


class _Broken(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        raise ValueError("cannot render")


class _Request(DummyRequest):
    def write(self, data: bytes) -> None:
        if data == b"unwritable":
            raise RuntimeError("the connection cannot take it")
        super().write(data)


class ResultStepTests(SynchronousTestCase):
    """`Routes.render`'s steps after the handler: a result is rendered and written; a
    failure, raised by the handler or by rendering its result, goes to the app's error
    handlers in order, whose answer is written; a failure to write is logged."""

    def setUp(self) -> None:
        app = Klein()
        self.handled: list[str] = []

        @app.route("/bytes")
        def as_bytes(request: Any) -> bytes:
            return b"body"

        @app.route("/text")
        def as_text(request: Any) -> str:
            return "tëxt"

        @app.route("/raises")
        def raises(request: Any) -> bytes:
            raise KeyError("missing")

        @app.route("/later")
        def later(request: Any) -> Deferred[bytes]:
            return fail(KeyError("missing later"))

        @app.route("/broken-resource")
        def broken(request: Any) -> Resource:
            return _Broken()

        @app.route("/unwritable")
        def unwritable(request: Any) -> bytes:
            return b"unwritable"

        self.pending: list[Deferred[bytes]] = []

        @app.route("/pending")
        def pending(request: Any) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            self.pending.append(d)
            return d

        @app.handle_errors(ValueError)
        def value_error(request: Any, failure: Failure) -> bytes:
            self.handled.append("value")
            request.setResponseCode(500)
            return b"value error"

        @app.handle_errors(KeyError)
        def key_error(request: Any, failure: Failure) -> bytes:
            self.handled.append("key")
            request.setResponseCode(404)
            return b"key error"

        self.routes = dispatch.Routes(app)

    def get(self, path: str) -> DummyRequest:
        request = _Request(path.encode().split(b"/")[1:])
        request.prepath = []
        self.routes.render(request)
        return request

    def test_results_are_written_and_finished(self) -> None:
        for path, body in (("/bytes", b"body"), ("/text", "tëxt".encode())):
            request = self.get(path)
            self.assertEqual((request.written, request.finished), ([body], 1))

    def test_failures_go_to_the_error_handlers(self) -> None:
        for path, code, body in (
            ("/raises", 404, b"key error"),
            ("/later", 404, b"key error"),
            ("/broken-resource", 500, b"value error"),
        ):
            request = self.get(path)
            self.assertEqual(
                (request.responseCode, request.written, request.finished), (code, [body], 1), path
            )
        self.assertEqual(self.handled, ["key", "key", "value"])

    def test_a_failed_write_is_logged(self) -> None:
        request = self.get("/unwritable")
        self.assertEqual((request.written, request.finished), ([], 0))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_failure_after_the_response_ended_is_logged_not_answered(self) -> None:
        for end in ("finished", "client left", "deadline"):
            request = self.get("/pending")
            if end == "finished":
                request.finish()
            elif end == "client left":
                request._disconnected = True
            else:
                request.timed_out = True  # GatewayRequest's deadline, before the response began
            self.pending.pop().errback(ValueError(end))
            self.assertEqual(request.written, [], end)
            self.assertEqual(self.handled, [], end)
            self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1, end)

    def test_a_handler_cancelled_after_the_response_ended_is_not_logged(self) -> None:
        request = self.get("/pending")
        request.finish()
        self.pending.pop().cancel()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_late_deadline_after_the_response_began_leaves_it_to_the_handlers(self) -> None:
        request = self.get("/pending")
        request.write(b"partial")  # the status line is out
        request.startedWriting = True
        request.timed_out = True  # the site aborts the connection
        self.pending.pop().errback(ValueError("late"))
        self.assertEqual(self.handled, ["value"])

"""Tests for the access check on every route (dicomrst.web.access, GatewayRoot), CORS
origins and the headers every response carries.

In memory: the app through `StubTreq`, and STOW-RS uploads over one HTTP connection to a
`GatewaySite` (`Connection`), where the body must be held until the check is decided.
"""

from __future__ import annotations

import json
import re
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from dicomrst.auth.authenticator import Authenticator
from dicomrst.auth.principal import ANONYMOUS, AccessPolicy
from dicomrst.web import app as app_module
from dicomrst.web.access import AccessGate, Need
from dicomrst.web.app import ROUTE_ACCESS, STOW_ENDPOINTS, GatewayApp, unchecked_routes
from dicomrst.web.responses import CorsPolicy
from dicomrst.web.site import make_site
from tests.support.access import BOUNDARY, ROOT, STOW_TYPE, UID, GuardedApp
from tests.support.auth import NOW, basic, bearer, claims
from tests.support.fakes import FakeBackend
from tests.support.http import Connection
from tests.support.stow import multipart_body, part10_bytes

#: Values for the path variables of every route.
PATH_VALUES = {
    "aet": "PACS",
    "study": UID,
    "series": UID + ".1",
    "sop": UID + ".1.1",
    "frame_list": "1",
    "frames": "1",
    "bulk": "7FE00010",
}


def concrete(rule: str) -> str:
    """A route's rule with a value in each of its variables."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: PATH_VALUES[m.group(1)], rule)


def every_route() -> list[tuple[str, str, str]]:
    """(endpoint, method, path) for every rule of the app's URL map."""
    out = []
    for rule in GatewayApp.app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((str(rule.endpoint), method, concrete(rule.rule)))
    return out


class RouteTableTests(SynchronousTestCase):
    def test_every_route_of_the_url_map_is_in_the_table(self) -> None:
        self.assertEqual(unchecked_routes(GatewayApp.app), set())
        endpoints = {str(rule.endpoint) for rule in GatewayApp.app.url_map.iter_rules()}
        self.assertEqual(set(ROUTE_ACCESS), endpoints)  # and no stale line
        for rule in GatewayApp.app.url_map.iter_rules():
            need = ROUTE_ACCESS[str(rule.endpoint)]
            if rule.rule.startswith("/aets/<aet>"):
                expected = Need.WRITE if rule.endpoint in STOW_ENDPOINTS else Need.READ
                self.assertEqual(need, expected, rule.rule)
            else:
                self.assertEqual(need, Need.ADMITTED, rule.rule)

    def test_a_route_missing_from_the_table_stops_the_app_from_building(self) -> None:
        table = dict(ROUTE_ACCESS)
        del table["retrieve_frames"]
        self.patch(app_module, "ROUTE_ACCESS", table)
        error = self.assertRaises(RuntimeError, GatewayApp({}, Clock()).resource)
        self.assertIn("retrieve_frames", str(error))

    def test_unchecked_routes_names_new_ones(self) -> None:
        extra = Klein()

        @extra.route("/aets/<aet>/brand-new")
        def brand_new(request: IRequest, aet: str) -> bytes:
            return b""

        self.assertEqual(unchecked_routes(extra), {"brand_new"})


class AuthenticationTests(GuardedApp):
    def test_every_route_asks_for_credentials(self) -> None:
        routes = every_route()
        self.assertGreater(len(routes), 30)
        for endpoint, method, path in routes:
            for auth in (None, basic("alice", "nope"), basic("mallory", "x"), b"Basic !!", b"Digest x"):
                response, body = self.fetch(path, method, auth)
                self.assertEqual(response.code, 401, (endpoint, path, auth, body))
                challenges = response.headers.getRawHeaders(b"WWW-Authenticate")
                self.assertEqual(challenges, [b'Basic realm="gw", charset="UTF-8"', b'Bearer realm="gw"'])
                self.assertEqual(response.headers.getRawHeaders(b"X-Content-Type-Options"), [b"nosniff"])
                self.assertIn("error", json.loads(body))
        self.assertFalse(self.touched())

    def test_head_asks_too(self) -> None:
        for path in ("/", "/aets", "/aets/PACS/studies", f"/aets/PACS/studies/{UID}/metadata"):
            response, body = self.fetch(path, "HEAD")
            self.assertEqual((response.code, body), (401, b""), path)
        response, _ = self.fetch("/aets/PACS/studies", "HEAD", basic("bob", "builder"))
        self.assertEqual(response.code, 403)
        self.assertFalse(self.touched())

    def test_unknown_paths_ask_too(self) -> None:
        response, _ = self.fetch("/no/such/thing")
        self.assertEqual(response.code, 401)
        response, _ = self.fetch("/no/such/thing", auth=basic("bob", "builder"))
        self.assertEqual(response.code, 404)

    def test_good_credentials_reach_the_route(self) -> None:
        response, body = self.fetch("/aets/PACS/studies", auth=basic("alice", "wonderland"))
        self.assertEqual((response.code, json.loads(body)), (200, []))
        response, body = self.fetch("/aets/PACS", auth=bearer(self.signer.token()))
        self.assertEqual(response.code, 200, body)

    def test_a_bad_token_says_why(self) -> None:
        response, body = self.fetch(
            "/aets/ARCHIVE/studies", auth=bearer(self.signer.token(claims(exp=NOW - 3600)))
        )
        self.assertEqual(response.code, 401)
        challenges = response.headers.getRawHeaders(b"WWW-Authenticate")
        self.assertEqual(
            challenges[0], b'Bearer realm="gw", error="invalid_token", error_description="token expired"'
        )
        self.assertEqual(json.loads(body), {"error": "invalid bearer token: token expired"})

    def test_preflight_needs_no_credentials(self) -> None:
        response, body = self.fetch(
            "/aets/PACS/studies",
            "OPTIONS",
            headers={
                b"Origin": [b"https://viewer.example"],
                b"Access-Control-Request-Method": [b"GET"],
                b"Access-Control-Request-Headers": [b"authorization"],
            },
        )
        self.assertEqual((response.code, body), (204, b""))
        self.assertEqual(response.headers.getRawHeaders(b"Access-Control-Allow-Headers"), [b"authorization"])
        self.assertIsNone(response.headers.getRawHeaders(b"WWW-Authenticate"))

    def test_a_refusal_is_logged_without_the_credentials(self) -> None:
        self.fetch("/aets/PACS/studies", auth=basic("alice", "hunter2"))
        lines = [e for e in self.logs if "reason" in e]
        self.assertEqual(len(lines), 1)
        self.assertNotIn("hunter2", json.dumps({k: str(v) for k, v in lines[0].items()}))


class AuthorizationTests(GuardedApp):
    def test_every_pacs_route_refuses_a_caller_not_on_its_list(self) -> None:
        for endpoint, method, path in every_route():
            response, body = self.fetch(path, method, basic("bob", "builder"))
            need = ROUTE_ACCESS[endpoint]
            if need is Need.ADMITTED:
                self.assertNotIn(response.code, (401, 403), endpoint)
                continue
            self.assertEqual(response.code, 403, (endpoint, body))
            self.assertEqual(json.loads(body), {"error": f"bob (basic) may not {need.value} PACS"})
        self.assertFalse(self.touched())

    def test_read_by_role_but_not_write(self) -> None:
        token = self.signer.token(claims(sub="carol"))
        response, _ = self.fetch("/aets/PACS/studies", auth=bearer(token))
        self.assertEqual(response.code, 200)
        response, body = self.fetch(
            "/aets/PACS/studies", "POST", bearer(token), data=b"x", headers={b"Content-Type": [STOW_TYPE]}
        )
        self.assertEqual(response.code, 403, body)
        self.assertEqual(
            response.headers.getRawHeaders(b"WWW-Authenticate"), [b'Bearer error="insufficient_scope"']
        )
        self.assertEqual(self.pacs.received, [])

    def test_an_aet_without_lists_is_open_to_every_authenticated_caller(self) -> None:
        response, _ = self.fetch("/aets/ARCHIVE/studies", auth=basic("bob", "builder"))
        self.assertEqual(response.code, 200)

    def test_aets_lists_only_what_the_caller_may_read(self) -> None:
        for auth, expected in (
            (basic("alice", "wonderland"), ["PACS", "ARCHIVE"]),
            (basic("bob", "builder"), ["ARCHIVE"]),
            (bearer(self.signer.token(claims(sub="dave"))), ["PACS", "ARCHIVE"]),  # radiology role
            (bearer(self.signer.token(claims(sub="eve", realm_access=None))), ["ARCHIVE"]),
        ):
            response, body = self.fetch("/aets", auth=auth)
            self.assertEqual((response.code, json.loads(body)), (200, expected), auth)


class AnonymousAllowedTests(GuardedApp):
    anonymous = True

    def test_anonymous_reads_open_aets_and_is_asked_to_log_in_for_listed_ones(self) -> None:
        response, _ = self.fetch("/aets/ARCHIVE/studies")
        self.assertEqual(response.code, 200)
        response, body = self.fetch("/aets/PACS/studies")
        self.assertEqual(response.code, 401, body)  # credentials could help: not a 403
        self.assertEqual(len(response.headers.getRawHeaders(b"WWW-Authenticate")), 2)
        response, body = self.fetch("/aets")
        self.assertEqual(json.loads(body), ["ARCHIVE"])

    def test_wrong_credentials_are_still_refused(self) -> None:
        response, _ = self.fetch("/aets/ARCHIVE/studies", auth=basic("alice", "nope"))
        self.assertEqual(response.code, 401)


class OpenGatewayTests(SynchronousTestCase):
    """Without server.auth nothing changes: every route answers as before."""

    def test_no_auth_configured(self) -> None:
        pacs = FakeBackend("PACS")
        stub = StubTreq(GatewayApp({"PACS": pacs}, Clock()).resource())
        d = stub.get(ROOT + "/aets", headers={b"Authorization": [b"Bearer whatever"]})
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(self.successResultOf(response.content())), ["PACS"])


class UnrestrictedTests(GuardedApp):
    anonymous = True

    def test_only_a_gate_with_nothing_to_check_skips_the_route_lookup(self) -> None:
        self.assertTrue(AccessGate.open().unrestricted)
        self.assertFalse(self.gate.unrestricted)  # methods and access lists configured
        lists_only = AccessGate(Authenticator(None, None, True), self.gate.policy)
        self.assertFalse(lists_only.unrestricted)
        methods_only = AccessGate(Authenticator(self.basic, None, True), AccessPolicy())
        self.assertFalse(methods_only.unrestricted)

    def test_only_a_gate_with_nothing_to_check_admits_without_waiting(self) -> None:
        request = object()
        self.assertIs(AccessGate.open().admitted_at_once(request), ANONYMOUS)  # type: ignore[arg-type]
        lists_only = AccessGate(Authenticator(None, None, True), self.gate.policy)
        methods_only = AccessGate(Authenticator(self.basic, None, True), AccessPolicy())
        for gate in (self.gate, lists_only, methods_only):
            self.assertIsNone(gate.admitted_at_once(request))  # type: ignore[arg-type]


class CorsListTests(GuardedApp):
    cors = CorsPolicy.allowing(["https://viewer.example"])

    def test_a_listed_origin_is_echoed_with_credentials(self) -> None:
        response, _ = self.fetch(
            "/aets", auth=basic("alice", "wonderland"), headers={b"Origin": [b"https://viewer.example"]}
        )
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"https://viewer.example"])
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Credentials"), [b"true"])
        self.assertEqual(headers.getRawHeaders(b"Vary"), [b"Origin"])

    def test_another_origin_gets_no_cors_headers(self) -> None:
        for origin in (b"https://evil.example", b"null", b"https://viewer.example.evil"):
            response, _ = self.fetch(
                "/aets", auth=basic("alice", "wonderland"), headers={b"Origin": [origin]}
            )
            self.assertIsNone(response.headers.getRawHeaders(b"Access-Control-Allow-Origin"), origin)
            self.assertIsNone(response.headers.getRawHeaders(b"Access-Control-Allow-Credentials"))
            self.assertEqual(response.headers.getRawHeaders(b"Vary"), [b"Origin"])

    def test_preflight_varies_on_origin_too(self) -> None:
        response, _ = self.fetch(
            "/aets",
            "OPTIONS",
            headers={b"Origin": [b"https://viewer.example"], b"Access-Control-Request-Method": [b"GET"]},
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"https://viewer.example"]
        )
        self.assertEqual(response.headers.getRawHeaders(b"Vary"), [b"Origin, Access-Control-Request-Headers"])

    def test_answers_of_the_site_itself_follow_the_list(self) -> None:
        site = make_site(self.app.resource(), self.clock, 60, max_upload_size=10, cors=self.cors)
        conn = Connection(site)
        conn.protocol.dataReceived(
            b"POST /aets/PACS/studies HTTP/1.1\r\nHost: gw\r\nOrigin: https://evil.example\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        head, _ = conn.head_and_body()
        self.assertIn(b" 413 ", head)
        self.assertNotIn(b"Access-Control-Allow-Origin", head)
        self.assertIn(b"X-Content-Type-Options: nosniff", head)


class CorsWildcardTests(GuardedApp):
    def test_wildcard_never_comes_with_credentials(self) -> None:
        response, _ = self.fetch(
            "/aets", auth=basic("alice", "wonderland"), headers={b"Origin": [b"https://viewer.example"]}
        )
        self.assertEqual(response.headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])
        self.assertIsNone(response.headers.getRawHeaders(b"Access-Control-Allow-Credentials"))
        [exposed] = response.headers.getRawHeaders(b"Access-Control-Expose-Headers")
        self.assertIn(b"WWW-Authenticate", exposed)


class HardeningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.stub = StubTreq(GatewayApp({"PACS": self.pacs}, self.clock).resource())

    def fetch(self, path: str, method: str = "GET") -> tuple[Any, bytes]:
        d = self.stub.request(method, ROOT + path)
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def test_nosniff_on_every_kind_of_response(self) -> None:
        self.pacs.echo_ms = 1.0
        for method, path, status in (
            ("GET", "/aets", 200),
            ("GET", "/aets/PACS", 200),
            ("GET", "/nowhere", 404),
            ("DELETE", "/aets", 405),
            ("GET", "/aets/PACS/studies?limit=x", 400),
            ("OPTIONS", "/aets", 204),
        ):
            response, _ = self.fetch(path, method)
            self.assertEqual(response.code, status, path)
            self.assertEqual(response.headers.getRawHeaders(b"X-Content-Type-Options"), [b"nosniff"], path)

    def test_no_stack_trace_in_a_500(self) -> None:
        def broken() -> Deferred[float]:
            raise RuntimeError("secret internals /srv/dicomrst/app.py line 42")

        self.pacs.echo = broken  # type: ignore[method-assign]
        response, body = self.fetch("/aets/PACS")
        self.assertEqual(response.code, 500)
        self.assertEqual(json.loads(body), {"error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class StowGateTests(GuardedApp):
    """A STOW-RS body is stored as it arrives: nothing of it may be taken before the check."""

    def checker(self) -> Any:
        return self.checks

    def setUp(self) -> None:
        super().setUp()
        self.site = make_site(self.app.resource(), self.clock, request_timeout=60)
        self.body = multipart_body(
            [([("Content-Type", "application/dicom")], part10_bytes(study=UID))], BOUNDARY
        )

    def post(self, auth: bytes | None, body: bytes | None = None, expect: bool = False) -> Connection:
        conn = Connection(self.site)
        body = self.body if body is None else body
        head = [
            b"POST /aets/PACS/studies HTTP/1.1",
            b"Host: gw",
            b"Content-Type: " + STOW_TYPE,
            b"Content-Length: %d" % len(body),
        ]
        if auth is not None:
            head.append(b"Authorization: " + auth)
        if expect:
            head.append(b"Expect: 100-continue")
        conn.protocol.dataReceived(b"\r\n".join(head) + b"\r\n\r\n")
        self.conn_body = body
        return conn

    def answer(self, conn: Connection) -> tuple[int, bytes, Any]:
        head, body = conn.head_and_body()
        return int(head.split(b" ", 2)[1]), head, json.loads(body)

    def test_no_credentials_is_401_before_the_body_with_no_100_continue(self) -> None:
        conn = self.post(None, expect=True)
        self.clock.advance(0)
        status, head, _ = self.answer(conn)
        self.assertEqual(status, 401)
        self.assertNotIn(b"100 Continue", conn.transport.value())
        self.assertIn(b"Connection: close", head)
        self.assertIn(b'WWW-Authenticate: Basic realm="gw"', head)
        self.assertTrue(conn.transport.disconnecting)
        conn.protocol.dataReceived(self.body)  # sent anyway: dropped
        self.assertEqual(self.pacs.received, [])

    def test_body_held_while_bcrypt_runs_then_refused(self) -> None:
        conn = self.post(basic("alice", "nope"))
        self.assertEqual(conn.transport.producerState, "paused")
        conn.protocol.dataReceived(self.body[:100])
        self.assertEqual(conn.transport.value(), b"")
        self.checks.run_all()
        self.clock.advance(0)
        status, _, body = self.answer(conn)
        self.assertEqual((status, body), (401, {"error": "invalid user name or password"}))
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(self.pacs.received, [])

    def test_body_held_while_bcrypt_runs_then_stored(self) -> None:
        conn = self.post(basic("alice", "wonderland"))
        self.assertEqual(conn.transport.producerState, "paused")
        conn.protocol.dataReceived(self.body[:100])  # read before the pause took hold
        self.checks.run_all()
        self.assertEqual(conn.transport.producerState, "producing")
        conn.protocol.dataReceived(self.body[100:])
        status, _, body = self.answer(conn)
        self.assertEqual(status, 200, body)
        self.assertEqual(len(self.pacs.received), 1)

    def test_a_whole_body_in_before_the_decision_waits_for_it(self) -> None:
        conn = self.post(basic("alice", "wonderland"))
        conn.protocol.dataReceived(self.body)
        self.assertEqual(conn.transport.value(), b"")
        self.assertEqual(self.pacs.received, [])
        self.checks.run_all()
        status, _, body = self.answer(conn)
        self.assertEqual(status, 200, body)
        self.assertEqual(len(self.pacs.received), 1)

    def test_a_known_user_not_on_the_write_list_is_403(self) -> None:
        conn = self.post(basic("bob", "builder"))
        self.checks.run_all()
        self.clock.advance(0)
        status, _, body = self.answer(conn)
        self.assertEqual((status, body), (403, {"error": "bob (basic) may not write PACS"}))
        self.assertEqual(self.pacs.received, [])

    def test_remembered_credentials_store_at_once(self) -> None:
        conn = self.post(basic("alice", "wonderland"))
        self.checks.run_all()
        conn.protocol.dataReceived(self.body)
        self.assertEqual(self.answer(conn)[0], 200)
        conn = self.post(basic("alice", "wonderland"))
        self.assertEqual(conn.transport.producerState, "producing")  # no gate
        conn.protocol.dataReceived(self.body)
        self.assertEqual(self.answer(conn)[0], 200)
        self.assertEqual(len(self.pacs.received), 2)

    def test_the_body_of_a_request_no_route_takes_is_not_kept(self) -> None:
        for method, path in (
            (b"POST", b"/aets/PACS/studies/" + UID.encode() + b"/series"),
            (b"PUT", b"/aets"),
        ):
            conn = Connection(self.site)
            conn.protocol.dataReceived(
                method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Length: 300000\r\n\r\n"
            )
            request = conn.protocol.requests[-1]
            conn.protocol.dataReceived(b"x" * 299999)
            # Not buffered (Twisted would spool it to a temporary file, being over 100 KB).
            self.assertEqual(request.content.getvalue(), b"")
            conn.protocol.dataReceived(b"x")
            self.assertEqual(self.answer(conn)[0], 401)

    def test_a_check_still_running_at_the_deadline(self) -> None:
        conn = Connection(self.site)
        conn.protocol.dataReceived(
            b"GET /aets/PACS/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: "
            + basic("alice", "wonderland")
            + b"\r\n\r\n"
        )
        self.clock.advance(60)
        status, _, _ = self.answer(conn)
        self.assertEqual(status, 504)
        self.checks.run_all()  # the late decision writes nothing more
        self.assertEqual(self.pacs.finds, [])

"""Operating the gateway (issue 14 items 6-8): JSON log lines, request IDs from the HTTP
request down to the backend's lines and back in the response, URLs behind a reverse
proxy, the pool's DEBUG decisions, SIGHUP's reload."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from dicomrst.auth.basic import UsersFile
from dicomrst.config import ConfigError, parse_config
from dicomrst.daemon import HangupService, log_output
from dicomrst.dimse.echo import c_echo
from dicomrst.dimse.pool import Lease
from dicomrst.errors import BadRequest
from dicomrst.logs import (
    OutputLog,
    escape,
    json_line,
    logger,
    request_scope,
    set_format,
    set_level,
)
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import make_site
from dicomrst.web.urls import PublicUrls, forwarded_pairs
from tests.support.fakes import FakeBackend
from tests.support.http import CLIENT, Connection
from tests.support.pool import CALLED, QIDO, WAIT, PoolTestCase

STUDY = "1.2.826.0.1.3680043.8.498.1"
HOSTILE = "a\r\nFORGED\x1b[31m\u202e\u2028\\x"


def study() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = STUDY
    return ds


class _Stream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def _json_mode(case: SynchronousTestCase) -> None:
    set_format("json")
    case.addCleanup(set_format, "text")


class JsonLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def emitted(self) -> list[dict[str, Any]]:
        return [e for e in self.logs if str(e.get("log_namespace", "")).startswith("dicomrst.test")]

    def test_each_line_is_one_json_object_with_the_stable_keys(self) -> None:
        _json_mode(self)
        log = logger("dicomrst.test")
        log.info("{method} {path} {status}", method="GET", path="/aets/PACS", status=200)
        log.warn("{aet} said {what}", aet="PACS", what=HOSTILE)
        lines = [json_line(e) for e in self.emitted()]
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertTrue(line.endswith("\n"))
            self.assertEqual(line.count("\n"), 1, line)  # nothing inside breaks the line
            self.assertTrue(line.isascii() and line[:-1].isprintable(), line)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(list(first)[:4], ["time", "level", "namespace", "message"])
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(
            (first["level"], first["namespace"], first["message"]),
            ("INFO", "dicomrst.test", "GET /aets/PACS 200"),
        )
        self.assertEqual((first["method"], first["status"]), ("GET", 200))
        # JSON escaping, not the text format's: a reader gets the text as it arrived.
        self.assertEqual(second["level"], "WARN")
        self.assertEqual(second["what"], HOSTILE)
        self.assertEqual(second["message"], f"PACS said {HOSTILE}")

    def test_text_format_still_escapes(self) -> None:
        logger("dicomrst.test").info("{what}", what=HOSTILE)
        [event] = self.emitted()
        self.assertEqual(formatEvent(event), escape(HOSTILE))

    def test_objects_and_failures(self) -> None:
        _json_mode(self)
        log = logger("dicomrst.test")
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.failure("failed on {peer}", Failure(), peer=IPv4Address("TCP", "10.0.0.1", 104))
        [event] = self.emitted()
        line = json.loads(json_line(event))
        self.assertEqual(line["level"], "CRITICAL")
        self.assertIn("10.0.0.1", line["peer"])
        self.assertIn("ValueError: bad\nthing", line["traceback"])
        self.flushLoggedErrors(ValueError)

    def test_output_filters_third_party_lines_and_demotes_factory_noise(self) -> None:
        stream = _Stream()
        output = OutputLog(stream, json_format=True)  # type: ignore[arg-type]  # a stream's write and flush
        noise = {"log_format": "Starting factory {factory!r}", "factory": "<_HTTP11ClientFactory>",
                 "log_level": LogLevel.info, "log_namespace": "twisted.web.client._HTTP11ClientFactory",
                 "log_time": 0.0}
        other = dict(noise, log_format="Main loop terminated.", log_namespace="twisted.internet.base")
        output(noise)
        output(other)
        [line] = stream.text.splitlines()
        self.assertEqual(json.loads(line)["message"], "Main loop terminated.")
        set_level("DEBUG")
        self.addCleanup(set_level, "INFO")
        output(noise)
        self.assertEqual(json.loads(stream.text.splitlines()[-1])["level"], "DEBUG")

    def test_text_output_is_twisteds_format(self) -> None:
        stream = _Stream()
        OutputLog(stream, json_format=False)(  # type: ignore[arg-type]  # a stream's write and flush
            {"log_format": "hello {who}", "who": "you", "log_level": LogLevel.info,
             "log_namespace": "dicomrst", "log_time": 0.0}
        )
        self.assertTrue(stream.text.endswith(" [dicomrst#info] hello you\n"), stream.text)


class _LoggingBackend(FakeBackend):
    """A backend that logs when a search starts and when the PACS "answers", the answer
    arriving later in a callback fired from outside the request (as network data does)."""

    def __init__(self) -> None:
        super().__init__("PACS")
        self.answer: Deferred[None] = Deferred()
        self.log = logger("dicomrst.test.backend")

    def find(self, identifier: Dataset, *, limit: int | None, on_result: Callable[[Dataset], None],
             **kwargs: Any) -> Deferred[None]:
        async def run() -> None:
            self.log.info("C-FIND to {aet} sent", aet=self.aet)
            await self.answer
            self.log.info("C-FIND to {aet} answered", aet=self.aet)
            on_result(study())

        return Deferred.fromCoroutine(run())


class RequestIdTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.clock = Clock()
        self.backend = _LoggingBackend()
        self.site = make_site(GatewayApp({"PACS": self.backend}, self.clock).resource(), self.clock, 60)
        self.seen = 0  # events before this one belong to earlier requests

    def search(self, *headers: str) -> tuple[Connection, bytes]:
        conn = Connection(self.site)
        head = "GET /aets/PACS/studies HTTP/1.1\r\nHost: gateway.example\r\n" + "".join(
            h + "\r\n" for h in headers
        )
        conn.protocol.dataReceived((head + "\r\n").encode("latin-1"))
        # The PACS answers from the reactor, outside the request's context.
        with request_scope(None):
            self.backend.answer.callback(None)
        response_head, _ = conn.head_and_body()
        return conn, response_head

    def ids(self) -> list[tuple[str, str | None]]:
        return [
            (formatEvent(e), e.get("request_id"))
            for e in list(self.logs)[self.seen:]
            if str(e.get("log_namespace", "")).startswith("dicomrst")
        ]

    def test_the_clients_id_is_on_every_line_and_in_the_response(self) -> None:
        _, head = self.search("X-Request-ID: trace-42.a:b")
        self.assertIn(b"\r\nX-Request-Id: trace-42.a:b\r\n", head + b"\r\n")
        lines = self.ids()
        self.assertEqual(len(lines), 3, lines)  # sent, answered, the HTTP line
        for text, request_id in lines:
            self.assertEqual(request_id, "trace-42.a:b", text)
            self.assertTrue(text.endswith(" request_id=trace-42.a:b"), text)
        self.assertTrue(lines[2][0].startswith("GET /aets/PACS/studies 200 "), lines)

    def test_an_insane_id_is_replaced(self) -> None:
        for bad in ("x" * 129, "a b", "é", "a\x01"):
            self.seen = len(list(self.logs))
            self.backend.answer = Deferred()
            _, head = self.search(f"X-Request-ID: {bad}")
            [given] = re.findall(rb"\r\nX-Request-Id: ([^\r]*)\r\n", head + b"\r\n")
            self.assertRegex(given.decode(), "^[0-9a-f]{32}$")
            self.assertEqual({rid for _, rid in self.ids()}, {given.decode()})

    def test_without_an_id_one_is_generated_per_request(self) -> None:
        seen = set()
        for _ in range(2):
            self.seen = len(list(self.logs))
            self.backend.answer = Deferred()
            _, head = self.search()
            [given] = re.findall(rb"\r\nX-Request-Id: ([^\r]*)\r\n", head + b"\r\n")
            self.assertEqual({rid for _, rid in self.ids()}, {given.decode()})
            seen.add(given)
        self.assertEqual(len(seen), 2)

    def test_json_lines_carry_the_id(self) -> None:
        _json_mode(self)
        self.search("X-Request-ID: abc")
        events = [e for e in self.logs if str(e.get("log_namespace", "")).startswith("dicomrst")]
        self.assertTrue(events)
        for event in events:
            self.assertEqual(json.loads(json_line(event))["request_id"], "abc")


def _request(
    headers: dict[str, str],
    peer: str = "10.0.0.5",
    secure: bool = False,
    host: str | None = "gateway.internal:8080",
) -> DummyRequest:
    request = DummyRequest([b""])
    client: IPv4Address | IPv6Address = (
        IPv6Address("TCP", peer, 40000) if ":" in peer else IPv4Address("TCP", peer, 40000)
    )
    request.client = client
    request.isSecure = lambda: secure  # type: ignore[method-assign]
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host.encode()])
    for name, value in headers.items():
        request.requestHeaders.addRawHeader(name.encode(), value.encode("latin-1"))
    return request


TRUSTING = PublicUrls.from_config(None, ["10.0.0.0/8", "::1"])


class PublicUrlTests(SynchronousTestCase):
    def base(self, urls: PublicUrls, headers: dict[str, str], base_path: str = "/dicomweb", **kw: Any) -> str:
        return urls.base_url(_request(headers, **kw), base_path)

    def test_without_a_proxy_the_request_decides(self) -> None:
        self.assertEqual(self.base(PublicUrls(), {}), "http://gateway.internal:8080/dicomweb")
        self.assertEqual(self.base(PublicUrls(), {}, secure=True), "https://gateway.internal:8080/dicomweb")

    def test_forwarding_headers_of_an_untrusted_peer_are_ignored(self) -> None:
        headers = {"Forwarded": "proto=https;host=evil.example", "X-Forwarded-Proto": "https",
                   "X-Forwarded-Host": "evil.example", "X-Forwarded-Prefix": "/x"}
        self.assertEqual(self.base(PublicUrls(), headers), "http://gateway.internal:8080/dicomweb")
        self.assertEqual(self.base(TRUSTING, headers, peer="192.0.2.1"), "http://gateway.internal:8080/dicomweb")

    def test_forwarded(self) -> None:
        self.assertEqual(
            self.base(TRUSTING, {"Forwarded": 'for=192.0.2.60;proto=https;host="pacs.example.org"'}),
            "https://pacs.example.org/dicomweb",
        )
        # A chain: the last element is the one the proxy next to us wrote.
        self.assertEqual(
            self.base(TRUSTING, {"Forwarded": "proto=http;host=inner, for=1.2.3.4;proto=https;host=o:84"}),
            "https://o:84/dicomweb",
        )
        self.assertEqual(self.base(TRUSTING, {"Forwarded": "proto=https"}), "https://gateway.internal:8080/dicomweb")

    def test_x_forwarded_headers_each(self) -> None:
        self.assertEqual(self.base(TRUSTING, {"X-Forwarded-Proto": "https"}), "https://gateway.internal:8080/dicomweb")
        self.assertEqual(
            self.base(TRUSTING, {"X-Forwarded-Host": "pacs.example.org"}), "http://pacs.example.org/dicomweb"
        )
        self.assertEqual(
            self.base(TRUSTING, {"X-Forwarded-Host": "a.example, pacs.example.org:9443",
                                 "X-Forwarded-Proto": "http, https"}),
            "https://pacs.example.org:9443/dicomweb",
        )
        self.assertEqual(
            self.base(TRUSTING, {"X-Forwarded-Prefix": "/gateway/"}), "http://gateway.internal:8080/gateway/dicomweb"
        )
        self.assertEqual(
            self.base(TRUSTING, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org",
                                 "X-Forwarded-Port": "8443"}),
            "https://pacs.example.org:8443/dicomweb",
        )
        self.assertEqual(
            self.base(TRUSTING, {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}),
            "https://gateway.internal/dicomweb",
        )

    def test_forwarded_wins_over_x_forwarded(self) -> None:
        self.assertEqual(
            self.base(TRUSTING, {"Forwarded": "proto=https;host=a.example", "X-Forwarded-Host": "b.example",
                                 "X-Forwarded-Proto": "http"}),
            "https://a.example/dicomweb",
        )

    def test_ipv6_and_mapped_peers(self) -> None:
        self.assertEqual(self.base(TRUSTING, {"X-Forwarded-Proto": "https"}, peer="::1"),
                         "https://gateway.internal:8080/dicomweb")
        self.assertEqual(self.base(TRUSTING, {"X-Forwarded-Proto": "https"}, peer="::ffff:10.1.2.3"),
                         "https://gateway.internal:8080/dicomweb")

    def test_bad_forwarded_values_are_400(self) -> None:
        for headers in ({"X-Forwarded-Proto": "gopher"}, {"X-Forwarded-Host": "a b"},
                        {"X-Forwarded-Host": "a/b"}, {"X-Forwarded-Prefix": "/a?b"},
                        {"X-Forwarded-Prefix": "nope"}, {"X-Forwarded-Port": "99999"},
                        {"Forwarded": 'host="evil\r\nx"'}):
            self.assertRaises(BadRequest, self.base, TRUSTING, headers)

    def test_public_url_wins(self) -> None:
        urls = PublicUrls.from_config("https://pacs.example.org/dicom-web", ["10.0.0.0/8"])
        self.assertEqual(self.base(urls, {"X-Forwarded-Host": "other"}), "https://pacs.example.org/dicom-web")
        self.assertEqual(self.base(urls, {}, host=None), "https://pacs.example.org/dicom-web")

    def test_forwarded_parsing(self) -> None:
        self.assertEqual(forwarded_pairs([b'For="[2001:db8::1]:4711";Proto=HTTPS']),
                         {"for": "[2001:db8::1]:4711", "proto": "HTTPS"})
        self.assertEqual(forwarded_pairs([b'host="a,b";proto=http']), {"host": "a,b", "proto": "http"})
        self.assertEqual(forwarded_pairs([b"garbage"]), {})
        self.assertEqual(forwarded_pairs(None), {})


class UrlsThroughTheSiteTests(SynchronousTestCase):
    """RetrieveURL of a search answered to a trusted proxy's request."""

    def fetch(self, urls: PublicUrls, client: IPv4Address, headers: str) -> bytes:
        clock = Clock()
        backend = FakeBackend("PACS")
        backend.results = [study()]
        app = GatewayApp({"PACS": backend}, clock, base_path="/dicomweb", urls=urls)
        site = make_site(app.resource(), clock, 60)
        conn = Connection(site, client)
        conn.protocol.dataReceived(
            b"GET /dicomweb/aets/PACS/studies HTTP/1.1\r\nHost: gateway.internal:8080\r\n"
            + headers.encode() + b"\r\n"
        )
        return conn.transport.value()

    def test_trusted_proxy(self) -> None:
        urls = PublicUrls.from_config(None, [CLIENT.host])
        body = self.fetch(urls, CLIENT, "X-Forwarded-Proto: https\r\nX-Forwarded-Host: pacs.example.org\r\n"
                                        "X-Forwarded-Prefix: /gw\r\n")
        self.assertIn(f"https://pacs.example.org/gw/dicomweb/aets/PACS/studies/{STUDY}".encode(), body)

    def test_untrusted_client(self) -> None:
        urls = PublicUrls.from_config(None, ["10.0.0.0/8"])
        body = self.fetch(urls, CLIENT, "X-Forwarded-Proto: https\r\nX-Forwarded-Host: pacs.example.org\r\n")
        self.assertIn(f"http://gateway.internal:8080/dicomweb/aets/PACS/studies/{STUDY}".encode(), body)

    def test_public_url(self) -> None:
        urls = PublicUrls.from_config("https://pacs.example.org/web", [])
        body = self.fetch(urls, CLIENT, "")
        self.assertIn(f"https://pacs.example.org/web/aets/PACS/studies/{STUDY}".encode(), body)


class HangupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_reopens_the_log_file_and_rereads_the_users_file(self) -> None:
        path = os.path.join(self.dir, "gw.log")
        output = OutputLog(LogFile.fromFullPath(path), json_format=False)
        self.addCleanup(output.stream.close)
        users_path = os.path.join(self.dir, "users")
        with open(users_path, "w") as f:
            f.write("alice:$2b$04$abcdefghijklmnopqrstuu5r3pIbz8fZ6nLWnhv0Ht7jtGQhM7Cy.\n")
        users = UsersFile(users_path, Clock())
        service = HangupService(Clock(), output, [users.reload])  # type: ignore[arg-type]  # not called here
        os.rename(path, path + ".1")  # logrotate
        with open(users_path, "a") as f:
            f.write("bob:$2b$04$abcdefghijklmnopqrstuu5r3pIbz8fZ6nLWnhv0Ht7jtGQhM7Cy.\n")
        seen = len(list(self.logs))
        service.hangup()
        [line] = [formatEvent(e) for e in list(self.logs)[seen:]]
        self.assertEqual(
            line, f"SIGHUP: reopened log file {path}; re-read users file {users_path}: 2 user(s)"
        )
        self.assertTrue(os.path.exists(path))
        self.assertIsNotNone(users.lookup("bob"))

    def test_output_follows_twistds_options(self) -> None:
        self.assertIsNone(log_output(None, False))
        self.assertIsNone(log_output({"logfile": None, "syslog": True, "nodaemon": True}, False))
        self.assertIsNone(log_output({"logfile": "-", "nodaemon": False}, False))
        stdout = log_output({"logfile": None, "nodaemon": True, "syslog": False, "logger": None}, True)
        assert stdout is not None
        self.assertIsNone(stdout.path)
        self.assertTrue(stdout.json_format)
        path = os.path.join(self.dir, "x.log")
        to_file = log_output({"logfile": path, "nodaemon": False}, False)
        assert to_file is not None
        self.addCleanup(to_file.stream.close)
        self.assertEqual(to_file.path, os.path.abspath(path))


class PoolDebugTests(PoolTestCase):
    """DEBUG: each DIMSE message and pool decision; INFO: the association taken."""

    def setUp(self) -> None:
        super().setUp()
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        set_level("DEBUG")
        self.addCleanup(set_level, "INFO")

    def lines(self) -> list[tuple[str, str | None]]:
        return [
            (formatEvent(e), e.get("request_id"))
            for e in self.logs
            # The in-memory PACS's own DIMSE lines (its peer is us) are not the gateway's.
            if e.get("log_namespace") in ("dicomrst.pool", "dicomrst.dimse")
            and e.get("peer_aet") != "GATEWAY"
        ]

    def test_messages_and_decisions_name_the_request(self) -> None:
        pool = self.make_pool(size=1)

        async def op(lease: Lease) -> None:
            await c_echo(lease.connection, aet=CALLED, timeout=QIDO)

        for request_id in ("first", "second"):
            with request_scope(request_id):
                d = Deferred.fromCoroutine(pool.run(op))
            if request_id == "first":
                self.connect()
            # The response arrives from the link (the network), outside the request.
            self.flush()
            self.successResultOf(d)
        texts = [text for text, _ in self.lines()]
        expected = [
            "pool PACS: open: a new association",
            "association to PACS taken (new)",
            "DIMSE sent C-ECHO-RQ message_id=1 status=- peer_aet=PACS",
            "DIMSE received C-ECHO-RSP message_id=1 status=0x0000 peer_aet=PACS",
            "pool PACS: release: association kept idle",
            "pool PACS: reuse: an idle association",
            "association to PACS taken (reused)",
            "DIMSE sent C-ECHO-RQ message_id=2 status=- peer_aet=PACS",
            "DIMSE received C-ECHO-RSP message_id=2 status=0x0000 peer_aet=PACS",
            "pool PACS: release: association kept idle",
        ]
        self.assertEqual(len(texts), len(expected), texts)
        for text, start in zip(texts, expected, strict=True):
            self.assertTrue(text.startswith(start), (text, start))
        ids = [request_id for _, request_id in self.lines()]
        self.assertEqual(ids, ["first"] * 5 + ["second"] * 5)

    def test_a_full_pool_waits(self) -> None:
        pool = self.make_pool(size=1)
        held = Deferred.fromCoroutine(pool.acquire())
        self.connect()
        self.successResultOf(held)
        Deferred.fromCoroutine(pool.acquire()).addErrback(lambda _: None)
        [wait] = [text for text, _ in self.lines() if ": wait:" in text]
        self.assertIn("busy=1 idle=0", wait)
        self.clock.advance(WAIT + 1)


class ConfigKeyTests(SynchronousTestCase):
    def parse(self, server_http: dict[str, Any], telemetry: dict[str, Any] | None = None) -> Any:
        data = {"telemetry": telemetry or {}, "server": {"http": server_http}, "aets": []}
        return parse_config(data, environ={})

    def test_defaults(self) -> None:
        config = self.parse({})
        self.assertEqual(
            (config.server.http.public_url, config.server.http.trusted_proxies, config.telemetry.format),
            (None, (), "text"),
        )

    def test_values(self) -> None:
        config = self.parse(
            {"public-url": "https://pacs.example.org/dicomweb/", "trusted-proxies": ["10.0.0.1", "fd00::/8"]},
            {"format": "JSON"},
        )
        self.assertEqual(config.server.http.public_url, "https://pacs.example.org/dicomweb")
        self.assertEqual(config.server.http.trusted_proxies, ("10.0.0.1/32", "fd00::/8"))
        self.assertEqual(config.telemetry.format, "json")

    def test_errors_name_the_key(self) -> None:
        for http, telemetry, key in (
            ({"public-url": "pacs.example.org"}, None, "server.http.public-url"),
            ({"public-url": "https://h/x?a=b"}, None, "server.http.public-url"),
            ({"trusted-proxies": ["10.0.0.0/33"]}, None, "server.http.trusted-proxies[0]"),
            ({"trusted-proxies": ["proxy.local"]}, None, "server.http.trusted-proxies[0]"),
            ({}, {"format": "xml"}, "telemetry.format"),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.parse(http, telemetry)
            self.assertTrue(str(caught.exception).startswith(key + ":"), str(caught.exception))

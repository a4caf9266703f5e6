"""Tests for dicomrst.logs: the level filter, the escaping of every logged field, the
text lines of the log file.

Bytes from the network (paths, AE titles, part headers) reach log lines through many
modules; `dicomrst.logs` escapes every field of every event its loggers emit, so none can
break a line or forge one.  Checked on a logger directly and through the STOW-RS route,
whose part-rejection line quotes a part's Content-Type header as the client sent it.
"""

from __future__ import annotations

import json
import re

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import (
    InvalidLogLevelError,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.logs import (
    classic_text,
    current_level,
    debug_enabled,
    escape,
    info_enabled,
    json_line,
    logger,
    request_scope,
    set_level,
)
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import make_site
from tests.support.fakes import FakeBackend
from tests.support.http import CLIENT
from tests.support.stow import multipart_body, part10_bytes

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE_PATH = "/aets/PACS\r\n2026-01-01T00:00:00+0000 [dicomrst.web#info] GET / 200\x1b[2J\x1b]0;owned\x07"
HOSTILE_HEADER = "text/plain\nFORGED LINE\x1b[31m red\x85"  # Latin-1, as header bytes are


def dicomrst_lines(observer: EventLoggingObserver) -> list[str]:
    return [formatEvent(e) for e in observer if str(e.get("log_namespace", "")).startswith("dicomrst")]


class EscapeTests(SynchronousTestCase):
    def test_printable_text_is_kept(self) -> None:
        for text in ("GET /aets/PACS/studies 200", "Müller^Jürgen", "王^小東", ""):
            self.assertEqual(escape(text), text)

    def test_controls_and_backslashes_are_escaped(self) -> None:
        self.assertEqual(escape("a\r\nb\tc\x1b[2J\x00\x7f\x85"), "a\\r\\nb\\tc\\x1b[2J\\x00\\x7f\\x85")
        self.assertEqual(escape("\u2028\u202e\U000e0001"), "\\u2028\\u202e\\U000e0001")
        self.assertEqual(escape("C:\\x1b"), "C:\\\\x1b")  # a literal backslash cannot pose as an escape
        self.assertEqual(escape("\udcff"), "\\udcff")  # a lone surrogate (surrogateescape'd byte)


class LoggedFieldTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_string_fields_are_escaped(self) -> None:
        logger("dicomrst.test").info(
            "{path} {header} {n} {ms:.1f}", path=HOSTILE_PATH, header=HOSTILE_HEADER, n=3, ms=1.25
        )
        [line] = dicomrst_lines(self.logs)
        self.assertIsNone(UNSAFE.search(line), line)
        self.assertIn("/aets/PACS\\r\\n2026-01-01", line)
        self.assertIn("\\x1b[2J", line)
        self.assertTrue(line.endswith(" 3 1.2"), line)  # numbers keep their formatting

    def test_objects_are_escaped_as_they_format(self) -> None:
        error = ValueError(f"bad AE title {HOSTILE_HEADER}")
        logger("dicomrst.test").warn("{error} / {error!r} / {error.args[0]}", error=error)
        [line] = dicomrst_lines(self.logs)
        self.assertIsNone(UNSAFE.search(line), line)
        self.assertIn("bad AE title text/plain\\nFORGED LINE", line)
        self.assertIn("ValueError(", line)

    def test_events_keep_their_structure(self) -> None:
        logger("dicomrst.test").info("{status} {outcome}", status=200, outcome="complete")
        [event] = [e for e in self.logs if e.get("log_namespace") == "dicomrst.test"]
        self.assertEqual((event["status"], event["outcome"]), (200, "complete"))


class ThroughTheGatewayTests(SynchronousTestCase):
    def test_a_part_header_cannot_break_the_log_line(self) -> None:
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        site = make_site(
            GatewayApp({"PACS": FakeBackend("PACS")}, clock).resource(), clock, request_timeout=60
        )
        body = multipart_body([([("Content-Type", HOSTILE_HEADER)], part10_bytes())], boundary=b"b0undary")
        transport = StringTransport(peerAddress=CLIENT)
        protocol = site.buildProtocol(CLIENT)
        assert protocol is not None
        protocol.makeConnection(transport)
        head = (
            b"POST /aets/PACS/studies HTTP/1.1\r\nHost: gateway.example\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary=b0undary\r\n'
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        protocol.dataReceived(head + body)
        self.assertIn(b"HTTP/1.1 409 ", transport.value())
        lines = dicomrst_lines(logs)
        rejected = [line for line in lines if "rejected" in line]
        self.assertEqual(len(rejected), 1, lines)
        self.assertIn("text/plain\\nFORGED LINE\\x1b[31m red\\x85", rejected[0])
        for line in lines:
            self.assertIsNone(UNSAFE.search(line), line)


class LevelTests(SynchronousTestCase):
    """``telemetry.level`` is checked as an event is emitted."""

    def setUp(self) -> None:
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(set_level, current_level().name.upper())

    def test_levels_below_the_configured_one_are_not_emitted(self) -> None:
        set_level("WARN")
        log = logger("dicomrst.test")
        log.debug("debug {n}", n=1)
        log.info("info {n}", n=2)
        log.warn("warn {n}", n=3)
        log.error("error {n}", n=4)
        self.assertEqual(dicomrst_lines(self.logs), ["warn 3", "error 4"])
        self.assertFalse(info_enabled())

    def test_debug_shows_everything(self) -> None:
        set_level("TRACE")
        log = logger("dicomrst.test")
        log.debug("debug {n}", n=1)
        log.info("info {n}", n=2)
        self.assertEqual(dicomrst_lines(self.logs), ["debug 1", "info 2"])
        self.assertTrue(debug_enabled())

    def test_an_event_is_built_as_twisted_builds_it(self) -> None:
        set_level("INFO")
        log = logger("dicomrst.test")
        with request_scope("r1"):
            log.info("hello {who}", who="you")
        [event] = [e for e in self.logs if e.get("log_namespace") == "dicomrst.test"]
        self.assertIs(event["log_level"], LogLevel.info)
        self.assertIs(event["log_logger"], log)
        self.assertEqual(event["log_format"], "hello {who} request_id={request_id}")
        self.assertEqual(event["request_id"], "r1")
        self.assertIsInstance(event["log_time"], float)

    def test_an_invalid_level_is_reported_as_twisted_does(self) -> None:
        logger("dicomrst.test").emit("loud", "x")  # type: ignore[arg-type]  # the mistake tested
        [event] = [e for e in self.logs if e.get("log_namespace") == "dicomrst.test"]
        self.assertIs(event["log_level"], LogLevel.critical)
        self.assertIn("invalid log level", formatEvent(event))
        self.assertEqual(len(self.flushLoggedErrors(InvalidLogLevelError)), 1)


class ClassicTextTests(SynchronousTestCase):
    """`classic_text` writes what Twisted's `formatEventAsClassicLogText` writes, and a
    JSON line's message is what Twisted's `formatEvent` makes."""

    def events(self) -> list[dict[str, object]]:
        now = 1_733_390_000.25
        base = dict(log_time=now, log_namespace="dicomrst.web", log_level=LogLevel.info)

        class Thing:
            size = 3

            def name(self) -> str:
                return "thing"

            def __repr__(self) -> str:
                return "<Thing>"

        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        return [
            dict(base, log_format="GET {path} {status} {ms:.1f}ms", path="/a", status=200, ms=0.712),
            dict(base, log_format="taken ({how}) busy={busy}/{size}", how="reused", busy=1, size=4),
            dict(base, log_format="{t!r} {t.size} {t.name()} {f()}", t=Thing(), f=lambda: "called"),
            dict(base, log_format="{items[0]} {m[k]}", items=["first"], m={"k": "v"}),
            dict(base, log_format="two\nlines {x}", x="and\nthree"),
            dict(base, log_format="{missing}"),
            dict(base, log_format="{0}"),
            dict(base, log_format=b"bytes {x}", x=1),
            dict(base, log_format=""),
            dict(base, log_format=None),
            dict(base, log_format="failed {x}", x=1, log_failure=failure),
            dict(base, log_format="{x}", x=1, log_system="a system"),
            dict(log_format="no time, level or namespace {x}", x=1),
            dict(base, log_format="at {x}", x=1, log_time=1_733_390_000),
            dict(base, log_format="before 1970 {x}", x=1, log_time=-1.5),
            dict(base, log_format="{x}", x="\u2028 \x1b"),
        ]

    def test_as_twisted(self) -> None:
        for event in self.events():
            self.assertEqual(classic_text(dict(event)), formatEventAsClassicLogText(dict(event)), event)

    def test_time_stamps_follow_the_seconds(self) -> None:
        for when in (1_733_390_000.0, 1_733_390_000.999, 1_733_390_001.0, 1_733_389_999.5, 1_733_390_000.5):
            event = dict(log_time=when, log_format="x", log_namespace="n", log_level=LogLevel.info)
            self.assertEqual(classic_text(event), formatEventAsClassicLogText(event), when)

    def test_json_messages_as_twisted(self) -> None:
        for event in self.events():
            message = json.loads(json_line(dict(event)))["message"]
            self.assertEqual(message, formatEvent(dict(event)), event)

"""Tests for dicomrst.logs: the level filter and the escaping of every logged field.

Bytes from the network (paths, AE titles, part headers) reach log lines through many
modules; `dicomrst.logs` escapes every field of every event its loggers emit, so none can
break a line or forge one.  Checked on a logger directly and through the STOW-RS route,
whose part-rejection line quotes a part's Content-Type header as the client sent it.
"""

from __future__ import annotations

import re

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.logs import escape, logger
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

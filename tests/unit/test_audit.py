"""The audit trail (``dicomrst.audit``): the RFC 5424 message and its DICOM audit XML or
JSON body, octet counting, the bounded queue and its drop count, the collector connection
(backpressure, reconnect) and the file (reopen, a failed write kept), the C-STORE wrapper,
``telemetry.audit`` and the client address behind a trusted proxy."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from xml.etree import ElementTree as ET

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from dicomrst.audit.dimse import audited_receive
from dicomrst.audit.formats import JSON, XML, Source, encode, header_field, octet_counted
from dicomrst.audit.record import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
    AuditRecord,
    Service,
    dimse_outcome,
    http_outcome,
)
from dicomrst.audit.service import AuditService
from dicomrst.audit.trail import AuditQueue, AuditTrail
from dicomrst.audit.writers import FILE_RETRY, FileWriter, StreamWriter
from dicomrst.config import ConfigError, config_warnings, parse_config
from dicomrst.tap import build
from dicomrst.web.urls import PublicUrls
from tests.support.audit import SOURCE, MemoryWriter, split

T0 = 1_764_900_000.25  # 2025-12-05T02:00:00.250000Z
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SOP = "1.2.826.0.1.3680043.8.498.3"
CT = "1.2.840.10008.5.1.4.1.1.2"


def record(**changes: Any) -> AuditRecord:
    fields: dict[str, Any] = dict(
        time=T0,
        service=Service.WADO,
        aet="ARCHIVE",
        outcome=SUCCESS,
        status=200,
        reason="complete",
        user="alice",
        auth="basic",
        client="192.0.2.7",
        studies=(STUDY,),
        series=(SERIES,),
        instances=(SOP,),
        sop_classes=("",),
        request_id="r-1",
        path=f"/aets/ARCHIVE/studies/{STUDY}/series/{SERIES}/instances/{SOP}",
    )
    fields.update(changes)
    return AuditRecord(**fields)


def parse_xml(message: bytes) -> ET.Element:
    return ET.fromstring(split(message)[1])


def code(element: ET.Element | None) -> tuple[str | None, str | None]:
    assert element is not None
    return element.get("csd-code"), element.get("codeSystemName")


class SyslogMessageTests(SynchronousTestCase):
    def test_header_fields(self) -> None:
        """RFC 5424: PRI of facility 10 (security) notice, version 1, a UTC timestamp with
        microseconds, HOSTNAME, APP-NAME, PROCID, IHE's MSGID, no structured data."""
        match, _ = split(encode(record(), SOURCE))
        self.assertEqual(int(match.group(1)), 10 * 8 + 5)
        self.assertEqual(match.group(2), b"2025-12-05T02:00:00.250000Z")
        self.assertEqual(match.group(3), b"gw-1.example.org")
        self.assertEqual(match.group(4), b"dicomrst")
        self.assertEqual(match.group(5), b"4242")
        self.assertEqual(match.group(6), b"IHE+RFC-3881")

    def test_failure_is_a_warning(self) -> None:
        match, _ = split(encode(record(outcome=MINOR_FAILURE, status=404, reason="HTTP 404"), SOURCE))
        self.assertEqual(int(match.group(1)), 10 * 8 + 4)

    def test_header_field_sanitized(self) -> None:
        """Header fields are printable ASCII without spaces, within their limit, ``-`` when empty."""
        self.assertEqual(header_field("my host\tname\u00e9", 255), "my_host_name_")
        self.assertEqual(header_field("x" * 60, 48), "x" * 48)
        self.assertEqual(header_field("", 48), "-")
        source = Source("bad host", "app name", "")
        match, _ = split(encode(record(), source))
        self.assertEqual((match.group(3), match.group(4), match.group(5)), (b"bad_host", b"app_name", b"-"))

    def test_octet_counting(self) -> None:
        """RFC 6587 §3.4.1: the length in octets (not characters), a space, the message."""
        message = encode(record(user="j\u00f6rg \u6771\u4eac"), SOURCE)
        framed = octet_counted(message)
        length, _, rest = framed.partition(b" ")
        self.assertEqual(int(length), len(message))
        self.assertEqual(rest, message)
        self.assertNotEqual(
            len(message), len(message.decode("utf-8"))
        )  # multi-byte characters counted as bytes

    def test_one_line(self) -> None:
        """No line break anywhere: a file line, or a syslog message, cannot be split or forged."""
        hostile = record(user="eve\n<1>1 - forged", reason="x\r\ny", client="a\nb")
        for fmt in (XML, JSON):
            message = encode(hostile, SOURCE, fmt)
            self.assertNotIn(b"\n", message)
            self.assertNotIn(b"\r", message)


class AuditXmlTests(SynchronousTestCase):
    def test_wado_instances_transferred(self) -> None:
        """WADO-RS: DICOM Instances Transferred (110104), action R; the gateway the source,
        the client the requesting destination; the study with its series and instance."""
        root = parse_xml(encode(record(), SOURCE))
        self.assertEqual(root.tag, "AuditMessage")
        event = root.find("EventIdentification")
        assert event is not None
        self.assertEqual(event.get("EventActionCode"), "R")
        self.assertEqual(event.get("EventOutcomeIndicator"), "0")
        self.assertEqual(event.get("EventDateTime"), "2025-12-05T02:00:00.250000Z")
        self.assertEqual(code(event.find("EventID")), ("110104", "DCM"))
        client, gateway = root.findall("ActiveParticipant")
        self.assertEqual(client.get("UserID"), "alice")
        self.assertEqual(client.get("UserIsRequestor"), "true")
        self.assertEqual(client.get("NetworkAccessPointID"), "192.0.2.7")
        self.assertEqual(client.get("NetworkAccessPointTypeCode"), "2")
        self.assertEqual(code(client.find("RoleIDCode")), ("110152", "DCM"))  # destination
        self.assertEqual(gateway.get("UserIsRequestor"), "false")
        self.assertEqual(gateway.get("AlternativeUserID"), "AETITLES=ARCHIVE")
        self.assertEqual(gateway.get("NetworkAccessPointID"), "gw-1.example.org")
        self.assertEqual(code(gateway.find("RoleIDCode")), ("110153", "DCM"))  # source
        audit_source = root.find("AuditSourceIdentification")
        assert audit_source is not None
        self.assertEqual(audit_source.get("AuditSourceID"), "gw-1.example.org")
        self.assertEqual(audit_source.get("AuditEnterpriseSiteID"), "SITE-A")
        (study,) = root.findall("ParticipantObjectIdentification")
        self.assertEqual(study.get("ParticipantObjectID"), STUDY)
        self.assertEqual(
            (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")), ("2", "3")
        )
        self.assertEqual(code(study.find("ParticipantObjectIDTypeCode")), ("110180", "DCM"))
        detail = study.find("ParticipantObjectDetail")
        assert detail is not None
        self.assertEqual(detail.get("type"), "SeriesInstanceUID")
        self.assertEqual(base64.b64decode(detail.get("value") or ""), SERIES.encode())
        instances = [i.get("UID") for i in study.iterfind("SOPClass/Instance")]
        self.assertEqual(instances, [SOP])
        # The order the schema asks for.
        self.assertEqual(
            [child.tag for child in root],
            [
                "EventIdentification",
                "ActiveParticipant",
                "ActiveParticipant",
                "AuditSourceIdentification",
                "ParticipantObjectIdentification",
            ],
        )

    def test_instances_under_their_studies(self) -> None:
        """STOW-RS of two studies: each study object lists its own instances, by SOP Class."""
        other = STUDY + ".9"
        root = parse_xml(
            encode(
                record(
                    service=Service.STOW,
                    studies=(STUDY, other),
                    series=(),
                    instances=(SOP, SOP + ".1", SOP + ".2"),
                    sop_classes=(CT, CT, "1.2.840.10008.5.1.4.1.1.4"),
                    instance_studies=(STUDY, other, other),
                ),
                SOURCE,
            )
        )
        objects = {
            o.get("ParticipantObjectID"): [
                (c.get("UID"), c.get("NumberOfInstances"), [i.get("UID") for i in c])
                for c in o.iterfind("SOPClass")
            ]
            for o in root.findall("ParticipantObjectIdentification")
        }
        self.assertEqual(
            objects,
            {
                STUDY: [(CT, "1", [SOP])],
                other: [(CT, "1", [SOP + ".1"]), ("1.2.840.10008.5.1.4.1.1.4", "1", [SOP + ".2"])],
            },
        )

    def test_query(self) -> None:
        """QIDO-RS: Query (110112), action E, the client the requesting source; the query
        object is the Study Root FIND SOP Class with the query string base64-encoded."""
        query = "PatientName=DOE%5EJOHN&00100020=PID-1"
        root = parse_xml(
            encode(
                record(
                    service=Service.QIDO, studies=(), series=(), instances=(), sop_classes=(), query=query
                ),
                SOURCE,
            )
        )
        event = root.find("EventIdentification")
        assert event is not None
        self.assertEqual(event.get("EventActionCode"), "E")
        self.assertEqual(code(event.find("EventID")), ("110112", "DCM"))
        client = root.findall("ActiveParticipant")[0]
        self.assertEqual(code(client.find("RoleIDCode")), ("110153", "DCM"))
        (query_object,) = root.findall("ParticipantObjectIdentification")
        self.assertEqual(query_object.get("ParticipantObjectID"), "1.2.840.10008.5.1.4.1.2.2.1")
        self.assertEqual(code(query_object.find("ParticipantObjectIDTypeCode")), ("110181", "DCM"))
        self.assertEqual(
            base64.b64decode(query_object.findtext("ParticipantObjectQuery") or ""), query.encode()
        )

    def test_worklist_query_class(self) -> None:
        root = parse_xml(encode(record(service=Service.MWL, studies=(), instances=(), query=""), SOURCE))
        ids = [o.get("ParticipantObjectID") for o in root.findall("ParticipantObjectIdentification")]
        self.assertEqual(ids, ["1.2.840.10008.5.1.4.31"])

    def test_stow_and_metadata_events(self) -> None:
        stow = parse_xml(encode(record(service=Service.STOW, sop_classes=(CT,)), SOURCE))
        event = stow.find("EventIdentification")
        assert event is not None
        self.assertEqual((event.get("EventActionCode"), code(event.find("EventID"))[0]), ("C", "110104"))
        self.assertEqual(code(stow.findall("ActiveParticipant")[0].find("RoleIDCode"))[0], "110153")
        self.assertEqual([e.get("UID") for e in stow.iterfind(".//SOPClass")], [CT])
        metadata = parse_xml(encode(record(service=Service.METADATA), SOURCE))
        self.assertEqual(code(metadata.find("EventIdentification/EventID"))[0], "110103")

    def test_failure_described(self) -> None:
        root = parse_xml(
            encode(record(outcome=MINOR_FAILURE, status=403, reason="bob (basic) may not read"), SOURCE)
        )
        self.assertEqual(root.find("EventIdentification").get("EventOutcomeIndicator"), "4")  # type: ignore[union-attr]
        self.assertEqual(
            root.findtext("EventIdentification/EventOutcomeDescription"), "bob (basic) may not read"
        )

    def test_escaping(self) -> None:
        """Markup in a user name or a reason is text, not XML; characters XML cannot carry
        (controls) become U+FFFD; parsing gives the rest back as it was."""
        name = 'o\'brien "<admin>" & co\x01'
        root = parse_xml(
            encode(record(user=name, outcome=SERIOUS_FAILURE, reason="</EventOutcomeDescription>"), SOURCE)
        )
        self.assertEqual(root.findall("ActiveParticipant")[0].get("UserID"), 'o\'brien "<admin>" & co\ufffd')
        self.assertEqual(
            root.findtext("EventIdentification/EventOutcomeDescription"), "</EventOutcomeDescription>"
        )

    def test_anonymous(self) -> None:
        root = parse_xml(encode(record(user=None, auth="anonymous"), SOURCE))
        client = root.findall("ActiveParticipant")[0]
        self.assertEqual(client.get("UserID"), "anonymous")
        self.assertIsNone(client.get("UserName"))

    def test_cstore(self) -> None:
        """A C-STORE: the calling AE the source, the listener the destination, the
        instance named with its SOP Class (its study is not in the request)."""
        root = parse_xml(
            encode(
                record(
                    service=Service.CSTORE,
                    user=None,
                    auth="dicom",
                    client="",
                    calling_aet="MODALITY",
                    called_aet="GWSCP",
                    studies=(),
                    series=(),
                    sop_classes=(CT,),
                    path=None,
                ),
                SOURCE,
            )
        )
        client, gateway = root.findall("ActiveParticipant")
        self.assertEqual(client.get("AlternativeUserID"), "AETITLES=MODALITY")
        self.assertEqual(gateway.get("AlternativeUserID"), "AETITLES=GWSCP")
        (instance,) = root.findall("ParticipantObjectIdentification")
        self.assertEqual(instance.get("ParticipantObjectID"), CT)
        self.assertEqual([e.get("UID") for e in instance.iterfind("SOPClass/Instance")], [SOP])


class JsonTests(SynchronousTestCase):
    def test_json_body(self) -> None:
        match, body = split(encode(record(user="j\u00f6rg"), SOURCE, JSON))
        self.assertEqual(match.group(6), b"dicomrst-audit")
        fields = json.loads(body)
        self.assertEqual(fields["event_code"], "110104")
        self.assertEqual(fields["user"], "j\u00f6rg")
        self.assertEqual(
            (fields["studies"], fields["series"], fields["instances"]), ([STUDY], [SERIES], [SOP])
        )
        self.assertEqual((fields["outcome"], fields["status"], fields["client"]), (0, 200, "192.0.2.7"))
        body.decode("ascii")  # every non-ASCII character escaped


class OutcomeTests(SynchronousTestCase):
    def test_http(self) -> None:
        self.assertEqual(http_outcome(200, True), SUCCESS)
        self.assertEqual(http_outcome(206, True), SUCCESS)
        self.assertEqual(http_outcome(202, True), MINOR_FAILURE)  # STOW-RS: some failed
        self.assertEqual(http_outcome(403, True), MINOR_FAILURE)
        self.assertEqual(http_outcome(502, True), SERIOUS_FAILURE)
        self.assertEqual(http_outcome(200, False), SERIOUS_FAILURE)  # cut off
        self.assertEqual(http_outcome(0, False), SERIOUS_FAILURE)

    def test_dimse(self) -> None:
        self.assertEqual(dimse_outcome(0), SUCCESS)
        self.assertEqual(dimse_outcome(0xB000), SUCCESS)
        self.assertEqual(dimse_outcome(0xA700), SERIOUS_FAILURE)


class LogCapture:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def matching(self, fragment: str) -> list[dict[str, Any]]:
        return [e for e in self.events if fragment in (e.get("log_format") or "")]


class TrailTests(SynchronousTestCase):
    def trail(self, size: int) -> tuple[AuditTrail, MemoryWriter]:
        writers: list[MemoryWriter] = []

        def make(queue: AuditQueue) -> MemoryWriter:
            writers.append(MemoryWriter(queue))
            return writers[0]

        trail = AuditTrail(make, Clock(), SOURCE, XML, size)
        return trail, writers[0]

    def test_bounded_and_counted(self) -> None:
        """A full queue drops what comes, counts it, and logs once when the burst starts
        and once, with its count, when records are queued again."""
        logs = LogCapture(self)
        trail, writer = self.trail(3)
        results = [trail.record(record(request_id=str(i))) for i in range(10)]
        self.assertEqual(results, [True] * 3 + [False] * 7)
        self.assertEqual((len(trail.queue), trail.dropped), (3, 7))
        self.assertEqual(len(logs.matching("queue full")), 1)
        self.assertEqual(writer.wakes, 3)
        writer.drain()
        self.assertTrue(trail.record(record(request_id="after")))
        (burst,) = logs.matching("dropped while the queue was full")
        self.assertEqual((burst["count"], burst["total"]), (7, 7))
        # In order, the dropped ones missing.
        ids = [
            json.loads(split(encode(record(request_id=str(i)), SOURCE, JSON))[1])["request_id"]
            for i in range(3)
        ]
        self.assertEqual(ids, ["0", "1", "2"])
        self.assertEqual(
            [split(m)[1] for m in writer.taken],
            [split(encode(record(request_id=str(i)), SOURCE))[1] for i in range(3)],
        )
        # A second burst is logged again.
        for i in range(4):
            trail.record(record(request_id=f"b{i}"))
        self.assertEqual(trail.dropped, 9)  # one queued before: two more fit
        self.assertEqual(len(logs.matching("queue full")), 2)


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """Connects to StringTransports, or fails, as the test says."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[Protocol]] = []
        self.protocols: list[Protocol] = []  # as the transport sees them (ClientService's wrappers)

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        d: Deferred[Protocol] = Deferred()
        self.attempts.append(d)
        d.addCallback(lambda _: self._connected(factory))
        return d

    def _connected(self, factory: Factory) -> Protocol:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return protocol


def frames(data: bytes) -> list[bytes]:
    """Split octet-counted frames, checking each length."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        n = int(length)
        out.append(rest[:n])
        data = rest[n:]
    return out


class StreamWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = ScriptedEndpoint()
        self.queue = AuditQueue(100)
        self.writer = StreamWriter(
            self.queue, self.endpoint, self.clock, "tcp:collector:6514", retry=lambda n: 2.0
        )
        self.writer.start()
        self.addCleanup(self.writer.stop)

    def connect(self) -> StringTransport:
        self.endpoint.attempts[-1].callback(None)
        sender = self.writer._sender
        assert sender is not None and isinstance(sender.transport, StringTransport)
        return sender.transport

    def put(self, *items: bytes) -> None:
        for item in items:
            self.assertTrue(self.queue.put(item))
        self.writer.wake()

    def test_octet_counted_and_backpressure(self) -> None:
        """Records go out framed; while the transport pushes back, they wait in the queue."""
        self.put(b"one")  # before the connection: queued
        transport = self.connect()
        self.assertEqual(frames(transport.value()), [b"one"])
        self.assertIsNotNone(transport.producer)
        transport.producer.pauseProducing()
        self.put(b"two", b"three")
        self.assertEqual(frames(transport.value()), [b"one"])
        self.assertEqual(len(self.queue), 2)
        transport.producer.resumeProducing()
        self.assertEqual(frames(transport.value()), [b"one", b"two", b"three"])
        self.assertEqual(len(self.queue), 0)

    def test_reconnect(self) -> None:
        """A refused connection and a lost one are retried after the backoff; what was
        queued meanwhile goes out on the new connection."""
        self.endpoint.attempts[-1].errback(Failure(ConnectionRefusedError()))
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(2.0)
        self.assertEqual(len(self.endpoint.attempts), 2)
        first = self.connect()
        self.put(b"a")
        self.endpoint.protocols[-1].connectionLost(Failure(ConnectionLost()))
        self.assertFalse(self.writer.is_connected)
        self.put(b"b", b"c")
        self.assertEqual(len(self.queue), 2)
        self.clock.advance(2.0)
        second = self.connect()
        self.assertEqual(frames(first.value()), [b"a"])
        self.assertEqual(frames(second.value()), [b"b", b"c"])

    def test_stop_hands_over_the_queue(self) -> None:
        """At a stop what is queued is written, and the producer unregistered: TLS holds
        its close_notify (and the stop) while one is registered."""
        transport = self.connect()
        transport.producer.pauseProducing()
        self.put(b"x", b"y")
        self.writer.stop()
        self.assertEqual(frames(transport.value()), [b"x", b"y"])
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)


def synchronous(f: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class FileWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "audit.log")
        self.clock = Clock()
        self.queue = AuditQueue(100)
        self.writer = FileWriter(self.queue, self.path, self.clock, synchronous)

    def put(self, *items: bytes) -> None:
        for item in items:
            self.queue.put(item)
        self.writer.wake()

    def read(self, path: str | None = None) -> list[bytes]:
        with open(path or self.path, "rb") as f:
            return f.read().splitlines()

    def test_lines_and_reopen(self) -> None:
        """One message a line; after SIGHUP (the file moved by logrotate) a new file."""
        self.put(b"one", b"two")
        self.assertEqual(self.read(), [b"one", b"two"])
        os.rename(self.path, self.path + ".1")
        self.assertIn(self.path, self.writer.reopen())
        self.put(b"three")
        self.assertEqual(self.read(self.path + ".1"), [b"one", b"two"])
        self.assertEqual(self.read(), [b"three"])
        self.successResultOf(self.writer.stop())
        self.assertEqual(self.writer.written, 3)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_failed_write_kept_and_retried(self) -> None:
        """A write that fails (the directory gone) keeps its records, in order, and is
        tried again later, not in a loop."""
        logs = LogCapture(self)
        os.rmdir(self.directory)
        self.put(b"one", b"two")
        self.assertEqual(len(self.queue), 2)
        self.put(b"three")  # waits for the retry
        self.assertEqual(len(logs.matching("cannot write")), 1)
        os.makedirs(self.directory)
        self.clock.advance(FILE_RETRY)
        self.assertEqual(self.read(), [b"one", b"two", b"three"])
        self.assertEqual(len(logs.matching("again")), 1)

    def test_stop_writes_what_is_queued(self) -> None:
        pending: list[Deferred[None]] = []

        def held(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[None] = Deferred()
            pending.append(d)
            return d.addCallback(lambda _: f(*args))

        writer = FileWriter(self.queue, self.path, self.clock, held)
        self.queue.put(b"one")
        writer.wake()  # in flight
        self.queue.put(b"two")
        writer.wake()  # waits: one write at a time
        self.assertEqual(len(pending), 1)
        stopped = writer.stop()
        pending.pop(0).callback(None)
        self.assertEqual(len(pending), 1)  # the last write, with what was left
        pending.pop(0).callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.read(), [b"one", b"two"])
        self.assertIsNone(writer._file)


class Consumer:
    def __init__(self) -> None:
        self.done: Deferred[int] = Deferred()


class CStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.writers: list[MemoryWriter] = []

        def make(queue: AuditQueue) -> MemoryWriter:
            self.writers.append(MemoryWriter(queue))
            return self.writers[0]

        self.trail = AuditTrail(make, Clock(), SOURCE, JSON, 10)

    def records(self) -> list[dict[str, Any]]:
        self.writers[0].drain()
        return [json.loads(split(m)[1]) for m in self.writers[0].taken]

    def test_stored_and_failed(self) -> None:
        consumers: list[Consumer] = []

        def receive(sop_class: str, sop: str, syntax: str, calling: str) -> Any:
            consumers.append(Consumer())
            return consumers[-1]

        wrapped = audited_receive(self.trail, "GWSCP", "ARCHIVE", receive)
        first = wrapped(CT, SOP, "1.2.840.10008.1.2.1", "MODALITY")
        seen: list[int] = []
        first.done.addCallback(seen.append)
        consumers[0].done.callback(0)
        self.assertEqual(seen, [0])  # the status goes on to the SCP
        second = wrapped(CT, SOP + ".2", "1.2.840.10008.1.2.1", "MODALITY")
        consumers[1].done.errback(Failure(OSError("disk full")))
        self.failureResultOf(second.done, OSError)
        stored, failed = self.records()
        self.assertEqual(
            (
                stored["service"],
                stored["outcome"],
                stored["calling_aet"],
                stored["called_aet"],
                stored["aet"],
            ),
            ("C-STORE", 0, "MODALITY", "GWSCP", "ARCHIVE"),
        )
        self.assertEqual((stored["instances"], stored["sop_classes"]), ([SOP], [CT]))
        self.assertEqual((failed["outcome"], failed["status"]), (SERIOUS_FAILURE, 0x0110))
        self.assertIn("disk full", failed["reason"])

    def test_refused(self) -> None:
        def receive(sop_class: str, sop: str, syntax: str, calling: str) -> Any:
            raise ValueError("not an image")

        wrapped = audited_receive(self.trail, "GWSCP", "ARCHIVE", receive)
        self.assertRaises(ValueError, wrapped, CT, SOP, "1.2.840.10008.1.2.1", "MODALITY")
        (refused,) = self.records()
        self.assertEqual((refused["status"], refused["outcome"]), (0xC000, SERIOUS_FAILURE))


class ConfigTests(SynchronousTestCase):
    def parse(self, audit: Any) -> Any:
        return parse_config({"telemetry": {"audit": audit}}, environ={})

    def test_off_by_default(self) -> None:
        self.assertIsNone(parse_config({}, environ={}).telemetry.audit)

    def test_keys(self) -> None:
        audit = self.parse(
            {
                "endpoint": "tls:audit.example.org:6514",
                "format": "json",
                "queue-size": 50,
                "app-name": "gw",
                "hostname": "gw-1",
                "site-id": "Site A",
            }
        ).telemetry.audit
        self.assertEqual(
            (audit.endpoint, audit.format, audit.queue_size, audit.app_name, audit.hostname, audit.site_id),
            ("tls:audit.example.org:6514", "json", 50, "gw", "gw-1", "Site A"),
        )
        self.assertIsNone(audit.file_path)
        self.assertEqual(
            self.parse({"endpoint": "file: /var/log/audit.log"}).telemetry.audit.file_path,
            "/var/log/audit.log",
        )

    def test_plain_tcp_warned(self) -> None:
        def warnings(endpoint: str) -> list[str]:
            return [w for w in config_warnings(self.parse({"endpoint": endpoint})) if "telemetry.audit" in w]

        self.assertEqual(len(warnings("tcp:audit.example.org:514")), 1)
        self.assertEqual(warnings("tcp:127.0.0.1:514"), [])
        self.assertEqual(warnings("tls:audit.example.org:6514"), [])
        self.assertEqual(warnings("file:/var/log/audit.log"), [])

    def test_errors_name_the_key(self) -> None:
        cases = [
            ({}, "telemetry.audit.endpoint"),
            ({"endpoint": "collector"}, "telemetry.audit.endpoint"),
            ({"endpoint": "file:"}, "telemetry.audit.endpoint"),
            ({"endpoint": "tcp:h:1", "format": "cef"}, "telemetry.audit.format"),
            ({"endpoint": "tcp:h:1", "queue-size": 0}, "telemetry.audit.queue-size"),
            ({"endpoint": "tcp:h:1", "hostname": "my host"}, "telemetry.audit.hostname"),
            ({"endpoint": "tcp:h:1", "colour": 1}, "telemetry.audit.colour"),
        ]
        for audit, key in cases:
            error = self.assertRaises(ConfigError, self.parse, audit)
            self.assertIn(key, str(error), audit)


class ClientAddressTests(SynchronousTestCase):
    def request(self, peer: str, headers: dict[bytes, bytes]) -> DummyRequest:
        from twisted.internet.address import IPv4Address

        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", peer, 40000)
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        return request

    def test_trusted_proxy(self) -> None:
        urls = PublicUrls.from_config(None, ["10.0.0.0/8"])
        forwarded = {b"forwarded": b'for=192.0.2.1, for="[2001:db8::7]:4711";proto=https'}
        self.assertEqual(urls.client_host(self.request("10.1.2.3", forwarded)), "2001:db8::7")
        xff = {b"x-forwarded-for": b"198.51.100.9, 203.0.113.5"}
        self.assertEqual(urls.client_host(self.request("10.1.2.3", xff)), "203.0.113.5")
        self.assertEqual(urls.client_host(self.request("10.1.2.3", {})), "10.1.2.3")

    def test_untrusted_peer_headers_ignored(self) -> None:
        urls = PublicUrls.from_config(None, ["10.0.0.0/8"])
        request = self.request("192.0.2.50", {b"x-forwarded-for": b"203.0.113.5"})
        self.assertEqual(urls.client_host(request), "192.0.2.50")
        self.assertEqual(PublicUrls().client_host(request), "192.0.2.50")


class WiringTests(SynchronousTestCase):
    """``telemetry.audit`` in the service tree (``dicomrst.tap.build``)."""

    def build(self, audit: dict[str, Any] | None, directory: str) -> Any:
        data: dict[str, Any] = {
            "server": {
                "cache": {"path": os.path.join(directory, "cache")},
                "dimse": [{"aet": "IN", "store-to": "ARCHIVE"}],
            },
            "aets": [{"aet": "ARCHIVE", "backend": "LOCAL", "path": os.path.join(directory, "archive")}],
        }
        if audit is not None:
            data["telemetry"] = {"audit": audit}
        return build(parse_config(data, lambda host: None, {}), MemoryReactorClock())

    def test_file_trail(self) -> None:
        """The audit service starts first (stops last), the file reopens on SIGHUP, the
        routes record into the trail, and the trail is on the gateway for the metrics."""
        directory = self.mktemp()
        top = self.build(
            {"endpoint": f"file:{directory}/audit.log", "queue-size": 7, "hostname": "gw"}, directory
        )
        services = list(top)
        self.assertIsInstance(services[0], AuditService)
        trail = top.audit
        assert trail is not None
        self.assertIs(services[0].trail, trail)
        self.assertEqual((trail.queue.size, trail.source.hostname, trail.dropped), (7, "gw", 0))
        self.assertIsInstance(trail.writer, FileWriter)
        self.assertIn(trail.writer.reopen, top.reloaders)
        http = services[-1]
        self.assertIs(http.site.resource._app.context.audit.trail, trail)

    def test_with_metrics_its_drops_are_counted_there(self) -> None:
        """Both on: the trail still stops last (first), the metrics listener next; the
        metrics read the trail's count of dropped records when scraped."""
        from prometheus_client import generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        directory = self.mktemp()
        data: dict[str, Any] = {
            "server": {"cache": {"path": os.path.join(directory, "cache")}},
            "telemetry": {
                "audit": {"endpoint": f"file:{directory}/audit.log", "queue-size": 1},
                "metrics": {"endpoint": "tcp:0:interface=127.0.0.1"},
            },
        }
        top = build(parse_config(data, lambda host: None, {}), MemoryReactorClock())
        services = list(top)
        self.assertIsInstance(services[0], AuditService)
        self.assertEqual(getattr(services[1], "what", None), "Prometheus metrics")
        top.audit.dropped = 4  # what a full queue counts
        metrics = services[-1].site.metrics
        text = generate_latest(metrics.registry).decode()
        [family] = [f for f in text_string_to_metric_families(text) if f.name == "dicomrst_audit_dropped"]
        self.assertEqual([s.value for s in family.samples if s.name.endswith("_total")], [4.0])

    def test_tcp_trail(self) -> None:
        directory = self.mktemp()
        top = self.build({"endpoint": "tcp:collector.example:6514"}, directory)
        self.assertIsInstance(top.audit.writer, StreamWriter)

    def test_off(self) -> None:
        directory = self.mktemp()
        top = self.build(None, directory)
        self.assertIsNone(top.audit)
        self.assertFalse([s for s in top if isinstance(s, AuditService)])

    def test_bad_endpoint_stops_startup(self) -> None:
        self.assertRaises(SystemExit, self.build, {"endpoint": "tcp:no-port-here"}, self.mktemp())

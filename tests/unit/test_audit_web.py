"""The HTTP side of the audit trail (``dicomrst.web.audit``), in memory: which requests
are recorded, with whom, which UIDs and which outcome; refusals, the STOW-RS studies
stored, what is not recorded, and a request that never finished."""

from __future__ import annotations

import io
import json
from typing import Any

from pydicom import dcmread
from treq.testing import StubTreq
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from dicomrst.audit.formats import JSON
from dicomrst.audit.trail import AuditQueue, AuditTrail
from dicomrst.web.app import GatewayApp
from dicomrst.web.audit import ROUTE_SERVICES, WebAudit
from dicomrst.web.site import make_site
from tests.support.access import BOUNDARY, STOW_TYPE, UID, GuardedApp
from tests.support.audit import SOURCE, MemoryWriter, split
from tests.support.auth import basic
from tests.support.http import Connection
from tests.support.stow import multipart_body, part10_bytes


class AuditedApp(GuardedApp):
    def setUp(self) -> None:
        super().setUp()
        writers: list[MemoryWriter] = []

        def make(queue: AuditQueue) -> MemoryWriter:
            writers.append(MemoryWriter(queue))
            return writers[0]

        self.trail = AuditTrail(make, self.clock, SOURCE, JSON, 100)
        self.writer = writers[0]
        self.app = GatewayApp(
            {"PACS": self.pacs, "ARCHIVE": self.archive},
            self.clock,
            access=self.gate,
            audit=WebAudit(self.trail),
        )
        self.stub = StubTreq(self.app.resource())

    def records(self) -> list[dict[str, Any]]:
        self.writer.drain()
        taken, self.writer.taken = self.writer.taken, []
        return [json.loads(split(m)[1]) for m in taken]


class WebAuditTests(AuditedApp):
    def test_every_patient_route_is_audited(self) -> None:
        """Every QIDO/MWL/WADO/STOW route of the app has its event (a new one must be added)."""
        endpoints = {str(rule.endpoint) for rule in GatewayApp.app.url_map.iter_rules()}
        self.assertEqual(endpoints - set(ROUTE_SERVICES), {"root", "aets", "aet_health"})

    def test_query_recorded(self) -> None:
        response, _ = self.fetch(
            "/aets/PACS/studies?PatientName=DOE*&limit=5", auth=basic("alice", "wonderland")
        )
        self.assertEqual(response.code, 200)
        (record,) = self.records()
        self.assertEqual(
            (record["service"], record["event_code"], record["aet"], record["user"], record["auth"]),
            ("QIDO", "110112", "PACS", "alice", "basic"),
        )
        self.assertEqual((record["status"], record["outcome"]), (200, 0))
        self.assertEqual(record["query"], "PatientName=DOE*&limit=5")
        self.assertEqual(record["path"], "/aets/PACS/studies")
        self.assertEqual(record["studies"], [])
        self.assertTrue(record["client"])

    def test_study_level_query_names_the_study(self) -> None:
        self.fetch(f"/aets/PACS/studies/{UID}/series", auth=basic("alice", "wonderland"))
        (record,) = self.records()
        self.assertEqual(record["studies"], [UID])

    def test_refused_recorded_with_the_reason(self) -> None:
        """A 403 is a minor failure with the refusal's reason and the UIDs asked for; the
        caller was not let in, so no user is named but the reason names it."""
        response, _ = self.fetch(
            f"/aets/PACS/studies/{UID}/series/{UID}.1/metadata", auth=basic("bob", "builder")
        )
        self.assertEqual(response.code, 403)
        (record,) = self.records()
        self.assertEqual((record["service"], record["status"], record["outcome"]), ("WADO-METADATA", 403, 4))
        self.assertEqual(record["reason"], "bob (basic) may not read PACS")
        self.assertIsNone(record["user"])
        self.assertEqual((record["studies"], record["series"]), ([UID], [UID + ".1"]))

    def test_unauthenticated_recorded(self) -> None:
        response, _ = self.fetch(f"/aets/PACS/studies/{UID}")
        self.assertEqual(response.code, 401)
        (record,) = self.records()
        self.assertEqual((record["service"], record["status"], record["auth"]), ("WADO", 401, "none"))

    def test_not_found_recorded_as_failure(self) -> None:
        response, _ = self.fetch(
            f"/aets/NOPE/studies/{UID}/series/{UID}.1/instances/{UID}.1.1", auth=basic("alice", "wonderland")
        )
        self.assertEqual(response.code, 404)
        (record,) = self.records()
        self.assertEqual(
            (record["aet"], record["status"], record["outcome"], record["reason"]),
            ("NOPE", 404, 4, "HTTP 404"),
        )
        self.assertEqual(record["instances"], [UID + ".1.1"])

    def test_not_audited(self) -> None:
        for path in ("/", "/aets", "/aets/PACS", "/nowhere"):
            self.fetch(path, auth=basic("alice", "wonderland"))
        self.assertEqual(self.records(), [])

    def test_unfinished_request(self) -> None:
        """A retrieve whose client leaves before the response ends is a serious failure."""
        site = make_site(self.app.resource(), self.clock, request_timeout=60)
        conn = Connection(site)
        conn.protocol.dataReceived(
            f"GET /aets/PACS/studies/{UID} HTTP/1.1\r\nHost: gw\r\nAuthorization: ".encode()
            + basic("alice", "wonderland")
            + b"\r\n\r\n"
        )
        self.assertEqual(len(self.pacs.retrieves), 1)  # the backend holds it
        conn.transport.loseConnection()
        conn.protocol.connectionLost(Failure(ConnectionLost("gone")))
        (record,) = self.records()
        self.assertEqual((record["status"], record["outcome"], record["studies"]), (0, 8, [UID]))
        self.assertTrue(record["request_id"])

    def test_stow_names_the_stored(self) -> None:
        """STOW-RS: the studies and instances stored (read from the parts, not the URL)."""
        site = make_site(self.app.resource(), self.clock, request_timeout=60)
        part = part10_bytes(study=UID)
        body = multipart_body([([("Content-Type", "application/dicom")], part)], BOUNDARY)
        conn = Connection(site)
        head = [
            b"POST /aets/PACS/studies HTTP/1.1",
            b"Host: gw",
            b"Content-Type: " + STOW_TYPE,
            b"Content-Length: %d" % len(body),
            b"Authorization: " + basic("alice", "wonderland"),
        ]
        conn.protocol.dataReceived(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.clock.advance(0)
        self.assertIn(b" 200 ", conn.transport.value().split(b"\r\n", 1)[0])
        (record,) = self.records()
        dataset = dcmread(io.BytesIO(part))
        self.assertEqual((record["service"], record["event_code"], record["action"]), ("STOW", "110104", "C"))
        self.assertEqual(record["studies"], [UID])
        self.assertEqual(record["instances"], [dataset.SOPInstanceUID])
        self.assertEqual(record["sop_classes"], [dataset.SOPClassUID])

    def test_off_records_nothing(self) -> None:
        app = GatewayApp({"PACS": self.pacs}, self.clock, access=self.gate)
        self.assertFalse(app.context.audit.enabled)

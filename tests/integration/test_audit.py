"""``telemetry.audit`` on the gateway as a real process (``twistd dicomrst``, a LOCAL
archive): STOW-RS, QIDO-RS and WADO-RS leave one record each, with the user, the client
(as a trusted proxy forwarded it), the UIDs and the outcome, in a file and at a syslog
collector over TCP that the test runs (octet-counted RFC 5424 frames); a collector that is
not there costs the requests nothing: records beyond the queue are dropped and counted,
and the queued ones arrive once it is up.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from typing import Any
from xml.etree import ElementTree as ET

from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.auth import bcrypt_2y
from tests.support.datasets import part10
from tests.support.gateway import (
    INTEGRATION_TIMEOUT,
    LISTENER_AET,
    Gateway,
    c_store,
    eventually,
    start_gateway,
)
from tests.support.stow import fresh_test_file, multipart_body

reactor: Any = _global_reactor

AET = "ARCHIVE"
BOUNDARY = b"audit-boundary"
STOW_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"alice:looking-glass").decode()}
HEADER = re.compile(rb"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) - \xef\xbb\xbf")


def parse_message(message: bytes) -> tuple[re.Match[bytes], ET.Element]:
    match = HEADER.match(message)
    assert match is not None, message[:200]
    return match, ET.fromstring(message[match.end() :])


def summary(root: ET.Element) -> dict[str, Any]:
    """What a test checks of a DICOM audit message."""
    event = root.find("EventIdentification")
    assert event is not None
    requestor = next(p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    return {
        "event": event.find("EventID").get("csd-code"),  # type: ignore[union-attr]
        "action": event.get("EventActionCode"),
        "outcome": event.get("EventOutcomeIndicator"),
        "user": requestor.get("UserID"),
        "client": requestor.get("NetworkAccessPointID"),
        "studies": [
            o.get("ParticipantObjectID")
            for o in root.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]
        ],
        "instances": [i.get("UID") for i in root.iterfind(".//SOPClass/Instance")],
        "query": [
            base64.b64decode(q.text or "").decode() for q in root.iterfind(".//ParticipantObjectQuery")
        ],
    }


class Collector(Protocol):
    """A syslog collector: splits RFC 6587 octet-counted frames."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b" " in self.buffer:
            length, rest = self.buffer.split(b" ", 1)
            if len(rest) < int(length):
                return
            self.frames.append(rest[: int(length)])
            self.buffer = rest[int(length) :]


def _certificate(
    name: str, key: Any, issuer_name: Any, issuer_key: Any, ca: bool, dns: str | None = None
) -> Any:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_pki(directory: str) -> dict[str, str]:
    """A CA, a collector certificate for ``localhost`` and a client (node) certificate it
    signed, as PEM files; the CA alone in ``trust/`` (a ``trustRoots`` directory)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("audit test CA", ca_key, None, None, ca=True)
    paths = {}
    os.makedirs(os.path.join(directory, "trust"))
    paths["trust"] = os.path.join(directory, "trust")
    with open(os.path.join(paths["trust"], "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    for name, dns in (("collector", "localhost"), ("gateway", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, ca.subject, ca_key, ca=False, dns=dns)
        for kind, data in (("cert", cert.public_bytes(serialization.Encoding.PEM)), ("key", pem_key(key))):
            paths[f"{name}-{kind}"] = os.path.join(directory, f"{name}-{kind}.pem")
            with open(paths[f"{name}-{kind}"], "wb") as f:
                f.write(data)
    paths["ca"] = os.path.join(paths["trust"], "ca.pem")
    return paths


class AuditGatewayTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def gateway(self, endpoint: str, listener: dict[str, Any] | None = None, **audit: Any) -> Gateway:
        users = os.path.abspath(self.mktemp())
        with open(users, "w", encoding="utf-8") as f:
            f.write(f"alice:{bcrypt_2y('wonderland', rounds=4)}\n")
        return await start_gateway(
            self,
            [{"aet": AET, "backend": "LOCAL", "path": os.path.abspath(self.mktemp())}],
            http={"trusted-proxies": [peers.LOCALHOST]},
            server={"auth": {"basic": {"users-file": users}, "anonymous": True}},
            telemetry={"audit": {"endpoint": endpoint, "hostname": "gw-test", **audit}},
            listener=listener,
        )

    async def store(self, gw: Gateway, study: str) -> tuple[str, str]:
        ds = fresh_test_file("CT_small.dcm", study)
        body = multipart_body([([("Content-Type", "application/dicom")], part10(ds))], BOUNDARY)
        response = await gw.request(
            "POST", f"/aets/{AET}/studies", data=body, headers={"Content-Type": STOW_TYPE, **ALICE}
        )
        self.assertEqual(response.code, 200, response.body[:300])
        return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)

    async def exercise(self, gw: Gateway) -> tuple[str, str, str]:
        """STOW-RS (alice), QIDO-RS (anonymous), WADO-RS metadata (alice behind a proxy),
        a WADO-RS retrieve with a wrong password: four records."""
        study = generate_uid()
        series, sop = await self.store(gw, study)
        response = await gw.get(f"/aets/{AET}/studies?StudyInstanceUID={study}")
        self.assertEqual(response.code, 200, response.body[:300])
        response = await gw.get(
            f"/aets/{AET}/studies/{study}/metadata", headers={**ALICE, "X-Forwarded-For": "203.0.113.9"}
        )
        self.assertEqual(response.code, 200, response.body[:300])
        response = await gw.get(f"/aets/{AET}/studies/{study}/series/{series}/instances/{sop}", headers=WRONG)
        self.assertEqual(response.code, 401)
        return study, series, sop

    def check_four(self, messages: list[bytes], study: str, sop: str) -> None:
        records = []
        for message in messages:
            match, root = parse_message(message)
            self.assertEqual(
                (match.group(3), match.group(4), match.group(6)), (b"gw-test", b"dicomrst", b"IHE+RFC-3881")
            )
            records.append(summary(root))
        stow, qido, metadata, refused = records
        self.assertEqual(
            (stow["event"], stow["action"], stow["outcome"], stow["user"]), ("110104", "C", "0", "alice")
        )
        self.assertEqual((stow["studies"], stow["instances"]), ([study], [sop]))
        self.assertEqual(
            (qido["event"], qido["action"], qido["outcome"], qido["user"]), ("110112", "E", "0", "anonymous")
        )
        self.assertEqual(qido["query"], [f"StudyInstanceUID={study}"])
        self.assertEqual(qido["client"], peers.LOCALHOST)
        self.assertEqual(
            (metadata["event"], metadata["outcome"], metadata["user"], metadata["client"]),
            ("110103", "0", "alice", "203.0.113.9"),
        )
        self.assertEqual(metadata["studies"], [study])
        self.assertEqual((refused["event"], refused["outcome"], refused["user"]), ("110104", "4", "none"))
        self.assertEqual((refused["studies"], refused["instances"]), ([study], [sop]))

    async def test_file(self) -> None:
        path = os.path.abspath(self.mktemp())
        gw = await self.gateway(f"file:{path}")
        study, _, sop = await self.exercise(gw)

        def lines() -> list[bytes]:
            if not os.path.exists(path):
                return []
            with open(path, "rb") as f:
                return f.read().splitlines()

        self.assertTrue(await eventually(lambda: len(lines()) >= 4), gw.log_tail())
        self.check_four(lines(), study, sop)
        # SIGHUP reopens it (logrotate moved it).
        os.rename(path, path + ".1")
        os.kill(gw.child.pid, signal.SIGHUP)
        self.assertTrue(await eventually(lambda: bool(gw.log_lines("SIGHUP: .*audit file"))), gw.log_tail())
        response = await gw.get(f"/aets/{AET}/studies/{study}/series", headers=ALICE)
        self.assertEqual(response.code, 200)
        self.assertTrue(await eventually(lambda: len(lines()) == 1), gw.log_tail())
        self.assertEqual(summary(parse_message(lines()[0])[1])["studies"], [study])

    async def test_tcp_collector(self) -> None:
        frames: list[bytes] = []
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: Collector(frames)), interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        gw = await self.gateway(f"tcp:{peers.LOCALHOST}:{port.getHost().port}")
        study, _, sop = await self.exercise(gw)
        self.assertTrue(await eventually(lambda: len(frames) >= 4), gw.log_tail())
        self.check_four(frames, study, sop)
        self.assertTrue(gw.log_lines("audit: connected to tcp:"))

    async def test_collector_down(self) -> None:
        """With no collector, requests go on at full speed: three records wait in the
        queue, the rest are dropped (one log line when that starts, one with the count);
        once a collector listens, the queued ones arrive."""
        collector_port = peers.free_port()
        gw = await self.gateway(
            f"tcp:{peers.LOCALHOST}:{collector_port}", **{"queue-size": 3, "format": "json"}
        )
        timings = []
        for i in range(10):
            started = time.monotonic()
            response = await gw.get(f"/aets/{AET}/studies?AccessionNumber=A{i}")
            timings.append(time.monotonic() - started)
            self.assertEqual(response.code, 200)
        self.assertLess(max(timings), 2.0, timings)
        self.assertTrue(await eventually(lambda: bool(gw.log_lines("audit: queue full"))), gw.log_tail())
        self.assertEqual(len(gw.log_lines("audit: queue full")), 1)
        frames: list[bytes] = []
        port = reactor.listenTCP(
            collector_port, Factory.forProtocol(lambda: Collector(frames)), interface=peers.LOCALHOST
        )
        self.addCleanup(port.stopListening)
        # ClientService's backoff (1 s, growing by half with jitter) finds it.
        self.assertTrue(await eventually(lambda: len(frames) >= 3, timeout=60), gw.log_tail())
        queries = [re.search(rb'"query":"([^"]*)"', f).group(1) for f in frames]  # type: ignore[union-attr]
        self.assertEqual(queries, [b"AccessionNumber=A0", b"AccessionNumber=A1", b"AccessionNumber=A2"])
        response = await gw.get(f"/aets/{AET}/studies?AccessionNumber=after")
        self.assertEqual(response.code, 200)
        self.assertTrue(await eventually(lambda: len(frames) >= 4), gw.log_tail())
        (burst,) = gw.log_lines("record\\(s\\) dropped while the queue was full")
        self.assertIn("7 record(s) dropped", burst)

    async def test_c_store(self) -> None:
        """A C-STORE into the archive (a listener with ``store-to``): the calling and the
        called AE title, the instance and its SOP Class; a refused one is a failure."""
        path = os.path.abspath(self.mktemp())
        gw = await self.gateway(f"file:{path}", {"store-to": AET}, format="json")
        ds = fresh_test_file("CT_small.dcm")
        self.assertEqual(await c_store(gw, ds), 0x0000)
        ds.PatientName = "Other^Patient"  # same SOP Instance UID, other content: refused
        conflict = await c_store(gw, ds)
        self.assertNotEqual(conflict, 0x0000)

        def records() -> list[dict[str, Any]]:
            if not os.path.exists(path):
                return []
            with open(path, "rb") as f:
                return [json.loads(line.split(b"\xef\xbb\xbf", 1)[1]) for line in f.read().splitlines()]

        self.assertTrue(await eventually(lambda: len(records()) >= 2), gw.log_tail())
        stored, refused = records()
        self.assertEqual(
            (stored["service"], stored["event_code"], stored["action"], stored["outcome"]),
            ("C-STORE", "110104", "C", 0),
        )
        self.assertEqual(
            (stored["calling_aet"], stored["called_aet"], stored["aet"]), ("PYSCU", LISTENER_AET, AET)
        )
        self.assertEqual(
            (stored["instances"], stored["sop_classes"]), ([ds.SOPInstanceUID], [ds.SOPClassUID])
        )
        self.assertEqual((refused["status"], refused["outcome"]), (conflict, 8))

    async def test_tls_collector_with_node_certificates(self) -> None:
        """RFC 5425 as IHE ATNA has it: the gateway checks the collector's certificate
        (``trustRoots``) and presents its own (``certificate``, ``privateKey``), which the
        collector requires."""
        from twisted.internet import ssl

        pki = make_pki(os.path.abspath(self.mktemp()))
        with open(pki["collector-cert"], "rb") as f:
            cert = f.read()
        with open(pki["collector-key"], "rb") as f:
            key = f.read()
        with open(pki["ca"], "rb") as f:
            ca = ssl.Certificate.loadPEM(f.read())
        server_cert = ssl.PrivateCertificate.loadPEM(key + cert)
        # verify=True with the CA: a client without a certificate it signed is refused.
        options = server_cert.options(ca)
        frames: list[bytes] = []
        port = reactor.listenSSL(
            0, Factory.forProtocol(lambda: Collector(frames)), options, interface=peers.LOCALHOST
        )
        self.addCleanup(port.stopListening)
        endpoint = (
            f"tls:localhost:{port.getHost().port}:trustRoots={pki['trust']}"
            f":certificate={pki['gateway-cert']}:privateKey={pki['gateway-key']}"
        )
        gw = await self.gateway(endpoint)
        study, _, sop = await self.exercise(gw)
        self.assertTrue(await eventually(lambda: len(frames) >= 4), gw.log_tail())
        self.check_four(frames, study, sop)

    async def test_blocked_collector(self) -> None:
        """A collector that stops reading: the gateway's send buffer fills, then the
        queue; records beyond it are dropped and counted while the requests go on at
        full speed; once it reads again, what was queued arrives."""
        frames: list[bytes] = []
        collectors: list[Collector] = []

        def collector() -> Collector:
            made = Collector(frames)
            collectors.append(made)
            return made

        port = reactor.listenTCP(0, Factory.forProtocol(collector), interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        gw = await self.gateway(f"tcp:{peers.LOCALHOST}:{port.getHost().port}", **{"queue-size": 5})
        self.assertTrue(await eventually(lambda: bool(collectors)), gw.log_tail())
        collectors[0].transport.pauseProducing()  # type: ignore[union-attr]  # reads nothing more
        # Large records (the query string is in them, base64) fill the buffers sooner.
        padding = "x" * 12000
        timings = []
        sent = 0
        while not gw.log_lines("audit: queue full") and sent < 2000:
            for _ in range(20):
                started = time.monotonic()
                response = await gw.get(f"/aets/{AET}/studies?PatientName=P{sent}&padding={padding}")
                timings.append(time.monotonic() - started)
                self.assertEqual(response.code, 200)  # an unknown parameter is ignored
                sent += 1
        self.assertTrue(gw.log_lines("audit: queue full"), f"{sent} requests, no drop\n{gw.log_tail()}")
        timings.sort()
        self.assertLess(timings[len(timings) // 2], 0.1, timings[-5:])
        self.assertLess(timings[-1], 1.0, timings[-5:])
        collectors[0].transport.resumeProducing()  # type: ignore[union-attr]
        # Everything that was not dropped arrives, in order.
        self.assertTrue(await eventually(lambda: len(frames) >= 6), gw.log_tail())
        response = await gw.get(f"/aets/{AET}/studies?PatientName=after")
        self.assertEqual(response.code, 200)
        self.assertTrue(await eventually(lambda: bool(gw.log_lines("dropped while the queue was full"))))
        (burst,) = gw.log_lines("dropped while the queue was full")
        dropped = int(re.search(r"audit: (\d+) record", burst).group(1))  # type: ignore[union-attr]

        def names() -> list[str]:
            """The PatientName of each record's query, in the order they arrived."""
            queries = [summary(parse_message(f)[1])["query"][0] for f in frames]
            return [re.match(r"PatientName=([^&]*)", q).group(1) for q in queries]  # type: ignore[union-attr]

        self.assertTrue(await eventually(lambda: names()[-1:] == ["after"]), gw.log_tail())
        self.assertEqual(len(frames), sent + 1 - dropped)  # every record not dropped, once
        numbers = [int(n[1:]) for n in names()[:-1]]
        self.assertEqual(numbers, sorted(numbers))

"""TLS end to end, the gateway as a process (``twistd dicomrst``), with a test CA made here
(`tests.support.tls`; a second CA for the certificates that must be refused):

* HTTPS (``server.http.tls``) with client certificates, checked with ``curl``: one of our
  CA's gets in, none or another CA's does not; an ``ssl:`` endpoint string still serves;
* DICOM TLS on a listener (``server.dimse[].tls``): DCMTK ``echoscu`` and ``storescu`` (into
  a ``store-to`` listener) with a certificate of our CA, refused without one or with
  another CA's;
* DICOM TLS to a PACS (``aets[].tls``): QIDO-RS, WADO-RS (C-GET) and the health check
  through the gateway to Orthanc 1.10 with ``DicomTlsEnabled`` (which requires our client
  certificate); the PACS's certificate checked against the wrong CA, or no client
  certificate given, is a 502 naming TLS, and leaves no descriptor open; C-MOVE with
  Orthanc's C-STOREs coming back to a TLS listener;
* DICOM TLS to DCMTK ``storescp +tls`` as the PACS: STOW-RS stored there, the health
  check; no client certificate or the wrong CA fails naming TLS;
* a certificate file that is missing stops twistd with one line naming its key.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.datasets import part10
from tests.support.gateway import LISTENER_AET, Gateway, eventually, start_gateway
from tests.support.stow import BOUNDARY, fresh_test_file, multipart_body
from tests.support.tls import Authority, ClientPolicy, Issued
from tests.support.wado import ANY_SYNTAX, get_aet, instance_path, orthanc_data, parse_multipart

reactor: Any = _global_reactor

TIMEOUT = 120
ARCHIVE = "ARCHIVE"


class TlsTestCase(TestCase):
    timeout = TIMEOUT

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        self.ca = Authority.create(os.path.join(directory, "ours"))
        self.other = Authority.create(os.path.join(directory, "other"), "Other CA")
        self.server = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", client=True)
        self.intruder = self.other.issue("intruder", client=True)

    def listening(self, **more: Any) -> dict[str, Any]:
        """A listener's ``tls`` block: our server certificate, clients verified against our CA."""
        return {"cert": self.server.cert, "key": self.server.key, "ca": self.ca.ca, **more}

    def fd_count(self, gw: Gateway) -> int:
        return len(os.listdir(f"/proc/{gw.child.pid}/fd"))


async def curl(url: str, ca: str, client: Issued | None = None) -> tuple[int, str, str]:
    """``curl`` GET `url` trusting `ca` (presenting `client`); (exit code, body+status, stderr)."""
    args = ["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--cacert", ca]
    if client is not None:
        args += ["--cert", client.cert, "--key", client.key]
    out, err, code = await getProcessOutputAndValue(
        "curl", [*args, url], env=dict(os.environ), reactor=reactor
    )
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class HttpsTests(TlsTestCase):
    async def test_client_certificates(self) -> None:
        gw = await start_gateway(
            self, http={"tls": self.listening()}, https=ClientPolicy(self.ca.ca, self.client)
        )
        self.assertTrue(gw.url.startswith("https://"))
        self.assertEqual(len(gw.log_lines(r"HTTP listening on 127\.0\.0\.1:\d+ \(TLS\)")), 1, gw.log_tail())
        code, out, err = await curl(gw.url + "/", self.ca.ca, self.client)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200"), out)
        self.assertIn("version", out)
        # Without a certificate, or with another CA's, curl gets no response at all, and
        # the gateway logs why.
        for client, logged in ((None, "peer did not return a certificate"), (self.intruder, "verify failed")):
            code, out, err = await curl(gw.url + "/", self.ca.ca, client)
            self.assertNotEqual(code, 0, out)
            self.assertTrue(out.endswith("\n000"), out)
            self.assertRegex(err.lower(), "ssl|tls|alert", err)
            pattern = rf"TLS with 127\.0\.0\.1:\d+ failed: .*{logged}"
            self.assertTrue(await eventually(lambda p=pattern: len(gw.log_lines(p)) == 1), gw.log_tail())  # type: ignore[misc]
        # And curl that does not trust the gateway's CA refuses it.
        code, out, err = await curl(gw.url + "/", self.other.ca, self.client)
        self.assertEqual(code, 60, err)  # CURLE_PEER_FAILED_VERIFICATION

    async def test_stow_over_https_writes_https_urls(self) -> None:
        # A request body through the TLS layer, and the URLs the gateway writes say https.
        root = os.path.abspath(self.mktemp())
        gw = await start_gateway(
            self,
            [{"aet": ARCHIVE, "backend": "LOCAL", "path": root}],
            http={"tls": self.listening()},
            https=ClientPolicy(self.ca.ca, self.client),
        )
        study = generate_uid()
        ds = fresh_test_file("CT_small.dcm", study)
        response = await gw.request(
            "POST",
            f"/aets/{ARCHIVE}/studies/{study}",
            data=multipart_body([([("Content-Type", "application/dicom")], part10(ds))], BOUNDARY),
            headers={"Content-Type": b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY},
            timeout=60,
        )
        self.assertEqual(response.code, 200, response.body)
        url = f"https://{peers.LOCALHOST}:{gw.http_port}/aets/{ARCHIVE}/studies/{study}"
        self.assertEqual(response.json()["00081190"]["Value"], [url])
        retrieved = await gw.get(instance_path(ARCHIVE, study), headers={"Accept": ANY_SYNTAX})
        [part] = parse_multipart(retrieved.header("Content-Type"), retrieved.body).parts
        self.assertEqual(part.dataset().SOPInstanceUID, ds.SOPInstanceUID)

    async def test_a_stalled_handshake_is_closed_after_header_timeout(self) -> None:
        # The HTTP channel exists from the TCP connect on, so its header timeout also
        # bounds a client that never finishes (or starts) its TLS handshake.
        gw = await start_gateway(
            self,
            http={"tls": self.listening(), "header-timeout": 1000},
            https=ClientPolicy(self.ca.ca, self.client),
        )

        def stall() -> tuple[float, bytes]:
            with socket.create_connection((peers.LOCALHOST, gw.http_port), timeout=20) as sock:
                started = time.monotonic()
                sock.sendall(b"\x16\x03\x01\x02\x00")  # the head of a ClientHello, no more
                try:
                    data = sock.recv(1024)
                except ConnectionResetError:  # aborted, not closed: just as good
                    data = b""
                return time.monotonic() - started, data

        elapsed, data = await deferToThread(stall)
        self.assertEqual(data, b"")
        self.assertTrue(0.9 <= elapsed < 3, elapsed)

    async def test_without_ca_no_client_certificate_is_asked(self) -> None:
        tls = {"cert": self.server.cert, "key": self.server.key}
        gw = await start_gateway(self, http={"tls": tls}, https=ClientPolicy(self.ca.ca))
        code, out, err = await curl(gw.url + "/", self.ca.ca)
        self.assertEqual((code, out[-3:]), (0, "200"), err)

    async def test_an_ssl_endpoint_string_still_serves(self) -> None:
        port = peers.free_port()
        endpoint = f"ssl:{port}:interface=127.0.0.1:privateKey={self.server.key}:certKey={self.server.cert}"
        gw = await start_gateway(
            self, http={"endpoint": endpoint}, https=ClientPolicy(self.ca.ca), http_port=port
        )
        code, out, err = await curl(gw.url + "/", self.ca.ca)
        self.assertEqual((code, out[-3:]), (0, "200"), err)


class DimseListenerTests(TlsTestCase):
    """DCMTK 3.6.7 (its default profile: BCP 195, TLS 1.2 or later) against our listener."""

    def tls_args(self, client: Issued | None) -> list[str]:
        # +tls KEY CERT; +cf: the CA echoscu checks our certificate against (it requires one).
        who = ["+tls", client.key, client.cert] if client is not None else ["+tla"]
        return [*who, "+cf", self.ca.ca]

    async def test_echoscu(self) -> None:
        gw = await start_gateway(self, listener={"tls": self.listening()})
        self.assertEqual(len(gw.log_lines(rf"DIMSE listener {LISTENER_AET} listening on .* \(TLS\)")), 1)
        where = [peers.LOCALHOST, str(gw.dimse_port)]
        result = await peers.run_tool(
            self, ["echoscu", "-v", *self.tls_args(self.client), "-aec", LISTENER_AET, *where]
        )
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("Received Echo Response (Success)", result.stdout + result.stderr)
        before = self.fd_count(gw)
        refused = [
            ("no certificate", self.tls_args(None), "peer did not return a certificate"),
            ("another CA's", self.tls_args(self.intruder), "certificate verify failed"),
            ("no TLS", [], "wrong version number"),  # OpenSSL, reading plain DICOM
        ]
        for what, args, logged in refused:
            result = await peers.run_tool(self, ["echoscu", "-v", *args, "-aec", LISTENER_AET, *where])
            self.assertNotEqual(result.returncode, 0, f"{what}: {result.describe()}")
            self.assertNotIn("Echo Response", result.stdout + result.stderr, what)
            pattern = f"acceptor .* outcome=TLS failed: .*{logged}"
            found = await eventually(lambda p=pattern: bool(gw.log_lines(p)))  # type: ignore[misc]
            self.assertTrue(found, f"{what}: {gw.log_tail()}")
        self.assertTrue(await eventually(lambda: self.fd_count(gw) <= before), (before, self.fd_count(gw)))

    async def test_storescu_into_a_store_to_listener(self) -> None:
        root = os.path.abspath(self.mktemp())
        gw = await start_gateway(
            self,
            [{"aet": ARCHIVE, "backend": "LOCAL", "path": root}],
            listener={"store-to": ARCHIVE, "tls": self.listening()},
        )
        study = generate_uid()
        ds = fresh_test_file("CT_small.dcm", study)
        path = os.path.join(peers._temp_dir(self, "storescu"), "ct.dcm")
        ds.save_as(path, enforce_file_format=True)
        def storescu(client: Issued, file: str) -> list[str]:
            where = [peers.LOCALHOST, str(gw.dimse_port)]
            calling = ["-aet", "MODALITY", "-aec", LISTENER_AET]
            return ["storescu", "-v", *self.tls_args(client), *calling, *where, file]

        result = await peers.run_tool(self, storescu(self.client, path))
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("Received Store Response (Success)", result.stdout + result.stderr)
        stored = dcmread(os.path.join(root, study, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm"))
        self.assertEqual((stored.SOPInstanceUID, stored.PixelData), (ds.SOPInstanceUID, ds.PixelData))
        # The intruder stores nothing.
        other = fresh_test_file("CT_small.dcm", generate_uid())
        other_path = os.path.join(os.path.dirname(path), "other.dcm")
        other.save_as(other_path, enforce_file_format=True)
        result = await peers.run_tool(self, storescu(self.intruder, other_path))
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertFalse(os.path.exists(os.path.join(root, other.StudyInstanceUID)))


class PacsTests(TlsTestCase):
    """The gateway to Orthanc 1.10 over DICOM TLS; Orthanc requires a client certificate of
    our CA (``DicomTlsRemoteCertificateRequired``, its default)."""

    async def start(self, dimse_port: int | None = None) -> tuple[peers.Orthanc, Gateway, dict[str, Any]]:
        """Orthanc over TLS only, and a gateway with ORTHANC (TLS, our client certificate),
        WRONGCA (Orthanc's certificate checked against the other CA), NOCERT (no client
        certificate) and PLAIN (no TLS); with `dimse_port`, Orthanc knows our listener there
        as GATEWAY, over TLS, and ORTHANC retrieves by C-MOVE to it."""
        orthanc_cert = self.ca.issue("orthanc", server=True, client=True)
        config: dict[str, Any] = {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": orthanc_cert.cert,
            "DicomTlsPrivateKey": orthanc_cert.key,
            "DicomTlsTrustedCertificates": self.ca.ca,
            "DicomTlsRemoteCertificateRequired": True,
        }
        if dimse_port is not None:
            config["DicomModalities"] = {
                "GATEWAY": {
                    "AET": LISTENER_AET,
                    "Host": peers.LOCALHOST,
                    "Port": dimse_port,
                    "UseDicomTls": True,
                }
            }
        orthanc = await peers.start_orthanc(self, extra_config=config)
        data = orthanc_data()
        for item in data["ct"]:
            answer = await orthanc.upload(item.data)
            self.assertEqual(answer.get("Status"), "Success", answer)
        ours = {"ca": self.ca.ca, "cert": self.client.cert, "key": self.client.key}
        good = dict(get_aet("ORTHANC", orthanc.host, orthanc.dicom_port), tls=ours)
        listener = None
        if dimse_port is not None:
            good["wado-rs"] = {"retrieve": "move", "receivers": [LISTENER_AET], "timeout": 20_000}
            listener = {"tls": self.listening()}
        wrong_ca = dict(
            get_aet("WRONGCA", orthanc.host, orthanc.dicom_port), tls=dict(ours, ca=self.other.ca)
        )
        no_cert = dict(get_aet("NOCERT", orthanc.host, orthanc.dicom_port), tls={"ca": self.ca.ca})
        plain = get_aet("PLAIN", orthanc.host, orthanc.dicom_port)
        gw = await start_gateway(
            self, [good, wrong_ca, no_cert, plain], dimse_port=dimse_port, listener=listener
        )
        return orthanc, gw, data

    async def test_qido_wado_and_echo_over_tls(self) -> None:
        _, gw, data = await self.start()
        [ct] = data["ct"]
        health = await gw.get("/aets/ORTHANC")
        self.assertEqual(health.code, 200, health.body)
        found = await gw.get(f"/aets/ORTHANC/studies?StudyInstanceUID={ct.study}")
        self.assertEqual(found.code, 200, found.body)
        [study] = found.json()
        self.assertEqual(study["0020000D"]["Value"], [ct.study])
        response = await gw.get(
            instance_path("ORTHANC", ct.study), headers={"Accept": ANY_SYNTAX}, timeout=60
        )
        self.assertEqual(response.code, 200, response.body[:300])
        [part] = parse_multipart(response.header("Content-Type"), response.body).parts
        self.assertEqual(part.dataset().SOPInstanceUID, ct.sop)

    async def test_wado_over_c_move_tls_both_ways(self) -> None:
        # The C-MOVE goes out over TLS; Orthanc's C-STOREs come back to our TLS listener,
        # which verifies Orthanc's certificate against our CA.
        _, gw, data = await self.start(dimse_port=peers.free_port())
        [ct] = data["ct"]
        response = await gw.get(
            instance_path("ORTHANC", ct.study), headers={"Accept": ANY_SYNTAX}, timeout=60
        )
        self.assertEqual(response.code, 200, f"{response.body[:300]!r}\n{gw.log_tail()}")
        [part] = parse_multipart(response.header("Content-Type"), response.body).parts
        self.assertEqual(part.dataset().SOPInstanceUID, ct.sop)
        # The listener speaks only TLS (a plain echoscu is refused: DimseListenerTests).
        pattern = rf"association acceptor .* calling=ORTHANC called={LISTENER_AET} outcome=released"
        self.assertTrue(await eventually(lambda: len(gw.log_lines(pattern)) == 1), gw.log_tail())

    async def test_failed_handshakes_are_502_naming_tls_and_leak_nothing(self) -> None:
        _, gw, data = await self.start()
        [ct] = data["ct"]
        cases = [("WRONGCA", "certificate verify failed"), ("NOCERT", "")]
        for aet, reason in cases:
            response = await gw.get(f"/aets/{aet}/studies?StudyInstanceUID={ct.study}")
            self.assertEqual(response.code, 502, response.body)
            text = response.body.decode()
            self.assertIn(f"TLS with {aet}@{peers.LOCALHOST}:", text)
            self.assertIn(reason, text)
            health = await gw.get(f"/aets/{aet}")
            self.assertEqual(health.code, 502, health.body)
        # A plain association to the TLS port fails too, but not as TLS: it never tried.
        plain = await gw.get("/aets/PLAIN", timeout=30)
        self.assertIn(plain.code, (502, 504), plain.body)
        self.assertNotIn(b"TLS", plain.body)
        # Every failed connection is closed: twenty more leave the descriptors as they were.
        before = self.fd_count(gw)
        for _ in range(10):
            for aet, _reason in cases:
                response = await gw.get(f"/aets/{aet}/studies?StudyInstanceUID={ct.study}")
                self.assertEqual(response.code, 502, response.body)
        self.assertTrue(await eventually(lambda: self.fd_count(gw) <= before), (before, self.fd_count(gw)))
        # The good AET still works after all that.
        found = await gw.get(f"/aets/ORTHANC/studies?StudyInstanceUID={ct.study}")
        self.assertEqual(found.code, 200, found.body)


CONTENT_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY


class DcmtkPacsTests(TlsTestCase):
    """The gateway as the TLS client of DCMTK 3.6.7's ``storescp +tls`` (which requires a
    client certificate, ``-rc``): STOW-RS through the gateway stored there over TLS, the
    health check's C-ECHO; no client certificate, or the PACS's certificate checked
    against another CA, fails naming TLS (503 for the STOW-RS, 502 for the health check)
    and nothing is stored."""

    async def test_stow_and_echo_to_storescp_over_tls(self) -> None:
        scp_cert = self.ca.issue("storescp", server=True)
        scp = await peers.start_storescp(
            # --fork: a child per association, so the idle one the gateway's pool keeps to
            # STORESCP does not hold the others' handshakes in the listen queue.
            self,
            aet="STORESCP",
            extra_args=("--fork", "+tls", scp_cert.key, scp_cert.cert, "+cf", self.ca.ca, "-rc"),
        )
        where = {"host": scp.host, "port": scp.port}
        ours = {"cert": self.client.cert, "key": self.client.key, "check-hostname": False}
        gw = await start_gateway(
            self,
            [
                {"aet": "STORESCP", **where, "tls": {**ours, "ca": self.ca.ca}},
                {"aet": "NOCERT", **where, "tls": {"ca": self.ca.ca, "check-hostname": False}},
                {"aet": "WRONGCA", **where, "tls": {**ours, "ca": self.other.ca}},
            ],
        )
        health = await gw.get("/aets/STORESCP")
        self.assertEqual(health.code, 200, health.body)
        stored = []
        for aet in ("STORESCP", "NOCERT", "WRONGCA"):
            study = generate_uid()
            ds = fresh_test_file("CT_small.dcm", study)
            response = await gw.request(
                "POST",
                f"/aets/{aet}/studies/{study}",
                data=multipart_body([([("Content-Type", "application/dicom")], part10(ds))], BOUNDARY),
                headers={"Content-Type": CONTENT_TYPE},
                timeout=60,
            )
            if aet == "STORESCP":
                self.assertEqual(response.code, 200, response.body)
                stored.append(ds.SOPInstanceUID)
            else:
                # STOW-RS's answer when no association could be had for any instance.
                self.assertEqual(response.code, 503, (aet, response.body))
                self.assertIn(f"TLS with {aet}@", response.json()["error"], aet)
                health = await gw.get(f"/aets/{aet}")
                self.assertEqual(health.code, 502, health.body)
                self.assertIn(f"TLS with {aet}@", health.json()["error"], aet)
        assert scp.output_dir is not None
        received = [dcmread(os.path.join(scp.output_dir, name)) for name in os.listdir(scp.output_dir)]
        self.assertEqual([r.SOPInstanceUID for r in received], stored)


class StartupTests(TlsTestCase):
    async def test_a_missing_certificate_stops_the_gateway_naming_its_key(self) -> None:
        from tests.support.gateway import failed_start, gateway_config, write_config

        missing = os.path.abspath(self.mktemp())
        config = gateway_config(*peers.free_ports(2), http={"tls": {"cert": missing, "key": self.server.key}})
        directory, path = write_config(self, config)
        returncode, output = await failed_start(self, path, directory)
        self.assertGreater(returncode, 0, output)
        expected = f"dicomrst: config error: server.http.tls.cert: cannot read {missing!r}: No such file"
        self.assertIn(expected, output)
        self.assertNotIn("Traceback", output)

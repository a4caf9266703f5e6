"""Tests for STOW-RS over HTTP: routes, body streaming, statuses, response, clean-up.

The gateway's real site (`make_site`: GatewayRequest streams the body into the real
multipart parser, Part-10 checks and response code) runs on a StringTransport and a Clock.
The backend is the fake of tests.support.fakes, whose `store_instance` records what it was
handed: what is under test is the web layer, and the real C-STORE side is tested against
Orthanc, DCMTK and pynetdicom peers in tests.integration.test_stow_dimse_peers, and the web
layer in front of Orthanc in tests.integration.test_stow_web_orthanc.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dicomrst.backends import values as model
from dicomrst.backends.interfaces import IBackend
from dicomrst.errors import ServiceUnavailable
from dicomrst.stow.upload import SPOOL_PREFIX
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import RECEIVE_BUFFER, GatewaySite, make_site
from tests.support.fakes import FakeBackend
from tests.support.http import CLIENT
from tests.support.stow import expected_info, multipart_body, part10_bytes

BOUNDARY = b"stow-boundary-0123"
CONTENT_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
BASE = "http://gateway.example/aets/PACS"
DICOM = [("Content-Type", "application/dicom")]


class Client:
    """One HTTP/1.1 connection to the site, in memory."""

    def __init__(self, site: GatewaySite) -> None:
        self.transport = StringTransport(peerAddress=CLIENT)
        self.protocol = site.buildProtocol(CLIENT)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def head(
        self,
        path: str,
        content_type: bytes | None = CONTENT_TYPE,
        length: int | None = None,
        extra: bytes = b"",
    ) -> None:
        lines = [f"POST {path} HTTP/1.1".encode(), b"Host: gateway.example"]
        if content_type is not None:
            lines.append(b"Content-Type: " + content_type)
        lines.append(b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked")
        self.protocol.dataReceived(b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n")

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send_chunk(self, data: bytes) -> None:
        self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def post(
        self, path: str, body: bytes, content_type: bytes | None = CONTENT_TYPE, step: int | None = None
    ) -> None:
        self.head(path, content_type, len(body))
        step = step or len(body) or 1
        for i in range(0, len(body), step):
            self.send(body[i : i + step])

    @property
    def answered(self) -> bool:
        return b"\r\n\r\n" in self.transport.value()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        head, sep, body = self.transport.value().partition(b"\r\n\r\n")
        assert sep, f"no response yet: {self.transport.value()!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body

    def json(self) -> tuple[int, Any]:
        status, headers, body = self.response()
        if status in (200, 202, 409):
            assert headers["content-type"] == "application/dicom+json", headers
        return status, json.loads(body)


def instance(study: str = STUDY, series: str = SERIES, sop: str | None = None, **kwargs: Any) -> bytes:
    return part10_bytes(study=study, series=series, sop=sop, **kwargs)


def sop_of(data: bytes) -> str:
    return expected_info(data).sop_instance_uid


def item(sop: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [sop]},
    }
    out.update(fields)
    return out


def url(sop: str, study: str = STUDY, series: str = SERIES) -> dict[str, Any]:
    return {"vr": "UR", "Value": [f"{BASE}/studies/{study}/series/{series}/instances/{sop}"]}


def us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


class StowTestCase(SynchronousTestCase):
    max_upload_size: int | None = 50_000_000
    spool_threshold = 4096
    pool_size = 16

    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS", pool_size=self.pool_size)
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)
        self.app = GatewayApp(
            {"PACS": self.pacs},
            self.clock,
            stow_spool_dir=self.spool,
            stow_spool_threshold=self.spool_threshold,
        )
        self.site = make_site(
            self.app.resource(), self.clock, request_timeout=60, max_upload_size=self.max_upload_size
        )
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def spooled(self) -> list[str]:
        return sorted(n for n in os.listdir(self.spool) if n.startswith(SPOOL_PREFIX))

    def post(self, body: bytes, path: str = "/aets/PACS/studies", **kwargs: Any) -> Client:
        client = Client(self.site)
        client.post(path, body, **kwargs)
        return client

    def stow_lines(self) -> list[str]:
        """The STOW summary lines, without the request ID every line of a request ends with."""
        return [
            re.sub(r" request_id=\S+$", "", formatEvent(e))
            for e in self.logs
            if formatEvent(e).startswith("STOW ") and "part(s)" in formatEvent(e)
        ]


class SuccessTests(StowTestCase):
    def test_a_tcp_connection_is_read_in_large_pieces(self) -> None:
        class TcpLike(StringTransport):
            bufferSize = 64 * 1024  # as Twisted's TCP transports have it

        transport = TcpLike(peerAddress=CLIENT)
        protocol = self.site.buildProtocol(CLIENT)
        assert protocol is not None
        protocol.makeConnection(transport)
        self.assertEqual(transport.bufferSize, RECEIVE_BUFFER)

    def test_the_double_provides_ibackend(self) -> None:
        verifyObject(IBackend, self.pacs)

    def test_all_stored_is_200_with_the_store_instances_response(self) -> None:
        parts = [instance(), instance(pixel_bytes=20_000)]  # the second is spooled to a file
        client = self.post(multipart_body([(DICOM, p) for p in parts], BOUNDARY))
        status, body = client.json()
        sops = [sop_of(p) for p in parts]
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            {
                "00081190": {"vr": "UR", "Value": [f"{BASE}/studies/{STUDY}"]},
                "00081199": {"vr": "SQ", "Value": [item(s, **{"00081190": url(s)}) for s in sops]},
            },
        )
        # The backend got each whole Part-10 object, with the UIDs and offsets pydicom reads.
        self.assertEqual([data for _, data in self.pacs.received], parts)
        for (got, _), data in zip(self.pacs.received, parts, strict=True):
            info = expected_info(data)
            self.assertEqual(
                (
                    got.sop_class_uid,
                    got.sop_instance_uid,
                    got.study_instance_uid,
                    got.series_instance_uid,
                    got.transfer_syntax,
                    got.dataset_offset,
                    got.size,
                ),
                (
                    info.sop_class_uid,
                    info.sop_instance_uid,
                    info.study_instance_uid,
                    info.series_instance_uid,
                    info.transfer_syntax,
                    info.dataset_offset,
                    len(data),
                ),
            )
        small, large = (got for got, _ in self.pacs.received)
        self.assertIsNotNone(small.data)
        self.assertIsNone(small.path)
        self.assertIsNone(large.data)
        self.assertTrue(large.path.startswith(os.path.join(self.spool, SPOOL_PREFIX)))
        self.assertEqual(self.spooled(), [])
        self.assertEqual(
            self.stow_lines(),
            ["STOW PACS: 2 part(s), 2 stored (0 with warnings), 0 failed, 0 other failure(s) -> 200"],
        )

    def test_body_in_random_pieces_and_byte_by_byte(self) -> None:
        parts = [instance(pixel_bytes=10_000), instance(), instance(pixel_bytes=6000)]
        body = multipart_body([(DICOM, p) for p in parts], BOUNDARY, preamble=b"preamble", epilogue=b"end")
        rng = random.Random(3)
        for step in (1, rng.randint(2, 50), rng.randint(51, 3000)):
            self.pacs.received.clear()
            status, _ = self.post(body, step=step).json()
            self.assertEqual(status, 200)
            self.assertEqual([data for _, data in self.pacs.received], parts)
        self.assertEqual(self.spooled(), [])

    def test_chunked_upload(self) -> None:
        parts = [instance(pixel_bytes=8192), instance()]
        body = multipart_body([(DICOM, p) for p in parts], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies")
        for i in range(0, len(body), 1000):
            client.send_chunk(body[i : i + 1000])
        client.send(b"0\r\n\r\n")
        self.assertEqual(client.json()[0], 200)
        self.assertEqual([data for _, data in self.pacs.received], parts)

    def test_unquoted_boundary_and_study_route(self) -> None:
        data = instance()
        client = self.post(
            multipart_body([(DICOM, data)], b"abc"),
            f"/aets/PACS/studies/{STUDY}/",
            content_type=b"multipart/related; type=application/dicom; boundary=abc",
        )
        status, body = client.json()
        self.assertEqual(status, 200)
        self.assertEqual(body["00081190"], {"vr": "UR", "Value": [f"{BASE}/studies/{STUDY}"]})

    def test_instances_of_several_studies_leave_the_study_url_empty(self) -> None:
        parts = [instance(), instance(study="1.2.3.4", series="1.2.3.4.5")]
        status, body = self.post(multipart_body([(DICOM, p) for p in parts], BOUNDARY)).json()
        self.assertEqual(status, 200)
        self.assertEqual(body["00081190"], {"vr": "UR"})
        self.assertEqual(
            body["00081199"]["Value"][1]["00081190"], url(sop_of(parts[1]), "1.2.3.4", "1.2.3.4.5")
        )

    def test_body_is_not_kept_in_request_content(self) -> None:
        self.pacs.manual = True
        data = instance(pixel_bytes=50_000)
        body = multipart_body([(DICOM, data)], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies", length=len(body))
        client.send(body[:-10])
        [request] = client.protocol.requests
        self.assertEqual(request.content.getvalue(), b"")
        # Past the threshold, the part went to a file, and only there.
        self.assertEqual(len(self.spooled()), 1)
        client.send(body[-10:])
        self.pacs.fire()
        self.assertEqual(client.json()[0], 200)
        self.assertEqual(self.spooled(), [])

    def test_through_a_plain_site_the_buffered_body_gives_the_same_answer(self) -> None:
        # StubTreq runs the app on twisted.web's own Site and Request: no streaming hook.
        stub = StubTreq(self.app.resource())
        parts = [instance(), instance(pixel_bytes=9000)]
        d = stub.post(
            "http://gateway.example/aets/PACS/studies",
            data=multipart_body([(DICOM, p) for p in parts], BOUNDARY),
            headers={b"Content-Type": [CONTENT_TYPE]},
        )
        stub.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(response.code, 200)
        self.assertEqual(len(body["00081199"]["Value"]), 2)
        self.assertEqual([data for _, data in self.pacs.received], parts)
        self.assertEqual(self.spooled(), [])


class PartialTests(StowTestCase):
    def test_backend_failure_and_warning_make_202(self) -> None:
        ok, failed, warned = instance(), instance(), instance()
        self.pacs.statuses[sop_of(failed)] = model.FAILURE_OUT_OF_RESOURCES
        self.pacs.statuses[sop_of(warned)] = model.WARNING_COERCION
        status, body = self.post(multipart_body([(DICOM, p) for p in (ok, failed, warned)], BOUNDARY)).json()
        self.assertEqual(status, 202)
        self.assertEqual(
            body["00081198"], {"vr": "SQ", "Value": [item(sop_of(failed), **{"00081197": us(42752)})]}
        )
        self.assertEqual(
            body["00081199"],
            {
                "vr": "SQ",
                "Value": [
                    item(sop_of(ok), **{"00081190": url(sop_of(ok))}),
                    item(sop_of(warned), **{"00081190": url(sop_of(warned)), "00081196": us(45056)}),
                ],
            },
        )
        self.assertNotIn("0008119A", body)

    def test_only_warnings_is_202(self) -> None:
        data = instance()
        self.pacs.statuses[sop_of(data)] = model.WARNING_ELEMENTS_DISCARDED
        self.assertEqual(self.post(multipart_body([(DICOM, data)], BOUNDARY)).json()[0], 202)

    def test_text_part_fails_alone(self) -> None:
        ok = instance()
        parts = [([("Content-Type", "text/plain")], b"just some text\r\n"), (DICOM, ok)]
        status, body = self.post(multipart_body(parts, BOUNDARY)).json()
        self.assertEqual(status, 202)
        self.assertEqual(body["0008119A"], {"vr": "SQ", "Value": [{"00081197": us(0xC000)}]})
        self.assertEqual(len(body["00081199"]["Value"]), 1)
        self.assertNotIn("00081198", body)
        self.assertEqual([data for _, data in self.pacs.received], [ok])

    def test_dicom_content_under_another_content_type_fails_with_its_uids(self) -> None:
        odd, ok = instance(), instance()
        parts = [([("Content-Type", "application/octet-stream")], odd), ([], ok), (DICOM, ok)]
        status, body = self.post(multipart_body(parts, BOUNDARY)).json()
        self.assertEqual(status, 202)
        self.assertEqual(
            body["00081198"]["Value"],
            [
                item(sop_of(odd), **{"00081197": us(0xC000)}),
                item(sop_of(ok), **{"00081197": us(0xC000)}),  # no Content-Type: text/plain
            ],
        )
        self.assertEqual(len(self.pacs.received), 1)

    def test_garbage_declared_as_dicom_is_an_other_failure(self) -> None:
        parts = [(DICOM, b"\x00" * 300), (DICOM, instance())]
        status, body = self.post(multipart_body(parts, BOUNDARY)).json()
        self.assertEqual(status, 202)
        self.assertEqual(body["0008119A"]["Value"], [{"00081197": us(0xC000)}])

    def test_study_mismatch_fails_that_instance(self) -> None:
        right, wrong = instance(), instance(study="1.2.3.999", series="1.2.3.999.1")
        client = self.post(
            multipart_body([(DICOM, right), (DICOM, wrong)], BOUNDARY), f"/aets/PACS/studies/{STUDY}"
        )
        status, body = client.json()
        self.assertEqual(status, 202)
        self.assertEqual(body["00081198"]["Value"], [item(sop_of(wrong), **{"00081197": us(0xA901)})])
        self.assertEqual([data for _, data in self.pacs.received], [right])
        self.assertEqual(self.spooled(), [])

    def test_truncated_last_part_after_stored_ones(self) -> None:
        # The complete parts were handed to the backend while the body was arriving, so they
        # are reported; the broken remainder is one other failure (not a 400 that would hide them).
        ok = instance()
        body = multipart_body([(DICOM, ok), (DICOM, instance(pixel_bytes=9000))], BOUNDARY)
        status, json_body = self.post(body[:-3000]).json()
        self.assertEqual(status, 202)
        self.assertEqual(len(json_body["00081199"]["Value"]), 1)
        self.assertEqual(json_body["0008119A"]["Value"], [{"00081197": us(0xC000)}])
        self.assertEqual(self.spooled(), [])


class ConflictTests(StowTestCase):
    def test_all_failed_is_409(self) -> None:
        parts = [instance(), instance()]
        for p in parts:
            self.pacs.statuses[sop_of(p)] = model.FAILURE_SOP_CLASS_NOT_SUPPORTED
        status, body = self.post(multipart_body([(DICOM, p) for p in parts], BOUNDARY)).json()
        self.assertEqual(status, 409)
        self.assertEqual(
            body,
            {
                "00081190": {"vr": "UR"},
                "00081198": {"vr": "SQ", "Value": [item(sop_of(p), **{"00081197": us(290)}) for p in parts]},
            },
        )
        self.assertEqual(
            self.stow_lines(),
            ["STOW PACS: 2 part(s), 0 stored (0 with warnings), 2 failed, 0 other failure(s) -> 409"],
        )

    def test_only_other_studies_is_409(self) -> None:
        wrong = instance(study="1.2.3.999")
        client = self.post(multipart_body([(DICOM, wrong)], BOUNDARY), f"/aets/PACS/studies/{STUDY}")
        status, body = client.json()
        self.assertEqual(status, 409)
        self.assertEqual(body["00081190"], {"vr": "UR", "Value": [f"{BASE}/studies/{STUDY}"]})
        self.assertEqual(self.pacs.received, [])

    def test_backend_unavailable_for_all_is_503(self) -> None:
        parts = [instance(), instance(), instance()]
        self.pacs.manual = True
        client = self.post(multipart_body([(DICOM, p) for p in parts], BOUNDARY))
        # All three went out at once (pool size 16); each errbacks.
        self.assertEqual(len(self.pacs.pending), 3)
        for _, d in list(self.pacs.pending):
            d.errback(Failure(ServiceUnavailable("no association to PACS within 10000 ms", retry_after=10)))
        status, headers, body = client.response()
        self.assertEqual(status, 503)
        self.assertEqual(headers["retry-after"], "10")
        self.assertIn("no association", json.loads(body)["error"])

    def test_unavailable_for_some_is_a_failure_reason(self) -> None:
        ok, busy = instance(), instance()
        self.pacs.statuses[sop_of(busy)] = ServiceUnavailable("pool exhausted")
        status, body = self.post(multipart_body([(DICOM, ok), (DICOM, busy)], BOUNDARY)).json()
        self.assertEqual(status, 202)
        self.assertEqual(body["00081198"]["Value"], [item(sop_of(busy), **{"00081197": us(0xA700)})])


class RejectedRequestTests(StowTestCase):
    max_upload_size = 100_000

    def assertError(self, client: Client, status: int, message: str) -> None:
        got, headers, body = client.response()
        self.assertEqual(got, status, body)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertIn(message, json.loads(body)["error"])
        self.assertEqual(self.pacs.received, [])
        self.assertEqual(self.spooled(), [])

    def assertNextRequestWorks(self) -> None:
        client = self.post(multipart_body([(DICOM, instance())], BOUNDARY))
        self.assertEqual(client.json()[0], 200)

    def test_malformed_bodies_are_400(self) -> None:
        one = multipart_body([(DICOM, instance(pixel_bytes=8192))], BOUNDARY)
        cases = [
            (one, b'multipart/related; type="application/dicom"', "no boundary parameter"),
            (
                one,
                b'multipart/related; type="application/dicom"; boundary="bad;"',
                "invalid multipart boundary",
            ),
            (
                one,
                b'multipart/related; type="application/dicom"; boundary=other',
                "does not contain the multipart",
            ),
            (one[:-2000], CONTENT_TYPE, "truncated"),
            (b"--" + BOUNDARY + b"--\r\n", CONTENT_TYPE, "no parts"),
            (b"", CONTENT_TYPE, "does not contain the multipart"),
        ]
        for body, content_type, message in cases:
            self.assertError(self.post(body, content_type=content_type), 400, message)
        self.assertNextRequestWorks()

    def test_other_media_types_are_415(self) -> None:
        body = b'[{"00080016": {"vr": "UI", "Value": ["1.2"]}}]'
        cases = [
            (b"application/dicom+json", "metadata and bulk data"),
            (b'multipart/related; type="application/dicom+xml"; boundary=x', "metadata and bulk data"),
            (b"text/plain", "not supported"),
            (b'multipart/related; type="image/jpeg"; boundary=x', "not supported"),
            (None, "a Content-Type is required"),
        ]
        for content_type, message in cases:
            self.assertError(self.post(body, content_type=content_type), 415, message)

    def test_unknown_aet_is_404(self) -> None:
        self.assertError(
            self.post(multipart_body([(DICOM, instance())], BOUNDARY), "/aets/NOPE/studies"),
            404,
            "unknown AET",
        )

    def test_declared_length_over_the_limit_is_413_before_the_body(self) -> None:
        client = Client(self.site)
        client.head("/aets/PACS/studies", length=100_001, extra=b"Expect: 100-continue\r\n")
        self.assertError(client, 413, "larger than max-upload-size (100000 bytes)")
        self.assertTrue(client.transport.disconnecting)
        self.assertNotIn(b"100 Continue", client.transport.value())
        _, headers, _ = client.response()
        self.assertEqual(headers["connection"], "close")
        # The body the client may still send is ignored.
        client.send(b"x" * 1000)
        self.assertEqual(client.transport.value().count(b"HTTP/1.1"), 1)
        self.assertNextRequestWorks()

    def test_at_the_limit_is_taken(self) -> None:
        body = multipart_body([(DICOM, instance(pixel_bytes=8192))], BOUNDARY)
        padding = b"p" * (self.max_upload_size - len(body) - 2)
        exact = padding + b"\r\n" + body
        self.assertEqual(len(exact), self.max_upload_size)
        self.assertEqual(self.post(exact).json()[0], 200)

    def test_chunked_body_over_the_limit_is_413(self) -> None:
        big = instance(pixel_bytes=150_000)
        body = multipart_body([(DICOM, big)], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies")
        for i in range(0, 90_000, 10_000):
            client.send_chunk(body[i : i + 10_000])
        self.assertEqual(len(self.spooled()), 1)  # spooled while it arrived
        self.assertFalse(client.answered)
        client.send_chunk(body[90_000:110_000])
        self.clock.advance(0)
        self.assertError(client, 413, "larger than max-upload-size")
        self.assertTrue(client.transport.disconnecting)
        self.assertNextRequestWorks()

    def test_chunked_body_completing_in_the_read_that_crosses_the_limit(self) -> None:
        body = multipart_body([(DICOM, instance(pixel_bytes=120_000))], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies")
        client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertError(client, 413, "larger than max-upload-size")
        self.clock.advance(0)
        self.assertEqual(client.transport.value().count(b"HTTP/1.1"), 1)


class CutOffTests(StowTestCase):
    """A chunked upload that passes max-upload-size after some instances were stored
    answered 413 as if nothing was (issue 11).  The complete parts are now reported as
    the response to a body that ended there: 202 (or 409 if none was stored), the part
    cut off and the rest as failures 0xA700, and a Warning saying why."""

    max_upload_size = 100_000

    def upload(self, parts: list[bytes], step: int = 10_000) -> Client:
        body = multipart_body([(DICOM, p) for p in parts], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies")
        sent = 0
        while sent < len(body) and not client.transport.disconnecting:
            client.send_chunk(body[sent : sent + step])
            sent += step
            self.clock.advance(0)
        return client

    def assertCutOff(self, client: Client, status: int) -> dict[str, Any]:
        got, headers, raw = client.response()
        self.assertEqual(got, status, raw)
        self.assertEqual(headers["content-type"], "application/dicom+json")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(
            headers["warning"],
            f"299 {BASE}: request body larger than max-upload-size (100000 bytes); "
            "the rest of the body was not read",
        )
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.spooled(), [])
        return json.loads(raw)  # type: ignore[no-any-return]

    def test_instances_stored_before_the_limit_are_reported(self) -> None:
        first, second, third = (
            instance(pixel_bytes=20_000),
            instance(pixel_bytes=20_000),
            instance(pixel_bytes=150_000),
        )
        body = self.assertCutOff(self.upload([first, second, third]), 202)
        self.assertEqual([data for _, data in self.pacs.received], [first, second])
        self.assertEqual(
            body["00081199"]["Value"],
            [item(sop_of(p), **{"00081190": url(sop_of(p))}) for p in (first, second)],
        )
        # Cut off in its pixel data: its file meta named it.
        self.assertEqual(body["00081198"]["Value"], [item(sop_of(third), **{"00081197": us(0xA700)})])
        self.assertNotIn("0008119A", body)
        cut, summary = self.stow_lines()
        self.assertEqual(
            cut,
            "STOW PACS: request body larger than max-upload-size (100000 bytes): 2 complete part(s) kept, "
            "the rest not read",
        )
        self.assertIn("2 stored (0 with warnings), 1 failed, 0 other failure(s) -> 202", summary)

    def test_a_part_cut_off_before_its_uids_is_an_other_failure(self) -> None:
        first = instance(pixel_bytes=20_000)
        body = self.assertCutOff(self.upload([first, b"x" * 150_000]), 202)
        self.assertEqual(len(body["00081199"]["Value"]), 1)
        self.assertEqual(body["0008119A"]["Value"], [{"00081197": us(0xA700)}])

    def test_stores_in_flight_are_waited_for(self) -> None:
        self.pacs.manual = True
        first, second = instance(pixel_bytes=20_000), instance(pixel_bytes=20_000)
        client = self.upload([first, second, instance(pixel_bytes=150_000)])
        self.assertFalse(client.answered)
        self.pacs.fire()
        self.assertFalse(client.answered)
        self.pacs.fire(model.WARNING_COERCION)
        body = self.assertCutOff(client, 202)
        self.assertEqual(
            [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]], [sop_of(first), sop_of(second)]
        )

    def test_none_stored_is_409(self) -> None:
        first = instance(pixel_bytes=20_000)
        self.pacs.statuses[sop_of(first)] = model.FAILURE_SOP_CLASS_NOT_SUPPORTED
        body = self.assertCutOff(self.upload([first, instance(pixel_bytes=150_000)]), 409)
        self.assertNotIn("00081199", body)
        self.assertEqual([i["00081197"]["Value"] for i in body["00081198"]["Value"]], [[0x0122], [0xA700]])

    def test_the_connection_is_not_read_further(self) -> None:
        client = self.upload([instance(pixel_bytes=20_000), instance(pixel_bytes=150_000)])
        answered = client.transport.value()
        client.send_chunk(b"x" * 10_000)
        client.send(b"0\r\n\r\n")
        self.clock.advance(1)
        self.assertEqual(client.transport.value(), answered)


class FlowTests(StowTestCase):
    pool_size = 2

    def test_stores_start_while_the_body_arrives_and_at_most_pool_size_at_once(self) -> None:
        self.pacs.manual = True
        parts = [instance() for _ in range(6)]
        body = multipart_body([(DICOM, p) for p in parts], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies", length=len(body))
        first_end = body.index(b"--" + BOUNDARY, 10) + len(BOUNDARY) + 2
        client.send(body[:first_end])
        # The first part is complete: it is being stored before the rest has arrived.
        self.assertEqual([d for _, d in self.pacs.received], parts[:1])
        client.send(body[first_end:-5])
        # Two in flight (pool.size), the rest waits; reading stopped behind them.
        self.assertEqual(len(self.pacs.pending), 2)
        self.assertEqual(client.transport.producerState, "paused")
        fired = 0
        while client.transport.producerState == "paused":
            self.pacs.fire()
            fired += 1
            self.assertEqual(len(self.pacs.pending), 2)
        # Reading resumes once fewer than two parts wait (parts 3 to 5 waited: the sixth is
        # not complete without the last bytes).
        self.assertEqual(fired, 2)
        client.send(body[-5:])
        self.assertFalse(client.answered)
        while self.pacs.pending:
            self.assertLessEqual(len(self.pacs.pending), 2)
            self.pacs.fire()
            fired += 1
        self.assertEqual(fired, 6)
        self.assertEqual(client.json()[0], 200)
        self.assertEqual([d for _, d in self.pacs.received], parts)

    def test_client_gone_mid_upload(self) -> None:
        self.pacs.manual = True
        parts = [instance(pixel_bytes=8192) for _ in range(5)]
        body = multipart_body([(DICOM, p) for p in parts], BOUNDARY)
        client = Client(self.site)
        client.head("/aets/PACS/studies", length=len(body))
        client.send(body[: len(body) - 3000])
        self.assertEqual(len(self.pacs.pending), 2)
        self.assertGreaterEqual(len(self.spooled()), 3)
        client.protocol.connectionLost(Failure(ConnectionError("client went away")))
        # Instances already handed to the backend are not cancelled; nothing else is sent.
        self.assertEqual(self.pacs.store_cancels, 0)
        self.assertEqual(len(self.spooled()), 2)  # the two being stored still need theirs
        self.pacs.fire()
        self.pacs.fire()
        self.assertEqual(len(self.pacs.received), 2)
        self.assertEqual(self.spooled(), [])
        self.assertEqual(self.site.inflight, 0)
        ended = [formatEvent(e) for e in self.logs if "before its response" in formatEvent(e)]
        self.assertEqual(
            ended,
            ["STOW PACS: request ended before its response (5 parts): 2 stored, 0 failed, 3 not stored"],
        )

    def test_request_timeout_while_storing_is_504_and_the_store_finishes(self) -> None:
        self.pacs.manual = True
        client = self.post(multipart_body([(DICOM, instance(pixel_bytes=8192))], BOUNDARY))
        self.clock.advance(60)
        status, _, _ = client.response()
        self.assertEqual(status, 504)
        self.assertEqual(self.pacs.store_cancels, 0)
        self.assertEqual(len(self.spooled()), 1)
        self.pacs.fire()
        self.assertEqual(self.spooled(), [])

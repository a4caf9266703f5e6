"""STOW-RS over real HTTP: ``twistd dicomrst`` (its real DIMSE backend) in front of Orthanc.

The web layer alone (routes, body streaming, statuses, clean-up) is tested in memory in
tests/unit/test_stow_web.py.
"""

from __future__ import annotations

import io
import os
from typing import Any

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from twisted.internet import protocol, task, threads
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from dicomrst.stow.upload import SPOOL_PREFIX
from tests.support import peers
from tests.support.datasets import assert_same_dataset, part10
from tests.support.gateway import INTEGRATION_TIMEOUT, Gateway, pacs_aet, start_gateway
from tests.support.stow import TEST_FILES, OrthancStored, fresh_test_file, multipart_body, part10_bytes

BOUNDARY = b"stow-boundary-0123"
CONTENT_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
DICOM = [("Content-Type", "application/dicom")]

reactor: Any = _reactor


def us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


# -- the gateway as a process, Orthanc behind it ---------------------------------------------


class OrthancStowTests(OrthancStored, TestCase):
    """``twistd dicomrst`` (its real DIMSE backend) in front of Orthanc, over real HTTP.

    The gateway's temporary directory is one of the test's own, so its spool files can be
    counted; Orthanc's REST API says what was really stored.
    """

    timeout = INTEGRATION_TIMEOUT

    async def start(self, max_upload_size: int = 20_000_000) -> tuple[peers.Orthanc, Gateway]:
        orthanc = await peers.start_orthanc(self)
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        previous = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = self.tmp  # read by the gateway process when it starts
        try:
            gateway = await start_gateway(
                self,
                [pacs_aet(orthanc.aet, orthanc.host, orthanc.dicom_port)],
                http={"max-upload-size": max_upload_size},
            )
        finally:
            if previous is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = previous
        return orthanc, gateway

    def spooled(self) -> list[str]:
        return [n for n in os.listdir(self.tmp) if n.startswith(SPOOL_PREFIX)]

    async def test_upload_is_stored_in_orthanc_unchanged(self) -> None:
        orthanc, gateway = await self.start()
        study = generate_uid()
        datasets = [fresh_test_file(name, study) for name in TEST_FILES.values()]
        big = dcmread(io.BytesIO(part10_bytes(study=study, series=generate_uid(), pixel_bytes=3_000_000)))
        datasets.append(big)  # over the 1 MiB threshold: spooled to a file
        parts = [(DICOM, part10(ds)) for ds in datasets]
        parts.insert(1, ([("Content-Type", "text/plain")], b"not an instance"))
        response = await gateway.request(
            "POST",
            f"/aets/{orthanc.aet}/studies/{study}",
            data=multipart_body(parts, BOUNDARY),
            headers={"Content-Type": CONTENT_TYPE},
            timeout=60,
        )
        self.assertEqual(response.code, 202, response.body)
        self.assertEqual(response.header("Content-Type"), "application/dicom+json")
        body = response.json()
        base = f"{gateway.url}/aets/{orthanc.aet}"
        self.assertEqual(body["00081190"], {"vr": "UR", "Value": [f"{base}/studies/{study}"]})
        self.assertEqual(body["0008119A"], {"vr": "SQ", "Value": [{"00081197": us(0xC000)}]})
        referenced = body["00081199"]["Value"]
        self.assertEqual(
            [i["00081155"]["Value"][0] for i in referenced], [str(ds.SOPInstanceUID) for ds in datasets]
        )
        for ds in datasets:
            got = await self.orthanc_dataset(orthanc, str(ds.SOPInstanceUID))
            assert_same_dataset(self, got, ds, str(ds.SOPInstanceUID))
        self.assertEqual(self.spooled(), [])
        n = len(datasets)
        lines = gateway.log_lines(rf"STOW ORTHANC study .*: {n + 1} part\(s\), {n} stored .* 1 other failure")
        self.assertEqual(len(lines), 1, gateway.log_tail())

    async def test_dicomweb_client_store_instances(self) -> None:
        orthanc, gateway = await self.start()
        study = generate_uid()
        datasets = [fresh_test_file("CT_small.dcm", study), fresh_test_file("MR_small.dcm", study)]
        client = DICOMwebClient(f"{gateway.url}/aets/{orthanc.aet}")
        self.addCleanup(client._session.close)
        answer = await threads.deferToThread(
            client.store_instances, datasets=datasets, study_instance_uid=study
        )
        stored = [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence]
        self.assertEqual(stored, [str(ds.SOPInstanceUID) for ds in datasets])
        self.assertNotIn("FailedSOPSequence", answer)
        for ds in datasets:
            assert_same_dataset(self, await self.orthanc_dataset(orthanc, str(ds.SOPInstanceUID)), ds)

    async def test_too_large_and_malformed_bodies_then_the_next_request_works(self) -> None:
        orthanc, gateway = await self.start(max_upload_size=1_000_000)
        path = f"/aets/{orthanc.aet}/studies"
        # Declared too large: answered from the headers alone (the body is never sent).
        status, head = await raw_request(
            gateway.http_port, path, b"Content-Length: 2000000\r\nExpect: 100-continue\r\n"
        )
        self.assertEqual(status, 413, head)
        self.assertNotIn(b"100 Continue", head)
        # Chunked past the limit: 413 while it is being sent.
        big = multipart_body([(DICOM, part10_bytes(pixel_bytes=1_500_000))], BOUNDARY)
        status, head = await raw_request(
            gateway.http_port, path, b"Transfer-Encoding: chunked\r\n", chunked_body=big
        )
        self.assertEqual(status, 413, head)
        truncated = multipart_body([(DICOM, part10_bytes(pixel_bytes=10_000))], BOUNDARY)[:-500]
        response = await gateway.request("POST", path, data=truncated, headers={"Content-Type": CONTENT_TYPE})
        self.assertEqual(response.code, 400, response.body)
        self.assertIn("truncated", response.json()["error"])
        response = await gateway.request(
            "POST", path, data=b"{}", headers={"Content-Type": "application/dicom+json"}
        )
        self.assertEqual(response.code, 415, response.body)
        ds = fresh_test_file("CT_small.dcm")
        response = await gateway.request(
            "POST",
            path,
            data=multipart_body([(DICOM, part10(ds))], BOUNDARY),
            headers={"Content-Type": CONTENT_TYPE},
        )
        self.assertEqual(response.code, 200, response.body)
        assert_same_dataset(self, await self.orthanc_dataset(orthanc, str(ds.SOPInstanceUID)), ds)
        self.assertEqual(self.spooled(), [])


class _RawClient(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(self.received)


async def raw_request(
    port: int, path: str, framing: bytes, chunked_body: bytes | None = None
) -> tuple[int, bytes]:
    """POST headers (and a chunked body, 64 KiB a chunk, while the connection lasts) over a raw
    TCP connection; return the status and what came back, once the gateway closed."""
    client = _RawClient()
    endpoint = TCP4ClientEndpoint(reactor, peers.LOCALHOST, port)
    await connectProtocol(endpoint, client)
    assert client.transport is not None
    client.transport.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Content-Type: "
        + CONTENT_TYPE
        + b"\r\n"
        + framing
        + b"\r\n"
    )
    if chunked_body is not None:
        for i in range(0, len(chunked_body), 65536):
            if client.done.called:
                break
            chunk = chunked_body[i : i + 65536]
            client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await task.deferLater(reactor, 0.001, lambda: None)
    received = await client.done.addTimeout(30, reactor)
    head = received.split(b"\r\n\r\n", 1)[0]
    return int(head.split(b" ", 2)[1]), received

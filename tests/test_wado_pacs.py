"""WADO-RS instance retrieves over C-GET, end to end: the gateway as a process, real peers.

The gateway runs as ``twistd dicomrst`` (tests/support/gateway.py) with ``wado-rs.retrieve:
get`` against Orthanc (pydicom's test files and a generated study, each given fresh UIDs) and
against the pynetdicom PACS of tests/support/pacs/ (its get-* profiles, which serve generated
instances that `pacs.datasets.get_instance` rebuilds here for comparison). Every part of every
response is parsed as a Part-10 object and its data set compared, element by element and pixel
data included, with the original.

Backpressure and disconnects use a raw socket in a thread, so the client can read slowly, stop
reading, or vanish, while the PACS's event log shows how far the C-STORE sub-operations got.
"""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
import treq
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed

from tests.support import peers
from tests.support.gateway import Gateway, Response, eventually, pacs_aet, start_gateway
from tests.support.pacs.datasets import get_instance, get_series_uid, get_sop_uid, get_study_uid

reactor: Any = _global_reactor

TIMEOUT = 180
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
PART_CONTENT_TYPE = f"application/dicom; transfer-syntax={EXPLICIT_VR_LE}"
RESPONSE_CONTENT_TYPE = re.compile(
    r'^multipart/related; type="application/dicom"; boundary=([0-9A-Za-z]{1,70})$'
)
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
PACS_AET = "PYGET"


# -- multipart ---------------------------------------------------------------------------------


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def location(self) -> str:
        return self.headers.get("Content-Location", "")

    def dataset(self) -> Dataset:
        """The part as a Part-10 file: preamble, DICM, file meta (pydicom insists on all)."""
        return dcmread(io.BytesIO(self.body))


@dataclass
class Multipart:
    parts: list[Part]
    closed: bool  # the close delimiter ended the body


def parse_multipart(content_type: str | None, body: bytes) -> Multipart:
    """Split a ``multipart/related`` body; a body cut short yields the parts so far, unclosed."""
    match = RESPONSE_CONTENT_TYPE.match(content_type or "")
    if match is None:
        raise AssertionError(f"not a multipart/related DICOM content type: {content_type!r}")
    delimiter = b"--" + match.group(1).encode("ascii")
    if not body.startswith(delimiter + b"\r\n"):
        raise AssertionError(f"the body does not start with the delimiter: {body[:100]!r}")
    chunks = body[len(delimiter) :].split(b"\r\n" + delimiter)
    parts = []
    closed = False
    for i, chunk in enumerate(chunks):
        if chunk.startswith(b"--"):
            closed = chunk == b"--\r\n" and i == len(chunks) - 1
            if not closed:
                raise AssertionError(f"data after the close delimiter: {chunk[:100]!r}")
            break
        if not chunk.startswith(b"\r\n"):
            raise AssertionError(f"a delimiter not followed by CRLF: {chunk[:100]!r}")
        head, _, payload = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("ascii").split("\r\n"))
        parts.append(Part(headers, payload))
    return Multipart(parts, closed)


# -- data sets ---------------------------------------------------------------------------------


#: Data Set Trailing Padding, which any application may drop (PS3.5 7.2); CT_small has it
#: and Orthanc's C-STORE (DCMTK) leaves it out.
TRAILING_PADDING = 0xFFFCFFFC


def assert_same_dataset(case: TestCase, got: Dataset, want: Dataset, where: str = "") -> None:
    """Every element outside group 0002 (but trailing padding), its VR and value, recursively."""

    def compared(ds: Dataset) -> list[Any]:
        return sorted(tag for tag in ds.keys() if tag.group != 0x0002 and tag != TRAILING_PADDING)

    got_tags, want_tags = compared(got), compared(want)
    case.assertEqual(got_tags, want_tags, f"{where}: different elements")
    for tag in want_tags:
        a, b = got[tag], want[tag]
        case.assertEqual(a.VR, b.VR, f"{where} {tag}: VR")
        if a.VR == "SQ":
            case.assertEqual(len(a.value), len(b.value), f"{where} {tag}: items")
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                assert_same_dataset(case, x, y, f"{where} {tag}[{i}]")
        else:
            case.assertEqual(a.value, b.value, f"{where} {tag} {a.keyword}: value")


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@dataclass
class Stored:
    """An instance uploaded to Orthanc: its UIDs and the bytes sent."""

    label: str
    study: str
    series: str
    sop: str
    data: bytes = field(repr=False)
    stored_ts: str = EXPLICIT_VR_LE

    def dataset(self) -> Dataset:
        return dcmread(io.BytesIO(self.data))


def fresh(ds: Dataset, label: str, study: str | None = None, series: str | None = None) -> Stored:
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return Stored(
        label,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        part10(ds),
        str(ds.file_meta.TransferSyntaxUID),
    )


def orthanc_data() -> dict[str, list[Stored]]:
    """CT_small (Explicit VR LE), MR_small_implicit (Implicit VR LE), and a generated study of
    2 series x 3 instances, each study with fresh UIDs."""
    ct = fresh(dcmread(get_testdata_file("CT_small.dcm")), "ct")
    mr = fresh(dcmread(get_testdata_file("MR_small_implicit.dcm")), "mr")
    assert mr.stored_ts == IMPLICIT_VR_LE, mr.stored_ts
    study = generate_uid()
    multi = []
    for s in range(2):
        series = generate_uid()
        for i in range(3):
            multi.append(fresh(get_instance(s, i, 32, 24), f"gen{s}.{i}", study, series))
    return {"ct": [ct], "mr": [mr], "multi": multi}


# -- the gateway -------------------------------------------------------------------------------


def get_aet(
    aet: str, host: str, port: int, wado_timeout_ms: int = 20_000, pool_size: int | None = None
) -> dict[str, Any]:
    config = pacs_aet(aet, host, port, timeout_ms=5000)
    config["wado-rs"] = {"retrieve": "get", "timeout": wado_timeout_ms}
    if pool_size is not None:
        config["pool"]["size"] = pool_size
    return config


def instance_path(aet: str, study: str, series: str | None = None, sop: str | None = None) -> str:
    path = f"/aets/{aet}/studies/{study}"
    if series:
        path += f"/series/{series}"
    if sop:
        path += f"/instances/{sop}"
    return path


@dataclass
class Partial:
    """A response read as far as it went."""

    code: int
    content_type: str | None
    body: bytes
    error: BaseException | None


async def read_partial(gw: Gateway, path: str, **kwargs: Any) -> Partial:
    response = await gw.http.get(gw.url + path, timeout=60, **kwargs)
    chunks: list[bytes] = []
    error: BaseException | None = None
    try:
        await treq.collect(response, chunks.append)
    except Exception as e:
        error = e
    values = response.headers.getRawHeaders("Content-Type")
    return Partial(response.code, values[-1] if values else None, b"".join(chunks), error)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


# -- a raw HTTP client (blocking; run it in a thread) ------------------------------------------


def parse_http(raw: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, de-chunked body, whether the chunked body was complete)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") != "chunked":
        return status, headers, rest, True
    body = bytearray()
    pos = 0
    while True:
        end = rest.find(b"\r\n", pos)
        if end < 0:
            return status, headers, bytes(body), False
        size = int(rest[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            return status, headers, bytes(body), True
        body += rest[pos : pos + size]
        if len(rest) < pos + size + 2:
            return status, headers, bytes(body), False
        pos += size + 2


@dataclass
class Sample:
    seconds: float
    received: int
    stores: int
    rss_mb: float


class RawClient:
    """One GET on a socket with a small receive buffer, read as the caller says."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.settimeout(30)
        self.sock.connect((peers.LOCALHOST, port))
        request = f"GET {path} HTTP/1.1\r\nHost: {peers.LOCALHOST}:{port}\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode("ascii"))
        self.data = bytearray()
        self.started = time.monotonic()

    def slowly(
        self, seconds: float, sample: Callable[[float, int], Sample], chunk: int = 4096
    ) -> list[Sample]:
        """Read `chunk` bytes every 50 ms for `seconds`, sampling every ~0.25 s."""
        samples = []
        end = time.monotonic() + seconds
        next_sample = 0.0
        while time.monotonic() < end:
            piece = self.sock.recv(chunk)
            if not piece:
                break
            self.data += piece
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(now - self.started, len(self.data)))
                next_sample = now + 0.25
            time.sleep(0.05)
        return samples

    def until(self, received: int) -> None:
        while len(self.data) < received:
            piece = self.sock.recv(65536)
            if not piece:
                return
            self.data += piece

    def rest(self) -> bytes:
        while True:
            piece = self.sock.recv(1 << 20)
            if not piece:
                break
            self.data += piece
        self.sock.close()
        return bytes(self.data)

    def close(self) -> None:
        self.sock.close()


# -- test cases --------------------------------------------------------------------------------


class RetrieveTestCase(TestCase):
    timeout = TIMEOUT

    def assert_multipart(
        self, gw: Gateway, response: Response, aet: str, expected: Sequence[tuple[str, str, str]]
    ) -> list[Part]:
        """A 200 whose parts are exactly `expected` (study, series, sop), in any order, each a
        Part-10 object in Explicit VR LE with its Content-Type and Content-Location."""
        self.assertEqual(response.code, 200, f"{response.body[:500]!r}\n{gw.log_tail()}")
        content_type = response.header("Content-Type")
        self.assertRegex(content_type or "", RESPONSE_CONTENT_TYPE)
        body = parse_multipart(content_type, response.body)
        self.assertTrue(body.closed, "the multipart body did not end with its close delimiter")
        self.assert_parts(body.parts, aet, expected)
        return body.parts

    def assert_parts(self, parts: list[Part], aet: str, expected: Sequence[tuple[str, str, str]]) -> None:
        sops = [part.location.rsplit("/", 1)[-1] for part in parts]
        self.assertEqual(sorted(sops), sorted(sop for _, _, sop in expected))
        where = {sop: (study, series) for study, series, sop in expected}
        for part in parts:
            sop = part.location.rsplit("/", 1)[-1]
            study, series = where[sop]
            self.assertEqual(part.headers.get("Content-Type"), PART_CONTENT_TYPE)
            self.assertTrue(part.location.startswith("http://"), part.location)
            self.assertTrue(
                part.location.endswith(f"/aets/{aet}/studies/{study}/series/{series}/instances/{sop}"),
                part.location,
            )
            ds = part.dataset()
            self.assertEqual(ds.file_meta.TransferSyntaxUID, EXPLICIT_VR_LE)
            self.assertEqual(ds.original_encoding, (False, True))
            self.assertEqual(ds.file_meta.MediaStorageSOPInstanceUID, sop)
            self.assertEqual(ds.SOPInstanceUID, sop)
            self.assertEqual(ds.file_meta.MediaStorageSOPClassUID, ds.SOPClassUID)


class OrthancTests(RetrieveTestCase):
    """C-GET from Orthanc 1.10 (its C-GET SCP sends on our association with our SCP role)."""

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        orthanc = await peers.start_orthanc(self)
        data = orthanc_data()
        for group in data.values():
            for item in group:
                answer = await orthanc.upload(item.data)
                self.assertEqual(answer.get("Status"), "Success", answer)
        gw = await start_gateway(self, [get_aet("ORTHANC", orthanc.host, orthanc.dicom_port)])
        return orthanc, gw, data

    def expect(self, items: list[Stored]) -> list[tuple[str, str, str]]:
        return [(item.study, item.series, item.sop) for item in items]

    def assert_originals(self, parts: list[Part], items: list[Stored]) -> None:
        by_sop = {item.sop: item for item in items}
        for part in parts:
            item = by_sop[part.location.rsplit("/", 1)[-1]]
            assert_same_dataset(self, part.dataset(), item.dataset(), item.label)

    async def test_study_series_and_instance(self) -> None:
        _, gw, data = await self.start()
        ct, mr, multi = data["ct"][0], data["mr"][0], data["multi"]

        response = await gw.get(instance_path("ORTHANC", ct.study))
        self.assert_originals(self.assert_multipart(gw, response, "ORTHANC", self.expect([ct])), [ct])

        # Stored in Implicit VR LE: arrives in Explicit VR LE, the same data set.
        response = await gw.get(instance_path("ORTHANC", mr.study))
        self.assert_originals(self.assert_multipart(gw, response, "ORTHANC", self.expect([mr])), [mr])

        response = await gw.get(instance_path("ORTHANC", multi[0].study))
        parts = self.assert_multipart(gw, response, "ORTHANC", self.expect(multi))
        self.assert_originals(parts, multi)

        # The series level brings only that series (the retrieve is not for the whole study).
        second = [item for item in multi if item.series == multi[3].series]
        self.assertEqual(len(second), 3)
        response = await gw.get(instance_path("ORTHANC", multi[3].study, multi[3].series))
        self.assert_originals(self.assert_multipart(gw, response, "ORTHANC", self.expect(second)), second)

        one = multi[4]
        response = await gw.get(instance_path("ORTHANC", one.study, one.series, one.sop))
        self.assert_originals(self.assert_multipart(gw, response, "ORTHANC", self.expect([one])), [one])

        # The retrieves went out at the level asked for.
        await eventually(lambda: len(gw.log_lines(r"retrieved \d+ instance")) >= 5)
        lines = gw.log_lines(r"retrieved \d+ instance")
        self.assertEqual(
            [int(re.search(r"retrieved (\d+)", line).group(1)) for line in lines], [1, 1, 6, 3, 1]
        )

    async def test_any_transfer_syntax_and_errors(self) -> None:
        _, gw, data = await self.start()
        ct, mr, multi = data["ct"][0], data["mr"][0], data["multi"]
        for item in (ct, mr):
            response = await gw.get(instance_path("ORTHANC", item.study), headers={"Accept": ANY_SYNTAX})
            parts = self.assert_multipart(gw, response, "ORTHANC", self.expect([item]))
            self.assert_originals(parts, [item])
        response = await gw.get(
            instance_path("ORTHANC", multi[0].study, multi[0].series),
            headers={
                "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LE}'
            },
        )
        self.assert_multipart(gw, response, "ORTHANC", self.expect(multi[:3]))

        errors = [
            (instance_path("ORTHANC", generate_uid()), {}, 404),
            (instance_path("ORTHANC", ct.study, generate_uid()), {}, 404),
            (instance_path("ORTHANC", ct.study, ct.series, generate_uid()), {}, 404),
            (instance_path("ORTHANC", "1.2.abc"), {}, 400),
            (instance_path("ORTHANC", ct.study, "1..2"), {}, 400),
            (instance_path("NOSUCHAET", ct.study), {}, 404),
            (instance_path("ORTHANC", ct.study), {"Accept": "image/jpeg"}, 406),
        ]
        for path, headers, status in errors:
            response = await gw.get(path, headers=headers)
            self.assertEqual(response.code, status, f"{path} {headers}: {response.body!r}\n{gw.log_tail()}")
            self.assertEqual(response.header("Content-Type"), "application/json")
            self.assertIn("error", response.json())
        # The gateway still serves.
        response = await gw.get(instance_path("ORTHANC", ct.study))
        self.assert_multipart(gw, response, "ORTHANC", self.expect([ct]))

    async def test_dicomweb_client(self) -> None:
        _, gw, data = await self.start()
        multi, mr = data["multi"], data["mr"][0]
        one = multi[1]

        def fetch() -> tuple[list[Dataset], ...]:
            with requests.Session() as session:
                client = DICOMwebClient(url=f"{gw.url}/aets/ORTHANC", session=session)
                return (
                    client.retrieve_study(one.study),
                    client.retrieve_series(one.study, one.series),
                    [client.retrieve_instance(one.study, one.series, one.sop)],
                    client.retrieve_study(mr.study),
                )

        study, series, instance, implicit = await deferToThread(fetch)
        originals = {item.sop: item for item in [*multi, mr]}
        for got, want in (
            (study, multi),
            (series, [item for item in multi if item.series == one.series]),
            (instance, [one]),
            (implicit, [mr]),
        ):
            self.assertEqual(sorted(ds.SOPInstanceUID for ds in got), sorted(item.sop for item in want))
            for ds in got:
                item = originals[ds.SOPInstanceUID]
                assert_same_dataset(self, ds, item.dataset(), item.label)


class PacsTests(RetrieveTestCase):
    """The pynetdicom PACS of tests/support/pacs/: the get-* profiles."""

    async def start(
        self, profile: str, wado_timeout_ms: int = 20_000, pool_size: int | None = None, **options: Any
    ) -> tuple[peers.Peer, Gateway]:
        scp = await peers.start_pynetdicom_scp(self, profile, aet=PACS_AET, **options)
        gw = await start_gateway(self, [get_aet(PACS_AET, scp.host, scp.port, wado_timeout_ms, pool_size)])
        return scp, gw

    def expect(self, series: Sequence[int], instances: int) -> list[tuple[str, str, str]]:
        return [
            (get_study_uid(), get_series_uid(s), get_sop_uid(s, i)) for s in series for i in range(instances)
        ]

    def assert_generated(self, parts: list[Part], rows: int = 16, columns: int = 16) -> None:
        for part in parts:
            ds = part.dataset()
            s, i = (int(n) - 1 for n in ds.SOPInstanceUID.rsplit(".", 2)[-2:])
            assert_same_dataset(self, ds, get_instance(s, i, rows, columns), ds.SOPInstanceUID)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        self.assertTrue(await eventually(check, timeout), f"not within {timeout} s: {what}")

    async def test_get_levels(self) -> None:
        scp, gw = await self.start("get", series=2, instances=3)
        study = get_study_uid()
        response = await gw.get(instance_path(PACS_AET, study))
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0, 1], 3)))
        response = await gw.get(instance_path(PACS_AET, study, get_series_uid(1)))
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([1], 3)))
        response = await gw.get(instance_path(PACS_AET, study, get_series_uid(0), get_sop_uid(0, 2)))
        parts = self.assert_multipart(gw, response, PACS_AET, [(study, get_series_uid(0), get_sop_uid(0, 2))])
        self.assert_generated(parts)

        gets = scp.events("c_get")
        self.assertEqual(
            [(e["level"], e["study"], e["series"], e["sop"], e["matches"]) for e in gets],
            [
                ("STUDY", study, "", "", 6),
                ("SERIES", study, get_series_uid(1), "", 3),
                ("IMAGE", study, get_series_uid(0), get_sop_uid(0, 2), 1),
            ],
        )
        # Every sub-operation was answered Success, all on one pooled association.
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 10)
        self.assertEqual({e["assoc"] for e in gets}, {1})
        # Our storage contexts went with the SCP role; Explicit VR LE was accepted for CT.
        accepted = scp.events("accepted")[0]["accepted_contexts"]
        ct = [cx for cx in accepted if cx["abstract_syntax"] == "1.2.840.10008.5.1.4.1.1.2"]
        self.assertEqual([cx["transfer_syntax"] for cx in ct], [EXPLICIT_VR_LE])

    async def test_get_warning(self) -> None:
        """One sub-operation fails (B000, one failed): the good instances, a clean end."""
        scp, gw = await self.start("get-warning", instances=3)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3)))
        await self.until(lambda: bool(scp.events("get_done")), "the C-GET's end")
        final = scp.events("get_rsp")[-1]
        self.assertEqual((final["status"], final["failed"], final["completed"]), (0xB000, 1, 3), final)
        self.assertEqual(len(scp.events("store_unsendable")), 1)

    async def test_get_fail_after_first_instance(self) -> None:
        """C000 after one instance: the body is cut off, never closed; the next request works."""
        scp, gw = await self.start("get-fail", instances=3, ok_before=1)
        path = instance_path(PACS_AET, get_study_uid())
        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 200)
        self.assertIsInstance(partial.error, ResponseFailed, f"{partial.error!r}\n{gw.log_tail()}")
        body = parse_multipart(partial.content_type, partial.body)
        self.assertFalse(body.closed)
        self.assertEqual(len(body.parts), 1)
        self.assert_parts(body.parts, PACS_AET, self.expect([0], 1))
        self.assert_generated(body.parts)
        self.assertEqual(scp.events("get_rsp")[-1]["status"], 0xC000)
        # One warning line with the sub-operation counts (and no traceback: see cleanup).
        pattern = r"failed after 1 instance\(s\).*0xC000.* received, 2 failed; response cut off"
        await self.until(lambda: bool(gw.log_lines(pattern)), "the log line")

        response = await gw.get(path)
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3)))

    async def test_get_fail_before_any_instance(self) -> None:
        """A failure before the first instance is a 502, not an empty multipart."""
        scp, gw = await self.start("get-fail", instances=3, ok_before=0)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("C000", response.json()["error"])
        self.assertEqual([e["status"] for e in scp.events("get_rsp")], [0xC000])
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3))

    async def test_get_implicit(self) -> None:
        """The PACS accepts only Implicit VR LE for storage: the parts go out in Explicit VR LE."""
        scp, gw = await self.start("get-implicit", series=1, instances=3, rows=64, columns=48)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        parts = self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3))
        self.assert_generated(parts, 64, 48)
        accepted = scp.events("accepted")[0]["accepted_contexts"]
        ct = [cx for cx in accepted if cx["abstract_syntax"] == "1.2.840.10008.5.1.4.1.1.2"]
        self.assertEqual([cx["transfer_syntax"] for cx in ct], [IMPLICIT_VR_LE])
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0, 0, 0])

    async def test_get_abort(self) -> None:
        """A-ABORT after one instance: a cut-off body; the next request gets a new association."""
        scp, gw = await self.start("get-abort", instances=3, ok_before=1)
        path = instance_path(PACS_AET, get_study_uid())
        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 200)
        self.assertIsInstance(partial.error, ResponseFailed, f"{partial.error!r}\n{gw.log_tail()}")
        body = parse_multipart(partial.content_type, partial.body)
        self.assertFalse(body.closed)
        self.assertEqual(len(body.parts), 1)
        self.assert_generated(body.parts)
        self.assertEqual(len(scp.events("abort_sent")), 1)

        response = await gw.get(path)
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3)))
        self.assertEqual([e["assoc"] for e in scp.events("c_get")], [1, 2])

    async def test_get_abort_inside_first_instance_on_reused_association(self) -> None:
        """The PACS aborts in the middle of the first instance, on an association reused from the
        pool. The part header is already out, so the retrieve must not be retried on a new
        association (that would put a cut-off part in a body that then ends cleanly)."""
        scp, gw = await self.start(
            "get-abort", instances=2, rows=512, columns=512, healthy=1, ok_before=0, partial=True
        )
        path = instance_path(PACS_AET, get_study_uid())
        response = await gw.get(path)
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 2)), 512, 512)

        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 200, f"{partial.body[:300]!r}\n{gw.log_tail()}")
        self.assertEqual(len(scp.events("partial_sent")), 1)
        self.assertIsInstance(partial.error, ResponseFailed, f"{partial.error!r}\n{gw.log_tail()}")
        body = parse_multipart(partial.content_type, partial.body)
        self.assertFalse(body.closed)
        self.assertEqual(len(body.parts), 1)
        self.assertEqual([e["assoc"] for e in scp.events("c_get")], [1, 1])

        response = await gw.get(path)
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], 2))

    async def test_get_stall_is_504(self) -> None:
        scp, gw = await self.start("get-stall", wado_timeout_ms=1500, instances=2)
        path = instance_path(PACS_AET, get_study_uid())
        started = reactor.seconds()
        response = await gw.get(path)
        elapsed = reactor.seconds() - started
        self.assertEqual(response.code, 504, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("error", response.json())
        self.assertGreaterEqual(elapsed, 1.4)
        self.assertLess(elapsed, 1.5 + 5.0, gw.log_tail())
        self.assertEqual(len(scp.events("stalling")), 1)
        # The gateway let go of the association: the PACS sees it end.
        await self.until(lambda: bool(scp.events("stall_ended")), "the stall to end")

        response = await gw.get(path)
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], 2))

    async def test_slow_client_pauses_the_association(self) -> None:
        """A client reading ~80 KB/s from a 40 MB study: the C-STORE sub-operations go only as
        fast as it reads (the association is paused), and the gateway does not hold the study."""
        instances, rows, columns = 40, 512, 1024  # 1 MiB of pixel data each
        scp, gw = await self.start("get", instances=instances, rows=rows, columns=columns)
        path = instance_path(PACS_AET, get_study_uid())
        pid = gw.child.pid
        baseline = rss_mb(pid)

        def sample(seconds: float, received: int) -> Sample:
            return Sample(seconds, received, len(scp.events("store_done")), rss_mb(pid))

        def run() -> tuple[list[Sample], bytes]:
            client = RawClient(gw.http_port, path)
            try:
                samples = client.slowly(5.0, sample)
                return samples, client.rest()
            finally:
                client.close()

        samples, raw = await deferToThread(run)
        trace = "\n".join(
            f"{s.seconds:5.2f} s {s.received:9d} B {s.stores:3d} stores {s.rss_mb:6.1f} MB" for s in samples
        )
        # From 2 s on the pipes are full: the PACS sends only what the client reads.
        slow = [s for s in samples if s.seconds >= 2.0]
        self.assertTrue(slow, trace)
        # Buffers on the way (socket buffers, one instance in the gateway) hold a few
        # instances; without backpressure all 40 would be gone in well under a second.
        self.assertLess(slow[-1].stores, instances // 2, trace)
        self.assertLessEqual(slow[-1].stores - slow[0].stores, 2, trace)
        self.assertLess(max(s.rss_mb for s in samples) - baseline, 20, f"baseline {baseline:.1f} MB\n{trace}")

        status, headers, body, complete = parse_http(raw)
        self.assertEqual(status, 200)
        self.assertTrue(complete)
        multipart = parse_multipart(headers.get("content-type"), body)
        self.assertTrue(multipart.closed)
        self.assert_parts(multipart.parts, PACS_AET, self.expect([0], instances))
        self.assert_generated([multipart.parts[0], multipart.parts[-1]], rows, columns)
        self.assertEqual(len(scp.events("store_done")), instances)

    async def test_client_disconnect_cancels_and_frees_the_association(self) -> None:
        """The client goes away mid-stream: C-CANCEL reaches the PACS, the C-GET ends, and the
        association goes back to the pool: with a pool of one, the next request waits for it
        and runs on it (a leaked association would make it wait in vain, then 503)."""
        instances, rows, columns = 40, 512, 1024
        scp, gw = await self.start("get", pool_size=1, instances=instances, rows=rows, columns=columns)
        path = instance_path(PACS_AET, get_study_uid())

        def run() -> tuple[int, int]:
            client = RawClient(gw.http_port, path)
            try:
                client.until(200_000)
                # Stop reading for a while, so the gateway has paused the association
                # when the client goes.
                time.sleep(1.0)
                return len(client.data), len(scp.events("store_done"))
            finally:
                client.close()

        received, stores = await deferToThread(run)
        self.assertGreaterEqual(received, 200_000)
        self.assertLess(stores, instances // 2)
        await self.until(lambda: bool(scp.events("c_cancel")), "a C-CANCEL at the PACS")
        ended = lambda: [e for e in scp.events("get_rsp") if e["status"] != 0xFF00]  # noqa: E731
        await self.until(lambda: bool(ended()), "the final C-GET-RSP")
        self.assertEqual(ended()[0]["status"], 0xFE00, scp.events("get_rsp"))
        self.assertLess(len(scp.events("store_done")), instances)
        # Instances that arrived after the client left were refused, not acknowledged.
        statuses = [e["status"] for e in scp.events("store_rsp")]
        self.assertNotEqual(statuses[-1], 0, statuses)
        await self.until(
            lambda: bool(gw.log_lines(r"GET \S+ 200 \d+B .* disconnected")), "the access log line"
        )

        response = await gw.get(path)
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], instances))
        gets = scp.events("c_get")
        self.assertEqual([e["assoc"] for e in gets], [1, 1], "the association was not reused")
        self.assertLessEqual(max(e["max"] for e in scp.events("assoc_count")), 1)
        self.assertFalse(scp.events("aborted"))

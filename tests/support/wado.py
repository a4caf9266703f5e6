"""WADO-RS retrieves through the gateway process, for integration tests.

Reading responses: `parse_multipart` (a ``multipart/related`` body into `Part` objects, each
a Part-10 file), `read_partial` (a response cut off midway), `parse_http` and the blocking
`RawClient` (a socket with a small receive buffer, read slowly or abandoned, in a thread).
Data: `Stored` (an instance uploaded to a PACS: its UIDs and bytes), `fresh` (a data set given
new UIDs, as a `Stored`), `orthanc_data` (CT_small, MR_small_implicit and a generated 2 x 3
study), `upload_all` (groups of them into Orthanc). Config and paths: `get_aet`,
`instance_path`. Test bases: `RetrieveTestCase` (`assert_multipart`, `assert_parts`) and the
`OrthancRetrieveTests` mixin, the Orthanc retrieve tests run over C-GET
(tests/integration/test_wado_pacs.py) and over C-MOVE (tests/integration/test_wado_move.py).
"""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
import treq
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.datasets import EXPLICIT_VR_LE, IMPLICIT_VR_LE, assert_same_dataset, part10
from tests.support.gateway import Gateway, Response, eventually, pacs_aet
from tests.support.pacs.datasets import get_instance, get_series_uid, get_sop_uid, get_study_uid

TIMEOUT = 180
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


def generated(series: int, instances: int) -> list[Stored]:
    """The instances the pynetdicom PACS's get-*/move-* profiles make up (`get_instance`)."""
    return [
        Stored(
            f"get{s}.{i}", get_study_uid(), get_series_uid(s), get_sop_uid(s, i), part10(get_instance(s, i))
        )
        for s in range(series)
        for i in range(instances)
    ]


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


async def upload_all(case: TestCase, orthanc: peers.Orthanc, data: dict[str, list[Stored]]) -> None:
    for group in data.values():
        for item in group:
            answer = await orthanc.upload(item.data)
            case.assertEqual(answer.get("Status"), "Success", answer)



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
    """The response to one GET of `path`, as far as it went.

    Without the pool's automatic retry: a kept-alive connection that closes before any
    response byte gets an idempotent request sent again on a new one, and the response
    read would be that second request's (complete, if the failure was a one-off), not
    the cut-off one under test."""
    retry, gw.pool.retryAutomatically = gw.pool.retryAutomatically, False
    try:
        response = await gw.http.get(gw.url + path, timeout=60, **kwargs)
    finally:
        gw.pool.retryAutomatically = retry
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


def read_then_leave(
    port: int, path: str, stores: Callable[[], int], received: int = 200_000
) -> tuple[int, int]:
    """GET `path`, read `received` bytes, stop reading for a second (so the gateway pauses the
    association that feeds it), then close: what was read and `stores()` at that moment.
    Blocking: run it in a thread."""
    client = RawClient(port, path)
    try:
        client.until(received)
        time.sleep(1.0)
        return len(client.data), stores()
    finally:
        client.close()



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


if TYPE_CHECKING:
    _RetrieveBase = RetrieveTestCase
else:
    _RetrieveBase = object


class OrthancRetrieveTests(_RetrieveBase):
    """Retrieves from an Orthanc loaded with `orthanc_data`: levels, ``transfer-syntax=*``,
    errors, dicomweb-client. A mixin, not a TestCase (so it is not collected on its own): a
    test module mixes it into a `RetrieveTestCase` whose `start` says how the gateway
    retrieves from that Orthanc (C-GET or C-MOVE)."""

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        """Start Orthanc holding `orthanc_data` and the gateway in front of it."""
        raise NotImplementedError

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

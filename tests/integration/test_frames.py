"""WADO-RS frames end to end: the gateway as a process, real peers (Orthanc over C-MOVE and
C-GET, the pynetdicom PACS, moto's S3).

Each original is one of pydicom's bundled files given fresh UIDs; every frame the gateway
serves is compared with the original's own (tests.support.frames.expected_frames: native
frames the slice of Pixel Data in little endian, compressed ones the frame's fragments).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from twisted.internet import reactor as _global_reactor
from twisted.internet.threads import deferToThread
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from dicomrst.wado.frames import prepare_frames, select_part_media
from dicomrst.wado.ranged import HEAD_BYTES
from tests.support import peers
from tests.support.datasets import EXPLICIT_VR_LE
from tests.support.frames import ANY, OCTET, expected_frames, parse_parts
from tests.support.gateway import LISTENER_AET, Gateway, eventually, start_gateway
from tests.support.imaging import image
from tests.support.pacs.datasets import get_instance, get_series_uid, get_sop_uid, get_study_uid
from tests.support.s3 import BUCKET, big_study, key_of, s3_aet, upload
from tests.support.wado import Stored, fresh, get_aet, instance_path, upload_all
from tests.support.wado_move import (
    MOVE_PACS_AET,
    ORTHANC_AET,
    move_aet,
    start_move_gateway,
    start_orthanc_for_move,
)

reactor: Any = _global_reactor

NATIVE_FILES = ("CT_small.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm", "MR_small_bigendian.dcm")
COMPRESSED_FILES = ("MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm")


def originals(names: Sequence[str]) -> list[Stored]:
    return [fresh(dcmread(get_testdata_file(name)), name) for name in names]  # type: ignore[arg-type]


def frames_path(aet: str, item: Stored, frames: str) -> str:
    return f"/aets/{aet}/studies/{item.study}/series/{item.series}/instances/{item.sop}/frames/{frames}"


class FramesTestCase(TestCase):
    timeout = 240

    async def assert_frames(
        self, gw: Gateway, aet: str, item: Stored, accept: str, *, as_stored: bool = False
    ) -> None:
        """Every frame of `item`, asked for in reverse order in one request, then frame 1
        alone: the original's frames, each part located at its frame URL."""
        ds = item.dataset()
        want = expected_frames(ds)
        numbers = list(range(len(want), 0, -1))
        for frames in (",".join(map(str, numbers)), "1"):
            response = await gw.get(frames_path(aet, item, frames), headers={"Accept": accept})
            self.assertEqual(response.code, 200, f"{item.label}: {response.body[:300]!r}\n{gw.log_tail()}")
            parts = parse_parts(response.header("Content-Type") or "", response.body)
            asked = [int(n) for n in frames.split(",")]
            self.assertEqual([p.body for p in parts], [want[n - 1] for n in asked], item.label)
            self.assertEqual(
                [p.headers["Content-Location"] for p in parts],
                [gw.url + frames_path(aet, item, str(n)) for n in asked],
            )
            if as_stored:
                media = parts[0].headers["Content-Type"]
                self.assertTrue(media.endswith(f"transfer-syntax={item.stored_ts}"), (item.label, media))

    async def assert_errors(self, gw: Gateway, aet: str, item: Stored) -> None:
        n = len(expected_frames(item.dataset()))
        response = await gw.get(frames_path(aet, item, str(n + 1)), headers={"Accept": OCTET})
        self.assertEqual(response.code, 404, response.body)
        response = await gw.get(frames_path(aet, item, "1,1"), headers={"Accept": OCTET})
        self.assertEqual(response.code, 400, response.body)


class OrthancFramesTests(FramesTestCase):
    async def test_over_c_move(self) -> None:
        """Native originals as octet-stream; compressed ones passed through with
        transfer-syntax=* (the listener keeps compressed syntaxes: uncompressed false)."""
        orthanc, listener_port = await start_orthanc_for_move(self)
        native, compressed = originals(NATIVE_FILES), originals(COMPRESSED_FILES)
        await upload_all(self, orthanc, {"all": native + compressed})
        gw = await start_move_gateway(self, orthanc, listener_port, uncompressed=False)
        for item in native:
            await self.assert_frames(gw, ORTHANC_AET, item, OCTET)
        for item in compressed:
            await self.assert_frames(gw, ORTHANC_AET, item, ANY, as_stored=True)
        await self.assert_errors(gw, ORTHANC_AET, native[1])

        # dicomweb-client as a script uses it: its default Accept, and transfer-syntax=*.
        client = DICOMwebClient(url=f"{gw.url}/aets/{ORTHANC_AET}")
        dose, rle = native[1], compressed[2]
        got = await deferToThread(client.retrieve_instance_frames, dose.study, dose.series, dose.sop, [3, 1])
        want = expected_frames(dose.dataset())
        self.assertEqual(got, [want[2], want[0]])
        got = await deferToThread(
            client.retrieve_instance_frames,
            rle.study,
            rle.series,
            rle.sop,
            [2],
            media_types=(("application/octet-stream", "*"),),
        )
        self.assertEqual(got, expected_frames(rle.dataset())[1:])

    async def test_over_c_get(self) -> None:
        orthanc = await peers.start_orthanc(self)
        native = originals(NATIVE_FILES)
        await upload_all(self, orthanc, {"all": native})
        gw = await start_gateway(self, [get_aet(ORTHANC_AET, orthanc.host, orthanc.dicom_port)])
        for item in native:
            await self.assert_frames(gw, ORTHANC_AET, item, OCTET)
            await self.assert_frames(gw, ORTHANC_AET, item, ANY)
        await self.assert_errors(gw, ORTHANC_AET, native[1])


class OneMoveTests(FramesTestCase):
    async def test_one_move_serves_metadata_and_every_frame(self) -> None:
        """A viewer's calls: the series metadata, then frame 1 of each instance, twice over;
        the PACS sees one C-MOVE."""
        listener_port = peers.free_port()
        instances = 5
        scp = await peers.start_pynetdicom_scp(
            self,
            "move",
            aet=MOVE_PACS_AET,
            series=1,
            instances=instances,
            destinations={LISTENER_AET: [peers.LOCALHOST, listener_port]},
        )
        gw = await start_gateway(
            self, [move_aet(MOVE_PACS_AET, scp.host, scp.port)], dimse_port=listener_port
        )
        study, series = get_study_uid(), get_series_uid(0)
        response = await gw.get(f"/aets/{MOVE_PACS_AET}/studies/{study}/series/{series}/metadata")
        self.assertEqual(response.code, 200, response.body[:300])
        for _ in range(2):
            for i in range(instances):
                item = Stored("gen", study, series, get_sop_uid(0, i), b"")
                response = await gw.get(frames_path(MOVE_PACS_AET, item, "1"), headers={"Accept": OCTET})
                self.assertEqual(response.code, 200, response.body[:300])
                [part] = parse_parts(response.header("Content-Type") or "", response.body)
                self.assertEqual(part.body, get_instance(0, i).PixelData)
        self.assertEqual(len(scp.events("c_move")), 1, scp.events("c_move"))

    async def test_series_pixeldata_then_frames(self) -> None:
        """Series pixel data (one part per frame of each instance), which fills the cache:
        the frame requests after it make no C-MOVE of their own."""
        listener_port = peers.free_port()
        instances = 4
        scp = await peers.start_pynetdicom_scp(
            self,
            "move",
            aet=MOVE_PACS_AET,
            series=1,
            instances=instances,
            destinations={LISTENER_AET: [peers.LOCALHOST, listener_port]},
        )
        gw = await start_gateway(
            self, [move_aet(MOVE_PACS_AET, scp.host, scp.port)], dimse_port=listener_port
        )
        study, series = get_study_uid(), get_series_uid(0)
        response = await gw.get(
            f"/aets/{MOVE_PACS_AET}/studies/{study}/series/{series}/pixeldata", headers={"Accept": OCTET}
        )
        self.assertEqual(response.code, 200, f"{response.body[:300]!r}\n{gw.log_tail()}")
        parts = parse_parts(response.header("Content-Type") or "", response.body)
        by_location = {p.headers["Content-Location"]: p.body for p in parts}
        self.assertEqual(len(by_location), instances)  # arrival order is the PACS's
        for i in range(instances):
            item = Stored("gen", study, series, get_sop_uid(0, i), b"")
            self.assertEqual(
                by_location[gw.url + frames_path(MOVE_PACS_AET, item, "1")], get_instance(0, i).PixelData
            )
            response = await gw.get(frames_path(MOVE_PACS_AET, item, "1"), headers={"Accept": OCTET})
            [part] = parse_parts(response.header("Content-Type") or "", response.body)
            self.assertEqual(part.body, get_instance(0, i).PixelData)
        self.assertEqual(len(scp.events("c_move")), 1, scp.events("c_move"))


class S3FramesTests(FramesTestCase):
    async def test_from_s3(self) -> None:
        moto = await peers.start_moto(self)
        await moto.enable_auth()
        native, compressed = originals(NATIVE_FILES), originals(COMPRESSED_FILES)
        await upload(moto, BUCKET, {key_of(item): item.data for item in native + compressed})
        gw = await start_gateway(self, [s3_aet(moto)])
        for item in native:
            await self.assert_frames(gw, "S3AET", item, OCTET)
        for item in compressed:
            await self.assert_frames(gw, "S3AET", item, ANY, as_stored=True)
        await self.assert_errors(gw, "S3AET", native[1])


# -- ranged reads ------------------------------------------------------------------------------


class _CountingServerSide(portforward.ProxyClient):
    """moto's side: what it sends is counted (its peer is the gateway's side)."""

    def dataReceived(self, data: bytes) -> None:
        self.peer.factory.served += len(data)
        super().dataReceived(data)


class _CountingClientFactory(portforward.ProxyClientFactory):
    protocol = _CountingServerSide


class _CountingClientSide(portforward.ProxyServer):
    """The gateway's side: what it sends is kept."""

    clientProtocolFactory = _CountingClientFactory

    def dataReceived(self, data: bytes) -> None:
        self.factory.sent += data
        super().dataReceived(data)


class ByteCounter(portforward.ProxyFactory):
    """A TCP proxy to moto that counts what moto sent (`served`) and keeps what it was
    sent (`sent`: the requests, to count GETs and read their Range headers)."""

    protocol = _CountingClientSide

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.served = 0
        self.sent = b""

    def gets(self) -> list[str]:
        """The Range of each GET sent so far ('' for a GET without one)."""
        found = []
        for request in self.sent.split(b"GET ")[1:]:
            head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            ranges = [
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("range:")
            ]
            found.append(ranges[0] if ranges else "")
        return found


def large_native(frames: int, rows: int = 512) -> tuple[Stored, list[bytes]]:
    """A multi-frame 16-bit native object of random pixels, and its frames."""
    ds = image(rows, rows, frames, bits=16)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    pixels = os.urandom(rows * rows * 2 * frames)
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    item = fresh(ds, "large multi-frame")
    size = rows * rows * 2
    return item, [pixels[n * size : (n + 1) * size] for n in range(frames)]


class S3RangedFramesTests(FramesTestCase):
    async def test_frames_of_a_large_object_come_by_range(self) -> None:
        """A frame of a 31 MB multi-frame object costs its head and its bytes from moto (counted
        at a TCP proxy in between), identical to what the whole-object path serves; once the
        instance is in the cache, frames come from there."""
        moto = await peers.start_moto(self)
        await moto.enable_auth()
        item, want = large_native(60)
        await upload(moto, BUCKET, {key_of(item): item.data})
        proxy = ByteCounter("127.0.0.1", moto.port)
        listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        config = s3_aet(moto)
        config["endpoint"] = f"http://127.0.0.1:{listening.getHost().port}"
        gw = await start_gateway(self, [config])
        frame = len(want[0])
        # The index's scan at start lists the bucket and reads the object's head: not
        # what is measured here.
        self.assertTrue(await eventually(lambda: bool(gw.log_lines("index: scanned S3AET"))), gw.log_tail())
        proxy.served, proxy.sent = 0, b""

        response = await gw.get(frames_path("S3AET", item, "7"), headers={"Accept": OCTET})
        self.assertEqual(response.code, 200, f"{response.body[:300]!r}\n{gw.log_tail()}")
        parts = parse_parts(response.header("Content-Type") or "", response.body)
        self.assertEqual([p.body for p in parts], [want[6]])
        self.assertEqual(
            proxy.gets(), [f"bytes=0-{HEAD_BYTES - 1}", "bytes={}-{}".format(*self.span(item, 7, frame))]
        )
        self.assertLess(proxy.served, HEAD_BYTES + frame + 8192)  # + response headers
        self.assertGreater(len(item.data), 30 * frame)

        # The head is remembered: several frames, one GET of the span they cover.
        before = proxy.served
        response = await gw.get(frames_path("S3AET", item, "9,8,10"), headers={"Accept": ANY})
        self.assertEqual(response.code, 200, response.body[:300])
        parts = parse_parts(response.header("Content-Type") or "", response.body)
        self.assertEqual([p.body for p in parts], [want[8], want[7], want[9]])
        self.assertEqual(
            proxy.gets()[2:], [f"bytes={self.span(item, 8, frame)[0]}-{self.span(item, 10, frame)[1]}"]
        )
        self.assertLess(proxy.served - before, 3 * frame + 8192)

        # Byte-identical to the whole-object path (the cache's file read by prepare_frames).
        whole = prepare_frames(io.BytesIO(item.data), [7, 60, 1], select_part_media(OCTET, None), "x")
        pieces = list(whole.first)
        while not whole.reader.done:
            pieces += whole.reader.batch()
        expected = [p.body for p in parse_parts(whole.content_type(), b"".join(pieces))]
        response = await gw.get(frames_path("S3AET", item, "7,60,1"), headers={"Accept": OCTET})
        self.assertEqual(
            [p.body for p in parse_parts(response.header("Content-Type") or "", response.body)], expected
        )
        self.assertEqual(expected, [want[6], want[59], want[0]])

        # Bulk data: a Range of the pixel data value costs the head and that range.
        pixels = b"".join(want)
        before, gets = proxy.served, len(proxy.gets())
        url = f"/aets/S3AET/studies/{item.study}/series/{item.series}/instances/{item.sop}/bulkdata/7FE00010"
        response = await gw.get(
            url, headers={"Accept": "application/octet-stream", "Range": "bytes=1000000-2999999"}
        )
        self.assertEqual(response.code, 206, response.body[:300])
        self.assertEqual(response.header("Content-Range"), f"bytes 1000000-2999999/{len(pixels)}")
        self.assertEqual(response.body, pixels[1_000_000:3_000_000])
        self.assertEqual(len(proxy.gets()), gets + 2)
        self.assertLess(proxy.served - before, HEAD_BYTES + 2_000_000 + 8192)

        # A small object (under MIN_SIZE): its head, then the cache's series retrieve.
        small = big_study(1, rows=256)[0]
        await upload(moto, BUCKET, {key_of(small): small.data})
        gets = len(proxy.gets())
        response = await gw.get(frames_path("S3AET", small, "1"), headers={"Accept": OCTET})
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertEqual(
            [p.body for p in parse_parts(response.header("Content-Type") or "", response.body)],
            expected_frames(small.dataset()),
        )
        # Its head; then the cache's fill: the instance alone, then its series (a listing and
        # the object again: S3 downloads what the series holds).  The frame is answered as
        # soon as the instance is in, so wait for the fill to end before counting.
        done = f"cache: retrieved series {small.series}"
        self.assertTrue(await eventually(lambda: bool(gw.log_lines(done))), gw.log_tail())
        self.assertEqual(proxy.gets()[gets:], [f"bytes=0-{HEAD_BYTES - 1}", "", "", ""])

        # Once the whole instance went through the gateway (into the cache), no more reads.
        await gw.get(instance_path("S3AET", item.study, item.series, item.sop))
        gets = len(proxy.gets())
        response = await gw.get(frames_path("S3AET", item, "33"), headers={"Accept": OCTET})
        self.assertEqual(
            [p.body for p in parse_parts(response.header("Content-Type") or "", response.body)], [want[32]]
        )
        self.assertEqual(len(proxy.gets()), gets)

    def span(self, item: Stored, number: int, frame: int) -> tuple[int, int]:
        """The inclusive byte range of frame `number` in the object."""
        start = len(item.data) - (61 - number) * frame
        return start, start + frame - 1

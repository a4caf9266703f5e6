"""WADO-RS frames end to end: the gateway as a process, real peers (Orthanc over C-MOVE and
C-GET, the pynetdicom PACS, moto's S3).

Each original is one of pydicom's bundled files given fresh UIDs; every frame the gateway
serves is compared with the original's own (tests.support.frames.expected_frames: native
frames the slice of Pixel Data in little endian, compressed ones the frame's fragments).
"""

from __future__ import annotations

from collections.abc import Sequence

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.test_s3 import BUCKET, key_of, s3_aet, upload
from tests.integration.test_wado_move import (
    MOVE_PACS_AET,
    ORTHANC_AET,
    move_aet,
    start_move_gateway,
    start_orthanc_for_move,
    upload_all,
)
from tests.support import peers
from tests.support.frames import ANY, OCTET, expected_frames, parse_parts
from tests.support.gateway import LISTENER_AET, Gateway, start_gateway
from tests.support.pacs.datasets import get_instance, get_series_uid, get_sop_uid, get_study_uid
from tests.support.wado import Stored, fresh, get_aet

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

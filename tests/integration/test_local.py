"""The LOCAL backend in a real gateway (``twistd dicomrst``): STOW-RS then WADO-RS byte for
byte, C-STOREs pushed into the archive by DCMTK's ``storescu`` and by a pynetdicom SCU (a
listener with ``store-to``), ``allowed-callers``, and what a crash left in the directory
neither served nor kept.

Search on LOCAL through the index is tested in ``test_index_wiring``; the first run here
also searches.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.trial.unittest import SkipTest, TestCase

from dicomrst.backends import values as model
from tests.support import peers
from tests.support.datasets import IMPLICIT_VR_LE, assert_same_dataset, part10
from tests.support.gateway import LISTENER_AET, Gateway, Response, c_store, start_gateway
from tests.support.stow import fresh_test_file, multipart_body
from tests.support.wado import ANY_SYNTAX, instance_path, parse_multipart

reactor: Any = _global_reactor

TIMEOUT = 120
AET = "ARCHIVE"
BOUNDARY = b"local-stow-boundary"
STOW_CONTENT_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY


class LocalTestCase(TestCase):
    timeout = TIMEOUT

    def archive(self) -> str:
        return os.path.abspath(self.mktemp())

    async def gateway(self, path: str, listener: dict[str, Any] | None = None) -> Gateway:
        aets = [{"aet": AET, "backend": "LOCAL", "path": path}]
        return await start_gateway(self, aets, listener=listener)

    async def stow(self, gw: Gateway, study: str, objects: list[bytes]) -> Response:
        body = multipart_body([([("Content-Type", "application/dicom")], data) for data in objects], BOUNDARY)
        return await gw.request(
            "POST",
            f"/aets/{AET}/studies/{study}",
            data=body,
            headers={"Content-Type": STOW_CONTENT_TYPE, "Accept": "application/dicom+json"},
            timeout=60,
        )

    async def retrieve(self, gw: Gateway, path: str) -> list[bytes]:
        response = await gw.get(path, headers={"Accept": ANY_SYNTAX}, timeout=60)
        self.assertEqual(response.code, 200, response.body[:300])
        parts = parse_multipart(response.header("Content-Type"), response.body)
        self.assertTrue(parts.closed)
        return [part.body for part in parts.parts]


class StowRetrieveTests(LocalTestCase):
    async def test_stow_then_retrieve_byte_identical(self) -> None:
        """Stored as sent (the file is the part), served back as stored; again is 200, other
        content under a stored SOP Instance UID is 409 and changes nothing."""
        root = self.archive()
        gw = await self.gateway(root)
        study = generate_uid()
        objects = [part10(fresh_test_file(name, study)) for name in ("CT_small.dcm", "MR_small.dcm",
                                                                     "SC_rgb_jpeg_dcmtk.dcm")]
        response = await self.stow(gw, study, objects)
        self.assertEqual(response.code, 200, response.body[:500])
        stored = [dcmread(_bytes_io(d)) for d in objects]
        for data, ds in zip(objects, stored, strict=True):
            path = os.path.join(root, study, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
            where = instance_path(AET, study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            [served] = await self.retrieve(gw, where)
            # The part's preamble and file meta are the gateway's; the data set is as sent.
            self.assertEqual(_data_set(served), _data_set(data))
        whole = await self.retrieve(gw, instance_path(AET, study))
        self.assertEqual(sorted(map(_data_set, whole)), sorted(map(_data_set, objects)))

        self.assertEqual((await self.stow(gw, study, objects)).code, 200)
        changed = fresh_test_file("CT_small.dcm", study)
        changed.SeriesInstanceUID = stored[0].SeriesInstanceUID
        changed.SOPInstanceUID = changed.file_meta.MediaStorageSOPInstanceUID = stored[0].SOPInstanceUID
        changed.PatientName = "Other^Patient"
        response = await self.stow(gw, study, [part10(changed)])
        self.assertEqual(response.code, 409, response.body[:500])
        failed = response.json()["00081198"]["Value"]
        self.assertEqual(failed[0]["00081197"]["Value"], [model.FAILURE_CONFLICT])
        [served] = await self.retrieve(gw, instance_path(AET, study, stored[0].SeriesInstanceUID,
                                                          stored[0].SOPInstanceUID))
        self.assertEqual(_data_set(served), _data_set(objects[0]))

    async def test_leftover_of_a_crash_is_not_served_and_removed_at_start(self) -> None:
        root = self.archive()
        study, series = generate_uid(), generate_uid()
        ds = fresh_test_file("CT_small.dcm", study)
        ds.SeriesInstanceUID = series
        directory = os.path.join(root, study, series)
        os.makedirs(directory)
        leftover = os.path.join(directory, f".{ds.SOPInstanceUID}.dcm.00aa11bb22cc-3.tmp")
        with open(leftover, "wb") as f:
            f.write(part10(ds)[:1000])  # cut off mid-write
        gw = await self.gateway(root)
        response = await gw.get(instance_path(AET, study), headers={"Accept": ANY_SYNTAX})
        self.assertEqual(response.code, 404, response.body[:300])
        self.assertFalse(os.path.exists(leftover), gw.log_tail())

    async def test_echo_checks_the_directory(self) -> None:
        root = self.archive()
        gw = await self.gateway(root)
        self.assertEqual((await gw.get(f"/aets/{AET}")).code, 200)
        os.rmdir(root)
        self.assertNotEqual((await gw.get(f"/aets/{AET}")).code, 200)


class ResourcesTests(LocalTestCase):
    async def test_metadata_frames_rendered_and_bulk_data(self) -> None:
        """The other WADO-RS resources on what STOW-RS stored: metadata as JSON with a
        BulkDataURI for Pixel Data, a frame's bytes as stored, a rendered JPEG."""
        root = self.archive()
        gw = await self.gateway(root)
        study = generate_uid()
        ds = fresh_test_file("CT_small.dcm", study)
        self.assertEqual((await self.stow(gw, study, [part10(ds)])).code, 200)
        where = instance_path(AET, study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        metadata = await gw.get(where + "/metadata", headers={"Accept": "application/dicom+json"})
        self.assertEqual(metadata.code, 200, metadata.body[:300])
        [item] = metadata.json()
        self.assertEqual(item["00100020"]["Value"], [ds.PatientID])
        self.assertIn("BulkDataURI", item["7FE00010"])
        octets = 'multipart/related; type="application/octet-stream"'
        frame = await gw.get(where + "/frames/1", headers={"Accept": octets})
        self.assertEqual(frame.code, 200, frame.body[:300])
        self.assertIn(ds.PixelData, frame.body)
        rendered = await gw.get(where + "/rendered", headers={"Accept": "image/jpeg"})
        self.assertEqual(rendered.code, 200, rendered.body[:300])
        self.assertTrue(rendered.body.startswith(b"\xff\xd8"))


class RangedFramesTests(LocalTestCase):
    async def test_frames_of_a_large_object_by_range(self) -> None:
        """A 5 MiB multi-frame object (over the ranged-read threshold): each frame is its
        own bytes, read from the file by range."""
        root = self.archive()
        gw = await self.gateway(root)
        ds = fresh_test_file("CT_small.dcm")
        ds.Rows = ds.Columns = 512
        ds.NumberOfFrames = 10
        frames = [bytes([n]) * (512 * 512 * 2) for n in range(10)]
        ds.PixelData = b"".join(frames)
        self.assertEqual((await self.stow(gw, ds.StudyInstanceUID, [part10(ds)])).code, 200)
        where = instance_path(AET, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        octets = 'multipart/related; type="application/octet-stream"'
        response = await gw.get(where + "/frames/3,7", headers={"Accept": octets})
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertIn(frames[2], response.body)
        self.assertIn(frames[6], response.body)
        # Not through the instance cache (which would hold the whole object): by range.
        cache = os.path.join(os.path.dirname(gw.config_path), "cache")
        self.assertEqual([n for n in os.listdir(cache) if not n.startswith(".")], [], gw.log_tail())


class StoreToTests(LocalTestCase):
    """A listener with ``store-to``: modalities push into the archive."""

    async def test_storescu_into_local(self) -> None:
        root = self.archive()
        gw = await self.gateway(root, {"store-to": AET, "uncompressed": False})
        study = generate_uid()
        files = []
        directory = peers._temp_dir(self, "storescu")
        for name in ("CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
            ds = fresh_test_file(name, study)
            path = os.path.join(directory, name)
            ds.save_as(path, enforce_file_format=True)
            files.append((path, ds))
        argv = ["storescu", "-v", "-aet", "MODALITY", "-aec", LISTENER_AET, peers.LOCALHOST,
                str(gw.dimse_port)]
        # The uncompressed ones as they are; the JPEG one proposed as JPEG baseline, stored so.
        for options, sent in (([], files[:2]), (["-xy"], files[2:])):
            result = await peers.run_tool(self, [argv[0], *options, *argv[1:], *(p for p, _ in sent)])
            self.assertEqual(result.returncode, 0, result.describe())
            self.assertEqual((result.stdout + result.stderr).count("Received Store Response (Success)"),
                             len(sent), result.describe())
        for path, ds in files:
            stored = os.path.join(root, study, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
            got = dcmread(stored)
            self.assertEqual(got.file_meta.SourceApplicationEntityTitle, "MODALITY")
            sent = dcmread(path)
            self.assertEqual(got.SOPInstanceUID, sent.SOPInstanceUID)
            self.assertEqual(got.PixelData, sent.PixelData)
            self.assertEqual(got.file_meta.TransferSyntaxUID, sent.file_meta.TransferSyntaxUID)
            where = instance_path(AET, study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            [served] = await self.retrieve(gw, where)
            if sent.file_meta.TransferSyntaxUID == IMPLICIT_VR_LE:
                # PS3.18 has no Implicit VR: served converted to Explicit VR, same elements.
                assert_same_dataset(self, dcmread(_bytes_io(served)), got)
                continue
            with open(stored, "rb") as f:
                self.assertEqual(_data_set(served), _data_set(f.read()))
        self.assertEqual([n for n in os.listdir(root) if n.startswith(".")], [])  # nothing left behind

    async def test_pynetdicom_store_and_conflict(self) -> None:
        root = self.archive()
        gw = await self.gateway(root, {"store-to": AET})
        ds = fresh_test_file("CT_small.dcm")
        self.assertEqual(await c_store(gw, ds), 0x0000)
        self.assertEqual(await c_store(gw, ds), 0x0000)  # the same again
        ds.PatientName = "Other^Patient"
        self.assertEqual(await c_store(gw, ds), model.FAILURE_CONFLICT)
        path = os.path.join(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
        stored = dcmread(path)
        self.assertNotEqual(str(stored.PatientName), "Other^Patient")

    async def test_allowed_callers(self) -> None:
        root = self.archive()
        gw = await self.gateway(root, {"store-to": AET, "allowed-callers": ["MODALITY"]})
        path = os.path.join(peers._temp_dir(self, "storescu"), "ct.dcm")
        ds = fresh_test_file("CT_small.dcm")
        ds.save_as(path, enforce_file_format=True)
        argv = ["storescu", "-v", "-aec", LISTENER_AET, peers.LOCALHOST, str(gw.dimse_port), path]
        refused = await peers.run_tool(self, [argv[0], "-aet", "STRANGER", *argv[1:]])
        self.assertNotEqual(refused.returncode, 0, refused.describe())
        self.assertIn("Calling AE Title Not Recognized", refused.stdout + refused.stderr, refused.describe())
        self.assertFalse(os.path.exists(os.path.join(root, ds.StudyInstanceUID)))
        accepted = await peers.run_tool(self, [argv[0], "-aet", "MODALITY", *argv[1:]])
        self.assertEqual(accepted.returncode, 0, accepted.describe())
        self.assertTrue(os.path.exists(os.path.join(root, ds.StudyInstanceUID)))


class EnvironmentTests(LocalTestCase):
    """``DICOM_RST_*`` variables over the file, in a real ``twistd dicomrst``."""

    async def test_overrides_reach_the_gateway(self) -> None:
        in_file, from_env = self.archive(), self.archive()
        env = {"DICOM_RST_SERVER_HTTP_BASE_PATH": "/dicomweb", "DICOM_RST_AETS_0_PATH": from_env}
        gw = await start_gateway(self, [{"aet": AET, "backend": "LOCAL", "path": in_file}], env=env,
                                 ready_path="/dicomweb/aets")
        self.assertEqual((await gw.get("/aets")).code, 404)
        self.assertIn(AET, (await gw.get("/dicomweb/aets")).body.decode())
        self.assertTrue(os.path.isdir(from_env))
        self.assertFalse(os.path.exists(in_file))

    async def test_unknown_variable_stops_the_gateway_naming_it(self) -> None:
        from tests.support.gateway import failed_start, gateway_config, gateway_env, write_config

        directory, path = write_config(self, gateway_config(*peers.free_ports(2)))
        env = {**gateway_env(), "DICOM_RST_SERVER_HTTP_PROT": "8080"}
        returncode, output = await failed_start(self, path, directory, env)
        self.assertGreater(returncode, 0, output)
        expected = "dicomrst: config error: DICOM_RST_SERVER_HTTP_PROT: names no configuration key"
        self.assertIn(expected, output)
        self.assertNotIn("Traceback", output)


class FirstRunTests(TestCase):
    """``twistd -n dicomrst`` without ``--config`` in an empty directory (its ports moved to
    free ones, and its cache into the directory, by environment overrides)."""

    timeout = TIMEOUT

    async def test_serves_and_stores_a_local_archive(self) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        from tests.support.gateway import TWISTD_MAIN, gateway_env, read

        directory = peers._temp_dir(self, "first-run")
        http_port, dimse_port = peers.free_ports(2)
        env = {**gateway_env(), "DICOM_RST_SERVER_HTTP_PORT": str(http_port),
               "DICOM_RST_SERVER_DIMSE_0_PORT": str(dimse_port), "DICOM_RST_SERVER_CACHE_PATH": "cache"}
        log_path = os.path.join(directory, "gateway.log")
        child = peers._spawn(self, sys.executable, sys.executable,
                             ["-c", TWISTD_MAIN, "-n", "--pidfile=", "dicomrst"], env, cwd=directory,
                             log_path=log_path, grace=10.0)
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        url = f"http://{peers.LOCALHOST}:{http_port}"

        async def ready() -> bool:
            return (await read(await http.get(url + "/aets", timeout=2))).code == 200

        await peers._wait_until(ready, "the first-run gateway", 30.0, child)
        with open(log_path, encoding="utf-8") as f:
            started = f.read()
        self.assertIn(f"DICOMweb (QIDO-RS, WADO-RS, STOW-RS): {url}/aets/LOCAL", started)
        self.assertIn(f"C-STORE into LOCAL: AE title DICOMRST at 127.0.0.1:{dimse_port}", started)

        ds = fresh_test_file("CT_small.dcm")
        body = multipart_body([([("Content-Type", "application/dicom")], part10(ds))], BOUNDARY)
        stow = await read(await http.post(url + "/aets/LOCAL/studies", data=body,
                                          headers={"Content-Type": STOW_CONTENT_TYPE}, timeout=30))
        self.assertEqual(stow.code, 200, stow.body[:300])
        objects = os.path.join(directory, "dicomrst-data", "objects")
        self.assertTrue(os.path.exists(os.path.join(objects, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                    f"{ds.SOPInstanceUID}.dcm")))
        pushed = fresh_test_file("MR_small.dcm")
        path = os.path.join(directory, "mr.dcm")
        pushed.save_as(path, enforce_file_format=True)
        result = await peers.run_tool(
            self, ["storescu", "-aec", "DICOMRST", peers.LOCALHOST, str(dimse_port), path]
        )
        self.assertEqual(result.returncode, 0, result.describe())
        retrieved = await read(await http.get(
            url + instance_path("LOCAL", pushed.StudyInstanceUID),
            headers={"Accept": ANY_SYNTAX}, timeout=30))
        self.assertEqual(retrieved.code, 200, retrieved.body[:300])
        # Both found by search at once, from the index the first run created.
        for stored in (ds, pushed):
            query = f"PatientID={stored.PatientID}&StudyInstanceUID={stored.StudyInstanceUID}"
            found = await read(await http.get(url + "/aets/LOCAL/studies?" + query,
                                              headers={"Accept": "application/dicom+json"}, timeout=30))
            self.assertEqual(found.code, 200, found.body[:300])
            self.assertEqual([r["0020000D"]["Value"][0] for r in found.json()], [stored.StudyInstanceUID])
        self.assertTrue(os.path.isfile(os.path.join(directory, "dicomrst-data", "index.sqlite")))
        await pool.closeCachedConnections()
        self.assertIn(await child.stop(grace=10.0), (0, -signal.SIGTERM))


class IdleFootprintTests(TestCase):
    """The first-run gateway has numpy imported but not run (``twistd dicomrst`` defers
    it, `dicomrst.common.lazyimports`): seen from outside, its extension is not mapped
    until a rendered frame needs it, and that request is answered."""

    timeout = TIMEOUT

    async def test_numpy_runs_at_the_first_rendered_frame(self) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        from tests.support.gateway import TWISTD_MAIN, gateway_env, read

        if not os.path.exists("/proc/self/maps"):
            raise SkipTest("reads /proc/PID/maps")
        directory = peers._temp_dir(self, "first-run")
        http_port, dimse_port = peers.free_ports(2)
        env = {**gateway_env(), "DICOM_RST_SERVER_HTTP_PORT": str(http_port),
               "DICOM_RST_SERVER_DIMSE_0_PORT": str(dimse_port), "DICOM_RST_SERVER_CACHE_PATH": "cache"}
        child = peers._spawn(self, sys.executable, sys.executable,
                             ["-c", TWISTD_MAIN, "-n", "--pidfile=", "dicomrst"], env, cwd=directory,
                             log_path=os.path.join(directory, "gateway.log"), grace=10.0)
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        url = f"http://{peers.LOCALHOST}:{http_port}"

        async def ready() -> bool:
            return (await read(await http.get(url + "/aets", timeout=2))).code == 200

        def numpy_mapped() -> bool:
            with open(f"/proc/{child.pid}/maps") as f:
                return "/numpy/_core/_multiarray_umath" in f.read()

        await peers._wait_until(ready, "the first-run gateway", 30.0, child)
        searched = await read(await http.get(url + "/aets/LOCAL/studies", timeout=30))
        self.assertEqual(searched.code, 200, searched.body[:300])
        self.assertFalse(numpy_mapped())
        ds = fresh_test_file("CT_small.dcm")
        body = multipart_body([([("Content-Type", "application/dicom")], part10(ds))], BOUNDARY)
        stow = await read(await http.post(url + "/aets/LOCAL/studies", data=body,
                                          headers={"Content-Type": STOW_CONTENT_TYPE}, timeout=30))
        self.assertEqual(stow.code, 200, stow.body[:300])
        rendered = await read(await http.get(
            url + instance_path("LOCAL", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            + "/rendered", headers={"Accept": "image/jpeg"}, timeout=30))
        self.assertEqual(rendered.code, 200, rendered.body[:300])
        self.assertTrue(rendered.body.startswith(b"\xff\xd8"))
        self.assertTrue(numpy_mapped())
        await pool.closeCachedConnections()
        self.assertIn(await child.stop(grace=10.0), (0, -signal.SIGTERM))


def _data_set(part10_object: bytes) -> bytes:
    """The data set of a Part-10 object (after preamble and file meta)."""
    from dicomrst.common.part10 import read_file_meta

    meta = read_file_meta(part10_object, final=True)
    assert meta is not None
    return part10_object[meta.dataset_offset :]


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)



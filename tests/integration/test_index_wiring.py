"""The index in a real gateway (``twistd dicomrst``): QIDO-RS on LOCAL and S3 (moto) AETs
after STOW-RS and after C-STOREs from DCMTK's ``storescu``; files and objects put or
removed behind the gateway's back found by the periodic scan and by ``python -m
dicomrst.scan``; a gateway killed (SIGKILL) in the middle of a large STOW-RS leaves, after
a restart and its scan, no instance indexed without its file and no file unindexed; two
gateways on one PostgreSQL index and one bucket; and how startup goes with no index
needed, or one that cannot be opened."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from typing import Any
from urllib.parse import urlencode

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet import task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.datasets import part10
from tests.support.gateway import (
    LISTENER_AET,
    Gateway,
    Response,
    eventually,
    failed_start,
    gateway_config,
    gateway_env,
    pacs_aet,
    start_gateway,
    twistd_args,
    write_config,
)
from tests.support.postgres import start_postgres
from tests.support.s3 import s3_aet
from tests.support.stow import fresh_test_file, multipart_body
from tests.support.wado import ANY_SYNTAX, instance_path, parse_multipart

reactor: Any = _global_reactor

TIMEOUT = 240
AET = "ARCHIVE"
S3AET = "S3AET"
BUCKET = "indexed-archive"
PREFIX = "archive/"
BOUNDARY = b"index-wiring-boundary"
STOW_CONTENT_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
SOP_INSTANCE_UID = "00080018"
STUDY_INSTANCE_UID = "0020000D"


def _data_set(data: bytes) -> bytes:
    from dicomrst.common.part10 import read_file_meta

    meta = read_file_meta(data, final=True)
    assert meta is not None
    return data[meta.dataset_offset :]


def _value(result: dict[str, Any], tag: str) -> Any:
    return result.get(tag, {}).get("Value", [None])[0]


class IndexTestCase(TestCase):
    timeout = TIMEOUT

    async def stow(self, gw: Gateway, aet: str, objects: list[bytes]) -> Response:
        body = multipart_body([([("Content-Type", "application/dicom")], data) for data in objects], BOUNDARY)
        return await gw.request(
            "POST",
            f"/aets/{aet}/studies",
            data=body,
            headers={"Content-Type": STOW_CONTENT_TYPE, "Accept": "application/dicom+json"},
            timeout=120,
        )

    async def search(self, gw: Gateway, aet: str, resource: str = "instances", **params: str) -> list[Any]:
        query = ("?" + urlencode(params)) if params else ""
        accept = {"Accept": "application/dicom+json"}
        response = await gw.get(f"/aets/{aet}/{resource}{query}", headers=accept)
        self.assertEqual(response.code, 200, f"{response.body[:500]!r}\n{gw.log_tail()}")
        return response.json() if response.body else []

    async def sops(self, gw: Gateway, aet: str, **params: str) -> set[str]:
        return {_value(r, SOP_INSTANCE_UID) for r in await self.search(gw, aet, "instances", **params)}

    async def until_found(self, gw: Gateway, aet: str, expected: set[str], **params: str) -> None:
        """Poll an instance search until it answers `expected` (a scan runs meanwhile)."""
        found: set[str] = set()
        for _ in range(300):
            found = await self.sops(gw, aet, **params)
            if found == expected:
                return
            await task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"found {found}, not {expected}\n{gw.log_tail()}")

    async def scan_command(
        self, gw: Gateway, *aets: str, env: dict[str, str] | None = None
    ) -> peers.ToolResult:
        """``python -m dicomrst.scan --config ...`` beside the gateway, in its directory."""
        directory = os.path.dirname(gw.config_path)
        args = ["-m", "dicomrst.scan", "--config", gw.config_path, *aets]
        child = peers._spawn(self, "dicomrst.scan", sys.executable, args, {**gateway_env(), **(env or {})},
                             cwd=directory, keep_output=True, grace=2.0)
        killer = reactor.callLater(60, child.stop, 2.0)
        try:
            returncode = await child.proto.when_ended()
        finally:
            if killer.active():
                killer.cancel()
        out, err = bytes(child.proto.stdout).decode(), bytes(child.proto.stderr).decode()
        return peers.ToolResult(returncode, out, err, (sys.executable, *args))

    async def retrieve(self, gw: Gateway, path: str) -> list[bytes]:
        response = await gw.get(path, headers={"Accept": ANY_SYNTAX}, timeout=60)
        self.assertEqual(response.code, 200, response.body[:300])
        parts = parse_multipart(response.header("Content-Type"), response.body)
        self.assertTrue(parts.closed)
        return [part.body for part in parts.parts]

    async def storescu(self, gw: Gateway, datasets: list[Dataset]) -> None:
        directory = peers._temp_dir(self, "storescu")
        paths = []
        for i, ds in enumerate(datasets):
            path = os.path.join(directory, f"{i}.dcm")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        argv = ["storescu", "-aet", "MODALITY", "-aec", LISTENER_AET, peers.LOCALHOST, str(gw.dimse_port)]
        argv += paths
        result = await peers.run_tool(self, argv)
        self.assertEqual(result.returncode, 0, result.describe())

    def archive(self) -> str:
        return os.path.abspath(self.mktemp())


class LocalSearchTests(IndexTestCase):
    async def test_search_after_stow_and_storescu(self) -> None:
        root = self.archive()
        gw = await start_gateway(self, [{"aet": AET, "backend": "LOCAL", "path": root}],
                                 listener={"store-to": AET})
        study = generate_uid()
        sent = [fresh_test_file(name, study) for name in ("CT_small.dcm", "MR_small.dcm")]
        for ds in sent:
            ds.PatientID = "WIRE-1"
        response = await self.stow(gw, AET, [part10(ds) for ds in sent])
        self.assertEqual(response.code, 200, response.body[:500])
        # Found at once: the STOW-RS answer came after the index's commit.
        [found] = await self.search(gw, AET, "studies", PatientID="WIRE-1")
        self.assertEqual(_value(found, STUDY_INSTANCE_UID), study)
        self.assertEqual(_value(found, "00201208"), 2)  # NumberOfStudyRelatedInstances
        self.assertEqual(sorted(found["00080061"]["Value"]), ["CT", "MR"])  # ModalitiesInStudy
        self.assertTrue(found["00081190"]["Value"][0].endswith(f"/aets/{AET}/studies/{study}"))
        series = await self.search(gw, AET, f"studies/{study}/series", Modality="MR")
        self.assertEqual([_value(s, "0020000E") for s in series], [sent[1].SeriesInstanceUID])
        self.assertEqual(await self.sops(gw, AET, StudyInstanceUID=study),
                         {ds.SOPInstanceUID for ds in sent})
        # limit and offset: two pages of one, in the index's stable order.
        pages = [await self.sops(gw, AET, StudyInstanceUID=study, limit="1", offset=str(i)) for i in range(3)]
        self.assertEqual([len(p) for p in pages], [1, 1, 0])
        self.assertEqual(pages[0] | pages[1], {ds.SOPInstanceUID for ds in sent})

        pushed = fresh_test_file("CT_small.dcm", study)
        pushed.PatientID = "WIRE-1"
        await self.storescu(gw, [pushed])
        self.assertIn(pushed.SOPInstanceUID, await self.sops(gw, AET, PatientID="WIRE-1"))
        [again] = await self.search(gw, AET, "studies", PatientID="WIRE-1")
        self.assertEqual(_value(again, "00201208"), 3)

    async def test_files_behind_the_gateways_back_periodic_scan(self) -> None:
        root = self.archive()
        gw = await start_gateway(self, [{"aet": AET, "backend": "LOCAL", "path": root}],
                                 env={"DICOM_RST_INDEX_SCAN_INTERVAL": "300"})
        ds = fresh_test_file("CT_small.dcm")
        directory = os.path.join(root, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        os.makedirs(directory)
        path = os.path.join(directory, f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(path, enforce_file_format=True)
        await self.until_found(gw, AET, {ds.SOPInstanceUID})
        [served] = await self.retrieve(gw, instance_path(AET, ds.StudyInstanceUID))
        with open(path, "rb") as f:
            self.assertEqual(_data_set(served), _data_set(f.read()))
        os.unlink(path)
        await self.until_found(gw, AET, set())

    async def test_files_behind_the_gateways_back_scan_command(self) -> None:
        root = self.archive()
        gw = await start_gateway(self, [{"aet": AET, "backend": "LOCAL", "path": root}],
                                 env={"DICOM_RST_INDEX_SCAN_INTERVAL": "0"})
        await eventually(lambda: bool(gw.log_lines(f"index: scanned {AET}")))
        ds = fresh_test_file("CT_small.dcm")
        directory = os.path.join(root, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        os.makedirs(directory)
        path = os.path.join(directory, f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(path, enforce_file_format=True)
        with open(os.path.join(directory, "1.2.3.dcm"), "wb") as f:
            f.write(b"not DICOM")
        self.assertEqual(await self.sops(gw, AET), set())  # no scan runs by itself
        result = await self.scan_command(gw)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(result.stdout.splitlines()[0].split(" (")[0],
                         f"{AET}: 2 objects, 1 added, 0 changed, 0 removed, 1 unreadable", result.describe())
        self.assertIn("skipping file", result.stderr)
        self.assertEqual(await self.sops(gw, AET), {ds.SOPInstanceUID})
        os.unlink(path)
        result = await self.scan_command(gw, AET)
        self.assertIn(f"{AET}: 1 objects, 0 added, 0 changed, 1 removed", result.stdout, result.describe())
        self.assertEqual(await self.sops(gw, AET), set())
        unknown = await self.scan_command(gw, "NOPE")
        self.assertEqual(unknown.returncode, 2, unknown.describe())
        self.assertIn("'NOPE' is not a LOCAL or S3 AET", unknown.stdout)


class S3SearchTests(IndexTestCase):
    async def moto(self) -> peers.Moto:
        moto = await peers.start_moto(self)
        await moto.enable_auth()
        await deferToThread(moto.boto3().create_bucket, Bucket=BUCKET)
        return moto

    async def test_search_after_stow_and_storescu(self) -> None:
        """The index gets each object's full key (with the prefix) and the ETag S3 lists:
        a scan afterwards finds nothing to do."""
        moto = await self.moto()
        aet = s3_aet(moto, aet=S3AET, bucket=BUCKET, prefix=PREFIX)
        gw = await start_gateway(self, [aet], listener={"store-to": S3AET})
        study = generate_uid()
        sent = [fresh_test_file(name, study) for name in ("CT_small.dcm", "MR_small.dcm")]
        response = await self.stow(gw, S3AET, [part10(ds) for ds in sent])
        self.assertEqual(response.code, 200, response.body[:500])
        self.assertEqual(await self.sops(gw, S3AET, StudyInstanceUID=study),
                         {ds.SOPInstanceUID for ds in sent})
        pushed = fresh_test_file("MR_small.dcm", study)
        await self.storescu(gw, [pushed])
        expected = {ds.SOPInstanceUID for ds in [*sent, pushed]}
        self.assertEqual(await self.sops(gw, S3AET, StudyInstanceUID=study), expected)
        [found] = await self.search(gw, S3AET, "studies", StudyInstanceUID=study)
        self.assertEqual(_value(found, "00201208"), 3)
        served = await self.retrieve(gw, instance_path(S3AET, study))
        self.assertEqual(len(served), 3)
        result = await self.scan_command(gw)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn(f"{S3AET}: 3 objects, 0 added, 0 changed, 0 removed", result.stdout, result.describe())

    async def test_objects_behind_the_gateways_back_scan_command(self) -> None:
        moto = await self.moto()
        gw = await start_gateway(self, [s3_aet(moto, aet=S3AET, bucket=BUCKET, prefix=PREFIX)],
                                 env={"DICOM_RST_INDEX_SCAN_INTERVAL": "0"})
        await eventually(lambda: bool(gw.log_lines(f"index: scanned {S3AET}")))
        ds = fresh_test_file("CT_small.dcm")
        key = f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        s3 = moto.boto3()
        await deferToThread(s3.put_object, Bucket=BUCKET, Key=key, Body=part10(ds))
        await deferToThread(s3.put_object, Bucket=BUCKET, Key=f"{PREFIX}1.2/3.4/5.6.dcm", Body=b"not DICOM")
        # Outside the layout: WADO-RS could not retrieve it, so it is not indexed (nor read).
        await deferToThread(s3.put_object, Bucket=BUCKET, Key=f"{PREFIX}notes.txt", Body=part10(ds))
        self.assertEqual(await self.sops(gw, S3AET), set())
        result = await self.scan_command(gw, S3AET)
        self.assertEqual(result.returncode, 0, result.describe())
        line = f"{S3AET}: 2 objects, 1 added, 0 changed, 0 removed, 1 unreadable, 1 outside the layout"
        self.assertIn(line, result.stdout, result.describe())
        self.assertIn("e.g. archive/notes.txt", result.stderr, result.describe())
        self.assertEqual(await self.sops(gw, S3AET), {ds.SOPInstanceUID})
        [served] = await self.retrieve(gw, instance_path(S3AET, ds.StudyInstanceUID))
        self.assertEqual(_data_set(served), _data_set(part10(ds)))
        await deferToThread(s3.delete_object, Bucket=BUCKET, Key=key)
        result = await self.scan_command(gw)
        self.assertIn(f"{S3AET}: 1 objects, 0 added, 0 changed, 1 removed", result.stdout, result.describe())
        self.assertEqual(await self.sops(gw, S3AET), set())

    async def test_objects_behind_the_gateways_back_periodic_scan(self) -> None:
        moto = await self.moto()
        gw = await start_gateway(self, [s3_aet(moto, aet=S3AET, bucket=BUCKET, prefix=PREFIX)],
                                 env={"DICOM_RST_INDEX_SCAN_INTERVAL": "300"})
        ds = fresh_test_file("CT_small.dcm")
        key = f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        s3 = moto.boto3()
        await deferToThread(s3.put_object, Bucket=BUCKET, Key=key, Body=part10(ds))
        await self.until_found(gw, S3AET, {ds.SOPInstanceUID})
        await deferToThread(s3.delete_object, Bucket=BUCKET, Key=key)
        await self.until_found(gw, S3AET, set())


class CrashTests(IndexTestCase):
    async def test_killed_in_the_middle_of_a_large_stow(self) -> None:
        """SIGKILL while a STOW-RS of many instances is being stored: after a restart (whose
        scan runs at start) every file in the archive is found and every instance found
        has its file; nothing half-written is left."""
        root = self.archive()
        index_dir = self.archive()
        os.makedirs(index_dir)
        index_path = os.path.join(index_dir, "index.sqlite")
        env = {"DICOM_RST_INDEX_URL": f"sqlite:{index_path}"}
        aets = [{"aet": AET, "backend": "LOCAL", "path": root}]
        http_port, dimse_port = peers.free_ports(2)
        directory, config_path = write_config(self, gateway_config(http_port, dimse_port, aets))
        log_path = os.path.join(directory, "killed.log")
        child = peers._spawn(self, "dicomrst", sys.executable, twistd_args(config_path),
                             {**gateway_env(), **env}, cwd=directory, log_path=log_path, grace=2.0)
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        url = f"http://{peers.LOCALHOST}:{http_port}"

        async def ready() -> bool:
            response = await http.get(url + "/", timeout=2)
            await response.content()
            return bool(response.code == 200)

        await peers._wait_until(ready, "the gateway to kill", 30.0, child)
        study = generate_uid()
        objects = []
        for _ in range(150):
            ds = fresh_test_file("CT_small.dcm", study)
            ds.PixelData = os.urandom(len(ds.PixelData))
            objects.append(part10(ds))
        body = multipart_body([([("Content-Type", "application/dicom")], data) for data in objects], BOUNDARY)
        posted = http.post(url + f"/aets/{AET}/studies", data=body,
                           headers={"Content-Type": STOW_CONTENT_TYPE}, timeout=120)
        posted.addErrback(lambda _: None)  # cut off by the kill

        def files() -> list[str]:
            found = []
            for here, _dirs, names in os.walk(root):
                found += [os.path.join(here, n) for n in names if not n.startswith(".")]
            return found

        self.assertTrue(await eventually(lambda: len(files()) >= 20, timeout=60), child.describe_log())
        os.kill(child.pid, signal.SIGKILL)
        self.assertEqual(await child.proto.when_ended(), -signal.SIGKILL)
        await posted
        await pool.closeCachedConnections()
        on_disk = {os.path.basename(p)[: -len(".dcm")] for p in files()}
        with sqlite3.connect(index_path) as connection:
            rows = {sop for (sop,) in connection.execute("SELECT sop_uid FROM instances")}
        self.assertLess(len(on_disk), len(objects), "the kill came after the STOW-RS had ended")
        # Indexed only once the file was durable; files the kill caught before their row
        # (often one or two) are what the scan at the restart must find.
        self.assertLessEqual(rows, on_disk)

        gw = await start_gateway(self, aets, env=env)
        await eventually(lambda: bool(gw.log_lines(f"index: scanned {AET}")), timeout=30)
        self.assertEqual([n for here, _d, names in os.walk(root) for n in names if n.startswith(".")], [],
                         gw.log_tail())
        present = {os.path.basename(p)[: -len(".dcm")] for p in files()}
        self.assertEqual(await self.sops(gw, AET, StudyInstanceUID=study, limit="1000"), present)
        for sop in sorted(present)[:3]:
            found = await self.search(gw, AET, "instances", SOPInstanceUID=sop)
            series = _value(found[0], "0020000E")
            [served] = await self.retrieve(gw, instance_path(AET, study, series, sop))
            self.assertEqual(dcmread(_bytes(served)).SOPInstanceUID, sop)


class SharedArchiveTests(IndexTestCase):
    async def test_two_gateways_one_postgresql_one_bucket(self) -> None:
        pg = await start_postgres(self)
        moto = await peers.start_moto(self)
        await moto.enable_auth()
        await deferToThread(moto.boto3().create_bucket, Bucket=BUCKET)
        aet = s3_aet(moto, aet=S3AET, bucket=BUCKET, prefix=PREFIX)
        env = {"DICOM_RST_INDEX_URL": pg.url()}
        first = await start_gateway(self, [aet], env=env, listener={"store-to": S3AET})
        second = await start_gateway(self, [aet], env=env, listener={"store-to": S3AET})
        self.assertNotEqual(first.http_port, second.http_port)
        ds = fresh_test_file("CT_small.dcm")
        response = await self.stow(first, S3AET, [part10(ds)])
        self.assertEqual(response.code, 200, response.body[:500])
        # At once through the other: no scan in between (the default interval is minutes).
        self.assertEqual(await self.sops(second, S3AET, PatientID=str(ds.PatientID)), {ds.SOPInstanceUID})
        [served] = await self.retrieve(second, instance_path(S3AET, ds.StudyInstanceUID))
        self.assertEqual(_data_set(served), _data_set(part10(ds)))
        pushed = fresh_test_file("MR_small.dcm")
        await self.storescu(second, [pushed])
        self.assertEqual(await self.sops(first, S3AET, StudyInstanceUID=pushed.StudyInstanceUID),
                         {pushed.SOPInstanceUID})
        [served] = await self.retrieve(first, instance_path(S3AET, pushed.StudyInstanceUID))
        self.assertEqual(dcmread(_bytes(served)).SOPInstanceUID, pushed.SOPInstanceUID)
        # Put behind both gateways' backs: one scan (the command, on the shared index)
        # and both find it.
        behind = fresh_test_file("CT_small.dcm")
        key = f"{PREFIX}{behind.StudyInstanceUID}/{behind.SeriesInstanceUID}/{behind.SOPInstanceUID}.dcm"
        await deferToThread(moto.boto3().put_object, Bucket=BUCKET, Key=key, Body=part10(behind))
        result = await self.scan_command(first, env=env)
        self.assertIn(f"{S3AET}: 3 objects, 1 added, 0 changed, 0 removed", result.stdout, result.describe())
        for gw in (first, second):
            self.assertEqual(await self.sops(gw, S3AET, StudyInstanceUID=behind.StudyInstanceUID),
                             {behind.SOPInstanceUID})


class StartupTests(IndexTestCase):
    async def test_no_index_without_a_local_or_s3_aet(self) -> None:
        gw = await start_gateway(self, [pacs_aet("PACS", peers.LOCALHOST, peers.free_port())])
        directory = os.path.dirname(gw.config_path)
        self.assertFalse(os.path.exists(os.path.join(directory, "dicomrst-data")), os.listdir(directory))

    async def test_an_index_that_cannot_be_opened_stops_startup(self) -> None:
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        aets = [{"aet": AET, "backend": "LOCAL", "path": self.archive()}]
        directory, path = write_config(self, gateway_config(*peers.free_ports(2), aets))
        env = {**gateway_env(), "DICOM_RST_INDEX_URL": f"sqlite:{blocker}/index.sqlite"}
        returncode, output = await failed_start(self, path, directory, env)
        self.assertGreater(returncode, 0, output)
        self.assertIn(f"dicomrst: config error: index.url: cannot open sqlite:{blocker}/index.sqlite", output)
        self.assertNotIn("Traceback", output)


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)

"""The OHIF viewer (3.13, the built ``@ohif/app``) against the gateway, end to end.

Orthanc holds a 3-slice CT study (or a 30-frame ultrasound object); the gateway serves it
over C-GET; OHIF's ``dist/`` is served by a static site in the test, its ``app-config.js``
pointing at the gateway on another port, so every call the viewer makes is cross-origin and
the study list shows only if the gateway's CORS headers let the page read the answers;
headless chromium, driven by ``tests/viewer/drive.mjs`` (playwright-core), opens the study
list, opens the study in the "Basic Viewer" workflow and reads the viewport canvas back
(`tests.support.ohif`). The S3 test has everything from the gateway's S3 backend (moto)
instead: the study list and series searches from its index, metadata and frames from
the bucket. The control test runs the same
with Orthanc's own DICOMweb as the data source, so that a black viewport through the
gateway is known to be the gateway's.

The requests the viewer sent (method, path, Accept, status) are written to the trial log
(``_trial_temp/test.log``) and into every failure message, and a screenshot of the page as
it was at the end is kept under ``_trial_temp``. No timing is asserted; each step of the
driver has its own bound.

The two ``..._shows_the_image`` tests and the S3 test need WADO-RS frames (issue 12): until
the gateway serves ``.../frames/{n}``, the viewport stays black and they fail at the
``painted`` step (the driver gives up a few seconds after the frame requests came back 404).
"""

from __future__ import annotations

import os
import re

from twisted.python import log
from twisted.trial.unittest import TestCase

from tests.support import ohif, peers
from tests.support.gateway import Gateway, eventually, start_gateway
from tests.support.wado import Stored, get_aet

AET = "ORTHANC"
TIMEOUT = 2 * ohif.DRIVER_TIMEOUT


class OhifTests(TestCase):
    timeout = TIMEOUT

    async def start_orthanc(self, series: list[Stored]) -> peers.Orthanc:
        orthanc = await peers.start_orthanc(self, aet=AET)
        for item in series:
            answer = await orthanc.upload(item.data)
            self.assertEqual(answer.get("Status"), "Success", answer)
        return orthanc

    async def drive(
        self, viewer: ohif.Viewer, site: ohif.StaticSite, api: str, study: str, until: str
    ) -> ohif.DriverRun:
        # Under _trial_temp, kept after the run: what the page showed at the end.
        screenshot = os.path.abspath(self.mktemp() + ".png")
        os.makedirs(os.path.dirname(screenshot), exist_ok=True)
        run = await ohif.run_driver(self, viewer, site.url, study, ohif.PATIENT_NAME, api, until, screenshot)
        log.msg(f"OHIF driver: {run.seconds:.1f} s; {run.step_summary()}; canvas {run.report.get('canvas')}")
        log.msg(f"OHIF -> {api}, {len(run.requests)} requests:\n" + "\n".join(run.request_lines()))
        return run

    async def open_study(
        self, until: str, series: list[Stored] | None = None
    ) -> tuple[Gateway, list[Stored], ohif.DriverRun]:
        """Orthanc holding ``series`` (default: `ohif.ct_series`), the gateway, OHIF, and the
        driver run through its steps up to ``until``."""
        viewer = ohif.find_viewer()
        series = ohif.ct_series() if series is None else series
        orthanc = await self.start_orthanc(series)
        gw = await start_gateway(self, [get_aet(AET, orthanc.host, orthanc.dicom_port)])
        site = ohif.serve_ohif(self, viewer, f"{gw.url}/aets/{AET}")
        self.assertNotEqual(site.port, gw.http_port)  # two origins: the viewer's calls are CORS
        run = await self.drive(viewer, site, gw.url, series[0].study, until)
        return gw, series, run

    async def test_study_list_and_series_metadata(self) -> None:
        gw, series, run = await self.open_study(until="viewport")
        study, uid = series[0].study, series[0].series
        self.assertTrue(run.happened("study-list"), run.describe())
        self.assertIn(ohif.STUDY_DESCRIPTION, run.report["study_row"] or "", run.describe())
        searches = [r for r in run.requests if r["path"].startswith(f"/aets/{AET}/studies?")]
        self.assertTrue(searches, run.describe())
        self.assertEqual(searches[0]["status"], 200, run.describe())
        self.assertTrue(run.happened("open-study"), run.describe())

        metadata = f"/aets/{AET}/studies/{study}/series/{uid}/metadata"
        answered = [r for r in run.requests if r["path"] == metadata]
        self.assertTrue(answered, f"no {metadata}\n{run.describe()}")
        self.assertEqual(answered[0]["status"], 200, run.describe())
        line = rf"GET {re.escape(metadata)} 200 "
        logged = await eventually(lambda: bool(gw.log_lines(line)))
        self.assertTrue(logged, f"{gw.log_tail()}\n{run.describe()}")
        self.assertTrue(run.happened("viewport"), run.describe())

    async def test_viewport_shows_the_image(self) -> None:
        gw, _, run = await self.open_study(until="painted")
        self.assertTrue(run.happened("viewport"), run.describe())
        self.assertTrue(run.happened("painted"), f"{run.describe()}\n{gw.log_tail()}")
        self.assertEqual(run.returncode, 0, run.describe())

    async def test_multiframe_viewport_shows_the_image(self) -> None:
        gw, _, run = await self.open_study(until="painted", series=ohif.us_multiframe())
        self.assertTrue(run.happened("viewport"), run.describe())
        self.assertTrue(run.happened("painted"), f"{run.describe()}\n{gw.log_tail()}")

    async def test_s3_study_list_metadata_and_viewport(self) -> None:
        """Everything from the S3 backend: a CT study put into a bucket (behind the
        gateway's back, so found by its first reconcile scan), which OHIF's study list
        finds through the index (QIDO-RS), whose series it searches (lazy loading), and
        whose metadata and frames it retrieves from the bucket."""
        viewer = ohif.find_viewer()
        series = ohif.ct_series()
        moto = await peers.start_moto(self)
        await moto.enable_auth()
        await ohif.upload_to_s3(moto, series)
        gw = await start_gateway(self, [ohif.s3_aet(moto)])
        scanned = await eventually(lambda: bool(gw.log_lines(f"index: scanned {ohif.S3_AET}")))
        self.assertTrue(scanned, gw.log_tail())
        root = f"{gw.url}/aets/{ohif.S3_AET}"
        site = ohif.serve_ohif(self, viewer, root)
        run = await self.drive(viewer, site, gw.url, series[0].study, "painted")
        self.assertTrue(run.happened("viewport"), run.describe())
        study = series[0].study
        searches = [r for r in run.requests if r["path"].startswith(f"/aets/{ohif.S3_AET}/studies?")]
        self.assertTrue(searches, run.describe())
        self.assertTrue(all(r["status"] == 200 for r in searches), run.describe())
        of_study = f"/aets/{ohif.S3_AET}/studies/{study}/series"
        self.assertTrue([r for r in run.requests if r["path"].startswith(of_study)], run.describe())
        self.assertTrue(run.happened("painted"), f"{run.describe()}\n{gw.log_tail()}")

    async def test_harness_paints_from_orthanc_dicomweb(self) -> None:
        """The control: the same study, OHIF and driver, with Orthanc's own DICOMweb as the
        data source (relayed by the static site: Orthanc 1.10 speaks no CORS). It shows that
        the driver sees a painted viewport when the server has what OHIF asks for, so a black
        viewport through the gateway is the gateway's doing."""
        viewer = ohif.find_viewer()
        series = ohif.ct_series()
        orthanc = await self.start_orthanc(series)
        site = ohif.serve_ohif(self, viewer, proxy_to=orthanc.http_port)
        run = await self.drive(viewer, site, site.origin + ohif.PROXY_PATH, series[0].study, "painted")
        self.assertTrue(run.happened("painted"), run.describe())
        frames = [r for r in run.requests if re.search(r"/frames/\d+$", r["path"])]
        self.assertTrue(frames, run.describe())

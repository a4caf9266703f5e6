"""The OHIF viewer for integration tests: its built app on a static site, and the driver.

What it needs is installed by ``npm ci`` in ``tests/viewer`` (playwright-core, and the built
``@ohif/app`` that ``tests/viewer/fetch-ohif.mjs`` unpacks into ``node_modules``) and by
Debian's ``chromium`` and ``nodejs``; `find_viewer` fails the test (``PeerBinaryMissing``,
never a skip) with the command to run when a piece is missing.

`serve_ohif` serves OHIF's ``dist/`` from a twisted.web site on 127.0.0.1 (a free port, a
single-page app: paths that name no file get ``index.html``) with an ``app-config.js`` of
our own (`app_config`: one DICOMweb data source, the gateway, on another origin, so every
call is cross-origin). `run_driver` runs ``tests/viewer/drive.mjs`` (headless chromium
through playwright-core) and gives back what it reported: which steps happened, the canvas'
pixel statistics, and every request the viewer sent to the gateway. `ct_series` and
`us_multiframe` are the studies the tests open; `s3_aet` and `upload_to_s3` put one in an
S3 bucket (moto) behind the gateway's S3 backend.

Environment knobs: ``DICOMRST_CHROMIUM`` (chromium binary), ``DICOMRST_NODE`` (node binary).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import attrs
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web import server, static
from twisted.web.proxy import ReverseProxyResource

from tests.support import peers
from tests.support.gateway import ROOT, eventually
from tests.support.wado import Stored, fresh

reactor: Any = _global_reactor

VIEWER = Path(ROOT) / "tests" / "viewer"
DRIVER = VIEWER / "drive.mjs"
PLAYWRIGHT = VIEWER / "node_modules" / "playwright-core" / "package.json"
OHIF_DIST = VIEWER / "node_modules" / "@ohif" / "app" / "dist"
CHROMIUM = "/usr/bin/chromium"
INSTALL = (
    "install it as README.rst ('Tests') says: apt-get install -y chromium "
    "(and nodejs npm where there is no node), then 'npm ci' in tests/viewer"
)

#: Bounds (seconds) the driver gets for each step, and for the whole run.
STEP_TIMEOUT = 60
PAINT_TIMEOUT = 60
DRIVER_TIMEOUT = 5 * STEP_TIMEOUT + PAINT_TIMEOUT


@attrs.frozen
class Viewer:
    node: str
    chromium: str
    dist: Path
    driver: Path


def find_viewer() -> Viewer:
    """The installed pieces; ``PeerBinaryMissing`` (a test failure) naming what is missing."""
    node = os.environ.get("DICOMRST_NODE") or shutil.which("node") or shutil.which("nodejs")
    chromium = os.environ.get("DICOMRST_CHROMIUM", CHROMIUM)
    missing = []
    if node is None:
        missing.append("node (Debian package 'nodejs')")
    # Not peers.find_binary: Debian's /usr/bin/chromium is a shell script (it reads
    # /etc/chromium.d), which that function skips.
    if shutil.which(chromium) is None:
        missing.append(f"chromium at {chromium} (Debian package 'chromium')")
    if not PLAYWRIGHT.is_file():
        missing.append(f"playwright-core in {PLAYWRIGHT.parent.parent} ('npm ci' in tests/viewer)")
    if not (OHIF_DIST / "index.html").is_file():
        missing.append(f"the built OHIF viewer in {OHIF_DIST} ('npm ci' in tests/viewer)")
    if missing or node is None:
        raise peers.PeerBinaryMissing(f"OHIF test: missing {'; '.join(missing)}; {INSTALL}")
    return Viewer(node=node, chromium=chromium, dist=OHIF_DIST, driver=DRIVER)


# -- the study ---------------------------------------------------------------------------------

#: One component, no caret: OHIF shows it as it is (it writes "Family^Given" as "Family,
#: Given"), so the driver finds the study's row by it.
PATIENT_NAME = "dicomrst-ohif"
STUDY_DESCRIPTION = "dicomrst OHIF end to end"


def ct_series(slices: int = 3) -> list[Stored]:
    """One CT study, one series: ``slices`` copies of pydicom's CT_small (128x128, signed
    16-bit, Explicit VR LE) 5 mm apart, with fresh UIDs."""
    study, series = generate_uid(), generate_uid()
    items = []
    for i in range(slices):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientName = PATIENT_NAME
        ds.PatientID = "OHIF1"
        ds.StudyDescription = STUDY_DESCRIPTION
        ds.SeriesDescription = f"CT_small x{slices}"
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * i]
        ds.SliceLocation = z + 5.0 * i
        items.append(fresh(ds, f"ct{i}", study, series))
    return items


def us_multiframe() -> list[Stored]:
    """One study of one object: pydicom's examples_ybr_color.dcm, an Ultrasound Multi-frame
    Image of 30 frames (320x240, YBR_FULL_422, JPEG Baseline), with fresh UIDs."""
    ds = dcmread(get_testdata_file("examples_ybr_color.dcm"))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "OHIF2"
    ds.StudyDescription = STUDY_DESCRIPTION
    return [fresh(ds, "us")]


# -- S3 ----------------------------------------------------------------------------------------

#: The S3 backend's AE title and bucket in the OHIF tests (cf. tests/integration/test_s3.py,
#: whose helpers a test module cannot import).
S3_AET = "S3AET"
S3_BUCKET = "dicom-bucket"


def s3_aet(moto: peers.Moto) -> dict[str, Any]:
    """The gateway's ``aets[]`` entry for the bucket on ``moto`` (path style, static keys)."""
    return {
        "aet": S3_AET,
        "backend": "S3",
        "endpoint": moto.url,
        "endpoint-style": "path",
        "bucket": S3_BUCKET,
        "credentials": {"access-key": moto.access_key, "secret-key": moto.secret_key},
    }


def upload_to_s3(moto: peers.Moto, items: list[Stored]) -> Deferred[None]:
    """Create the bucket and put ``items`` at the keys the S3 backend reads, with boto3."""

    def blocking() -> None:
        s3 = moto.boto3()
        s3.create_bucket(Bucket=S3_BUCKET)
        for item in items:
            key = f"{item.study}/{item.series}/{item.sop}.dcm"
            s3.put_object(Bucket=S3_BUCKET, Key=key, Body=item.data)

    return deferToThread(blocking)


# -- the static site ---------------------------------------------------------------------------


def app_config(dicomweb_root: str, wado_root: str | None = None, lazy_load: bool = True) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at ``dicomweb_root`` (the gateway's
    ``/aets/{aet}``), set as shared/docs/test-peers.md says, and no dialogs in the way.
    ``wado_root``: another root for WADO-RS (the study list's searches still go to
    ``dicomweb_root``). ``lazy_load`` (``enableStudyLazyLoad``): OHIF searches the study's
    series (on ``wado_root``) and asks for each series' metadata; without it, it asks for
    the study's metadata once.
    """
    wado_root = wado_root or dicomweb_root
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "dicomrst",
            "name": "dicomrst",
            "qidoRoot": dicomweb_root,
            "wadoRoot": wado_root,
            "wadoUriRoot": wado_root,
            "qidoSupportsIncludeField": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": lazy_load,
            "staticWado": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


@attrs.define(eq=False)
class StaticSite:
    url: str
    origin: str
    port: int


#: Where `serve_ohif` relays requests to another loopback server, when asked.
PROXY_PATH = "/proxy"


def serve_ohif(
    case: TestCase,
    viewer: Viewer,
    dicomweb_root: str | None = None,
    proxy_to: int | None = None,
    wado_root: str | None = None,
    lazy_load: bool = True,
) -> StaticSite:
    """Serve ``viewer.dist`` on a free loopback port, with `app_config` for ``dicomweb_root``
    (``wado_root``, ``lazy_load``) as ``/app-config.js``.

    ``proxy_to``: a port on 127.0.0.1 that ``PROXY_PATH/...`` is relayed to, so that a server
    speaking no CORS (Orthanc 1.10) can be the data source, from the viewer's own origin:
    ``dicomweb_root`` None is then ``PROXY_PATH/dicom-web`` on this site.

    At cleanup: stop listening, then close what connections the browser left (it is gone by
    then; an abort only hurries the kernel's close along).
    """
    root = static.File(str(viewer.dist))
    # OHIF routes /viewer, /basic... in the browser: any path naming no file is the app.
    index = static.File(str(viewer.dist / "index.html"), defaultType="text/html")
    index.childNotFound = index
    root.childNotFound = index
    if proxy_to is not None:
        root.putChild(PROXY_PATH.strip("/").encode(), ReverseProxyResource(peers.LOCALHOST, proxy_to, b""))
    factory = WrappingFactory(server.Site(root))
    port = reactor.listenTCP(0, factory, interface=peers.LOCALHOST)

    async def stop() -> None:
        await port.stopListening()
        for protocol in list(factory.protocols):
            protocol.transport.abortConnection()
        closed = await eventually(lambda: not factory.protocols)
        case.assertTrue(closed, f"static site connections left open: {list(factory.protocols)}")

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    number = port.getHost().port
    origin = f"http://{peers.LOCALHOST}:{number}"
    if dicomweb_root is None:
        dicomweb_root = f"{origin}{PROXY_PATH}/dicom-web"
    config_js = app_config(dicomweb_root, wado_root, lazy_load).encode()
    root.putChild(b"app-config.js", static.Data(config_js, "application/javascript"))
    return StaticSite(url=f"{origin}/", origin=origin, port=number)


# -- the driver --------------------------------------------------------------------------------


@attrs.frozen
class DriverRun:
    """What ``drive.mjs`` reported (its JSON), its exit status and its stderr."""

    returncode: int
    report: dict[str, Any]
    stderr: str
    seconds: float
    screenshot: str | None

    def happened(self, step: str) -> bool:
        return any(s["name"] == step and s["ok"] for s in self.report.get("steps", []))

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.report.get("requests", []))

    def request_lines(self) -> list[str]:
        """One line per request the viewer sent to the gateway: method, path, Accept, status."""
        return [
            f"{r['method']} {r['path']} [Accept: {r['accept']}] -> {r['status'] or r['failure']}"
            for r in self.requests
        ]

    def step_summary(self) -> str:
        """Each step tried, whether it happened, and how long it took (for the log only)."""
        steps = self.report.get("steps", [])
        return ", ".join(f"{s['name']}={'ok' if s['ok'] else 'NO'} ({s['seconds']:.1f} s)" for s in steps)

    def describe(self) -> str:
        """For failure messages."""
        report = self.report
        lines = [
            f"driver exit {self.returncode} after {self.seconds:.1f} s: {report.get('error') or 'all steps'}",
            f"steps: {self.step_summary()}",
            f"screenshot: {self.screenshot}",
            f"study row: {report.get('study_row')}",
            f"canvas: {report.get('canvas')}",
            "requests to the gateway:",
            *(f"  {line}" for line in self.request_lines()),
            "console (first 20):",
            *(f"  {line}" for line in report.get("console", [])[:20]),
            f"page errors: {report.get('page_errors')}",
        ]
        if self.stderr.strip():
            lines.append(f"--- driver stderr ---\n{self.stderr[-3000:]}")
        return "\n".join(lines)


async def run_driver(
    case: TestCase,
    viewer: Viewer,
    url: str,
    study: str,
    row_text: str,
    api: str,
    until: str = "painted",
    screenshot: str | None = None,
) -> DriverRun:
    """Run the driver to the end (killed after `DRIVER_TIMEOUT` s); its report as a DriverRun.

    ``row_text``: a text in the study's row of the study list, and in no other row.
    ``api``: the gateway's origin; the driver records every request the page sends there.
    ``until``: the last step to try (``drive.mjs`` lists them). The study is opened in the
    "Basic Viewer" workflow (the ``viewer`` mode). ``screenshot``: a PNG path for what the
    page showed at the end.
    """
    args = [
        str(viewer.driver),
        "--url", url,
        "--study", study,
        "--row-text", row_text,
        "--api", api,
        "--chromium", viewer.chromium,
        "--until", until,
        "--step-timeout", str(STEP_TIMEOUT),
        "--paint-timeout", str(PAINT_TIMEOUT),
    ]
    if screenshot:
        args += ["--screenshot", screenshot]
    started = reactor.seconds()
    child = peers._spawn(
        case, "OHIF driver", viewer.node, args, dict(os.environ), cwd=str(VIEWER), keep_output=True, grace=5.0
    )
    ended = child.proto.when_ended()
    killer = reactor.callLater(DRIVER_TIMEOUT, child.stop, 5.0)
    returncode = await ended
    timed_out = not killer.active()
    if not timed_out:
        killer.cancel()
    seconds = reactor.seconds() - started
    stdout = bytes(child.proto.stdout).decode("utf-8", "replace")
    stderr = bytes(child.proto.stderr).decode("utf-8", "replace")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if timed_out or not lines:
        why = f"killed after {DRIVER_TIMEOUT} s" if timed_out else f"exit {returncode}, no JSON report"
        case.fail(f"OHIF driver: {why}\n--- stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-3000:]}")
    report = json.loads(lines[-1])
    return DriverRun(
        returncode=returncode, report=report, stderr=stderr, seconds=seconds, screenshot=screenshot
    )

"""STOW-RS of the ~105 MB CT study through dicomrst into Orthanc, against DCMTK ``storescu``
straight into Orthanc and Orthanc's own STOW-RS, in the same run (issue 5); and the gateway's
peak RSS while a ~1 GB body is uploaded.

Each run stores the study into an empty Orthanc (the study is deleted between runs), the three
ways interleaved. The HTTP bodies are files posted by curl (streamed, with a Content-Length);
storescu sends the study's files over one association. The gateway's pool is as large as
Orthanc's DICOM thread count (4): an idle pooled association holds one of Orthanc's threads, so
the gateway's idle timeout is short and the next contender waits it out.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from bench import data, peers
from bench.stats import row

POOL_SIZE = 4  # Orthanc's default DicomThreadsCount
IDLE_TIMEOUT_MS = 300
BOUNDARY = "dicomrst-bench-boundary-7d1c"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def write_body(path: Path, instances: list[bytes]) -> int:
    with open(path, "wb") as f:
        for instance in instances:
            f.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
            f.write(instance)
            f.write(b"\r\n")
        f.write(f"--{BOUNDARY}--\r\n".encode("ascii"))
        return f.tell()


def post(url: str, body: Path, response: Path) -> float:
    """curl POST of `body`, streamed from the file; seconds. Raises unless 200."""
    argv = [
        "curl", "-s", "-o", str(response), "-w", "%{time_total} %{http_code}",
        "-X", "POST", "-T", str(body),
        "-H", f"Content-Type: {CONTENT_TYPE}", "-H", "Accept: application/dicom+json",
        "-H", "Expect:",  # no 100-continue round trip
        url,
    ]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()
    if out[1] != "200":
        raise RuntimeError(f"POST {url} -> {out[1]}: {response.read_text()[:500]}")
    return float(out[0])


def storescu(orthanc: peers.Orthanc, files: list[Path]) -> float:
    t = time.perf_counter()
    subprocess.run(
        [
            peers.dcmtk("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            orthanc.aet,
            "127.0.0.1",
            str(orthanc.dicom_port),
        ]
        + [str(f) for f in files],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
    )
    return time.perf_counter() - t


def clear(orthanc: peers.Orthanc, expected: int | None = None) -> None:
    """Check Orthanc holds `expected` instances (when given), then delete every study."""
    with urllib.request.urlopen(orthanc.url + "/statistics") as r:
        count = json.load(r)["CountInstances"]
    if expected is not None and count != expected:
        raise RuntimeError(f"Orthanc holds {count} instances, expected {expected}")
    with urllib.request.urlopen(orthanc.url + "/studies") as r:
        studies = json.load(r)
    for study in studies:
        req = urllib.request.Request(f"{orthanc.url}/studies/{study}", method="DELETE")
        with urllib.request.urlopen(req) as r:
            r.read()
    # Let the gateway's idle associations go, so they hold none of Orthanc's threads.
    time.sleep(IDLE_TIMEOUT_MS / 1000 + 0.3)


class StowGateway(peers.Process):
    """``twistd -n dicomrst`` with a STOW-sized upload limit and a pool matching Orthanc."""

    def __init__(self, workdir: Path, orthanc: peers.Orthanc, max_upload: int, name: str) -> None:
        import sys

        import yaml

        self.http_port = peers.free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "telemetry": {"level": "WARN"},
            "server": {
                "aet": "DICOMRST",
                "http": {
                    "interface": "127.0.0.1",
                    "port": self.http_port,
                    "request-timeout": 600_000,
                    "max-upload-size": max_upload,
                },
                "dimse": [],
                "cache": {"path": str(workdir / f"{name}-cache")},
            },
            "aets": [
                {
                    "aet": orthanc.aet,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "pool": {"size": POOL_SIZE, "idle-timeout": IDLE_TIMEOUT_MS},
                    "stow-rs": {"timeout": 60_000},
                }
            ],
        }
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
        env = {"PYTHONPATH": f"{peers.ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        super().__init__(
            [twistd, "-n", "--pidfile=", "dicomrst", "--config", str(path)],
            env=env,
            log=workdir / f"{name}.log",
        )
        peers.wait_http(self.url + "/")


def run(runs: int = 5, rss_slices: int = 2000) -> None:
    wd = peers.workdir()
    orthanc = peers.Orthanc(wd)
    gateway = None
    try:
        _study, instances = data.ct_study()
        study_dir = wd / "study"
        study_dir.mkdir()
        files = []
        for i, instance in enumerate(instances):
            path = study_dir / f"{i:04d}.dcm"
            path.write_bytes(instance)
            files.append(path)
        body = wd / "study.multipart"
        size = write_body(body, instances)
        del instances
        gateway = StowGateway(wd, orthanc, max_upload=200_000_000, name="dicomrst")
        ours_url = f"{gateway.url}/aets/{orthanc.aet}/studies"
        orthanc_url = f"{orthanc.url}/dicom-web/studies"
        response = wd / "response.json"
        n = len(files)
        times: dict[str, list[float]] = {"dicomrst": [], "storescu": [], "orthanc": []}
        clear(orthanc)
        for _ in range(runs):
            times["dicomrst"].append(post(ours_url, body, response))
            clear(orthanc, n)
            times["storescu"].append(storescu(orthanc, files))
            clear(orthanc, n)
            times["orthanc"].append(post(orthanc_url, body, response))
            clear(orthanc, n)
        print(f"STOW-RS of a {n}-instance CT study ({size / 1e6:.0f} MB body) into Orthanc, {runs} runs")
        print("  (ratio: median time relative to storescu's)")
        med = {k: statistics.median(v) for k, v in times.items()}
        anchor = med["storescu"]
        print(row("dicomrst STOW-RS -> C-STORE (pool 4)", times["dicomrst"], "s", anchor))
        print(row("DCMTK storescu -> Orthanc (1 association)", times["storescu"], "s", anchor))
        print(row("Orthanc's own STOW-RS", times["orthanc"], "s", anchor))
        print(f"  dicomrst vs storescu: {med['storescu'] / med['dicomrst']:.2f}x the speed (target >= 0.9x)")
        print(
            f"  dicomrst vs Orthanc STOW-RS: {med['orthanc'] / med['dicomrst']:.2f}x the speed (target > 1x)"
        )
        gateway.stop()
        gateway = None

        body.unlink()
        if rss_slices:
            peak_rss(wd, orthanc, rss_slices)
    finally:
        if gateway is not None:
            gateway.stop()
        orthanc.stop()
        shutil.rmtree(wd, ignore_errors=True)


def peak_rss(wd: Path, orthanc: peers.Orthanc, slices: int) -> None:
    """One upload of a `slices`-instance study (2000: ~1.05 GB) to a fresh gateway; its peak RSS."""
    big = wd / "big.multipart"
    _study, instances = data.ct_study(n_slices=slices, seed=13)
    size = write_body(big, instances)
    del instances
    gateway = StowGateway(wd, orthanc, max_upload=size + 1_000_000, name="dicomrst-rss")
    try:
        response = wd / "response-rss.json"
        idle = peers.peak_rss_mb(gateway.pid)  # its imports and start-up alone
        seconds = post(f"{gateway.url}/aets/{orthanc.aet}/studies", big, response)
        stored = len(json.loads(response.read_text())["00081199"]["Value"])
        rss = peers.peak_rss_mb(gateway.pid)
        print(
            f"  one upload of {size / 1e9:.2f} GB ({slices} instances, {stored} stored) in "
            f"{seconds:.1f} s: gateway peak RSS {rss:.0f} MB (target < 100 MB), "
            f"{idle:.0f} MB before the upload"
        )
    finally:
        gateway.stop()
        big.unlink()
        clear(orthanc)

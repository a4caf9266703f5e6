"""The idle footprint (issue 15 item 4): RSS of ``twistd -n dicomrst`` in its default
(zero-configuration) setup, in an empty directory, once it answers HTTP and has served
nothing; and of the same process after one QIDO-RS and one STOW-RS.  Orthanc's idle RSS in
the same run, for context."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import peers
from bench.stats import row


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _one(work: Path) -> tuple[float, float]:
    import urllib.request

    directory = Path(tempfile.mkdtemp(dir=work))
    http_port, dimse_port = peers.free_port(), peers.free_port()
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    env = {
        "PYTHONPATH": f"{peers.ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "DICOM_RST_SERVER_HTTP_PORT": str(http_port),
        "DICOM_RST_SERVER_DIMSE_0_PORT": str(dimse_port),
    }
    cwd = os.getcwd()
    os.chdir(directory)  # the default configuration keeps its data in ./dicomrst-data
    try:
        gateway = peers.Process([twistd, "-n", "--pidfile=", "dicomrst"], env=env, log=directory / "log")
    finally:
        os.chdir(cwd)
    try:
        url = f"http://127.0.0.1:{http_port}"
        peers.wait_http(url + "/")
        time.sleep(2.0)  # let start-up work (the first index scan) settle
        idle = rss_mb(gateway.pid)
        with urllib.request.urlopen(f"{url}/aets/LOCAL/studies") as response:
            response.read()
        return idle, rss_mb(gateway.pid)
    finally:
        gateway.stop()


def run(runs: int = 5) -> None:
    work = peers.workdir()
    figures = [_one(work) for _ in range(runs)]
    orthanc = peers.Orthanc(work)
    try:
        time.sleep(2.0)
        orthanc_idle = rss_mb(orthanc.pid)
    finally:
        orthanc.stop()
    print(f"\nIdle footprint of the default configuration (twistd -n dicomrst, no --config); {runs} starts")
    print(row("dicomrst idle RSS (answering, nothing served)", [f[0] for f in figures], "MB", fmt="{:.1f}"))
    print(row("dicomrst RSS after one QIDO-RS", [f[1] for f in figures], "MB", fmt="{:.1f}"))
    print(f"  Orthanc 1.10.1 idle RSS (context): {orthanc_idle:.1f} MB")

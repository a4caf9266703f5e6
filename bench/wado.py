"""WADO-RS study retrieve through dicomrst (C-GET) against DCMTK getscu, pynetdicom's
C-GET and Orthanc's own WADO-RS, on the same ~105 MB CT study in the same run (issue 4)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from bench import data, peers
from bench.stats import row


def _curl(url: str, limit_rate: str | None = None) -> tuple[float, float, int]:
    """(total seconds, seconds to first byte, bytes) of a GET written to /dev/null."""
    argv = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{time_starttransfer} %{size_download} %{http_code}",
        "-H",
        'Accept: multipart/related; type="application/dicom"',
        url,
    ]
    if limit_rate:
        argv[1:1] = ["--limit-rate", limit_rate]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()
    if out[3] != "200":
        raise RuntimeError(f"GET {url} -> {out[3]}")
    return float(out[0]), float(out[1]), int(out[2])


def _getscu(orthanc: peers.Orthanc, study: str) -> float:
    out = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        t = time.perf_counter()
        subprocess.run(
            [
                peers.dcmtk("getscu"),
                "-aet",
                "GETSCU",
                "-aec",
                orthanc.aet,
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "-od",
                out,
                "127.0.0.1",
                str(orthanc.dicom_port),
            ],
            check=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
        )
        return time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _pynetdicom_get(orthanc: peers.Orthanc, study: str) -> float:
    received = [0]

    def on_store(event: evt.Event) -> int:
        received[0] += len(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="PYGETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for cx in StoragePresentationContexts[:120]:
        ae.add_requested_context(cx.abstract_syntax)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    t = time.perf_counter()
    assoc = ae.associate(
        "127.0.0.1",
        orthanc.dicom_port,
        ae_title=orthanc.aet,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    # pynetdicom leaves Nagle on; be fair to it.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    for _status, _ident in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
        pass
    assoc.release()
    return time.perf_counter() - t


def run(runs: int = 5, slices: int = 200, slow: bool = False, only_slow: bool = False) -> None:
    work = peers.workdir()
    orthanc = peers.Orthanc(work)
    gateway = None
    try:
        study, files = data.ct_study(slices)
        size_mb = sum(len(f) for f in files) / 1e6
        for blob in files:
            orthanc.upload(blob)
        del files
        gateway = peers.Gateway(
            work,
            [
                {
                    "aet": orthanc.aet,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "wado-rs": {"retrieve": "get"},
                }
            ],
        )
        gw_url = f"{gateway.url}/aets/{orthanc.aet}/studies/{study}"
        or_url = f"{orthanc.url}/dicom-web/studies/{study}"
        if only_slow:
            total, first, got = _curl(gw_url, limit_rate="10M")
            print(
                f"\nslow client on {slices} slices ({size_mb:.0f} MB): curl --limit-rate 10M took "
                f"{total:.1f} s for {got / 1e6:.0f} MB, first byte {first * 1000:.0f} ms; gateway peak RSS "
                f"{peers.peak_rss_mb(gateway.pid):.0f} MB"
            )
            return
        # Warm up each path once (pool, Orthanc's caches, imports).
        _curl(gw_url), _curl(or_url), _getscu(orthanc, study)
        gw, ttfb, gw_bytes = [], [], 0
        for _ in range(runs):
            total, first, gw_bytes = _curl(gw_url)
            gw.append(total)
            ttfb.append(first)
        rss = peers.peak_rss_mb(gateway.pid)
        orth = [_curl(or_url)[0] for _ in range(runs)]
        getscu = [_getscu(orthanc, study) for _ in range(runs)]
        pyget = [_pynetdicom_get(orthanc, study) for _ in range(runs)]
        anchor = sorted(getscu)[len(getscu) // 2]
        print(
            f"\nWADO-RS study retrieve, {slices} slices 512x512 CT ({size_mb:.0f} MB of Part-10 files; "
            f"{gw_bytes / 1e6:.0f} MB multipart through dicomrst); seconds, {runs} runs; "
            "ratios to DCMTK getscu"
        )
        print(row("dicomrst WADO-RS via C-GET (curl > /dev/null)", gw, "s", anchor, fmt="{:.3f}"))
        print(row("DCMTK getscu (to tmpfs)", getscu, "s", anchor, fmt="{:.3f}"))
        print(row("pynetdicom C-GET (counting bytes, TCP_NODELAY)", pyget, "s", anchor, fmt="{:.3f}"))
        print(row("Orthanc's own WADO-RS (curl > /dev/null)", orth, "s", anchor, fmt="{:.3f}"))
        print(row("dicomrst throughput", [size_mb / t for t in gw], "MB/s", fmt="{:.0f}"))
        print(row("dicomrst time to first byte", [t * 1000 for t in ttfb], "ms", fmt="{:.1f}"))
        print(
            row(
                "dicomrst first byte as share of total",
                [f / t * 100 for f, t in zip(ttfb, gw, strict=True)],
                "%",
                fmt="{:.1f}",
            )
        )
        print(f"  dicomrst peak RSS after these runs: {rss:.0f} MB")
        if slow:
            total, first, _ = _curl(gw_url, limit_rate="10M")
            print(
                f"  slow client (curl --limit-rate 10M): {total:.1f} s, gateway peak RSS "
                f"{peers.peak_rss_mb(gateway.pid):.0f} MB"
            )
    finally:
        if gateway is not None:
            gateway.stop()
        orthanc.stop()

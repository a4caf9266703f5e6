"""WADO-RS study retrieve through dicomrst, with C-GET and with C-MOVE, against DCMTK getscu,
DCMTK movescu -> storescp, pynetdicom's C-GET and C-MOVE and Orthanc's own WADO-RS, on the
same ~105 MB CT study in the same run (issue 4).

The C-MOVE anchors: DCMTK ``storescp --ignore`` as destination (it reads every byte of every
C-STORE and answers Success but writes nothing, as the gateway writes nothing but its HTTP
response, which curl throws away); a pynetdicom storage SCP in this process that counts the
bytes of each data set. Orthanc lists the gateway's listener, storescp and the pynetdicom SCP
as modalities. The C-MOVE gateway is a process of its own, so its peak RSS is its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

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


def _movescu(orthanc: peers.Orthanc, study: str, destination: str) -> float:
    t = time.perf_counter()
    subprocess.run(
        [
            peers.dcmtk("movescu"),
            "-aet",
            "MOVESCU",
            "-aec",
            orthanc.aet,
            "-aem",
            destination,
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(orthanc.dicom_port),
        ],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
    )
    # Orthanc runs with SynchronousCMove: the final C-MOVE-RSP comes after the last C-STORE-RSP.
    return time.perf_counter() - t


def _nodelay(event: evt.Event) -> None:
    # pynetdicom leaves Nagle on; be fair to it.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PynetdicomStoreSCP:
    """A pynetdicom storage SCP in this process (its own threads), counting bytes."""

    def __init__(self, aet: str = "PYSTORESCP", port: int | None = None) -> None:
        self.aet = aet
        self.port = port or peers.free_port()
        self.received = 0
        ae = AE(ae_title=aet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, _nodelay)],
        )

    def _on_store(self, event: evt.Event) -> int:
        self.received += len(event.request.DataSet.getvalue())
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def _pynetdicom_move(orthanc: peers.Orthanc, study: str, scp: PynetdicomStoreSCP) -> float:
    ae = AE(ae_title="PYMOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    t = time.perf_counter()
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    statuses = [
        int(status.Status)
        for status, _ in assoc.send_c_move(q, scp.aet, StudyRootQueryRetrieveInformationModelMove)
        if status
    ]
    assoc.release()
    if not statuses or statuses[-1] != 0:
        raise RuntimeError(f"pynetdicom C-MOVE ended with {statuses[-1:]}")
    return time.perf_counter() - t


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run(runs: int = 5, slices: int = 200, slow: bool = False, only_slow: bool = False) -> None:
    work = peers.workdir()
    # The C-MOVE destinations listen on ports Orthanc must know when it starts.
    listener_aet, listener_port = "DICOMRST-SCP", peers.free_port()
    tmpfs = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    storescp = storescp_disk = pyscp = orthanc = gateway = mover = None
    try:
        if not only_slow:
            storescp = peers.Storescp(work)
            # For context only: the same, writing each file to tmpfs as the getscu anchor does.
            storescp_disk = peers.Storescp(work, "STORESCP-DISK", output_dir=tmpfs)
            pyscp = PynetdicomStoreSCP()
        modalities = {"dicomrst": {"AET": listener_aet, "Host": "127.0.0.1", "Port": listener_port}}
        for name, scp in (("storescp", storescp), ("storescp-disk", storescp_disk), ("pynetdicom", pyscp)):
            if scp is not None:
                modalities[name] = {"AET": scp.aet, "Host": "127.0.0.1", "Port": scp.port}
        orthanc = peers.Orthanc(work, modalities=modalities)
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
        if not only_slow:
            mover = peers.Gateway(
                work,
                [
                    {
                        "aet": orthanc.aet,
                        "host": "127.0.0.1",
                        "port": orthanc.dicom_port,
                        "wado-rs": {"retrieve": "move", "receivers": [listener_aet]},
                    }
                ],
                dimse_aet=listener_aet,
                dimse_port=listener_port,
                name="dicomrst-move",
            )
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
        assert mover is not None and storescp is not None and pyscp is not None and storescp_disk is not None
        mv_url = f"{mover.url}/aets/{orthanc.aet}/studies/{study}"
        _curl(mv_url), _movescu(orthanc, study, storescp.aet), _pynetdicom_move(orthanc, study, pyscp)
        mv, mv_ttfb, mv_bytes = [], [], 0
        for _ in range(runs):
            total, first, mv_bytes = _curl(mv_url)
            mv.append(total)
            mv_ttfb.append(first)
        mv_rss = peers.peak_rss_mb(mover.pid)
        movescu = [_movescu(orthanc, study, storescp.aet) for _ in range(runs)]
        to_disk = []
        for _ in range(runs + 1):
            to_disk.append(_movescu(orthanc, study, storescp_disk.aet))
            # Each run writes the study anew (storescp would add suffixes to existing names).
            for name in os.listdir(tmpfs):
                os.remove(os.path.join(tmpfs, name))
        del to_disk[0]  # the warm-up
        pymove = [_pynetdicom_move(orthanc, study, pyscp) for _ in range(runs)]
        anchor, py_anchor = _median(movescu), _median(pymove)
        print(
            f"\nWADO-RS study retrieve via C-MOVE, same study ({mv_bytes / 1e6:.0f} MB multipart); "
            f"seconds, {runs} runs; ratios (time) to DCMTK movescu -> storescp"
        )
        print(row("dicomrst WADO-RS via C-MOVE (curl > /dev/null)", mv, "s", anchor, fmt="{:.3f}"))
        print(row("DCMTK movescu -> storescp --ignore", movescu, "s", anchor, fmt="{:.3f}"))
        print(row("DCMTK movescu -> storescp (to tmpfs; context)", to_disk, "s", anchor, fmt="{:.3f}"))
        print(row("pynetdicom C-MOVE -> own SCP (counting, TCP_NODELAY)", pymove, "s", anchor, fmt="{:.3f}"))
        print(row("dicomrst C-MOVE throughput", [size_mb / t for t in mv], "MB/s", fmt="{:.0f}"))
        print(
            row("DCMTK movescu -> storescp throughput", [size_mb / t for t in movescu], "MB/s", fmt="{:.0f}")
        )
        print(row("pynetdicom C-MOVE throughput", [size_mb / t for t in pymove], "MB/s", fmt="{:.0f}"))
        print(
            f"  dicomrst C-MOVE throughput: {anchor / _median(mv):.2f}x DCMTK movescu -> storescp, "
            f"{py_anchor / _median(mv):.2f}x pynetdicom C-MOVE (medians)"
        )
        print(row("dicomrst C-MOVE time to first byte", [t * 1000 for t in mv_ttfb], "ms", fmt="{:.1f}"))
        print(
            row(
                "dicomrst C-MOVE first byte as share of total",
                [f / t * 100 for f, t in zip(mv_ttfb, mv, strict=True)],
                "%",
                fmt="{:.1f}",
            )
        )
        print(f"  dicomrst (C-MOVE gateway) peak RSS after these runs: {mv_rss:.0f} MB")
        if slow:
            total, first, _ = _curl(gw_url, limit_rate="10M")
            print(
                f"  slow client (curl --limit-rate 10M): {total:.1f} s, gateway peak RSS "
                f"{peers.peak_rss_mb(gateway.pid):.0f} MB"
            )
    finally:
        for process in (gateway, mover, storescp, storescp_disk, orthanc):
            if process is not None:
                process.stop()
        if pyscp is not None:
            pyscp.stop()
        # Orthanc's storage holds the whole study.
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmpfs, ignore_errors=True)

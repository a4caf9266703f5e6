"""QIDO-RS: study search by PatientID through dicomrst, against Orthanc's own QIDO and
pynetdicom's C-FIND on a reused association (issue 3), and the gateway's CPU time per
query under concurrent load (issue 15).

``python -m bench qido-cpu`` measures the CPU figure alone (about half a minute);
``--profile FILE`` runs the gateway under cProfile for it and writes the stats there."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from bench import capture, data, peers
from bench.stats import pct, row, summary

N_STUDIES = 100
N_PATIENTS = 20

#: The gateway's pool for the bench's Orthanc, configured as README's "Sizing the pool"
#: tells an operator to: ``size`` at most what the PACS serves at once (a stock Orthanc
#: serves 4 associations, DicomThreadsCount), and ``max-idle`` up to ``size`` when those
#: workers are the gateway's to keep (here it is Orthanc's only DICOM client).  With
#: ``{"size": 16}`` (max-idle 2) the 12 associations beyond Orthanc's threads only queue
#: there, and about one query in four released and reopened one.
POOL = {"size": 4, "max-idle": 4}


def _http_session(port: int) -> Callable[[str], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def get(path: str) -> int:
        nonlocal conn
        for attempt in (1, 2):
            try:
                conn.request("GET", path, headers={"Accept": "application/dicom+json"})
                r = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A server may close an idle keep-alive connection; reconnect once.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port)
                if attempt == 2:
                    raise
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path} -> {r.status}: {body[:200]!r}")
        return len(body)

    return get


def _cfind_session(orthanc: peers.Orthanc) -> tuple[Callable[[str], int], Callable[[], None]]:
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    if not assoc.is_established:
        raise RuntimeError("pynetdicom could not associate with Orthanc")
    # pynetdicom leaves Nagle on; without this every C-FIND-RQ stalls ~40 ms on a
    # delayed ACK and the anchor would be unfairly slow.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def find(patient: str) -> int:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = patient
        for kw in (
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "PatientName",
            "ModalitiesInStudy",
            "StudyID",
            "NumberOfStudyRelatedInstances",
        ):
            setattr(q, kw, "")
        n = 0
        for status, _ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01):
                n += 1
        return n

    return find, assoc.release


def _latencies(call: Callable[[str], int], n: int) -> list[float]:
    out = []
    for i in range(n):
        patient = f"BENCH{i % N_PATIENTS:03d}"
        t = time.perf_counter()
        call(patient)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _throughput(make: Callable[[], Callable[[str], int]], clients: int, per_client: int) -> float:
    sessions = [make() for _ in range(clients)]
    errors: list[BaseException] = []

    def work(call: Callable[[str], int], k: int) -> None:
        try:
            for i in range(per_client):
                call(f"BENCH{(i + k) % N_PATIENTS:03d}")
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s, k)) for k, s in enumerate(sessions)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if errors:
        raise errors[0]
    return clients * per_client / elapsed


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process `pid` so far (/proc/PID/stat utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _gateway_load(
    pid: int, make: Callable[[], Callable[[str], int]], clients: int, per_client: int
) -> tuple[float, float, float]:
    """One concurrent run: queries per second, and the gateway's CPU milliseconds per
    query (user + system), and of them system."""
    user, system = cpu_seconds(pid)
    rate = _throughput(make, clients, per_client)
    user_after, system_after = cpu_seconds(pid)
    queries = clients * per_client
    return (
        rate,
        (user_after - user + system_after - system) * 1000 / queries,
        (system_after - system) * 1000 / queries,
    )


def _setup(
    work: object, profile: str | None = None, pool: dict | None = None
) -> tuple[peers.Orthanc, peers.Gateway]:
    orthanc = peers.Orthanc(work)  # type: ignore[arg-type]
    try:
        for blob in data.small_studies(N_STUDIES, N_PATIENTS):
            orthanc.upload(blob)
        gateway = peers.Gateway(
            work,  # type: ignore[arg-type]
            [
                {
                    "aet": orthanc.aet,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "pool": pool or POOL,
                }
            ],
            profile=profile,
        )
    except BaseException:
        orthanc.stop()
        raise
    return orthanc, gateway


def run_cpu(
    runs: int = 5,
    clients: int = 16,
    per_client: int = 50,
    profile: str | None = None,
    pool: dict | None = None,
) -> None:
    """The gateway's CPU time per query over `runs` runs of `clients` concurrent clients
    (`pool`: the AET's ``pool`` section, default `POOL`)."""
    orthanc, gateway = _setup(peers.workdir(), profile, pool)
    try:
        make = lambda: (lambda s: lambda p: s(f"/aets/{orthanc.aet}/studies?PatientID={p}"))(  # noqa: E731
            _http_session(gateway.http_port)
        )
        _throughput(make, clients, 10)  # warm up: the pool's associations, imports
        rates, cpu, system = [], [], []
        for _ in range(runs):
            rate, ms, system_ms = _gateway_load(gateway.pid, make, clients, per_client)
            rates.append(rate)
            cpu.append(ms)
            system.append(system_ms)
        print(
            f"\nQIDO-RS /studies?PatientID= through dicomrst ({N_STUDIES} studies, 5 per query; "
            f"{clients} clients x {per_client} queries per run, {runs} runs; pool {pool or POOL})"
        )
        print(row(f"dicomrst QIDO, {clients} concurrent clients", rates, "q/s", fmt="{:.0f}"))
        print(row("dicomrst CPU (utime+stime) per query", cpu, "ms", fmt="{:.3f}"))
        print(row("  of which system (stime)", system, "ms", fmt="{:.3f}"))
    finally:
        gateway.stop()
        orthanc.stop()


def run(runs: int = 5, queries: int = 200, clients: int = 16) -> None:
    work = peers.workdir()
    orthanc = peers.Orthanc(work)
    gateway = None
    try:
        for blob in data.small_studies(N_STUDIES, N_PATIENTS):
            orthanc.upload(blob)
        gateway = peers.Gateway(
            work,
            [{"aet": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "pool": POOL}],
        )
        gw_get = _http_session(gateway.http_port)
        or_get = _http_session(orthanc.http_port)
        gw = lambda p: gw_get(f"/aets/{orthanc.aet}/studies?PatientID={p}")  # noqa: E731
        oq = lambda p: or_get(f"/dicom-web/studies?PatientID={p}")  # noqa: E731
        find, release = _cfind_session(orthanc)
        # Warm up: the pool's first association, Orthanc's caches, imports.
        for call in (gw, oq, find):
            _latencies(call, 20)
        results: dict[str, dict[str, list[float]]] = {}
        unavailable = capture.Capture.available()
        wire: list[capture.Exchange] = []
        tcpdump_says = ""
        for name, call in (
            ("dicomrst QIDO (warm pool)", gw),
            ("Orthanc QIDO (its DICOMweb plugin)", oq),
            ("pynetdicom C-FIND, reused association", find),
        ):
            # The gateway's runs are captured on the wire (only they: pynetdicom's C-FIND
            # goes to the same PACS port).
            tap = None
            if call is gw and unavailable is None:
                tap = capture.Capture(work / "qido.pcap", [gateway.http_port, orthanc.dicom_port])
                tap.start()
            med, p95 = [], []
            for _ in range(runs):
                lat = _latencies(call, queries)
                med.append(pct(lat, 50))
                p95.append(pct(lat, 95))
            results[name] = {"median": med, "p95": p95}
            if tap is not None:
                tcpdump_says = tap.stop()
                wire = capture.exchanges(
                    list(capture.packets(work / "qido.pcap")), gateway.http_port, orthanc.dicom_port
                )
        release()
        gw_load = [
            _gateway_load(
                gateway.pid,
                lambda: (lambda s: lambda p: s(f"/aets/{orthanc.aet}/studies?PatientID={p}"))(
                    _http_session(gateway.http_port)
                ),
                clients,
                queries // clients * 4,
            )
            for _ in range(runs)
        ]
        tp_gw = [rate for rate, _, _ in gw_load]
        tp_or = [
            _throughput(
                lambda: (lambda s: lambda p: s(f"/dicom-web/studies?PatientID={p}"))(
                    _http_session(orthanc.http_port)
                ),
                clients,
                queries // clients * 4,
            )
            for _ in range(runs)
        ]
        anchor = summary(results["Orthanc QIDO (its DICOMweb plugin)"]["median"])[0]
        print(
            f"\nQIDO-RS /studies?PatientID= ({N_STUDIES} studies, {N_PATIENTS} patients; "
            f"{queries} queries per run, {runs} runs; per-run median and p95 latency; "
            f"ratios to Orthanc's own QIDO; gateway pool {POOL})"
        )
        for name, figures in results.items():
            print(row(f"{name}: median", figures["median"], "ms", anchor))
            print(row(f"{name}: p95", figures["p95"], "ms"))
        if unavailable is not None:
            print(f"  (no capture on the wire: {unavailable})")
        elif len(wire) != runs * queries:
            print(f"  (capture: {len(wire)} queries found of {runs * queries}; tcpdump: {tcpdump_says})")
        else:
            # Per run, the median over its queries, as for the client-side figures.
            chunks = [wire[k * queries : (k + 1) * queries] for k in range(runs)]
            for label, value in (
                ("on the wire: gateway socket, request in to response out", lambda e: e.total),
                ("on the wire: PACS socket, C-FIND-RQ to last C-FIND-RSP", lambda e: e.pacs),
                ("on the wire: added by the gateway (first - second)", lambda e: e.added),
            ):
                print(row(label, [pct([value(e) * 1000 for e in c], 50) for c in chunks], "ms", fmt="{:.3f}"))
            added = [e.added * 1000 for e in wire]
            print(f"  added by the gateway over all {len(wire)} queries: p95 {pct(added, 95):.3f} ms")
        print(row(f"dicomrst QIDO, {clients} concurrent clients", tp_gw, "q/s", fmt="{:.0f}"))
        print(row(f"Orthanc QIDO, {clients} concurrent clients", tp_or, "q/s", fmt="{:.0f}"))
        print(row("dicomrst CPU (utime+stime) per query", [ms for _, ms, _ in gw_load], "ms", fmt="{:.3f}"))
        print(f"  dicomrst peak RSS {peers.peak_rss_mb(gateway.pid):.0f} MB")
    finally:
        if gateway is not None:
            gateway.stop()
        orthanc.stop()

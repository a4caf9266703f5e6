"""The index (issue 13): QIDO-RS study searches answered from a LOCAL AET's index (SQLite, and
PostgreSQL) against Orthanc's own QIDO-RS on the same 10,000 instances; STOW-RS of the 200-slice
CT into LOCAL against Orthanc's STOW-RS and DCMTK ``storescu`` into Orthanc; the S3 reconcile
scan of 10,000 objects (moto); and how fast each loads the archive.

The archive (`data.archive`): 1,000 studies of two series of five small instances (8x8
pixels, ~6.5 KB), 200 patients (a tenth with non-ASCII names), seven modalities, dates over
two years. Orthanc gets it by its REST upload; the LOCAL AET by writing the files in its
``{study}/{series}/{sop}.dcm`` layout and ``python -m dicomrst.scan`` (into SQLite, then into
PostgreSQL), and a second LOCAL AET by STOW-RS through the gateway (one request per study).
Both gateways (SQLite and PostgreSQL index) run at once; the three systems are measured
interleaved, each query kind in turn. The S3 scan reads the same 10,000 instances as 512x512
CT slices (~530 KB each, as a bucket of CT would hold), a fresh SQLite index per run.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench import data, peers, stow
from bench.stats import pct, row, summary

N_STUDIES = 1000
N_PATIENTS = 200
KINDS = ("PatientID", "StudyDate", "ModalitiesInStudy")
MODALITIES = tuple(name for name, _weight in data.MODALITIES)
LOAD_CLIENTS = 4
S3_BUCKET = "bench-index"
S3_SIZE = 512


def query(kind: str, i: int, n_patients: int) -> str:
    """The `i`th study search of one kind: a patient, a seven-day range, a modality."""
    if kind == "PatientID":
        return f"PatientID=BENCH{i * 37 % n_patients:03d}"
    if kind == "StudyDate":
        start = datetime.date(2023, 1, 1) + datetime.timedelta(days=i * 53 % 724)
        end = start + datetime.timedelta(days=6)
        return f"StudyDate={start:%Y%m%d}-{end:%Y%m%d}"
    return f"ModalitiesInStudy={MODALITIES[i % len(MODALITIES)]}"


class Session:
    """One keep-alive HTTP/1.1 connection; `get` returns the number of results."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port, self.prefix = port, prefix
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> bytes:
        for attempt in (1, 2):
            try:
                self.conn.request(method, self.prefix + path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A server may close an idle keep-alive connection; reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port)
                if attempt == 2:
                    raise
        payload = r.read()
        if r.status not in (200, 204):
            raise RuntimeError(f"{method} {path} -> {r.status}: {payload[:300]!r}")
        return payload

    def get(self, params: str) -> int:
        body = self.request("GET", f"/studies?{params}", headers={"Accept": "application/dicom+json"})
        return len(json.loads(body)) if body else 0

    def close(self) -> None:
        self.conn.close()


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until `pid` uses under 5% of a core over half a second (a start-up scan has ended)."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu()
        time.sleep(0.5)
        if (cpu() - before) / tick < 0.025:
            return


def scan_command(config: Path, aet: str, cwd: Path) -> tuple[float, int, int, float]:
    """``python -m dicomrst.scan``: (wall seconds, objects added, bytes read, the scan's own seconds)."""
    env = {**os.environ, "PYTHONPATH": f"{peers.ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dicomrst.scan", "--config", str(config), aet],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t
    found = re.search(r"(\d+) objects, (\d+) added.*\((\d+) bytes read, ([\d.]+) s\)", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"dicomrst.scan failed ({done.returncode}): {done.stdout}{done.stderr[-2000:]}")
    return wall, int(found.group(2)), int(found.group(3)), float(found.group(4))


def write_config(path: Path, aets: list[dict], index_url: str) -> Path:
    config = {"telemetry": {"level": "WARN"}, "index": {"url": index_url, "scan-interval": 0}, "aets": aets}
    path.write_text(yaml.safe_dump(config))
    return path


def multipart(instances: list[bytes]) -> bytes:
    parts = [
        f"--{stow.BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii") + i + b"\r\n"
        for i in instances
    ]
    return b"".join(parts) + f"--{stow.BOUNDARY}--\r\n".encode("ascii")


def parallel(work: Callable[[int], None], clients: int) -> float:
    """Run ``work(k)`` for k in range(clients) on as many threads; seconds."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            work(k)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


def load_orthanc(orthanc: peers.Orthanc, blobs: list[bytes]) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        list(pool.map(orthanc.upload, blobs))
    return time.perf_counter() - t


def load_stow(port: int, aet: str, studies: list[list[bytes]]) -> float:
    """STOW-RS, one request per study, `LOAD_CLIENTS` keep-alive clients; seconds."""
    headers = {"Content-Type": stow.CONTENT_TYPE, "Accept": "application/dicom+json"}

    def work(k: int) -> None:
        session = Session(port, f"/aets/{aet}")
        for study in studies[k::LOAD_CLIENTS]:
            session.request("POST", "/studies", multipart(study), headers)
        session.close()

    return parallel(work, LOAD_CLIENTS)


def latencies(session: Session, kind: str, n: int, n_patients: int, start: int) -> list[float]:
    out = []
    for i in range(start, start + n):
        params = query(kind, i, n_patients)
        t = time.perf_counter()
        session.get(params)
        out.append((time.perf_counter() - t) * 1000)
    return out


def throughput(port: int, prefix: str, kind: str, clients: int, per_client: int, n_patients: int) -> float:
    sessions = [Session(port, prefix) for _ in range(clients)]

    def work(k: int) -> None:
        for i in range(per_client):
            sessions[k].get(query(kind, k * per_client + i, n_patients))

    seconds = parallel(work, clients)
    for s in sessions:
        s.close()
    return clients * per_client / seconds


def orthanc_study_id(orthanc: peers.Orthanc, study_uid: str) -> str:
    req = urllib.request.Request(orthanc.url + "/tools/lookup", data=study_uid.encode("ascii"), method="POST")
    with urllib.request.urlopen(req) as r:
        found = [item["ID"] for item in json.load(r) if item["Type"] == "Study"]
    if len(found) != 1:
        raise RuntimeError(f"Orthanc holds no study {study_uid}")
    return found[0]


def drop_ct(orthanc: peers.Orthanc, study_uid: str, expected: int) -> None:
    """Check Orthanc holds the CT study in full, then delete it (the archive stays)."""
    study = orthanc_study_id(orthanc, study_uid)
    with urllib.request.urlopen(f"{orthanc.url}/studies/{study}/instances") as r:
        count = len(json.load(r))
    if count != expected:
        raise RuntimeError(f"Orthanc holds {count} instances of the CT study, expected {expected}")
    req = urllib.request.Request(f"{orthanc.url}/studies/{study}", method="DELETE")
    with urllib.request.urlopen(req) as r:
        r.read()


def run(
    runs: int = 5,
    n_studies: int = N_STUDIES,
    n_patients: int = N_PATIENTS,
    queries: int = 50,
    clients: int = 16,
    per_client: int = 8,
    ct_slices: int = 200,
    s3: bool = True,
) -> None:
    began = time.monotonic()
    wd = peers.workdir()
    lines: list[str] = []
    processes: list[peers.Process] = []
    try:
        archive = data.archive(n_studies, n_patients)
        n = len(archive)
        blobs = [item.part10() for item in archive]
        size_mb = sum(map(len, blobs)) / 1e6
        lines.append(
            f"\nIndex: {n} instances ({n_studies} studies, {n_patients} patients, {size_mb:.0f} MB), "
            f"{runs} runs"
        )

        orthanc = peers.Orthanc(wd)
        processes.append(orthanc)
        orthanc_load = load_orthanc(orthanc, blobs)

        objects = wd / "objects"
        t = time.perf_counter()
        for item, blob in zip(archive, blobs, strict=True):
            path = objects / item.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        write_seconds = time.perf_counter() - t

        stowed, cts = wd / "stowed", [wd / f"ct{r}" for r in range(runs)]
        aets = [{"aet": "LOCAL", "backend": "LOCAL", "path": str(objects)}]
        sqlite_aets = [*aets, {"aet": "STOWED", "backend": "LOCAL", "path": str(stowed)}]
        sqlite_aets += [{"aet": f"CT{r}", "backend": "LOCAL", "path": str(p)} for r, p in enumerate(cts)]
        sqlite_url = f"sqlite:{wd / 'index.sqlite'}"
        scan_sqlite = scan_command(write_config(wd / "scan-sqlite.yaml", aets, sqlite_url), "LOCAL", wd)

        postgres = peers.Postgres()
        processes.append(postgres)
        pg_url = postgres.url()
        scan_pg = scan_command(write_config(wd / "scan-pg.yaml", aets, pg_url), "LOCAL", wd)
        for what, (_wall, added, _read, _seconds) in (("SQLite", scan_sqlite), ("PostgreSQL", scan_pg)):
            if added != n:
                raise RuntimeError(f"the scan into {what} added {added} instances, not {n}")

        http = {"max-upload-size": 200_000_000}
        gw_sqlite = peers.Gateway(wd, sqlite_aets, http=http, name="dicomrst-sqlite",
                                  index={"url": sqlite_url, "scan-interval": 0})  # fmt: skip
        processes.append(gw_sqlite)
        gw_pg = peers.Gateway(
            wd, aets, http=http, name="dicomrst-pg", index={"url": pg_url, "scan-interval": 0}
        )
        processes.append(gw_pg)
        # Their start-up scans walk the 10,000 files (nothing changed); let them end first.
        wait_idle(gw_sqlite.pid)
        wait_idle(gw_pg.pid)

        by_study: dict[str, list[bytes]] = {}
        for item, blob in zip(archive, blobs, strict=True):
            by_study.setdefault(item.study, []).append(blob)
        stow_load = load_stow(gw_sqlite.http_port, "STOWED", list(by_study.values()))
        del blobs, by_study

        systems = {
            "dicomrst LOCAL, SQLite index": Session(gw_sqlite.http_port, "/aets/LOCAL"),
            "dicomrst LOCAL, PostgreSQL index": Session(gw_pg.http_port, "/aets/LOCAL"),
            "Orthanc's own QIDO-RS": Session(orthanc.http_port, "/dicom-web"),
        }
        ports = {
            "dicomrst LOCAL, SQLite index": (gw_sqlite.http_port, "/aets/LOCAL"),
            "dicomrst LOCAL, PostgreSQL index": (gw_pg.http_port, "/aets/LOCAL"),
            "Orthanc's own QIDO-RS": (orthanc.http_port, "/dicom-web"),
        }
        anchor_name = "Orthanc's own QIDO-RS"
        # The same answers (number of studies) everywhere, and warm caches.
        mismatches = []
        for kind in KINDS:
            for i in range(10):
                counts = {name: s.get(query(kind, i, n_patients)) for name, s in systems.items()}
                if len(set(counts.values())) != 1:
                    mismatches.append(f"{query(kind, i, n_patients)}: {counts}")
        stowed_count = Session(gw_sqlite.http_port, "/aets/STOWED").get("limit=2000")
        med: dict[tuple[str, str], list[float]] = {}
        p95: dict[tuple[str, str], list[float]] = {}
        tput: dict[tuple[str, str], list[float]] = {}
        results: dict[tuple[str, str], int] = {}
        for r in range(runs):
            for kind in KINDS:
                for name, session in systems.items():
                    lat = latencies(session, kind, queries, n_patients, start=r * queries)
                    med.setdefault((kind, name), []).append(pct(lat, 50))
                    p95.setdefault((kind, name), []).append(pct(lat, 95))
                for name, (port, prefix) in ports.items():
                    tput.setdefault((kind, name), []).append(
                        throughput(port, prefix, kind, clients, per_client, n_patients)
                    )
        for kind in KINDS:
            sizes = [systems[anchor_name].get(query(kind, i, n_patients)) for i in range(queries)]
            results[(kind, "mean")] = round(statistics.mean(sizes))
        for session in systems.values():
            session.close()

        times, ct_mb = stow_ct(wd, gw_sqlite, orthanc, runs, ct_slices)
        rss = {"SQLite": peers.peak_rss_mb(gw_sqlite.pid), "PostgreSQL": peers.peak_rss_mb(gw_pg.pid)}
        for process in (gw_sqlite, gw_pg, postgres, orthanc):
            process.stop()

        lines.append(
            f"Load ({n} instances, one pass each; {LOAD_CLIENTS} clients for the HTTP uploads; "
            "ratio to Orthanc's REST upload)"
        )
        anchor_rate = n / orthanc_load
        lines.append(
            row("Orthanc REST upload (POST /instances)", [anchor_rate], "i/s", anchor_rate, "{:.0f}")
        )
        lines.append(row("dicomrst STOW-RS into LOCAL (one request a study)", [n / stow_load], "i/s",
                         anchor_rate, "{:.0f}"))  # fmt: skip
        lines.append(
            row("files written in the LOCAL layout (no index)", [n / write_seconds], "i/s", None, "{:.0f}")
        )
        for what, (wall, _added, _read, seconds) in (("SQLite", scan_sqlite), ("PostgreSQL", scan_pg)):
            lines.append(row(f"python -m dicomrst.scan into {what} (the scan)", [n / seconds], "i/s",
                             anchor_rate, "{:.0f}"))  # fmt: skip
            lines.append(
                row(f"  the same, the command's wall time ({wall:.1f} s)", [n / wall], "i/s", None, "{:.0f}")
            )
        if stowed_count != n_studies:
            lines.append(f"  ! QIDO on the STOW-RS-loaded AET found {stowed_count} studies, not {n_studies}")

        lines.append(
            f"QIDO-RS /studies (single client: {queries} queries a run, per-run median and p95; "
            f"{clients} concurrent keep-alive clients x {per_client} queries; ratios to Orthanc's QIDO-RS)"
        )
        for kind in KINDS:
            lines.append(f" {kind} (e.g. {query(kind, 1, n_patients)}; {results[(kind, 'mean')]} studies "
                         "a query on average)")  # fmt: skip
            anchor = summary(med[(kind, anchor_name)])[0]
            for name in systems:
                lines.append(row(f"{name}: median", med[(kind, name)], "ms", anchor))
                lines.append(row(f"{name}: p95", p95[(kind, name)], "ms"))
            anchor = summary(tput[(kind, anchor_name)])[0]
            for name in systems:
                lines.append(row(f"{name}: {clients} clients", tput[(kind, name)], "q/s", anchor, "{:.0f}"))
        for mismatch in mismatches:
            lines.append(f"  ! different numbers of studies: {mismatch}")

        lines += stow_lines(times, ct_slices, ct_mb)
        lines.append(
            f"  dicomrst peak RSS: {rss['SQLite']:.0f} MB (SQLite gateway, after everything above), "
            f"{rss['PostgreSQL']:.0f} MB (PostgreSQL gateway)"
        )
        if s3:
            lines += s3_scan(wd, archive, runs, processes)
    finally:
        for process in reversed(processes):
            process.stop()
        print("\n".join(lines))
        print(f"  (index suite: {time.monotonic() - began:.0f} s)")
        import shutil

        shutil.rmtree(wd, ignore_errors=True)


def stow_ct(
    wd: Path, gateway: peers.Gateway, orthanc: peers.Orthanc, runs: int, ct_slices: int, first: int = 0
) -> tuple[dict[str, list[float]], float]:
    """STOW-RS of the CT study into a fresh LOCAL AET each run (``CT{first + r}``, configured in
    `gateway`), against Orthanc's own STOW-RS and storescu into Orthanc (the CT study deleted
    from Orthanc between runs), interleaved; the seconds of each, and the body's size in MB."""
    ct_uid, ct = data.ct_study(ct_slices)
    ct_dir = wd / "ct-files"
    ct_dir.mkdir(exist_ok=True)
    ct_files = []
    for i, instance in enumerate(ct):
        ct_files.append(ct_dir / f"{i:04d}.dcm")
        ct_files[-1].write_bytes(instance)
    body = wd / "ct.multipart"
    ct_mb = stow.write_body(body, ct) / 1e6
    del ct
    response = wd / "response.json"
    times: dict[str, list[float]] = {"dicomrst": [], "storescu": [], "orthanc": []}
    for r in range(runs):
        times["dicomrst"].append(stow.post(f"{gateway.url}/aets/CT{first + r}/studies", body, response))
        times["storescu"].append(stow.storescu(orthanc, ct_files))
        drop_ct(orthanc, ct_uid, ct_slices)
        times["orthanc"].append(stow.post(f"{orthanc.url}/dicom-web/studies", body, response))
        drop_ct(orthanc, ct_uid, ct_slices)
    return times, ct_mb


def stow_lines(times: dict[str, list[float]], ct_slices: int, ct_mb: float) -> list[str]:
    stow_med = {k: statistics.median(v) for k, v in times.items()}
    return [
        f"STOW-RS of a {ct_slices}-instance CT study ({ct_mb:.0f} MB body) into LOCAL (SQLite index), "
        "ratio: median time relative to storescu's",
        row("dicomrst STOW-RS into LOCAL", times["dicomrst"], "s", stow_med["storescu"]),
        row("DCMTK storescu -> Orthanc (1 association)", times["storescu"], "s", stow_med["storescu"]),
        row("Orthanc's own STOW-RS", times["orthanc"], "s", stow_med["storescu"]),
        f"  dicomrst speed vs Orthanc STOW-RS: {stow_med['orthanc'] / stow_med['dicomrst']:.2f}x "
        f"(target >= 2x); vs storescu: {stow_med['storescu'] / stow_med['dicomrst']:.2f}x "
        "(target >= 1.0x)",
    ]


def run_stow(runs: int = 5, ct_slices: int = 200) -> None:
    """Only the STOW-RS comparison of `run` (its Orthanc, and a gateway with an SQLite index
    holding nothing else): a minute or so instead of the whole suite."""
    began = time.monotonic()
    wd = peers.workdir()
    lines: list[str] = []
    processes: list[peers.Process] = []
    try:
        orthanc = peers.Orthanc(wd)
        processes.append(orthanc)
        aets = [{"aet": f"CT{r}", "backend": "LOCAL", "path": str(wd / f"ct{r}")} for r in range(runs)]
        index_config = {"url": f"sqlite:{wd / 'index.sqlite'}", "scan-interval": 0}
        gateway = peers.Gateway(
            wd, aets, http={"max-upload-size": 200_000_000}, name="dicomrst-sqlite", index=index_config
        )
        processes.append(gateway)
        wait_idle(gateway.pid)
        times, ct_mb = stow_ct(wd, gateway, orthanc, runs, ct_slices)
        lines += stow_lines(times, ct_slices, ct_mb)
        lines.append(f"  dicomrst peak RSS: {peers.peak_rss_mb(gateway.pid):.0f} MB")
    finally:
        for process in reversed(processes):
            process.stop()
        print("\n".join(lines))
        print(f"  (index-stow suite: {time.monotonic() - began:.0f} s)")
        import shutil

        shutil.rmtree(wd, ignore_errors=True)


def run_scan(runs: int = 5, n_studies: int = N_STUDIES, n_patients: int = N_PATIENTS) -> None:
    """Only the S3 reconcile scan (``python -m bench index-scan``): the same bucket and figures
    as the end of `run`, without the ~20 minutes of Orthanc, LOCAL and STOW before it."""
    began = time.monotonic()
    wd = peers.workdir()
    lines: list[str] = []
    processes: list[peers.Process] = []
    try:
        lines += s3_scan(wd, data.archive(n_studies, n_patients), runs, processes)
    finally:
        for process in reversed(processes):
            process.stop()
        print("\n".join(lines))
        print(f"  (index-scan suite: {time.monotonic() - began:.0f} s)")
        import shutil

        shutil.rmtree(wd, ignore_errors=True)


def s3_scan(
    wd: Path, archive: list[data.ArchiveInstance], runs: int, processes: list[peers.Process]
) -> list[str]:
    """The reconcile scan of the archive as 512x512 CT slices in moto; a fresh SQLite index a run."""
    import boto3
    from botocore.config import Config

    from bench.s3 import REGION, moto_version

    port = peers.free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = wd / "moto-tmp"
    tmp.mkdir()
    # Objects above 64 KiB spill to (unlinked) files: 5 GB would not stay in moto's memory.
    server = peers.Process(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 << 10), "TMPDIR": str(tmp)},
        log=wd / "moto.log",
    )
    processes.append(server)
    peers.wait_http(url + "/moto-api/")
    s3 = boto3.client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id="bench", aws_secret_access_key="bench",
        config=Config(max_pool_connections=16, s3={"addressing_style": "path"}),
    )  # fmt: skip
    s3.create_bucket(Bucket=S3_BUCKET)
    pixels = (bytes(range(256)) * (S3_SIZE * S3_SIZE // 128 + 1))[: S3_SIZE * S3_SIZE * 2]

    def put(item: data.ArchiveInstance) -> int:
        body = item.part10(S3_SIZE, pixels)
        s3.put_object(Bucket=S3_BUCKET, Key=item.key, Body=body)
        return len(body)

    t = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        bucket = sum(pool.map(put, archive))
    put_seconds = time.perf_counter() - t
    aets = [{
        "aet": "S3SCAN", "backend": "S3", "endpoint": url, "endpoint-style": "path", "bucket": S3_BUCKET,
        "concurrency": 32, "credentials": {"access-key": "bench", "secret-key": "bench"},
    }]  # fmt: skip
    rates, shares, walls = [], [], []
    for r in range(runs):
        config = write_config(wd / f"scan-s3-{r}.yaml", aets, f"sqlite:{wd / f's3-index-{r}.sqlite'}")
        wall, added, read, seconds = scan_command(config, "S3SCAN", wd)
        if added != len(archive):
            raise RuntimeError(f"the S3 scan added {added} objects, not {len(archive)}")
        rates.append(added / seconds)
        walls.append(added / wall)
        shares.append(read / bucket * 100)
    return [
        f"Reconcile scan of {len(archive)} objects in S3 (moto {moto_version()}, {bucket / 1e9:.1f} GB, "
        f"{S3_SIZE}x{S3_SIZE} 16-bit slices; put in {put_seconds:.0f} s), an empty SQLite index each run",
        row("python -m dicomrst.scan (the scan; target >= 500/s)", rates, "obj/s", fmt="{:.0f}"),
        row("  the same, the command's wall time", walls, "obj/s", fmt="{:.0f}"),
        row("bytes read, share of the bucket (target < 5%)", shares, "%", fmt="{:.2f}"),
    ]

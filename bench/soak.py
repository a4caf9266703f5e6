"""``python -m bench soak [--minutes 30] [--out DIR]``: mixed load for a set time, to see that
nothing grows.

One gateway in front of one Orthanc, reached under two AE titles: ``ORTHANC`` (its own, as
the C-MOVE sub-operations it sends carry it) retrieves with C-MOVE to the gateway's listener,
``ORTHANC-GET`` with C-GET.  Client threads run at once,
for the whole time:

- QIDO: study, series and instance searches (by patient, paged, by modality);
- WADO: whole-study retrieves (C-GET or C-MOVE); one in four reads 256 KiB and hangs up;
- metadata: study metadata;
- STOW: three freshly made instances per request, into one of a few studies (so searches
  keep their cost while instances accumulate); one in five sends half the body and hangs up.

Halfway through, Orthanc is stopped and started again (same ports, same storage): requests
during the outage may fail with 502/503/504 or be refused; anything else is an error.

Every ``--interval`` seconds it samples the gateway: resident memory, open file
descriptors, established associations to the PACS and at the listener, HTTP connections,
and the requests and errors since the last sample.  The output directory gets
``samples.csv``, ``summary.txt`` and ``soak.png`` (one panel per measure; the restart is
the vertical line).  The goal is flat lines: memory and descriptors level after warm-up,
associations back to the pool's idle level once the load stops, no unexpected error, no
traceback in the gateway's log.
"""

from __future__ import annotations

import csv
import io
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench import data, peers

PACS = "ORTHANC"
PACS_GET = "ORTHANC-GET"
STOW_STUDIES = 5
LISTENER = "DICOMRST"
BOUNDARY = "dicomrst-soak-boundary-5b2e"
EXPECTED_DURING_OUTAGE = {502, 503, 504}
OUTAGE_GRACE = 30.0  # seconds after the restart during which outage failures are expected


@dataclass
class Tally:
    """Outcomes by kind (``qido 200``, ``wado hung up``, ``stow refused`` ...), thread-safe."""

    counts: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, unexpected: str | None = None) -> None:
        with self.lock:
            self.counts[kind] += 1
            if unexpected is not None and len(self.unexpected) < 50:
                self.unexpected.append(unexpected)

    def take(self) -> Counter[str]:
        with self.lock:
            taken, self.counts = self.counts, Counter()
            return taken


class Outage:
    """When the PACS was (or is being) restarted, so failures then are not counted as errors."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []
        self.restarts: list[float] = []

    def begin(self) -> None:
        now = time.monotonic()
        self.restarts.append(now)
        self.windows.append((now, float("inf")))

    def end(self) -> None:
        start, _ = self.windows[-1]
        self.windows[-1] = (start, time.monotonic() + OUTAGE_GRACE)

    def now(self) -> bool:
        t = time.monotonic()
        return any(a <= t <= b for a, b in self.windows)


# -- the gateway's resources, from /proc -------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of the process's established TCP connections."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "01" or fields[9] not in inodes:  # 01: ESTABLISHED
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            found.append((local, remote))
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    pacs_assocs: int
    listener_assocs: int
    http_conns: int
    requests: int
    errors: int
    outcomes: Counter[str]

    COLUMNS = ("t", "rss_mb", "fds", "pacs_assocs", "listener_assocs", "http_conns", "requests", "errors")


def sample(t: float, gateway: peers.Gateway, orthanc: peers.Orthanc, tally: Tally, outage: Outage) -> Sample:
    connections = _established(gateway.pid)
    taken = tally.take()
    errors = sum(n for kind, n in taken.items() if kind.endswith(" ERROR"))
    requests_ = sum(taken.values())
    return Sample(
        t=t,
        rss_mb=_rss_mb(gateway.pid),
        fds=len(os.listdir(f"/proc/{gateway.pid}/fd")),
        pacs_assocs=sum(1 for _, remote in connections if remote == orthanc.dicom_port),
        listener_assocs=sum(1 for local, _ in connections if local == gateway.dimse_port),
        http_conns=sum(1 for local, _ in connections if local == gateway.http_port),
        requests=requests_,
        errors=errors,
        outcomes=taken,
    )


# -- the clients -------------------------------------------------------------------------------


class Load:
    def __init__(
        self, gateway: peers.Gateway, studies: list[str], patients: int, ct_study: str, seed: int
    ) -> None:
        self.base = gateway.url
        self.port = gateway.http_port
        self.studies = studies
        self.patients = patients
        self.ct_study = ct_study
        self.stop = threading.Event()
        self.tally = Tally()
        self.outage = Outage()
        self.seed = seed

    def record(self, service: str, status: int | None, error: str | None = None) -> None:
        outage = self.outage.now()
        if status is not None and status < 400:
            self.tally.add(f"{service} {status}")
        elif status is not None and outage and status in EXPECTED_DURING_OUTAGE:
            self.tally.add(f"{service} {status} (outage)")
        elif status is None and outage:
            self.tally.add(f"{service} refused (outage)")
        else:
            what = f"{service} {status if status is not None else error}"
            self.tally.add(f"{service} ERROR", f"{time.strftime('%H:%M:%S')} {what}")

    def run(self, name: str, step: Callable[[], None]) -> threading.Thread:
        def loop() -> None:
            while not self.stop.is_set():
                try:
                    step()
                except Exception as e:  # a client error is a data point, not a crash
                    self.record(name, None, f"{type(e).__name__}: {e}")
                    self.stop.wait(0.5)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    # Each step is one request; `rng` per thread so runs are repeatable in kind.

    def qido(self, rng: random.Random, session: requests.Session) -> None:
        choice = rng.randrange(4)
        if choice == 0:
            path = f"/aets/{PACS}/studies?PatientID=BENCH{rng.randrange(self.patients):03d}"
        elif choice == 1:
            path = f"/aets/{PACS}/studies?limit=10&offset={rng.randrange(40)}"
        elif choice == 2:
            path = f"/aets/{PACS}/studies/{rng.choice(self.studies)}/series"
        else:
            path = f"/aets/{PACS}/instances?StudyInstanceUID={rng.choice(self.studies)}"
        response = session.get(self.base + path, timeout=60)
        self.record("qido", response.status_code)

    def wado(self, rng: random.Random, session: requests.Session) -> None:
        aet = rng.choice((PACS, PACS_GET))
        study = self.ct_study if rng.random() < 0.5 else rng.choice(self.studies)
        service = "wado-move" if aet == PACS else "wado-get"
        path = f"/aets/{aet}/studies/{study}"
        if rng.random() < 0.25:
            _read_then_hang_up(self.port, path, 256 * 1024)
            self.tally.add(f"{service} hung up")
            return
        with session.get(self.base + path, stream=True, timeout=120) as response:
            for _ in response.iter_content(1 << 20):
                pass
        self.record(service, response.status_code)

    def metadata(self, rng: random.Random, session: requests.Session) -> None:
        study = rng.choice((self.ct_study, *self.studies))
        response = session.get(f"{self.base}/aets/{PACS}/studies/{study}/metadata", timeout=60)
        self.record("metadata", response.status_code)
        self.stop.wait(0.2)

    def stow(self, rng: random.Random, session: requests.Session) -> None:
        body = _stow_body(rng)
        content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        if rng.random() < 0.2:
            _send_half(self.port, f"/aets/{PACS}/studies", content_type, body)
            self.tally.add("stow hung up")
        else:
            response = session.post(
                f"{self.base}/aets/{PACS}/studies",
                data=body,
                headers={"Content-Type": content_type},
                timeout=60,
            )
            self.record("stow", response.status_code)
        self.stop.wait(1.0)


def _stow_body(rng: random.Random) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    k = rng.randrange(STOW_STUDIES)
    study = generate_uid(entropy_srcs=["soak-study", str(k)])
    series = generate_uid(entropy_srcs=["soak-series", str(k)])
    out = io.BytesIO()
    for i in range(3):
        ds = base.copy()
        ds.PatientID = f"SOAK{k}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        part = io.BytesIO()
        ds.save_as(part, enforce_file_format=True)
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        out.write(part.getvalue())
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode("ascii"))
    return out.getvalue()


def _read_then_hang_up(port: int, path: str, amount: int) -> None:
    """GET `path`, read `amount` bytes (or all there is), and close: a client that leaves."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        read = 0
        while read < amount:
            piece = sock.recv(65536)
            if not piece:
                break
            read += len(piece)


def _send_half(port: int, path: str, content_type: str, body: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode("ascii") + body[: len(body) // 2])


# -- the run -----------------------------------------------------------------------------------


def run(minutes: float = 30.0, out: Path | None = None, interval: float | None = None) -> None:
    total = minutes * 60
    interval = interval or max(1.0, min(10.0, total / 180))
    out = out or Path(f"soak-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    work = peers.workdir()
    listener_port = peers.free_port()
    orthanc = peers.Orthanc(
        work,
        modalities={LISTENER: {"AET": LISTENER, "Host": "127.0.0.1", "Port": listener_port}},
        # Room for the gateway's two pools and Orthanc's own C-MOVE handler threads.
        extra={"DicomThreadsCount": 8},
    )
    gateway = None
    try:
        n_studies, n_patients = 40, 10
        for blob in data.small_studies(n_studies, n_patients):
            orthanc.upload(blob)
        ct_uid, ct = data.ct_study(n_slices=40, size=256)
        for blob in ct:
            orthanc.upload(blob)
        studies = [s["MainDicomTags"]["StudyInstanceUID"] for s in _orthanc_studies(orthanc)]
        studies = [s for s in studies if s != ct_uid]
        pool = {"size": 3, "timeout": 10000}
        gateway = peers.Gateway(
            work,
            [
                {
                    "aet": PACS,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "pool": pool,
                    "wado-rs": {"retrieve": "move", "receivers": [LISTENER]},
                },
                {
                    "aet": PACS_GET,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "pool": pool,
                    "wado-rs": {"retrieve": "get"},
                },
            ],
            dimse_aet=LISTENER,
            dimse_port=listener_port,
            request_timeout_ms=30000,
        )
        load = Load(gateway, studies, n_patients, ct_uid, seed=5)
        threads = []
        for name, step, count in (
            ("qido", load.qido, 3),
            ("wado", load.wado, 2),
            ("metadata", load.metadata, 1),
            ("stow", load.stow, 1),
        ):
            for k in range(count):
                rng, session = random.Random(f"{name}{k}"), requests.Session()
                threads.append(load.run(name, lambda rng=rng, session=session, step=step: step(rng, session)))

        samples: list[Sample] = []
        started = time.monotonic()
        restarted = False
        print(f"soak: {minutes:g} min, sampling every {interval:g} s; output in {out}/", flush=True)
        print("   t(s)  RSS(MB)  fds  PACS-assocs  listener-assocs  HTTP-conns  requests  errors", flush=True)
        next_sample = started + interval
        while time.monotonic() - started < total:
            if not restarted and time.monotonic() - started >= total / 2:
                restarted = True
                threading.Thread(target=_restart, args=(orthanc, load.outage), daemon=True).start()
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += interval
            s = sample(time.monotonic() - started, gateway, orthanc, load.tally, load.outage)
            samples.append(s)
            print(_line(s), flush=True)
        load.stop.set()
        for thread in threads:
            thread.join(130)
        # After the load: idle pooled associations may stay (up to the pool's idle limit and
        # idle timeout); nothing else should.
        time.sleep(max(15.0, interval))
        after = sample(time.monotonic() - started, gateway, orthanc, load.tally, load.outage)
        samples.append(after)
        print(_line(after) + "  (load stopped)", flush=True)
        restarts = [t - started for t in load.outage.restarts]
        report = _summary(minutes, samples, after, load.tally, gateway, restarts)
        print(report, flush=True)
        (out / "summary.txt").write_text(report)
        _write_csv(out / "samples.csv", samples)
        _plot(out / "soak.png", samples, restarts)
    finally:
        if gateway is not None:
            gateway.stop()
        orthanc.stop()


def _restart(orthanc: peers.Orthanc, outage: Outage) -> None:
    outage.begin()
    try:
        orthanc.restart()
    finally:
        outage.end()


def _orthanc_studies(orthanc: peers.Orthanc) -> list[dict]:
    import json
    import urllib.request

    with urllib.request.urlopen(orthanc.url + "/studies?expand") as r:
        return json.loads(r.read())


def _line(s: Sample) -> str:
    return (
        f"{s.t:7.0f}  {s.rss_mb:7.1f}  {s.fds:3d}  {s.pacs_assocs:11d}  {s.listener_assocs:15d}  "
        f"{s.http_conns:10d}  {s.requests:8d}  {s.errors:6d}"
    )


def _summary(
    minutes: float,
    samples: list[Sample],
    after: Sample,
    tally: Tally,
    gateway: peers.Gateway,
    restarts: list[float],
) -> str:
    loaded = samples[:-1]
    warm = [s for s in loaded if s.t >= min(120.0, loaded[-1].t / 10)] or loaded
    first, last = warm[0], loaded[-1]
    totals: Counter[str] = Counter()
    for s in samples:
        totals.update(s.outcomes)
    log = gateway.log.read_text("utf-8", "replace") if gateway.log else ""
    tracebacks = log.count("Traceback (most recent call last)")
    lines = [
        f"soak: {minutes:g} min of mixed QIDO/WADO/metadata/STOW load, Orthanc restarted at "
        + ", ".join(f"{t:.0f} s" for t in restarts),
        f"  RSS (MB)          after warm-up {first.rss_mb:.1f} (t={first.t:.0f} s), end {last.rss_mb:.1f}, "
        f"min {min(s.rss_mb for s in warm):.1f}, max {max(s.rss_mb for s in warm):.1f}, "
        f"idle after {after.rss_mb:.1f}",
        f"  open fds          after warm-up {first.fds}, end {last.fds}, "
        f"max {max(s.fds for s in warm)}, idle after {after.fds}",
        f"  PACS associations after warm-up {first.pacs_assocs}, end {last.pacs_assocs}, "
        f"max {max(s.pacs_assocs for s in loaded)}, idle after {after.pacs_assocs}",
        f"  listener assocs   max {max(s.listener_assocs for s in loaded)}, "
        f"idle after {after.listener_assocs}",
        f"  HTTP connections  max {max(s.http_conns for s in loaded)}, idle after {after.http_conns}",
        f"  requests {sum(totals.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())),
        f"  unexpected errors {sum(v for k, v in totals.items() if k.endswith(' ERROR'))}"
        + ("".join(f"\n    {e}" for e in tally.unexpected[:20])),
        f"  tracebacks in the gateway log: {tracebacks}",
    ]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*Sample.COLUMNS, "outcomes"])
        for s in samples:
            writer.writerow(
                [
                    f"{s.t:.1f}",
                    f"{s.rss_mb:.1f}",
                    s.fds,
                    s.pacs_assocs,
                    s.listener_assocs,
                    s.http_conns,
                    s.requests,
                    s.errors,
                    "; ".join(f"{k}: {v}" for k, v in sorted(s.outcomes.items())),
                ]
            )


def _plot(path: Path, samples: list[Sample], restarts: list[float]) -> None:
    """One panel per measure, drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    panels = (
        ("RSS (MB)", [s.rss_mb for s in samples]),
        ("open fds", [float(s.fds) for s in samples]),
        ("PACS associations", [float(s.pacs_assocs) for s in samples]),
        ("listener associations", [float(s.listener_assocs) for s in samples]),
        ("requests per sample", [float(s.requests) for s in samples]),
        ("unexpected errors per sample", [float(s.errors) for s in samples]),
    )
    width, height, margin = 900, 150, 60
    image = Image.new("RGB", (width, height * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    ts = [s.t for s in samples]
    t_max = max(ts[-1], 1.0)
    for i, (title, values) in enumerate(panels):
        top = i * height + 20
        bottom = (i + 1) * height - 20
        left, right = margin, width - 20
        lo, hi = min([*values, 0.0]), max([*values, 1.0])
        hi = hi if hi > lo else lo + 1
        draw.rectangle((left, top, right, bottom), outline="gray")
        draw.text((left, top - 14), title, fill="black")
        draw.text((4, top), f"{hi:.0f}", fill="black")
        draw.text((4, bottom - 10), f"{lo:.0f}", fill="black")
        for r in restarts:
            x = left + (right - left) * r / t_max
            draw.line((x, top, x, bottom), fill="red")
        points = [
            (left + (right - left) * t / t_max, bottom - (bottom - top) * (v - lo) / (hi - lo))
            for t, v in zip(ts, values, strict=True)
        ]
        if len(points) > 1:
            draw.line(points, fill="blue", width=2)
        draw.text((right - 60, bottom + 2), f"{t_max:.0f} s", fill="black")
    image.save(path)

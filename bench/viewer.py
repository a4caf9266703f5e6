"""The viewer path (issue 12): an OHIF-like client through the gateway and against Orthanc's
own DICOMweb, on the 200-slice CT of the WADO suite, in the same run.

The client is what a browser does for OHIF: six keep-alive HTTP/1.1 connections to the
origin (`Browser`), QIDO the series of the study, the series metadata, then
``.../instances/{i}/frames/1`` of every instance by Instance Number with
``Accept: multipart/related; type=application/octet-stream; transfer-syntax=*``, six at a
time.  One Orthanc (with its DICOMweb plugin) serves both sides; the gateway retrieves with
C-GET.

Cold runs use a fresh cache without restarting the gateway: the gateway lists the same
Orthanc under several AE titles (Orthanc does not check the called AE title), the cache never
serves one AET's entries to another, so each cold run asks through an AET never used before
(its pool is cold too: the first request opens the association; Orthanc gets enough DICOM
threads for the idle associations of the AETs used before).  One gateway process then
serves the whole run, and its peak RSS (VmHWM) covers all of it.  ``server.cache.max-size`` is
set below what the run stores, so least-recently-used eviction runs during the cold runs; a
thread samples the cache directory's size (all files, entries being written included) every
50 ms for its peak (`CacheWatch`: two scans per sample, since one scan is not a snapshot).

"First frame before 10% of the series has arrived": a cold run whose client already knows
the instance UIDs (from an earlier metadata call) and asks for the frames at once, with no
metadata call (an OHIF client cannot ask for a frame before its metadata response is
complete, and the gateway's metadata response completes when the series has arrived).  The
share is the number of this series' entries complete in the cache directory when the first
frame response has been read (file names are `dicomrst.cache.store.entry_name` of AET and
SOP Instance UID; an entry appears there, renamed, when its instance has arrived whole),
over the instances of the series; a thread polling the directory every 5 ms gives when the
whole series was stored, and in what order the instances arrived.  Orthanc sends the series
in reverse Instance Number order here, so the same cold run is made again asking for the
frames in that order: what the gateway does when the PACS's order and the viewer's agree."""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench import data, peers
from bench.stats import pct, row, summary
from dicomrst.cache.store import entry_name

FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JSON = "application/dicom+json"
CONNECTIONS = 6
#: Below what the run stores (about 105 MB per cold run), so eviction runs.
MAX_SIZE = 400_000_000
RENDERED_PER_RUN = 10


class Browser:
    """A browser's connection pool to one origin: `size` keep-alive HTTP/1.1 connections,
    at most `size` requests at once."""

    def __init__(self, base: str, size: int = CONNECTIONS) -> None:
        parts = urllib.parse.urlsplit(base)
        assert parts.hostname is not None and parts.port is not None
        self.prefix = parts.path.rstrip("/")
        self.idle: queue.Queue[http.client.HTTPConnection] = queue.Queue()
        for _ in range(size):
            self.idle.put(http.client.HTTPConnection(parts.hostname, parts.port, timeout=120))
        self.workers = ThreadPoolExecutor(size)

    def get(self, path: str, accept: str) -> bytes:
        conn = self.idle.get()
        try:
            conn.request("GET", self.prefix + path, headers={"Accept": accept})
            response = conn.getresponse()
            body = response.read()
            if response.will_close:
                conn.close()  # http.client reconnects on the next request
        except Exception:
            conn.close()
            raise
        finally:
            self.idle.put(conn)
        if response.status != 200:
            raise RuntimeError(f"GET {self.prefix}{path} -> {response.status}: {body[:200]!r}")
        return body

    def close(self) -> None:
        self.workers.shutdown()
        while not self.idle.empty():
            self.idle.get().close()


@dataclass
class Session:
    qido: float = 0.0
    metadata: float = 0.0
    frames: float = 0.0
    #: From the first frame request to the first frame response read.
    first_frame: float = 0.0
    frame_bytes: int = 0

    @property
    def total(self) -> float:
        return self.qido + self.metadata + self.frames


def _frames(
    browser: Browser,
    study: str,
    series: str,
    sops: list[str],
    session: Session,
    on_first: Callable[[str], None] | None = None,
) -> None:
    lock = threading.Lock()
    first: list[float] = []
    t = time.perf_counter()

    def one(sop: str) -> int:
        body = browser.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/1", FRAME_ACCEPT)
        # 512x512 16-bit: a frame part is at least 512 KiB.
        if len(body) < 512 * 512 * 2:
            raise RuntimeError(f"frame of {sop}: {len(body)} bytes")
        with lock:
            if not first:
                first.append(time.perf_counter() - t)
                if on_first is not None:
                    on_first(sop)
        return len(body)

    session.frame_bytes = sum(browser.workers.map(one, sops))
    session.frames = time.perf_counter() - t
    session.first_frame = first[0]


def ohif(base: str, study: str) -> tuple[Session, list[str]]:
    """QIDO the series, the series metadata, then every frame, over a fresh pool of six."""
    browser = Browser(base)
    session = Session()
    try:
        t = time.perf_counter()
        found = json.loads(browser.get(f"/studies/{study}/series", JSON))
        series = found[0]["0020000E"]["Value"][0]
        session.qido = time.perf_counter() - t
        t = time.perf_counter()
        metadata = json.loads(browser.get(f"/studies/{study}/series/{series}/metadata", JSON))
        session.metadata = time.perf_counter() - t
        ordered = sorted(metadata, key=lambda ds: int(ds["00200013"]["Value"][0]))
        sops = [ds["00080018"]["Value"][0] for ds in ordered]
        _frames(browser, study, series, sops, session)
        return session, sops
    finally:
        browser.close()


class CacheWatch:
    """Samples the cache directory's size (every file, entries being written included)
    every `interval` seconds, for its peak.

    A scan is not a snapshot: files are listed and stat'ed one by one while the gateway
    writes at hundreds of MB/s and evicts, so one scan can count an entry evicted during it
    and the entry that replaced it.  Each sample is therefore two scans in a row, counting
    only the files both saw (each existed at the moment between them, so the sum, with the
    first scan's sizes, is at most what the directory held then): `peak`.  `raw_peak` is
    the largest single scan, for comparison."""

    def __init__(self, directory: str, interval: float = 0.05) -> None:
        self.directory = directory
        self.interval = interval
        self.peak = 0
        self.peak_allocated = 0
        self.raw_peak = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def scan(self) -> dict[str, tuple[int, int]]:
        """File name -> (bytes, bytes allocated on disk)."""
        found = {}
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    try:
                        st = entry.stat()
                    except OSError:
                        continue  # evicted meanwhile
                    found[entry.name] = (st.st_size, st.st_blocks * 512)
        except OSError:
            pass
        return found

    def size(self) -> tuple[int, int]:
        """(bytes of the files, bytes allocated to them on disk) of one sample."""
        first, second = self.scan(), self.scan()
        both = [first[name] for name in first.keys() & second.keys()]
        self.raw_peak = max(self.raw_peak, sum(size for size, _ in first.values()))
        return sum(size for size, _ in both), sum(allocated for _, allocated in both)

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            total, allocated = self.size()
            self.peak = max(self.peak, total)
            self.peak_allocated = max(self.peak_allocated, allocated)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def stored(directory: str, names: set[str]) -> int:
    """How many of the entries named `names` are complete in `directory`."""
    return len(names.intersection(os.listdir(directory)))


@dataclass
class FirstFrame:
    first_frame: float
    #: Entries of the series complete when the first frame response had been read.
    stored_then: int
    #: From the first frame request until the whole series was in the cache.
    series_stored: float
    frames: float
    #: Until the series' first entry was in the cache.
    first_stored: float
    #: The first frame's instance was the `rank`-th of the series stored (1-based, by polls).
    rank: int
    #: From when the first frame's instance was seen stored to its frame response read.
    served_after: float
    #: The instance asked for first was the `first_asked_rank`-th stored.
    first_asked_rank: int


def frames_first(base: str, directory: str, aet: str, study: str, series: str, sops: list[str]) -> FirstFrame:
    """A cold run with no metadata call: every frame asked for at once, six at a time."""
    names = {entry_name((aet, sop)) for sop in sops}
    stored_then: list[int] = []
    served: list[str] = []
    seen: dict[str, float] = {}
    all_stored: list[float] = []
    done = threading.Event()
    browser = Browser(base)
    session = Session()
    t = time.perf_counter()

    def poll() -> None:
        while not done.is_set():
            now = time.perf_counter() - t
            for name in names.intersection(os.listdir(directory)):
                seen.setdefault(name, now)
            if len(seen) == len(names):
                all_stored.append(now)
                return
            time.sleep(0.005)

    def first_read(sop: str) -> None:
        stored_then.append(stored(directory, names))
        served.append(entry_name((aet, sop)))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        _frames(
            browser,
            study,
            series,
            sops,
            session,
            on_first=first_read,
        )
        poller.join(30)
    finally:
        done.set()
        browser.close()
    if not all_stored:
        raise RuntimeError(f"{aet}: the series was not all in the cache 30 s after its frames")
    ranks = sorted(seen, key=seen.__getitem__)
    return FirstFrame(
        session.first_frame,
        stored_then[0],
        all_stored[0],
        session.frames,
        min(seen.values()),
        ranks.index(served[0]) + 1,
        session.first_frame - seen[served[0]],
        ranks.index(entry_name((aet, sops[0]))) + 1,
    )


def rendered(base: str, path: str, n: int) -> tuple[list[float], int]:
    """`n` sequential rendered JPEG requests on one keep-alive connection: latencies (s), size."""
    browser = Browser(base, size=1)
    latencies, size = [], 0
    try:
        for _ in range(n):
            t = time.perf_counter()
            body = browser.get(path, "image/jpeg")
            latencies.append(time.perf_counter() - t)
            if body[:2] != b"\xff\xd8":
                raise RuntimeError(f"{base}{path}: not a JPEG")
            size = len(body)
    finally:
        browser.close()
    return latencies, size


def _med(values: list[float]) -> float:
    return summary(values)[0]


def _print_first(title: str, first: list[FirstFrame], n: int) -> None:
    print(f"  {title}; 5 ms polls of the cache directory")
    print(row("dicomrst: first frame response", [f.first_frame * 1000 for f in first], "ms", fmt="{:.1f}"))
    print(
        row(
            "series stored at first frame read (target < 10%)",
            [f.stored_then / n * 100 for f in first],
            "%",
            fmt="{:.1f}",
        )
    )
    print(
        row(
            "dicomrst: whole series in the cache after",
            [f.series_stored for f in first],
            "s",
            fmt="{:.3f}",
        )
    )
    print(
        row(
            "first frame as share of the series' arrival",
            [f.first_frame / f.series_stored * 100 for f in first],
            "%",
            fmt="{:.1f}",
        )
    )
    print(row("dicomrst: all frames", [f.frames for f in first], "s", fmt="{:.3f}"))
    print(
        row(
            "dicomrst: first instance of the series stored",
            [f.first_stored * 1000 for f in first],
            "ms",
            fmt="{:.1f}",
        )
    )
    print(row("first frame's instance: n-th of the series stored", [f.rank for f in first], "", fmt="{:.0f}"))
    print(
        row(
            "then its frame read (5 ms polls: +-5 ms)",
            [f.served_after * 1000 for f in first],
            "ms",
            fmt="{:.1f}",
        )
    )
    print(
        row(
            "the instance asked first: n-th stored",
            [f.first_asked_rank for f in first],
            "",
            fmt="{:.0f}",
        )
    )


def run(runs: int = 5, slices: int = 200) -> None:
    started = time.perf_counter()
    work = peers.workdir()
    orthanc = gateway = watch = None
    try:
        # Orthanc serves an association per thread (4 by default) and the gateway keeps idle
        # associations open for every AET it has used: the cold AETs would queue behind them.
        orthanc = peers.Orthanc(work, extra={"DicomThreadsCount": 64})
        study, files = data.ct_study(slices)
        size_mb = sum(len(f) for f in files) / 1e6
        for blob in files:
            orthanc.upload(blob)
        del files
        cold_aets = [f"COLD{i}" for i in range(runs)]
        first_aets = [f"FIRST{i}" for i in range(runs)]
        last_aets = [f"LAST{i}" for i in range(runs)]
        aets = [
            {"aet": aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "wado-rs": {"retrieve": "get"}}
            for aet in [orthanc.aet, *cold_aets, *first_aets, *last_aets]
        ]
        gateway = peers.Gateway(work, aets, cache={"max-size": MAX_SIZE})
        directory = str(gateway.cache_dir)
        watch = CacheWatch(directory)
        orthanc_base = f"{orthanc.url}/dicom-web"

        def gw_base(aet: str) -> str:
            return f"{gateway.url}/aets/{aet}"

        # Warm-up: Orthanc's caches and the page cache; through the gateway this also fills
        # the cache for the warm runs (the metadata call retrieves the series).
        _, sops = ohif(orthanc_base, study)
        ohif(gw_base(orthanc.aet), study)
        qido = Browser(orthanc_base, 1)
        series = json.loads(qido.get(f"/studies/{study}/series", JSON))[0]["0020000E"]["Value"][0]
        qido.close()

        # Warm: the same session on a pool of six, interleaved with Orthanc's own.
        orth: list[Session] = []
        warm: list[Session] = []
        for _ in range(runs):
            orth.append(ohif(orthanc_base, study)[0])
            warm.append(ohif(gw_base(orthanc.aet), study)[0])

        # Rendered JPEG of the middle slice, warm (a few requests each first).
        path = f"/studies/{study}/series/{series}/instances/{sops[len(sops) // 2]}/rendered"
        rendered(orthanc_base, path, 3), rendered(gw_base(orthanc.aet), path, 3)
        r_orth: list[float] = []
        r_gw: list[float] = []
        for _ in range(runs):
            lat, orth_jpeg = rendered(orthanc_base, path, RENDERED_PER_RUN)
            r_orth += lat
            lat, gw_jpeg = rendered(gw_base(orthanc.aet), path, RENDERED_PER_RUN)
            r_gw += lat

        # Cold: an AET never used before per run.
        orth_cold: list[Session] = []
        cold: list[Session] = []
        first: list[FirstFrame] = []
        last: list[FirstFrame] = []
        for i in range(runs):
            orth_cold.append(ohif(orthanc_base, study)[0])
            cold.append(ohif(gw_base(cold_aets[i]), study)[0])
            first.append(frames_first(gw_base(first_aets[i]), directory, first_aets[i], study, series, sops))
            last.append(
                frames_first(gw_base(last_aets[i]), directory, last_aets[i], study, series, sops[::-1])
            )
        watch.stop()
        rss = peers.peak_rss_mb(gateway.pid)
        on_disk = watch.size()
        took = time.perf_counter() - started

        frame_mb = warm[0].frame_bytes / 1e6
        print(
            f"\nViewer path (OHIF-like client: {CONNECTIONS} keep-alive HTTP/1.1 connections, {CONNECTIONS} "
            f"requests at once), {slices} slices 512x512 CT ({size_mb:.0f} MB of Part-10 files, "
            f"{frame_mb:.0f} MB of frame responses); QIDO series, series metadata, frames/1 of every "
            f"instance; seconds, {runs} runs; ratios to Orthanc's own DICOMweb (1.10.1, plugin 1.7)"
        )
        anchor = _med([s.frames for s in orth])
        print("  warm (the gateway's cache holds the series)")
        print(row("Orthanc's own DICOMweb: all frames", [s.frames for s in orth], "s", anchor, fmt="{:.3f}"))
        print(
            row(
                "dicomrst warm: all frames (target <= 1.0x)",
                [s.frames for s in warm],
                "s",
                anchor,
                fmt="{:.3f}",
            )
        )
        print(row("Orthanc's own: metadata", [s.metadata for s in orth], "s", fmt="{:.3f}"))
        print(
            row(
                "dicomrst warm: metadata (the series answered from the cache)",
                [s.metadata for s in warm],
                "s",
                _med([s.metadata for s in orth]),
                fmt="{:.3f}",
            )
        )
        print(row("Orthanc's own: first frame", [s.first_frame * 1000 for s in orth], "ms", fmt="{:.1f}"))
        print(row("dicomrst warm: first frame", [s.first_frame * 1000 for s in warm], "ms", fmt="{:.1f}"))
        print(
            row("dicomrst warm: frames throughput", [frame_mb / s.frames for s in warm], "MB/s", fmt="{:.0f}")
        )
        print(
            row("Orthanc's own: frames throughput", [frame_mb / s.frames for s in orth], "MB/s", fmt="{:.0f}")
        )

        anchor = _med([s.metadata + s.frames for s in orth_cold])
        print("  cold (each run through an AET the gateway has not used: empty cache, no association)")
        print(
            row(
                "Orthanc's own: metadata + all frames",
                [s.metadata + s.frames for s in orth_cold],
                "s",
                anchor,
                fmt="{:.3f}",
            )
        )
        print(
            row(
                "dicomrst cold: metadata + all frames (target <= 2x)",
                [s.metadata + s.frames for s in cold],
                "s",
                anchor,
                fmt="{:.3f}",
            )
        )
        print(
            row(
                "dicomrst cold: metadata (retrieves the series)",
                [s.metadata for s in cold],
                "s",
                fmt="{:.3f}",
            )
        )
        print(row("dicomrst cold: then all frames", [s.frames for s in cold], "s", fmt="{:.3f}"))
        print(
            row(
                "dicomrst cold: QIDO series (opens an association)",
                [s.qido * 1000 for s in cold],
                "ms",
                fmt="{:.1f}",
            )
        )
        _print_first(
            "cold, frames at once by Instance Number (instance UIDs known, no metadata call)",
            first,
            len(sops),
        )
        _print_first(
            "the same, frames asked in reverse Instance Number order (the order Orthanc sends here)",
            last,
            len(sops),
        )

        anchor = _med(r_orth)
        print(
            f"  rendered JPEG of one slice, warm: {len(r_gw)} sequential requests each, one keep-alive "
            f"connection; JPEG {gw_jpeg} bytes (dicomrst), {orth_jpeg} bytes (Orthanc)"
        )
        print(row("Orthanc's own /rendered", [t * 1000 for t in r_orth], "ms", anchor * 1000, fmt="{:.1f}"))
        print(
            row(
                "dicomrst /rendered (target <= 1.0x)",
                [t * 1000 for t in r_gw],
                "ms",
                anchor * 1000,
                fmt="{:.1f}",
            )
        )
        print(
            f"  dicomrst /rendered p90 {pct(r_gw, 90) * 1000:.1f} ms, "
            f"Orthanc's p90 {pct(r_orth, 90) * 1000:.1f} ms"
        )
        print(f"  dicomrst peak RSS through the whole run (one process; target < 150 MB): {rss:.0f} MB")
        print(
            f"  cache directory: peak {watch.peak / 1e6:.1f} MB of files "
            f"({watch.peak_allocated / 1e6:.1f} MB allocated on disk; sampled every 50 ms; a single scan's "
            f"peak {watch.raw_peak / 1e6:.1f} MB), "
            f"{on_disk[0] / 1e6:.1f} MB at the end; "
            f"server.cache.max-size {MAX_SIZE / 1e6:.1f} MB; the series ({size_mb:.0f} MB) stored "
            f"{1 + 4 * runs} times in the run"
        )
        print(f"  suite took {took:.0f} s")
    finally:
        if watch is not None:
            watch.stop()
        for process in (gateway, orthanc):
            if process is not None:
                process.stop()
        shutil.rmtree(work, ignore_errors=True)

"""Processes the benchmarks run: Orthanc, the gateway, DCMTK tools.

Plain subprocesses on 127.0.0.1 and free ports, stopped by PID.  Deliberately
independent of the trial harness in tests/: benchmarks run outside trial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk(name: str) -> str:
    # pynetdicom installs Python scripts with DCMTK's names earlier on PATH.
    path = f"/usr/bin/{name}"
    if not os.path.exists(path):
        sys.exit(f"bench: DCMTK's {name} is missing (apt-get install dcmtk)")
    return path


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_tcp(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Process:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.log = log
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.proc = self._spawn("wb")

    def _spawn(self, mode: str) -> subprocess.Popen:
        out = open(self.log, mode) if self.log else subprocess.DEVNULL
        return subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Orthanc(Process):
    def __init__(
        self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None, extra: dict | None = None
    ) -> None:
        """`extra`: configuration keys merged over the defaults below."""
        for path in (ORTHANC, DICOMWEB_PLUGIN):
            if not os.path.exists(path):
                sys.exit(f"bench: {path} is missing (apt-get install orthanc orthanc-dicomweb)")
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "bench",
            "StorageDirectory": str(workdir / "orthanc-db"),
            "IndexDirectory": str(workdir / "orthanc-db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "UnknownSopClassAccepted": True,
            "SynchronousCMove": True,
            "SaveJobs": False,
            "KeepAlive": True,
            "DicomModalities": modalities or {},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            **(extra or {}),
        }
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        super().__init__([ORTHANC, str(path)], env={"TCP_NODELAY": "1"}, log=workdir / "orthanc.log")
        wait_http(self.url + "/system")

    def restart(self) -> None:
        """Stop Orthanc and start it again on the same ports and storage (a PACS restart)."""
        self.stop()
        self.proc = self._spawn("ab")
        wait_http(self.url + "/system", timeout=60)

    def upload(self, data: bytes) -> None:
        req = urllib.request.Request(self.url + "/instances", data=data, method="POST")
        with urllib.request.urlopen(req) as r:
            r.read()


class Gateway(Process):
    """``twistd -n dicomrst`` on a config written into `workdir`."""

    def __init__(
        self,
        workdir: Path,
        aets: list[dict],
        dimse_aet: str = "DICOMRST",
        request_timeout_ms: int = 600000,
        dimse_port: int | None = None,
        name: str = "dicomrst",
        cache: dict | None = None,
        http: dict | None = None,
        index: dict | None = None,
        profile: str | None = None,
    ) -> None:
        """`dimse_port`: the listener's port when a C-MOVE source must know it beforehand;
        `name`: for the config and log file names, when several gateways run; `cache`:
        ``server.cache`` keys merged over the path (`cache_dir`); `http`: ``server.http``
        keys merged over the defaults; `index`: the ``index`` section (for LOCAL and S3 AETs);
        `profile`: a file twistd writes cProfile stats to when the gateway stops."""
        import yaml

        self.http_port = free_port()
        self.dimse_port = dimse_port or free_port()
        self.dimse_aet = dimse_aet
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.cache_dir = workdir / f"{name}-cache"
        config = {
            "telemetry": {"level": "WARN"},
            "server": {
                "aet": dimse_aet,
                # Long enough for the slow-client run (1 GB at 10 MB/s is ~110 s).
                "http": {
                    "interface": "127.0.0.1",
                    "port": self.http_port,
                    "request-timeout": request_timeout_ms,
                    **(http or {}),
                },
                "dimse": [{"aet": dimse_aet, "interface": "127.0.0.1", "port": self.dimse_port}],
                # One per gateway: several may run at once, and each locks its own.
                "cache": {"path": str(self.cache_dir), **(cache or {})},
            },
            "aets": aets,
            **({"index": index} if index else {}),
        }
        self.config = path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
        env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        profiling = ["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else []
        super().__init__(
            [twistd, "-n", "--pidfile=", *profiling, "dicomrst", "--config", str(path)],
            env=env,
            log=workdir / f"{name}.log",
        )
        wait_http(self.url + "/")


class Storescp(Process):
    """DCMTK ``storescp --ignore``: receives every C-STORE in full and answers Success, but
    writes nothing, as the gateway writes nothing (it streams to the HTTP client). With
    `output_dir`, it writes the files there instead (e.g. a tmpfs directory)."""

    def __init__(
        self, workdir: Path, aet: str = "STORESCP", port: int | None = None, output_dir: str | None = None
    ) -> None:
        self.aet = aet
        self.port = port or free_port()
        where = ["--output-directory", output_dir] if output_dir else ["--ignore"]
        super().__init__(
            [dcmtk("storescp"), *where, "-aet", aet, str(self.port)],
            env={"TCP_NODELAY": "1"},
            log=workdir / f"storescp-{aet}.log",
        )
        wait_tcp(self.port)


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dicomrst-bench-"))


class Postgres(Process):
    """A PostgreSQL server of the benchmark's own: ``initdb`` in a temporary directory,
    ``postgres`` on 127.0.0.1 and a free port (Debian's ``postgresql`` package; the
    system's own cluster is never touched). PostgreSQL refuses to run as root: as root,
    ``initdb`` and the server run as the ``postgres`` user through ``setpriv`` (which execs,
    so the PID is the server's). Durability settings are PostgreSQL's defaults (fsync on),
    as a deployment would have them."""

    USER = "dicomrst"
    READY = "database system is ready to accept connections"

    def __init__(self) -> None:
        import glob
        import pwd

        def binary(name: str) -> str:
            for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
                if os.path.exists(f"{directory}/{name}"):
                    return f"{directory}/{name}"
            found = shutil.which(name)
            if found is None:
                sys.exit(f"bench: PostgreSQL's {name} is missing (apt-get install postgresql)")
            return found

        prefix: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="dicomrst-bench-postgres-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            prefix = [shutil.which("setpriv") or "/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres",
                      "--clear-groups", "--"]  # fmt: skip
        data = self.directory / "data"
        subprocess.run(
            [*prefix, binary("initdb"), "-D", str(data), "-U", self.USER, "--auth=trust", "-E", "UTF8",
             "--no-sync", "--locale=C"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.port = free_port()
        log = Path(tempfile.mkdtemp(prefix="dicomrst-bench-postgres-log-")) / "postgres.log"
        super().__init__(
            [*prefix, binary("postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.directory), "-c", "max_connections=50"],
            log=log,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.READY not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench: postgres did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        # SIGINT: a fast shutdown (open sessions are ended).
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.log is not None:
            shutil.rmtree(self.log.parent, ignore_errors=True)

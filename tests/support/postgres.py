"""A PostgreSQL server of the test's own: ``initdb`` in a temporary directory, ``postgres`` on
127.0.0.1 and a free port, stopped by its PID (SIGINT: fast shutdown) when the test ends.

Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``, or ``initdb`` and
``postgres`` on PATH) provides the binaries; the system's own cluster is never touched.
PostgreSQL refuses to run as root: as root the server and ``initdb`` run as the
``postgres`` user through ``setpriv`` (which execs, so the PID is the server's).
Durability is off (``fsync=off``): the tests check the index, not the disk.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

import attrs
from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import peers

START_TIMEOUT = 60.0
USER = "dicomrst"
_READY = "database system is ready to accept connections"


def _binary(name: str) -> str:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    path = peers.find_binary(name, ["/usr/local/bin", *dirs])
    if path is None:
        raise peers.PeerBinaryMissing(
            f"PostgreSQL's {name!r} not found (install the Debian package 'postgresql')"
        )
    return path


def _as_unprivileged() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid to run PostgreSQL with."""
    if os.geteuid() != 0:
        return [], None, None
    user = pwd.getpwnam("postgres")
    prefix = [
        shutil.which("setpriv") or "/usr/bin/setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ]
    return prefix, user.pw_uid, user.pw_gid


def _locales() -> set[str]:
    try:
        listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.strip().lower() for line in listed.stdout.splitlines()}


class _Server(protocol.ProcessProtocol):
    def __init__(self, log_path: str) -> None:
        self._log = open(log_path, "ab")
        self.ended: Deferred[None] = Deferred()
        self.exited = False

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()

    def errReceived(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self._log.close()
        self.ended.callback(None)


@attrs.define(eq=False)
class Postgres:
    port: int
    directory: str
    argv: list[str]
    log_path: str
    pid: int = 0
    _server: _Server | None = attrs.field(default=None, repr=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """Start the server (again) and wait until it takes sessions."""
        from twisted.internet import reactor

        ready = self.log_tail().count(_READY)
        server = self._server = _Server(self.log_path)
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            server, self.argv[0], self.argv, env={"PATH": os.environ.get("PATH", "")}
        )
        self.pid = transport.pid
        # It listens before it takes sessions ("the database system is starting up"); its
        # log says when it does.
        waited = 0.0
        while self.log_tail().count(_READY) <= ready:
            if server.exited or waited > START_TIMEOUT:
                raise peers.PeerError(f"postgres did not start\n--- postgres log ---\n{self.log_tail()}")
            await task.deferLater(reactor, 0.05, lambda: None)
            waited += 0.05

    def stop(self) -> Deferred[None]:
        """SIGINT (a fast shutdown: open sessions are ended) to the server's PID."""
        if self._server is None or self._server.exited:
            return defer.succeed(None)
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return defer.succeed(None)
        return self._server.ended

    def log_tail(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-100_000:]
        except OSError:
            return ""


async def start_postgres(case: TestCase) -> Postgres:
    """A running server (user `USER`, trust authentication on 127.0.0.1), stopped and
    removed when `case` ends."""
    initdb, postgres = _binary("initdb"), _binary("postgres")
    prefix, uid, gid = _as_unprivileged()
    directory = tempfile.mkdtemp(prefix="dicomrst-postgres-")
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    if uid is not None and gid is not None:
        os.chown(directory, uid, gid)
    data = os.path.join(directory, "data")
    # A database collation other than C where the machine has one, as most servers do:
    # the index must not depend on it.
    locale = "en_US.UTF-8" if "en_US.utf8" in _locales() else "C"
    initdb_args = [
        initdb,
        "-D",
        data,
        "-U",
        USER,
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        f"--locale={locale}",
    ]
    result = await peers.run_tool(case, [*prefix, *initdb_args], timeout=120)
    if result.returncode != 0:
        raise peers.PeerError(f"initdb failed: {result.describe()}")
    port = peers.free_port()
    argv = [*prefix, postgres, "-D", data, "-p", str(port), "-h", "127.0.0.1", "-k", directory,
            "-c", "fsync=off", "-c", "max_connections=50"]  # fmt: skip
    pg = Postgres(port, directory, argv, os.path.join(directory, "postgres.log"))
    case.addCleanup(pg.stop)
    await pg.start()
    return pg

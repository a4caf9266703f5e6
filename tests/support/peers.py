"""Run real DICOM peers (Orthanc, DCMTK, a pynetdicom PACS) for trial integration tests.

Every function takes the running ``TestCase`` and registers its own cleanups on it: each process
started here is stopped by its PID (SIGTERM, then SIGKILL after a bound) and each temp dir removed
when the test ends, whatever its outcome. Servers get ports found free at run time; only ever
connect to 127.0.0.1. Readiness is polled on the reactor (never ``time.sleep``) with a bounded
total time, and everything returns Deferreds, so tests are ``async def`` methods that ``await``.

A peer binary that is missing, or a peer that does not come up, fails the test (``PeerError`` is a
``FailTest``) with a message that names the binary or carries the tail of the peer's log.

See docs/test-peers.md (shared docs) for the Orthanc settings and the ``TCP_NODELAY=1`` trap: it
is set in the environment of Orthanc and of every DCMTK tool started here.

Environment knobs: ``DICOMRST_DCMTK_BIN`` (directory searched first for DCMTK tools),
``DICOMRST_ORTHANC`` (Orthanc binary), ``DICOMRST_KEEP_PEER_DIRS=1`` (keep temp dirs and logs).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet import defer, error, protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProcessTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

LOCALHOST = "127.0.0.1"
ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: Orthanc's modality worklist plugin (Debian package ``orthanc``).
WORKLIST_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"
#: The pynetdicom PACS (tests/support/pacs/), run as ``python -m PACS_PEER`` with CHECKOUT, the
#: directory holding this ``tests`` package, first on its PYTHONPATH (it runs in a temp dir).
PACS_PEER = "tests.support.pacs"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Bounds (seconds). Orthanc 1.10 with the DICOMweb plugin is usually up in well under a second
#: here; the bound is for slow CI machines.
ORTHANC_START_TIMEOUT = 60.0
SCP_START_TIMEOUT = 30.0
STOP_GRACE = 15.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 40


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# ---------------------------------------------------------------------------------------------
# Errors


class PeerError(FailTest):
    """A peer is missing, did not start, or misbehaved at the process level: the test fails."""


class PeerBinaryMissing(PeerError):
    """The binary of a peer is not installed."""


class ToolTimeout(PeerError):
    """A tool run by ``run_tool`` did not exit within its timeout (it was killed)."""


class EchoFailed(Exception):
    """``pynetdicom_echo`` got no C-ECHO status.

    ``outcome`` is one of ``rejected`` (``details`` has ``result``, ``source``, ``diagnostic``),
    ``aborted``, ``timeout``, ``no-context``, ``no-response``, ``connect-failed``.
    """

    def __init__(self, outcome: str, details: Mapping[str, Any]) -> None:
        super().__init__(f"C-ECHO failed: {outcome} {dict(details)!r}")
        self.outcome = outcome
        self.details = dict(details)


# ---------------------------------------------------------------------------------------------
# Ports and sockets


def _listen_range() -> tuple[int, int]:
    """Ports to listen on: below the kernel's ephemeral range.

    Port 0 would hand out a port from the ephemeral range, which every outgoing connection
    (gateway to Orthanc, clients to the gateway) also draws its source port from: with
    tests running side by side, one of those took a port between our choosing it and the
    peer binding it ("Address already in use"). Listening ports chosen below that range
    are only ever taken by another listener.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = max(2048, min(ephemeral_low, 32768))
    return max(1024, high - 12000), high


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on all interfaces right now.

    The sockets are held open until all are chosen, so the ports are distinct. Another process
    may still take one before our peer binds it; the peer then exits and the start fails loudly.
    """
    low, high = _listen_range()
    chooser = random.SystemRandom()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Orthanc and DCMTK bind every interface, so probe the wildcard address.
                s.bind(("", chooser.randrange(low, high)))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """A TCP port free on all interfaces right now."""
    return free_ports(1)[0]


class _Probe(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost.callback(None)


async def _tcp_connect_once(host: str, port: int, timeout: float) -> None:
    """Connect, then close and wait until the connection is gone (keeps trial's reactor clean)."""
    endpoint = TCP4ClientEndpoint(_reactor(), host, port, timeout=timeout)
    probe = await endpoint.connect(protocol.Factory.forProtocol(_Probe))
    probe.transport.loseConnection()
    await probe.lost


def tcp_refused(host: str, port: int, timeout: float = 2.0) -> Deferred[bool]:
    """Fire True if a TCP connect to host:port is refused, False if it is accepted."""

    async def check() -> bool:
        try:
            await _tcp_connect_once(host, port, timeout)
        except error.ConnectionRefusedError:
            return True
        return False

    return Deferred.fromCoroutine(check())


async def _wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float,
    child: _Child | None = None,
) -> float:
    """Poll ``check`` on the reactor until it returns True; fire with the seconds it took.

    Fails with PeerError when ``timeout`` passes or when ``child`` exits first.
    """
    reactor = _reactor()
    start = reactor.seconds()
    last_error: BaseException | None = None
    while True:
        if child is not None and child.exited:
            raise PeerError(
                f"{what}: {child.name} (pid {child.pid}) exited with {child.returncode} "
                f"before it was ready.\n{child.describe_log()}"
            )
        try:
            if await check():
                return reactor.seconds() - start
        except Exception as exc:  # a refused connect, an HTTP error: try again
            last_error = exc
        if reactor.seconds() - start >= timeout:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            log = f"\n{child.describe_log()}" if child is not None else ""
            raise PeerError(f"{what}: not ready after {timeout:.0f} s{detail}{log}")
        await task.deferLater(reactor, POLL_INTERVAL, lambda: None)


def wait_for_tcp(host: str, port: int, timeout: float = SCP_START_TIMEOUT) -> Deferred[float]:
    """Fire (with the seconds waited) once host:port accepts a TCP connection."""

    async def accepts() -> bool:
        await _tcp_connect_once(host, port, timeout=1.0)
        return True

    return Deferred.fromCoroutine(_wait_until(accepts, f"TCP {host}:{port}", timeout))


# ---------------------------------------------------------------------------------------------
# Child processes


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return True


def find_binary(name: str, dirs: Iterable[str] = ()) -> str | None:
    """Path of the executable *binary* ``name``: ``dirs`` first, then PATH; None if absent.

    Scripts are skipped: pynetdicom installs Python console scripts named ``echoscu``,
    ``storescp``, ``findscu``... that shadow DCMTK's binaries on PATH (pyenv shims too).
    """
    if os.sep in name:
        return name if os.access(name, os.X_OK) and not _is_script(name) else None
    search = [*dirs, *os.environ.get("PATH", "").split(os.pathsep)]
    for directory in search:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and not _is_script(candidate):
            return candidate
    return None


def dcmtk_binary(name: str) -> str:
    """Path of the DCMTK tool ``name``; raises PeerBinaryMissing if it is not installed."""
    dirs = [d for d in (os.environ.get("DICOMRST_DCMTK_BIN"), "/usr/bin") if d]
    path = find_binary(name, dirs)
    if path is None:
        raise PeerBinaryMissing(
            f"DCMTK tool {name!r} not found as a binary in {dirs} or on PATH "
            "(install the Debian package 'dcmtk'; pynetdicom's Python scripts of the same name "
            "are not DCMTK and are skipped)"
        )
    return path


def _peer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Orthanc and DCMTK: ours, ``TCP_NODELAY=1``, then ``extra``."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def _tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text)


class _ChildProtocol(protocol.ProcessProtocol):
    """Collects a child's output (to memory and/or a log file) and its exit."""

    def __init__(
        self,
        log_path: str | None,
        keep_output: bool,
        on_stdout_line: Callable[[str], None] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab") if log_path else None  # closed in processEnded
        self._keep = keep_output
        self._on_line = on_stdout_line
        self._partial = b""
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.returncode: int | None = None
        self._waiters: list[Deferred[int]] = []

    def outReceived(self, data: bytes) -> None:
        self._record(data, self.stdout)
        if self._on_line is not None:
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                self._on_line(line.decode("utf-8", "replace").rstrip("\r"))

    def errReceived(self, data: bytes) -> None:
        self._record(data, self.stderr)

    def _record(self, data: bytes, buffer: bytearray) -> None:
        if self._keep:
            buffer += data
        if self._log is not None:
            self._log.write(data)
            self._log.flush()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.returncode = code if code is not None else -(sig or 0)
        if self._log is not None:
            self._log.close()
            self._log = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.returncode)

    def when_ended(self) -> Deferred[int]:
        if self.returncode is not None:
            return defer.succeed(self.returncode)
        d: Deferred[int] = Deferred()
        self._waiters.append(d)
        return d


@attrs.define(eq=False)
class _Child:
    """A process we started; stopped by its PID only."""

    name: str
    transport: IProcessTransport
    proto: _ChildProtocol
    pid: int
    _stopping: bool = False

    @property
    def exited(self) -> bool:
        return self.proto.returncode is not None

    @property
    def returncode(self) -> int | None:
        return self.proto.returncode

    def describe_log(self) -> str:
        if self.proto.log_path is None:
            out = (bytes(self.proto.stdout) + bytes(self.proto.stderr)).decode("utf-8", "replace")
            return f"--- output of {self.name} ---\n{out[-4000:]}"
        return f"--- last lines of {self.proto.log_path} ---\n{_tail(self.proto.log_path)}"

    def stop(self, grace: float = STOP_GRACE) -> Deferred[int]:
        """SIGTERM, SIGKILL after ``grace`` s; fire with the exit code (-signal). Idempotent."""
        ended = self.proto.when_ended()
        if self.exited or self._stopping:
            return ended
        self._stopping = True
        reactor = _reactor()
        try:
            self.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return ended

        def kill() -> None:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

        killer = reactor.callLater(grace, kill)

        def done(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result

        return ended.addBoth(done)


def _spawn(
    case: TestCase,
    name: str,
    executable: str,
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None = None,
    log_path: str | None = None,
    keep_output: bool = False,
    on_stdout_line: Callable[[str], None] | None = None,
    grace: float = STOP_GRACE,
) -> _Child:
    proto = _ChildProtocol(log_path, keep_output, on_stdout_line)
    # argv[0] must be the executable's path: a venv's python finds its site-packages
    # through it, and CI runs the tests from a venv.
    transport = _reactor().spawnProcess(proto, executable, [executable, *args], env=dict(env), path=cwd)
    transport.closeStdin()
    child = _Child(name=name, transport=transport, proto=proto, pid=transport.pid)
    case.addCleanup(child.stop, grace)
    return child


def _pacs_peer_env() -> dict[str, str]:
    """Our environment with CHECKOUT prepended to PYTHONPATH, so ``-m PACS_PEER`` finds it."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = CHECKOUT + (os.pathsep + existing if existing else "")
    return env


def _temp_dir(case: TestCase, prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=f"dicomrst-{prefix}-")
    if os.environ.get("DICOMRST_KEEP_PEER_DIRS") == "1":
        case.addCleanup(lambda: sys.stderr.write(f"\nkept peer dir {path}\n"))
    else:
        case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------
# DCMTK tools


@attrs.frozen
class ToolResult:
    returncode: int
    stdout: str
    stderr: str
    argv: tuple[str, ...] = ()

    def describe(self) -> str:
        """For assertion messages."""
        return (
            f"{' '.join(self.argv)} -> {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def run_tool(
    case: TestCase,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: str | None = None,
) -> Deferred[ToolResult]:
    """Run a DCMTK tool to completion; fire with its ToolResult (any exit code).

    ``argv[0]`` is a tool name (resolved to DCMTK's binary, never pynetdicom's script of the same
    name) or an absolute path. The environment is ours plus ``TCP_NODELAY=1`` plus ``env``. Fails
    (PeerBinaryMissing) if the binary is missing, (ToolTimeout) if it runs longer than
    ``timeout``; it is then killed. A tool still running when the test ends is stopped.
    """
    try:
        executable = dcmtk_binary(argv[0])
    except PeerBinaryMissing:
        return defer.fail()
    name = os.path.basename(executable)
    child = _spawn(case, name, executable, argv[1:], _peer_env(env), cwd=cwd, keep_output=True, grace=2.0)
    reactor = _reactor()
    timed_out = []

    def on_timeout() -> None:
        timed_out.append(True)
        child.stop(grace=2.0)

    timer = reactor.callLater(timeout, on_timeout)

    def finished(returncode: int) -> ToolResult:
        if timer.active():
            timer.cancel()
        result = ToolResult(
            returncode=returncode,
            stdout=bytes(child.proto.stdout).decode("utf-8", "replace"),
            stderr=bytes(child.proto.stderr).decode("utf-8", "replace"),
            argv=(executable, *argv[1:]),
        )
        if timed_out:
            raise ToolTimeout(f"killed after {timeout} s: {result.describe()}")
        return result

    return child.proto.when_ended().addCallback(finished)


# ---------------------------------------------------------------------------------------------
# Peers: storescp and the pynetdicom PACS


@attrs.define(eq=False)
class Peer:
    """A DICOM SCP we started. ``stop()`` SIGTERMs it by PID (SIGKILL after a bound)."""

    aet: str
    host: str
    port: int
    pid: int
    log_path: str
    #: pynetdicom peers: JSON-lines log of what the peer observed (see ``events()``).
    events_path: str | None = None
    #: storescp: where received files are written.
    output_dir: str | None = None
    _child: _Child | None = attrs.field(default=None, repr=False)

    def stop(self, grace: float = STOP_GRACE) -> Deferred[int]:
        """SIGTERM by PID, SIGKILL after ``grace`` s; fire with the exit code. Idempotent."""
        assert self._child is not None
        return self._child.stop(grace)

    @property
    def running(self) -> bool:
        return self._child is not None and not self._child.exited

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The peer's association events so far (pynetdicom peers), optionally of one kind.

        Kinds: started, conn_open, requested (calling_aet, called_aet, peer_max_pdu, contexts),
        accepted (peer_max_pdu, accepted_contexts, rejected_contexts), rejected, released,
        aborted, conn_close, pdata_recv (pdu_length, pdv_lengths), dimse_recv (message), c_echo,
        and profile-specific ones (abort_sent, stalling). ``assoc`` numbers associations 1, 2, ...
        """
        if self.events_path is None:
            raise ValueError(f"{self.aet} is not a pynetdicom peer: no event log")
        records = []
        with open(self.events_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    records.append(json.loads(line))
        return [r for r in records if kind is None or r["event"] == kind]


def start_storescp(case: TestCase, aet: str = "STORESCP", extra_args: Sequence[str] = ()) -> Deferred[Peer]:
    """DCMTK ``storescp`` on a free port, writing into a temp dir; fires once the port accepts.

    ``extra_args`` go before the port, e.g. ``("+xa",)`` (accept all transfer syntaxes),
    ``("-pm",)`` (max PDU), ``("--sleep-after", "5")``.
    """

    async def start() -> Peer:
        executable = dcmtk_binary("storescp")
        directory = _temp_dir(case, "storescp")
        output_dir = os.path.join(directory, "received")
        os.mkdir(output_dir)
        log_path = os.path.join(directory, "storescp.log")
        port = free_port()
        args = ["-aet", aet, "--output-directory", output_dir, *extra_args, str(port)]
        child = _spawn(case, "storescp", executable, args, _peer_env(), cwd=directory, log_path=log_path)

        async def accepts() -> bool:
            await _tcp_connect_once(LOCALHOST, port, timeout=1.0)
            return True

        await _wait_until(accepts, f"storescp {aet} on port {port}", SCP_START_TIMEOUT, child)
        return Peer(aet, LOCALHOST, port, child.pid, log_path, output_dir=output_dir, child=child)

    return Deferred.fromCoroutine(start())


def start_wlmscpfs(
    case: TestCase, database: str, aet: str = "WLMSCPFS", extra_args: Sequence[str] = ()
) -> Deferred[Peer]:
    """DCMTK ``wlmscpfs``, the worklist SCP that serves the ``.wl`` files of ``database/aet/``
    (the directory must exist, with a file named ``lockfile``: wlmscpfs's own rules), on a
    free port; fires once the port accepts.

    Started with ``-csk``: wlmscpfs otherwise answers without the files' Specific Character
    Set (``-cs0`` is its default), and UTF-8 names would arrive undeclared. It forks a child
    per association (its default), so pooled associations do not queue behind each other.
    ``extra_args`` go before the port, e.g. ``("--sleep-before", "2")``.
    """

    async def start() -> Peer:
        executable = dcmtk_binary("wlmscpfs")
        if not os.path.isfile(os.path.join(database, aet, "lockfile")):
            raise PeerError(f"wlmscpfs needs {database}/{aet}/lockfile")
        directory = _temp_dir(case, "wlmscpfs")
        log_path = os.path.join(directory, "wlmscpfs.log")
        port = free_port()
        args = ["-v", "-dfp", database, "-csk", *extra_args, str(port)]
        child = _spawn(case, "wlmscpfs", executable, args, _peer_env(), cwd=directory, log_path=log_path)

        async def accepts() -> bool:
            await _tcp_connect_once(LOCALHOST, port, timeout=1.0)
            return True

        await _wait_until(accepts, f"wlmscpfs {aet} on port {port}", SCP_START_TIMEOUT, child)
        return Peer(aet, LOCALHOST, port, child.pid, log_path, child=child)

    return Deferred.fromCoroutine(start())


def start_pynetdicom_scp(
    case: TestCase,
    profile: str = "echo",
    aet: str = "PYNETDICOM",
    max_pdu: int = 16384,
    **options: Any,
) -> Deferred[Peer]:
    """Run the pynetdicom PACS (``python -m tests.support.pacs``) as a subprocess with ``profile``.

    Profiles: echo, reject, abort, stall, no-echo, find-*, get-*, move-*, store (see
    ``tests.support.pacs``: one module per service). ``options`` go to the
    profile as ``--opt key=<json>``. The peer listens on a port it picks itself and reports with
    ``READY <port>`` on stdout, so no probe connection ever shows up in its event log.
    """

    async def start() -> Peer:
        directory = _temp_dir(case, f"pynetdicom-{profile}")
        log_path = os.path.join(directory, "pacs_peer.log")
        events_path = os.path.join(directory, "events.jsonl")
        ready: Deferred[int] = Deferred()

        def on_line(line: str) -> None:
            if line.startswith("READY ") and not ready.called:
                ready.callback(int(line.split()[1]))

        args = ["-u", "-m", PACS_PEER, "--profile", profile, "--aet", aet, "--host", LOCALHOST]
        args += ["--port", "0", "--max-pdu", str(max_pdu), "--log", events_path]
        for key, value in options.items():
            args += ["--opt", f"{key}={json.dumps(value)}"]
        child = _spawn(
            case,
            "pacs_peer",
            sys.executable,
            args,
            _pacs_peer_env(),
            cwd=directory,
            log_path=log_path,
            on_stdout_line=on_line,
        )
        await _wait_until(
            lambda: defer.succeed(ready.called),
            f"pynetdicom peer {profile!r} ({aet})",
            SCP_START_TIMEOUT,
            child,
        )
        port = await ready
        return Peer(aet, LOCALHOST, port, child.pid, log_path, events_path=events_path, child=child)

    return Deferred.fromCoroutine(start())


def pynetdicom_echo(
    case: TestCase,
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "PYSCU",
    timeout: float = 30.0,
    max_pdu: int = 16384,
) -> Deferred[int]:
    """C-ECHO from a pynetdicom SCU (in a subprocess); fire with the DIMSE status.

    Fails with EchoFailed(outcome) if the association is rejected or aborted, the Verification
    context is refused, nothing answers within ``timeout`` (pynetdicom's ACSE/DIMSE timeouts),
    or the connection fails.
    """

    async def echo() -> int:
        args = ["-u", "-m", PACS_PEER, "--scu-echo", "--host", host, "--port", str(port)]
        args += ["--called-aet", called_aet, "--aet", calling_aet, "--timeout", str(timeout)]
        args += ["--max-pdu", str(max_pdu)]
        child = _spawn(case, "pacs_peer-scu", sys.executable, args, _pacs_peer_env(), keep_output=True)
        reactor = _reactor()
        # pynetdicom's own timeouts bound the run; this bounds the process on top of them.
        killer = reactor.callLater(3 * timeout + 10, child.stop, 2.0)
        try:
            returncode = await child.proto.when_ended()
        finally:
            if killer.active():
                killer.cancel()
        out = bytes(child.proto.stdout).decode("utf-8", "replace").strip().splitlines()
        try:
            result = json.loads(out[-1])
        except (IndexError, ValueError):
            raise PeerError(
                f"pynetdicom SCU exited with {returncode} without a result\n{child.describe_log()}"
            ) from None
        if result.get("outcome") == "accepted":
            return int(result["status"])
        raise EchoFailed(result.pop("outcome", "unknown"), result)

    return Deferred.fromCoroutine(echo())


# ---------------------------------------------------------------------------------------------
# Orthanc


@attrs.define(eq=False)
class Orthanc:
    """An Orthanc we started. ``url`` is its REST root (``url + "/dicom-web/"`` is DICOMweb)."""

    aet: str
    host: str
    dicom_port: int
    http_port: int
    url: str
    pid: int
    directory: str
    log_path: str
    config: dict[str, Any]
    #: A treq client on our own pool, closed at cleanup. Use it for any REST/DICOMweb call.
    #: The pool does not keep connections: Orthanc closes an idle keep-alive connection after
    #: a moment, and a POST (not retried by Twisted) that meets one fails with
    #: ResponseNeverReceived; seen under load in CI.
    http: HTTPClient = attrs.field(repr=False)
    _child: _Child = attrs.field(repr=False)
    startup_seconds: float = 0.0

    def stop(self, grace: float = STOP_GRACE) -> Deferred[int]:
        """SIGTERM by PID, wait for exit (SIGKILL after ``grace`` s); fire with the exit code.

        Idempotent. Orthanc 1.10 takes about 3.7 s to stop cleanly (its HTTP server ~2 s, its
        DICOM server ~1 s), whether or not HTTP connections are open.
        """
        return self._child.stop(grace)

    @property
    def running(self) -> bool:
        return not self._child.exited

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def upload(self, path_or_bytes: str | os.PathLike[str] | bytes) -> Deferred[dict[str, Any]]:
        """POST /instances; fire with Orthanc's JSON answer (ID, ParentStudy, Status, ...)."""
        if isinstance(path_or_bytes, bytes):
            body = path_or_bytes
        else:
            with open(path_or_bytes, "rb") as f:
                body = f.read()

        async def post() -> dict[str, Any]:
            response = await self.http.post(
                self.url + "/instances",
                data=body,
                headers={"Content-Type": "application/dicom"},
                timeout=30,
            )
            text = await response.text()
            if response.code != 200:
                raise PeerError(f"Orthanc POST /instances -> {response.code}: {text}")
            result: dict[str, Any] = json.loads(text)
            return result

        return Deferred.fromCoroutine(post())

    def get_json(self, path: str) -> Deferred[Any]:
        """GET ``url + path`` (e.g. ``/instances``); fire with the decoded JSON."""

        async def get() -> Any:
            response = await self.http.get(self.url + path, timeout=30)
            text = await response.text()
            if response.code != 200:
                raise PeerError(f"Orthanc GET {path} -> {response.code}: {text}")
            return json.loads(text)

        return Deferred.fromCoroutine(get())


def orthanc_config(
    aet: str,
    http_port: int,
    dicom_port: int,
    directory: str,
    modalities: Mapping[str, tuple[str, str, int]],
) -> dict[str, Any]:
    """The Orthanc 1.10 configuration the tests run with (docs/test-peers.md).

    Orthanc 1.10 has no bind-address option (its configuration keys have none, nor does its
    command line): both ports listen on every interface.  So that nothing but this host can
    use them, its HTTP server refuses remote clients (``RemoteAccessAllowed``: false), and
    the DICOM port, which must accept the many AE titles the tests call it with, serves only
    a throwaway store of generated data for the test's lifetime.  Clients here always
    connect to 127.0.0.1.
    """
    return {
        "Name": f"dicomrst-test-{aet}",
        "StorageDirectory": os.path.join(directory, "storage"),
        "IndexDirectory": os.path.join(directory, "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "UnknownSopClassAccepted": True,
        "SynchronousCMove": True,
        "SaveJobs": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {
            name: {"AET": m_aet, "Host": host, "Port": port}
            for name, (m_aet, host, port) in modalities.items()
        },
    }


def start_orthanc_worklists(case: TestCase, database: str, aet: str = "ORTHANCWL") -> Deferred[Orthanc]:
    """Orthanc with its ModalityWorklists plugin serving the ``.wl`` files in ``database``.

    ``DicomAlwaysAllowFindWorklist`` (1.10 refuses worklist C-FINDs from unknown AE titles
    otherwise) and ``DefaultEncoding: Utf8`` (answers are in that encoding: Latin-1 would
    lose names outside it) are set.
    """
    if not os.path.isfile(WORKLIST_PLUGIN):
        return defer.fail(
            PeerBinaryMissing(
                f"Orthanc worklist plugin {WORKLIST_PLUGIN!r} not found "
                "(it comes with the Debian package 'orthanc')"
            )
        )
    return start_orthanc(
        case,
        aet=aet,
        extra_config={
            "Plugins": [DICOMWEB_PLUGIN, WORKLIST_PLUGIN],
            "Worklists": {"Enable": True, "Database": database},
            "DicomAlwaysAllowFindWorklist": True,
            "DefaultEncoding": "Utf8",
        },
    )


def start_orthanc(
    case: TestCase,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Deferred[Orthanc]:
    """Start Orthanc (+ DICOMweb plugin) on free ports; fire once ``GET /system`` answers 200
    and its DICOM port accepts.

    ``modalities``: name -> (AET, host, port), the C-MOVE destinations Orthanc knows.
    ``extra_config`` is merged over the defaults of ``orthanc_config``.
    """

    async def start() -> Orthanc:
        executable = os.environ.get("DICOMRST_ORTHANC", ORTHANC_BINARY)
        if find_binary(executable) is None:
            raise PeerBinaryMissing(
                f"Orthanc binary {executable!r} not found (install the Debian package 'orthanc')"
            )
        if not os.path.isfile(DICOMWEB_PLUGIN):
            raise PeerBinaryMissing(
                f"Orthanc DICOMweb plugin {DICOMWEB_PLUGIN!r} not found "
                "(install the Debian package 'orthanc-dicomweb')"
            )
        directory = _temp_dir(case, "orthanc")
        http_port, dicom_port = free_ports(2)
        config = orthanc_config(aet, http_port, dicom_port, directory, modalities or {})
        config.update(extra_config or {})
        config_path = os.path.join(directory, "orthanc.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        log_path = os.path.join(directory, "orthanc.log")

        pool = HTTPConnectionPool(_reactor(), persistent=False)
        http = HTTPClient(Agent(_reactor(), pool=pool))
        child = _spawn(
            case, "Orthanc", executable, [config_path], _peer_env(), cwd=directory, log_path=log_path
        )
        # Registered after the process's cleanup, so it runs first (last-in first-out).
        case.addCleanup(pool.closeCachedConnections)
        url = f"http://{LOCALHOST}:{http_port}"

        async def http_ready() -> bool:
            response = await http.get(url + "/system", timeout=2)
            await treq.content(response)
            return response.code == 200

        async def dicom_ready() -> bool:
            await _tcp_connect_once(LOCALHOST, dicom_port, timeout=1.0)
            return True

        what = f"Orthanc {aet} (http {http_port}, dicom {dicom_port})"
        seconds = await _wait_until(http_ready, what, ORTHANC_START_TIMEOUT, child)
        seconds += await _wait_until(dicom_ready, what, ORTHANC_START_TIMEOUT, child)
        return Orthanc(
            aet=aet,
            host=LOCALHOST,
            dicom_port=dicom_port,
            http_port=http_port,
            url=url,
            pid=child.pid,
            directory=directory,
            log_path=log_path,
            config=config,
            http=http,
            child=child,
            startup_seconds=seconds,
        )

    return Deferred.fromCoroutine(start())


# ---------------------------------------------------------------------------------------------
# S3 (moto's server mode)

MOTO_START_TIMEOUT = 60.0
MOTO_REGION = "us-east-1"


@attrs.define(eq=False)
class Moto:
    """A moto S3 server we started (``python -m moto.server``), in-memory.

    Until ``enable_auth`` it accepts anything; after it, every request must carry a valid SigV4
    signature of ``access_key``/``secret_key`` (an IAM user allowed ``*``), and a wrong secret
    gets ``SignatureDoesNotMatch`` (docs/test-peers.md). ``boto3()`` is a client for setting up
    and checking data (blocking: call it in a thread).
    """

    host: str
    port: int
    url: str
    pid: int
    log_path: str
    _child: _Child = attrs.field(repr=False)
    access_key: str = "anything"
    secret_key: str = attrs.field(default="anything", repr=False)

    def stop(self, grace: float = STOP_GRACE) -> Deferred[int]:
        return self._child.stop(grace)

    @property
    def running(self) -> bool:
        return not self._child.exited

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def boto3(self, service: str = "s3") -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=MOTO_REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def enable_auth(self) -> Deferred[None]:
        """Create an IAM user allowed everything, keep its key, then turn signature checks on."""

        def blocking() -> None:
            import requests

            iam = self.boto3("iam")
            iam.create_user(UserName="dicomrst")
            key = iam.create_access_key(UserName="dicomrst")["AccessKey"]
            policy = iam.create_policy(
                PolicyName="everything",
                PolicyDocument=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                    }
                ),
            )
            iam.attach_user_policy(UserName="dicomrst", PolicyArn=policy["Policy"]["Arn"])
            self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
            # moto's own switch: every request from now on is authenticated.
            response = requests.post(self.url + "/moto-api/reset-auth", data=b"0", timeout=10)
            response.raise_for_status()

        from twisted.internet.threads import deferToThread

        return deferToThread(blocking)


def start_moto(case: TestCase, port: int | None = None) -> Deferred[Moto]:
    """moto's S3 server on 127.0.0.1 (a free port, or ``port``); fires once it answers."""

    async def start() -> Moto:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise PeerBinaryMissing("moto is not installed (pip install 'moto[server]')") from None
        directory = _temp_dir(case, "moto")
        log_path = os.path.join(directory, "moto.log")
        chosen = port or free_port()
        args = ["-m", "moto.server", "-H", LOCALHOST, "-p", str(chosen)]
        child = _spawn(case, "moto", sys.executable, args, dict(os.environ), cwd=directory, log_path=log_path)
        url = f"http://{LOCALHOST}:{chosen}"
        pool = HTTPConnectionPool(_reactor(), persistent=False)
        http = HTTPClient(Agent(_reactor(), pool=pool))

        async def ready() -> bool:
            response = await http.get(url + "/moto-api/", timeout=2)
            await treq.content(response)
            return response.code == 200

        await _wait_until(ready, f"moto on port {chosen}", MOTO_START_TIMEOUT, child)
        return Moto(LOCALHOST, chosen, url, child.pid, log_path, child=child)

    return Deferred.fromCoroutine(start())

"""The gateway as a real process, for integration tests: ``twistd -n dicomrst --config FILE``.

`start_gateway` writes a config (`gateway_config`, with `pacs_aet` entries), starts twistd with
the test's own Python (the checkout first on PYTHONPATH, so this works from a source tree and
from an installed venv alike), waits until ``GET /`` answers, and hands back a `Gateway` with a
treq client (`Gateway.get`, `Gateway.request` give a `Response`). At cleanup the gateway is
stopped by its PID with SIGTERM (`stop_gateway`) and must exit cleanly within `STOP_TIMEOUT`
(`assert_clean_exit`); its log (stdout and stderr) is kept in a temp dir and its tail is part of
every failure message. Also: `eventually` (poll a condition on the reactor), the AE titles the
gateway uses (`OUR_AET`, `LISTENER_AET`), `INTEGRATION_TIMEOUT`, and `c_store` (one C-STORE
into the gateway's listener from a pynetdicom SCU).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml
from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet import task, tcp
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS, IResponse

from tests.support import peers

reactor: Any = _global_reactor

INTEGRATION_TIMEOUT = 120
#: The checkout: the directory holding this ``tests`` package (and ``dicomrst``).
ROOT = str(Path(__file__).resolve().parents[2])
#: twistd's entry point, run by the test's own interpreter (``python -m twisted.scripts.twistd``
#: does not work: that module has no ``__main__`` guard).
TWISTD_MAIN = "from twisted.scripts.twistd import run; run()"
READY_TIMEOUT = 30.0
#: "Exits 0 within a few seconds" of SIGTERM, when nothing is in flight.
STOP_TIMEOUT = 10.0
#: Polling for log lines and peer events.
SETTLE = 10.0

OUR_AET = "DICOMRST"
LISTENER_AET = "GWSCP"


async def eventually(check: Callable[[], bool], timeout: float = SETTLE) -> bool:
    """Poll ``check`` on the reactor until it is true or ``timeout`` s pass; return its last value."""
    start = reactor.seconds()
    while not check():
        if reactor.seconds() - start >= timeout:
            return check()
        await task.deferLater(reactor, 0.02, lambda: None)
    return True


def gateway_env() -> dict[str, str]:
    """Our environment with the checkout prepended to PYTHONPATH."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + existing if existing else "")
    return env


def twistd_args(config_path: str, twistd_options: Sequence[str] = ()) -> list[str]:
    """``twistd_options``: twistd's own, before the subcommand (e.g. ``--logfile=gw.log``)."""
    return ["-c", TWISTD_MAIN, "-n", "--pidfile=", *twistd_options, "dicomrst", "--config", config_path]


def gateway_config(
    http_port: int,
    dimse_port: int,
    aets: Sequence[Mapping[str, Any]] = (),
    http: Mapping[str, Any] | None = None,
    listener: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    telemetry: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``listener``: more keys for the one ``server.dimse`` entry (e.g. ``uncompressed``);
    ``server``: more ``server`` sections (e.g. ``auth``); ``telemetry``: more of its keys."""
    return {
        "telemetry": {"level": "INFO", **(telemetry or {})},
        "server": {
            "aet": OUR_AET,
            "http": {"interface": peers.LOCALHOST, "port": http_port, **(http or {})},
            "dimse": [
                {"aet": LISTENER_AET, "interface": peers.LOCALHOST, "port": dimse_port, **(listener or {})}
            ],
            # Relative to the gateway's working directory, its own temp directory: gateways
            # of parallel test runs (trial -j) must not share the default one.
            "cache": {"path": "cache"},
            **(server or {}),
        },
        "aets": [dict(a) for a in aets],
    }


def pacs_aet(aet: str, host: str, port: int, timeout_ms: int = 3000) -> dict[str, Any]:
    return {"aet": aet, "host": host, "port": port, "pool": {"timeout": timeout_ms}}


def write_config(case: TestCase, config: Mapping[str, Any]) -> tuple[str, str]:
    """Write ``config`` as YAML into a fresh temp dir; return (dir, path)."""
    directory = peers._temp_dir(case, "gateway")
    path = os.path.join(directory, "dicomrst.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(dict(config), f, sort_keys=False)
    return directory, path


@attrs.define(eq=False)
class Response:
    code: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


async def failed_start(
    case: TestCase, config_path: str, directory: str, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Run ``twistd dicomrst`` on `config_path` in `directory` until it exits (stopped after
    30 s if it does not): its exit code and its output, for the tests of what stops it."""
    child = peers._spawn(
        case,
        sys.executable,
        sys.executable,
        twistd_args(config_path),
        dict(env) if env is not None else gateway_env(),
        cwd=directory,
        keep_output=True,
        grace=2.0,
    )
    killer = reactor.callLater(30, child.stop, 2.0)
    try:
        returncode = await child.proto.when_ended()
    finally:
        if killer.active():
            killer.cancel()
    return returncode, bytes(child.proto.stderr + child.proto.stdout).decode("utf-8", "replace")


async def read(response: IResponse) -> Response:
    body: bytes = await response.content()  # type: ignore[attr-defined]
    return Response(response.code, response.headers, body)


async def read_response(pending: Deferred[IResponse]) -> Response:
    return await read(await pending)


@attrs.define(eq=False)
class Gateway:
    """A running ``twistd dicomrst``; ``http`` is a treq client closed at cleanup."""

    url: str
    http_port: int
    dimse_port: int
    config_path: str
    log_path: str
    http: HTTPClient
    pool: HTTPConnectionPool
    child: Any  # peers._Child

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_tail(self) -> str:
        return f"--- last lines of {self.log_path} ---\n{peers._tail(self.log_path)}"

    def log_lines(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.log().splitlines() if regex.search(line)]

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        kwargs.setdefault("timeout", 30)
        return await read(await self.http.request(method, self.url + path, **kwargs))

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)


def start_gateway(
    case: TestCase,
    aets: Sequence[Mapping[str, Any]] = (),
    http: Mapping[str, Any] | None = None,
    ready_path: str = "/",
    dimse_port: int | None = None,
    listener: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ready_headers: Mapping[str, str] | None = None,
    server: Mapping[str, Any] | None = None,
    twistd_options: Sequence[str] = (),
    telemetry: Mapping[str, Any] | None = None,
    https: IPolicyForHTTPS | None = None,
    http_port: int | None = None,
) -> Deferred[Gateway]:
    """Start the gateway on free ports; fire once ``GET ready_path`` answers 200.

    ``dimse_port``: the listener's port when the caller chose it (a C-MOVE source must know it
    before the gateway starts); ``listener``: more keys for that ``server.dimse`` entry;
    ``env``: more environment variables for the process (``DICOM_RST_*`` overrides);
    ``ready_headers``: sent with the readiness request (credentials, for ``server.auth``);
    ``server``: more ``server`` sections of the config; ``twistd_options``: twistd's own
    options (a ``--logfile`` relative to the gateway's directory); ``telemetry``: more
    ``telemetry`` keys; ``https``: the gateway serves HTTPS, and our client makes its TLS
    connections with this policy (``tests.support.tls.ClientPolicy``); ``http_port``: the
    HTTP port when the caller chose it (for an ``endpoint`` string).

    At cleanup: close our HTTP connections, SIGTERM the gateway, and fail the test unless it
    exits 0 within `STOP_TIMEOUT`.
    """

    async def start() -> Gateway:
        free_http_port, free_dimse_port = peers.free_ports(2)
        port = free_dimse_port if dimse_port is None else dimse_port
        web_port = free_http_port if http_port is None else http_port
        directory, config_path = write_config(
            case, gateway_config(web_port, port, aets, http, listener, server, telemetry)
        )
        log_path = os.path.join(directory, "gateway.log")
        # argv[0] is the interpreter's path: a venv's python finds its venv through it.
        child = peers._spawn(
            case,
            sys.executable,
            sys.executable,
            twistd_args(config_path, twistd_options),
            {**gateway_env(), **(env or {})},
            cwd=directory,
            log_path=log_path,
            grace=STOP_TIMEOUT,
        )
        pool = HTTPConnectionPool(reactor, persistent=True)
        agent = Agent(reactor, pool=pool) if https is None else Agent(reactor, https, pool=pool)
        client = HTTPClient(agent)
        gateway = Gateway(
            url=f"{'http' if https is None else 'https'}://{peers.LOCALHOST}:{web_port}",
            http_port=web_port,
            dimse_port=port,
            config_path=config_path,
            log_path=log_path,
            http=client,
            pool=pool,
            child=child,
        )
        # Runs before _spawn's own (idempotent) stop: last registered, first run.
        case.addCleanup(stop_gateway, case, gateway)

        async def ready() -> bool:
            response = await gateway.get(ready_path, timeout=2, headers=dict(ready_headers or {}))
            return response.code == 200

        await peers._wait_until(ready, f"dicomrst on http port {web_port}", READY_TIMEOUT, child)
        return gateway

    return Deferred.fromCoroutine(start())


async def stop_gateway(case: TestCase, gateway: Gateway) -> None:
    await gateway.pool.closeCachedConnections()
    started = reactor.seconds()
    returncode = await gateway.child.stop(grace=STOP_TIMEOUT)
    elapsed = reactor.seconds() - started
    assert_clean_exit(case, gateway, returncode)
    case.assertLess(elapsed, STOP_TIMEOUT, f"gateway took {elapsed:.1f} s to stop\n{gateway.log_tail()}")
    # Our side of connections the gateway closed last may still be closing: trial would call
    # the reactor dirty.
    left = await eventually(lambda: not client_sockets_to(gateway.http_port))
    case.assertTrue(left, f"client connections left open: {client_sockets_to(gateway.http_port)}")


def client_sockets_to(port: int) -> list[Any]:
    """Our TCP client connections to 127.0.0.1:``port`` still in the reactor."""
    found = []
    for selectable in {*reactor.getReaders(), *reactor.getWriters()}:
        try:
            peer = selectable.getPeer()
        except Exception:  # listening ports, pipes
            continue
        if isinstance(selectable, tcp.Client) and getattr(peer, "port", None) == port:
            found.append(selectable)
    return found


def _message(line: str) -> str:
    """A log line's message: the line itself, or its ``message`` with ``telemetry.format: json``."""
    if line.startswith("{"):
        try:
            return str(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            pass
    return line


def assert_clean_exit(case: TestCase, gateway: Gateway, returncode: int) -> None:
    """The gateway stopped in order after SIGTERM.

    twistd ends a clean shutdown caused by a signal by re-raising that signal with the default
    handler (``twisted.application.app._exitWithSignal``), so the exit status is "killed by
    SIGTERM" (-15 here), not 0. systemd counts that as a clean exit. What tells a clean stop
    from a crash or a SIGKILL is the log: the main loop ended and twistd said goodbye.
    """
    case.assertIn(returncode, (0, -signal.SIGTERM), f"gateway exit status {returncode}\n{gateway.log_tail()}")
    lines = [_message(line) for line in gateway.log().splitlines()]
    ends = [i for i, line in enumerate(lines) if line.endswith("Main loop terminated.")]
    case.assertEqual(len(ends), 1, gateway.log_tail())
    case.assertTrue(any(line.endswith("Server Shut Down.") for line in lines[ends[0] :]), gateway.log_tail())
    case.assertFalse([line for line in lines if "Traceback" in line], gateway.log_tail())


def c_store(gw: Gateway, ds: Any) -> Deferred[int]:
    """One C-STORE as PYSCU from a pynetdicom SCU to the gateway's listener (in a thread);
    fires with the status."""
    from pynetdicom import AE
    from twisted.internet.threads import deferToThread

    def store() -> int:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(peers.LOCALHOST, gw.dimse_port, ae_title=LISTENER_AET)
        if not assoc.is_established:
            raise AssertionError("association not established")
        try:
            return int(assoc.send_c_store(ds).Status)
        finally:
            assoc.release()

    return deferToThread(store)

"""The gateway as a real process: ``twistd -n dicomrst --config FILE`` against real peers.

Each test writes a config, starts twistd with the test's own Python (the checkout first on
PYTHONPATH, so this works from a source tree and from an installed venv alike), waits until
``GET /`` answers, and talks HTTP to it with treq. At cleanup the gateway is stopped by its PID
with SIGTERM and must exit 0 within `STOP_TIMEOUT`; its log (stdout and stderr) is kept in a
temp dir and its tail is part of every failure message (`tests.support.gateway`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet import protocol
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

import dicomrst
from tests.support import peers
from tests.support.gateway import (
    INTEGRATION_TIMEOUT,
    LISTENER_AET,
    OUR_AET,
    STOP_TIMEOUT,
    Gateway,
    Response,
    assert_clean_exit,
    eventually,
    gateway_config,
    gateway_env,
    pacs_aet,
    read_response,
    start_gateway,
    twistd_args,
    write_config,
)

reactor: Any = _global_reactor

#: A config error must end the process at least this fast.
QUICK_EXIT = 10.0

#: twistd -n relays whatever is written to stderr after logging began as a log line on stdout:
#: ``2026-01-01T00:00:00+0000 [stderr#error] <text>``.
STDERR_RELAY = re.compile(r"^\S+ \[stderr#error\] ")


def assert_ok_json(case: TestCase, gateway: Gateway, response: Response, status: int = 200) -> Any:
    case.assertEqual(response.code, status, f"{response.body!r}\n{gateway.log_tail()}")
    case.assertEqual(response.header("Content-Type"), "application/json")
    return response.json()


# ---------------------------------------------------------------------------------------------


class GatewayTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_health_check_against_orthanc(self) -> None:
        orthanc = await peers.start_orthanc(self)
        aet = pacs_aet("ORTHANC", orthanc.host, orthanc.dicom_port)
        aet["pool"]["idle-timeout"] = 500  # the pooled association is released soon after
        gw = await start_gateway(self, [aet])

        response = await gw.get("/aets/ORTHANC")
        answer = assert_ok_json(self, gw, response)
        self.assertEqual(answer["aet"], "ORTHANC")
        self.assertEqual(answer["status"], "ok")
        self.assertIsInstance(answer["round_trip_ms"], float)
        self.assertGreater(answer["round_trip_ms"], 0)
        self.assertLess(answer["round_trip_ms"], 3000)
        self.assertEqual(response.header("Server"), f"dicomrst/{dicomrst.__version__}")
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        # A second health check reuses the pooled association: health checks go through the
        # pool like every request, so a burst of them cannot open associations unbounded.
        assert_ok_json(self, gw, await gw.get("/aets/ORTHANC"))

        # One access line per request, and one requestor association line (when the pool
        # releases it, idle) for both health checks.
        def logged() -> bool:
            return (
                len(gw.log_lines(r"GET /aets/ORTHANC 200 ")) >= 2
                and len(gw.log_lines(r"association requestor .*called=ORTHANC ")) >= 1
            )

        await eventually(logged)
        self.assertEqual(len(gw.log_lines(r"GET /aets/ORTHANC 200 ")), 2, gw.log_tail())
        associations = gw.log_lines(r"association requestor .*called=ORTHANC ")
        self.assertEqual(len(associations), 1, gw.log_tail())
        for line in associations:
            self.assertIn(f"calling={OUR_AET} ", line)
            self.assertIn("outcome=released", line)

    async def test_listing_unknown_aet_and_preflight(self) -> None:
        # Neither listing nor a 404 contacts a PACS, so nothing needs to listen there.
        gw = await start_gateway(
            self, [pacs_aet("ORTHANC", peers.LOCALHOST, 4242), pacs_aet("OTHER", peers.LOCALHOST, 4243)]
        )
        response = await gw.get("/aets")
        self.assertEqual(assert_ok_json(self, gw, response), ["ORTHANC", "OTHER"])
        self.assertEqual(response.header("Server"), f"dicomrst/{dicomrst.__version__}")
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")

        response = await gw.get("/aets/NOPE")
        error = assert_ok_json(self, gw, response, 404)
        self.assertIn("NOPE", error["error"])
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")

        response = await gw.request(
            "OPTIONS",
            "/aets",
            headers={
                "Origin": "http://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "Accept",
            },
        )
        self.assertEqual(response.code, 204, gw.log_tail())
        self.assertEqual(response.body, b"")
        methods = response.header("Access-Control-Allow-Methods") or ""
        self.assertIn("GET", [m.strip() for m in methods.split(",")], methods)
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        self.assertEqual(response.header("Access-Control-Allow-Headers"), "Accept")

        await eventually(lambda: bool(gw.log_lines(r"OPTIONS /aets 204 ")))
        self.assertEqual(len(gw.log_lines(r"GET /aets 200 ")), 1, gw.log_tail())
        self.assertEqual(len(gw.log_lines(r"GET /aets/NOPE 404 ")), 1, gw.log_tail())
        self.assertEqual(len(gw.log_lines(r"OPTIONS /aets 204 ")), 1, gw.log_tail())

    async def test_base_path(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "echo", aet="PYECHO")
        gw = await start_gateway(
            self,
            [pacs_aet("PYECHO", scp.host, scp.port)],
            http={"base-path": "/dicomweb"},
            ready_path="/dicomweb",
        )
        root = assert_ok_json(self, gw, await gw.get("/dicomweb/"))
        self.assertEqual(root, {"name": "dicomrst", "version": dicomrst.__version__})
        self.assertEqual(assert_ok_json(self, gw, await gw.get("/dicomweb/aets")), ["PYECHO"])
        answer = assert_ok_json(self, gw, await gw.get("/dicomweb/aets/PYECHO"))
        self.assertEqual(answer["status"], "ok")
        # Nothing answers outside the base path, and nothing there reaches the PACS.
        for path in ("/", "/aets", "/aets/PYECHO", "/dicomwebx/aets"):
            response = await gw.get(path)
            self.assertEqual(response.code, 404, f"{path}: {response.body!r}")
            self.assertIn("error", response.json())
        self.assertEqual(len(scp.events("requested")), 1, scp.events())

    async def test_orthanc_gone_is_502_and_gateway_still_serves(self) -> None:
        orthanc = await peers.start_orthanc(self)
        scp = await peers.start_pynetdicom_scp(self, "echo", aet="PYECHO")
        gw = await start_gateway(
            self,
            [pacs_aet("ORTHANC", orthanc.host, orthanc.dicom_port), pacs_aet("PYECHO", scp.host, scp.port)],
        )
        assert_ok_json(self, gw, await gw.get("/aets/ORTHANC"))

        await orthanc.stop()
        self.assertTrue(await peers.tcp_refused(orthanc.host, orthanc.dicom_port))
        error = assert_ok_json(self, gw, await gw.get("/aets/ORTHANC"), 502)
        self.assertIn("refused", error["error"].lower())
        self.assertIn("ORTHANC", error["error"])

        assert_ok_json(self, gw, await gw.get("/"))
        answer = assert_ok_json(self, gw, await gw.get("/aets/PYECHO"))
        self.assertEqual((answer["aet"], answer["status"]), ("PYECHO", "ok"))
        self.assertEqual(len(scp.events("c_echo")), 1)

    async def test_stalling_pacs_is_504_and_gateway_still_serves(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "stall", aet="PYSTALL")
        echo = await peers.start_pynetdicom_scp(self, "echo", aet="PYECHO")
        gw = await start_gateway(
            self,
            [pacs_aet("PYSTALL", scp.host, scp.port, 1000), pacs_aet("PYECHO", echo.host, echo.port)],
        )
        started = reactor.seconds()
        response = await gw.get("/aets/PYSTALL")
        elapsed = reactor.seconds() - started
        error = assert_ok_json(self, gw, response, 504)
        self.assertIn("error", error)
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5.0, gw.log_tail())
        self.assertEqual(len(scp.events("stalling")), 1)
        # The gateway gave up on the association: the peer sees it go.
        gone = await eventually(lambda: bool(scp.events("aborted") or scp.events("conn_close")))
        self.assertTrue(gone, scp.events())

        assert_ok_json(self, gw, await gw.get("/"))
        assert_ok_json(self, gw, await gw.get("/aets/PYECHO"))
        await eventually(lambda: bool(gw.log_lines(r"GET /aets/PYSTALL 504 ")))
        self.assertEqual(len(gw.log_lines(r"GET /aets/PYSTALL 504 ")), 1, gw.log_tail())

    async def test_dimse_listener_answers_echoscu(self) -> None:
        gw = await start_gateway(self)
        result = await peers.run_tool(
            self, ["echoscu", "-aet", "ECHOSCU", "-aec", LISTENER_AET, peers.LOCALHOST, str(gw.dimse_port)]
        )
        self.assertEqual(result.returncode, 0, result.describe() + "\n" + gw.log_tail())
        pattern = rf"association acceptor .*calling=ECHOSCU .*called={LISTENER_AET} .*outcome=released"
        await eventually(lambda: bool(gw.log_lines(pattern)))
        self.assertEqual(len(gw.log_lines(pattern)), 1, gw.log_tail())
        self.assertEqual(len(gw.log_lines(r"association acceptor ")), 1, gw.log_tail())

        # A wrong called AE title is rejected, and logged as such.
        result = await peers.run_tool(
            self, ["echoscu", "-aet", "ECHOSCU", "-aec", "WRONG", peers.LOCALHOST, str(gw.dimse_port)]
        )
        self.assertNotEqual(result.returncode, 0, result.describe())
        rejected = r"association acceptor .*called=WRONG .*outcome=rejected"
        self.assertTrue(await eventually(lambda: bool(gw.log_lines(rejected))), gw.log_tail())

    async def test_sigterm_lets_the_request_in_flight_finish(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "stall", aet="PYSTALL")
        gw = await start_gateway(self, [pacs_aet("PYSTALL", scp.host, scp.port, 3000)])
        # A connection of its own, not reused: the Agent retries an idempotent request whose
        # reused connection drops, which would hide a lost response behind a refused connect.
        fresh = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        inflight = Deferred.fromCoroutine(read_response(fresh.get(gw.url + "/aets/PYSTALL", timeout=30)))
        # The C-ECHO-RQ has reached the PACS: the request is truly waiting on it.
        self.assertTrue(await eventually(lambda: bool(scp.events("stalling"))), scp.events())

        signalled = reactor.seconds()
        exited = gw.child.stop(grace=STOP_TIMEOUT)  # SIGTERM
        # New connections are refused at once, while the old request is still waiting.
        refused = False
        while not refused and reactor.seconds() - signalled < 2.0:
            try:
                refused = await peers.tcp_refused(peers.LOCALHOST, gw.http_port)
            except ConnectError:
                # Reset: our connect sat in the backlog as the listening socket closed.
                refused = False
        self.assertTrue(refused, gw.log_tail())
        self.assertFalse(inflight.called, "the request finished before it could be drained")
        self.assertFalse(gw.child.exited, gw.log_tail())

        response = await inflight
        error = assert_ok_json(self, gw, response, 504)
        self.assertIn("C-ECHO", error["error"])
        returncode = await exited
        elapsed = reactor.seconds() - signalled
        assert_clean_exit(self, gw, returncode)
        self.assertLess(elapsed, 3.0 + STOP_TIMEOUT, gw.log_tail())
        self.assertEqual(len(gw.log_lines(r"GET /aets/PYSTALL 504 ")), 1, gw.log_tail())
        self.assertTrue(gw.log_lines("Received SIGTERM"), gw.log_tail())


# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Exit:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )

    def error_lines(self) -> list[str]:
        """Lines starting with ``dicomrst:``, on stderr or relayed by twistd's log to stdout."""
        lines = (self.stderr + "\n" + self.stdout).splitlines()
        return [s for s in (STDERR_RELAY.sub("", line) for line in lines) if s.startswith("dicomrst:")]


async def run_gateway_to_exit(case: TestCase, config_path: str, cwd: str, limit: float = 30.0) -> Exit:
    """Run the gateway expecting it to exit on its own; kill it after ``limit`` s."""
    child = peers._spawn(
        case,
        sys.executable,
        sys.executable,
        twistd_args(config_path),
        gateway_env(),
        cwd=cwd,
        keep_output=True,
        grace=2.0,
    )
    started = reactor.seconds()
    killer = reactor.callLater(limit, child.stop, 2.0)
    try:
        returncode = await child.proto.when_ended()
    finally:
        if killer.active():
            killer.cancel()
    return Exit(
        returncode,
        bytes(child.proto.stdout).decode("utf-8", "replace"),
        bytes(child.proto.stderr).decode("utf-8", "replace"),
        reactor.seconds() - started,
    )


class ConfigErrorTests(TestCase):
    """A bad config (or a port in use) stops the gateway at once with one line naming the key."""

    timeout = INTEGRATION_TIMEOUT

    def valid(self) -> dict[str, Any]:
        http_port, dimse_port = peers.free_ports(2)
        return gateway_config(http_port, dimse_port, [pacs_aet("PACS", peers.LOCALHOST, 4242)])

    async def assert_fails(self, config: Mapping[str, Any] | None, *needles: str) -> Exit:
        if config is None:
            directory = peers._temp_dir(self, "gateway")
            path = os.path.join(directory, "no-such-config.yaml")
            needles = (path, *needles)
        else:
            directory, path = write_config(self, config)
        result = await run_gateway_to_exit(self, path, directory)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertGreater(result.returncode, 0, f"killed, did not exit by itself\n{result.describe()}")
        self.assertLess(result.seconds, QUICK_EXIT, result.describe())
        self.assertNotIn("Traceback", result.stdout + result.stderr, result.describe())
        lines = result.error_lines()
        self.assertEqual(len(lines), 1, result.describe())
        for needle in needles:
            self.assertIn(needle, lines[0], result.describe())
        return result

    async def test_unknown_key(self) -> None:
        config = self.valid()
        config["server"]["http"]["prot"] = 8080
        result = await self.assert_fails(config, "server.http.prot", "unknown key")
        self.assertTrue(result.error_lines()[0].startswith("dicomrst: config error: server.http.prot"))

    async def test_port_not_a_number(self) -> None:
        config = self.valid()
        config["aets"][0]["port"] = "abc"
        await self.assert_fails(config, "aets[0].port", "abc")

    async def test_duplicate_aet(self) -> None:
        config = self.valid()
        config["aets"].append(pacs_aet("PACS", peers.LOCALHOST, 4243))
        await self.assert_fails(config, "aets[1].aet", "duplicate", "PACS")

    async def test_receiver_names_no_listener(self) -> None:
        config = self.valid()
        config["aets"][0]["wado-rs"] = {"receivers": ["NOBODY"]}
        await self.assert_fails(config, "aets[0].wado-rs.receivers[0]", "NOBODY")

    async def test_unresolvable_host(self) -> None:
        config = self.valid()
        config["aets"][0]["host"] = "no-such-host.invalid"
        await self.assert_fails(config, "aets[0].host", "no-such-host.invalid")

    async def test_bad_endpoint_string(self) -> None:
        config = self.valid()
        config["server"]["http"]["endpoint"] = "bogus:1"
        await self.assert_fails(config, "server.http.endpoint", "bogus:1")

    async def test_cache_directory_that_is_not_a_cache(self) -> None:
        """A mistyped ``server.cache.path`` naming someone's directory: the gateway would
        empty it at start, so it does not start (and the files stay)."""
        directory = peers._temp_dir(self, "not-a-cache")
        with open(os.path.join(directory, "notes.txt"), "w", encoding="utf-8") as f:
            f.write("mine")
        config = self.valid()
        config["server"]["cache"] = {"path": directory}
        await self.assert_fails(config, "config error: server.cache.path", "not a dicomrst cache")
        self.assertEqual(os.listdir(directory), ["notes.txt"])

    async def test_missing_config_file(self) -> None:
        await self.assert_fails(None, "cannot read config file")

    async def test_http_port_in_use(self) -> None:
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        taken = reactor.listenTCP(0, factory, interface=peers.LOCALHOST)
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        config = self.valid()
        config["server"]["http"]["port"] = port
        await self.assert_fails(config, f"{peers.LOCALHOST}:{port}", "in use")

"""``twistd dicomrst`` as an operator runs it: SIGHUP after logrotate moved the log file,
``--version``, JSON log lines with request IDs.  A real twistd process each (no PACS: a
LOCAL archive is enough)."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import dicomrst
from tests.support.auth import users_file
from tests.support.gateway import (
    INTEGRATION_TIMEOUT,
    TWISTD_MAIN,
    Gateway,
    eventually,
    gateway_env,
    start_gateway,
)

reactor: Any = _global_reactor

LOCAL = {"aet": "LOCAL", "backend": "LOCAL", "path": "archive"}


def _read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class HangupTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_sighup_reopens_the_log_file_and_rereads_the_users_file(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = users_file(os.path.join(directory, "users"), {"alice": "secret"})
        log_path = os.path.join(directory, "gw.log")
        gateway: Gateway = await start_gateway(
            self,
            [LOCAL],
            twistd_options=[f"--logfile={log_path}"],
            server={"auth": {"basic": {"users-file": users}, "anonymous": True}},
        )
        self.assertIn("users file", _read(log_path))
        os.rename(log_path, log_path + ".1")  # what logrotate does
        users_file(users, {"alice": "secret", "bob": "other"})
        os.kill(gateway.child.pid, signal.SIGHUP)
        self.assertTrue(
            await eventually(lambda: "SIGHUP:" in _read(log_path)),
            f"no SIGHUP line in the reopened log; the old one ends:\n{_read(log_path + '.1')[-2000:]}",
        )
        [line] = [x for x in _read(log_path).splitlines() if "SIGHUP:" in x]
        self.assertIn(f"SIGHUP: reopened log file {log_path}; re-read users file {users}: 2 user(s)", line)
        # Still serving, and logging to the new file.
        response = await gateway.get("/aets")
        self.assertEqual(response.code, 200)
        self.assertTrue(await eventually(lambda: "GET /aets 200" in _read(log_path)))
        self.assertFalse(gateway.child.exited)
        # stop_gateway (cleanup) checks that SIGTERM still ends it cleanly: in the new file.
        gateway.log_path = log_path


class VersionTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_version_prints_dicomrsts(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", TWISTD_MAIN, "dicomrst", "--version"], env=gateway_env(), reactor=reactor
        )
        self.assertEqual((out.decode().strip(), code), (f"dicomrst {dicomrst.__version__}", 0), err)


class JsonLogTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_every_line_is_json_and_requests_name_their_id(self) -> None:
        gateway = await start_gateway(self, [LOCAL], telemetry={"format": "json"})
        response = await gateway.get("/aets/LOCAL", headers={"X-Request-ID": "op-check-1"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("X-Request-ID"), "op-check-1")
        self.assertTrue(await eventually(lambda: "op-check-1" in gateway.log()))
        lines = [json.loads(line) for line in gateway.log().splitlines() if line.strip()]
        for line in lines:
            self.assertEqual(list(line)[:4], ["time", "level", "namespace", "message"])
        [http] = [x for x in lines if x.get("path") == "/aets/LOCAL"]
        self.assertEqual((http["status"], http["request_id"]), (200, "op-check-1"))

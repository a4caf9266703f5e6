"""``twistd dicomrst`` as an operator runs it: SIGHUP after logrotate moved the log file,
``--version``, JSON log lines with request IDs.  A real twistd process each (no PACS: a
LOCAL archive is enough)."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import dicomrst
from tests.support import peers
from tests.support.auth import users_file
from tests.support.gateway import (
    INTEGRATION_TIMEOUT,
    TWISTD_MAIN,
    Gateway,
    eventually,
    gateway_env,
    start_gateway,
)
from tests.support.s3 import AET, BUCKET, s3_aet, upload
from tests.support.stow import multipart_body, part10_bytes

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


class S3LinesTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def stow(self, level: str) -> Gateway:
        moto = await peers.start_moto(self)
        await upload(moto, BUCKET, {})
        gateway = await start_gateway(self, [s3_aet(moto)], telemetry={"level": level})
        study = generate_uid()
        part = part10_bytes(study=study)
        body = multipart_body([([("Content-Type", "application/dicom")], part)], b"b0und")
        response = await gateway.request(
            "POST",
            f"/aets/{AET}/studies",
            data=body,
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0und',
                "X-Request-ID": "stow-s3-7",
            },
        )
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertTrue(await eventually(lambda: bool(gateway.log_lines("POST /aets/.* 200 "))))
        return gateway

    async def test_s3_lines_carry_the_request_id_and_factories_stay_below_info(self) -> None:
        gateway = await self.stow("INFO")
        stored = gateway.log_lines(r"stored .*\.dcm")
        self.assertEqual(len(stored), 1, gateway.log_tail())
        self.assertTrue(stored[0].endswith(" request_id=stow-s3-7"), stored[0])
        self.assertEqual(gateway.log_lines("Starting factory|Stopping factory"), [], gateway.log_tail())

    async def test_factory_lines_show_at_debug(self) -> None:
        gateway = await self.stow("DEBUG")
        factories = gateway.log_lines(r"_HTTP11ClientFactory#debug\] Starting factory _HTTP11ClientFactory")
        self.assertTrue(factories, gateway.log_tail())

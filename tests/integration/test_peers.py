"""The peer harness (tests/support/peers.py) against real peers, without any dicomrst code."""

from __future__ import annotations

import os
import signal
import sys

from pydicom.data import get_testdata_file
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support import peers

INTEGRATION_TIMEOUT = 120


def _environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().split(b"\0")


class FreePortTests(TestCase):
    def test_free_ports_are_distinct_and_bindable(self) -> None:
        ports = peers.free_ports(3)
        self.assertEqual(len(set(ports)), 3)
        for port in ports:
            self.assertTrue(1024 <= port <= 65535, port)

    def test_dcmtk_binary_is_not_a_pynetdicom_script(self) -> None:
        path = peers.dcmtk_binary("echoscu")
        with open(path, "rb") as f:
            self.assertNotEqual(f.read(2), b"#!", path)

    async def test_missing_tool_fails_the_deferred(self) -> None:
        with self.assertRaises(peers.PeerBinaryMissing) as caught:
            await peers.run_tool(self, ["no-such-dcmtk-tool-xyz", "--version"])
        self.assertIn("no-such-dcmtk-tool-xyz", str(caught.exception))
        # A missing peer is a test failure, never a skip or an error.
        self.assertIsInstance(caught.exception, self.failureException)


class OrthancTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_starts_and_answers_system(self) -> None:
        orthanc = await peers.start_orthanc(self, aet="ORTHANCT")
        system = await orthanc.get_json("/system")
        self.assertEqual(system["DicomAet"], "ORTHANCT", orthanc.log_tail())
        self.assertEqual(system["DicomPort"], orthanc.dicom_port)
        self.assertEqual(system["HttpPort"], orthanc.http_port)
        plugins = await orthanc.get_json("/plugins")
        self.assertIn("dicom-web", plugins)
        self.assertIn(b"TCP_NODELAY=1", _environ(orthanc.pid))

    async def test_dcmtk_echoscu_against_orthanc(self) -> None:
        orthanc = await peers.start_orthanc(self)
        result = await peers.run_tool(
            self, ["echoscu", "-aet", "ECHOSCU", "-aec", orthanc.aet, orthanc.host, str(orthanc.dicom_port)]
        )
        self.assertEqual(result.returncode, 0, result.describe() + "\n" + orthanc.log_tail())

    async def test_upload_then_list_instances(self) -> None:
        orthanc = await peers.start_orthanc(self)
        answer = await orthanc.upload(get_testdata_file("CT_small.dcm"))
        self.assertEqual(answer["Status"], "Success", answer)
        instances = await orthanc.get_json("/instances")
        self.assertEqual(instances, [answer["ID"]])

    async def test_stop_is_idempotent_and_frees_the_ports(self) -> None:
        orthanc = await peers.start_orthanc(self, modalities={"dst": ("DSTAE", "127.0.0.1", 11112)})
        self.assertEqual(
            orthanc.config["DicomModalities"], {"dst": {"AET": "DSTAE", "Host": "127.0.0.1", "Port": 11112}}
        )
        await orthanc.stop()
        self.assertFalse(orthanc.running)
        await orthanc.stop()
        self.assertTrue(await peers.tcp_refused(orthanc.host, orthanc.dicom_port))
        self.assertTrue(await peers.tcp_refused(orthanc.host, orthanc.http_port))


class StorescpTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_echoscu_against_storescp(self) -> None:
        scp = await peers.start_storescp(self, aet="STORE1")
        self.assertIn(b"TCP_NODELAY=1", _environ(scp.pid))
        result = await peers.run_tool(
            self, ["echoscu", "-aet", "ECHOSCU", "-aec", scp.aet, scp.host, str(scp.port)]
        )
        self.assertEqual(result.returncode, 0, result.describe() + "\n" + scp.log_tail())

    async def test_storescu_file_arrives(self) -> None:
        scp = await peers.start_storescp(self, extra_args=("+xa",))
        result = await peers.run_tool(
            self,
            ["storescu", "-aec", scp.aet, scp.host, str(scp.port), get_testdata_file("CT_small.dcm")],
        )
        self.assertEqual(result.returncode, 0, result.describe() + "\n" + scp.log_tail())
        assert scp.output_dir is not None
        self.assertEqual(len(os.listdir(scp.output_dir)), 1)

    async def test_stopped_by_pid_is_gone(self) -> None:
        scp = await peers.start_storescp(self)
        self.assertFalse(await peers.tcp_refused(scp.host, scp.port))
        returncode = await scp.stop()
        self.assertFalse(scp.running)
        self.assertNotEqual(returncode, None)
        with self.assertRaises(ProcessLookupError):
            os.kill(scp.pid, 0)
        self.assertTrue(await peers.tcp_refused(scp.host, scp.port))


class PynetdicomPeerTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def test_echo_profile_answers_success(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "echo", aet="PYECHO", max_pdu=8192)
        status = await peers.pynetdicom_echo(self, scp.host, scp.port, "PYECHO", calling_aet="CALLER")
        self.assertEqual(status, 0x0000)
        (requested,) = scp.events("requested")
        self.assertEqual((requested["calling_aet"], requested["called_aet"]), ("CALLER", "PYECHO"))
        (accepted,) = scp.events("accepted")
        self.assertEqual(accepted["our_max_pdu"], 8192)
        self.assertEqual(accepted["peer_max_pdu"], 16384)
        self.assertEqual(len(scp.events("c_echo")), 1)
        self.assertTrue(all(e["pdu_length"] <= 8192 for e in scp.events("pdata_recv")))
        self.assertEqual(len(scp.events("released")), 1)

    async def test_reject_profile(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "reject")
        with self.assertRaises(peers.EchoFailed) as caught:
            await peers.pynetdicom_echo(self, scp.host, scp.port, scp.aet)
        self.assertEqual(caught.exception.outcome, "rejected")
        self.assertEqual(caught.exception.details, {"result": 1, "source": 1, "diagnostic": 7})
        self.assertEqual(len(scp.events("rejected")), 1)

    async def test_abort_profile(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "abort")
        with self.assertRaises(peers.EchoFailed) as caught:
            await peers.pynetdicom_echo(self, scp.host, scp.port, scp.aet)
        self.assertEqual(caught.exception.outcome, "aborted")

    async def test_no_echo_profile(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "no-echo")
        with self.assertRaises(peers.EchoFailed) as caught:
            await peers.pynetdicom_echo(self, scp.host, scp.port, scp.aet)
        self.assertEqual(caught.exception.outcome, "no-context")
        (accepted,) = scp.events("accepted")
        self.assertEqual(accepted["accepted_contexts"], [])

    async def test_stall_profile_then_stop(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "stall")
        with self.assertRaises(peers.EchoFailed) as caught:
            await peers.pynetdicom_echo(self, scp.host, scp.port, scp.aet, timeout=2)
        self.assertEqual(caught.exception.outcome, "timeout")
        self.assertEqual(len(scp.events("stalling")), 1)
        # A handler blocked forever must not keep the process alive past SIGTERM.
        await scp.stop()
        self.assertTrue(await peers.tcp_refused(scp.host, scp.port))

    async def test_dcmtk_echoscu_against_pynetdicom(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "echo", max_pdu=4096)
        result = await peers.run_tool(self, ["echoscu", "-aec", scp.aet, scp.host, str(scp.port)])
        self.assertEqual(result.returncode, 0, result.describe() + "\n" + scp.log_tail())
        (requested,) = scp.events("requested")
        self.assertEqual(requested["calling_aet"], "ECHOSCU")

    async def test_connect_failed(self) -> None:
        port = peers.free_port()
        with self.assertRaises(peers.EchoFailed) as caught:
            await peers.pynetdicom_echo(self, "127.0.0.1", port, "NOBODY", timeout=5)
        self.assertEqual(caught.exception.outcome, "connect-failed")


class HarnessFailureTests(TestCase):
    """Missing or broken peers fail the test with a message that says why."""

    timeout = INTEGRATION_TIMEOUT

    async def test_missing_orthanc_binary(self) -> None:
        self.patch(peers, "ORTHANC_BINARY", "/nonexistent/Orthanc")
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "DICOMRST_ORTHANC"})
        with self.assertRaises(peers.PeerBinaryMissing) as caught:
            await peers.start_orthanc(self)
        self.assertIn("/nonexistent/Orthanc", str(caught.exception))

    async def test_missing_dicomweb_plugin(self) -> None:
        self.patch(peers, "DICOMWEB_PLUGIN", "/nonexistent/libOrthancDicomWeb.so")
        with self.assertRaises(peers.PeerBinaryMissing) as caught:
            await peers.start_orthanc(self)
        self.assertIn("orthanc-dicomweb", str(caught.exception))

    async def test_orthanc_that_exits_reports_its_log(self) -> None:
        from twisted.internet import reactor

        taken = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(taken.stopListening)
        with self.assertRaises(peers.PeerError) as caught:
            await peers.start_orthanc(self, extra_config={"DicomPort": taken.getHost().port})
        message = str(caught.exception)
        self.assertIn("exited with", message)
        self.assertIn("already in use", message)

    async def test_unknown_pynetdicom_profile_reports_stderr(self) -> None:
        with self.assertRaises(peers.PeerError) as caught:
            await peers.start_pynetdicom_scp(self, "no-such-profile")
        self.assertIn("unknown profile 'no-such-profile'", str(caught.exception))

    async def test_tool_timeout_kills_it(self) -> None:
        with self.assertRaises(peers.ToolTimeout):
            await peers.run_tool(self, ["storescp", str(peers.free_port())], timeout=0.5)

    async def test_stop_escalates_to_sigkill(self) -> None:
        ignoring: Deferred[None] = Deferred()
        child = peers._spawn(
            self,
            "python",
            sys.executable,
            ["-u", "-c", _IGNORE_SIGTERM],
            dict(os.environ),
            keep_output=True,
            on_stdout_line=lambda line: ignoring.called or ignoring.callback(None),
        )
        await ignoring
        returncode = await child.stop(grace=0.5)
        self.assertEqual(returncode, -signal.SIGKILL)


_IGNORE_SIGTERM = """
import signal, sys, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
threading.Event().wait()
"""

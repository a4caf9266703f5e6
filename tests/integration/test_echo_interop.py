"""Our Upper Layer and C-ECHO against real DICOM stacks, on the real reactor over loopback.

Our SCP (``DimseServerFactory``) is called by DCMTK's ``echoscu`` and by pynetdicom; our SCU
(``echo_scu``) calls DCMTK's ``storescp``, Orthanc and the scriptable pynetdicom PACS of
``tests/support/pacs/`` in each of its profiles. Every socket we open is waited on until it is
closed, so trial sees a clean reactor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IAddress, IConnector, IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from dicomrst.dimse.echo import echo_scu
from dicomrst.dimse.server import DimseServerFactory
from dicomrst.ul import pdu
from dicomrst.ul.errors import (
    AssociationAborted,
    AssociationRejected,
    AssociationTimeout,
    ConnectFailed,
    NoAcceptableContext,
)
from dicomrst.ul.negotiation import DEFAULT_MAX_PDU
from dicomrst.ul.protocol import ULProtocol
from dicomrst.web.errors import http_status
from tests.support import peers

INTEGRATION_TIMEOUT = 120
OUR_AET = "DICOMRST"
#: The timeout our SCU uses against peers that answer (seconds).
ECHO_TIMEOUT = 10.0
#: Bound on waiting for a socket to close or a peer to log an event.
SETTLE = 10.0

reactor: Any = _global_reactor


async def eventually(check: Callable[[], bool], timeout: float = SETTLE) -> bool:
    """Poll ``check`` on the reactor until it is true or ``timeout`` s pass; return its last value."""
    start = reactor.seconds()
    while not check():
        if reactor.seconds() - start >= timeout:
            return check()
        await task.deferLater(reactor, 0.02, lambda: None)
    return True


# ---------------------------------------------------------------------------------------------
# Our SCP


class RecordingServerFactory(DimseServerFactory):
    """A `DimseServerFactory` that remembers every association it served."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[ULProtocol] = []

    def buildProtocol(self, addr: IAddress) -> ULProtocol:
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


async def _stop_scp(port: IListeningPort, factory: RecordingServerFactory) -> None:
    await port.stopListening()
    factory.abort_all()
    # Acceptors in Sta13 wait (ARTIM) for the peer to close; the peer is a process that has
    # exited or is exiting, so this is quick. Bounded all the same.
    closing = DeferredList([p.whenClosed for p in factory.built], consumeErrors=True)
    closing.addTimeout(SETTLE, reactor)
    await closing


def start_our_scp(case: TestCase, aet: str = OUR_AET) -> tuple[int, RecordingServerFactory]:
    """Listen on a free 127.0.0.1 port; stop and wait for every association at cleanup."""
    factory = RecordingServerFactory(aet, reactor)
    port = reactor.listenTCP(0, factory, interface=peers.LOCALHOST)
    case.addCleanup(_stop_scp, port, factory)
    return port.getHost().port, factory


class OurScpTests(TestCase):
    """DCMTK and pynetdicom SCUs against `DimseServerFactory`."""

    timeout = INTEGRATION_TIMEOUT

    async def closed(self, factory: RecordingServerFactory, count: int = 1) -> list[ULProtocol]:
        """The `count` associations served so far, once their connections are all closed."""
        def settled() -> bool:
            return len(factory.built) >= count and all(p.whenClosed.called for p in factory.built)

        await eventually(settled)
        self.assertEqual(len(factory.built), count, [p.outcome for p in factory.built])
        self.assertTrue(all(p.whenClosed.called for p in factory.built), [p.state for p in factory.built])
        return factory.built

    async def test_dcmtk_echoscu(self) -> None:
        port, factory = start_our_scp(self)
        result = await peers.run_tool(
            self, ["echoscu", "-v", "-aet", "ECHOSCU", "-aec", OUR_AET, peers.LOCALHOST, str(port)]
        )
        self.assertEqual(result.returncode, 0, result.describe())
        (association,) = await self.closed(factory)
        self.assertEqual(association.outcome, "released")
        self.assertEqual((association.calling_aet, association.called_aet), ("ECHOSCU", OUR_AET))
        # echoscu's default Maximum Length Received.
        self.assertEqual(association.peer_max_pdu, 16384)

    async def test_dcmtk_echoscu_wrong_called_aet_is_rejected(self) -> None:
        port, factory = start_our_scp(self)
        result = await peers.run_tool(
            self, ["echoscu", "-aet", "ECHOSCU", "-aec", "WRONG", peers.LOCALHOST, str(port)]
        )
        self.assertNotEqual(result.returncode, 0, result.describe())
        output = result.stdout + result.stderr
        self.assertIn("Association Rejected", output, result.describe())
        self.assertIn("Called AE Title Not Recognized", output, result.describe())
        (association,) = await self.closed(factory)
        self.assertIn("called AE title not recognized", association.outcome)

    async def test_dcmtk_echoscu_small_max_pdu(self) -> None:
        """4096 is the smallest ``--max-pdu`` echoscu accepts (its range is 4096..131072)."""
        port, factory = start_our_scp(self)
        result = await peers.run_tool(
            self, ["echoscu", "-v", "--max-pdu", "4096", "-aec", OUR_AET, peers.LOCALHOST, str(port)]
        )
        self.assertEqual(result.returncode, 0, result.describe())
        # echoscu reports the PDV size we allow it: our own maximum minus the PDV header.
        self.assertIn(f"Max Send PDV: {DEFAULT_MAX_PDU - 12}", result.stderr + result.stdout)
        (association,) = await self.closed(factory)
        self.assertEqual(association.outcome, "released")
        self.assertEqual(association.peer_max_pdu, 4096)

    async def test_pynetdicom_echo(self) -> None:
        port, factory = start_our_scp(self)
        status = await peers.pynetdicom_echo(self, peers.LOCALHOST, port, OUR_AET, calling_aet="PYSCU")
        self.assertEqual(status, 0x0000)
        (association,) = await self.closed(factory)
        self.assertEqual(association.outcome, "released")
        self.assertEqual(association.calling_aet, "PYSCU")

    async def test_pynetdicom_echo_small_max_pdu(self) -> None:
        """A requestor with a 64-byte maximum gets our C-ECHO-RSP command set in fragments."""
        port, factory = start_our_scp(self)
        status = await peers.pynetdicom_echo(self, peers.LOCALHOST, port, OUR_AET, max_pdu=64)
        self.assertEqual(status, 0x0000)
        (association,) = await self.closed(factory)
        self.assertEqual(association.peer_max_pdu, 64)
        self.assertEqual(association.outcome, "released")

    async def test_pynetdicom_wrong_called_aet_is_rejected(self) -> None:
        """pynetdicom sees our A-ASSOCIATE-RJ: rejected-permanent, service user, called AE title.

        pynetdicom 3.0.4 has a requestor race with a peer that rejects this fast: its main thread
        checks ``socket._is_connected`` (acse._negotiate_as_requestor) after its DUL thread may
        already have received the A-ASSOCIATE-RJ and closed the socket (AE-4), and then calls
        ``abort()``: the outcome reads "aborted" although the RJ arrived (seen in 12 of 150 runs
        on a loaded machine, each logged as rejected on our side). Only in that case, with our
        side having sent the rejection for that very association, is the call repeated.
        """
        port, factory = start_our_scp(self)
        for attempt in range(1, 4):
            with self.assertRaises(peers.EchoFailed) as caught:
                await peers.pynetdicom_echo(self, peers.LOCALHOST, port, "WRONG")
            association = (await self.closed(factory, attempt))[-1]
            self.assertIn("called AE title not recognized", association.outcome)
            if caught.exception.outcome != "aborted":
                break
        self.assertEqual(caught.exception.outcome, "rejected", f"after {attempt} attempts")
        # rejected-permanent, service-user, called AE title not recognised
        self.assertEqual(caught.exception.details, {"result": 1, "source": 1, "diagnostic": 7})


# ---------------------------------------------------------------------------------------------
# Our SCU


class RecordingReactor:
    """The global reactor, but every ``connectTCP`` connector is remembered.

    `echo_scu` fires once the association is released, a moment before its TCP connection is
    closed; the connectors let a test wait for that close.
    """

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self.connectors: list[IConnector] = []

    def connectTCP(self, *args: Any, **kwargs: Any) -> IConnector:
        connector = self._wrapped.connectTCP(*args, **kwargs)
        self.connectors.append(connector)
        return connector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def all_disconnected(self) -> bool:
        return all(getattr(c, "state", "disconnected") == "disconnected" for c in self.connectors)


class _Silent(Protocol):
    """Accepts the connection, reads everything, answers nothing."""

    def dataReceived(self, data: bytes) -> None:
        pass


class OurScuTests(TestCase):
    """`echo_scu` against DCMTK, Orthanc and the pynetdicom PACS profiles."""

    timeout = INTEGRATION_TIMEOUT

    def setUp(self) -> None:
        self.reactor = RecordingReactor(reactor)
        self.addCleanup(self.connections_closed)

    async def connections_closed(self) -> None:
        await eventually(self.reactor.all_disconnected)
        states = [getattr(c, "state", "?") for c in self.reactor.connectors]
        self.assertTrue(self.reactor.all_disconnected(), f"our connections left open: {states}")

    async def echo(self, peer_host: str, peer_port: int, called: str, timeout: float = ECHO_TIMEOUT) -> float:
        result: float = await echo_scu(self.reactor, peer_host, peer_port, OUR_AET, called, timeout)
        return result

    def assert_round_trip(self, ms: object, timeout: float = ECHO_TIMEOUT) -> None:
        self.assertIsInstance(ms, float)
        assert isinstance(ms, float)
        self.assertGreater(ms, 0.0)
        self.assertLess(ms, timeout * 1000)

    async def test_dcmtk_storescp(self) -> None:
        scp = await peers.start_storescp(self, aet="STORESCP", extra_args=("-v",))
        ms = await self.echo(scp.host, scp.port, scp.aet)
        self.assert_round_trip(ms)
        await self.connections_closed()
        # storescp -v says "Association Release" once our A-RELEASE-RQ came in.
        released = await eventually(lambda: "I: Association Release" in scp.log_tail())
        self.assertTrue(released, scp.log_tail())
        self.assertIn("Received Echo Request", scp.log_tail())

    async def test_orthanc(self) -> None:
        orthanc = await peers.start_orthanc(self)
        ms = await self.echo(orthanc.host, orthanc.dicom_port, orthanc.aet)
        self.assert_round_trip(ms)

    async def test_pynetdicom_echo_profile(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "echo", aet="PYECHO")
        ms = await self.echo(scp.host, scp.port, "PYECHO")
        self.assert_round_trip(ms)
        self.assertTrue(await eventually(lambda: len(scp.events("released")) == 1), scp.events())
        (requested,) = scp.events("requested")
        self.assertEqual((requested["calling_aet"], requested["called_aet"]), (OUR_AET, "PYECHO"))
        self.assertEqual(len(scp.events("c_echo")), 1)

    async def test_pynetdicom_scp_smaller_max_pdu(self) -> None:
        """With a 64-byte limit our 70-odd byte C-ECHO-RQ command set must go in two PDUs.

        pynetdicom accepts any non-negative maximum, so 64 is used as is: small enough to force
        fragmentation, large enough for one PDV header plus an even-length fragment.
        """
        limit = 64
        scp = await peers.start_pynetdicom_scp(self, "echo", aet="PYSMALL", max_pdu=limit)
        ms = await self.echo(scp.host, scp.port, "PYSMALL")
        self.assert_round_trip(ms)
        (requested,) = scp.events("requested")
        self.assertEqual(requested["peer_max_pdu"], DEFAULT_MAX_PDU)
        self.assertEqual(DEFAULT_MAX_PDU, 131072)
        (accepted,) = scp.events("accepted")
        self.assertEqual(accepted["our_max_pdu"], limit)
        received = scp.events("pdata_recv")
        self.assertGreaterEqual(len(received), 2, received)
        for event in received:
            self.assertLessEqual(event["pdu_length"], limit, received)
            # A PDV item is 4 length bytes plus what they count; fragments are even (PS3.8 E.1).
            self.assertEqual(event["pdu_length"], sum(4 + n for n in event["pdv_lengths"]), event)
            for n in event["pdv_lengths"]:
                self.assertEqual((n - 2) % 2, 0, event)
        self.assertEqual(len(scp.events("c_echo")), 1)
        self.assertTrue(await eventually(lambda: len(scp.events("released")) == 1), scp.events())

    async def test_rejected(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "reject", aet="PYREJECT")
        with self.assertRaises(AssociationRejected) as caught:
            await self.echo(scp.host, scp.port, "PYREJECT")
        error = caught.exception
        self.assertEqual((error.result, error.source, error.reason), (1, 1, 7))
        self.assertIn("called AE title not recognized", str(error))
        self.assertEqual(http_status(error), 502)
        self.assertEqual(len(scp.events("rejected")), 1)

    async def test_aborted(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "abort", aet="PYABORT")
        with self.assertRaises(AssociationAborted) as caught:
            await self.echo(scp.host, scp.port, "PYABORT")
        error = caught.exception
        self.assertIn("aborted by peer", str(error))
        # pynetdicom's Association.abort() is an A-ABORT with source 0 (service user).
        self.assertEqual(error.source, pdu.SOURCE_SERVICE_USER)
        self.assertEqual(http_status(error), 502)
        self.assertEqual(len(scp.events("abort_sent")), 1)

    async def test_stall_times_out_and_aborts(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "stall", aet="PYSTALL")
        timeout = 1.5
        started = reactor.seconds()
        with self.assertRaises(AssociationTimeout) as caught:
            await self.echo(scp.host, scp.port, "PYSTALL", timeout=timeout)
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, timeout - 0.05)
        self.assertLess(elapsed, timeout + 3.0)
        self.assertEqual(http_status(caught.exception), 504)
        self.assertIn("C-ECHO", str(caught.exception))
        self.assertEqual(len(scp.events("stalling")), 1)
        # We abort and drop the connection at once: nothing of ours outlives the timeout.
        await self.connections_closed()
        ended = await eventually(lambda: bool(scp.events("aborted") or scp.events("conn_close")))
        self.assertTrue(ended, scp.events())

    async def test_silent_listener_times_out_during_association(self) -> None:
        """A TCP peer that never answers our A-ASSOCIATE-RQ: AssociationTimeout, nothing logged."""
        silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface=peers.LOCALHOST)
        self.addCleanup(silent.stopListening)
        started = reactor.seconds()
        with self.assertRaises(AssociationTimeout) as caught:
            await self.echo(peers.LOCALHOST, silent.getHost().port, "SILENT", timeout=1.0)
        self.assertLess(reactor.seconds() - started, 4.0)
        self.assertIn("association request", str(caught.exception))
        await self.connections_closed()
        # trial fails the test for any error logged on the way (an unhandled one included).

    async def test_cancelled_during_association_aborts_it(self) -> None:
        """A caller that gives up (an HTTP client gone) while we wait for the A-ASSOCIATE-AC."""
        peer_lost: Deferred[None] = Deferred()

        class Watched(_Silent):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                peer_lost.callback(None)

        silent = reactor.listenTCP(0, Factory.forProtocol(Watched), interface=peers.LOCALHOST)
        self.addCleanup(silent.stopListening)
        echo = echo_scu(self.reactor, peers.LOCALHOST, silent.getHost().port, OUR_AET, "SILENT", 10.0)
        await task.deferLater(reactor, 0.3, lambda: None)
        echo.cancel()
        with self.assertRaises(CancelledError):
            await echo
        # We aborted and closed at once, long before the 10 s ARTIM would have.
        closing = peer_lost.addTimeout(2.0, reactor)
        await closing
        await self.connections_closed()

    async def test_no_verification_context(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "no-echo", aet="PYNOECHO")
        with self.assertRaises(NoAcceptableContext) as caught:
            await self.echo(scp.host, scp.port, "PYNOECHO")
        self.assertIn("abstract syntax not supported", str(caught.exception))
        (accepted,) = scp.events("accepted")
        self.assertEqual(accepted["accepted_contexts"], [])
        ended = await eventually(lambda: bool(scp.events("aborted") or scp.events("conn_close")))
        self.assertTrue(ended, scp.events())

    async def test_nothing_listening(self) -> None:
        port = peers.free_port()
        with self.assertRaises(ConnectFailed) as caught:
            await self.echo(peers.LOCALHOST, port, "NOBODY", timeout=5)
        self.assertTrue(re.search(r"refused", str(caught.exception), re.IGNORECASE), str(caught.exception))
        self.assertEqual(http_status(caught.exception), 502)

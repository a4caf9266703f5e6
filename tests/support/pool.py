"""An in-memory PACS for the association pool's tests, and their base class `PoolTestCase`.

Every association the pool opens is a `MemoryReactorClock.tcpClients` entry; `PoolTestCase`
completes it (`connect`) against an in-memory acceptor (`ULProtocol` with an `AcceptorPolicy`,
a `DimseConnection` with the scripted C-FIND SCP `FindSCP`) joined by `twisted.test.iosim`
(a `Link`), or fails it (`refuse`, an A-ASSOCIATE-RJ policy such as `BUSY_POLICY`). Time is the
reactor's clock only. Also the addresses, AE titles and timeouts those tests share (`HOST`,
`PORT`, `CALLING`, `CALLED`, `POLICY`, `IDLE`, `WAIT`...), which the C-MOVE and STOW tests of
the pool reuse.
"""

from __future__ import annotations

import gc
from typing import Any

import attrs
from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from dicomrst.backends.pacs import POOL_CONTEXTS, DimseBackend
from dicomrst.common.identifiers import decode_identifier, encode_identifier
from dicomrst.common.metrics import Metrics
from dicomrst.config import parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.connection import BufferConsumer, DimseConnection, IncomingMessage
from dicomrst.dimse.echo import EchoSCP
from dicomrst.dimse.pool import AssociationPool, Lease
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest, Rejection
from dicomrst.ul.protocol import ULProtocol
from tests.support.ul import ARTIM, RecordingTransport, ULTestCase, messages_written, split_pdus

HOST = "192.0.2.1"
PORT = 104
CALLING = "GATEWAY"
CALLED = "PACS"
REQUEST = AssociationRequest(CALLING, CALLED, POOL_CONTEXTS)
POLICY = AcceptorPolicy(CALLED, POOL_CONTEXTS)
WRONG_AET_POLICY = AcceptorPolicy("SOMEONE-ELSE", POOL_CONTEXTS)


@attrs.frozen
class BusyPolicy(AcceptorPolicy):
    """A PACS at its association limit: transient rejection, "local limit exceeded" (3/2)."""

    def decide(self, request: Any, protocol_version: int = 1) -> Any:
        return Rejection(2, 3, 2)


BUSY_POLICY = BusyPolicy(CALLED, POOL_CONTEXTS)
IDLE = 7.5  # binary fractions: "one TICK earlier" is exact on the float clock
WAIT = 2.5
QIDO = 5.0


# -- an in-memory PACS ------------------------------------------------------------------------


def match(index: int, level: str = "STUDY") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = f"PID{index}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{index}"
    return ds


class FindRequest:
    """One C-FIND-RQ the in-memory PACS received; the test answers it through this."""

    def __init__(self, scp: FindSCP, connection: DimseConnection, message: IncomingMessage) -> None:
        self.scp = scp
        self.connection = connection
        self.message = message
        self.message_id = int(message.command.MessageID)
        self.sop_class = str(message.command.AffectedSOPClassUID)
        assert connection.association is not None
        context = connection.association.contexts[message.context_id]
        self.transfer_syntax = context.transfer_syntax
        self.abstract_syntax = context.abstract_syntax
        self.identifier: Dataset | None = None

    def received(self, data: bytes) -> None:
        self.identifier = decode_identifier(data, self.transfer_syntax)
        if self.scp.auto is not None:
            self.pending(*self.scp.auto)
            self.final(self.scp.auto_status)

    def _rsp(self, status: int, dataset: bytes | None) -> None:
        self.connection.respond(
            self.message.context_id,
            commands.command(
                commands.C_FIND_RSP,
                MessageIDBeingRespondedTo=self.message_id,
                AffectedSOPClassUID=self.sop_class,
                Status=status,
            ),
            dataset,
        )

    def pending(self, *datasets: Dataset) -> None:
        for ds in datasets:
            self._rsp(0xFF00, encode_identifier(ds, self.transfer_syntax))

    def final(self, status: int = commands.SUCCESS) -> None:
        self._rsp(status, None)


class FindSCP:
    """C-FIND SCP (any information model its policy accepts): records requests and
    C-CANCELs; answers at once if `auto` is set."""

    def __init__(self) -> None:
        self.requests: list[FindRequest] = []
        self.cancels: list[int] = []
        self.auto: list[Dataset] | None = None
        self.auto_status = commands.SUCCESS

    def request_received(self, connection: DimseConnection, message: IncomingMessage) -> Any:
        if message.command_field == commands.C_CANCEL_RQ:
            self.cancels.append(int(message.command.MessageIDBeingRespondedTo))
            return None
        request = FindRequest(self, connection, message)
        self.requests.append(request)
        return BufferConsumer(request.received)


@attrs.define(eq=False)
class Link:
    """One TCP connection the pool opened, joined in memory to an acceptor."""

    requestor: ULProtocol
    acceptor: ULProtocol
    acceptor_user: DimseConnection
    ours: RecordingTransport  # what we wrote
    theirs: RecordingTransport  # what the PACS wrote
    pump: iosim.IOPump

    def pdus(self) -> list[int]:
        """Types of the PDUs we wrote."""
        return [t for t, _ in split_pdus(self.ours.value())]

    def messages(self) -> list[int]:
        """Command fields of the DIMSE messages we wrote."""
        return [int(cmd.CommandField) for _, cmd, _ in messages_written(self.ours.value())]

    def closed(self) -> bool:
        return self.requestor.whenClosed.called


class PoolTestCase(ULTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.reactor = MemoryReactorClock()
        self.scp = FindSCP()
        self.links: list[Link] = []
        self.handled = 0  # tcpClients entries completed or failed so far
        self.connect_timeout = ARTIM
        self.pools: list[AssociationPool] = []
        self.addCleanup(self.assertNoTraceback)
        self.addCleanup(self.stop_pools)

    def stop_pools(self) -> None:
        """Every test ends with its pools stopped and every connection closed."""
        for pool in self.pools:
            stopped = pool.stop()
            self.flush()
            self.successResultOf(stopped)
        self.assertTrue(all(link.closed() for link in self.links))
        # A Deferred the test left with an unhandled failure is reported here, in its test.
        gc.collect()

    def make_pool(
        self,
        size: int = 2,
        acquire_timeout: float = WAIT,
        idle_timeout: float = IDLE,
        max_idle: int | None = None,
    ) -> AssociationPool:
        self.connect_timeout = ARTIM
        pool = AssociationPool(
            self.reactor,
            HOST,
            PORT,
            REQUEST,
            size=size,
            acquire_timeout=acquire_timeout,
            idle_timeout=idle_timeout,
            connect_timeout=ARTIM,
            max_idle=size if max_idle is None else max_idle,
        )
        self.pools.append(pool)
        return pool

    def make_backend(
        self,
        size: int = 2,
        acquire_ms: int = 2500,
        qido_ms: int = 5000,
        mwl_ms: int = 30_000,
        metrics: Metrics | None = None,
    ) -> DimseBackend:
        config = parse_config(
            {
                "aets": [
                    {
                        "aet": CALLED,
                        "host": HOST,
                        "port": PORT,
                        "pool": {"size": size, "timeout": acquire_ms, "idle-timeout": int(IDLE * 1000)},
                        "qido-rs": {"timeout": qido_ms},
                        "mwl-rs": {"timeout": mwl_ms},
                    }
                ]
            },
            resolve=lambda host: None,
        )
        self.connect_timeout = acquire_ms / 1000  # the backend uses pool.timeout for connecting
        backend = DimseBackend(config.aets[0], CALLING, self.reactor, metrics=metrics)
        self.pools.append(backend.pool)
        return backend

    def acquire(self, pool: AssociationPool) -> Deferred[Lease]:
        return Deferred.fromCoroutine(pool.acquire())

    # -- completing the connections the pool asked for -------------------------------------------

    def pending_connects(self) -> int:
        return len(self.reactor.tcpClients) - self.handled

    def _next_client(self) -> Any:
        self.assertGreater(self.pending_connects(), 0, "the pool opened no connection")
        host, port, factory, timeout, _ = self.reactor.tcpClients[self.handled]
        self.assertEqual((host, port, timeout), (HOST, PORT, self.connect_timeout))
        self.handled += 1
        return factory

    def connect(self, policy: AcceptorPolicy = POLICY) -> Link:
        """Complete the oldest pending connect against an in-memory PACS, and pump."""
        factory = self._next_client()
        wrapper = factory.buildProtocol(IPv4Address("TCP", HOST, PORT))
        handlers = {
            commands.C_ECHO_RQ: EchoSCP(),
            commands.C_FIND_RQ: self.scp,
            commands.C_CANCEL_RQ: self.scp,
        }
        acceptor_user = DimseConnection(self.reactor, handlers)
        acceptor = ULProtocol(self.reactor, acceptor_user, policy=policy, artim_timeout=ARTIM)
        ours = RecordingTransport(wrapper, isServer=False)
        theirs = RecordingTransport(acceptor, isServer=True)
        pump = iosim.connect(acceptor, theirs, wrapper, ours, clock=self.reactor)
        link = Link(wrapper._wrappedProtocol, acceptor, acceptor_user, ours, theirs, pump)
        self.links.append(link)
        self.flush()
        return link

    def refuse(self) -> None:
        """Fail the oldest pending connect with ECONNREFUSED."""
        factory = self._next_client()
        factory.clientConnectionFailed(
            self.reactor.connectors[self.handled - 1], Failure(ConnectionRefusedError())
        )

    def flush(self) -> None:
        for _ in range(10):
            moved = False
            for link in list(self.links):
                moved = link.pump.flush() or moved
            if not moved:
                return

    def opened(self, pool: AssociationPool, count: int) -> list[Lease]:
        """Acquire `count` associations, each on a new connection."""
        leases = []
        for _ in range(count):
            d = self.acquire(pool)
            self.connect()
            lease = self.successResultOf(d)
            self.assertFalse(lease.reused)
            leases.append(lease)
        return leases

    def idle_one(self, pool: AssociationPool) -> Lease:
        (lease,) = self.opened(pool, 1)
        pool.release(lease)
        self.assertEqual(pool.stats()["idle"], 1)
        return lease

    def assertStats(self, pool: AssociationPool, **expected: int) -> None:
        stats = {"idle": 0, "busy": 0, "opening": 0, "releasing": 0}
        stats.update(expected)
        self.assertEqual(pool.stats(), stats)

    def assertQuiet(self) -> None:
        """No timer left behind (idle timers, ARTIM, DIMSE timeouts)."""
        self.assertEqual(self.reactor.getDelayedCalls(), [])

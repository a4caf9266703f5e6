"""Shared helpers for the Upper Layer and DIMSE tests: hand-built PDUs, in-memory peers, log capture.

Nothing here touches a socket or the real clock: one side is driven through a
`StringTransport` with PDUs we build byte by byte, or both sides are joined with
`twisted.test.iosim` and a `task.Clock`.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.echo import EchoSCP
from dicomrst.ul import pdu
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest, ContextProposal
from dicomrst.ul.protocol import ULProtocol

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# Binary fractions, so that "one tick earlier" (2**-20 s, about a microsecond) and the
# tick that completes the timeout add up exactly on the float clock.
ARTIM = 7.5
TICK = 2.0**-20


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def pdv_item(context_id: int, control: int, fragment: bytes) -> bytes:
    return struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment


def pdata(*items: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU from (context_id, control, fragment) triples."""
    body = b"".join(pdv_item(*item) for item in items)
    return header(pdu.P_DATA_TF, len(body)) + body


RELEASE_RQ = header(pdu.RELEASE_RQ, 4) + b"\x00" * 4
RELEASE_RP = header(pdu.RELEASE_RP, 4) + b"\x00" * 4


def abort_pdu(source: int, reason: int) -> bytes:
    return header(pdu.ABORT, 4) + bytes((0, 0, source, reason))


def split_pdus(data: bytes) -> list[tuple[int, bytes]]:
    """Cut written bytes into (type, body) PDUs; fails on a trailing partial PDU."""
    framer = pdu.PDUFramer(0)
    framer.feed(data)
    out = []
    while (item := framer.next_pdu()) is not None:
        out.append(item)
    assert framer.buffered() == 0, f"{framer.buffered()} bytes of a partial PDU were written"
    return out


def aborts(data: bytes) -> list[tuple[int, int]]:
    """(source, reason) of every A-ABORT in `data`."""
    return [pdu.decode_abort(body) for t, body in split_pdus(data) if t == pdu.ABORT]


def pdvs_written(data: bytes) -> list[pdu.PDV]:
    return [pdv for t, body in split_pdus(data) if t == pdu.P_DATA_TF for pdv in pdu.parse_pdvs(body)]


def messages_written(data: bytes) -> list[tuple[int, Dataset, bytes | None]]:
    """Reassemble the DIMSE messages in written P-DATA: (context, command, dataset bytes)."""
    out: list[tuple[int, Dataset, bytes | None]] = []
    command: list[bytes] = []
    dataset: list[bytes] = []
    current: Dataset | None = None
    context = 0
    for pdv in pdvs_written(data):
        context = pdv.context_id
        if pdv.is_command:
            command.append(pdv.fragment)
            if pdv.is_last:
                current = commands.decode_command(b"".join(command))
                command = []
                if not commands.has_dataset(current):
                    out.append((context, current, None))
                    current = None
        else:
            dataset.append(pdv.fragment)
            if pdv.is_last:
                assert current is not None
                out.append((context, current, b"".join(dataset)))
                dataset, current = [], None
    return out


def command_bytes(command_field: int, **fields: object) -> bytes:
    return commands.encode_command(commands.command(command_field, **fields))


def echo_rq(message_id: int = 1) -> bytes:
    return command_bytes(commands.C_ECHO_RQ, MessageID=message_id, AffectedSOPClassUID=VERIFICATION)


def even_chunks(data: bytes, count: int) -> list[bytes]:
    """`data` (even length) cut into `count` even-length, non-empty pieces."""
    assert len(data) % 2 == 0 and len(data) >= 2 * count
    step = (len(data) // count) & ~1
    cuts = [i * step for i in range(count)] + [len(data)]
    return [data[cuts[i] : cuts[i + 1]] for i in range(count)]


def verification_request(
    calling: str = "SCU", called: str = "SCP", max_pdu: int = 16384, **kw: Any
) -> AssociationRequest:
    return AssociationRequest(calling, called, (ContextProposal(VERIFICATION),), max_pdu=max_pdu, **kw)


def associate_rq(request: AssociationRequest | None = None) -> bytes:
    return pdu.encode_associate((request or verification_request()).to_primitive())


def accept_bytes(rq: bytes, policy: AcceptorPolicy) -> bytes:
    """The A-ASSOCIATE-AC that `policy` answers the RQ PDU `rq` with."""
    decision = policy.decide(pdu.decode_associate(rq[0], rq[6:]))
    return pdu.encode_associate(decision.primitive)  # type: ignore[union-attr]


def policy(
    aet: str = "SCP",
    contexts: tuple[ContextProposal, ...] = (
        ContextProposal(VERIFICATION, (IMPLICIT_VR_LE, EXPLICIT_VR_LE)),
    ),
    max_pdu: int = 16384,
) -> AcceptorPolicy:
    return AcceptorPolicy(aet, contexts, max_pdu=max_pdu)


class Tracing(ULProtocol):
    """ULProtocol that records every state it enters."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "state":
            self.__dict__.setdefault("trace", []).append(value)
        super().__setattr__(name, value)


class RecordingTransport(iosim.FakeTransport):
    """An iosim transport that keeps every write (one PDU each) for inspection."""

    def __init__(self, protocol: Any, isServer: bool) -> None:
        super().__init__(protocol, isServer)
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.written.append(bytes(data))
        super().write(data)

    def value(self) -> bytes:
        return b"".join(self.written)


class RecordingConsumer:
    """An IDataSetConsumer that records calls, optionally pausing on the first fragment."""

    def __init__(self, connection: DimseConnection | None = None, pause_on_first: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.connection = connection
        self.pause_on_first = pause_on_first

    @property
    def fragments(self) -> list[bytes]:
        return [arg for name, arg in self.calls if name == "data"]

    def dataReceived(self, fragment: bytes) -> None:
        self.calls.append(("data", fragment))
        if self.pause_on_first and len(self.fragments) == 1:
            assert self.connection is not None and self.connection.association is not None
            self.connection.association.pauseProducing()

    def dataFinished(self) -> None:
        self.calls.append(("finished", None))

    def dataFailed(self, reason: Failure) -> None:
        self.calls.append(("failed", reason))


class RecordingHandler:
    """A RequestHandler that records incoming requests and hands out a fresh consumer for each."""

    def __init__(self, pause_on_first: bool = False) -> None:
        self.messages: list[IncomingMessage] = []
        self.consumers: list[RecordingConsumer] = []
        self.pause_on_first = pause_on_first

    def request_received(self, connection: DimseConnection, message: IncomingMessage) -> RecordingConsumer:
        self.messages.append(message)
        consumer = RecordingConsumer(connection, self.pause_on_first)
        self.consumers.append(consumer)
        return consumer


class SilentHandler:
    """Accepts a request and never answers it."""

    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []

    def request_received(self, connection: DimseConnection, message: IncomingMessage) -> None:
        self.messages.append(message)
        return None


class ULTestCase(SynchronousTestCase):
    """Captures log events; fails a test that logged a traceback."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged_failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]

    def assertNoTraceback(self) -> None:
        self.assertEqual(
            [str(e["log_failure"].value) for e in self.logged_failures()], [], "a traceback was logged"
        )

    # -- one side on a StringTransport --------------------------------------------------

    def acceptor(
        self, acceptor_policy: AcceptorPolicy | None = None, handlers: dict[int, Any] | None = None
    ) -> tuple[ULProtocol, StringTransport, DimseConnection]:
        """An acceptor on a StringTransport; it serves C-ECHO unless `handlers` says otherwise."""
        if handlers is None:
            handlers = {commands.C_ECHO_RQ: EchoSCP()}
        connection = DimseConnection(self.clock, handlers)
        proto = Tracing(self.clock, connection, policy=acceptor_policy or policy(), artim_timeout=ARTIM)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, connection

    def established_acceptor(
        self,
        request: AssociationRequest | None = None,
        acceptor_policy: AcceptorPolicy | None = None,
        handlers: dict[int, Any] | None = None,
    ) -> tuple[ULProtocol, StringTransport, DimseConnection]:
        proto, transport, connection = self.acceptor(acceptor_policy, handlers)
        proto.dataReceived(associate_rq(request))
        self.assertEqual(proto.state, "Sta6")
        self.assertEqual(split_pdus(transport.value())[0][0], pdu.ASSOCIATE_AC)
        transport.clear()
        return proto, transport, connection

    def requestor(
        self, request: AssociationRequest | None = None, handlers: dict[int, Any] | None = None
    ) -> tuple[ULProtocol, StringTransport, DimseConnection]:
        connection = DimseConnection(self.clock, handlers)
        proto = Tracing(
            self.clock, connection, request=request or verification_request(), artim_timeout=ARTIM
        )
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, connection

    def established_requestor(
        self,
        request: AssociationRequest | None = None,
        acceptor_policy: AcceptorPolicy | None = None,
        handlers: dict[int, Any] | None = None,
    ) -> tuple[ULProtocol, StringTransport, DimseConnection]:
        proto, transport, connection = self.requestor(request, handlers)
        proto.dataReceived(accept_bytes(transport.value(), acceptor_policy or policy()))
        self.assertIs(self.successResultOf(proto.whenEstablished), proto)
        transport.clear()
        return proto, transport, connection

    def lose(self, proto: ULProtocol) -> str:
        """Deliver the transport's close to `proto`; its outcome."""
        from twisted.internet.error import ConnectionDone

        proto.connectionLost(Failure(ConnectionDone()))
        return self.successResultOf(proto.whenClosed)

    # -- both sides in memory -------------------------------------------------------------

    def pair(
        self,
        request: AssociationRequest | None = None,
        acceptor_policy: AcceptorPolicy | None = None,
        requestor_handlers: dict[int, Any] | None = None,
        acceptor_handlers: dict[int, Any] | None = None,
    ) -> Pair:
        return Pair(
            self.clock,
            request or verification_request(),
            acceptor_policy or policy(),
            requestor_handlers,
            acceptor_handlers,
        )


class Pair:
    """A requestor and an acceptor ULProtocol joined in memory."""

    def __init__(
        self,
        clock: Clock,
        request: AssociationRequest,
        acceptor_policy: AcceptorPolicy,
        requestor_handlers: dict[int, Any] | None,
        acceptor_handlers: dict[int, Any] | None,
    ) -> None:
        self.requestor_user = DimseConnection(clock, requestor_handlers)
        self.acceptor_user = DimseConnection(clock, acceptor_handlers)
        self.requestor = Tracing(clock, self.requestor_user, request=request, artim_timeout=ARTIM)
        self.acceptor = Tracing(clock, self.acceptor_user, policy=acceptor_policy, artim_timeout=ARTIM)
        self.requestor_transport = RecordingTransport(self.requestor, isServer=False)
        self.acceptor_transport = RecordingTransport(self.acceptor, isServer=True)
        self.pump = iosim.connect(
            self.acceptor,
            self.acceptor_transport,
            self.requestor,
            self.requestor_transport,
            greet=False,
            clock=clock,
        )

    def flush(self) -> None:
        self.pump.flush()

    def requestor_pdus(self) -> list[tuple[int, bytes]]:
        return split_pdus(self.requestor_transport.value())

    def acceptor_pdus(self) -> list[tuple[int, bytes]]:
        return split_pdus(self.acceptor_transport.value())

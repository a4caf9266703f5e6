"""Hostile and careless DICOM peers (issue 11, the DICOM side; docs/security.rst).

One class per kind of input the gateway did not hold, each driven through the real
protocol objects on memory transports and a task.Clock: what the peer sees (one
A-ABORT, a refused C-STORE, a released association) and what we log (one line, no
traceback).
"""

from __future__ import annotations

import logging
import struct
from ipaddress import ip_network
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel

from dicomrst.backends.pacs import POOL_CONTEXTS
from dicomrst.common.identifiers import encode_identifier, retrieve_identifier
from dicomrst.common.uids import EXPLICIT_VR_LE, VERIFICATION
from dicomrst.dimse import commands
from dicomrst.dimse.find import c_find
from dicomrst.dimse.get import c_get
from dicomrst.dimse.move_destination import STORE_NOT_AUTHORIZED
from dicomrst.dimse.move_registry import MoveRegistry, Sender
from dicomrst.dimse.server import listener_factory
from dicomrst.errors import ServiceUnavailable
from dicomrst.ul import pdu
from dicomrst.ul.errors import AssociationTimeout, ProtocolViolation
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest, ContextProposal
from dicomrst.ul.protocol import ULProtocol
from dicomrst.web.errors import http_status
from tests.support.moves import RunningMove
from tests.support.pool import WAIT, PoolTestCase
from tests.support.sinks import RecordingSink
from tests.support.ul import (
    CT_IMAGE_STORAGE,
    STUDY_ROOT_FIND,
    TICK,
    ULTestCase,
    aborts,
    command_bytes,
    header,
    messages_written,
    pdata,
    policy,
)

PROVIDER = pdu.SOURCE_SERVICE_PROVIDER
LISTENER = "LISTENER"
PACS = "PACS"
PACS_ADDRESS = IPv4Address("TCP", "192.0.2.9", 40000)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _store_proposal(calling: str = PACS) -> AssociationRequest:
    return AssociationRequest(
        calling,
        LISTENER,
        (ContextProposal(VERIFICATION), ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,))),
    )


class _PynetdicomRecords(logging.Handler):
    """What pynetdicom logs through the standard library (which twistd prints as is)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class HostileTestCase(ULTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.registry = MoveRegistry("GATEWAY")
        self.factory = listener_factory(LISTENER, self.clock, self.registry)
        self.pynetdicom = _PynetdicomRecords()
        pynetdicom_logger = logging.getLogger("pynetdicom")
        pynetdicom_logger.addHandler(self.pynetdicom)
        self.addCleanup(pynetdicom_logger.removeHandler, self.pynetdicom)

    def connect(self, address: IPv4Address = PACS_ADDRESS) -> tuple[ULProtocol, StringTransport]:
        """A peer connected to our listener."""
        proto = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def associated(self, calling: str = PACS) -> tuple[ULProtocol, StringTransport]:
        proto, transport = self.connect()
        proto.dataReceived(pdu.encode_associate(_store_proposal(calling).to_primitive()))
        self.assertEqual(proto.state, "Sta6")
        transport.clear()
        return proto, transport

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") in (LogLevel.warn, LogLevel.error)]

    def assertOneAbort(self, proto: ULProtocol, transport: StringTransport, reason: int) -> None:
        """One A-ABORT (provider source, `reason`), one warning line, no traceback anywhere."""
        self.assertEqual(aborts(transport.value()), [(PROVIDER, reason)])
        self.assertEqual(proto.state, "Sta13")
        self.assertNoTraceback()
        self.assertEqual(len(self.warnings()), 1, [e.get("log_format") for e in self.warnings()])
        self.assertEqual([r.getMessage() for r in self.pynetdicom.records], [])


class MalformedAssociationRequestTests(HostileTestCase):
    """A-ASSOCIATE-RQs with odd item lengths or missing fields: one A-ABORT each."""

    def _request(self, items: bytes, calling: bytes = b"PACS") -> bytes:
        fixed = b"\x00\x01\x00\x00" + LISTENER.encode().ljust(16) + calling.ljust(16) + b"\x00" * 32
        body = fixed + items
        return header(pdu.ASSOCIATE_RQ, len(body)) + body

    def _items(self, context: bytes) -> bytes:
        user = _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3")
        return _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context) + _item(0x50, user)

    def test_context_without_abstract_syntax(self) -> None:
        # Reached pynetdicom's acceptor negotiation, which raised TypeError from dataReceived.
        proto, transport = self.connect()
        proto.dataReceived(
            self._request(self._items(b"\x01\x00\x00\x00" + _item(0x40, EXPLICIT_VR_LE.encode())))
        )
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)

    def test_odd_item_length_inside_a_context(self) -> None:
        context = b"\x01\x00\x00\x00" + _item(0x30, VERIFICATION.encode())[:-1] + _item(0x40, b"1.2")
        proto, transport = self.connect()
        proto.dataReceived(self._request(self._items(context)))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)

    def test_abstract_syntax_of_control_characters(self) -> None:
        context = (
            b"\x01\x00\x00\x00" + _item(0x30, b"1.2\x7f840\x00\x01") + _item(0x40, EXPLICIT_VR_LE.encode())
        )
        proto, transport = self.connect()
        proto.dataReceived(self._request(self._items(context)))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)

    def test_calling_ae_title_with_non_ascii_bytes(self) -> None:
        # pynetdicom logged its UnicodeDecodeError with a traceback before we saw it.
        context = (
            b"\x01\x00\x00\x00" + _item(0x30, VERIFICATION.encode()) + _item(0x40, EXPLICIT_VR_LE.encode())
        )
        proto, transport = self.connect()
        proto.dataReceived(self._request(self._items(context), calling=b"PA\xc3\xa7S"))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)


class MalformedPDataTests(HostileTestCase):
    """P-DATA whose command fields are not what their VR allows, or are missing."""

    def _store(self, **fields: Any) -> bytes:
        values: dict[str, Any] = {
            "MessageID": 5,
            "AffectedSOPClassUID": CT_IMAGE_STORAGE,
            "AffectedSOPInstanceUID": "1.2.3.4",
            "Priority": 0,
            "CommandDataSetType": commands.HAS_DATASET,
        }
        values.update(fields)
        raw = command_bytes(commands.C_STORE_RQ, **{k: v for k, v in values.items() if v is not None})
        return raw

    def test_non_ascii_bytes_in_a_command_field(self) -> None:
        # The C-STORE-RSP echoes the SOP Instance UID: encoding it raised UnicodeEncodeError
        # inside the DIMSE layer, logged as a traceback.
        proto, transport = self.associated()
        command = self._store().replace(b"1.2.3.4", b"1.2.\xe9.4")
        proto.dataReceived(pdata((3, 3, command)))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)

    def test_store_request_without_its_sop_instance_uid(self) -> None:
        proto, transport = self.associated()
        proto.dataReceived(pdata((3, 3, self._store(AffectedSOPInstanceUID=None))))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)

    def test_store_request_that_announces_no_data_set(self) -> None:
        # Its handler would have waited for a data set that never comes.
        proto, transport = self.associated()
        proto.dataReceived(pdata((3, 3, self._store(CommandDataSetType=commands.NO_DATASET))))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)


FIND_REQUEST = AssociationRequest("GATEWAY", PACS, (ContextProposal(STUDY_ROOT_FIND),))
FIND_POLICY = policy(PACS, contexts=(ContextProposal(STUDY_ROOT_FIND),))


class MalformedResponseTests(HostileTestCase):
    """What a PACS answers us with: the same single A-ABORT, and the request fails with why."""

    def _find(self) -> tuple[ULProtocol, StringTransport, Any]:
        proto, transport, connection = self.established_requestor(FIND_REQUEST, FIND_POLICY)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        # The caller decodes each match (a QIDO-RS search does when it cannot write the
        # JSON from the bytes): a malformed one is the PACS's protocol error.
        found = c_find(
            connection,
            self.clock,
            identifier,
            aet=PACS,
            limit=None,
            timeout=30,
            on_result=lambda match: match.dataset() and None,
        )
        return proto, transport, found

    def _response(self, status: int, dataset: bool, **fields: Any) -> bytes:
        values: dict[str, Any] = {
            "MessageIDBeingRespondedTo": 1,
            "Status": status,
            "CommandDataSetType": commands.HAS_DATASET if dataset else commands.NO_DATASET,
        }
        values.update(fields)
        return command_bytes(commands.C_FIND_RSP, **{k: v for k, v in values.items() if v is not None})

    def test_identifier_that_does_not_parse(self) -> None:
        # pydicom's OSError escaped the DIMSE layer and was logged as a traceback.
        from twisted.internet.defer import ensureDeferred

        proto, transport, found = self._find()
        d = ensureDeferred(found)
        match = Dataset()
        match.StudyInstanceUID = "1.2.3"
        item = Dataset()
        item.CodeValue = "X"
        match.ProcedureCodeSequence = [item]
        data = encode_identifier(match, EXPLICIT_VR_LE)
        transport.clear()
        proto.dataReceived(pdata((1, 3, self._response(0xFF00, True)), (1, 2, data[:-6])))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)
        error = self.failureResultOf(d, ProtocolViolation).value
        self.assertIn("undecodable identifier", str(error))

    def test_response_without_status(self) -> None:
        # Read as Success (a default of 0): an empty search result that was no result.
        from twisted.internet.defer import ensureDeferred

        proto, transport, found = self._find()
        d = ensureDeferred(found)
        transport.clear()
        proto.dataReceived(pdata((1, 3, self._response(0, False, Status=None))))
        self.assertOneAbort(proto, transport, pdu.REASON_INVALID_PARAMETER)
        self.assertIn("without Status", str(self.failureResultOf(d, ProtocolViolation).value))


class HealthCheckBurstTests(PoolTestCase):
    """``GET /aets/{aet}`` is a C-ECHO on the PACS's pool, not an association of its own."""

    def test_a_burst_of_health_checks_opens_no_more_than_the_pool(self) -> None:
        backend = self.make_backend(size=2)
        echoes = [backend.echo() for _ in range(10)]
        # Each health check opened its own association before: ten connections.
        self.assertEqual(self.pending_connects(), 2)
        self.connect()
        self.connect()
        for _ in range(10):
            self.flush()
        for echo in echoes:
            self.assertGreaterEqual(self.successResultOf(echo), 0.0)
        self.assertEqual(len(self.links), 2)
        self.assertEqual(self.pending_connects(), 0)
        self.assertEqual(sum(link.messages().count(commands.C_ECHO_RQ) for link in self.links), 10)
        self.assertStats(backend.pool, idle=2)

    def test_health_check_waits_for_the_pool_then_gets_503(self) -> None:
        backend = self.make_backend(size=2, acquire_ms=2500)
        busy = self.opened(backend.pool, 2)
        echo = backend.echo()
        self.assertEqual(self.pending_connects(), 0)
        self.reactor.advance(WAIT)
        error = self.failureResultOf(echo, ServiceUnavailable).value
        self.assertEqual(http_status(error), 503)
        for lease in busy:
            backend.pool.release(lease)


IDLE = 15.0  # a binary fraction, so TICK before it is exact on the float clock


def _instance_bytes() -> bytes:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.BitsAllocated = 8
    ds.PixelData = b"\x00" * 4096
    return encode_identifier(ds, EXPLICIT_VR_LE)


class SilentPeerTests(HostileTestCase):
    """Established associations whose peer goes quiet, or sends a byte at a time."""

    def setUp(self) -> None:
        super().setUp()
        self.factory = listener_factory(LISTENER, self.clock, self.registry, idle_timeout=IDLE)

    def assertAbortedAsIdle(self, proto: ULProtocol, transport: StringTransport) -> None:
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertTrue(transport.disconnecting)
        self.assertNoTraceback()
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("idle", self.warnings()[0]["log_format"])
        self.assertIn(f"no PDU from the peer for {IDLE:g} s", self.lose(proto))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silent_association_is_aborted_at_the_idle_timeout(self) -> None:
        # It was held until the peer closed it: a few dozen held the listener forever.
        proto, transport = self.associated()
        self.clock.advance(IDLE - TICK)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(TICK)
        self.assertAbortedAsIdle(proto, transport)

    def test_a_byte_at_a_time_is_no_progress(self) -> None:
        proto, transport = self.associated()
        echo = command_bytes(commands.C_ECHO_RQ, MessageID=1, AffectedSOPClassUID=VERIFICATION)
        proto.dataReceived(pdata((1, 3, echo)))  # a whole PDU, answered: the peer's clock starts
        transport.clear()
        for byte in pdata((1, 0, b"\x00" * 256)):  # a PDU that never completes
            self.clock.advance(0.5)
            proto.dataReceived(bytes((byte,)))
            if transport.disconnecting:
                break
        self.assertEqual(self.clock.seconds(), IDLE)
        self.assertAbortedAsIdle(proto, transport)

    def test_each_whole_pdu_gives_the_peer_the_whole_timeout_again(self) -> None:
        proto, transport = self.associated()
        for _ in range(3):
            self.clock.advance(IDLE * 0.75)
            proto.dataReceived(pdata((3, 1, b"\x00" * 16)))  # a command's first fragment
        self.clock.advance(IDLE - TICK)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timer, however many PDUs
        self.clock.advance(TICK)
        self.assertAbortedAsIdle(proto, transport)

    def test_paused_for_a_slow_client_is_not_idle(self) -> None:
        proto, transport = self.associated()
        proto.pauseProducing()
        self.clock.advance(IDLE * 4)
        self.assertEqual(proto.state, "Sta6")
        proto.resumeProducing()
        self.clock.advance(IDLE - TICK)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(TICK)
        self.assertAbortedAsIdle(proto, transport)

    def test_silence_while_we_owe_the_answer_is_ours(self) -> None:
        # A sub-operation whose C-STORE-RSP waits for a slow HTTP client is not the PACS's
        # silence; once we answer, the PACS has the whole idle timeout again.
        sink = RecordingSink(auto_done=False)
        move = _active_move(sink)
        self.registry.register(move)  # type: ignore[arg-type]
        proto, transport = self.associated()
        store = command_bytes(
            commands.C_STORE_RQ,
            MessageID=9,
            AffectedSOPClassUID=CT_IMAGE_STORAGE,
            AffectedSOPInstanceUID="1.2.3.4.5",
            Priority=0,
            CommandDataSetType=commands.HAS_DATASET,
            MoveOriginatorMessageID=move.message_id,
            MoveOriginatorApplicationEntityTitle="GATEWAY",
        )
        proto.dataReceived(pdata((3, 3, store), (3, 2, _instance_bytes())))
        self.assertTrue(sink.parts[0].finished)
        self.clock.advance(IDLE * 4)
        self.assertEqual(proto.state, "Sta6")
        sink.parts[0].done.callback(0)  # the C-STORE-RSP goes out now
        self.assertEqual(messages_written(transport.value())[-1][1].Status, 0)
        transport.clear()
        self.clock.advance(IDLE - TICK)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(TICK)
        self.assertAbortedAsIdle(proto, transport)


def _active_move(sink: RecordingSink, message_id: int = 77) -> RunningMove:
    """A C-MOVE of study 1.2.3 from the PACS, waiting for its instances."""
    return RunningMove(
        sink,
        pacs_aet=PACS,
        destination=LISTENER,
        senders=(Sender(PACS, (ip_network(PACS_ADDRESS.host),)),),
        message_id=message_id,
    )


GET_TIMEOUT = 7.5


class TricklingSubOperationTests(HostileTestCase):
    """A C-GET whose PACS sends a sub-operation's data set a byte at a time."""

    def test_c_get_times_out_when_the_data_set_only_trickles(self) -> None:
        # The sub-operation counted as "ours to answer" from its first byte, so the
        # inactivity timer re-armed forever while the PACS trickled.
        proto, transport, connection = self.established_requestor(
            AssociationRequest("GATEWAY", PACS, POOL_CONTEXTS), AcceptorPolicy(PACS, POOL_CONTEXTS)
        )
        sink = RecordingSink(auto_done=False)
        got = Deferred.fromCoroutine(
            c_get(
                connection, self.clock, retrieve_identifier("1.2.3"), aet=PACS, timeout=GET_TIMEOUT, sink=sink
            )  # type: ignore[arg-type]
        )
        cx = proto.context(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
        assert cx is not None
        store = command_bytes(
            commands.C_STORE_RQ,
            MessageID=1,
            AffectedSOPClassUID=CT_IMAGE_STORAGE,
            AffectedSOPInstanceUID="1.2.3.4.5",
            Priority=0,
            CommandDataSetType=commands.HAS_DATASET,
        )
        data = _instance_bytes()
        proto.dataReceived(pdata((cx.context_id, 3, store), (cx.context_id, 0, data[:1024])))
        rest = pdata((cx.context_id, 2, data[1024:]))
        for byte in rest:
            self.clock.advance(0.5)
            proto.dataReceived(bytes((byte,)))
            if got.called:
                break
        self.failureResultOf(got, AssociationTimeout)
        self.assertEqual(len(aborts(transport.value())), 1)
        self.assertEqual(self.clock.seconds(), GET_TIMEOUT)
        self.assertNoTraceback()


INTRUDER = IPv4Address("TCP", "198.51.100.7", 50000)


class ListenerFeedingTests(HostileTestCase):
    """C-STOREs to our listener from a node no running retrieve asked."""

    def setUp(self) -> None:
        super().setUp()
        self.sink = RecordingSink(auto_done=False)
        self.move = _active_move(self.sink)
        self.registry.register(self.move)  # type: ignore[arg-type]

    def store(
        self, address: IPv4Address, calling: str, **originator: Any
    ) -> tuple[ULProtocol, StringTransport]:
        proto, transport = self.connect(address)
        proto.dataReceived(pdu.encode_associate(_store_proposal(calling).to_primitive()))
        self.assertEqual(proto.state, "Sta6")
        transport.clear()
        command = command_bytes(
            commands.C_STORE_RQ,
            MessageID=3,
            AffectedSOPClassUID=CT_IMAGE_STORAGE,
            AffectedSOPInstanceUID="1.2.3.4.5",
            Priority=0,
            CommandDataSetType=commands.HAS_DATASET,
            **originator,
        )
        proto.dataReceived(pdata((3, 3, command), (3, 2, _instance_bytes())))
        return proto, transport

    def assertRefused(self, transport: StringTransport, address: IPv4Address) -> None:
        self.assertEqual(self.sink.parts, [], "delivered into the running retrieve's response")
        [(_, rsp, _)] = messages_written(transport.value())
        self.assertEqual((rsp.CommandField, rsp.Status), (commands.C_STORE_RSP, STORE_NOT_AUTHORIZED))
        [line] = self.warnings()
        self.assertIn("refused C-STORE", line["log_format"])
        self.assertEqual(line["peer"], f"{address.host}:{address.port}")
        self.assertNoTraceback()

    def test_the_running_studys_uids_from_another_node_are_refused(self) -> None:
        # Matched by its UIDs to the PACS's retrieve: it went out in another client's response.
        _proto, transport = self.store(INTRUDER, PACS)
        self.assertRefused(transport, INTRUDER)

    def test_a_guessed_move_originator_message_id_is_refused(self) -> None:
        _proto, transport = self.store(
            INTRUDER,
            "INTRUDER",
            MoveOriginatorMessageID=self.move.message_id,
            MoveOriginatorApplicationEntityTitle="GATEWAY",
        )
        self.assertRefused(transport, INTRUDER)

    def test_the_pacs_itself_is_delivered(self) -> None:
        self.store(PACS_ADDRESS, PACS)
        self.assertEqual(len(self.sink.parts), 1)
        self.assertEqual(self.warnings(), [])

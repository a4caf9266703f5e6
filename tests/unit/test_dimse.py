"""DIMSE over an association (dicomrst.dimse): assembly, streaming, backpressure, C-ECHO, timeouts."""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pynetdicom.tests import encoded_pdu_items as golden
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.uids import VERIFICATION
from dicomrst.dimse import commands
from dicomrst.dimse.connection import BufferConsumer, IncomingMessage
from dicomrst.dimse.echo import EchoFailed, echo_scu
from dicomrst.dimse.server import DimseServerFactory
from dicomrst.ul import pdu
from dicomrst.ul.errors import (
    AssociationAborted,
    AssociationClosed,
    AssociationRejected,
    AssociationTimeout,
    ConnectFailed,
)
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal
from tests.support.ul import (
    ARTIM,
    CT_IMAGE_STORAGE,
    RELEASE_RP,
    RELEASE_RQ,
    STUDY_ROOT_FIND,
    TICK,
    RecordingConsumer,
    RecordingHandler,
    ULTestCase,
    aborts,
    command_bytes,
    echo_rq,
    even_chunks,
    messages_written,
    pdata,
    policy,
)

STORE_REQUEST = AssociationRequest("SCU", "SCP", (ContextProposal(CT_IMAGE_STORAGE),))
STORE_POLICY = policy(contexts=(ContextProposal(CT_IMAGE_STORAGE),))
FIND_REQUEST = AssociationRequest("SCU", "SCP", (ContextProposal(STUDY_ROOT_FIND),))
FIND_POLICY = policy(contexts=(ContextProposal(STUDY_ROOT_FIND),))
ECHO = {"AffectedSOPClassUID": VERIFICATION}


def store_rq(message_id: int = 7) -> bytes:
    return command_bytes(
        commands.C_STORE_RQ,
        MessageID=message_id,
        AffectedSOPClassUID=CT_IMAGE_STORAGE,
        AffectedSOPInstanceUID="1.2.826.0.1.3680043.2.1125.1",
        Priority=commands.PRIORITY_MEDIUM,
        CommandDataSetType=commands.HAS_DATASET,
    )


def find_rsp(message_id: int, status: int, with_identifier: bool) -> bytes:
    return command_bytes(
        commands.C_FIND_RSP,
        MessageIDBeingRespondedTo=message_id,
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        Status=status,
        CommandDataSetType=commands.HAS_DATASET if with_identifier else commands.NO_DATASET,
    )


def find_rq() -> Dataset:
    return commands.command(commands.C_FIND_RQ, AffectedSOPClassUID=STUDY_ROOT_FIND, Priority=0)


class AssemblyTests(ULTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = RecordingHandler()
        self.command = store_rq()
        self.data = bytes(range(256)) * 4
        c = even_chunks(self.command, 3)
        d = even_chunks(self.data, 6)
        self.fragments = d
        # The command in 3 fragments, the data set in 6 across 4 PDUs; the third PDU
        # holds the command's last fragment and the data set's first.
        self.pdus = [
            pdata((1, 0x01, c[0])),
            pdata((1, 0x01, c[1])),
            pdata((1, 0x03, c[2]), (1, 0x00, d[0])),
            pdata((1, 0x00, d[1]), (1, 0x00, d[2])),
            pdata((1, 0x00, d[3])),
            pdata((1, 0x00, d[4]), (1, 0x02, d[5])),
        ]

    def test_fragments_are_delivered_one_by_one_as_each_pdu_arrives(self) -> None:
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: self.store}
        )
        d = self.fragments
        expected_after = [[], [], d[:1], d[:3], d[:4], d[:6]]
        for i, (message, expected) in enumerate(zip(self.pdus, expected_after, strict=True)):
            # Nothing of a PDU is delivered before its last byte.
            proto.dataReceived(message[:-1])
            delivered = self.store.consumers[0].fragments if self.store.consumers else []
            self.assertEqual(delivered, expected_after[i - 1] if i else [])
            proto.dataReceived(message[-1:])
            if i < 2:
                self.assertEqual(self.store.messages, [], "command handed up before its last fragment")
                continue
            (consumer,) = self.store.consumers
            self.assertEqual(consumer.fragments, expected, f"after PDU {i}")
            finished = ("finished", None) in consumer.calls
            self.assertEqual(finished, i == len(self.pdus) - 1)
        (message,) = self.store.messages
        self.assertEqual(message.context_id, 1)
        self.assertEqual(message.command_field, commands.C_STORE_RQ)
        self.assertEqual(message.command.MessageID, 7)
        self.assertEqual(message.command.AffectedSOPInstanceUID, "1.2.826.0.1.3680043.2.1125.1")
        self.assertEqual(consumer.calls[-1], ("finished", None))
        self.assertEqual(b"".join(consumer.fragments), self.data)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(proto.state, "Sta6")
        self.assertNoTraceback()

    def test_whole_stream_in_one_chunk(self) -> None:
        proto, _, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: self.store}
        )
        proto.dataReceived(b"".join(self.pdus))
        (consumer,) = self.store.consumers
        self.assertEqual(consumer.fragments, self.fragments)
        self.assertEqual(consumer.calls[-1], ("finished", None))

    def test_pause_holds_everything_buffered_until_resume(self) -> None:
        self.store.pause_on_first = True
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: self.store}
        )
        proto.dataReceived(self.pdus[0])
        proto.dataReceived(self.pdus[1])
        # PDU 2 holds the first data fragment; a second one rides in the same PDU.
        first, second = even_chunks(self.fragments[0], 2)
        chunk = (
            pdata((1, 0x03, even_chunks(self.command, 3)[2]), (1, 0x00, first), (1, 0x00, second))
            + b"".join(self.pdus[3:])
            + RELEASE_RQ
        )
        proto.dataReceived(chunk)
        (consumer,) = self.store.consumers
        self.assertEqual(consumer.calls, [("data", first)])
        self.assertEqual(transport.producerState, "paused")
        # The release request queued behind the data is not acted on while paused.
        self.assertEqual(transport.value(), b"")
        self.assertEqual(proto.state, "Sta6")
        proto.dataReceived(b"")  # more reads while paused change nothing
        self.assertEqual(consumer.calls, [("data", first)])

        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(consumer.fragments, [first, second, *self.fragments[1:]])
        self.assertEqual(consumer.calls[-1], ("finished", None))
        self.assertEqual(transport.value(), RELEASE_RP)
        self.assertEqual(proto.state, "Sta13")

    def test_pause_mid_pdu_with_each_pdu_in_a_chunk_of_its_own(self) -> None:
        # Each PDU a chunk, or its header and its body apart (as Orthanc sends them): the
        # PDVs after the one the consumer paused on, and the PDUs read meanwhile, wait
        # for resume, in order.
        for header_apart in (False, True):
            store = RecordingHandler(pause_on_first=True)
            proto, transport, _ = self.established_acceptor(
                STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: store}
            )
            first, second = even_chunks(self.fragments[0], 2)
            chunks = [
                *self.pdus[:2],
                pdata((1, 0x03, even_chunks(self.command, 3)[2]), (1, 0x00, first), (1, 0x00, second)),
                *self.pdus[3:],
                RELEASE_RQ,
            ]
            for chunk in chunks:
                if header_apart:
                    proto.dataReceived(chunk[:6])
                    proto.dataReceived(chunk[6:])
                else:
                    proto.dataReceived(chunk)
            (consumer,) = store.consumers
            self.assertEqual(consumer.calls, [("data", first)])
            self.assertEqual(transport.producerState, "paused")
            self.assertEqual(transport.value(), b"")
            proto.resumeProducing()
            self.assertEqual(consumer.fragments, [first, second, *self.fragments[1:]])
            self.assertEqual(consumer.calls[-1], ("finished", None))
            self.assertEqual(transport.value(), RELEASE_RP)
            self.assertEqual(proto.state, "Sta13")

    def test_pause_at_a_pdu_boundary_holds_the_next_pdu_chunk(self) -> None:
        self.store.pause_on_first = True
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: self.store}
        )
        proto.dataReceived(pdata((1, 0x03, self.command), (1, 0x02, self.data)))
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(pdata((1, 0x03, store_rq(8))))  # read before the pause took
        self.assertEqual(len(self.store.messages), 1)
        proto.resumeProducing()
        self.assertEqual(len(self.store.messages), 2)

    def test_pause_at_a_pdu_boundary_stops_parsing(self) -> None:
        self.store.pause_on_first = True
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: self.store}
        )
        # A one-fragment data set ends its PDU; the consumer pauses on it.  The
        # A-RELEASE-RQ behind it must wait, unparsed, until we are resumed.
        proto.dataReceived(pdata((1, 0x03, self.command), (1, 0x02, self.data)) + RELEASE_RQ)
        (consumer,) = self.store.consumers
        self.assertEqual(consumer.calls, [("data", self.data), ("finished", None)])
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(proto.state, "Sta6")
        proto.resumeProducing()
        self.assertEqual(transport.value(), RELEASE_RP)
        self.assertEqual(proto.state, "Sta13")

    def test_command_while_an_unwanted_data_set_is_in_progress(self) -> None:
        # The handler takes the command but not the data set (returns no consumer);
        # the PDV rules still hold: no other message before the data set's last fragment.
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: _NoConsumer()}
        )
        proto.dataReceived(pdata((1, 0x03, store_rq(1)), (1, 0x00, b"ab")))
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(pdata((1, 0x03, store_rq(2))))
        self.assertEqual(aborts(transport.value()), [(2, pdu.REASON_INVALID_PARAMETER)])
        self.assertNoTraceback()

    def test_unwanted_data_set_is_read_and_dropped(self) -> None:
        handler = _NoConsumer()
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: handler}
        )
        proto.dataReceived(pdata((1, 0x03, store_rq(1)), (1, 0x00, b"ab"), (1, 0x02, b"cd")))
        proto.dataReceived(pdata((1, 0x03, store_rq(2)), (1, 0x02, b"ef")))
        self.assertEqual([m.command.MessageID for m in handler.messages], [1, 2])
        self.assertEqual(transport.value(), b"")

    def test_command_fragment_while_a_data_set_is_in_progress(self) -> None:
        proto, transport, _ = self.established_acceptor(
            STORE_REQUEST, STORE_POLICY, {commands.C_STORE_RQ: self.store}
        )
        proto.dataReceived(pdata((1, 0x03, store_rq(1)), (1, 0x00, b"ab")))
        proto.dataReceived(pdata((1, 0x01, store_rq(2)[:10])))
        self.assertEqual(aborts(transport.value()), [(2, pdu.REASON_INVALID_PARAMETER)])
        (consumer,) = self.store.consumers
        self.assertEqual(consumer.calls[0], ("data", b"ab"))
        self.assertEqual(consumer.calls[-1][0], "failed")
        self.assertNoTraceback()

    def test_data_set_on_another_context_than_its_command(self) -> None:
        request = AssociationRequest(
            "SCU", "SCP", (ContextProposal(CT_IMAGE_STORAGE), ContextProposal(VERIFICATION))
        )
        acceptor_policy = policy(contexts=(ContextProposal(CT_IMAGE_STORAGE), ContextProposal(VERIFICATION)))
        proto, transport, _ = self.established_acceptor(
            request, acceptor_policy, {commands.C_STORE_RQ: self.store}
        )
        proto.dataReceived(pdata((1, 0x03, store_rq(1)), (3, 0x02, b"ab")))
        self.assertEqual(aborts(transport.value()), [(2, pdu.REASON_INVALID_PARAMETER)])
        self.assertEqual(self.store.consumers[0].calls[-1][0], "failed")


class _NoConsumer:
    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []

    def request_received(self, connection: object, message: IncomingMessage) -> None:
        self.messages.append(message)


class EchoSCPTests(ULTestCase):
    def test_answers_golden_echo_request(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(golden.p_data_tf_rq)
        ((context, rsp, data),) = messages_written(transport.value())
        self.assertEqual(context, 1)
        self.assertIsNone(data)
        self.assertEqual(rsp.CommandField, commands.C_ECHO_RSP)
        self.assertEqual(rsp.MessageIDBeingRespondedTo, 1)
        self.assertEqual(rsp.Status, 0)
        self.assertEqual(rsp.AffectedSOPClassUID, VERIFICATION)

    def test_answers_with_the_request_message_id(self) -> None:
        proto, transport, _ = self.established_acceptor()
        for message_id in (4242, 65535, 0):
            transport.clear()
            proto.dataReceived(pdata((1, 0x03, echo_rq(message_id))))
            ((_, rsp, _),) = messages_written(transport.value())
            self.assertEqual(rsp.MessageIDBeingRespondedTo, message_id)
            self.assertEqual(rsp.Status, 0)

    def test_echo_between_two_ends_in_memory(self) -> None:
        pair = self.pair(acceptor_handlers=DimseServerFactory("SCP", self.clock).handlers)
        pair.flush()
        d = pair.requestor_user.request(1, commands.command(commands.C_ECHO_RQ, **ECHO), timeout=5)
        self.assertNoResult(d)
        pair.flush()
        rsp = self.successResultOf(d)
        self.assertEqual((rsp.command_field, rsp.command.Status), (commands.C_ECHO_RSP, 0))
        self.assertEqual(rsp.command.MessageIDBeingRespondedTo, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RequestTests(ULTestCase):
    def sent_ids(self, transport: object) -> list[int]:
        return [int(c.MessageID) for _, c, _ in messages_written(transport.value())]  # type: ignore[attr-defined]

    def test_message_ids_wrap_past_65535_and_skip_ones_in_use(self) -> None:
        proto, transport, connection = self.established_requestor()
        requests = [connection.request(1, commands.command(commands.C_ECHO_RQ, **ECHO))]
        self.assertEqual(self.sent_ids(transport), [1])
        connection._next_id = 65533  # fast-forward instead of sending 65532 requests
        for _ in range(3):
            requests.append(connection.request(1, commands.command(commands.C_ECHO_RQ, **ECHO)))
        self.assertEqual(self.sent_ids(transport), [1, 65534, 65535, 2])
        # Once answered, an ID is free again.
        rsp = command_bytes(commands.C_ECHO_RSP, MessageIDBeingRespondedTo=65534, Status=0, **ECHO)
        proto.dataReceived(pdata((1, 0x03, rsp)))
        self.assertEqual(self.successResultOf(requests[1]).command.MessageIDBeingRespondedTo, 65534)
        connection._next_id = 65533
        transport.clear()
        connection.request(1, commands.command(commands.C_ECHO_RQ, **ECHO))
        self.assertEqual(self.sent_ids(transport), [65534])
        for pending in (requests[0], requests[2], requests[3]):
            self.assertNoResult(pending)

    def test_echo_without_response_times_out_exactly_and_aborts(self) -> None:
        proto, transport, connection = self.established_requestor()
        d = connection.request(1, commands.command(commands.C_ECHO_RQ, **ECHO), timeout=5)
        transport.clear()
        self.clock.advance(5 - TICK)
        self.assertNoResult(d)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(TICK)
        error = self.failureResultOf(d, AssociationTimeout).value
        self.assertIn("C-ECHO-RSP", str(error))
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertTrue(transport.disconnecting)
        self.assertFalse(proto.established)
        self.assertRaises(AssociationClosed, connection.request, 1, commands.command(commands.C_ECHO_RQ))
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoTraceback()

    def test_pending_responses_reset_the_timer(self) -> None:
        proto, transport, connection = self.established_requestor(FIND_REQUEST, FIND_POLICY)
        identifiers: list[bytes] = []
        d = connection.request(
            1,
            find_rq(),
            b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ",
            timeout=4,
            on_response=lambda m: (
                BufferConsumer(identifiers.append) if commands.has_dataset(m.command) else None
            ),
        )
        for _ in range(3):
            self.clock.advance(4 - TICK)
            self.assertNoResult(d)
            proto.dataReceived(
                pdata((1, 0x03, find_rsp(1, 0xFF00, True)), (1, 0x02, b"\x10\x00\x20\x00\x02\x00\x00\x00ID"))
            )
        self.assertEqual(len(identifiers), 3)
        self.clock.advance(4 - TICK)
        self.assertNoResult(d)
        self.clock.advance(TICK)
        self.failureResultOf(d, AssociationTimeout)
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])

    def test_final_response_fires_after_its_data_set(self) -> None:
        proto, _transport, connection = self.established_requestor(FIND_REQUEST, FIND_POLICY)
        consumer = RecordingConsumer()
        d = connection.request(
            1, find_rq(), b"\x08\x00\x52\x00\x00\x00\x00\x00", on_response=lambda m: consumer
        )
        proto.dataReceived(pdata((1, 0x03, find_rsp(1, 0xC000, True)), (1, 0x00, b"ab")))
        self.assertNoResult(d)
        proto.dataReceived(pdata((1, 0x02, b"cd")))
        self.assertEqual(self.successResultOf(d).command.Status, 0xC000)
        self.assertEqual(consumer.calls, [("data", b"ab"), ("data", b"cd"), ("finished", None)])

    def test_late_response_to_a_cancelled_request_keeps_the_association(self) -> None:
        proto, transport, connection = self.established_requestor(FIND_REQUEST, FIND_POLICY)
        d = connection.request(1, find_rq(), b"\x08\x00\x52\x00\x00\x00\x00\x00", timeout=4)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        transport.clear()
        # The PACS had already answered: a pending response with data, then the final one.
        proto.dataReceived(
            pdata((1, 0x03, find_rsp(1, 0xFF00, True)), (1, 0x02, b"\x10\x00\x20\x00\x02\x00\x00\x00ID"))
        )
        proto.dataReceived(pdata((1, 0x03, find_rsp(1, 0x0000, False))))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(proto.established)
        self.clock.advance(100)
        self.assertTrue(proto.established)
        # The ID is free once the final response came; a further response to it is an error.
        proto.dataReceived(pdata((1, 0x03, find_rsp(1, 0x0000, False))))
        self.assertEqual(aborts(transport.value()), [(2, pdu.REASON_INVALID_PARAMETER)])

    def test_cancelled_request_id_is_not_reused_while_the_peer_may_answer_it(self) -> None:
        _proto, transport, connection = self.established_requestor(FIND_REQUEST, FIND_POLICY)
        d = connection.request(1, find_rq(), b"\x08\x00\x52\x00\x00\x00\x00\x00")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        connection._next_id = 0
        transport.clear()
        connection.request(1, find_rq(), b"\x08\x00\x52\x00\x00\x00\x00\x00")
        self.assertEqual(self.sent_ids(transport), [2])

    def test_request_needs_an_association(self) -> None:
        _proto, _transport, connection = self.requestor()
        self.assertRaises(AssociationClosed, connection.request, 1, commands.command(commands.C_ECHO_RQ))

    def test_release_fails_pending_requests(self) -> None:
        pair = self.pair(acceptor_handlers={commands.C_ECHO_RQ: _NoConsumer()})
        pair.flush()
        d = pair.requestor_user.request(1, commands.command(commands.C_ECHO_RQ, **ECHO))
        released = pair.requestor_user.release()
        pair.flush()
        self.assertIsNone(self.successResultOf(released))
        self.failureResultOf(d, AssociationClosed)


class EchoSCUTests(ULTestCase):
    """echo_scu and DimseServerFactory end to end, on a MemoryReactorClock."""

    def connect(self, reactor: MemoryReactorClock, server: DimseServerFactory) -> iosim.IOPump:
        host, port, factory, timeout, _ = reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout), ("192.0.2.1", 104, 5))
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        acceptor = server.buildProtocol(IPv4Address("TCP", "192.0.2.2", 40000))
        self.assertIn(acceptor, server.open)
        return iosim.connect(
            acceptor,
            iosim.FakeTransport(acceptor, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=reactor,
        )

    def test_echo_succeeds_and_releases(self) -> None:
        reactor = MemoryReactorClock()
        server = DimseServerFactory("SCP", reactor, artim_timeout=ARTIM)
        d = echo_scu(reactor, "192.0.2.1", 104, "SCU", "SCP", timeout=5)
        self.assertNoResult(d)
        reactor.advance(0.5)
        self.connect(reactor, server).flush()
        self.assertEqual(self.successResultOf(d), 500.0)
        self.assertEqual(server.open, set())
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertNoTraceback()

    def test_wrong_called_aet_is_rejected(self) -> None:
        reactor = MemoryReactorClock()
        server = DimseServerFactory("SCP", reactor, artim_timeout=ARTIM)
        d = echo_scu(reactor, "192.0.2.1", 104, "SCU", "OTHER", timeout=5)
        self.connect(reactor, server).flush()
        error = self.failureResultOf(d, AssociationRejected).value
        self.assertEqual(error.reason, 7)
        self.assertEqual(server.open, set())

    def test_connection_refused(self) -> None:
        reactor = MemoryReactorClock()
        d = echo_scu(reactor, "192.0.2.1", 104, "SCU", "SCP", timeout=5)
        _, _, factory, _, _ = reactor.tcpClients[0]
        factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
        error = self.failureResultOf(d, ConnectFailed).value
        self.assertIn("SCP@192.0.2.1:104", str(error))

    def test_failed_echo_status(self) -> None:
        reactor = MemoryReactorClock()
        server = DimseServerFactory(
            "SCP", reactor, artim_timeout=ARTIM, handlers={commands.C_ECHO_RQ: _FailingEcho()}
        )
        d = echo_scu(reactor, "192.0.2.1", 104, "SCU", "SCP", timeout=5)
        pump = self.connect(reactor, server)
        pump.flush()
        error = self.failureResultOf(d, EchoFailed).value
        self.assertIn("0x0110", str(error))
        self.assertEqual(server.open, set())

    def test_abort_all(self) -> None:
        reactor = MemoryReactorClock()
        server = DimseServerFactory(
            "SCP", reactor, artim_timeout=ARTIM, handlers={commands.C_ECHO_RQ: _NoConsumer()}
        )
        d = echo_scu(reactor, "192.0.2.1", 104, "SCU", "SCP", timeout=5)
        pump = self.connect(reactor, server)
        self.assertNoResult(d)  # the C-ECHO-RQ is unanswered
        server.abort_all()
        pump.flush()
        self.failureResultOf(d, AssociationAborted)
        self.assertEqual(server.open, set())


class _FailingEcho:
    def request_received(self, connection, message):  # type: ignore[no-untyped-def]
        connection.respond(
            message.context_id,
            commands.command(
                commands.C_ECHO_RSP, MessageIDBeingRespondedTo=message.command.MessageID, Status=0x0110
            ),
        )


class CommandCodecTests(SynchronousTestCase):
    """The struct codec for command sets writes what pydicom would, and reads it back."""

    CASES = (
        dict(
            CommandField=0x0001,
            MessageID=7,
            Priority=0,
            CommandDataSetType=0x0000,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            AffectedSOPInstanceUID="1.2.3.45",
            MoveOriginatorApplicationEntityTitle="ORTHANC",
            MoveOriginatorMessageID=3,
        ),
        dict(
            CommandField=0x8010,
            MessageIDBeingRespondedTo=65535,
            CommandDataSetType=0x0101,
            Status=0xFF00,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.3",
            NumberOfRemainingSuboperations=199,
            NumberOfCompletedSuboperations=1,
            NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=0,
        ),
        dict(
            CommandField=0x0021,
            MessageID=1,
            Priority=0,
            CommandDataSetType=0x0000,
            MoveDestination="DICOMRST",
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2",
        ),
        dict(
            CommandField=0x8030,
            MessageIDBeingRespondedTo=1,
            CommandDataSetType=0x0101,
            Status=0x0107,
            ErrorComment="odd",
            OffendingElement=[0x00100010, 0x00100020],
        ),
    )

    def _pydicom(self, fields: dict) -> bytes:
        from pydicom.dataset import Dataset
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        ds = Dataset()
        for keyword, value in fields.items():
            setattr(ds, keyword, value)
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        write_dataset(fp, ds)
        rest = fp.getvalue()
        return struct.pack("<HHLL", 0, 0, 4, len(rest)) + rest

    def test_encode_matches_pydicom(self) -> None:
        for fields in self.CASES:
            built = commands.command(
                fields["CommandField"], **{k: v for k, v in fields.items() if k != "CommandField"}
            )
            self.assertEqual(commands.encode_command(built), self._pydicom(fields), fields)

    def test_encode_same_text_under_other_vrs_and_numbers_out_of_range(self) -> None:
        """Text values are kept encoded by VR and value: "123" as an AE title is padded
        with a space, as a UID with a NUL.  A US value out of range is still refused."""
        for _ in range(2):
            fields = {
                "CommandField": commands.C_MOVE_RQ,
                "AffectedSOPClassUID": "123",
                "MessageID": 0xFFFF,
                "Priority": 0,
                "MoveDestination": "123",
                "CommandDataSetType": commands.HAS_DATASET,
            }
            rest = {k: v for k, v in fields.items() if k != "CommandField"}
            built = commands.command(commands.C_MOVE_RQ, **rest)  # type: ignore[arg-type]
            self.assertEqual(commands.encode_command(built), self._pydicom(fields))
        for bad in (0x10000, -1, "7"):
            built = commands.command(commands.C_ECHO_RQ, MessageID=bad)  # type: ignore[arg-type]
            self.assertRaises(commands.CommandError, commands.encode_command, built)

    def test_decode_reads_pydicom(self) -> None:
        for fields in self.CASES:
            decoded = commands.decode_command(self._pydicom(fields))
            for keyword, value in fields.items():
                self.assertEqual(getattr(decoded, keyword), value, keyword)

    def test_decoded_again_is_its_own_command(self) -> None:
        """The same bytes (a find's Pending responses) are decoded once; each message
        still gets a Command of its own."""
        data = self._pydicom(self.CASES[0])
        first, second = commands.decode_command(data), commands.decode_command(bytearray(data))
        self.assertIsNot(first, second)
        self.assertEqual(list(first), list(second))
        first.MessageID = 99
        self.assertNotEqual(second.get("MessageID"), 99)
        self.assertEqual(list(commands.decode_command(data)), list(second))

    def test_responses_that_differ_in_the_message_id_only(self) -> None:
        """A response like one decoded before but for another request is read with its
        own MessageIDBeingRespondedTo; anything else that differs is decoded anew."""
        decoded_whole: list[bytes] = []
        decode = commands._decode_command

        def spy(data: bytes) -> dict[str, commands.CommandValue]:
            decoded_whole.append(data)
            return decode(data)

        self.patch(commands, "_decode_command", spy)
        fields: dict[str, object] = {
            "CommandField": commands.C_FIND_RSP,
            "AffectedSOPClassUID": "1.2.3.4.5.6.7.8.9.15",  # in no other test's responses
            "CommandDataSetType": commands.HAS_DATASET,
            "Status": 0xFF00,
        }
        for message_id in (7, 8, 0x0100, 0xFFFF, 7):
            for status in (0xFF00, 0x0000):
                data = self._pydicom({**fields, "MessageIDBeingRespondedTo": message_id, "Status": status})
                decoded = commands.decode_command(data)
                self.assertEqual(decoded.number("MessageIDBeingRespondedTo"), message_id)
                self.assertEqual(decoded.number("Status"), status)
                self.assertEqual(decoded.get("AffectedSOPClassUID"), fields["AffectedSOPClassUID"])
        self.assertEqual(len(decoded_whole), 2)  # a Pending and a final response, once
        # Still checked: without a Status it is no response, whatever was decoded before.
        fields = {k: v for k, v in fields.items() if k != "Status"}
        data = self._pydicom({**fields, "MessageIDBeingRespondedTo": 9})
        self.assertRaises(commands.CommandError, commands.decode_command, data)

    def test_malformed(self) -> None:
        good = self._pydicom(self.CASES[0])
        for bad in (
            good[:-3],
            good + b"\x08\x00\x10\x00\x02\x00\x00\x00CT",
            b"\x00\x00\x00\x01\x02\x00\x00\x00\x01",
        ):
            self.assertRaises(commands.CommandError, commands.decode_command, bad)


class BufferConsumerTests(SynchronousTestCase):
    def test_one_fragment_or_several_or_none(self) -> None:
        for fragments in ([b"ab"], [b"ab", b"cd", b"ef"], [b"", b"ab", b"", b"cd"], []):
            done: list[bytes] = []
            consumer = BufferConsumer(done.append)
            for fragment in fragments:
                consumer.dataReceived(fragment)
            consumer.dataFinished()
            self.assertEqual(done, [b"".join(fragments)], fragments)

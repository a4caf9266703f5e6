"""C-MOVE retrieves: the registry that matches sub-operations with moves, the C-MOVE SCU
operation, sequential mode, the listeners' negotiation (the smoke test against Orthanc is
tests/integration/test_move_orthanc.py).

The tests run both associations in memory: the pooled one our C-MOVE-RQ goes out on
(a requestor on a `StringTransport`, fed hand-built C-MOVE-RSPs) and the PACS's association
to our listener (an acceptor built by `listener_factory`, fed hand-built C-STORE-RQs), on one
`task.Clock`.
"""

from __future__ import annotations

import zlib
from ipaddress import ip_network
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from dicomrst.backends.pacs import POOL_CONTEXTS, DimseBackend
from dicomrst.common.identifiers import decode_identifier
from dicomrst.common.interfaces import STORE_SUCCESS
from dicomrst.common.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from dicomrst.config import parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.connection import BufferConsumer, DimseConnection
from dicomrst.dimse.contexts import COMPRESSED_SYNTAXES, listener_policy, receivable_syntaxes
from dicomrst.dimse.echo import EchoSCP
from dicomrst.dimse.move import MOVE_DESTINATION_UNKNOWN, MoveDestinationUnknown, MoveOperation, c_move
from dicomrst.dimse.move_destination import STORE_NOT_AUTHORIZED
from dicomrst.dimse.move_registry import MoveReceiver, MoveRegistry, Sender
from dicomrst.dimse.retrieval import RetrieveFailed
from dicomrst.dimse.server import listener_factory
from dicomrst.errors import NotFound, UpstreamError
from dicomrst.ul import pdu
from dicomrst.ul.errors import AssociationTimeout
from dicomrst.ul.negotiation import Acceptance, AcceptorPolicy, AssociationRequest, ContextProposal, Rejection
from dicomrst.ul.protocol import ULProtocol
from dicomrst.wado.throttle import ResponseThrottle
from dicomrst.web.errors import http_status
from tests.support.pool import CALLED, CALLING, HOST, IDLE, POLICY, PORT, Link, PoolTestCase, match
from tests.support.sinks import RecordingPart, RecordingSink
from tests.support.ul import (
    ARTIM,
    CT_IMAGE_STORAGE,
    TICK,
    RecordingTransport,
    ULTestCase,
    aborts,
    accept_bytes,
    command_bytes,
    messages_written,
    pdata,
    split_pdus,
)

OUR_AET = "DICOMRST"
LISTENER = "GWSCP"
PACS = "PACS"
PACS_ADDRESS = IPv4Address("TCP", "192.0.2.9", 40000)
PACS_SENDER = Sender(PACS, (ip_network(PACS_ADDRESS.host),))
TIMEOUT = 10.0
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


# -- data sets -------------------------------------------------------------------------------


def dataset_bytes(study: str, series: str, sop: str, implicit: bool = False, pixels: int = 64) -> bytes:
    """A small instance's data set (no meta) in Explicit or Implicit VR LE."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.PatientID = "P1"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Rows = 1
    ds.Columns = pixels // 2
    ds.BitsAllocated = 16
    ds.PixelData = bytes(range(256)) * (pixels // 256) + bytes(pixels % 256)
    ds.file_meta = FileMetaDataset()
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


class Instance:
    def __init__(self, study: str, series: str, implicit: bool = False, deflated: bool = False) -> None:
        self.study = study
        self.series = series
        self.sop = generate_uid()
        self.data = dataset_bytes(study, series, self.sop, implicit)
        if deflated:
            deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            self.data = deflater.compress(self.data) + deflater.flush()
            self.data += b"\x00" * (len(self.data) % 2)


# -- the two associations ----------------------------------------------------------------------


MOVE_REQUEST = AssociationRequest(
    OUR_AET, PACS, (ContextProposal(VERIFICATION), ContextProposal(STUDY_ROOT_MOVE))
)
MOVE_POLICY_CONTEXTS = (ContextProposal(VERIFICATION), ContextProposal(STUDY_ROOT_MOVE))


class MoveAssociation:
    """Our pooled association to the PACS, on a StringTransport: what we sent, and
    C-MOVE-RSPs fed back by hand."""

    def __init__(self, case: ULTestCase) -> None:
        self.connection = DimseConnection(case.clock)
        self.proto = ULProtocol(case.clock, self.connection, request=MOVE_REQUEST, artim_timeout=ARTIM)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        policy = AcceptorPolicy(PACS, MOVE_POLICY_CONTEXTS)
        self.proto.dataReceived(accept_bytes(self.transport.value(), policy))
        self.transport.clear()
        cx = self.proto.context(STUDY_ROOT_MOVE)
        assert cx is not None
        self.context_id = cx.context_id

    def sent(self) -> list[tuple[int, Any, bytes | None]]:
        return messages_written(self.transport.value())

    def move_requests(self) -> list[tuple[Any, Dataset]]:
        out = []
        for _, command, data in self.sent():
            if int(command.CommandField) == commands.C_MOVE_RQ:
                ts = self.proto.contexts[self.context_id].transfer_syntax
                out.append((command, decode_identifier(data, ts)))
        return out

    def cancels(self) -> list[int]:
        return [
            int(c.MessageIDBeingRespondedTo)
            for _, c, _ in self.sent()
            if int(c.CommandField) == commands.C_CANCEL_RQ
        ]

    def respond(
        self, message_id: int, status: int, completed: int = 0, failed: int = 0, remaining: int = 0
    ) -> None:
        fields: dict[str, Any] = {
            "MessageIDBeingRespondedTo": message_id,
            "AffectedSOPClassUID": STUDY_ROOT_MOVE,
            "Status": status,
            "NumberOfCompletedSuboperations": completed,
            "NumberOfFailedSuboperations": failed,
            "NumberOfWarningSuboperations": 0,
        }
        if commands.is_pending(status):
            fields["NumberOfRemainingSuboperations"] = remaining
        self.proto.dataReceived(pdata((self.context_id, 3, command_bytes(commands.C_MOVE_RSP, **fields))))


def store_request(calling: str, syntaxes: tuple[str, ...]) -> AssociationRequest:
    """CT Image Storage, one context per transfer syntax (as PACS propose them)."""
    return AssociationRequest(
        calling, LISTENER, tuple(ContextProposal(CT_IMAGE_STORAGE, (ts,)) for ts in syntaxes)
    )


class StoreAssociation:
    """The PACS's association to our listener, on a StringTransport."""

    def __init__(
        self,
        case: ULTestCase,
        factory: Any,
        calling: str = PACS,
        syntaxes: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE),
        address: IPv4Address = PACS_ADDRESS,
    ) -> None:
        self.proto = factory.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(pdu.encode_associate(store_request(calling, syntaxes).to_primitive()))
        assert split_pdus(self.transport.value())[0][0] == pdu.ASSOCIATE_AC
        self.transport.clear()
        self.next_id = 100

    def context_for(self, transfer_syntax: str) -> int:
        cx = self.proto.context(CT_IMAGE_STORAGE, transfer_syntax)
        assert cx is not None, f"{transfer_syntax} was not accepted"
        return cx.context_id

    def store(
        self,
        instance: Instance,
        originator_id: int | None = None,
        originator_aet: str | None = OUR_AET,
        implicit: bool = False,
        pieces: int = 1,
        finish: bool = True,
        transfer_syntax: str | None = None,
    ) -> int:
        """Send a C-STORE-RQ (and its data set in `pieces` PDUs, all but the last unless
        `finish`); its Message ID."""
        self.next_id += 1
        fields: dict[str, Any] = {
            "MessageID": self.next_id,
            "AffectedSOPClassUID": CT_IMAGE_STORAGE,
            "AffectedSOPInstanceUID": instance.sop,
            "Priority": commands.PRIORITY_MEDIUM,
            "CommandDataSetType": commands.HAS_DATASET,
        }
        if originator_id is not None:
            fields["MoveOriginatorMessageID"] = originator_id
            if originator_aet is not None:
                fields["MoveOriginatorApplicationEntityTitle"] = originator_aet
        cx = self.context_for(transfer_syntax or (IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE))
        self.proto.dataReceived(pdata((cx, 3, command_bytes(commands.C_STORE_RQ, **fields))))
        data = instance.data
        step = max(2, (len(data) // pieces) & ~1)
        cuts = list(range(0, len(data), step))[:pieces]
        chunks = [data[a:b] for a, b in zip(cuts, [*cuts[1:], len(data)], strict=True)]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            if last and not finish:
                self.held = (cx, chunk)
                break
            self.proto.dataReceived(pdata((cx, 2 if last else 0, chunk)))
        return self.next_id

    def finish(self) -> None:
        cx, chunk = self.held
        self.proto.dataReceived(pdata((cx, 2, chunk)))

    def responses(self) -> dict[int, int]:
        """C-STORE-RSP status by the Message ID it answers."""
        return {
            int(c.MessageIDBeingRespondedTo): int(c.Status)
            for _, c, _ in messages_written(self.transport.value())
            if int(c.CommandField) == commands.C_STORE_RSP
        }


class MoveTestCase(ULTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.registry = MoveRegistry(OUR_AET)
        self.factory = listener_factory(LISTENER, self.clock, self.registry, artim_timeout=ARTIM)
        self.study = generate_uid()

    def assertOnlyListenerTimers(self) -> None:
        """Nothing scheduled but the idle timers of the listener's open associations."""
        open_idle = [proto._idle for proto in self.factory.open]
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c not in open_idle], [])

    def start_move(
        self,
        association: MoveAssociation | None = None,
        series: str | None = None,
        instance: str | None = None,
        sink: RecordingSink | None = None,
        study: str | None = None,
        senders: tuple[Sender, ...] = (PACS_SENDER,),
    ) -> tuple[Deferred[Any], MoveOperation, RecordingSink, MoveAssociation]:
        association = association or MoveAssociation(self)
        sink = sink or RecordingSink()
        op = MoveOperation(
            association.connection,
            self.clock,
            aet=PACS,
            timeout=TIMEOUT,
            sink=sink,  # type: ignore[arg-type]
            registry=self.registry,
            destination=LISTENER,
            senders=senders,
            study=study or self.study,
            series=series,
            instance=instance,
        )
        d = Deferred.fromCoroutine(c_move(op))
        return d, op, sink, association


# -- the C-MOVE operation ----------------------------------------------------------------------


class MoveOperationTests(MoveTestCase):
    def test_request_at_the_level_asked_for(self) -> None:
        series, sop = generate_uid(), generate_uid()
        levels: list[tuple[dict[str, str], str]] = [
            ({}, "STUDY"),
            ({"series": series}, "SERIES"),
            ({"series": series, "instance": sop}, "IMAGE"),
        ]
        for args, level in levels:
            d, op, _, association = self.start_move(**args)
            [(command, identifier)] = association.move_requests()
            self.assertEqual(command.MoveDestination, LISTENER)
            self.assertEqual(command.Priority, commands.PRIORITY_MEDIUM)
            self.assertEqual(command.AffectedSOPClassUID, STUDY_ROOT_MOVE)
            self.assertEqual(identifier.QueryRetrieveLevel, level)
            self.assertEqual(identifier.StudyInstanceUID, self.study)
            if level != "STUDY":
                self.assertEqual(identifier.SeriesInstanceUID, series)
            if level == "IMAGE":
                self.assertEqual(identifier.SOPInstanceUID, sop)
            self.assertEqual(self.registry.active, (op,))
            association.respond(op.message_id, commands.SUCCESS)
            self.successResultOf(d)
            self.assertEqual(self.registry.active, ())

    def test_instances_stream_and_the_final_response_ends_it(self) -> None:
        d, op, sink, association = self.start_move()
        store = StoreAssociation(self, self.factory)
        a, b = Instance(self.study, generate_uid()), Instance(self.study, generate_uid(), implicit=True)
        id_a = store.store(a, originator_id=op.message_id, pieces=3)
        association.respond(op.message_id, 0xFF00, completed=1, remaining=1)
        id_b = store.store(b, originator_id=op.message_id, implicit=True)
        self.assertNoResult(d)
        association.respond(op.message_id, commands.SUCCESS, completed=2)
        result = self.successResultOf(d)
        self.assertEqual((result.completed, result.received, result.status), (2, 2, 0))
        self.assertEqual(sink.sops, [a.sop, b.sop])
        self.assertEqual(sink.data(a.sop), a.data)
        self.assertEqual(sink.data(b.sop), b.data)
        self.assertEqual([p.ts for p in sink.parts], [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
        self.assertEqual(store.responses(), {id_a: STORE_SUCCESS, id_b: STORE_SUCCESS})
        # The response paused the listener's association, not ours; let go at the end.
        self.assertEqual(sink.attached, [store.proto, None])
        self.assertOnlyListenerTimers()
        self.assertNoTraceback()

    def test_store_response_waits_for_the_sink(self) -> None:
        d, op, sink, association = self.start_move(sink=RecordingSink(auto_done=False))
        store = StoreAssociation(self, self.factory)
        a = Instance(self.study, generate_uid())
        id_a = store.store(a, originator_id=op.message_id)
        self.assertTrue(sink.parts[0].finished)
        self.assertEqual(store.responses(), {})
        sink.parts[0].done.callback(STORE_SUCCESS)
        self.assertEqual(store.responses(), {id_a: STORE_SUCCESS})
        association.respond(op.message_id, commands.SUCCESS, completed=1)
        self.successResultOf(d)

    def test_final_response_before_the_last_instance_was_handled(self) -> None:
        d, op, sink, association = self.start_move(sink=RecordingSink(auto_done=False))
        store = StoreAssociation(self, self.factory)
        a, b = Instance(self.study, generate_uid()), Instance(self.study, generate_uid())
        store.store(a, originator_id=op.message_id)
        sink.parts[0].done.callback(STORE_SUCCESS)
        # b's data set is still arriving (and then still being written) when the final
        # response comes in on the other association.
        id_b = store.store(b, originator_id=op.message_id, pieces=2, finish=False)
        association.respond(op.message_id, commands.SUCCESS, completed=2)
        self.assertNoResult(d)
        self.assertEqual(self.registry.active, (op,))
        store.finish()
        self.assertNoResult(d)
        sink.parts[1].done.callback(STORE_SUCCESS)
        result = self.successResultOf(d)
        self.assertEqual((result.completed, result.received), (2, 2))
        self.assertEqual(sink.data(b.sop), b.data)
        self.assertEqual(store.responses()[id_b], STORE_SUCCESS)
        self.assertEqual(self.registry.active, ())

    def test_final_response_before_the_last_store_request_arrived(self) -> None:
        d, op, sink, association = self.start_move()
        store = StoreAssociation(self, self.factory)
        a = Instance(self.study, generate_uid())
        association.respond(op.message_id, commands.SUCCESS, completed=1)
        self.assertNoResult(d)
        self.clock.advance(TIMEOUT - TICK)
        store.store(a, originator_id=op.message_id)
        result = self.successResultOf(d)
        self.assertEqual(result.received, 1)
        self.assertEqual(sink.sops, [a.sop])

    def test_instances_reported_stored_never_arrive(self) -> None:
        d, op, _sink, association = self.start_move()
        association.respond(op.message_id, commands.SUCCESS, completed=1)
        self.clock.advance(TIMEOUT)
        error = self.failureResultOf(d, AssociationTimeout).value
        self.assertIn("reported 1 instance(s)", str(error))
        self.assertEqual(aborts(association.transport.value()), [])  # the C-MOVE association is fine
        self.assertEqual(self.registry.active, ())

    def test_timeout_is_fed_by_sub_operations_as_well_as_responses(self) -> None:
        d, op, _sink, association = self.start_move()
        store = StoreAssociation(self, self.factory)
        for _ in range(3):
            self.clock.advance(TIMEOUT - TICK)
            store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        self.clock.advance(TIMEOUT - TICK)
        association.respond(op.message_id, 0xFF00, completed=3, remaining=1)
        self.clock.advance(TIMEOUT - TICK)
        self.assertNoResult(d)
        self.assertEqual(association.transport.disconnecting, False)
        self.clock.advance(TICK)
        self.failureResultOf(d, AssociationTimeout)
        # C-CANCEL, then abort: the PACS's state is unknown after a silence.
        self.assertEqual(association.cancels(), [op.message_id])
        self.assertEqual(len(aborts(association.transport.value())), 1)
        self.assertEqual(self.registry.active, ())

    def test_slow_sink_is_not_a_timeout(self) -> None:
        d, op, sink, association = self.start_move(sink=RecordingSink(auto_done=False))
        store = StoreAssociation(self, self.factory)
        store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        self.clock.advance(TIMEOUT * 5)
        self.assertNoResult(d)
        sink.parts[0].done.callback(STORE_SUCCESS)
        association.respond(op.message_id, commands.SUCCESS, completed=1)
        self.successResultOf(d)

    def test_client_gone_cancels_then_late_stores_are_refused(self) -> None:
        d, op, sink, association = self.start_move()
        store = StoreAssociation(self, self.factory)
        store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(association.cancels(), [op.message_id])
        self.assertEqual(self.registry.active, ())
        late = store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        self.assertEqual(store.responses()[late], STORE_NOT_AUTHORIZED)
        self.assertEqual(len(sink.parts), 1)
        # The PACS confirms the cancel: the operation ends, nothing is left scheduled.
        association.respond(op.message_id, commands.CANCEL, completed=1, failed=1)
        self.successResultOf(op.ended)
        self.assertOnlyListenerTimers()

    def test_client_gone_after_the_final_response_sends_no_cancel(self) -> None:
        # The PACS has finished: a C-CANCEL now names an operation it no longer has (and
        # Orthanc logs it as an error).  The instance still on its way is refused.
        d, op, sink, association = self.start_move()
        association.respond(op.message_id, commands.SUCCESS, completed=1)
        self.assertEqual(op.state, "draining")
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(association.cancels(), [])
        self.assertEqual(self.registry.active, ())
        self.successResultOf(op.ended)
        store = StoreAssociation(self, self.factory)
        late = store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        self.assertEqual(store.responses(), {late: STORE_NOT_AUTHORIZED})
        self.assertEqual(sink.parts, [])
        self.assertOnlyListenerTimers()

    def test_cancel_ignored_aborts(self) -> None:
        d, op, _sink, association = self.start_move()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(aborts(association.transport.value()), [])
        self.clock.advance(TIMEOUT)
        self.assertEqual(len(aborts(association.transport.value())), 1)
        self.successResultOf(op.ended)

    def test_late_store_after_the_move_ended_is_refused(self) -> None:
        d, op, sink, association = self.start_move()
        association.respond(op.message_id, commands.SUCCESS)
        self.successResultOf(d)
        store = StoreAssociation(self, self.factory)
        late = store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        without = store.store(Instance(self.study, generate_uid()))
        self.assertEqual(store.responses(), {late: STORE_NOT_AUTHORIZED, without: STORE_NOT_AUTHORIZED})
        self.assertEqual(sink.parts, [])
        refused = [e for e in self.events if "refused C-STORE" in e.get("log_format", "")]
        self.assertEqual(len(refused), 2)

    def test_destination_unknown_says_so(self) -> None:
        d, op, _sink, association = self.start_move()
        association.respond(op.message_id, MOVE_DESTINATION_UNKNOWN)
        error = self.failureResultOf(d, MoveDestinationUnknown).value
        self.assertEqual(http_status(error), 502)
        self.assertIn(f"does not know the move destination '{LISTENER}'", str(error))

    def test_failure_and_warning_statuses(self) -> None:
        d, op, _sink, association = self.start_move()
        association.respond(op.message_id, 0xA702, failed=2)
        error = self.failureResultOf(d, RetrieveFailed).value
        self.assertIn("C-MOVE with status 0xA702", str(error))
        d, op, _sink, association = self.start_move()
        store = StoreAssociation(self, self.factory)
        store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        association.respond(op.message_id, 0xB000, completed=1, failed=1)
        self.assertEqual(self.successResultOf(d).failed, 1)

    def test_message_ids_are_unique_across_associations(self) -> None:
        ops = [self.start_move()[1] for _ in range(3)]
        self.assertEqual(len({op.message_id for op in ops}), 3)


# -- pausing the listener's associations --------------------------------------------------------


class ThrottledSink(ResponseThrottle):
    """A RecordingSink paused and resumed as the HTTP response is by its transport."""

    def __init__(self) -> None:
        super().__init__()
        self.recording = RecordingSink()

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> RecordingPart:
        return self.recording.begin(sop_class_uid, sop_instance_uid, transfer_syntax)


def reading(store: StoreAssociation) -> bool:
    return store.transport.producerState != "paused"


class PauseTests(MoveTestCase):
    """A slow HTTP client pauses the association its instances arrive on, and only that
    client's pause holds it: the association reads again once no response wants it paused."""

    def test_instances_moving_to_another_association_leave_the_first_reading(self) -> None:
        sink = ThrottledSink()
        d, op, _, association = self.start_move(sink=sink)  # type: ignore[arg-type]
        first, second = StoreAssociation(self, self.factory), StoreAssociation(self, self.factory)
        a, b = Instance(self.study, generate_uid()), Instance(self.study, generate_uid())
        id_a = first.store(a, originator_id=op.message_id)
        sink.pauseProducing()
        self.assertFalse(reading(first))
        # The PACS sends the next instance over another association (as some do, e.g. per
        # SOP class); the response's pause follows, and the first one reads again, or
        # whatever the PACS still sends there would never get a C-STORE-RSP.
        id_b = second.store(b, originator_id=op.message_id, pieces=2)
        self.assertTrue(reading(first))
        self.assertFalse(reading(second))
        self.assertNotIn(id_b, second.responses())
        sink.resumeProducing()
        self.assertTrue(reading(second))
        self.assertEqual(second.responses(), {id_b: STORE_SUCCESS})
        self.assertEqual(first.responses(), {id_a: STORE_SUCCESS})
        association.respond(op.message_id, commands.SUCCESS, completed=2)
        self.assertEqual(self.successResultOf(d).received, 2)
        self.assertEqual(sink.recording.sops, [a.sop, b.sop])

    def test_two_moves_on_one_association_each_hold_their_pause(self) -> None:
        slow, fast = ThrottledSink(), ThrottledSink()
        d1, op1, _, association1 = self.start_move(sink=slow)  # type: ignore[arg-type]
        d2, op2, _, association2 = self.start_move(sink=fast)  # type: ignore[arg-type]
        store = StoreAssociation(self, self.factory)
        store.store(Instance(self.study, generate_uid()), originator_id=op1.message_id)
        store.store(Instance(self.study, generate_uid()), originator_id=op2.message_id)
        slow.pauseProducing()
        fast.pauseProducing()
        fast.resumeProducing()
        # The slow client still holds it: reading on would buffer its response without bound.
        self.assertFalse(reading(store))
        # Nor does the other move's end let go of it.
        association2.respond(op2.message_id, commands.SUCCESS, completed=1)
        self.successResultOf(d2)
        self.assertFalse(reading(store))
        slow.resumeProducing()
        self.assertTrue(reading(store))
        slow.pauseProducing()
        association1.respond(op1.message_id, commands.SUCCESS, completed=1)
        self.successResultOf(d1)
        # The move ended: the association may serve others, this response lets go of it.
        self.assertTrue(reading(store))
        self.assertOnlyListenerTimers()

    def test_pause_before_the_first_instance_and_client_gone_while_paused(self) -> None:
        sink = ThrottledSink()
        d, op, _, association = self.start_move(sink=sink)  # type: ignore[arg-type]
        sink.pauseProducing()
        store = StoreAssociation(self, self.factory)
        id_a = store.store(Instance(self.study, generate_uid()), originator_id=op.message_id, pieces=2)
        self.assertFalse(reading(store))
        self.assertEqual(store.responses(), {})
        sink.stopProducing()
        self.assertTrue(reading(store))
        self.assertEqual(store.responses(), {id_a: STORE_SUCCESS})
        association.respond(op.message_id, commands.SUCCESS, completed=1)
        self.successResultOf(d)


# -- correlation -------------------------------------------------------------------------------


class CorrelationTests(MoveTestCase):
    def two_series_moves(self) -> tuple[Any, Any]:
        s1, s2 = generate_uid(), generate_uid()
        first = self.start_move(series=s1)
        second = self.start_move(series=s2)
        return (first, s1), (second, s2)

    def finish(self, *moves: Any, completed: int) -> None:
        for d, op, _, association in moves:
            association.respond(op.message_id, commands.SUCCESS, completed=completed)
            self.successResultOf(d)

    def test_two_concurrent_series_by_originator_message_id(self) -> None:
        ((m1, s1), (m2, s2)) = self.two_series_moves()
        store = StoreAssociation(self, self.factory)
        i1 = [Instance(self.study, s1) for _ in range(2)]
        i2 = [Instance(self.study, s2) for _ in range(2)]
        for a, b in zip(i1, i2, strict=True):
            store.store(b, originator_id=m2[1].message_id)
            store.store(a, originator_id=m1[1].message_id)
        self.assertEqual(m1[2].sops, [i.sop for i in i1])
        self.assertEqual(m2[2].sops, [i.sop for i in i2])
        self.finish(m1, m2, completed=2)

    def test_two_concurrent_series_without_originator_fields(self) -> None:
        ((m1, s1), (m2, s2)) = self.two_series_moves()
        store = StoreAssociation(self, self.factory)
        i1 = [Instance(self.study, s1, implicit=True) for _ in range(2)]
        i2 = [Instance(self.study, s2) for _ in range(2)]
        for a, b in zip(i1, i2, strict=True):
            store.store(b, pieces=4)
            store.store(a, implicit=True, pieces=3)
        self.assertEqual(m1[2].sops, [i.sop for i in i1])
        self.assertEqual(m2[2].sops, [i.sop for i in i2])
        # Nothing lost while the UIDs were looked for.
        for i in i1:
            self.assertEqual(m1[2].data(i.sop), i.data)
        self.assertEqual(set(store.responses().values()), {STORE_SUCCESS})
        self.finish(m1, m2, completed=2)

    def test_sub_operations_from_another_calling_aet(self) -> None:
        # A PACS that sends from another AE title is configured so (wado-rs.senders).
        s1, s2 = generate_uid(), generate_uid()
        also = (PACS_SENDER, Sender("PACS_STORE", PACS_SENDER.networks))
        m1, m2 = self.start_move(series=s1, senders=also), self.start_move(series=s2, senders=also)
        store = StoreAssociation(self, self.factory, calling="PACS_STORE")
        a, b = Instance(self.study, s1), Instance(self.study, s2)
        store.store(a)  # UIDs
        store.store(b, originator_id=m2[1].message_id)  # originator fields
        self.assertEqual(m1[2].sops, [a.sop])
        self.assertEqual(m2[2].sops, [b.sop])
        self.finish(m1, m2, completed=1)

    def test_calling_aet_of_another_pacs_with_moves_is_not_matched(self) -> None:
        _d, op, sink, _association = self.start_move()
        other = self.start_move(study=generate_uid(), senders=(Sender("OTHER", PACS_SENDER.networks),))
        other[1].pacs_aet = "OTHER"
        store = StoreAssociation(self, self.factory, calling="OTHER")
        rq = store.store(Instance(self.study, generate_uid()), originator_id=op.message_id)
        self.assertEqual(store.responses(), {rq: STORE_NOT_AUTHORIZED})
        self.assertEqual(sink.parts, [])

    def test_unmatched_uids_and_foreign_originator_are_refused(self) -> None:
        _d, op, sink, _association = self.start_move(series=generate_uid())
        store = StoreAssociation(self, self.factory)
        other_series = store.store(Instance(self.study, generate_uid()))
        other_study = store.store(Instance(generate_uid(), op.series))
        foreign = store.store(
            Instance(self.study, op.series), originator_id=op.message_id, originator_aet="SOMEONE"
        )
        unknown_id = store.store(Instance(self.study, op.series), originator_id=op.message_id + 1)
        self.assertEqual(
            store.responses(),
            dict.fromkeys((other_series, other_study, foreign, unknown_id), STORE_NOT_AUTHORIZED),
        )
        self.assertEqual(sink.parts, [])
        ok = store.store(Instance(self.study, op.series))
        self.assertEqual(store.responses()[ok], STORE_SUCCESS)

    def test_instance_level_and_duplicates(self) -> None:
        series = generate_uid()
        wanted = Instance(self.study, series)
        m1 = self.start_move(series=series, instance=wanted.sop)
        m2 = self.start_move(series=series, instance=wanted.sop)
        store = StoreAssociation(self, self.factory)
        first = store.store(wanted)
        second = store.store(wanted)
        third = store.store(wanted)
        # Two retrieves of the same instance: each gets it once; a third copy is refused.
        self.assertEqual(m1[2].sops, [wanted.sop])
        self.assertEqual(m2[2].sops, [wanted.sop])
        self.assertEqual(
            store.responses(), {first: STORE_SUCCESS, second: STORE_SUCCESS, third: STORE_NOT_AUTHORIZED}
        )

    def test_compressed_and_deflated_by_their_uids(self) -> None:
        factory = listener_factory(
            LISTENER, self.clock, self.registry, uncompressed=False, artim_timeout=ARTIM
        )
        ((m1, s1), (m2, s2)) = self.two_series_moves()
        store = StoreAssociation(
            self, factory, syntaxes=(JPEG_2000_LOSSLESS, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE)
        )
        # Encapsulated syntaxes are Explicit VR LE up to the pixel data; deflated ones are
        # inflated to find the UIDs; both are delivered as they came.
        j2k, deflated = Instance(self.study, s2), Instance(self.study, s1, deflated=True)
        store.store(j2k, transfer_syntax=JPEG_2000_LOSSLESS, pieces=3)
        store.store(deflated, transfer_syntax=DEFLATED_EXPLICIT_VR_LE, pieces=2)
        self.assertEqual([(p.sop, p.ts) for p in m2[2].parts], [(j2k.sop, JPEG_2000_LOSSLESS)])
        self.assertEqual([(p.sop, p.ts) for p in m1[2].parts], [(deflated.sop, DEFLATED_EXPLICIT_VR_LE)])
        self.assertEqual(m2[2].data(j2k.sop), j2k.data)
        self.assertEqual(m1[2].data(deflated.sop), deflated.data)
        self.finish(m1, m2, completed=1)

    def test_compressed_contexts_refused_on_an_uncompressed_listener(self) -> None:
        store = StoreAssociation(self, self.factory, syntaxes=(JPEG_2000_LOSSLESS, EXPLICIT_VR_LE))
        self.assertIsNone(store.proto.context(CT_IMAGE_STORAGE, JPEG_2000_LOSSLESS))
        self.assertIsNotNone(store.proto.context(CT_IMAGE_STORAGE, EXPLICIT_VR_LE))

    def test_no_move_at_all(self) -> None:
        store = StoreAssociation(self, self.factory)
        rq = store.store(Instance(self.study, generate_uid()))
        self.assertEqual(store.responses(), {rq: STORE_NOT_AUTHORIZED})
        self.assertNoTraceback()

    def test_move_ending_while_uids_are_looked_for(self) -> None:
        d, op, _sink, association = self.start_move()
        store = StoreAssociation(self, self.factory)
        rq = store.store(Instance(self.study, generate_uid()), pieces=1, finish=False)
        association.respond(op.message_id, commands.SUCCESS)
        self.successResultOf(d)
        store.finish()
        self.assertEqual(store.responses(), {rq: STORE_NOT_AUTHORIZED})


# -- the listeners' negotiation --------------------------------------------------------------


def proposal(*contexts: tuple[str, tuple[str, ...]]) -> A_ASSOCIATE:
    request = AssociationRequest(PACS, LISTENER, tuple(ContextProposal(a, t) for a, t in contexts))
    return request.to_primitive()


class ListenerNegotiationTests(ULTestCase):
    def accepted(self, uncompressed: bool, *contexts: tuple[str, tuple[str, ...]]) -> list[str | None]:
        """The transfer syntax accepted for each proposed context (None: rejected)."""
        decision = listener_policy(LISTENER, uncompressed, 16384).decide(proposal(*contexts))
        primitive = decision.primitive  # type: ignore[union-attr]
        results: list[PresentationContext] = primitive.presentation_context_definition_results_list
        return [str(cx.transfer_syntax[0]) if cx.result == 0 else None for cx in results]

    def test_compressed_only_when_uncompressed_is_false(self) -> None:
        contexts = [(CT_IMAGE_STORAGE, (ts,)) for ts in COMPRESSED_SYNTAXES]
        self.assertEqual(self.accepted(True, *contexts), [None] * len(COMPRESSED_SYNTAXES))
        self.assertEqual(self.accepted(False, *contexts), list(COMPRESSED_SYNTAXES))

    def test_uncompressed_preferred_within_a_context(self) -> None:
        for uncompressed in (True, False):
            self.assertEqual(
                self.accepted(
                    uncompressed,
                    (CT_IMAGE_STORAGE, (IMPLICIT_VR_LE, EXPLICIT_VR_LE)),
                    (MR_IMAGE_STORAGE, (JPEG_2000_LOSSLESS, IMPLICIT_VR_LE)),
                    (CT_IMAGE_STORAGE, (JPEG_BASELINE, JPEG_2000_LOSSLESS)),
                ),
                [EXPLICIT_VR_LE, IMPLICIT_VR_LE, None if uncompressed else JPEG_2000_LOSSLESS],
            )

    def test_any_storage_sop_class_but_no_other_service(self) -> None:
        newer = "1.2.840.10008.5.1.4.1.1.9999.1"  # under the storage root, unknown to pynetdicom
        private = "1.3.12.2.1107.5.9.1"  # a vendor's private storage class
        find = "1.2.840.10008.5.1.4.1.2.2.1"
        self.assertEqual(
            self.accepted(
                True,
                (VERIFICATION, (IMPLICIT_VR_LE,)),
                (newer, (EXPLICIT_VR_LE,)),
                (private, (IMPLICIT_VR_LE,)),
                (find, (EXPLICIT_VR_LE,)),
            ),
            [IMPLICIT_VR_LE, EXPLICIT_VR_LE, IMPLICIT_VR_LE, None],
        )

    def test_wrong_called_aet_is_rejected(self) -> None:
        request = AssociationRequest(PACS, "SOMEONE", (ContextProposal(CT_IMAGE_STORAGE),))
        decision = listener_policy(LISTENER, True, 16384).decide(request.to_primitive())
        self.assertEqual(decision.reason, 7)  # type: ignore[union-attr]

    def test_a_proposal_seen_before_gets_the_same_answer(self) -> None:
        policy = listener_policy(LISTENER, True, 16384)
        ct = (CT_IMAGE_STORAGE, (IMPLICIT_VR_LE, EXPLICIT_VR_LE))
        first = policy.decide(proposal(ct))
        again = policy.decide(proposal(ct))
        assert isinstance(first, Acceptance) and isinstance(again, Acceptance)
        self.assertEqual(again.contexts, first.contexts)
        self.assertIsNot(again.contexts, first.contexts)
        # What differs is decided on its own: another context, another calling AE title
        # (which the A-ASSOCIATE-AC repeats), another called AE title.
        mr = policy.decide(proposal(ct, (MR_IMAGE_STORAGE, (EXPLICIT_VR_LE,))))
        assert isinstance(mr, Acceptance)
        self.assertEqual(len(mr.contexts), 2)
        other = AssociationRequest("OTHERPACS", LISTENER, (ContextProposal(*ct),))
        answer = policy.decide(other.to_primitive())
        assert isinstance(answer, Acceptance)
        self.assertEqual(answer.primitive.calling_ae_title.strip(), "OTHERPACS")
        wrong = AssociationRequest(PACS, "SOMEONE", (ContextProposal(*ct),))
        self.assertIsInstance(policy.decide(wrong.to_primitive()), Rejection)
        self.assertIsInstance(policy.decide(wrong.to_primitive()), Rejection)
        self.assertIsInstance(policy.decide(proposal(ct)), Acceptance)


# -- through DimseBackend: the pool, and wado-rs.mode -----------------------------------------


class MoveRequest:
    """One C-MOVE-RQ the in-memory PACS received; the test answers it through this."""

    def __init__(self, connection: DimseConnection, message: Any) -> None:
        self.connection = connection
        self.message = message
        self.message_id = int(message.command.MessageID)
        self.destination = str(message.command.MoveDestination)
        self.identifier: Dataset | None = None

    def received(self, data: bytes) -> None:
        assert self.connection.association is not None
        ts = self.connection.association.contexts[self.message.context_id].transfer_syntax
        self.identifier = decode_identifier(data, ts)

    def respond(self, status: int, completed: int = 0, failed: int = 0) -> None:
        self.connection.respond(
            self.message.context_id,
            commands.command(
                commands.C_MOVE_RSP,
                MessageIDBeingRespondedTo=self.message_id,
                AffectedSOPClassUID=STUDY_ROOT_MOVE,
                Status=status,
                NumberOfCompletedSuboperations=completed,
                NumberOfFailedSuboperations=failed,
                NumberOfWarningSuboperations=0,
            ),
        )


class MoveSCP:
    """Study Root C-MOVE SCP that records requests and C-CANCELs and answers when told."""

    def __init__(self) -> None:
        self.requests: list[MoveRequest] = []
        self.cancels: list[int] = []

    def request_received(self, connection: DimseConnection, message: Any) -> Any:
        if message.command_field == commands.C_CANCEL_RQ:
            self.cancels.append(int(message.command.MessageIDBeingRespondedTo))
            return None
        request = MoveRequest(connection, message)
        self.requests.append(request)
        return BufferConsumer(request.received)


class BackendMoveTests(PoolTestCase):
    """DimseBackend.retrieve with ``retrieve: move``: C-MOVE on a pooled association, and at most
    one C-MOVE at a time per AET in ``mode: sequential``."""

    def setUp(self) -> None:
        super().setUp()
        self.move_scp = MoveSCP()
        self.with_find = False  # whether the PACS answers C-FIND too
        self.registry = MoveRegistry(OUR_AET)
        self.study = generate_uid()

    def connect(self, policy: Any = None) -> Any:
        # As PoolTestCase's, with a C-MOVE SCP for a PACS.
        factory = self._next_client()
        wrapper = factory.buildProtocol(IPv4Address("TCP", HOST, PORT))
        handlers: dict[int, Any] = {
            commands.C_ECHO_RQ: EchoSCP(),
            commands.C_MOVE_RQ: self.move_scp,
            commands.C_CANCEL_RQ: self.move_scp,
        }
        if self.with_find:
            handlers[commands.C_FIND_RQ] = self.scp
        acceptor_user = DimseConnection(self.reactor, handlers)
        acceptor = ULProtocol(self.reactor, acceptor_user, policy=policy or POLICY, artim_timeout=ARTIM)
        ours = RecordingTransport(wrapper, isServer=False)
        theirs = RecordingTransport(acceptor, isServer=True)
        pump = iosim.connect(acceptor, theirs, wrapper, ours, clock=self.reactor)
        link = Link(wrapper._wrappedProtocol, acceptor, acceptor_user, ours, theirs, pump)
        self.links.append(link)
        self.flush()
        return link

    def move_backend(self, mode: str, retrieve: str = "move", uncompressed: bool = True) -> DimseBackend:
        config = parse_config(
            {
                "server": {"aet": CALLING, "dimse": [{"aet": LISTENER, "uncompressed": uncompressed}]},
                "aets": [
                    {
                        "aet": CALLED,
                        "host": HOST,
                        "port": PORT,
                        "pool": {"size": 2, "timeout": 2500, "idle-timeout": int(IDLE * 1000)},
                        "wado-rs": {
                            "timeout": 10_000,
                            "mode": mode,
                            "receivers": [LISTENER],
                            "retrieve": retrieve,
                        },
                    }
                ],
            },
            resolve=lambda host: None,
        )
        self.connect_timeout = 2.5
        receiver = MoveReceiver(self.registry, LISTENER, receivable_syntaxes(uncompressed))
        backend = DimseBackend(config.aets[0], CALLING, self.reactor, receiver)
        self.pools.append(backend.pool)
        return backend

    def test_retrieve_syntaxes_follow_the_receiver(self) -> None:
        plain = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        self.assertEqual(self.move_backend("concurrent").retrieve_syntaxes, plain)
        compressed = self.move_backend("concurrent", uncompressed=False).retrieve_syntaxes
        self.assertIn(JPEG_2000_LOSSLESS, compressed)
        by_get = self.move_backend("concurrent", retrieve="get", uncompressed=False)
        self.assertEqual(by_get.retrieve_syntaxes, plain)

    def test_destination_unknown_is_not_taken_for_a_missing_study(self) -> None:
        # A801 comes with nothing moved, as a failure for an unknown UID does from some
        # PACS; but the PACS's configuration is at fault, so no C-FIND asks whether the
        # study exists (this PACS has no C-FIND SCP: asking would abort the association).
        backend = self.move_backend("concurrent")
        d = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.connect()
        self.move_scp.requests[0].respond(MOVE_DESTINATION_UNKNOWN)
        self.flush()
        self.failureResultOf(d, MoveDestinationUnknown)
        self.assertStats(backend.pool, idle=1)

    def test_unable_to_process_for_a_study_the_pacs_has_names_the_likely_cause(self) -> None:
        # A stock Orthanc answers 0xC000, not A801, for a destination it does not know.
        self.with_find = True
        self.scp.auto = [match(0)]  # the study exists
        backend = self.move_backend("concurrent")
        d = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.connect()
        self.move_scp.requests[0].respond(0xC000)
        self.flush()
        error = self.failureResultOf(d, MoveDestinationUnknown).value
        self.assertEqual(http_status(error), 502)
        for text in (
            "0xC000",
            f"most likely does not know the move destination '{LISTENER}'",
            "DicomModalities",
            "wado-rs.retrieve: get",
        ):
            self.assertIn(text, str(error))
        [line] = [e for e in self.events if e.get("log_namespace") == "dicomrst.pacs"]
        self.assertEqual(line["why"], str(error))

    def test_unable_to_process_for_a_missing_study_is_404(self) -> None:
        self.with_find = True
        self.scp.auto = []
        backend = self.move_backend("concurrent")
        d = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.connect()
        self.move_scp.requests[0].respond(0xC000)
        self.flush()
        self.failureResultOf(d, NotFound)

    def test_concurrent_moves_go_out_at_once(self) -> None:
        backend = self.move_backend("concurrent")
        sinks = [RecordingSink(), RecordingSink()]
        ds = [backend.retrieve(self.study, generate_uid(), None, sink=sink) for sink in sinks]
        self.connect()
        self.connect()
        self.assertEqual(len(self.move_scp.requests), 2)
        self.assertEqual({r.destination for r in self.move_scp.requests}, {LISTENER})
        self.assertEqual(len({r.message_id for r in self.move_scp.requests}), 2)
        levels = [r.identifier.QueryRetrieveLevel for r in self.move_scp.requests if r.identifier]
        self.assertEqual(levels, ["SERIES"] * 2)
        for request in self.move_scp.requests:
            request.respond(commands.SUCCESS)
        self.flush()
        for d in ds:
            self.successResultOf(d)

    def test_sequential_mode_queues_the_second_move(self) -> None:
        backend = self.move_backend("sequential")
        first = backend.retrieve(self.study, generate_uid(), None, sink=RecordingSink())
        second = backend.retrieve(self.study, generate_uid(), None, sink=RecordingSink())
        self.connect()
        # The second waits for the first without even taking an association.
        self.assertEqual(len(self.move_scp.requests), 1)
        self.assertEqual(self.pending_connects(), 0)
        self.move_scp.requests[0].respond(commands.SUCCESS)
        self.flush()
        self.successResultOf(first)
        # It then runs on the association the first gave back.
        self.assertEqual(len(self.move_scp.requests), 2)
        self.assertEqual(self.pending_connects(), 0)
        self.move_scp.requests[1].respond(commands.SUCCESS)
        self.flush()
        self.successResultOf(second)

    def test_sequential_mode_waits_for_an_abandoned_move_to_end(self) -> None:
        backend = self.move_backend("sequential")
        first = backend.retrieve(self.study, None, None, sink=RecordingSink())
        second = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.connect()
        first.cancel()
        self.failureResultOf(first)
        self.flush()
        self.assertEqual(self.move_scp.cancels, [self.move_scp.requests[0].message_id])
        # Until the PACS confirms the cancel its sub-operations may still come: the next
        # move must not start and meet them.
        self.assertEqual(len(self.move_scp.requests), 1)
        self.move_scp.requests[0].respond(commands.CANCEL)
        self.flush()
        self.assertEqual(len(self.move_scp.requests), 2)
        self.move_scp.requests[1].respond(commands.SUCCESS)
        self.flush()
        self.successResultOf(second)

    def test_sequential_mode_survives_a_move_that_never_started(self) -> None:
        # A PACS that accepts the association but not Study Root C-MOVE: the request
        # cannot even be sent.  The lock it held must still be released, or every later
        # retrieve for this AET would wait forever.
        contexts = tuple(c for c in POOL_CONTEXTS if c.abstract_syntax != STUDY_ROOT_MOVE)
        no_move = AcceptorPolicy(CALLED, contexts)
        backend = self.move_backend("sequential")
        first = backend.retrieve(self.study, None, None, sink=RecordingSink())
        second = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.connect(no_move)
        self.flush()
        self.failureResultOf(first, UpstreamError)
        self.assertEqual(self.move_scp.requests, [])
        # The second got the lock (it asks for an association) and fails the same way
        # rather than hanging.
        self.assertEqual(self.pending_connects(), 1)
        self.connect(no_move)
        self.flush()
        self.failureResultOf(second, UpstreamError)

    def test_queued_move_can_be_cancelled(self) -> None:
        backend = self.move_backend("sequential")
        first = backend.retrieve(self.study, None, None, sink=RecordingSink())
        second = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.connect()
        second.cancel()
        self.failureResultOf(second)
        self.move_scp.requests[0].respond(commands.SUCCESS)
        self.flush()
        self.successResultOf(first)
        self.assertEqual(len(self.move_scp.requests), 1)
        third = backend.retrieve(self.study, None, None, sink=RecordingSink())
        self.flush()
        self.assertEqual(len(self.move_scp.requests), 2)
        self.move_scp.requests[1].respond(commands.SUCCESS)
        self.flush()
        self.successResultOf(third)


# -- the service tree ------------------------------------------------------------------------


class WiringTests(ULTestCase):
    """tap.build: the listeners and the move backends share one registry."""

    def build(self, wado: dict[str, Any], uncompressed: bool = True, idle_timeout: int = 60_000) -> Any:
        from twisted.internet.testing import MemoryReactorClock

        from dicomrst.tap import BackendsService, DimseListenerService, build

        config = parse_config(
            {
                "server": {
                    "aet": OUR_AET,
                    "dimse": [
                        {"aet": "OTHER", "port": 7002},
                        {
                            "aet": LISTENER,
                            "port": 7001,
                            "uncompressed": uncompressed,
                            "idle-timeout": idle_timeout,
                        },
                    ],
                },
                "aets": [{"aet": PACS, "host": HOST, "port": PORT, "wado-rs": wado}],
            },
            resolve=lambda host: None,
        )
        top = build(config, MemoryReactorClock())
        backend = next(s for s in top if isinstance(s, BackendsService)).backends[PACS]
        factories = {s.factory.aet: s.factory for s in top if isinstance(s, DimseListenerService)}
        return backend, factories

    def test_move_to_the_first_receiver(self) -> None:
        backend, factories = self.build({"retrieve": "move", "receivers": [LISTENER, "OTHER"]}, False)
        self.assertEqual(backend.receiver.aet, LISTENER)
        self.assertIn(JPEG_2000_LOSSLESS, backend.retrieve_syntaxes)
        for factory in factories.values():
            scp = factory.handlers[commands.C_STORE_RQ]
            self.assertIs(scp.registry, backend.receiver.registry)
            self.assertEqual(scp.aet, factory.aet)
        self.assertEqual(factories[LISTENER].policy.storage_syntaxes, backend.retrieve_syntaxes)
        self.assertEqual(factories["OTHER"].policy.storage_syntaxes, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))
        # The PACS itself delivers its sub-operations, unless wado-rs.senders says otherwise;
        # each listener times its associations with its own idle-timeout.
        self.assertEqual(backend.senders, (Sender(PACS, (ip_network(HOST),)),))
        self.assertEqual(factories[LISTENER].idle_timeout, 60.0)

    def test_configured_senders_and_listener_idle_timeout(self) -> None:
        senders = [{"aet": "PYSTORE"}, {"host": "10.1.0.0/16"}]
        backend, factories = self.build({"receivers": [LISTENER], "senders": senders}, idle_timeout=2500)
        self.assertEqual(
            backend.senders,
            (Sender("PYSTORE", (ip_network(HOST),)), Sender(PACS, (ip_network("10.1.0.0/16"),))),
        )
        self.assertEqual(factories[LISTENER].idle_timeout, 2.5)

    def test_get_or_no_receiver_retrieves_with_c_get(self) -> None:
        backend, _ = self.build({"retrieve": "get", "receivers": [LISTENER]})
        self.assertIsNone(backend.receiver)
        self.assertEqual(self.warnings(), [])
        backend, _ = self.build({"retrieve": "move"})
        self.assertIsNone(backend.receiver)
        [warning] = self.warnings()
        self.assertIn("aets[0].wado-rs.receivers", warning)

    def warnings(self) -> list[str]:
        from twisted.logger import LogLevel, formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]

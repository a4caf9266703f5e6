"""ULProtocol (dicomrst.ul.protocol): negotiation, timers, protocol errors and release.

Both ends run in memory (twisted.test.iosim) or one end is driven by hand-built PDUs
over a StringTransport; time is a task.Clock.
"""

from __future__ import annotations

import struct

from pynetdicom.tests import encoded_pdu_items as golden
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from dicomrst.common.uids import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LE,
    VERIFICATION,
)
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.ul import pdu
from dicomrst.ul.errors import (
    AssociationAborted,
    AssociationClosed,
    AssociationRejected,
    AssociationTimeout,
    ConnectionLost,
    NoAcceptableContext,
)
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal
from dicomrst.ul.protocol import ULProtocol
from tests.support.fakes import KernelTransport
from tests.support.ul import (
    ARTIM,
    CT_IMAGE_STORAGE,
    RELEASE_RP,
    RELEASE_RQ,
    TICK,
    RecordingHandler,
    SilentHandler,
    ULTestCase,
    abort_pdu,
    aborts,
    associate_rq,
    echo_rq,
    header,
    pdata,
    pdvs_written,
    policy,
    split_pdus,
    verification_request,
)

PROVIDER = pdu.SOURCE_SERVICE_PROVIDER


def _ac_primitive(data: bytes):  # type: ignore[no-untyped-def]
    ((kind, body),) = [p for p in split_pdus(data) if p[0] == pdu.ASSOCIATE_AC]
    return pdu.decode_associate(kind, body)


class NegotiationTests(ULTestCase):
    def test_verification_accepted_with_the_acceptors_preferred_transfer_syntax(self) -> None:
        for preferred in ((IMPLICIT_VR_LE, EXPLICIT_VR_LE), (EXPLICIT_VR_LE, IMPLICIT_VR_LE)):
            pair = self.pair(
                request=verification_request(),  # proposes Explicit, then Implicit
                acceptor_policy=policy(contexts=(ContextProposal(VERIFICATION, preferred),)),
            )
            pair.flush()
            self.assertIs(self.successResultOf(pair.requestor.whenEstablished), pair.requestor)
            self.assertIs(self.successResultOf(pair.acceptor.whenEstablished), pair.acceptor)
            self.assertEqual((pair.requestor.state, pair.acceptor.state), ("Sta6", "Sta6"))
            (rq_cx,) = pair.requestor.contexts.values()
            (ac_cx,) = pair.acceptor.contexts.values()
            self.assertEqual(rq_cx.transfer_syntax, preferred[0])
            self.assertEqual(ac_cx.transfer_syntax, preferred[0])
            self.assertEqual((rq_cx.context_id, rq_cx.abstract_syntax), (1, VERIFICATION))
            self.assertEqual((rq_cx.as_scu, rq_cx.as_scp), (True, False))
            self.assertEqual((ac_cx.as_scu, ac_cx.as_scp), (False, True))
            self.assertEqual(pair.requestor.context(VERIFICATION), rq_cx)
            self.assertIsNone(pair.requestor.context(VERIFICATION, EXPLICIT_VR_BE))
            self.assertEqual(pair.acceptor.calling_aet, "SCU")
            self.assertEqual(pair.acceptor.called_aet, "SCP")

    def _refused(self, request: AssociationRequest, expected_result: int) -> None:
        pair = self.pair(request=request)
        pair.flush()
        error = self.failureResultOf(pair.requestor.whenEstablished, NoAcceptableContext)
        self.assertIn("SCP", str(error.value))
        ac = _ac_primitive(pair.acceptor_transport.value())
        (cx,) = ac.presentation_context_definition_results_list
        self.assertEqual(cx.result, expected_result)
        # The requestor does not sit on a useless association: it aborts and both ends close.
        self.assertEqual(aborts(pair.requestor_transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertEqual((pair.requestor.state, pair.acceptor.state), ("Sta1", "Sta1"))
        self.successResultOf(pair.requestor.whenClosed)
        self.successResultOf(pair.acceptor.whenClosed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abstract_syntax_not_supported(self) -> None:
        self._refused(AssociationRequest("SCU", "SCP", (ContextProposal(CT_IMAGE_STORAGE),)), 3)

    def test_no_common_transfer_syntax(self) -> None:
        self._refused(
            AssociationRequest("SCU", "SCP", (ContextProposal(VERIFICATION, (EXPLICIT_VR_BE,)),)), 4
        )

    def _roles(self, acceptor_scp: bool) -> tuple[object, object, bytes]:
        request = AssociationRequest(
            "SCU",
            "SCP",
            (ContextProposal(VERIFICATION), ContextProposal(CT_IMAGE_STORAGE, scu_role=True, scp_role=True)),
        )
        acceptor_policy = policy(
            contexts=(
                ContextProposal(VERIFICATION),
                ContextProposal(CT_IMAGE_STORAGE, scu_role=True, scp_role=acceptor_scp),
            )
        )
        pair = self.pair(request=request, acceptor_policy=acceptor_policy)
        pair.flush()
        self.successResultOf(pair.requestor.whenEstablished)
        rq = pair.requestor_pdus()[0][1]
        role_item = struct.pack(">BBHH", 0x54, 0, 4 + len(CT_IMAGE_STORAGE), len(CT_IMAGE_STORAGE))
        self.assertIn(role_item + CT_IMAGE_STORAGE.encode() + b"\x01\x01", rq)
        ac = pair.acceptor_pdus()[0][1]
        self.assertIn(role_item + CT_IMAGE_STORAGE.encode(), ac)
        return pair.requestor.context(CT_IMAGE_STORAGE), pair.acceptor.context(CT_IMAGE_STORAGE), ac

    def test_role_selection_accepted(self) -> None:
        ours, theirs, ac = self._roles(acceptor_scp=True)
        self.assertIn(CT_IMAGE_STORAGE.encode() + b"\x01\x01", ac)
        self.assertEqual((ours.as_scu, ours.as_scp), (True, True))  # type: ignore[attr-defined]
        self.assertEqual((theirs.as_scu, theirs.as_scp), (True, True))  # type: ignore[attr-defined]

    def test_role_selection_refused(self) -> None:
        ours, theirs, ac = self._roles(acceptor_scp=False)
        # The acceptor returns 0 for the SCP role it does not grant.
        self.assertIn(CT_IMAGE_STORAGE.encode() + b"\x01\x00", ac)
        self.assertEqual((ours.as_scu, ours.as_scp), (True, False))  # type: ignore[attr-defined]
        self.assertEqual((theirs.as_scu, theirs.as_scp), (False, True))  # type: ignore[attr-defined]

    def test_called_ae_mismatch_is_rejected(self) -> None:
        pair = self.pair(request=verification_request(called="NOT-SCP"))
        pair.flush()
        error = self.failureResultOf(pair.requestor.whenEstablished, AssociationRejected).value
        self.assertEqual((error.result, error.source, error.reason), (1, 1, 7))
        self.assertIn("called AE title not recognized", str(error))
        self.assertEqual(pair.acceptor_pdus(), [(pdu.ASSOCIATE_RJ, b"\x00\x01\x01\x07")])
        self.assertEqual(pair.acceptor.trace, ["Sta1", "Sta2", "Sta3", "Sta13", "Sta1"])
        self.assertEqual(pair.requestor.trace, ["Sta1", "Sta4", "Sta5", "Sta1"])
        self.assertIn("rejected", self.successResultOf(pair.acceptor.whenClosed))
        self.successResultOf(pair.requestor.whenClosed)
        self.assertNoResult(pair.acceptor.whenEstablished)

    def test_protocol_version_not_supported(self) -> None:
        proto, transport, _ = self.acceptor()
        rq = bytearray(associate_rq())
        rq[6:8] = b"\x00\x02"
        proto.dataReceived(bytes(rq))
        self.assertEqual(split_pdus(transport.value()), [(pdu.ASSOCIATE_RJ, b"\x00\x01\x02\x02")])
        self.assertEqual(proto.state, "Sta13")

    def test_max_pdu_both_ways(self) -> None:
        store = RecordingHandler()
        request = AssociationRequest(
            "SCU", "SCP", (ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),), max_pdu=2000
        )
        acceptor_policy = policy(
            contexts=(ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),), max_pdu=1001
        )
        pair = self.pair(
            request=request,
            acceptor_policy=acceptor_policy,
            requestor_handlers={commands.C_STORE_RQ: store},
            acceptor_handlers={commands.C_STORE_RQ: store},
        )
        pair.flush()
        self.successResultOf(pair.requestor.whenEstablished)
        self.assertEqual(pair.requestor.peer_max_pdu, 1001)
        self.assertEqual(pair.acceptor.peer_max_pdu, 2000)
        dataset = bytes(range(256)) * 30  # 7680 bytes
        for sender, transport, limit in (
            (pair.requestor, pair.requestor_transport, 1001),
            (pair.acceptor, pair.acceptor_transport, 2000),
        ):
            transport.written.clear()
            command = commands.encode_command(
                commands.command(
                    commands.C_STORE_RQ,
                    MessageID=7,
                    AffectedSOPClassUID=CT_IMAGE_STORAGE,
                    AffectedSOPInstanceUID="1.2.3.4",
                    Priority=0,
                    CommandDataSetType=commands.HAS_DATASET,
                )
            )
            sender.send_message(1, command, dataset)
            pdus = split_pdus(transport.value())
            self.assertGreater(len(pdus), len(dataset) // limit)
            for kind, body in pdus:
                self.assertEqual(kind, pdu.P_DATA_TF)
                self.assertLessEqual(len(body), limit)
                for item in pdu.parse_pdvs(body):
                    self.assertEqual(len(item.fragment) % 2, 0)
                    self.assertGreater(len(item.fragment), 0)
            # Fragments are as large as the peer allows, not needlessly small.
            self.assertGreater(max(len(body) for _, body in pdus), limit - 8)
            pair.flush()
        self.assertEqual(len(store.consumers), 2)
        for consumer in store.consumers:
            self.assertEqual(b"".join(consumer.fragments), dataset)
            self.assertEqual(consumer.calls[-1], ("finished", None))

    def test_implementation_identity_is_sent_both_ways(self) -> None:
        pair = self.pair()
        pair.flush()
        uid = IMPLEMENTATION_CLASS_UID.encode()
        name = IMPLEMENTATION_VERSION_NAME.encode()
        self.assertTrue(1 <= len(name) <= 16)
        for kind, body in (pair.requestor_pdus()[0], pair.acceptor_pdus()[0]):
            self.assertIn(kind, (pdu.ASSOCIATE_RQ, pdu.ASSOCIATE_AC))
            self.assertIn(struct.pack(">BBH", 0x52, 0, len(uid)) + uid, body)
            self.assertIn(struct.pack(">BBH", 0x55, 0, len(name)) + name, body)

    def test_golden_pynetdicom_rq_is_accepted(self) -> None:
        proto, transport, _ = self.acceptor(policy(aet="ANY-SCP"))
        proto.dataReceived(golden.a_associate_rq)
        self.assertEqual(proto.state, "Sta6")
        self.assertEqual(proto.peer_max_pdu, 16382)
        self.assertEqual(proto.calling_aet, "ECHOSCU")
        (cx,) = _ac_primitive(transport.value()).presentation_context_definition_results_list
        self.assertEqual((cx.context_id, cx.result, cx.transfer_syntax[0]), (1, 0, IMPLICIT_VR_LE))


class TimerTests(ULTestCase):
    def test_acceptor_without_request_closes_exactly_at_artim(self) -> None:
        proto, transport, _ = self.acceptor()
        self.clock.advance(ARTIM - TICK)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(TICK)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(proto.state, "Sta1")
        self.assertIn("ARTIM", self.lose(proto))

    def test_artim_runs_from_the_connection_not_the_constructor(self) -> None:
        proto = ULProtocol(self.clock, DimseConnection(self.clock), policy=policy(), artim_timeout=ARTIM)
        self.clock.advance(5)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.clock.advance(ARTIM - TICK)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(TICK)
        self.assertTrue(transport.disconnecting)

    def test_request_in_time_stops_artim(self) -> None:
        proto, transport, _ = self.acceptor()
        self.clock.advance(ARTIM - TICK)
        proto.dataReceived(associate_rq())
        self.clock.advance(10 * ARTIM)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(proto.state, "Sta6")

    def test_acceptor_after_release_rp_waits_for_the_peer_then_closes_at_artim(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(RELEASE_RQ)
        self.assertEqual(transport.value(), RELEASE_RP)
        self.assertEqual(proto.state, "Sta13")
        self.clock.advance(ARTIM - TICK)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(TICK)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.lose(proto), "released")

    def test_acceptor_after_release_rp_peer_closes_first(self) -> None:
        proto, _transport, _ = self.established_acceptor()
        proto.dataReceived(RELEASE_RQ)
        self.clock.advance(ARTIM / 2)
        self.assertEqual(self.lose(proto), "released")
        self.assertEqual(proto.trace[-2:], ["Sta13", "Sta1"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requestor_without_answer_times_out_and_aborts(self) -> None:
        proto, transport, _ = self.requestor()
        self.assertEqual(split_pdus(transport.value())[0][0], pdu.ASSOCIATE_RQ)
        transport.clear()
        self.clock.advance(ARTIM - TICK)
        self.assertNoResult(proto.whenEstablished)
        self.clock.advance(TICK)
        self.failureResultOf(proto.whenEstablished, AssociationTimeout)
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertTrue(transport.disconnecting)
        self.lose(proto)

    def test_requestor_release_without_answer_times_out(self) -> None:
        proto, transport, _ = self.established_requestor()
        released = proto.release()
        outcome: list[object] = []
        released.addBoth(outcome.append)  # as `await` would, before the outcome is known
        self.assertEqual(transport.value(), RELEASE_RQ)
        transport.clear()
        self.clock.advance(ARTIM - TICK)
        self.assertEqual(outcome, [])
        self.clock.advance(TICK)
        (failure,) = outcome
        failure.trap(AssociationTimeout)  # type: ignore[attr-defined]
        # Asked again afterwards, release reports how the association really ended.
        self.failureResultOf(proto.release(), AssociationTimeout)
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertTrue(transport.disconnecting)


class MalformedInputTests(ULTestCase):
    """Every bad input ends in one A-ABORT with the right source/reason, then a close."""

    def assertAbortedThenClosed(self, proto, transport, source: int, reason: int) -> None:  # type: ignore[no-untyped-def]
        self.assertEqual(aborts(transport.value()), [(source, reason)])
        self.assertEqual(split_pdus(transport.value())[-1], (pdu.ABORT, bytes((0, 0, source, reason))))
        self.assertEqual(proto.state, "Sta13")
        if not transport.disconnecting:
            self.clock.advance(ARTIM - TICK)
            self.assertFalse(transport.disconnecting)
            self.clock.advance(TICK)
            self.assertTrue(transport.disconnecting)
        self.lose(proto)
        self.assertEqual(proto.state, "Sta1")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoTraceback()

    # -- before the association (Sta2: AA-1) ------------------------------------------------

    def test_unknown_pdu_type_before_association(self) -> None:
        proto, transport, _ = self.acceptor()
        proto.dataReceived(header(0x0A, 4) + b"\x00" * 4)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNRECOGNIZED_PDU)

    def test_pdata_before_association(self) -> None:
        # PS3.8 AA-1 says source 0; we are the provider that detected it, so we say 2
        # (unexpected PDU): see the AA-1 comment in dicomrst/ul/protocol.py.
        proto, transport, _ = self.acceptor()
        proto.dataReceived(pdata((1, 3, echo_rq())))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNEXPECTED_PDU)

    def test_release_request_before_association(self) -> None:
        proto, transport, _ = self.acceptor()
        proto.dataReceived(RELEASE_RQ)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNEXPECTED_PDU)

    def test_bad_item_length_in_request(self) -> None:
        proto, transport, _ = self.acceptor()
        rq = bytearray(associate_rq())
        self.assertEqual(rq[6 + 68], 0x10)
        rq[6 + 68 + 2 : 6 + 68 + 4] = b"\xff\x00"
        proto.dataReceived(bytes(rq))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_truncated_request(self) -> None:
        proto, transport, _ = self.acceptor()
        body = associate_rq()[6:40]
        proto.dataReceived(header(pdu.ASSOCIATE_RQ, len(body)) + body)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_truncated_pdu_then_connection_lost_before_association(self) -> None:
        proto, transport, _ = self.acceptor()
        proto.dataReceived(associate_rq()[:50])
        self.assertEqual(proto.state, "Sta2")
        self.assertIn("closed", self.lose(proto))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoTraceback()

    def test_abort_before_association_closes_at_once(self) -> None:
        proto, transport, _ = self.acceptor()
        proto.dataReceived(abort_pdu(0, 0))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- on an established association (Sta6: AA-8) ----------------------------------------

    def test_truncated_pdu_then_connection_lost(self) -> None:
        proto, transport, connection = self.established_requestor(handlers={})
        pending = connection.request(
            1, commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION)
        )
        transport.clear()
        proto.dataReceived(pdata((1, 3, echo_rq()))[:20])
        self.assertNoResult(pending)
        outcome = self.lose(proto)
        self.assertIn("without release or abort", outcome)
        self.failureResultOf(pending, ConnectionLost)
        # The connection is gone: there is nothing to send an A-ABORT on.
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoTraceback()

    def test_unknown_pdu_type_on_association(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(header(0xFF, 4) + b"\x00" * 4)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNRECOGNIZED_PDU)

    def test_pdu_over_our_maximum(self) -> None:
        proto, transport, _ = self.established_acceptor(acceptor_policy=policy(max_pdu=1000))
        message = pdata((1, 2, b"\x00" * 1000))
        proto.dataReceived(message[:600])
        # The rest of the oversized PDU is not mistaken for more PDUs.
        proto.dataReceived(message[600:])
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_pdu_over_our_maximum_with_its_header_alone(self) -> None:
        # The header is judged as it arrives, before any body.
        proto, transport, _ = self.established_acceptor(acceptor_policy=policy(max_pdu=1000))
        message = pdata((1, 2, b"\x00" * 1000))
        proto.dataReceived(message[:6])
        self.assertEqual(aborts(transport.value()), [(PROVIDER, pdu.REASON_INVALID_PARAMETER)])
        proto.dataReceived(message[6:])
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_associate_request_on_established_association(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(associate_rq())
        self.assertEqual(proto.trace[-2:], ["Sta6", "Sta13"])
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNEXPECTED_PDU)

    def test_associate_accept_on_established_association(self) -> None:
        proto, transport, _ = self.established_requestor()
        proto.dataReceived(golden.a_associate_ac)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNEXPECTED_PDU)

    def test_pdv_on_context_never_accepted(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(pdata((3, 3, echo_rq())))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_malformed_pdv_item(self) -> None:
        proto, transport, _ = self.established_acceptor()
        body = struct.pack(">LBB", 1, 1, 3)
        proto.dataReceived(header(pdu.P_DATA_TF, len(body)) + body)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_release_pdu_with_bad_length(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(header(pdu.RELEASE_RQ, 6) + b"\x00" * 6)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_undecodable_dimse_command(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(pdata((1, 3, b"\x00\x00\x00\x00\x04\x00\x00\x00\x10\x00")))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_request_without_message_id(self) -> None:
        proto, transport, _ = self.established_acceptor()
        command = commands.encode_command(
            commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION)
        )
        proto.dataReceived(pdata((1, 3, command)))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_data_fragment_without_command(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(pdata((1, 2, b"\x08\x00\x18\x00")))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_request_nobody_serves(self) -> None:
        proto, transport, _ = self.established_acceptor()
        find = commands.encode_command(commands.command(commands.C_FIND_RQ, MessageID=3))
        proto.dataReceived(pdata((1, 3, find)))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_response_to_a_request_we_never_sent(self) -> None:
        proto, transport, _ = self.established_requestor()
        rsp = commands.encode_command(
            commands.command(commands.C_ECHO_RSP, MessageIDBeingRespondedTo=99, Status=0)
        )
        proto.dataReceived(pdata((1, 3, rsp)))
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_INVALID_PARAMETER)

    def test_requestor_gets_request_before_accept(self) -> None:
        proto, transport, _ = self.requestor()
        transport.clear()
        proto.dataReceived(associate_rq())
        self.failureResultOf(proto.whenEstablished, AssociationAborted)
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNEXPECTED_PDU)

    def test_stray_pdus_after_our_abort_are_ignored(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.dataReceived(associate_rq())
        proto.dataReceived(pdata((1, 3, echo_rq())) + RELEASE_RQ)
        self.assertEqual(proto.state, "Sta13")
        self.assertAbortedThenClosed(proto, transport, PROVIDER, pdu.REASON_UNEXPECTED_PDU)


class ReleaseTests(ULTestCase):
    def test_requestor_release(self) -> None:
        pair = self.pair()
        pair.flush()
        released = pair.requestor.release()
        self.assertNoResult(released)
        pair.flush()
        self.assertIsNone(self.successResultOf(released))
        self.assertEqual(pair.requestor_pdus()[-1], (pdu.RELEASE_RQ, b"\x00" * 4))
        self.assertEqual(pair.acceptor_pdus()[-1], (pdu.RELEASE_RP, b"\x00" * 4))
        self.assertEqual(pair.requestor.trace[-3:], ["Sta6", "Sta7", "Sta1"])
        self.assertEqual(pair.acceptor.trace[-4:], ["Sta6", "Sta8", "Sta13", "Sta1"])
        self.assertEqual(self.successResultOf(pair.requestor.whenClosed), "released")
        self.assertEqual(self.successResultOf(pair.acceptor.whenClosed), "released")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Asking again after the fact reports the release that happened.
        self.assertIsNone(self.successResultOf(pair.requestor.release()))

    def test_acceptor_answers_release_request(self) -> None:
        proto, transport, connection = self.established_acceptor()
        proto.dataReceived(golden.a_release_rq)
        self.assertEqual(transport.value(), golden.a_release_rp)
        self.assertFalse(transport.disconnecting)  # the requestor closes (PS3.8 AR-4)
        self.successResultOf(connection.whenEnded)
        self.assertIsNone(connection.ended)

    def test_release_collision(self) -> None:
        pair = self.pair()
        pair.flush()
        requestor_released = pair.requestor.release()
        acceptor_released = pair.acceptor.release()
        pair.flush()
        self.assertEqual(pair.requestor.trace[-5:], ["Sta6", "Sta7", "Sta9", "Sta11", "Sta1"])
        self.assertEqual(pair.acceptor.trace[-6:], ["Sta6", "Sta7", "Sta10", "Sta12", "Sta13", "Sta1"])
        self.assertEqual([k for k, _ in pair.requestor_pdus()[1:]], [pdu.RELEASE_RQ, pdu.RELEASE_RP])
        self.assertEqual([k for k, _ in pair.acceptor_pdus()[1:]], [pdu.RELEASE_RQ, pdu.RELEASE_RP])
        self.assertIsNone(self.successResultOf(requestor_released))
        self.assertIsNone(self.successResultOf(acceptor_released))
        self.assertEqual(self.successResultOf(pair.requestor.whenClosed), "released")
        self.assertEqual(self.successResultOf(pair.acceptor.whenClosed), "released")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_peer_abort_fails_pending_requests_and_consumers(self) -> None:
        silent = SilentHandler()
        store = RecordingHandler()
        pair = self.pair(
            acceptor_policy=policy(
                contexts=(ContextProposal(VERIFICATION), ContextProposal(CT_IMAGE_STORAGE))
            ),
            request=AssociationRequest(
                "SCU", "SCP", (ContextProposal(VERIFICATION), ContextProposal(CT_IMAGE_STORAGE))
            ),
            acceptor_handlers={commands.C_ECHO_RQ: silent, commands.C_STORE_RQ: store},
        )
        pair.flush()
        echo = commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION)
        first = pair.requestor_user.request(1, echo)
        second = pair.requestor_user.request(1, commands.command(commands.C_ECHO_RQ))
        # A C-STORE whose data set has started but not finished on the acceptor.
        store_command = commands.encode_command(
            commands.command(
                commands.C_STORE_RQ,
                MessageID=50,
                AffectedSOPClassUID=CT_IMAGE_STORAGE,
                AffectedSOPInstanceUID="1.2.3",
                Priority=0,
                CommandDataSetType=commands.HAS_DATASET,
            )
        )
        pair.requestor_transport.write(pdata((3, 3, store_command), (3, 0, b"part")))
        pair.flush()
        self.assertEqual(len(silent.messages), 2)
        (consumer,) = store.consumers
        self.assertEqual(consumer.calls, [("data", b"part")])
        self.assertNoResult(first)
        pair.acceptor.abort("test aborts")
        self.assertEqual(consumer.calls[-1][0], "failed")
        consumer.calls[-1][1].trap(AssociationAborted)
        pair.flush()
        for pending in (first, second):
            error = self.failureResultOf(pending, AssociationAborted).value
            self.assertEqual((error.source, error.reason), (pdu.SOURCE_SERVICE_USER, 0))
        self.assertEqual(pair.requestor.state, "Sta1")
        self.assertIn("aborted by peer", self.successResultOf(pair.requestor.whenClosed))
        # A release asked for after the abort must not look like a successful one.
        self.failureResultOf(pair.requestor.release(), AssociationAborted)
        self.failureResultOf(pair.requestor_user.release(), AssociationAborted)
        self.successResultOf(pair.acceptor.whenClosed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _TCPTransport(StringTransport):
    nodelay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


class SendTests(ULTestCase):
    def test_a_request_reaches_the_socket_without_waiting_for_the_reactor(self) -> None:
        """The PACS's service time starts when it has the request: a C-FIND-RQ is handed
        to the kernel in the turn it is made, not on the reactor's next one."""
        proto, _transport, connection = self.established_acceptor()
        kernel = KernelTransport()
        proto.transport = kernel
        connection.request(1, commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION))
        [(kind, _body)] = split_pdus(b"".join(kernel.sent))
        self.assertEqual(kind, pdu.P_DATA_TF)

    def test_a_request_on_an_idle_socket_is_sent_without_registering_for_writing(self) -> None:
        """Nothing waits before it: the PDU goes to the socket at once, without the two
        epoll_ctl calls of registering the socket for writing and unregistering it."""
        proto, _transport, connection = self.established_acceptor()
        kernel = KernelTransport()
        registered: list[bool] = []
        kernel.startWriting = lambda: registered.append(True)  # type: ignore[method-assign]
        proto.transport = kernel
        connection.request(1, commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION))
        self.assertEqual(len(split_pdus(b"".join(kernel.sent))), 1)
        self.assertEqual(registered, [])

    def test_nagle_is_switched_off_on_tcp(self) -> None:
        transport = _TCPTransport()
        directlyProvides(transport, ITCPTransport)
        proto = ULProtocol(self.clock, DimseConnection(self.clock), policy=policy())
        proto.makeConnection(transport)
        self.assertIs(transport.nodelay, True)
        self.assertEqual(proto.peer, "192.168.1.1:54321")

    def test_send_needs_an_established_association(self) -> None:
        proto, _transport, _ = self.acceptor()
        self.assertRaises(AssociationClosed, proto.send_message, 1, echo_rq())

    def test_send_on_a_context_not_accepted(self) -> None:
        proto, transport, _ = self.established_acceptor()
        self.assertRaises(ValueError, proto.send_message, 3, echo_rq())
        self.assertEqual(transport.value(), b"")

    def test_pdvs_are_packed_up_to_the_peer_maximum_and_no_further(self) -> None:
        proto, transport, _ = self.established_acceptor(verification_request(max_pdu=500))
        self.assertEqual(proto.peer_max_pdu, 500)
        command = echo_rq()
        fits = b"\x00" * (500 - 12 - len(command))
        for data, expected_pdus in ((fits, [[True, False]]), (fits + b"\x00\x00", [[True], [False]])):
            transport.clear()
            proto.send_message(1, command, data)
            pdus = split_pdus(transport.value())
            self.assertEqual(
                [[p.is_command for p in pdu.parse_pdvs(body)] for _, body in pdus], expected_pdus
            )
            self.assertLessEqual(max(len(body) for _, body in pdus), 500)

    def test_command_and_data_share_a_pdu_when_they_fit(self) -> None:
        proto, transport, _ = self.established_acceptor()
        proto.send_message(1, echo_rq(), b"\x00\x01" * 4)
        ((kind, _body),) = split_pdus(transport.value())
        self.assertEqual(kind, pdu.P_DATA_TF)
        self.assertEqual(
            [(p.is_command, p.is_last) for p in pdvs_written(transport.value())],
            [(True, True), (False, True)],
        )

    def test_one_fragment_each_or_several(self) -> None:
        """Up to the fragment size a message is a PDV each (none for an empty data set,
        a memoryview written as its bytes); one byte more and it is fragmented."""
        proto, transport, _ = self.established_acceptor(verification_request(max_pdu=500))
        command = echo_rq()
        size = 500 - 6
        for data, fragments in (
            (None, [(True, True)]),
            (b"", [(True, True)]),
            (memoryview(b"\x01" * size), [(True, True), (False, True)]),
            (b"\x01" * (size + 2), [(True, True), (False, False), (False, True)]),
        ):
            transport.clear()
            proto.send_message(1, command, data)
            written = pdvs_written(transport.value())
            self.assertEqual([(p.is_command, p.is_last) for p in written], fragments, data)
            self.assertEqual(written[0].fragment, command)
            self.assertEqual(b"".join(p.fragment for p in written[1:]), bytes(data or b""))


class AbortBeforeAssociationTests(SynchronousTestCase):
    """abort() on an acceptor that never got an A-ASSOCIATE-RQ closes at once."""

    def test_abort_in_sta2_closes(self) -> None:
        from twisted.internet.task import Clock

        from dicomrst.common.uids import VERIFICATION
        from dicomrst.ul.negotiation import AcceptorPolicy, ContextProposal
        from dicomrst.ul.protocol import ULProtocol

        clock = Clock()
        protocol = ULProtocol(
            clock, DimseConnection(clock), policy=AcceptorPolicy("SCP", (ContextProposal(VERIFICATION),))
        )
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(protocol.state, "Sta2")
        protocol.abort("gateway is shutting down")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

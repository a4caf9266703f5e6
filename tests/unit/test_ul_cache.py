"""What the Upper Layer works out once and reuses: decoded A-ASSOCIATE PDUs, our own
A-ASSOCIATE-RQ and its negotiation outcome, encoded A-ASSOCIATE-ACs, and P-DATA framing
without copies.  Every cached answer is checked against pynetdicom's codecs or against
the same computation done afresh."""

from __future__ import annotations

import random
import struct
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.tests import encoded_pdu_items as golden
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.backends.pacs import POOL_CONTEXTS
from dicomrst.common.uids import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION
from dicomrst.dimse.contexts import (
    COMPRESSED_SYNTAXES,
    STORAGE_SOP_CLASSES,
    listener_policy,
)
from dicomrst.ul import pdu
from dicomrst.ul.negotiation import Acceptance, AcceptorPolicy, AssociationRequest, ContextProposal
from dicomrst.ul.protocol import ULProtocol
from tests.support.ul import CT_IMAGE_STORAGE, pdata

PRIVATE_SOP_CLASS = "1.3.6.1.4.1.9590.100.1.2.999"


def pynetdicom_decode(pdu_type: int, body: bytes) -> A_ASSOCIATE:
    """The primitive straight from pynetdicom's decoder, no cache and no item filter."""
    codec = A_ASSOCIATE_RQ() if pdu_type == pdu.ASSOCIATE_RQ else A_ASSOCIATE_AC()
    codec.decode(struct.pack(">BBL", pdu_type, 0, len(body)) + body)
    return codec.to_primitive()


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, str):
        return (type(value).__name__, sorted((k, _plain(v)) for k, v in vars(value).items()))
    return value if value is None or isinstance(value, bool | int) else str(value)


def described(primitive: A_ASSOCIATE) -> Any:
    """Everything a primitive holds, as plain comparable values."""
    return sorted((k, _plain(v)) for k, v in vars(primitive).items() if not k.startswith("_dicomrst"))


def with_titles(body: bytes, called: bytes, calling: bytes) -> bytes:
    return body[:4] + called.ljust(16) + calling.ljust(16) + body[36:]


def orthanc_like_request(calling: str = "ORTHANC", called: str = "DICOMRST") -> AssociationRequest:
    """A C-MOVE sub-operation proposal: every storage class, several syntaxes each."""
    return AssociationRequest(
        calling,
        called,
        (
            *(
                ContextProposal(uid, (EXPLICIT_VR_LE, IMPLICIT_VR_LE, *COMPRESSED_SYNTAXES[: i % 4]))
                for i, uid in enumerate(STORAGE_SOP_CLASSES[:120])
            ),
            ContextProposal(PRIVATE_SOP_CLASS),
        ),
    )


def varied_bodies() -> list[tuple[int, bytes]]:
    """A-ASSOCIATE-RQ and -AC bodies of several shapes: golden, ours, a PACS's, answers."""
    pool = AssociationRequest("DICOMRST", "PACS", POOL_CONTEXTS).encoded()
    orthanc = orthanc_like_request().encoded()
    roles = AssociationRequest(
        "SCU",
        "SCP",
        (
            ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_BE,), scu_role=False, scp_role=True),
            ContextProposal(VERIFICATION),
        ),
        max_pdu=0,
    ).encoded()
    acs = [
        AcceptorPolicy("PACS", POOL_CONTEXTS[:10]).decide(pdu.decode_associate(pool[0], pool[6:])),
        listener_policy("DICOMRST", False, 16384).decide(pdu.decode_associate(orthanc[0], orthanc[6:])),
        AcceptorPolicy(
            "SCP", (ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_BE,), scu_role=True, scp_role=True),)
        ).decide(pdu.decode_associate(roles[0], roles[6:])),
    ]
    bodies = [
        (pdu.ASSOCIATE_RQ, golden.a_associate_rq[6:]),
        (pdu.ASSOCIATE_AC, golden.a_associate_ac[6:]),
        (pdu.ASSOCIATE_RQ, pool[6:]),
        (pdu.ASSOCIATE_RQ, orthanc[6:]),
        (pdu.ASSOCIATE_RQ, roles[6:]),
    ]
    for decision in acs:
        assert isinstance(decision, Acceptance)
        bodies.append((pdu.ASSOCIATE_AC, decision.encoded[6:]))
    return bodies


class DecodeCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        pdu._decoded.clear()
        self.addCleanup(pdu._decoded.clear)

    def test_miss_and_hit_equal_pynetdicom(self) -> None:
        titles = [(b"PACS", b"DICOMRST"), (b"  B", b"A  "), (b"X" * 16, b"Y" * 16)]
        for pdu_type, body in varied_bodies():
            pdu._decoded.clear()
            for called, calling in titles:  # the first is a miss, the others hits
                variant = with_titles(body, called, calling)
                ours = pdu.decode_associate(pdu_type, variant)
                self.assertEqual(described(ours), described(pynetdicom_decode(pdu_type, variant)))
                self.assertEqual(ours.called_ae_title, called.decode().strip())
                self.assertEqual(pdu.protocol_version(variant), 1)
            self.assertEqual(len(pdu._decoded), 1)

    def test_hit_shares_items_but_not_lists(self) -> None:
        body = orthanc_like_request().encoded()[6:]
        first = pdu.decode_associate(pdu.ASSOCIATE_RQ, body)
        first.presentation_context_definition_list.append("junk")  # type: ignore[arg-type]
        first.user_information.clear()
        second = pdu.decode_associate(pdu.ASSOCIATE_RQ, with_titles(body, b"OTHER", b"CALLER"))
        self.assertEqual(len(pdu._decoded), 1)
        self.assertEqual(len(second.presentation_context_definition_list), 121)
        self.assertEqual(len(second.user_information), 3)
        self.assertIs(
            second.presentation_context_definition_list[0], first.presentation_context_definition_list[0]
        )
        self.assertEqual((second.called_ae_title, second.calling_ae_title), ("OTHER", "CALLER"))

    def test_any_other_byte_is_a_miss(self) -> None:
        body = bytearray(golden.a_associate_rq[6:])
        pdu.decode_associate(pdu.ASSOCIATE_RQ, bytes(body))
        body[0:2] = b"\x00\x03"  # protocol version
        pdu.decode_associate(pdu.ASSOCIATE_RQ, bytes(body))
        self.assertEqual(pdu.protocol_version(bytes(body)), 3)
        body[40] = 1  # a reserved byte
        pdu.decode_associate(pdu.ASSOCIATE_RQ, bytes(body))
        self.assertEqual(len(pdu._decoded), 3)
        # The same bytes as an -AC are another PDU (and an -AC's items are no -RQ's).
        pdu.decode_associate(pdu.ASSOCIATE_AC, golden.a_associate_ac[6:])
        self.assertEqual(len(pdu._decoded), 4)
        ac_body = golden.a_associate_ac[6:]
        self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, ac_body)
        self.assertEqual(len(pdu._decoded), 4)

    def test_invalid_titles_fail_on_a_hit_as_on_a_miss(self) -> None:
        body = golden.a_associate_rq[6:]
        bad_titles = [b" " * 16, b"\\AAAA", b"\x01AAAA", b"\xffAAAA", b"\x00" * 16]
        for title in bad_titles:
            pdu._decoded.clear()
            for called, calling in ((title, b"OK"), (b"OK", title)):
                variant = with_titles(body, called, calling)
                self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, variant)
            self.assertEqual(len(pdu._decoded), 0)
            pdu.decode_associate(pdu.ASSOCIATE_RQ, body)  # now cached
            for called, calling in ((title, b"OK"), (b"OK", title)):
                variant = with_titles(body, called, calling)
                self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, variant)
            self.assertEqual(len(pdu._decoded), 1)

    def test_malformed_items_fail_with_a_good_proposal_cached(self) -> None:
        body = golden.a_associate_rq[6:]
        pdu.decode_associate(pdu.ASSOCIATE_RQ, body)
        rng = random.Random(7)
        malformed = [body[:-3], body[:68] + body[69:], body[:70] + b"\xff\xf0" + body[72:]]
        for _ in range(30):
            # a random item or sub-item length field made too long
            offset = rng.randrange(68, len(body) - 4)
            malformed.append(body[:offset] + b"\xff\xff" + body[offset + 2 :])
        failures = 0
        for bad in malformed:
            for _ in range(2):
                try:
                    ours: Any = described(pdu.decode_associate(pdu.ASSOCIATE_RQ, bad))
                except pdu.ProtocolError:
                    ours = "error"
                    failures += 1
                try:
                    theirs: Any = described(pynetdicom_decode(pdu.ASSOCIATE_RQ, bad))
                except Exception:
                    theirs = "error"
                if theirs != "error":
                    self.assertEqual(ours, theirs)
        self.assertGreater(failures, 0)
        # whatever decoded is cached, but never under the good proposal's key
        self.assertEqual(
            described(pdu.decode_associate(pdu.ASSOCIATE_RQ, body)),
            described(pynetdicom_decode(pdu.ASSOCIATE_RQ, body)),
        )

    def test_cache_is_bounded(self) -> None:
        body = golden.a_associate_rq[6:]
        for i in range(pdu.DECODED_KEPT + 5):
            pdu.decode_associate(pdu.ASSOCIATE_RQ, body[:40] + struct.pack(">H", i) + body[42:])
            self.assertLessEqual(len(pdu._decoded), pdu.DECODED_KEPT)


class RequestCacheTests(SynchronousTestCase):
    def test_encoded_is_built_once_and_equals_pynetdicom(self) -> None:
        request = AssociationRequest("DICOMRST", "PACS", POOL_CONTEXTS)
        first = request.encoded()
        self.assertEqual(first, pdu.encode_associate(request.to_primitive()))
        self.assertIs(request.encoded(), first)
        # Equal requests are still equal values, whatever they cached.
        self.assertEqual(request, AssociationRequest("DICOMRST", "PACS", POOL_CONTEXTS))

    def test_negotiated_hit_and_miss_equal_a_fresh_negotiation(self) -> None:
        request = AssociationRequest(
            "DICOMRST",
            "PACS",
            (
                ContextProposal(VERIFICATION),
                ContextProposal(CT_IMAGE_STORAGE, scu_role=True, scp_role=True),
                *POOL_CONTEXTS[1:4],
            ),
        )
        rq = request.encoded()
        policies = [
            AcceptorPolicy("PACS", POOL_CONTEXTS),
            AcceptorPolicy("PACS", (ContextProposal(VERIFICATION, (IMPLICIT_VR_LE,)),)),
            AcceptorPolicy(
                "PACS", (ContextProposal(CT_IMAGE_STORAGE, (IMPLICIT_VR_LE,), scu_role=True, scp_role=True),)
            ),
            AcceptorPolicy("PACS", (ContextProposal(CT_IMAGE_STORAGE, scu_role=False, scp_role=True),)),
            # These two answers differ only in the result of the Verification context.
            AcceptorPolicy("PACS", (ContextProposal(VERIFICATION), *POOL_CONTEXTS[1:4])),
            AcceptorPolicy("PACS", POOL_CONTEXTS[1:4]),
        ]
        outcomes = []
        for policy in policies * 2:
            decision = policy.decide(pdu.decode_associate(rq[0], rq[6:]))
            assert isinstance(decision, Acceptance)
            accept = pdu.decode_associate(pdu.ASSOCIATE_AC, decision.encoded[6:])
            got = request.negotiated(accept)
            self.assertEqual(got, request._negotiate(accept))
            got.clear()  # the caller's own dict
            outcomes.append(request.negotiated(accept))
        self.assertEqual(len(request._outcomes), len(policies))
        # The second decoding of each answer shares the first one's items: found by them.
        self.assertEqual(len(request._answers), len(policies))
        self.assertEqual(outcomes[: len(policies)], outcomes[len(policies) :])
        self.assertEqual(len({tuple(sorted(o.items())) for o in outcomes}), len(policies))
        cx = outcomes[2][3]
        self.assertEqual((cx.transfer_syntax, cx.as_scu, cx.as_scp), (IMPLICIT_VR_LE, True, True))


class AcceptanceEncodingTests(SynchronousTestCase):
    def test_encoded_accept_equals_pynetdicom_for_fresh_and_cached_decisions(self) -> None:
        policy = listener_policy("DICOMRST", True, 16384)
        for calling in ("ORTHANC", "OTHER", "ORTHANC"):
            rq = orthanc_like_request(calling).encoded()
            decision = policy.decide(pdu.decode_associate(rq[0], rq[6:]))
            assert isinstance(decision, Acceptance)
            self.assertEqual(decision.encoded, pdu.encode_associate(decision.primitive))
            theirs = pynetdicom_decode(pdu.ASSOCIATE_AC, decision.encoded[6:])
            self.assertEqual(theirs.calling_ae_title, calling)


class FramerViewTests(SynchronousTestCase):
    def test_pdata_within_one_chunk_is_a_view_and_fragments_are_bytes(self) -> None:
        message = pdata((1, 0, b"a" * 100), (1, 2, b"b" * 50))
        framer = pdu.PDUFramer(0)
        framer.feed(message + message[:10])
        _, body = framer.next_pdu()  # type: ignore[misc]
        self.assertIsInstance(body, memoryview)
        self.assertEqual(bytes(body), message[6:])
        items = pdu.parse_pdvs(body)
        self.assertEqual([type(i.fragment) for i in items], [bytes, bytes])
        self.assertEqual([i.fragment for i in items], [b"a" * 100, b"b" * 50])
        self.assertIsNone(framer.next_pdu())
        self.assertEqual(framer.buffered(), 10)

    def test_pdata_over_several_chunks_and_association_pdus_as_bytes(self) -> None:
        message = pdata((1, 2, bytes(range(256)) * 40))
        framer = pdu.PDUFramer(0)
        for chunk in (message[:3], message[3:5000], message[5000:], golden.a_associate_rq):
            framer.feed(chunk)
        pdu_type, body = framer.next_pdu()  # type: ignore[misc]
        self.assertEqual((pdu_type, bytes(body)), (pdu.P_DATA_TF, message[6:]))
        pdu_type, body = framer.next_pdu()  # type: ignore[misc]
        self.assertEqual((pdu_type, type(body), body), (pdu.ASSOCIATE_RQ, bytes, golden.a_associate_rq[6:]))
        self.assertEqual(framer.buffered(), 0)

    def test_trickled_bytes_are_coalesced(self) -> None:
        framer = pdu.PDUFramer(0)
        stream = golden.a_associate_rq * 40
        for b in stream:
            framer.feed(bytes([b]))
        self.assertLess(len(framer._chunks), len(stream) // 1000 + 2)
        out = []
        while (item := framer.next_pdu()) is not None:
            out.append(item)
        self.assertEqual(out, [(pdu.ASSOCIATE_RQ, golden.a_associate_rq[6:])] * 40)

    def test_bytearray_and_memoryview_input_is_copied(self) -> None:
        message = bytearray(pdata((1, 2, b"abcd")))
        framer = pdu.PDUFramer(0)
        framer.feed(message)
        message[-1:] = b"X"
        framer.feed(memoryview(bytes(pdata((3, 2, b"ef")))))
        self.assertEqual(
            [pdv for _, body in (framer.next_pdu(), framer.next_pdu()) for pdv in pdu.parse_pdvs(body)],  # type: ignore[misc]
            [pdu.PDV(1, False, True, b"abcd"), pdu.PDV(3, False, True, b"ef")],
        )


class AcceptorProtocolTests(SynchronousTestCase):
    def test_second_association_of_a_proposal_is_answered_like_the_first(self) -> None:
        pdu._decoded.clear()
        self.addCleanup(pdu._decoded.clear)
        policy = listener_policy("DICOMRST", True, 16384)
        answers = []
        for calling in ("ORTHANC", "ORTHANC", "OTHER"):
            proto = ULProtocol(Clock(), _User(), policy=policy)
            transport = StringTransport()
            proto.makeConnection(transport)
            rq = orthanc_like_request(calling).encoded()
            proto.dataReceived(rq)
            self.assertEqual(proto.state, "Sta6")
            self.assertEqual(proto.calling_aet, calling)
            ac = transport.value()
            # A listener's own policy also takes storage classes it does not list.
            expected = listener_policy("DICOMRST", True, 16384).decide(pynetdicom_decode(rq[0], rq[6:]))
            assert isinstance(expected, Acceptance)
            self.assertEqual(ac, pdu.encode_associate(expected.primitive))
            self.assertEqual(pynetdicom_decode(ac[0], ac[6:]).calling_ae_title, calling)
            self.assertEqual(proto.contexts, expected.contexts)
            answers.append(ac)
        self.assertEqual(answers[0], answers[1])
        self.assertNotEqual(answers[0], answers[2])
        self.assertEqual(len(pdu._decoded), 1)


class _User:
    def association_established(self, association: ULProtocol) -> None:
        pass

    def pdv_received(self, pdv: pdu.PDV) -> None:
        pass

    def awaiting_us(self) -> bool:
        return False

    def release_requested(self) -> None:
        pass

    def association_ended(self, reason: object) -> None:
        pass

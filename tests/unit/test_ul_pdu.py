"""PDU framing and codecs (dicomrst.ul.pdu) against pynetdicom's golden PDUs."""

from __future__ import annotations

import random
import struct

from pynetdicom.tests import encoded_pdu_items as golden
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.uids import IMPLEMENTATION_CLASS_UID
from dicomrst.ul import pdu
from tests.support.ul import header, pdata, pdv_item

STREAM = golden.a_associate_rq + golden.p_data_tf + golden.a_release_rq
EXPECTED = [
    (pdu.ASSOCIATE_RQ, golden.a_associate_rq[6:]),
    (pdu.P_DATA_TF, golden.p_data_tf[6:]),
    (pdu.RELEASE_RQ, golden.a_release_rq[6:]),
]


def drain(framer: pdu.PDUFramer) -> list[tuple[int, bytes]]:
    out = []
    while (item := framer.next_pdu()) is not None:
        out.append(item)
    return out


class FramerTests(SynchronousTestCase):
    def feed_in(self, chunks: list[bytes], max_pdata: int = 16382) -> list[tuple[int, bytes]]:
        framer = pdu.PDUFramer(max_pdata)
        out = []
        for chunk in chunks:
            framer.feed(chunk)
            out.extend(drain(framer))
        self.assertEqual(framer.buffered(), 0)
        return out

    def test_golden_stream_one_byte_at_a_time(self) -> None:
        self.assertEqual(self.feed_in([bytes([b]) for b in STREAM]), EXPECTED)

    def test_golden_stream_in_one_chunk(self) -> None:
        self.assertEqual(self.feed_in([STREAM]), EXPECTED)

    def test_golden_stream_random_splits(self) -> None:
        rng = random.Random(20240611)
        for _ in range(50):
            cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 20)))
            chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
            self.assertEqual(self.feed_in(chunks), EXPECTED, cuts)

    def test_pdu_is_not_handed_out_before_its_last_byte(self) -> None:
        framer = pdu.PDUFramer(0)
        framer.feed(golden.p_data_tf[:-1])
        self.assertIsNone(framer.next_pdu())
        self.assertEqual(framer.buffered(), len(golden.p_data_tf) - 1)
        framer.feed(golden.p_data_tf[-1:])
        self.assertEqual(framer.next_pdu(), (pdu.P_DATA_TF, golden.p_data_tf[6:]))

    def test_unknown_pdu_type_fails_as_soon_as_the_header_is_in(self) -> None:
        framer = pdu.PDUFramer(16382)
        framer.feed(header(0x08, 4)[:5])
        self.assertIsNone(framer.next_pdu())
        framer.feed(header(0x08, 4)[5:])  # the body has not arrived
        error = self.assertRaises(pdu.ProtocolError, framer.next_pdu)
        self.assertEqual(error.reason, pdu.REASON_UNRECOGNIZED_PDU)

    def test_pdata_longer_than_our_maximum_fails_before_the_body(self) -> None:
        framer = pdu.PDUFramer(1000)
        framer.feed(header(pdu.P_DATA_TF, 1001))
        error = self.assertRaises(pdu.ProtocolError, framer.next_pdu)
        self.assertEqual(error.reason, pdu.REASON_INVALID_PARAMETER)

    def test_pdata_of_exactly_our_maximum_is_taken(self) -> None:
        message = pdata((1, 2, b"\x00" * 994))
        self.assertEqual(len(message) - 6, 1000)
        self.assertEqual(self.feed_in([message], max_pdata=1000), [(pdu.P_DATA_TF, message[6:])])

    def test_zero_maximum_means_no_limit(self) -> None:
        message = pdata((1, 2, b"\x00" * 70000))
        self.assertEqual(self.feed_in([message], max_pdata=0), [(pdu.P_DATA_TF, message[6:])])

    def test_release_and_abort_must_have_length_4(self) -> None:
        for pdu_type in (pdu.RELEASE_RQ, pdu.RELEASE_RP, pdu.ABORT):
            for length in (0, 3, 5, 100):
                framer = pdu.PDUFramer(16382)
                framer.feed(header(pdu_type, length))
                error = self.assertRaises(pdu.ProtocolError, framer.next_pdu)
                self.assertEqual(error.reason, pdu.REASON_INVALID_PARAMETER)
            framer = pdu.PDUFramer(16382)
            framer.feed(header(pdu_type, 4) + b"\x00\x00\x02\x01")
            self.assertEqual(framer.next_pdu(), (pdu_type, b"\x00\x00\x02\x01"))

    def test_huge_associate_pdu_fails_at_the_header(self) -> None:
        framer = pdu.PDUFramer(16382)
        framer.feed(header(pdu.ASSOCIATE_RQ, pdu.MAX_ASSOCIATE_PDU + 1))
        self.assertRaises(pdu.ProtocolError, framer.next_pdu)

    def test_reserved_byte_is_not_tested(self) -> None:
        message = bytearray(golden.a_release_rq)
        message[1] = 0xFF
        self.assertEqual(self.feed_in([bytes(message)]), [(pdu.RELEASE_RQ, golden.a_release_rq[6:])])


class WholePDataTests(SynchronousTestCase):
    """`PDUFramer.whole_pdata`: a chunk that completes exactly one P-DATA-TF is handed
    back without being buffered; anything else is left for `feed`, unbuffered."""

    def test_a_whole_pdata_with_nothing_buffered(self) -> None:
        framer = pdu.PDUFramer(16382)
        message = pdata((1, 3, b"CMD!"))
        self.assertEqual(framer.whole_pdata(message), message[6:])
        self.assertEqual(framer.buffered(), 0)

    def test_the_body_of_a_pdata_whose_header_came_alone(self) -> None:
        framer = pdu.PDUFramer(16382)
        message = pdata((1, 2, b"data"))
        self.assertIsNone(framer.whole_pdata(message[:6]))
        framer.feed(message[:6])
        self.assertIsNone(framer.next_pdu())  # the header is checked as it comes
        self.assertEqual(framer.whole_pdata(message[6:]), message[6:])
        self.assertEqual(framer.buffered(), 0)
        self.assertIsNone(framer.next_pdu())

    def test_anything_else_is_left_to_feed(self) -> None:
        message = pdata((1, 2, b"data"))
        for buffered, chunk in [
            (b"", message[:-1]),  # short
            (b"", message + message),  # more than one PDU
            (b"", golden.a_release_rq),  # not a P-DATA-TF
            (b"", pdata((1, 2, b"\x00" * 1000))),  # over our maximum: feed reports it
            (message[:5], message[5:]),  # a header not buffered whole
            (message[:7], message[7:]),  # more than a header buffered
            (message[:6], message[6:-1]),  # a body short of its length
            (message[:6], message[6:] + message),  # a body and more
        ]:
            framer = pdu.PDUFramer(1000)
            framer.feed(buffered)
            self.assertIsNone(framer.whole_pdata(chunk), (buffered, chunk))
            self.assertEqual(framer.buffered(), len(buffered))

    def test_a_header_spread_over_two_chunks_is_left_to_feed(self) -> None:
        framer = pdu.PDUFramer(0)
        big = pdata((1, 2, b"\x00" * 5000))
        message = pdata((1, 2, b"data"))
        framer.feed(big + message[:3])
        self.assertEqual(framer.next_pdu(), (pdu.P_DATA_TF, big[6:]))
        framer.feed(message[3:6])
        self.assertEqual(framer.buffered(), 6)
        self.assertIsNone(framer.whole_pdata(message[6:]))
        framer.feed(message[6:])
        self.assertEqual(framer.next_pdu(), (pdu.P_DATA_TF, message[6:]))

    def test_zero_maximum_means_no_limit(self) -> None:
        message = pdata((1, 2, b"\x00" * 70000))
        self.assertEqual(pdu.PDUFramer(0).whole_pdata(message), message[6:])

    def test_a_pdata_header_alone_is_kept(self) -> None:
        framer = pdu.PDUFramer(1000)
        message = pdata((1, 2, b"data"))
        self.assertTrue(framer.pdata_header(message[:6]))
        self.assertEqual(framer.buffered(), 6)
        self.assertIsNone(framer.next_pdu())
        self.assertEqual(framer.whole_pdata(message[6:]), message[6:])

    def test_other_headers_are_left_to_feed(self) -> None:
        for buffered, chunk in [
            (b"", header(pdu.P_DATA_TF, 1001)),  # over our maximum: next_pdu reports it
            (b"", header(0x08, 4)),  # unknown type: likewise
            (b"", golden.a_release_rq[:6]),  # not a P-DATA-TF
            (b"", header(pdu.P_DATA_TF, 10)[:5]),  # not a whole header
            (b"\x04", header(pdu.P_DATA_TF, 10)),  # something buffered before it
        ]:
            framer = pdu.PDUFramer(1000)
            framer.feed(buffered)
            self.assertFalse(framer.pdata_header(chunk), (buffered, chunk))
            self.assertEqual(framer.buffered(), len(buffered))


class PDVTests(SynchronousTestCase):
    def test_golden_pdata(self) -> None:
        (item,) = pdu.parse_pdvs(golden.p_data_tf[6:])
        self.assertEqual((item.context_id, item.is_command, item.is_last), (1, True, True))
        self.assertEqual(len(item.fragment), 0x50 - 2)

    def test_several_pdvs_and_control_bits(self) -> None:
        body = pdata((1, 0x03, b"CMD!"), (1, 0x00, b"d1"), (3, 0x02, b"d2d2"), (5, 0x01, b""))[6:]
        self.assertEqual(
            pdu.parse_pdvs(body),
            [
                pdu.PDV(1, True, True, b"CMD!"),
                pdu.PDV(1, False, False, b"d1"),
                pdu.PDV(3, False, True, b"d2d2"),
                pdu.PDV(5, True, False, b""),  # empty PDVs must be receivable (PS3.8 E.1)
            ],
        )

    def test_item_length_below_2(self) -> None:
        # An item too short for its PCID and control header, followed by a valid one.
        for length in (0, 1):
            body = struct.pack(">L", length) + b"\x01" * length + pdv_item(1, 3, b"abcd")
            self.assertRaises(pdu.ProtocolError, pdu.parse_pdvs, body)
        self.assertEqual(len(pdu.parse_pdvs(pdv_item(1, 3, b"") + pdv_item(1, 3, b"abcd"))), 2)

    def test_item_running_past_the_pdu(self) -> None:
        good = pdv_item(1, 3, b"abcd")
        self.assertEqual(len(pdu.parse_pdvs(good)), 1)
        self.assertRaises(pdu.ProtocolError, pdu.parse_pdvs, good[:-1])
        bad = struct.pack(">LBB", 7, 1, 3) + b"abcd"
        self.assertRaises(pdu.ProtocolError, pdu.parse_pdvs, bad)
        self.assertRaises(pdu.ProtocolError, pdu.parse_pdvs, good + good[:5])

    def test_empty_pdata(self) -> None:
        self.assertRaises(pdu.ProtocolError, pdu.parse_pdvs, b"")

    def test_encode_pdata_round_trips(self) -> None:
        parts = pdu.encode_pdata([(1, 1, b"ab"), (1, 2, b"cdef")])
        self.assertEqual(b"".join(parts), pdata((1, 1, b"ab"), (1, 2, b"cdef")))


def _user_info_offset(body: bytes) -> int:
    offset = 68
    while body[offset] != 0x50:
        offset += 4 + struct.unpack_from(">H", body, offset + 2)[0]
    return offset


def _with_item_length(body: bytes, offset: int, length: int) -> bytes:
    return body[: offset + 2] + struct.pack(">H", length) + body[offset + 4 :]


class AssociateCodecTests(SynchronousTestCase):
    def test_golden_rq_decodes(self) -> None:
        primitive = pdu.decode_associate(pdu.ASSOCIATE_RQ, golden.a_associate_rq[6:])
        self.assertEqual(primitive.called_ae_title.strip(), "ANY-SCP")
        self.assertEqual(primitive.calling_ae_title.strip(), "ECHOSCU")
        (cx,) = primitive.presentation_context_definition_list
        self.assertEqual((cx.context_id, cx.abstract_syntax), (1, "1.2.840.10008.1.1"))

    def test_golden_ac_decodes(self) -> None:
        primitive = pdu.decode_associate(pdu.ASSOCIATE_AC, golden.a_associate_ac[6:])
        (cx,) = primitive.presentation_context_definition_results_list
        self.assertEqual((cx.context_id, cx.result), (1, 0))

    def test_truncated_associate_pdu(self) -> None:
        body = golden.a_associate_rq[6:]
        for size in (0, 10, 67):
            self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, body[:size])
        # The fixed part is whole but the last item is cut short.
        self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, body[:-3])

    def test_item_running_past_the_pdu(self) -> None:
        body = golden.a_associate_rq[6:]
        # The application context item is the first one at offset 68.
        self.assertEqual(body[68], 0x10)
        bad = _with_item_length(body, 68, 0xFFF0)
        error = self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, bad)
        self.assertEqual(error.reason, pdu.REASON_INVALID_PARAMETER)

    def test_sub_item_running_past_its_item(self) -> None:
        body = golden.a_associate_rq[6:]
        user_info = _user_info_offset(body)
        self.assertEqual(body[user_info + 4], 0x51)  # maximum length sub-item
        bad = _with_item_length(body, user_info + 4, 0x0100)
        self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, bad)

    def test_presentation_context_sub_item_running_past_its_item(self) -> None:
        body = golden.a_associate_rq[6:]
        cx = 68 + 4 + struct.unpack_from(">H", body, 70)[0]
        self.assertEqual(body[cx], 0x20)
        self.assertEqual(body[cx + 8], 0x30)  # abstract syntax sub-item
        bad = _with_item_length(body, cx + 8, 0x0200)
        self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, bad)

    def test_sub_item_running_into_the_next_item(self) -> None:
        # The transfer syntax sub-item claims 2 bytes of the user information item
        # after it: inside the PDU, but past its own item.
        body = golden.a_associate_rq[6:]
        cx = 68 + 4 + struct.unpack_from(">H", body, 70)[0]
        cx_end = cx + 4 + struct.unpack_from(">H", body, cx + 2)[0]
        ts = cx + 8 + 4 + struct.unpack_from(">H", body, cx + 10)[0]
        self.assertEqual(body[ts], 0x40)
        self.assertEqual(ts + 4 + struct.unpack_from(">H", body, ts + 2)[0], cx_end)
        bad = _with_item_length(body, ts, struct.unpack_from(">H", body, ts + 2)[0] + 2)
        error = self.assertRaises(pdu.ProtocolError, pdu.decode_associate, pdu.ASSOCIATE_RQ, bad)
        self.assertIn("runs past its item", str(error))

    def test_unknown_item_types_are_skipped(self) -> None:
        # PS3.8 §9.3.1: items of unrecognized type shall be ignored and skipped.
        body = golden.a_associate_rq[6:] + bytes((0x60, 0, 0, 2, 1, 2))
        primitive = pdu.decode_associate(pdu.ASSOCIATE_RQ, body)
        self.assertEqual(len(primitive.presentation_context_definition_list), 1)
        self.assertEqual(primitive.calling_ae_title.strip(), "ECHOSCU")

    def test_unknown_user_information_sub_items_are_skipped(self) -> None:
        body = golden.a_associate_rq[6:]
        user_info = _user_info_offset(body)
        (length,) = struct.unpack_from(">H", body, user_info + 2)
        self.assertEqual(user_info + 4 + length, len(body))  # the last item
        extra = bytes((0x5F, 0, 0, 2, 9, 9))
        bad = _with_item_length(body, user_info, length + len(extra)) + extra
        primitive = pdu.decode_associate(pdu.ASSOCIATE_RQ, bad)
        kinds = sorted(type(item).__name__ for item in primitive.user_information)
        self.assertEqual(
            kinds,
            [
                "ImplementationClassUIDNotification",
                "ImplementationVersionNameNotification",
                "MaximumLengthNotification",
            ],
        )

    def test_reject_and_abort_bodies(self) -> None:
        self.assertEqual(pdu.decode_reject(golden.a_associate_rj[6:]), (1, 1, 1))
        self.assertRaises(pdu.ProtocolError, pdu.decode_reject, b"\x00\x01\x01")
        self.assertEqual(pdu.decode_abort(golden.a_p_abort[6:]), (2, 4))
        self.assertEqual(pdu.encode_abort(2, 4), golden.a_p_abort)
        self.assertEqual(pdu.encode_release_rq(), golden.a_release_rq)
        self.assertEqual(pdu.encode_release_rp(), golden.a_release_rp)

    def test_encoded_rq_round_trips_through_pynetdicom(self) -> None:
        from tests.support.ul import associate_rq

        rq = associate_rq()
        self.assertIn(IMPLEMENTATION_CLASS_UID.encode(), rq)
        primitive = pdu.decode_associate(rq[0], rq[6:])
        self.assertEqual(primitive.calling_ae_title.strip(), "SCU")
        self.assertEqual(primitive.called_ae_title.strip(), "SCP")

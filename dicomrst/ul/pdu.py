# -*- test-case-name: tests.unit.test_ul_pdu -*-
"""PDU framing and codecs (PS3.8 §9.3), free of I/O.

The framer is fed whatever TCP delivers and hands out whole PDUs; it checks each
header before buffering a body, so a peer cannot make us hold more than one PDU of
our own advertised size.  Association PDUs are decoded with pynetdicom's codecs after
we have checked their item lengths ourselves (pynetdicom slices on trust) and dropped
the items it does not know (it raises on them; PS3.8 says skip them); a proposal seen
before is not decoded again.  P-DATA is
parsed here: it is the hot path and its fragments must reach a consumer without
being copied into a whole message.
"""

from __future__ import annotations

import copy
import struct
from collections import deque

import attrs
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE

ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

PDU_NAMES = {
    ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    ASSOCIATE_AC: "A-ASSOCIATE-AC",
    ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    RELEASE_RQ: "A-RELEASE-RQ",
    RELEASE_RP: "A-RELEASE-RP",
    ABORT: "A-ABORT",
}

# A-ABORT sources and provider reasons (PS3.8 §9.3.8).
SOURCE_SERVICE_USER = 0x00
SOURCE_SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PARAMETER = 0x04
REASON_UNEXPECTED_PARAMETER = 0x05
REASON_INVALID_PARAMETER = 0x06

ABORT_REASONS = {
    REASON_NOT_SPECIFIED: "reason not specified",
    REASON_UNRECOGNIZED_PDU: "unrecognized PDU",
    REASON_UNEXPECTED_PDU: "unexpected PDU",
    REASON_UNRECOGNIZED_PARAMETER: "unrecognized PDU parameter",
    REASON_UNEXPECTED_PARAMETER: "unexpected PDU parameter",
    REASON_INVALID_PARAMETER: "invalid PDU parameter value",
}

_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")

# Association PDUs carry one item per presentation context; a PACS proposing every
# storage SOP class twice sends ~10 KB.  1 MiB is far beyond any real request and
# still bounds what a hostile peer can make us buffer before we parse anything.
MAX_ASSOCIATE_PDU = 1 << 20


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with `reason`."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class PDV:
    """One presentation data value item: a fragment of a command or data set."""

    context_id: int
    is_command: bool
    is_last: bool
    fragment: bytes


# Received chunks smaller than this are appended to a small predecessor.
_SMALL_CHUNK = 4096


class PDUFramer:
    """Cut a byte stream into PDUs, by offset, with limits checked at the header.

    `max_pdata` is the largest P-DATA-TF variable field we advertised (0 = none).
    What TCP delivers is kept as received (bytes are immutable): a PDU within one
    chunk is handed out as a view of it, one spread over several is joined once.
    """

    def __init__(self, max_pdata: int) -> None:
        self.max_pdata = max_pdata
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into _chunks[0]
        self._size = 0  # bytes buffered from _offset on

    def feed(self, data: bytes) -> None:
        if not data:
            return
        chunks = self._chunks
        if len(data) < _SMALL_CHUNK and chunks and len(chunks[-1]) < _SMALL_CHUNK:
            # A peer trickling bytes must not cost us an object per byte.
            chunks[-1] += data
        else:
            chunks.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)

    def buffered(self) -> int:
        return self._size

    def next_pdu(self) -> tuple[int, bytes | memoryview] | None:
        """The next whole PDU as (type, body), or None until more bytes arrive.

        A P-DATA-TF body comes as a memoryview (its fragments are copied out once,
        by parse_pdvs), any other as bytes.  Raises ProtocolError for an unknown type
        or a length over its limit, as soon as the 6-byte header is in: there is no
        point waiting for the body.
        """
        if self._size < 6:
            return None
        first = self._chunks[0]
        start = self._offset
        if len(first) - start >= 6:
            pdu_type, _, length = _HEADER.unpack_from(first, start)
        else:
            pdu_type, _, length = _HEADER.unpack(self._peek(6))
        self._check_header(pdu_type, length)
        total = 6 + length
        if self._size < total:
            return None
        if len(first) - start >= total:
            body: bytes | memoryview = memoryview(first)[start + 6 : start + total]
            self._consume_in_first(total)
        else:
            body = memoryview(self._take(total))[6:]
        if pdu_type != P_DATA_TF:
            body = bytes(body)
        return pdu_type, body

    def _consume_in_first(self, count: int) -> None:
        self._offset += count
        self._size -= count
        if self._offset == len(self._chunks[0]):
            self._chunks.popleft()
            self._offset = 0

    def _peek(self, count: int) -> bytes:
        out = bytearray()
        offset = self._offset
        for chunk in self._chunks:
            out += chunk[offset : offset + count - len(out)]
            offset = 0
            if len(out) == count:
                break
        return bytes(out)

    def _take(self, count: int) -> bytes:
        """`count` bytes spread over several chunks, joined in one copy."""
        chunks = self._chunks
        parts: list[bytes | memoryview] = []
        need = count
        while need:
            chunk = chunks[0]
            view = memoryview(chunk)[self._offset :]
            if len(view) <= need:
                parts.append(view)
                need -= len(view)
                chunks.popleft()
                self._offset = 0
            else:
                parts.append(view[:need])
                self._offset += need
                need = 0
        self._size -= count
        return b"".join(parts)

    def _check_header(self, pdu_type: int, length: int) -> None:
        if pdu_type not in PDU_NAMES:
            raise ProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", REASON_UNRECOGNIZED_PDU)
        if pdu_type == P_DATA_TF:
            if self.max_pdata and length > self.max_pdata:
                raise ProtocolError(
                    f"P-DATA-TF of {length} bytes exceeds our maximum PDU length {self.max_pdata}",
                    REASON_INVALID_PARAMETER,
                )
        elif pdu_type in (RELEASE_RQ, RELEASE_RP, ABORT):
            if length != 4:
                raise ProtocolError(
                    f"{PDU_NAMES[pdu_type]} with length {length}, expected 4", REASON_INVALID_PARAMETER
                )
        elif length > MAX_ASSOCIATE_PDU:
            raise ProtocolError(
                f"{PDU_NAMES[pdu_type]} of {length} bytes is too large", REASON_INVALID_PARAMETER
            )


def parse_pdvs(body: bytes | memoryview) -> list[PDV]:
    """Split a P-DATA-TF variable field into PDV items, checking every length.

    Each fragment is copied out of `body` once, as bytes: its consumers keep and write it.
    """
    pdvs = []
    offset = 0
    end = len(body)
    if end == 0:
        raise ProtocolError("P-DATA-TF without PDV items")
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("truncated PDV item header")
        item_length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if item_length < 2 or offset + 4 + item_length > end:
            raise ProtocolError(f"PDV item length {item_length} does not fit the PDU")
        fragment = bytes(body[offset + 6 : offset + 4 + item_length])
        pdvs.append(PDV(context_id, bool(control & 1), bool(control & 2), fragment))
        offset += 4 + item_length
    return pdvs


def encode_pdata(pdvs: list[tuple[int, int, bytes]]) -> list[bytes]:
    """One P-DATA-TF from (context_id, control, fragment) triples, as a writeSequence list."""
    total = sum(6 + len(f) for _, _, f in pdvs)
    out = [_HEADER.pack(P_DATA_TF, 0, total)]
    for context_id, control, fragment in pdvs:
        out.append(_PDV_HEADER.pack(len(fragment) + 2, context_id, control))
        out.append(fragment)
    return out


def encode_release_rq() -> bytes:
    return _HEADER.pack(RELEASE_RQ, 0, 4) + b"\x00" * 4


def encode_release_rp() -> bytes:
    return _HEADER.pack(RELEASE_RP, 0, 4) + b"\x00" * 4


def encode_abort(source: int, reason: int) -> bytes:
    return _HEADER.pack(ABORT, 0, 4) + bytes((0, 0, source, reason))


def decode_abort(body: bytes | memoryview) -> tuple[int, int]:
    """(source, reason) of an A-ABORT body."""
    return body[2], body[3]


def decode_reject(body: bytes | memoryview) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ body."""
    if len(body) != 4:
        raise ProtocolError(f"A-ASSOCIATE-RJ with length {len(body)}, expected 4")
    return body[1], body[2], body[3]


# Item types pynetdicom decodes, per level (PS3.8 §9.3.2, PS3.7 D.3.3).  Any other item
# is skipped, as PS3.8 §9.3.1 requires; pynetdicom would raise KeyError on it.
_ITEMS = frozenset((0x10, 0x20, 0x21, 0x50))
_CONTEXT_SUB_ITEMS = frozenset((0x30, 0x40))
_USER_SUB_ITEMS = frozenset(range(0x51, 0x5A))


def _known_items(body: bytes, offset: int) -> bytes:
    """The variable items from `offset`, lengths checked, unrecognized (sub-)items dropped."""
    out = bytearray()
    end = len(body)
    while offset < end:
        if end - offset < 4:
            raise ProtocolError("truncated item header")
        item_type = body[offset]
        (length,) = struct.unpack_from(">H", body, offset + 2)
        item_end = offset + 4 + length
        if item_end > end:
            raise ProtocolError(f"item 0x{item_type:02X} length {length} runs past the PDU")
        if item_type in (0x20, 0x21):
            # presentation context: id, reserved, result, reserved, then sub-items
            if length < 4:
                raise ProtocolError(f"presentation context item with length {length}")
            subs = _known_sub_items(body, offset + 8, item_end, _CONTEXT_SUB_ITEMS)
            out += struct.pack(">BBH", item_type, 0, 4 + len(subs)) + body[offset + 4 : offset + 8] + subs
        elif item_type == 0x50:
            subs = _known_sub_items(body, offset + 4, item_end, _USER_SUB_ITEMS)
            out += struct.pack(">BBH", item_type, 0, len(subs)) + subs
        elif item_type in _ITEMS:
            out += body[offset:item_end]
        offset = item_end
    return bytes(out)


def _known_sub_items(body: bytes, offset: int, end: int, known: frozenset[int]) -> bytes:
    out = bytearray()
    while offset < end:
        if end - offset < 4:
            raise ProtocolError("truncated sub-item header")
        (length,) = struct.unpack_from(">H", body, offset + 2)
        if offset + 4 + length > end:
            raise ProtocolError(f"sub-item 0x{body[offset]:02X} length {length} runs past its item")
        if body[offset] in known:
            out += body[offset : offset + 4 + length]
        offset += 4 + length
    return bytes(out)


def _full(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, 0, len(body)) + body


# Decoded A-ASSOCIATE PDUs by their bytes less the two AE titles.  A peer opens every
# association with the same proposal (Orthanc: ~126 contexts per C-MOVE), and
# pynetdicom's decode validates every UID in it: milliseconds before the first PDV.
# The titles are left out of the key so that one proposal from many AEs is one entry.
DECODED_KEPT = 32
_decoded: dict[tuple[int, bytes], A_ASSOCIATE] = {}


def decode_associate(pdu_type: int, body: bytes | memoryview) -> A_ASSOCIATE:
    """Decode an A-ASSOCIATE-RQ or -AC body into pynetdicom's primitive.

    The presentation context and user information items of the primitive returned
    may be shared with other calls' primitives: read them, do not change them.
    """
    if len(body) < 68:
        raise ProtocolError(f"{PDU_NAMES[pdu_type]} of {len(body)} bytes is truncated")
    body = bytes(body)
    key = (pdu_type, body[:4] + body[36:])
    cached = _decoded.get(key)
    if cached is None:
        primitive = _decode_associate(pdu_type, body)
        if len(_decoded) >= DECODED_KEPT:
            _decoded.clear()
        _decoded[key] = primitive
        return _copy_primitive(primitive)
    primitive = _copy_primitive(cached)
    # Only the fixed fields go through pynetdicom again, so the titles are checked and
    # stripped exactly as a whole decode would (an invalid one still raises).
    fixed = A_ASSOCIATE_RQ() if pdu_type == ASSOCIATE_RQ else A_ASSOCIATE_AC()
    try:
        fixed.decode(_full(pdu_type, body[:68]))
        primitive.calling_ae_title = fixed.calling_ae_title
        primitive.called_ae_title = fixed.called_ae_title
    except Exception as e:
        raise ProtocolError(f"undecodable {PDU_NAMES[pdu_type]}: {e}") from e
    return primitive


def _copy_primitive(primitive: A_ASSOCIATE) -> A_ASSOCIATE:
    # Fresh lists, shared items: nothing of ours or of pynetdicom's negotiation changes
    # a received context or user information item, but callers may extend the lists.
    copied = copy.copy(primitive)
    for name, value in vars(primitive).items():
        if isinstance(value, list):
            setattr(copied, name, list(value))
    return copied


def _decode_associate(pdu_type: int, body: bytes) -> A_ASSOCIATE:
    items = _known_items(body, 68)
    pdu = A_ASSOCIATE_RQ() if pdu_type == ASSOCIATE_RQ else A_ASSOCIATE_AC()
    try:
        pdu.decode(_full(pdu_type, body[:68] + items))
        primitive = pdu.to_primitive()
    except Exception as e:  # pynetdicom raises whatever its slicing hits
        raise ProtocolError(f"undecodable {PDU_NAMES[pdu_type]}: {e}") from e
    return primitive


def protocol_version(body: bytes | memoryview) -> int:
    """The protocol version bits of an A-ASSOCIATE-RQ body (pynetdicom's primitive drops
    them; AE-6 must reject a request without bit 0)."""
    return int(struct.unpack_from(">H", body, 0)[0])


def encode_associate(primitive: A_ASSOCIATE) -> bytes:
    """Encode an A-ASSOCIATE request, accept or reject primitive as its PDU."""
    if primitive.result is None:
        pdu: A_ASSOCIATE_RQ | A_ASSOCIATE_AC | A_ASSOCIATE_RJ = A_ASSOCIATE_RQ()
    elif primitive.result == 0:
        pdu = A_ASSOCIATE_AC()
    else:
        pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())



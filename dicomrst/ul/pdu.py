# -*- test-case-name: tests.unit.test_ul_pdu -*-
"""PDU framing and codecs (PS3.8 §9.3), free of I/O.

The framer is fed whatever TCP delivers and hands out whole PDUs; it checks each
header before buffering a body, so a peer cannot make us hold more than one PDU of
our own advertised size.  Association PDUs are decoded with pynetdicom's codecs after
we have checked their items ourselves (lengths, the sub-items each must have, UIDs and
AE titles; pynetdicom slices on trust) and dropped the items it does not know (it
raises on them; PS3.8 says skip them); a proposal seen before is not decoded again.
P-DATA is parsed here: it is the hot path and its fragments must reach a consumer
without being copied into a whole message.

Every decoder here returns a value or raises `ProtocolError`, whatever the bytes: the
protocol turns that into one A-ABORT.
"""

from __future__ import annotations

import copy
import re
import struct
from collections import deque
from typing import NamedTuple

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


class PDV(NamedTuple):
    """One presentation data value item: a fragment of a command or data set.

    A named tuple, not an attrs class: one is made per PDU received, and a tuple is made
    in a third of the time of a frozen attrs instance."""

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

    def whole_pdata(self, data: bytes) -> memoryview | None:
        """The body of the P-DATA-TF that `data` completes exactly, without buffering it;
        None (and nothing buffered) otherwise: then `feed` it.

        Nearly every chunk a PACS sends is one: a whole P-DATA-TF with nothing buffered, or
        the body of one whose 6-byte header alone is buffered (Orthanc sends the header and
        the body apart).  Anything else, a header that fails its checks included, is left
        to `feed` and `next_pdu`, which report it.
        """
        size = self._size
        if size == 0:
            if len(data) < 6:
                return None
            pdu_type, _, length = _HEADER.unpack_from(data)
            if pdu_type != P_DATA_TF or length + 6 != len(data) or length > (self.max_pdata or length):
                return None
            return memoryview(data)[6:]
        if size != 6:
            return None
        header = self._chunks[0]
        start = self._offset
        if len(header) - start != 6:
            return None  # the header is spread over two chunks
        pdu_type, _, length = _HEADER.unpack_from(header, start)
        if pdu_type != P_DATA_TF or length != len(data) or length > (self.max_pdata or length):
            return None
        self._chunks.clear()
        self._offset = 0
        self._size = 0
        return memoryview(data)

    def pdata_header(self, data: bytes) -> bool:
        """Keep `data` and say True when it is the header of a P-DATA-TF alone, within our
        limit, with nothing buffered (Orthanc sends a PDU's header and body apart): what
        `feed` and `next_pdu` would conclude, without their work.  False, and nothing
        kept, otherwise."""
        if self._size or len(data) != 6:
            return False
        pdu_type, _, length = _HEADER.unpack(data)
        if pdu_type != P_DATA_TF or length > (self.max_pdata or length):
            return False
        self._chunks.append(data)
        self._size = 6
        return True

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
    end = len(body)
    if end == 0:
        raise ProtocolError("P-DATA-TF without PDV items")
    if end >= 6:
        item_length, context_id, control = _PDV_HEADER.unpack_from(body)
        if item_length + 4 == end and item_length >= 2:
            # One PDV filling the PDU, as nearly every PDU a PACS sends.
            return [PDV(context_id, (control & 1) != 0, (control & 2) != 0, bytes(body[6:]))]
    pdvs = []
    offset = 0
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


# What pynetdicom's decoders are given is checked here first, item by item (PS3.8
# §9.3.2-9.3.3, PS3.7 D.3.3): lengths that fit, the sub-items each item must have, UIDs
# that are UIDs, AE titles and names of the default repertoire.  pynetdicom slices on
# trust, and what it builds from garbage (a context without an abstract syntax, a UID
# of control characters) raises later, in negotiation, or is logged with a traceback by
# its own logger.  Items and sub-items of a type not listed are skipped, as PS3.8
# §9.3.1 requires (pynetdicom would raise KeyError on them).
_UID = re.compile(rb"[0-9.]{1,64}")
_TEXT = re.compile(rb"[\x20-\x5b\x5d-\x7e]+")  # default repertoire, no backslash or controls
APPLICATION_CONTEXT_ITEM = 0x10
CONTEXT_RQ_ITEM = 0x20
CONTEXT_AC_ITEM = 0x21
USER_INFORMATION_ITEM = 0x50
_ABSTRACT_SYNTAX = 0x30
_TRANSFER_SYNTAX = 0x40


def _uid(value: bytes, what: str) -> bytes:
    # Odd-length UIDs are padded with a NUL (PS3.5 9.1); some peers pad with a space.
    if not _UID.fullmatch(value.rstrip(b"\x00 ")):
        raise ProtocolError(f"{what} is not a UID")
    return value


def _sub_items(body: bytes, offset: int, end: int) -> list[tuple[int, bytes]]:
    """(type, value) of each sub-item from `offset` to `end`, lengths checked."""
    out = []
    while offset < end:
        if end - offset < 4:
            raise ProtocolError("truncated sub-item header")
        (length,) = struct.unpack_from(">H", body, offset + 2)
        if offset + 4 + length > end:
            raise ProtocolError(f"sub-item 0x{body[offset]:02X} length {length} runs past its item")
        out.append((body[offset], body[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return out


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _context(item_type: int, value: bytes) -> bytes:
    """A presentation context item (20H or 21H), checked; unknown sub-items dropped."""
    if len(value) < 4:
        raise ProtocolError(f"presentation context item with length {len(value)}")
    subs = _sub_items(value, 4, len(value))
    abstract = [v for t, v in subs if t == _ABSTRACT_SYNTAX]
    transfer = [v for t, v in subs if t == _TRANSFER_SYNTAX]
    context_id = value[0]
    kept: list[bytes] = []
    if item_type == CONTEXT_RQ_ITEM:
        if len(abstract) != 1 or not transfer:
            raise ProtocolError(
                f"presentation context {context_id} needs one abstract syntax and at least one "
                f"transfer syntax, has {len(abstract)} and {len(transfer)}"
            )
        kept.append(_item(_ABSTRACT_SYNTAX, _uid(abstract[0], f"abstract syntax of context {context_id}")))
    else:
        result = value[2]
        if result > 4:
            raise ProtocolError(f"presentation context {context_id} with result {result}")
        if abstract:
            raise ProtocolError(
                f"accepted presentation context {context_id} with an abstract syntax",
                REASON_UNEXPECTED_PARAMETER,
            )
        if result != 0:
            # The transfer syntax of a refused context is "not significant" (PS3.8
            # §9.3.3.2): one that is not a UID is dropped, not an error.
            transfer = [ts for ts in transfer if _UID.fullmatch(ts.rstrip(b"\x00 "))]
        elif len(transfer) != 1:
            raise ProtocolError(
                f"accepted presentation context {context_id} with {len(transfer)} transfer syntaxes"
            )
    kept += [_item(_TRANSFER_SYNTAX, _uid(ts, f"transfer syntax of context {context_id}")) for ts in transfer]
    return _item(item_type, value[:4] + b"".join(kept))


def _length_prefixed(value: bytes, offset: int, what: str) -> tuple[bytes, int]:
    """A 2-byte length and that many bytes at `offset`: (the bytes, the offset after them)."""
    if len(value) - offset < 2:
        raise ProtocolError(f"{what} is truncated")
    (length,) = struct.unpack_from(">H", value, offset)
    if offset + 2 + length > len(value):
        raise ProtocolError(f"{what} runs past its sub-item")
    return value[offset + 2 : offset + 2 + length], offset + 2 + length


def _check_user_sub_item(sub_type: int, value: bytes) -> None:
    """One user information sub-item (PS3.7 D.3.3, PS3.8 D.1) whose type we decode."""
    if sub_type in (0x51, 0x53):  # maximum length; asynchronous operations window
        if len(value) != 4:
            raise ProtocolError(f"user information sub-item 0x{sub_type:02X} with length {len(value)}")
    elif sub_type == 0x52:
        _uid(value, "implementation class UID")
    elif sub_type == 0x55:
        if len(value) > 16 or not _TEXT.fullmatch(value):
            raise ProtocolError("implementation version name is not 1 to 16 characters of text")
    elif sub_type == 0x54:  # SCP/SCU role selection
        uid, end = _length_prefixed(value, 0, "role selection")
        _uid(uid, "SOP class UID of a role selection")
        if len(value) != end + 2 or value[end] > 1 or value[end + 1] > 1:
            raise ProtocolError("role selection without its two role bytes (0 or 1)")
    elif sub_type == 0x56:  # SOP class extended negotiation
        uid, _ = _length_prefixed(value, 0, "extended negotiation")
        _uid(uid, "SOP class UID of an extended negotiation")
    elif sub_type == 0x57:  # SOP class common extended negotiation
        sop, offset = _length_prefixed(value, 0, "common extended negotiation")
        service, offset = _length_prefixed(value, offset, "common extended negotiation")
        related, offset = _length_prefixed(value, offset, "common extended negotiation")
        _uid(sop, "SOP class UID of a common extended negotiation")
        _uid(service, "service class UID of a common extended negotiation")
        if offset != len(value):
            raise ProtocolError("common extended negotiation with bytes after its related classes")
        inner = 0
        while inner < len(related):
            uid, inner = _length_prefixed(related, inner, "related general SOP class")
            _uid(uid, "related general SOP class UID")
    elif sub_type == 0x58:  # user identity request
        if len(value) < 2 or not 1 <= value[0] <= 5 or value[1] > 1:
            raise ProtocolError("user identity with an unknown type or response flag")
        _, offset = _length_prefixed(value, 2, "user identity")
        _, offset = _length_prefixed(value, offset, "user identity")
        if offset != len(value):
            raise ProtocolError("user identity with bytes after its fields")
    elif sub_type == 0x59:  # user identity response
        _, offset = _length_prefixed(value, 0, "user identity response")
        if offset != len(value):
            raise ProtocolError("user identity response with bytes after its field")


_USER_SUB_ITEMS = frozenset(range(0x51, 0x5A))


def _known_items(body: bytes, offset: int, pdu_type: int) -> bytes:
    """The variable items from `offset`, checked, with unrecognized (sub-)items dropped."""
    out = bytearray()
    end = len(body)
    context_type = CONTEXT_RQ_ITEM if pdu_type == ASSOCIATE_RQ else CONTEXT_AC_ITEM
    seen = {APPLICATION_CONTEXT_ITEM: 0, context_type: 0, USER_INFORMATION_ITEM: 0}
    while offset < end:
        if end - offset < 4:
            raise ProtocolError("truncated item header")
        item_type = body[offset]
        (length,) = struct.unpack_from(">H", body, offset + 2)
        item_end = offset + 4 + length
        if item_end > end:
            raise ProtocolError(f"item 0x{item_type:02X} length {length} runs past the PDU")
        value = body[offset + 4 : item_end]
        if item_type in seen:
            seen[item_type] += 1
        if item_type == APPLICATION_CONTEXT_ITEM:
            out += _item(item_type, _uid(value, "application context name"))
        elif item_type == context_type:
            out += _context(item_type, value)
        elif item_type in (CONTEXT_RQ_ITEM, CONTEXT_AC_ITEM):
            raise ProtocolError(
                f"{PDU_NAMES[pdu_type]} with a presentation context item of type 0x{item_type:02X}",
                REASON_UNEXPECTED_PARAMETER,
            )
        elif item_type == USER_INFORMATION_ITEM:
            subs = b""
            for sub_type, sub_value in _sub_items(body, offset + 4, item_end):
                if sub_type in _USER_SUB_ITEMS:
                    _check_user_sub_item(sub_type, sub_value)
                    subs += _item(sub_type, sub_value)
            out += _item(item_type, subs)
        offset = item_end
    name = PDU_NAMES[pdu_type]
    if seen[APPLICATION_CONTEXT_ITEM] != 1 or seen[USER_INFORMATION_ITEM] != 1:
        raise ProtocolError(
            f"{name} needs one application context and one user information item, has "
            f"{seen[APPLICATION_CONTEXT_ITEM]} and {seen[USER_INFORMATION_ITEM]}"
        )
    if pdu_type == ASSOCIATE_RQ and not seen[context_type]:
        raise ProtocolError(f"{name} without a presentation context")
    return bytes(out)


def _ae_title(field: bytes, what: str) -> str:
    title = field.rstrip(b" \x00").lstrip(b" ")
    if not _TEXT.fullmatch(title):
        raise ProtocolError(f"{what} AE title is not 1 to 16 characters of text")
    return title.decode("ascii")


def _untested_title(field: bytes, placeholder: str) -> str:
    # An A-ASSOCIATE-AC's AE title fields are "not tested" (PS3.8 §9.3.3): one that is not
    # text does not fail the association, it is shown as `placeholder`.
    try:
        return _ae_title(field, "")
    except ProtocolError:
        return placeholder


def _fixed_part(pdu_type: int, body: bytes) -> bytes:
    """The 68 fixed bytes as pynetdicom is given them: the AE titles are ours to read (the
    caller sets them), so it gets two valid ones whatever the peer sent."""
    return body[:4] + _PLACEHOLDER_TITLES + body[36:68]


_PLACEHOLDER_TITLES = b"CALLED".ljust(16) + b"CALLING".ljust(16)


def _full(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, 0, len(body)) + body


# Decoded A-ASSOCIATE PDUs by their bytes less the two AE titles.  A peer opens every
# association with the same proposal (Orthanc: ~126 contexts per C-MOVE), and
# pynetdicom's decode validates every UID in it: milliseconds before the first PDV.
# The titles are left out of the key so that one proposal from many AEs is one entry.
DECODED_KEPT = 32
_decoded: dict[tuple[int, bytes], A_ASSOCIATE] = {}


def decode_associate(pdu_type: int, body: bytes | memoryview) -> A_ASSOCIATE:
    """Decode an A-ASSOCIATE-RQ or -AC body into pynetdicom's primitive, or raise
    `ProtocolError` (never anything else).

    The presentation context and user information items of the primitive returned
    may be shared with other calls' primitives: read them, do not change them.
    """
    if len(body) < 68:
        raise ProtocolError(f"{PDU_NAMES[pdu_type]} of {len(body)} bytes is truncated")
    body = bytes(body)
    if pdu_type == ASSOCIATE_RQ:
        titles = (_ae_title(body[4:20], "called"), _ae_title(body[20:36], "calling"))
    else:
        titles = (_untested_title(body[4:20], "ACCEPTOR"), _untested_title(body[20:36], "REQUESTOR"))
    key = (pdu_type, body[:4] + body[36:])
    cached = _decoded.get(key)
    if cached is None:
        cached = _decode_associate(pdu_type, body)
        if len(_decoded) >= DECODED_KEPT:
            _decoded.clear()
        _decoded[key] = cached
    primitive = _copy_primitive(cached)
    # Checked above, so pynetdicom's setters take them as they are.
    primitive.called_ae_title, primitive.calling_ae_title = titles
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
    items = _known_items(body, 68, pdu_type)
    pdu = A_ASSOCIATE_RQ() if pdu_type == ASSOCIATE_RQ else A_ASSOCIATE_AC()
    try:
        pdu.decode(_full(pdu_type, _fixed_part(pdu_type, body) + items))
        primitive = pdu.to_primitive()
    except Exception as e:  # checked above; should pynetdicom still object, it is the peer's PDU
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



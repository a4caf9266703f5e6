# -*- test-case-name: tests.unit.test_dimse -*-
"""DIMSE command sets (PS3.7 §9.3, §E): always Implicit VR Little Endian, group 0000."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from pydicom.dataset import Dataset

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF

NAMES = {
    C_STORE_RQ: "C-STORE-RQ",
    C_STORE_RSP: "C-STORE-RSP",
    C_GET_RQ: "C-GET-RQ",
    C_GET_RSP: "C-GET-RSP",
    C_FIND_RQ: "C-FIND-RQ",
    C_FIND_RSP: "C-FIND-RSP",
    C_MOVE_RQ: "C-MOVE-RQ",
    C_MOVE_RSP: "C-MOVE-RSP",
    C_ECHO_RQ: "C-ECHO-RQ",
    C_ECHO_RSP: "C-ECHO-RSP",
    C_CANCEL_RQ: "C-CANCEL-RQ",
}

NO_DATASET = 0x0101
HAS_DATASET = 0x0000

PRIORITY_MEDIUM = 0x0000

# Status classes (PS3.7 Annex C)
SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = (0xFF00, 0xFF01)


class CommandError(Exception):
    """A command set we cannot decode or that lacks what its type requires."""


def is_response(command_field: int) -> bool:
    return bool(command_field & 0x8000)


def is_pending(status: int) -> bool:
    return status in PENDING


def status_category(status: int) -> str:
    if status == SUCCESS:
        return "success"
    if status == CANCEL:
        return "cancel"
    if status in PENDING:
        return "pending"
    if status in (0x0001, 0x0107, 0x0116) or status >> 12 == 0xB:
        return "warning"
    return "failure"


# Command set elements (PS3.7 E.1-1): keyword -> (tag, VR).  The command set is always
# Implicit VR Little Endian and tiny; encoding it with pydicom cost ~0.5 ms per
# C-STORE sub-operation (a pydicom Dataset built and parsed twice per instance), which
# is a tenth of a 200-instance retrieve.  So it is encoded and parsed here with struct.
FIELDS: dict[str, tuple[int, str]] = {
    "CommandGroupLength": (0x00000000, "UL"),
    "AffectedSOPClassUID": (0x00000002, "UI"),
    "RequestedSOPClassUID": (0x00000003, "UI"),
    "CommandField": (0x00000100, "US"),
    "MessageID": (0x00000110, "US"),
    "MessageIDBeingRespondedTo": (0x00000120, "US"),
    "MoveDestination": (0x00000600, "AE"),
    "Priority": (0x00000700, "US"),
    "CommandDataSetType": (0x00000800, "US"),
    "Status": (0x00000900, "US"),
    "OffendingElement": (0x00000901, "AT"),
    "ErrorComment": (0x00000902, "LO"),
    "ErrorID": (0x00000903, "US"),
    "AffectedSOPInstanceUID": (0x00001000, "UI"),
    "RequestedSOPInstanceUID": (0x00001001, "UI"),
    "EventTypeID": (0x00001002, "US"),
    "AttributeIdentifierList": (0x00001005, "AT"),
    "ActionTypeID": (0x00001008, "US"),
    "NumberOfRemainingSuboperations": (0x00001020, "US"),
    "NumberOfCompletedSuboperations": (0x00001021, "US"),
    "NumberOfFailedSuboperations": (0x00001022, "US"),
    "NumberOfWarningSuboperations": (0x00001023, "US"),
    "MoveOriginatorApplicationEntityTitle": (0x00001030, "AE"),
    "MoveOriginatorMessageID": (0x00001031, "US"),
}
_BY_TAG = {tag: (keyword, vr) for keyword, (tag, vr) in FIELDS.items()}
_ORDER = {keyword: tag for keyword, (tag, _) in FIELDS.items()}
_ELEMENT = struct.Struct("<HHL")


#: A command element's value: an int (US, UL), a string (UI, AE, LO) or ints (AT).
CommandValue = int | str | list[int]


class Command:
    """A command set: attribute access by PS3.7 keyword, as pydicom's Dataset offers.

    Values are ints (US, UL), strings (UI, AE, LO) or lists of ints (AT).
    """

    __slots__ = ("_values",)

    _values: dict[str, CommandValue]

    def __init__(self, values: dict[str, CommandValue] | None = None) -> None:
        object.__setattr__(self, "_values", dict(values or {}))

    def __getattr__(self, keyword: str) -> CommandValue:
        try:
            return self._values[keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    def __setattr__(self, keyword: str, value: CommandValue) -> None:
        if keyword not in FIELDS:
            raise AttributeError(f"{keyword} is not a command set element")
        self._values[keyword] = value

    def __contains__(self, keyword: object) -> bool:
        return keyword in self._values

    def get(self, keyword: str, default: CommandValue | None = None) -> CommandValue | None:
        return self._values.get(keyword, default)

    def number(self, keyword: str, default: int | None = None) -> int:
        """The value of a US or UL element (`default` when absent; KeyError without one)."""
        value = self._values.get(keyword, default)
        if value is None:
            raise KeyError(keyword)
        if not isinstance(value, int):
            raise CommandError(f"{keyword} is not a number: {value!r}")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._values, key=_ORDER.__getitem__))

    def __repr__(self) -> str:
        return f"Command({self._values!r})"


def _encode_value(vr: str, value: CommandValue) -> bytes:
    try:
        if vr in ("US", "UL"):
            if not isinstance(value, int):
                raise CommandError(f"a {vr} command element takes a number, not {value!r}")
            return struct.pack("<H" if vr == "US" else "<L", value)
        if vr == "AT":
            tags = value if isinstance(value, list) else [int(value)]
            return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
        raw = str(value).encode("ascii")
    except (struct.error, UnicodeEncodeError, ValueError, TypeError) as e:
        raise CommandError(f"cannot encode {value!r} as a {vr} command element: {e}") from None
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


_US_ELEMENT = struct.Struct("<HHLH")
# Text values encoded before (SOP class UIDs, AE titles), by VR and value.
_TEXTS: dict[tuple[str, str], bytes] = {}
_TEXTS_KEPT = 256


def encode_command(ds: Command | Dataset) -> bytes:
    """Encode a command set with its (0000,0000) group length in front."""
    if isinstance(ds, Dataset):  # callers may still build pydicom command sets
        ds = Command({elem.keyword: elem.value for elem in ds if elem.keyword in FIELDS})
    parts = []
    values = ds._values
    for keyword in sorted(values, key=_ORDER.__getitem__):
        tag, vr = FIELDS[keyword]
        if tag == 0x00000000:  # CommandGroupLength: written below
            continue
        value = values[keyword]
        if vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
            parts.append(_US_ELEMENT.pack(0x0000, tag, 2, value))  # most of a command set
            continue
        if type(value) is str:
            encoded = _TEXTS.get((vr, value))
            if encoded is None:
                encoded = _encode_value(vr, value)
                if len(_TEXTS) >= _TEXTS_KEPT:
                    _TEXTS.clear()
                _TEXTS[(vr, value)] = encoded
        else:
            encoded = _encode_value(vr, value)
        parts.append(_ELEMENT.pack(0x0000, tag, len(encoded)))
        parts.append(encoded)
    rest = b"".join(parts)
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(rest)) + rest


# What each kind of message must carry for us to act on it (PS3.7 9.3): checked when
# the command set is decoded, so no handler meets a message it cannot answer or match.
_REQUIRED: dict[int, tuple[str, ...]] = {
    C_STORE_RQ: ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID"),
    C_CANCEL_RQ: ("MessageIDBeingRespondedTo",),
}
_REQUEST_FIELDS = ("MessageID",)
_RESPONSE_FIELDS = ("MessageIDBeingRespondedTo", "Status")
# Requests that announce a data set by definition: without one, a C-STORE-RQ would
# leave its handler waiting for bytes that never come.
_NEEDS_DATASET = frozenset((C_STORE_RQ, C_FIND_RQ, C_GET_RQ, C_MOVE_RQ))

# PS3.5 6.2: a UI is digits and dots, at most 64 of them; an AE at most 16 characters of
# the default repertoire without backslash or control characters.  Anything else in a
# command set is refused here, so every value decoded can be encoded again (responses
# echo the request's UIDs) and none carries control characters into a log line.
_UID = re.compile(rb"[0-9.]{0,64}")
_AE = re.compile(rb"[\x20-\x5b\x5d-\x7e]{0,16}")
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def _text(keyword: str, vr: str, raw: bytes) -> str:
    if vr == "UI":
        value = raw.rstrip(b"\x00 ")
        if not _UID.fullmatch(value):
            raise CommandError(f"undecodable DIMSE command set: {keyword} is not a UID")
    elif vr == "AE":
        value = raw.rstrip(b"\x00 ").lstrip(b" ")
        if not _AE.fullmatch(value):
            raise CommandError(f"undecodable DIMSE command set: {keyword} is not an AE title")
    else:
        # Free text (Error Comment) is only ever read by people: kept, but as printable
        # ASCII, so a PACS's Latin-1 comment does not cost the association.
        value = _UNPRINTABLE.sub(b"?", raw.rstrip(b"\x00 "))
    return value.decode("ascii")


_DECODED: dict[bytes, dict[str, CommandValue]] = {}
_DECODED_KEPT = 64


def decode_command(data: bytes) -> Command:
    """A command set from its bytes, or `CommandError`: never anything else.

    Beyond the encoding, the elements the message's type requires must be present
    (`_REQUIRED`), and strings must be valid for their VR.
    """
    # The Pending C-FIND-RSPs of one find are the same bytes (a search gets a few to
    # hundreds): each is decoded once.  A Command owns its dict; the values are shared.
    key = data if type(data) is bytes else bytes(data)  # a key: hashable, immutable
    values = _DECODED.get(key)
    if values is None:
        values = _decode_new(key)
        if len(_DECODED) >= _DECODED_KEPT:
            _DECODED.clear()
        _DECODED[key] = values
    return Command(values)


def _decode_new(data: bytes) -> dict[str, CommandValue]:
    """A command set not seen in these bytes: the next find's responses differ from the
    last one's only in MessageIDBeingRespondedTo, so a response is looked up without it,
    and decoded whole only when that misses too."""
    where = _responded_to(data)
    if where is None:
        return _decode_command(data)
    rest = data[:where] + data[where + 2 :]
    values = _RESPONSES.get(rest)
    if values is None:
        values = _decode_command(data)
        if len(_RESPONSES) >= _DECODED_KEPT:
            _RESPONSES.clear()
        _RESPONSES[rest] = values
        return values
    values = dict(values)
    values["MessageIDBeingRespondedTo"] = data[where] | data[where + 1] << 8
    return values


def _responded_to(data: bytes) -> int | None:
    """Where the value of a (0000,0120) of length 2 starts, walking element headers;
    None when there is none or the walk meets anything odd (the full decode decides)."""
    offset = 0
    end = len(data) - 8
    while offset <= end:
        group, element, length = _ELEMENT.unpack_from(data, offset)
        if group != 0x0000 or element > 0x0120:
            return None
        offset += 8
        if element == 0x0120:
            return offset if length == 2 and offset + 2 <= len(data) else None
        offset += length
    return None


# Responses decoded before, without their MessageIDBeingRespondedTo (`_decode_new`).
_RESPONSES: dict[bytes, dict[str, CommandValue]] = {}


def _decode_command(data: bytes) -> dict[str, CommandValue]:
    values: dict[str, CommandValue] = {}
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < 8:
            raise CommandError("undecodable DIMSE command set: truncated element header")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0x0000:
            raise CommandError(
                f"undecodable DIMSE command set: element ({group:04X},{element:04X}) outside group 0000"
            )
        if offset + length > end:
            raise CommandError(
                f"undecodable DIMSE command set: element (0000,{element:04X}) runs past the end"
            )
        raw = bytes(data[offset : offset + length])
        offset += length
        known = _BY_TAG.get(element)
        if known is None:
            continue  # retired or private-use elements: not ours to interpret
        keyword, vr = known
        if keyword in values:
            raise CommandError(f"undecodable DIMSE command set: {keyword} appears twice")
        if vr in ("US", "UL"):
            size = 2 if vr == "US" else 4
            if length != size:
                raise CommandError(f"undecodable DIMSE command set: {keyword} has length {length}")
            values[keyword] = int.from_bytes(raw, "little")
        elif vr == "AT":
            if length % 4:
                raise CommandError(f"undecodable DIMSE command set: {keyword} has length {length}")
            values[keyword] = [
                int.from_bytes(raw[i : i + 2], "little") << 16 | int.from_bytes(raw[i + 2 : i + 4], "little")
                for i in range(0, length, 4)
            ]
        else:
            values[keyword] = _text(keyword, vr, raw)
    field = values.get("CommandField")
    if not isinstance(field, int):
        raise CommandError("DIMSE command set without CommandField")
    if "CommandDataSetType" not in values:
        raise CommandError("undecodable DIMSE command set: no CommandDataSetType")
    name = NAMES.get(field, f"command 0x{field:04X}")
    required = _REQUIRED.get(field) or (_RESPONSE_FIELDS if is_response(field) else _REQUEST_FIELDS)
    for keyword in required:
        if values.get(keyword) in (None, ""):
            raise CommandError(f"{name} without {keyword}")
    if field in _NEEDS_DATASET and values["CommandDataSetType"] == NO_DATASET:
        raise CommandError(f"{name} without a data set")
    return values


def has_dataset(ds: Command) -> bool:
    return ds.number("CommandDataSetType") != NO_DATASET


def command(command_field: int, **fields: CommandValue) -> Command:
    """Build a command set; `fields` are PS3.7 keywords (MessageID, Status, ...)."""
    ds = Command({"CommandField": command_field})
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    if "CommandDataSetType" not in fields:
        ds.CommandDataSetType = NO_DATASET
    return ds

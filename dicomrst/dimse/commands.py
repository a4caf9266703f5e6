# -*- test-case-name: tests.test_dimse -*-
"""DIMSE command sets (PS3.7 §9.3, §E): always Implicit VR Little Endian, group 0000."""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

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


def encode_command(ds: Dataset) -> bytes:
    """Encode a command set with its (0000,0000) group length in front."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    body = Dataset()
    for elem in ds:
        if elem.tag != 0x00000000:
            body.add(elem)
    write_dataset(fp, body)
    rest = fp.getvalue()
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(rest)) + rest


def decode_command(data: bytes) -> Dataset:
    try:
        ds = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
        command_field = ds.CommandField
        ds.CommandDataSetType  # noqa: B018 -- required in every command set
    except Exception as e:  # pydicom raises many types on malformed input
        raise CommandError(f"undecodable DIMSE command set: {e}") from e
    if not isinstance(command_field, int):
        raise CommandError("DIMSE command set without CommandField")
    return ds


def has_dataset(ds: Dataset) -> bool:
    return int(ds.CommandDataSetType) != NO_DATASET


def command(command_field: int, **fields: object) -> Dataset:
    """Build a command set; `fields` are PS3.7 keywords (MessageID, Status, ...)."""
    ds = Dataset()
    ds.CommandField = command_field
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    if "CommandDataSetType" not in fields:
        ds.CommandDataSetType = NO_DATASET
    return ds

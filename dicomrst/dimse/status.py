"""DIMSE status codes as text (PS3.4 Annex C, PS3.7 Annex C), for error bodies and logs."""

from __future__ import annotations

_STATUS = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0x0122: "Refused: SOP class not supported",
    0x0124: "Refused: not authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Identifier does not match SOP class",
    0xB000: "Warning: sub-operations complete, one or more failures or warnings",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0xC000: "Unable to process",
    0xFE00: "Cancel",
    0xFF00: "Pending",
    0xFF01: "Pending: optional keys not supported",
}


def describe_status(status: int) -> str:
    if status in _STATUS:
        return _STATUS[status]
    if status >> 12 == 0xC:
        return "Failed: unable to process"
    if status >> 8 == 0xA7:
        return "Refused: out of resources"
    if status >> 8 == 0xA9:
        return "Error: data set does not match SOP class"
    if status >> 12 == 0xB:
        return "Warning"
    return "unknown status"

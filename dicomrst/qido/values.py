# -*- test-case-name: tests.unit.test_qido_query -*-
"""Match values in QIDO-RS query parameters, checked against their attribute's VR
(PS3.18 §8.3.4, PS3.4 C.2.2.2), which uses the date/time range arithmetic of `dicomrst.common.matching`."""

from __future__ import annotations

import re

from dicomrst.common.matching import range_bounds, split_range
from dicomrst.common.tags import BINARY_VRS
from dicomrst.common.uids import is_uid
from dicomrst.errors import BadRequest
from dicomrst.qido.attributes import HEX_TAG, Attribute

WILDCARD_VRS = frozenset("AE CS LO LT PN SH ST UC UR UT".split())
_TEXT_VRS = frozenset("SH LO ST LT PN UC UT".split())  # may hold non-ASCII characters
_BACKSLASH_VRS = frozenset("LT ST UT".split())  # VM 1: a backslash is a character
RANGE_VRS = frozenset("DA TM DT".split())
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "IS": 12, "DS": 16}
# A range of two values with a UTC offset each (DT: 26 characters) and the dash fits.
_MAX_RANGE_LENGTH = 64
#: Longest value with wildcards: every VR's longest value but ST/LT/UC/UR/UT's (a PN of
#: three 64-character groups included).  The gateway matches such values itself, in
#: steps proportional to the pattern's length times the result's (`qido.matching`).
MAX_WILDCARD_LENGTH = 256
INT_RANGES = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_INTEGER = re.compile(r"[+-]?[0-9]+")
# One way to match any string: "[0-9]+\.?[0-9]*" had many, and took seconds to reject
# a long run of digits followed by anything else (quadratic backtracking).
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: Significant digits of the largest integer any VR holds (UV: 2**64 - 1 has 20).
MAX_INTEGER_DIGITS = 20
_BEYOND_EVERY_RANGE: int = 10**MAX_INTEGER_DIGITS
_AGE = re.compile(r"[0-9]{3}[DWMY]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # LT/ST/UT keep TAB LF FF CR


def integer(text: str) -> int | None:
    """`text` as an integer (``[+-]?[0-9]+``), or None when it is not one.

    Total: Python's ``int()`` raises on more than 4300 digits, so the digits beyond
    leading zeros are counted first; a value with more than `MAX_INTEGER_DIGITS` of them
    is out of every range and comes back as the nearest out-of-range number with the
    same sign (±10**MAX_INTEGER_DIGITS), never parsed.
    """
    if not _INTEGER.fullmatch(text):
        return None
    sign = -1 if text[0] == "-" else 1
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > MAX_INTEGER_DIGITS:
        return sign * _BEYOND_EVERY_RANGE
    return sign * int(digits or "0")


def shown(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut short if long: a 400 body stays short
    whatever the client sent."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _bad_value(attribute: Attribute, value: str, why: str) -> BadRequest:
    return BadRequest(f"invalid value for {attribute.name} ({attribute.vr}): {shown(value)}: {why}")


def _check_text(attribute: Attribute, value: str) -> None:
    vr = attribute.vr
    control = _TEXT_CONTROL if vr in _BACKSLASH_VRS else _CONTROL
    if control.search(value):
        raise _bad_value(attribute, value, "control characters are not allowed")
    if not value.isascii() and vr not in _TEXT_VRS:
        raise _bad_value(attribute, value, f"only ASCII characters are allowed in {vr} values")
    if "\\" in value and vr not in _BACKSLASH_VRS:
        raise _bad_value(attribute, value, "a backslash is DICOM's value separator and cannot be matched")
    if "*" in value or "?" in value:
        if vr not in WILDCARD_VRS:
            raise _bad_value(attribute, value, f"wildcards are not allowed in {vr} values")
        if len(value) > MAX_WILDCARD_LENGTH:
            why = f"a wildcard pattern longer than {MAX_WILDCARD_LENGTH} characters"
            raise _bad_value(attribute, value, why)


def match_value(attribute: Attribute, value: str, combined: bool) -> object:
    """Validate a match value for the attribute's VR; return what the identifier holds."""
    vr = attribute.vr
    if vr == "SQ":
        raise BadRequest(
            f"{attribute.name} is a sequence: match on its items, e.g. {attribute.name}.<attribute>=value"
        )
    if vr in BINARY_VRS:
        raise BadRequest(f"matching on {attribute.name} ({vr}) is not supported")
    if vr == "UI":
        uids = value.split(",")
        for uid in uids:
            if not is_uid(uid):
                raise _bad_value(attribute, value, f"{uid!r} is not a UID")
        return uids if len(uids) > 1 else uids[0]
    _check_text(attribute, value)
    if vr in RANGE_VRS:
        if len(value) > _MAX_RANGE_LENGTH:
            raise _bad_value(attribute, value, f"longer than {_MAX_RANGE_LENGTH} characters")
        try:
            bounds = split_range(vr, value)
        except ValueError as e:
            raise _bad_value(attribute, value, str(e)) from None
        if bounds is not None and not combined:
            low, high = range_bounds(vr, *bounds)
            if low is not None and high is not None and low > high:
                raise _bad_value(attribute, value, "the range ends before it starts")
        return value
    if vr in INT_RANGES:
        lowest, highest = INT_RANGES[vr]
        number = integer(value)
        if number is None or not lowest <= number <= highest:
            raise _bad_value(attribute, value, f"not an integer in [{lowest}, {highest}]")
        return number
    if vr in ("FL", "FD"):
        if not _DECIMAL.fullmatch(value):
            raise _bad_value(attribute, value, "not a number")
        return float(value)
    if vr == "IS":
        number = integer(value)
        if number is None or not -(2**31) <= number <= 2**31 - 1:
            raise _bad_value(attribute, value, "not an integer string")
    elif vr == "DS":
        if not _DECIMAL.fullmatch(value):
            raise _bad_value(attribute, value, "not a decimal string")
    elif vr == "AS":
        if not _AGE.fullmatch(value):
            raise _bad_value(attribute, value, "not an age string like 045Y")
    elif vr == "AT":
        if not HEX_TAG.fullmatch(value):
            raise _bad_value(attribute, value, "not a tag of 8 hex digits")
        return int(value, 16)
    elif vr == "PN":
        groups = value.split("=")
        if len(groups) > 3 or any(len(g) > 64 for g in groups):
            raise _bad_value(attribute, value, "at most 3 component groups of 64 characters")
    limit = _MAX_LENGTH.get(vr)
    if limit is not None and len(value) > limit:
        raise _bad_value(attribute, value, f"longer than {limit} characters")
    return value

# -*- test-case-name: tests.unit.test_qido_query -*-
"""Match values in QIDO-RS query parameters, checked against their attribute's VR
(PS3.18 §8.3.4, PS3.4 C.2.2.2), and the date/time range arithmetic matching needs."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

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
_DA = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?")
_DT = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?)?)?)?"
    r"([+-][0-9]{4})?"
)
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


def valid_date(text: str) -> bool:
    m = _DA.fullmatch(text)
    if m is None:
        return False
    try:
        datetime.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def valid_time(text: str) -> bool:
    m = _TM.fullmatch(text)
    if m is None:
        return False
    hh, mm, ss = m[1], m[2], m[3]
    return int(hh) <= 23 and (mm is None or int(mm) <= 59) and (ss is None or int(ss) <= 60)


def _valid_datetime(text: str) -> bool:
    m = _DT.fullmatch(text)
    if m is None:
        return False
    year, month, day, hh, mm, ss, _, offset = m.groups()
    if month is not None and not 1 <= int(month) <= 12:
        return False
    if day is not None:
        try:
            datetime.date(int(year), int(month), int(day))
        except ValueError:
            return False
    if hh is not None and not valid_time(hh + (mm or "") + (ss or "")):
        return False
    if offset is not None and (int(offset[1:3]) > 14 or int(offset[3:]) > 59):
        return False
    return True


_VALIDATORS: dict[str, Callable[[str], bool]] = {"DA": valid_date, "TM": valid_time, "DT": _valid_datetime}


def split_range(vr: str, value: str) -> tuple[str, str] | None:
    """A DA/TM/DT range ``a-b``, ``-b`` or ``a-`` → (a, b); None if `value` is one value.

    Raises ValueError when it is neither. A DT's UTC offset may itself start with '-':
    a string that is one valid DT is one value, otherwise the first split into two
    valid sides (or an empty one) wins.
    """
    valid = _VALIDATORS[vr]
    if "-" not in value:
        if not valid(value):
            raise ValueError("not a valid value")
        return None
    if vr == "DT" and valid(value):
        return None
    for i, char in enumerate(value):
        if char != "-":
            continue
        low, high = value[:i], value[i + 1 :]
        if (low or high) and (not low or valid(low)) and (not high or valid(high)):
            return low, high
    raise ValueError("not a valid value or range")


def pad_time(text: str, high: bool) -> str:
    """A (partial) TM → HHMMSS.FFFFFF, filled with the smallest or largest value."""
    text = text.replace(":", "")
    whole, _, fraction = text.partition(".")
    filler = "235959" if high else "000000"
    whole = whole + filler[len(whole) :]
    fraction = (fraction + ("9" if high else "0") * 6)[:6]
    return f"{whole}.{fraction}"


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def pad_datetime(text: str, high: bool) -> str:
    """A (partial) DT, UTC offset dropped → YYYYMMDDHHMMSS.FFFFFF filled low or high."""
    m = _DT.fullmatch(text)
    if m is not None and m[8]:
        text = text[: -len(m[8])]
    whole, _, fraction = text.partition(".")
    filler = "99991231235959" if high else "00000101000000"
    if len(whole) >= 6 and high and len(whole) < 8:
        # A month with no day: the last day of that month (years 0000 and 9999 included,
        # which Python's dates do not hold).
        whole += f"{_days_in_month(int(whole[:4]), int(whole[4:6])):02d}"
    whole = whole + filler[len(whole) :]
    fraction = (fraction + ("9" if high else "0") * 6)[:6]
    return f"{whole}.{fraction}"


def range_bounds(vr: str, low: str, high: str) -> tuple[str | None, str | None]:
    """Comparable, fixed-width forms of a range's ends (None = open)."""
    if vr == "DA":
        return low or None, high or None
    pad = pad_time if vr == "TM" else pad_datetime
    return (pad(low, False) if low else None), (pad(high, True) if high else None)


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

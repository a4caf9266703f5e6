# -*- test-case-name: tests.unit.test_qido_matching -*-
"""C-FIND value arithmetic shared by the gateway's own matching (`dicomrst.qido`) and the
index (`dicomrst.index`): DA/TM/DT values and ranges made comparable, and the ``*``/``?``
wildcard matcher (PS3.4 C.2.2.2.4, C.2.2.2.5)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence

_DA = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?")
_DT = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?)?)?)?"
    r"([+-][0-9]{4})?"
)


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


def valid_datetime(text: str) -> bool:
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


_VALIDATORS: dict[str, Callable[[str], bool]] = {"DA": valid_date, "TM": valid_time, "DT": valid_datetime}


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


def combined_bounds(
    date_range: tuple[str, str], time_range: tuple[str, str]
) -> tuple[str | None, str | None]:
    """The ends (YYYYMMDDHHMMSS.FFFFFF, None = open) of a combined date-time range
    (PS3.4 C.2.2.2.5): a DA range and the TM range of its pair."""
    (date_low, date_high), (time_low, time_high) = date_range, time_range
    low = date_low + pad_time(time_low or "00", False) if date_low else None
    high = date_high + pad_time(time_high or "23", True) if date_high else None
    return low, high


def in_combined_range(date: str, time: str, low: str | None, high: str | None) -> bool | None:
    """Whether a stored date and time fall within a combined date-time range; with no (or
    no valid) time, whether the date does.  None when `date` is not a valid DA: the caller
    decides (the gateway's result filter lets it pass, the index does not match it)."""
    if not valid_date(date):
        return None
    time = time.replace(":", "")
    if not time or not valid_time(time):
        return (low is None or date >= low[:8]) and (high is None or date <= high[:8])
    key = date + pad_time(time, False)
    return (low is None or key >= low) and (high is None or key <= high)


# Tokens of a wildcard pattern besides literal characters (which are str).
_STAR = 0  # "*": any sequence of characters, the empty one included
_ANY = 1  # "?": exactly one character


def wildcard_steps(pattern: Sequence[str | int], text: Sequence[str]) -> tuple[bool, int]:
    """Whether `text` matches `pattern` (tokens: `_STAR`, `_ANY` or a character), and the
    steps it took.

    The greedy matcher with one backtrack point, the last ``*``: a later ``*`` makes
    any earlier one's choice final, because whatever the earlier one could have
    matched more, the later one can match instead.  So it never revisits more than the
    text since the last ``*``, and never takes more than (len(pattern) + 1) *
    (len(text) + 1) steps; a regex built from the pattern backtracks over every ``*``
    at once, exponentially (``*a*a*a…*b`` against ``aaaa…`` took seconds per result).
    """
    p = t = steps = 0
    star = -1  # position in the pattern after the last "*" seen, or -1
    resume = 0  # where in the text that "*" stopped matching
    while t < len(text):
        steps += 1
        token = pattern[p] if p < len(pattern) else None
        if token == _STAR:
            star, resume = p + 1, t
            p += 1
        elif token is not None and (token == _ANY or token == text[t]):
            p += 1
            t += 1
        elif star >= 0:
            # The last "*" takes one more character; everything after it starts over.
            resume += 1
            p, t = star, resume
        else:
            return False, steps
    while p < len(pattern) and pattern[p] == _STAR:
        p += 1
        steps += 1
    return p == len(pattern), steps


def _fold(text: str, ignore_case: bool) -> list[str]:
    # Character by character, so "?" stays one character whatever case folding makes of it.
    return [c.casefold() for c in text] if ignore_case else list(text)


class WildcardPattern:
    """A C-FIND wildcard value (PS3.4 C.2.2.2.4: ``*`` any sequence, ``?`` one character),
    matched in at most O(len(pattern) * len(text)) steps (`wildcard_steps`)."""

    __slots__ = ("_ignore_case", "_tokens")

    def __init__(self, pattern: str, ignore_case: bool = False) -> None:
        self._ignore_case = ignore_case
        tokens: list[str | int] = []
        for char in pattern:
            if char == "*":
                if not (tokens and tokens[-1] == _STAR):  # "**" is "*"
                    tokens.append(_STAR)
            elif char == "?":
                tokens.append(_ANY)
            else:
                tokens.append(char.casefold() if ignore_case else char)
        self._tokens = tokens

    def matches(self, text: str) -> bool:
        return wildcard_steps(self._tokens, _fold(text, self._ignore_case))[0]

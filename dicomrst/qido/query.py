# -*- test-case-name: tests.test_qido_query -*-
"""QIDO-RS target and query parameters → a Study Root C-FIND identifier (PS3.18 §8.3.4, §10.6).

`parse_query(target, args)` is the whole job: it validates every parameter (a
`BadRequest` names the offending one) and returns a `Query` holding the identifier to
send, the limit and offset, the Warning texts to answer with and the matching the
gateway must do itself on the results (`Query.accepts`).

Decisions on the points the standard leaves open:

* **Relational resources** (``/series``, ``/instances``, ``/studies/{s}/instances``) are
  sent as one C-FIND at their level without the missing upper unique keys, i.e. as a
  relational query (PS3.4 C.4.1.2.2), with the defaults of the upper levels the
  resource adds as return keys. Orthanc and dcm4chee answer these; a PACS that
  refuses them answers with a failure status, which is a 502 naming it.
* **Upper-level match keys** (e.g. ``PatientName`` on ``/studies/{s}/series``, which
  QIDO allows and a baseline hierarchical C-FIND does not) are sent as keys of the
  query and, as optional keys, filtered on by the gateway when results carry them.
  ``includefield`` of an upper level is sent as a return key. Matching on an
  attribute of a *lower* level is a 400; ``includefield`` of a lower level is dropped.
* **Backslash** is DICOM's value separator, and C-FIND has no escape for it. It is a
  400 in every value except LT, ST and UT, whose single value may contain it. UID
  lists are the only multi-value matching: commas become backslashes for UI
  attributes only (a UID has no comma); elsewhere a comma is a literal character.
  ``=`` and ``&`` arrive percent-decoded and are sent as they are (``=`` in a PN value
  separates its component groups, as in DICOM).
* **Non-ASCII** values are allowed in the VRs that may hold them (SH LO ST LT PN UC UT)
  and make the identifier ISO_IR 192 (UTF-8); an all-ASCII identifier carries an
  empty Specific Character Set (the PACS's own answers say how they are encoded).
* **Gateway filtering**: the PACS must honour its level's required and unique keys;
  every other match key (optional keys, upper-level keys) is checked again on each
  result that carries the attribute with a value: single values and wildcards
  (PN case-insensitively), UID lists, DA/TM/DT ranges and numbers. A sequence item key
  (``RequestAttributesSequence.ScheduledProcedureStepID``) is checked the same way on
  the items of the result's sequence: some item must match (Orthanc ignores item keys
  but returns the sequence). An empty or absent attribute passes: an SCP that does not
  support a key returns it empty. So does a non-ASCII value the result's Specific
  Character Set cannot hold (Orthanc answers in Latin-1 whatever the query's character
  set): the PACS matched it, and the answer cannot show whether rightly. Combined
  date-time matching (both ``xDate`` and ``xTime`` ranges) is always done here: the
  PACS gets the date range only.
* **Limits**: no ``limit`` means `DEFAULT_LIMIT`, which is also the most one response
  holds (the standard lets the server cap results); the gateway asks the PACS for
  ``offset + limit + 1`` results to know whether to add the "additional results"
  Warning, or for all of them (stopping itself) when it filters results.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom import config as pydicom_config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from dicomrst.errors import BadRequest
from dicomrst.qido.attributes import (
    DEFAULT_KEYS,
    IMAGE,
    RANK,
    REQUIRED_KEYS,
    SERIES,
    STUDY,
    UNIQUE_KEY,
    Path,
    level_of,
    level_tags,
)

DEFAULT_LIMIT = 1000
"""Results in one response when the request gives no ``limit``, and the most it may ask for."""

MAX_UID_LENGTH = 64

FUZZY_WARNING = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
EMPTY_VALUE_WARNING = (
    "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed."
)
MULTIPLE_VALUE_WARNING = (
    "The multiplevaluematching parameter is not supported. Multiple Value Matching has not been performed."
)
MORE_RESULTS_WARNING = "There are additional results that can be requested"

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

STUDY_UID = UNIQUE_KEY[STUDY]
SERIES_UID = UNIQUE_KEY[SERIES]
_QR_LEVEL = 0x00080052
_CHARSET = 0x00080005


def is_uid(value: str) -> bool:
    """True for a UID (PS3.5 §9.1): digits and dots, no empty or zero-padded component, ≤64 chars."""
    return len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def _path_uid(value: str | None, what: str) -> str | None:
    if value is not None and not is_uid(value):
        raise BadRequest(f"invalid {what} in the path: {value!r}")
    return value


# -- targets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A QIDO resource: the query level, the UIDs its path fixes, and its shape.

    Build one with the constructors below; they validate the path UIDs (400).
    """

    level: str
    resource: str  # the URI template, for messages
    study: str | None = None
    series: str | None = None
    # Upper levels whose default attributes the response adds (PS3.18 §10.6.3.3):
    # All Series adds the study's; All Instances the study's and series'; Study's
    # Instances the series'.
    adds: tuple[str, ...] = ()

    @property
    def relational(self) -> bool:
        """True when the C-FIND lacks an upper unique key (a relational query)."""
        return (RANK[self.level] >= 1 and self.study is None) or (
            self.level == IMAGE and self.series is None
        )

    @classmethod
    def studies(cls) -> Target:
        return cls(STUDY, "/studies")

    @classmethod
    def study_series(cls, study: str) -> Target:
        return cls(SERIES, "/studies/{study}/series", _path_uid(study, "Study Instance UID"))

    @classmethod
    def study_series_instances(cls, study: str, series: str) -> Target:
        return cls(
            IMAGE,
            "/studies/{study}/series/{series}/instances",
            _path_uid(study, "Study Instance UID"),
            _path_uid(series, "Series Instance UID"),
        )

    @classmethod
    def study_instances(cls, study: str) -> Target:
        return cls(
            IMAGE, "/studies/{study}/instances", _path_uid(study, "Study Instance UID"), adds=(SERIES,)
        )

    @classmethod
    def all_series(cls) -> Target:
        return cls(SERIES, "/series", adds=(STUDY,))

    @classmethod
    def all_instances(cls) -> Target:
        return cls(IMAGE, "/instances", adds=(STUDY, SERIES))

    def path_keys(self) -> dict[int, str]:
        keys = {}
        if self.study is not None:
            keys[STUDY_UID] = self.study
        if self.series is not None:
            keys[SERIES_UID] = self.series
        return keys


# -- attribute names ----------------------------------------------------------------------

_COMPONENT = r"(?:[0-9A-Fa-f]{8}|[A-Z][A-Za-z0-9]*)"
_ATTRIBUTE_NAME = re.compile(rf"{_COMPONENT}(?:\.{_COMPONENT})*")
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def looks_like_attribute(name: str) -> bool:
    """Whether a parameter name is an attribute ID (a keyword, a tag or a dotted path of them).

    Keywords start with a capital letter (PS3.6), so names like ``_``, ``accept``,
    ``charset`` or ``token`` are other parameters, which are ignored if unsupported.
    """
    return _ATTRIBUTE_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Attribute:
    """A resolved attribute ID: its tag path, the VR of its last element, and how it was written."""

    path: Path
    vr: str
    name: str

    @property
    def tag(self) -> int:
        return self.path[-1]


def _vr_of(tag: int) -> str:
    vr = dictionary_VR(tag)
    # Ambiguous VRs ("US or SS", "OB or OW"): the first is the usual one and any
    # choice encodes the same in Implicit VR, which is what a query needs.
    return vr.split(" or ")[0]


def resolve_attribute(name: str) -> Attribute:
    """``PatientID``, ``00100020`` or ``RequestAttributesSequence.00400009`` → `Attribute`.

    Raises `BadRequest` naming the unknown keyword or tag.
    """
    path: list[int] = []
    vr = ""
    components = name.split(".")
    for i, component in enumerate(components):
        if _HEX_TAG.fullmatch(component):
            tag = int(component, 16)
            if tag >> 16 & 1:
                raise BadRequest(f"private attribute {component.upper()} is not supported (in '{name}')")
            if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002, 0xFFFE):
                raise BadRequest(f"{component.upper()} is not a data set attribute (in '{name}')")
            try:
                vr = _vr_of(tag)
            except KeyError:
                raise BadRequest(f"unknown attribute tag {component.upper()} (in '{name}')") from None
        else:
            found = tag_for_keyword(component)
            if found is None or found >> 16 in (0x0000, 0x0002, 0xFFFE):
                raise BadRequest(f"unknown attribute keyword '{component}' (in '{name}')")
            tag = found
            vr = _vr_of(tag)
        if vr == "NONE":
            raise BadRequest(f"{component} is not a data set attribute (in '{name}')")
        if i < len(components) - 1 and vr != "SQ":
            raise BadRequest(f"{component} is not a sequence, so it cannot be followed by '.' (in '{name}')")
        path.append(tag)
    return Attribute(tuple(path), vr, name)


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


# -- values -----------------------------------------------------------------------------

_WILDCARD_VRS = frozenset("AE CS LO LT PN SH ST UC UR UT".split())
_TEXT_VRS = frozenset("SH LO ST LT PN UC UT".split())  # may hold non-ASCII characters
_BACKSLASH_VRS = frozenset("LT ST UT".split())  # VM 1: a backslash is a character
_RANGE_VRS = frozenset("DA TM DT".split())
_BINARY_VRS = frozenset("OB OD OF OL OV OW UN".split())
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "IS": 12, "DS": 16}
_INT_RANGES = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_AGE = re.compile(r"[0-9]{3}[DWMY]")
_DA = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?")
_DT = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?)?)?)?"
    r"([+-][0-9]{4})?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # LT/ST/UT keep TAB LF FF CR


def _bad_value(attribute: Attribute, value: str, why: str) -> BadRequest:
    return BadRequest(f"invalid value for {attribute.name} ({attribute.vr}): {value!r}: {why}")


def _valid_date(text: str) -> bool:
    m = _DA.fullmatch(text)
    if m is None:
        return False
    try:
        datetime.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _valid_time(text: str) -> bool:
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
    if hh is not None and not _valid_time(hh + (mm or "") + (ss or "")):
        return False
    if offset is not None and (int(offset[1:3]) > 14 or int(offset[3:]) > 59):
        return False
    return True


_VALIDATORS: dict[str, Callable[[str], bool]] = {"DA": _valid_date, "TM": _valid_time, "DT": _valid_datetime}


def _split_range(vr: str, value: str) -> tuple[str, str] | None:
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


def _pad_time(text: str, high: bool) -> str:
    """A (partial) TM → HHMMSS.FFFFFF, filled with the smallest or largest value."""
    text = text.replace(":", "")
    whole, _, fraction = text.partition(".")
    filler = "235959" if high else "000000"
    whole = whole + filler[len(whole) :]
    fraction = (fraction + ("9" if high else "0") * 6)[:6]
    return f"{whole}.{fraction}"


def _pad_datetime(text: str, high: bool) -> str:
    """A (partial) DT, UTC offset dropped → YYYYMMDDHHMMSS.FFFFFF filled low or high."""
    m = _DT.fullmatch(text)
    if m is not None and m[8]:
        text = text[: -len(m[8])]
    whole, _, fraction = text.partition(".")
    filler = "99991231235959" if high else "00000101000000"
    if len(whole) >= 6 and high and len(whole) < 8:
        # A month with no day: the last day of that month.
        year, month = int(whole[:4]), int(whole[4:6])
        next_month = datetime.date(year + month // 12, month % 12 + 1, 1)
        whole += f"{(next_month - datetime.timedelta(days=1)).day:02d}"
    whole = whole + filler[len(whole) :]
    fraction = (fraction + ("9" if high else "0") * 6)[:6]
    return f"{whole}.{fraction}"


def _range_bounds(vr: str, low: str, high: str) -> tuple[str | None, str | None]:
    """Comparable, fixed-width forms of a range's ends (None = open)."""
    if vr == "DA":
        return low or None, high or None
    pad = _pad_time if vr == "TM" else _pad_datetime
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
    if ("*" in value or "?" in value) and vr not in _WILDCARD_VRS:
        raise _bad_value(attribute, value, f"wildcards are not allowed in {vr} values")


def _match_value(attribute: Attribute, value: str, combined: bool) -> object:
    """Validate a match value for the attribute's VR; return what the identifier holds."""
    vr = attribute.vr
    if vr == "SQ":
        raise BadRequest(
            f"{attribute.name} is a sequence: match on its items, e.g. {attribute.name}.<attribute>=value"
        )
    if vr in _BINARY_VRS:
        raise BadRequest(f"matching on {attribute.name} ({vr}) is not supported")
    if vr == "UI":
        uids = value.split(",")
        for uid in uids:
            if not is_uid(uid):
                raise _bad_value(attribute, value, f"{uid!r} is not a UID")
        return uids if len(uids) > 1 else uids[0]
    _check_text(attribute, value)
    if vr in _RANGE_VRS:
        try:
            bounds = _split_range(vr, value)
        except ValueError as e:
            raise _bad_value(attribute, value, str(e)) from None
        if bounds is not None and not combined:
            low, high = _range_bounds(vr, *bounds)
            if low is not None and high is not None and low > high:
                raise _bad_value(attribute, value, "the range ends before it starts")
        return value
    if vr in _INT_RANGES:
        lowest, highest = _INT_RANGES[vr]
        if not _INTEGER.fullmatch(value) or not lowest <= int(value) <= highest:
            raise _bad_value(attribute, value, f"not an integer in [{lowest}, {highest}]")
        return int(value)
    if vr in ("FL", "FD"):
        if not _DECIMAL.fullmatch(value):
            raise _bad_value(attribute, value, "not a number")
        return float(value)
    if vr == "IS":
        if not _INTEGER.fullmatch(value) or not -(2**31) <= int(value) <= 2**31 - 1:
            raise _bad_value(attribute, value, "not an integer string")
    elif vr == "DS":
        if not _DECIMAL.fullmatch(value):
            raise _bad_value(attribute, value, "not a decimal string")
    elif vr == "AS":
        if not _AGE.fullmatch(value):
            raise _bad_value(attribute, value, "not an age string like 045Y")
    elif vr == "AT":
        if not _HEX_TAG.fullmatch(value):
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


# -- gateway-side matching --------------------------------------------------------------


def _result_values(dataset: Dataset, tag: int) -> list[object]:
    """The non-empty values of `tag` in a result ([] when absent or empty)."""
    element = dataset.get(tag)
    if element is None or element.VR == "SQ" or element.value is None:
        return []
    value = element.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [v for v in values if v is not None and v != ""]


def _path_values(dataset: Dataset, path: Path) -> list[object]:
    """The non-empty values at `path` in a result; for an item key, those of every item."""
    if len(path) == 1:
        return _result_values(dataset, path[0])
    element = dataset.get(path[0])
    if element is None or element.VR != "SQ" or not element.value:
        return []
    return [v for item in element.value for v in _path_values(item, path[1:])]


def _representable(text: str, dataset: Dataset) -> bool:
    """Whether the character set a result is encoded in can hold every character of `text`."""
    element = dataset.get(_CHARSET)
    value = element.value if element is not None else None
    terms = [value] if isinstance(value, str) else list(value or [])
    codecs = {python_encoding.get((term or "").strip()) for term in terms or [""]}
    if None in codecs:
        return False  # a character set pydicom does not know: its decoding is a guess

    def encodes(char: str, codec: str) -> bool:
        try:
            char.encode(codec)
        except (UnicodeError, LookupError):
            return False
        return True

    return all(
        any(encodes(char, codec) for codec in codecs if codec) for char in set(text) if not char.isascii()
    )


def _text(value: object) -> str:
    text = getattr(value, "original_string", None)
    if not isinstance(text, str):
        text = str(value)
    return text.strip(" \x00")


def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


@dataclass(frozen=True)
class MatchFilter:
    """A match key the gateway checks on each result (see the module docstring).

    :ivar path: the attribute, or a sequence item key as (sequence, …, key).
    :ivar text: the match value when it is not ASCII (it may not survive the
        result's character set), else None.
    """

    path: Path
    predicate: Callable[[object], bool]
    text: str | None = None

    @property
    def tag(self) -> int:
        return self.path[-1]

    def __call__(self, dataset: Dataset) -> bool:
        values = _path_values(dataset, self.path)
        # Absent or empty: the SCP may not support the key; keep the result.
        if not values:
            return True
        if self.text is not None and not _representable(self.text, dataset):
            return True  # the PACS matched what its answer cannot show
        return any(self.predicate(v) for v in values)


def _value_filter(attribute: Attribute, value: str) -> MatchFilter | None:
    vr = attribute.vr
    predicate: Callable[[object], bool]
    if vr == "UI":
        uids = set(value.split(","))

        def predicate(v: object) -> bool:
            return _text(v) in uids

    elif vr in _RANGE_VRS:
        # A single value is the range of itself: for TM and DT a partial value
        # ("10", "202001") then covers the whole hour, month, ….
        low, high = _range_bounds(vr, *(_split_range(vr, value) or (value, value)))

        def predicate(v: object) -> bool:
            text = _text(v)
            try:
                if vr == "TM":
                    text = _pad_time(text, False)
                elif vr == "DT":
                    text = _pad_datetime(text, False)
            except ValueError:
                return True  # unparseable: not ours to judge
            return (low is None or text >= low) and (high is None or text <= high)

    elif vr in _INT_RANGES or vr == "IS":
        number = int(value)

        def predicate(v: object) -> bool:
            try:
                return int(_text(v)) == number
            except ValueError:
                return True

    elif vr in ("FL", "FD", "DS"):
        real = float(value)

        def predicate(v: object) -> bool:
            try:
                return float(_text(v)) == real
            except ValueError:
                return True

    elif vr == "AT":
        return None
    else:
        ignore_case = vr == "PN"
        wanted = value.strip(" ")
        if vr in _WILDCARD_VRS and ("*" in wanted or "?" in wanted):
            regex = _wildcard_regex(wanted, ignore_case)

            def predicate(v: object) -> bool:
                return regex.fullmatch(_text(v)) is not None

        elif ignore_case:
            folded = wanted.casefold()

            def predicate(v: object) -> bool:
                return _text(v).casefold() == folded

        else:

            def predicate(v: object) -> bool:
                return _text(v) == wanted

    return MatchFilter(attribute.path, predicate, None if value.isascii() else value)


@dataclass(frozen=True)
class DateTimeFilter:
    """Combined date-time range matching (PS3.4 C.2.2.2.5) on a date and a time attribute."""

    date_tag: int
    time_tag: int
    low: str | None  # YYYYMMDDHHMMSS.FFFFFF
    high: str | None

    def __call__(self, dataset: Dataset) -> bool:
        dates = _result_values(dataset, self.date_tag)
        if not dates:
            return True
        date = _text(dates[0])
        if not _valid_date(date):
            return True
        times = _result_values(dataset, self.time_tag)
        time = _text(times[0]).replace(":", "") if times else ""
        if not time or not _valid_time(time):
            # No time: judge by the date alone.
            return (self.low is None or date >= self.low[:8]) and (self.high is None or date <= self.high[:8])
        low_key = date + _pad_time(time, False)
        return (self.low is None or low_key >= self.low) and (self.high is None or low_key <= self.high)


def _combined_bounds(
    date_range: tuple[str, str], time_range: tuple[str, str]
) -> tuple[str | None, str | None]:
    (date_low, date_high), (time_low, time_high) = date_range, time_range
    low = date_low + _pad_time(time_low or "00", False) if date_low else None
    high = date_high + _pad_time(time_high or "23", True) if date_high else None
    return low, high


# -- the query --------------------------------------------------------------------------


@dataclass
class Query:
    """A parsed QIDO request, ready for `IBackend.find`.

    :ivar identifier: the C-FIND identifier (level, character set, keys).
    :ivar limit: the most results to return (≤ `DEFAULT_LIMIT`).
    :ivar offset: matches to skip first.
    :ivar backend_limit: the ``limit`` to give ``find``: ``offset + limit + 1``, or
        None when the gateway filters results itself and must stop the find once
        it has ``offset + limit + 1`` accepted ones.
    :ivar warnings: Warning texts (without ``299 <service>:``) to send with a 200.
    :ivar filters: the matching the gateway does on each result; see `accepts`.
    """

    target: Target
    identifier: Dataset
    limit: int
    offset: int
    warnings: list[str] = field(default_factory=list)
    filters: list[Callable[[Dataset], bool]] = field(default_factory=list)

    @property
    def backend_limit(self) -> int | None:
        return None if self.filters else self.offset + self.limit + 1

    @property
    def wanted(self) -> int:
        """Accepted results needed to fill the page and know whether more exist."""
        return self.offset + self.limit + 1

    def accepts(self, dataset: Dataset) -> bool:
        """Whether a C-FIND result matches the keys the PACS may have ignored."""
        return all(f(dataset) for f in self.filters)


def _one(name: str, values: Sequence[str]) -> str:
    if len(values) != 1:
        raise BadRequest(f"{name} is given {len(values)} times")
    return values[0]


def _uint(name: str, values: Sequence[str]) -> int:
    value = _one(name, values)
    if not value.isascii() or not value.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _boolean(name: str, values: Sequence[str]) -> bool:
    value = _one(name, values)
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value == "true"


def _empty_value(vr: str) -> object:
    return DicomSequence() if vr == "SQ" else None


class _Keys:
    """The identifier's keys by tag path, built up before becoming a Dataset."""

    def __init__(self) -> None:
        self.values: dict[Path, tuple[str, object]] = {}

    def add_return(self, path: Path, vr: str | None = None) -> None:
        if path not in self.values:
            self.values[path] = (vr or _vr_of(path[-1]), _empty_value(vr or _vr_of(path[-1])))

    def set(self, path: Path, vr: str, value: object) -> None:
        self.values[path] = (vr, value)

    def dataset(self) -> Dataset:
        ds = Dataset()
        # Shorter paths first, so a sequence's element exists before its item keys.
        for path, (vr, value) in sorted(self.values.items(), key=lambda kv: len(kv[0])):
            _put(ds, path, vr, value)
        return ds


def _put(ds: Dataset, path: Path, vr: str, value: object) -> None:
    tag = path[0]
    if len(path) == 1:
        existing = ds.get(tag)
        if existing is not None and existing.VR == "SQ" and vr == "SQ":
            return
        ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
        return
    element = ds.get(tag)
    if element is None or element.VR != "SQ":
        element = DataElement(tag, "SQ", DicomSequence(), validation_mode=pydicom_config.IGNORE)
        ds.add(element)
    if len(element.value) == 0:
        element.value.append(Dataset())
    _put(element.value[0], path[1:], vr, value)


def parse_query(target: Target, args: Mapping[str, Sequence[str]]) -> Query:
    """Validate the query parameters of a QIDO request on `target` and build its `Query`.

    :param args: parameter name → values, percent-decoded, in request order.
    :raises BadRequest: naming the parameter, attribute or value at fault.
    """
    level = target.level
    limit = DEFAULT_LIMIT
    offset = 0
    warnings: list[str] = []
    includes: list[str] = []
    matches: dict[Path, tuple[Attribute, str]] = {}

    for name, values in args.items():
        if name == "includefield":
            includes.extend(item.strip() for value in values for item in value.split(",") if item.strip())
        elif name == "limit":
            limit = min(_uint(name, values), DEFAULT_LIMIT)
        elif name == "offset":
            offset = _uint(name, values)
        elif name == "fuzzymatching":
            if _boolean(name, values):
                warnings.append(FUZZY_WARNING)
        elif name == "emptyvaluematching":
            if _boolean(name, values):
                warnings.append(EMPTY_VALUE_WARNING)
        elif name == "multiplevaluematching":
            if _boolean(name, values):
                warnings.append(MULTIPLE_VALUE_WARNING)
        elif looks_like_attribute(name):
            attribute = resolve_attribute(name)
            if len(values) != 1 or attribute.path in matches:
                first = matches[attribute.path][0].name if attribute.path in matches else name
                raise BadRequest(
                    f"{_keyword(attribute.tag)} is given more than once ({first}, {name}); "
                    "use a comma-separated list for several UIDs"
                )
            matches[attribute.path] = (attribute, values[0])
        # Anything else is an unsupported parameter, ignored as PS3.18 §8.3 says.

    if "all" in includes and len(set(includes)) > 1:
        raise BadRequest("includefield=all cannot be combined with other includefield values")

    keys = _Keys()
    levels = [level, *target.adds]
    for lvl in levels:
        for path in DEFAULT_KEYS[lvl]:
            keys.add_return(path)
    if "all" in includes:
        for lvl in levels:
            for tag in sorted(level_tags(lvl)):
                if _vr_of(tag) != "SQ":  # sequences only when asked for by name
                    keys.add_return((tag,))
    else:
        for name in includes:
            attribute = resolve_attribute(name)
            attr_level = level_of(attribute.path[0])
            if attr_level is not None and RANK[attr_level] > RANK[level]:
                continue  # lower level: "shall not be returned" (PS3.18 §10.6.3.3)
            keys.add_return(attribute.path, attribute.vr)

    path_keys = target.path_keys()
    for tag, uid in path_keys.items():
        keys.set((tag,), "UI", uid)

    # Combined date-time matching: both halves of a pair are ranges.
    combined: dict[int, tuple[int, tuple[str, str], tuple[str, str]]] = {}
    for path, (attribute, value) in matches.items():
        if len(path) != 1 or attribute.vr != "DA" or "-" not in value:
            continue
        keyword = keyword_for_tag(attribute.tag)
        if not keyword or not keyword.endswith("Date"):
            continue
        time_tag = tag_for_keyword(keyword[:-4] + "Time")
        if time_tag is None or (time_tag,) not in matches:
            continue
        time_attribute, time_value = matches[(time_tag,)]
        if "-" not in time_value:
            continue
        _match_value(attribute, value, combined=True)
        _match_value(time_attribute, time_value, combined=True)
        date_range, time_range = _split_range("DA", value), _split_range("TM", time_value)
        if date_range is not None and time_range is not None:
            combined[attribute.tag] = (time_tag, date_range, time_range)

    filters: list[Callable[[Dataset], bool]] = []
    combined_times = {time_tag for time_tag, _, _ in combined.values()}
    non_ascii = False
    for path, (attribute, value) in matches.items():
        top_level = level_of(path[0])
        if top_level is not None and RANK[top_level] > RANK[level]:
            raise BadRequest(
                f"{attribute.name} is a {top_level}-level attribute; "
                f"it cannot be matched on {target.resource}"
            )
        if len(path) == 1 and path[0] in path_keys:
            if value != path_keys[path[0]]:
                raise BadRequest(f"{attribute.name} contradicts the {_keyword(path[0])} in the path")
            continue
        if value == "":
            keys.add_return(path, attribute.vr)  # universal matching
            continue
        if path[0] in combined_times and len(path) == 1:
            keys.add_return(path, attribute.vr)  # matched with its date, here
            continue
        stored = _match_value(attribute, value, combined=attribute.tag in combined)
        keys.set(path, attribute.vr, stored)
        non_ascii = non_ascii or not value.isascii()
        if len(path) > 1 or (attribute.tag not in combined and path[0] not in REQUIRED_KEYS[level]):
            value_filter = _value_filter(attribute, value)
            if value_filter is not None:
                filters.append(value_filter)

    for date_tag, (time_tag, date_range, time_range) in combined.items():
        low, high = _combined_bounds(date_range, time_range)
        filters.append(DateTimeFilter(date_tag, time_tag, low, high))

    identifier = keys.dataset()
    identifier.add(DataElement(_QR_LEVEL, "CS", level))
    identifier.add(DataElement(_CHARSET, "CS", "ISO_IR 192" if non_ascii else None))
    return Query(target, identifier, limit, offset, warnings, filters)

# -*- test-case-name: tests.unit.test_qido_query -*-
"""The matching the gateway does itself on each C-FIND result (see `dicomrst.qido.query`):
a PACS must honour only its level's required keys, so every other match key is checked
again here, as is combined date-time range matching (PS3.4 C.2.2.2.5)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomrst.common.dicomjson import original_text
from dicomrst.common.matching import (
    WildcardPattern,
    in_combined_range,
    pad_datetime,
    pad_time,
    range_bounds,
    split_range,
)
from dicomrst.common.tags import SPECIFIC_CHARACTER_SET
from dicomrst.qido.attributes import Attribute, Path
from dicomrst.qido.values import (
    INT_RANGES,
    RANGE_VRS,
    WILDCARD_VRS,
    integer,
)


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
    element = dataset.get(SPECIFIC_CHARACTER_SET)
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
    return original_text(value).strip(" \x00")


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


def value_filter(attribute: Attribute, value: str) -> MatchFilter | None:
    vr = attribute.vr
    predicate: Callable[[object], bool]
    if vr == "UI":
        uids = set(value.split(","))

        def predicate(v: object) -> bool:
            return _text(v) in uids

    elif vr in RANGE_VRS:
        # A single value is the range of itself: for TM and DT a partial value
        # ("10", "202001") then covers the whole hour, month, ….
        low, high = range_bounds(vr, *(split_range(vr, value) or (value, value)))

        def predicate(v: object) -> bool:
            text = _text(v)
            try:
                if vr == "TM":
                    text = pad_time(text, False)
                elif vr == "DT":
                    text = pad_datetime(text, False)
            except ValueError:
                return True  # unparseable: not ours to judge
            return (low is None or text >= low) and (high is None or text <= high)

    elif vr in INT_RANGES or vr == "IS":
        number = integer(value)  # match_value checked it: an integer in range
        if number is None:
            return None

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
        if vr in WILDCARD_VRS and ("*" in wanted or "?" in wanted):
            pattern = WildcardPattern(wanted, ignore_case)

            def predicate(v: object) -> bool:
                return pattern.matches(_text(v))

        elif ignore_case:
            folded = wanted.casefold()

            def predicate(v: object) -> bool:
                return _text(v).casefold() == folded

        else:

            def predicate(v: object) -> bool:
                return _text(v) == wanted

    return MatchFilter(attribute.path, predicate, None if value.isascii() else value)


def _items(dataset: Dataset, parent: Path) -> list[Dataset]:
    """The data sets at `parent` in a result: the result itself for (), else the items of
    that sequence (of every item of the sequences above it)."""
    if not parent:
        return [dataset]
    element = dataset.get(parent[0])
    if element is None or element.VR != "SQ" or not element.value:
        return []
    return [found for item in element.value for found in _items(item, parent[1:])]


@dataclass(frozen=True)
class DateTimeFilter:
    """Combined date-time range matching (PS3.4 C.2.2.2.5) on a date and a time attribute,
    at the top level or, with `parent`, as item keys of that sequence (some item must
    match, as in sequence matching)."""

    date_tag: int
    time_tag: int
    low: str | None  # YYYYMMDDHHMMSS.FFFFFF
    high: str | None
    parent: Path = ()

    def __call__(self, dataset: Dataset) -> bool:
        items = _items(dataset, self.parent)
        # No item: the SCP did not return the sequence; not ours to judge.
        return not items or any(self._matches(item) for item in items)

    def _matches(self, dataset: Dataset) -> bool:
        dates = _result_values(dataset, self.date_tag)
        if not dates:
            return True
        times = _result_values(dataset, self.time_tag)
        matched = in_combined_range(_text(dates[0]), _text(times[0]) if times else "", self.low, self.high)
        return True if matched is None else matched  # an invalid date: not ours to judge

# -*- test-case-name: tests.unit.test_index -*-
"""A Study Root C-FIND identifier answered from the index's tables (PS3.4 C.2.2.2, C.4.1).

`plan` reads the identifier as a PACS does: each key with a value is a match key (single
value, ``*``/``?`` wildcards, a list of UIDs, a DA/TM/DT range), each key without one a
return key (universal matching), a sequence with an item of keys is sequence matching.
Keys with a column (`records.COLUMNS`) of the query level or above, and the attributes
the index computes (Modalities and SOP Classes in Study, the Number of ... Related ...
counts, Instance Availability), are matched in SQL; any other match key is matched on
the stored attributes of each candidate (`Plan.residual`).  An empty or absent value
never matches a key with a value: every key is supported here, so none is ignored.

The rules are the gateway's (`dicomrst.qido.matching`), from the same helpers
(`dicomrst.common.matching`): PN values are matched case-insensitively (after
``str.casefold``), a single TM or DT value is the range it spans ("10" is 10:00 to
10:59:59.999999), text values are compared without their padding.

Results come in a stable order: by study date, time and UID, then series number and
UID, then instance number and UID.  `FindCursor` pages through them: with no residual
match key, ``offset`` and ``limit`` are the SQL's; otherwise pages of candidates are
read in that order and counted here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from pydicom import config as pydicom_config
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from dicomrst.common.dicomjson import original_text
from dicomrst.common.matching import (
    WildcardPattern,
    combined_bounds,
    in_combined_range,
    pad_datetime,
    pad_time,
    range_bounds,
    split_range,
)
from dicomrst.common.tags import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET
from dicomrst.index.records import COLUMN_OF_TAG, IMAGE, LEVELS, SERIES, STUDY, Column, decode_attributes
from dicomrst.index.session import Session

#: Rows read from the database at a time.
PAGE = 500

MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
INSTANCE_AVAILABILITY = 0x00080056
STUDY_RELATED_SERIES = 0x00201206
STUDY_RELATED_INSTANCES = 0x00201208
SERIES_RELATED_INSTANCES = 0x00201209
COMPUTED = frozenset(
    (
        MODALITIES_IN_STUDY,
        SOP_CLASSES_IN_STUDY,
        INSTANCE_AVAILABILITY,
        STUDY_RELATED_SERIES,
        STUDY_RELATED_INSTANCES,
        SERIES_RELATED_INSTANCES,
    )
)
_RANGE_VRS = frozenset(("DA", "TM", "DT"))
_INT_VRS = frozenset("IS US SS UL SL UV SV".split())
_FLOAT_VRS = frozenset("DS FL FD".split())
_WILDCARD_VRS = frozenset("AE CS LO LT PN SH ST UC UR UT".split())

_ALIAS = {STUDY: "st", SERIES: "se", IMAGE: "i"}
_FROM = {
    STUDY: "studies st",
    SERIES: "series se JOIN studies st ON st.id = se.study",
    IMAGE: "instances i JOIN series se ON se.id = i.series JOIN studies st ON st.id = i.study",
}
_ORDER = {
    STUDY: [
        "(st.study_date IS NULL)",
        "st.study_date",
        "(st.study_time_key IS NULL)",
        "st.study_time_key",
        "st.study_uid",
    ],
    SERIES: ["(se.series_number IS NULL)", "se.series_number", "se.series_uid"],
    IMAGE: ["(i.instance_number IS NULL)", "i.instance_number", "i.sop_uid"],
}


class UnsupportedQuery(Exception):
    """An identifier the index cannot answer (no or an unknown Query/Retrieve Level)."""


Predicate = Callable[[object], bool]


def _values(element: DataElement) -> list[object]:
    value = element.value
    if value is None:
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [v for v in values if v is not None and v != ""]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return original_text(value).strip(" \x00")


def _key_texts(element: DataElement) -> list[str]:
    """A match key's values as text (a UID list has several)."""
    texts = []
    for value in _values(element):
        text = f"{value:08X}" if element.VR == "AT" and isinstance(value, int) else _text(value)
        if text:
            texts.append(text)
    return texts


def _universal(vr: str, texts: Sequence[str]) -> bool:
    # "*" alone matches everything, empty values included (PS3.4 C.2.2.2.4).
    return not texts or (vr in _WILDCARD_VRS and any(t.strip("*") == "" for t in texts))


def _has_wildcard(vr: str, text: str) -> bool:
    return vr in _WILDCARD_VRS and ("*" in text or "?" in text)


def like_pattern(text: str) -> str:
    """A C-FIND wildcard value as a LIKE pattern with ``\\`` as its escape character."""
    out = []
    for char in text:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _bounds(vr: str, text: str) -> tuple[str | None, str | None] | None:
    """The comparable bounds of a DA/TM/DT value or range; None when it is neither."""
    try:
        parts = split_range(vr, text)
    except ValueError:
        return None
    if parts is None:
        parts = (text, text)
    return range_bounds(vr, *parts)


def value_predicate(vr: str, text: str) -> Predicate:
    """Whether one stored value matches one match value (a value, never empty)."""
    if vr in _RANGE_VRS:
        bounds = _bounds(vr, text)
        if bounds is None:
            return lambda v: _text(v) == text
        low, high = bounds

        def in_range(v: object) -> bool:
            stored = _text(v)
            try:
                if vr == "TM":
                    stored = pad_time(stored, False)
                elif vr == "DT":
                    stored = pad_datetime(stored, False)
            except ValueError:
                return False
            return (low is None or stored >= low) and (high is None or stored <= high)

        return in_range
    if vr in _INT_VRS or vr in _FLOAT_VRS:
        convert: Callable[[str], float] = int if vr in _INT_VRS else float
        try:
            number = convert(text)
        except ValueError:
            return lambda v: False

        def equal(v: object) -> bool:
            try:
                return convert(_text(v)) == number
            except ValueError:
                return False

        return equal
    if vr == "AT":
        return lambda v: isinstance(v, int) and f"{v:08X}" == text.upper()
    ignore_case = vr == "PN"
    if _has_wildcard(vr, text):
        pattern = WildcardPattern(text, ignore_case)
        return lambda v: pattern.matches(_text(v))
    if ignore_case:
        folded = text.casefold()
        return lambda v: _text(v).casefold() == folded
    return lambda v: _text(v) == text


def element_matches(element: DataElement | None, predicates: Sequence[Predicate]) -> bool:
    """Whether any value of a stored element matches any of the match values."""
    if element is None or element.VR == "SQ":
        return False
    return any(p(v) for v in _values(element) for p in predicates)


@attrs.frozen
class _ItemKey:
    tag: int
    predicates: tuple[Predicate, ...]  # empty: a return key

    @property
    def tags(self) -> tuple[int, ...]:
        return (self.tag,)

    def matches(self, item: Dataset) -> bool:
        return not self.predicates or element_matches(item.get(self.tag), self.predicates)


@attrs.frozen
class _CombinedKey:
    """A date range and its pair's time range, matched as one date-time range (PS3.4
    C.2.2.2.5), as the gateway's `dicomrst.qido.matching.DateTimeFilter` does; a stored
    object without a valid date does not match."""

    date_tag: int
    time_tag: int
    low: str | None
    high: str | None

    @property
    def tags(self) -> tuple[int, ...]:
        return (self.date_tag, self.time_tag)

    def matches(self, item: Dataset) -> bool:
        date = item.get(self.date_tag)
        dates = _values(date) if date is not None and date.VR != "SQ" else []
        if not dates:
            return False
        time = item.get(self.time_tag)
        times = _values(time) if time is not None and time.VR != "SQ" else []
        return bool(in_combined_range(_text(dates[0]), _text(times[0]) if times else "", self.low, self.high))


@attrs.frozen
class Residual:
    """A match key answered from the stored attributes of each candidate."""

    tag: int
    predicates: tuple[Predicate, ...] = ()
    items: tuple[_ItemKey | _CombinedKey, ...] = ()  # sequence matching: some item matches all of these
    combined: _CombinedKey | None = None  # a top-level combined date-time pair (tag is its date)

    @property
    def tags(self) -> set[int]:
        """The stored attributes this residual reads."""
        if self.combined is not None:
            return set(self.combined.tags)
        return {self.tag}

    def __call__(self, stored: Dataset) -> bool:
        if self.combined is not None:
            return self.combined.matches(stored)
        element = stored.get(self.tag)
        if not self.items:
            return element_matches(element, self.predicates)
        if element is None or element.VR != "SQ" or not element.value:
            return False
        return any(self._item_matches(item) for item in element.value)

    def _item_matches(self, item: Dataset) -> bool:
        return all(key.matches(item) for key in self.items)


def combined_pairs(elements: Iterable[DataElement]) -> dict[int, _CombinedKey]:
    """The combined date-time pairs among a data set's (or an item's) keys, by time tag:
    an xDate range whose xTime is a range too (PS3.4 C.2.2.2.5; the gateway sends QIDO's
    date and time ranges so, `dicomrst.qido.query.Query.exact_identifier`)."""
    ranges: dict[int, str] = {}
    for element in elements:
        vr = str(element.VR).split(" or ")[0]
        if vr in ("DA", "TM"):
            texts = _key_texts(element)
            if len(texts) == 1 and "-" in texts[0]:
                ranges[int(element.tag)] = texts[0]
    pairs: dict[int, _CombinedKey] = {}
    for date_tag, date_text in ranges.items():
        keyword = keyword_for_tag(date_tag)
        if not keyword.endswith("Date"):
            continue
        time_tag = tag_for_keyword(keyword[:-4] + "Time")
        if time_tag is None or time_tag not in ranges:
            continue
        try:
            date_range = split_range("DA", date_text)
            time_range = split_range("TM", ranges[time_tag])
        except ValueError:
            continue
        if date_range is None or time_range is None:
            continue
        low, high = combined_bounds(date_range, time_range)
        pairs[time_tag] = _CombinedKey(date_tag, time_tag, low, high)
    return pairs


@attrs.frozen
class ReturnKey:
    """A key of the identifier: where its value comes from, and (for a sequence with an
    item of keys) which item keys are returned."""

    tag: int
    vr: str
    source: str  # "column", "computed" or "stored"
    column: Column | None = None
    item_tags: tuple[tuple[int, str], ...] | None = None  # None: whole items


@attrs.define
class Plan:
    """An identifier turned into SQL and the rest."""

    aet: str
    level: str
    keys: list[ReturnKey]
    where: list[str]
    params: list[object]
    residual: list[Residual]

    @property
    def needs_stored(self) -> bool:
        return bool(self.residual) or any(key.source == "stored" for key in self.keys)

    @property
    def columns(self) -> list[ReturnKey]:
        return [key for key in self.keys if key.source == "column"]

    def select(self) -> str:
        ids = ["st.id", "se.id" if self.level != STUDY else "NULL", "i.id" if self.level == IMAGE else "NULL"]
        values = [f"{_ALIAS[key.column.level]}.{key.column.name}" for key in self.columns if key.column]
        order = [term for level in LEVELS[: LEVELS.index(self.level) + 1] for term in _ORDER[level]]
        return (
            f"SELECT {', '.join(ids + values)} FROM {_FROM[self.level]} "
            f"WHERE {' AND '.join(self.where)} ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
        )


def _levels_joined(level: str) -> tuple[str, ...]:
    return LEVELS[: LEVELS.index(level) + 1]


def _column_condition(column: Column, vr: str, texts: Sequence[str]) -> tuple[str, list[object]]:
    ref = f"{_ALIAS[column.level]}.{column.match_column}"
    if column.kind == "uid":
        return f"{ref} IN ({', '.join('?' * len(texts))})", list(texts)
    alternatives: list[str] = []
    params: list[object] = []
    for text in texts:
        if column.kind == "int":
            try:
                params.append(int(text))
            except ValueError:
                alternatives.append("1 = 0")
                continue
            alternatives.append(f"{ref} = ?")
        elif column.kind in ("date", "time"):
            bounds = _bounds(vr, text)
            if bounds is None:
                alternatives.append(f"{_ALIAS[column.level]}.{column.name} = ?")
                params.append(text)
                continue
            low, high = bounds
            terms = [f"{ref} IS NOT NULL"]
            if low is not None:
                terms.append(f"{ref} >= ?")
                params.append(low)
            if high is not None:
                terms.append(f"{ref} <= ?")
                params.append(high)
            alternatives.append(" AND ".join(terms))
        else:
            wanted = text.casefold() if column.kind == "pn" else text
            if _has_wildcard(vr, text):
                alternatives.append(f"{ref} LIKE ? ESCAPE '\\'")
                params.append(like_pattern(wanted))
            else:
                alternatives.append(f"{ref} = ?")
                params.append(wanted)
    return "(" + " OR ".join(f"({a})" for a in alternatives) + ")", params


def _computed_condition(tag: int, level: str, texts: Sequence[str]) -> tuple[str, list[object]]:
    if tag == INSTANCE_AVAILABILITY:
        return ("1 = 1" if "ONLINE" in texts else "1 = 0"), []
    if tag == MODALITIES_IN_STUDY:
        alternatives = []
        params: list[object] = []
        for text in texts:
            if _has_wildcard("CS", text):
                alternatives.append("m.modality LIKE ? ESCAPE '\\'")
                params.append(like_pattern(text))
            else:
                alternatives.append("m.modality = ?")
                params.append(text)
        return (
            f"EXISTS (SELECT 1 FROM series m WHERE m.study = st.id AND ({' OR '.join(alternatives)}))",
            params,
        )
    if tag == SOP_CLASSES_IN_STUDY:
        marks = ", ".join("?" * len(texts))
        return f"EXISTS (SELECT 1 FROM instances c WHERE c.study = st.id AND c.sop_class IN ({marks}))", list(
            texts
        )
    counted = {
        STUDY_RELATED_SERIES: "(SELECT COUNT(*) FROM series c WHERE c.study = st.id)",
        STUDY_RELATED_INSTANCES: "(SELECT COUNT(*) FROM instances c WHERE c.study = st.id)",
        SERIES_RELATED_INSTANCES: "(SELECT COUNT(*) FROM instances c WHERE c.series = se.id)",
    }[tag]
    numbers: list[object] = []
    for text in texts:
        try:
            numbers.append(int(text))
        except ValueError:
            continue
    if not numbers:
        return "1 = 0", []
    return f"{counted} IN ({', '.join('?' * len(numbers))})", numbers


def plan(aet: str, identifier: Dataset) -> Plan:
    """Read a Study Root C-FIND identifier; raises `UnsupportedQuery`."""
    level_element = identifier.get(QUERY_RETRIEVE_LEVEL)
    level = _text(level_element.value) if level_element is not None and level_element.value else ""
    if level not in LEVELS:
        raise UnsupportedQuery(
            f"the index answers Study Root queries at STUDY, SERIES or IMAGE level, not {level!r}"
        )
    joined = _levels_joined(level)
    alias = _ALIAS[level]
    result = Plan(aet, level, [], [f"{alias}.aet = ?"], [aet], [])
    # The time half of a combined pair is matched with its date (a residual below); its
    # date half keeps its own condition, which every match of the pair meets.
    pairs = combined_pairs(identifier)
    for element in identifier:
        tag = int(element.tag)
        if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) or tag >> 16 in (0x0000, 0x0002):
            continue
        vr = str(element.VR).split(" or ")[0]
        if vr == "SQ":
            _sequence_key(result, tag, element)
            continue
        texts = _key_texts(element)
        match = not _universal(vr, texts) and tag not in pairs
        column = COLUMN_OF_TAG.get(tag)
        if tag in COMPUTED and not (tag == SERIES_RELATED_INSTANCES and level == STUDY):
            result.keys.append(ReturnKey(tag, vr, "computed"))
            if match:
                sql, params = _computed_condition(tag, level, texts)
                result.where.append(sql)
                result.params.extend(params)
        elif column is not None and column.level in joined:
            result.keys.append(ReturnKey(tag, vr, "column", column))
            if match:
                sql, params = _column_condition(column, vr, texts)
                result.where.append(sql)
                result.params.extend(params)
        else:
            result.keys.append(ReturnKey(tag, vr, "stored"))
            if match:
                result.residual.append(Residual(tag, tuple(value_predicate(vr, t) for t in texts)))
    for pair in pairs.values():
        result.residual.append(Residual(pair.date_tag, combined=pair))
    return result


def _sequence_key(result: Plan, tag: int, element: DataElement) -> None:
    items = element.value or []
    item = items[0] if len(items) else None
    if item is None or len(item) == 0:
        result.keys.append(ReturnKey(tag, "SQ", "stored"))  # universal: whole items
        return
    keys: list[_ItemKey | _CombinedKey] = []
    item_tags = []
    pairs = combined_pairs(item)
    for item_element in item:
        item_vr = str(item_element.VR).split(" or ")[0]
        item_tags.append((int(item_element.tag), item_vr))
        texts = [] if item_vr == "SQ" else _key_texts(item_element)
        universal = _universal(item_vr, texts) or int(item_element.tag) in pairs
        predicates = () if universal else tuple(value_predicate(item_vr, t) for t in texts)
        keys.append(_ItemKey(int(item_element.tag), predicates))
    keys.extend(pairs.values())
    result.keys.append(ReturnKey(tag, "SQ", "stored", item_tags=tuple(item_tags)))
    if pairs or any(isinstance(key, _ItemKey) and key.predicates for key in keys):
        result.residual.append(Residual(tag, items=tuple(keys)))


# -- reading results ----------------------------------------------------------------------


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _grouped(session: Session, sql: str, ids: Sequence[int]) -> list[tuple[Any, ...]]:
    return session.execute(sql.format(marks=_marks(len(ids))), ids) if ids else []


@attrs.define
class _Page:
    """The rows of one page and what they need besides their columns."""

    rows: list[tuple[Any, ...]]
    stored: dict[int, Dataset] = attrs.Factory(dict)  # by the row's own id at its level
    modalities: dict[int, list[str]] = attrs.Factory(dict)
    sop_classes: dict[int, list[str]] = attrs.Factory(dict)
    study_series: dict[int, int] = attrs.Factory(dict)
    study_instances: dict[int, int] = attrs.Factory(dict)
    series_instances: dict[int, int] = attrs.Factory(dict)


def _own_id(level: str, row: tuple[Any, ...]) -> int:
    return int(row[LEVELS.index(level)])


def _stored_datasets(
    session: Session, level: str, ids: list[int], wanted: set[int] | None
) -> dict[int, Dataset]:
    """The stored attributes (of the latest instance, for a study or series) by id."""
    if not ids:
        return {}
    if level == IMAGE:
        rows = _grouped(session, "SELECT id, attributes FROM instances WHERE id IN ({marks})", ids)
    else:
        parent = "study" if level == STUDY else "series"
        rows = _grouped(
            session,
            f"SELECT {parent}, attributes FROM instances WHERE id IN "
            f"(SELECT MAX(id) FROM instances WHERE {parent} IN ({{marks}}) GROUP BY {parent})",
            ids,
        )
    found = {}
    for own, text in rows:
        attributes = decode_attributes(text)
        if wanted is not None:
            attributes = {k: v for k, v in attributes.items() if _tag_of(k) in wanted}
        found[int(own)] = Dataset.from_json(attributes)
    return found


def _tag_of(key: str) -> int:
    try:
        return int(key, 16)
    except ValueError:
        return -1


def _read_extras(session: Session, query: Plan, page: _Page) -> None:
    rows = page.rows
    tags = {key.tag for key in query.keys if key.source == "computed"}
    studies = sorted({int(r[0]) for r in rows})
    series = sorted({int(r[1]) for r in rows if r[1] is not None})
    if MODALITIES_IN_STUDY in tags:
        for study, modality in _grouped(
            session, "SELECT DISTINCT study, modality FROM series WHERE study IN ({marks})", studies
        ):
            if modality:
                page.modalities.setdefault(int(study), []).append(modality)
    if SOP_CLASSES_IN_STUDY in tags:
        for study, sop_class in _grouped(
            session, "SELECT DISTINCT study, sop_class FROM instances WHERE study IN ({marks})", studies
        ):
            page.sop_classes.setdefault(int(study), []).append(sop_class)
    counts = (
        (STUDY_RELATED_SERIES, "series", "study", studies, page.study_series),
        (STUDY_RELATED_INSTANCES, "instances", "study", studies, page.study_instances),
        (SERIES_RELATED_INSTANCES, "instances", "series", series, page.series_instances),
    )
    for tag, table, parent, ids, into in counts:
        if tag in tags:
            sql = f"SELECT {parent}, COUNT(*) FROM {table} WHERE {parent} IN ({{marks}}) GROUP BY {parent}"
            into.update((int(p), int(n)) for p, n in _grouped(session, sql, ids))
    if query.needs_stored:
        wanted = {key.tag for key in query.keys if key.source == "stored"}
        wanted.update(tag for r in query.residual for tag in r.tags)
        ids = sorted({_own_id(query.level, r) for r in rows})
        page.stored = _stored_datasets(session, query.level, ids, wanted)


def _element(tag: int, vr: str, value: object) -> DataElement:
    return DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)


def _column_value(key: ReturnKey, value: object) -> object:
    if value is None:
        return None
    if key.vr in ("IS", "DS"):
        return str(value)
    return value


def _one_or_list(values: list[str]) -> object:
    values = sorted(values)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _filtered_sequence(element: DataElement, item_tags: Iterable[tuple[int, str]]) -> DicomSequence:
    items = DicomSequence()
    for item in element.value or ():
        kept = Dataset()
        for tag, vr in item_tags:
            found = item.get(tag)
            kept.add(
                found if found is not None else _element(tag, vr, DicomSequence() if vr == "SQ" else None)
            )
        items.append(kept)
    return items


def _computed_value(tag: int, page: _Page, study: int, series: int | None) -> object:
    if tag == INSTANCE_AVAILABILITY:
        return "ONLINE"
    if tag == MODALITIES_IN_STUDY:
        return _one_or_list(page.modalities.get(study, []))
    if tag == SOP_CLASSES_IN_STUDY:
        return _one_or_list(page.sop_classes.get(study, []))
    if tag == STUDY_RELATED_SERIES:
        return str(page.study_series.get(study, 0))
    if tag == STUDY_RELATED_INSTANCES:
        return str(page.study_instances.get(study, 0))
    return str(page.series_instances.get(series, 0)) if series is not None else None


def _result(query: Plan, page: _Page, row: tuple[Any, ...]) -> Dataset | None:
    """The identifier of one row; None when a residual match key rejects it."""
    stored = page.stored.get(_own_id(query.level, row), Dataset()) if query.needs_stored else Dataset()
    if not all(residual(stored) for residual in query.residual):
        return None
    ds = Dataset()
    ds.add(_element(SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192"))  # values are decoded text
    ds.add(_element(QUERY_RETRIEVE_LEVEL, "CS", query.level))
    values = iter(row[3:])
    study, series = int(row[0]), (int(row[1]) if row[1] is not None else None)
    for key in query.keys:
        if key.source == "column":
            ds.add(_element(key.tag, key.vr, _column_value(key, next(values))))
        elif key.source == "computed":
            ds.add(_element(key.tag, key.vr, _computed_value(key.tag, page, study, series)))
        else:
            found = stored.get(key.tag)
            if found is None:
                ds.add(_element(key.tag, key.vr, DicomSequence() if key.vr == "SQ" else None))
            elif key.item_tags is not None and found.VR == "SQ":
                ds.add(_element(key.tag, "SQ", _filtered_sequence(found, key.item_tags)))
            else:
                ds.add(found)
    return ds


@attrs.define
class FindCursor:
    """A find in pages: `next_batch` (in the database's thread) until `done`."""

    query: Plan
    limit: int | None
    offset: int
    done: bool = False
    delivered: int = 0
    skipped: int = 0
    position: int = 0  # rows read from the database (residual matching only)

    def _remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.delivered

    def next_batch(self, session: Session) -> list[Dataset]:
        remaining = self._remaining()
        if self.done or remaining == 0:
            self.done = True
            return []
        if self.query.residual:
            want, start = PAGE, self.position
        else:
            want = PAGE if remaining is None else min(PAGE, remaining)
            start = self.offset + self.delivered
        rows = session.execute(self.query.select(), [*self.query.params, want, start])
        self.position += len(rows)
        if len(rows) < want:
            self.done = True
        page = _Page(rows)
        _read_extras(session, self.query, page)
        results = []
        for row in rows:
            ds = _result(self.query, page, row)
            if ds is None:
                continue
            if self.query.residual and self.skipped < self.offset:
                self.skipped += 1
                continue
            results.append(ds)
            self.delivered += 1
            if self._remaining() == 0:
                self.done = True
                break
        return results

# -*- test-case-name: tests.unit.test_qido_query -*-
"""Search query parameters on a target → a C-FIND identifier (PS3.18 §8.3.4, §10.6, §14.4).

The target (`dicomrst.qido.target.SearchTarget`) is a QIDO-RS resource on the Study Root
model or the MWL-RS resource on the Modality Worklist model; the parameters and the rules
below are the same for both.  `parse_query(target, args)` is the whole job: it validates
every parameter (a `BadRequest` names the offending one) and returns a `Query` holding the
identifier to send, the limit and offset, the Warning texts to answer with and the
matching the gateway must do itself on the results (`Query.accepts`).

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
  date-time matching (both ``xDate`` and ``xTime`` ranges, at the top level or as item
  keys of one sequence) is always done here: the PACS gets the date range only.  (A
  Q/R SCP does it only if negotiated; a worklist SCP must, but Orthanc's matches the
  two separately.)
* **Limits**: no ``limit`` means `DEFAULT_LIMIT`, which is also the most one response
  holds (the standard lets the server cap results); the gateway asks the PACS for
  ``offset + limit + 1`` results to know whether to add the "additional results"
  Warning, or for all of them (stopping itself) when it filters results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

from pydicom import config as pydicom_config
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.valuerep import ALLOW_BACKSLASH

from dicomrst.common.matching import combined_bounds, split_range
from dicomrst.common.tags import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET
from dicomrst.errors import BadRequest
from dicomrst.qido.attributes import (
    Attribute,
    Path,
    keyword_of,
    looks_like_attribute,
    resolve_attribute,
    vr_of,
)
from dicomrst.qido.matching import DateTimeFilter, value_filter
from dicomrst.qido.target import SearchTarget
from dicomrst.qido.values import integer, match_value, shown

DEFAULT_LIMIT = 1000
"""Results in one response when the request gives no ``limit``, and the most it may ask for."""

MAX_OFFSET = 2**31 - 1
"""The largest ``offset``: skipping more matches than that is not a search any PACS answers."""

FUZZY_WARNING = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
EMPTY_VALUE_WARNING = (
    "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed."
)
MULTIPLE_VALUE_WARNING = (
    "The multiplevaluematching parameter is not supported. Multiple Value Matching has not been performed."
)
MORE_RESULTS_WARNING = "There are additional results that can be requested"


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
    :ivar exact_identifier: the identifier for a backend that matches every key itself
        (`dicomrst.backends.interfaces.IIndexedSearch`): `identifier` with the time
        range of each combined date-time pair as a match key too, since such a backend
        does the combined matching the gateway otherwise does in `filters`; None when it
        is `identifier` itself.
    """

    target: SearchTarget
    identifier: Dataset
    limit: int
    offset: int
    warnings: list[str] = field(default_factory=list)
    filters: list[Callable[[Dataset], bool]] = field(default_factory=list)
    exact_identifier: Dataset | None = None

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
    """A non-negative integer parameter; one with more digits than any count needs is
    10**MAX_INTEGER_DIGITS (`integer`), never parsed."""
    value = _one(name, values)
    number = integer(value) if value.isascii() and value.isdigit() else None
    if number is None:
        raise BadRequest(f"{name} must be a non-negative integer, not {shown(value)}")
    return number


def _boolean(name: str, values: Sequence[str]) -> bool:
    value = _one(name, values)
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value == "true"


#: VRs whose single text value `DataElement` stores as it is given: the others become a
#: value type (IS, DS, UI as UID, PN as PersonName, AT as a tag; DA, DT and TM too when
#: pydicom's ``datetime_conversion`` is on).
_VERBATIM_VRS = frozenset("AE AS CS LO LT SH ST UC UR UT".split())
_DATE_TIME_VRS = frozenset("DA DT TM".split())


_IGNORE = pydicom_config.IGNORE


def _verbatim(vr: str, value: object) -> bool:
    """Whether ``DataElement(tag, vr, value)`` stores `value` itself: it is empty (None, an
    empty return key), or one string its VR keeps as text (a backslash would split it)."""
    if value is None:
        return True
    if type(value) is not str:
        return False
    if "\\" in value and vr not in ALLOW_BACKSLASH:
        return False
    return vr in _VERBATIM_VRS or (vr in _DATE_TIME_VRS and not pydicom_config.datetime_conversion)


def _element(tag: int, vr: str, value: object, validation_mode: int | None = _IGNORE) -> DataElement:
    """The identifier's element, as ``DataElement(tag, vr, value)`` makes it.  An empty
    return key (most of an identifier) and a value pydicom would keep as it is (`_verbatim`:
    a text match value the gateway checked, the level, the character set) are stored
    without pydicom's conversion and validation, which was a third of a search's query
    parsing (issue 15); a match value of another VR is converted as always (UIDs, person
    names, numbers, lists).  An empty sequence (a return key) is a new `Sequence`."""
    if vr == "SQ":
        if value is None:
            value = DicomSequence()
        return DataElement(tag, vr, value, None, False, isinstance(value, DicomSequence), validation_mode)
    if _verbatim(vr, value):
        # Positional: keyword arguments cost as much again as the rest of the call.
        return DataElement(tag, vr, value, None, False, True, validation_mode)
    return DataElement(tag, vr, value, validation_mode=validation_mode)


#: The return keys of `SearchTarget.default_keys` (by the keys), with their VRs: the same
#: dozen or so for every search of a resource.  A handful of resources, so it stays small.
_DEFAULT_KEYS: dict[tuple[Path, ...], dict[Path, tuple[str, object]]] = {}


class _Keys:
    """The identifier's keys by tag path, built up before becoming a Dataset; an empty
    return key's value is None (an empty sequence for SQ, made by `_element`)."""

    def __init__(self, values: dict[Path, tuple[str, object]] | None = None) -> None:
        self.values: dict[Path, tuple[str, object]] = {} if values is None else values

    @classmethod
    def defaults(cls, target: SearchTarget) -> _Keys:
        """The return keys every search of `target` asks for."""
        paths = tuple(target.default_keys())
        values = _DEFAULT_KEYS.get(paths)
        if values is None:
            values = {}
            for path in paths:
                values.setdefault(path, (vr_of(path[-1]), None))
            _DEFAULT_KEYS[paths] = values
        return cls(dict(values))

    def add_return(self, path: Path, vr: str | None = None) -> None:
        if path not in self.values:
            self.values[path] = (vr or vr_of(path[-1]), None)

    def set(self, path: Path, vr: str, value: object) -> None:
        self.values[path] = (vr, value)

    def dataset(self, extra: Sequence[DataElement] = ()) -> Dataset:
        """The identifier; `extra` elements (level, character set) replace any key of
        their tag."""
        # The top level is gathered as a dict and handed to Dataset whole: adding the ~15
        # elements one by one (Dataset.__setitem__'s checks) was a tenth of a search's CPU.
        top: dict[BaseTag, DataElement] = {}
        nested: list[tuple[Path, tuple[str, object]]] = []
        for path, vr_value in self.values.items():
            if len(path) == 1:
                tag = BaseTag(path[0])
                vr, value = vr_value
                if value is None and vr != "SQ":  # most keys: `_element`'s first case, inline
                    top[tag] = DataElement(tag, vr, None, None, False, True, _IGNORE)
                else:
                    top[tag] = _element(tag, vr, value)
            else:
                nested.append((path, vr_value))
        # Shorter paths first, so a sequence's element exists before its item keys.
        nested.sort(key=_path_length)
        for path, (vr, value) in nested:
            tag = BaseTag(path[0])
            element = top.get(tag)
            if element is None or element.VR != "SQ":
                element = _element(tag, "SQ", None)
                top[tag] = element
            if len(element.value) == 0:
                element.value.append(Dataset())
            _put(element.value[0], path[1:], vr, value)
        for element in extra:
            top[element.tag] = element
        return _new_dataset(dict(top))


def _dataset_state() -> tuple[dict[str, object], dict[str, dict[object, object]]] | None:
    """What ``Dataset()`` sets on itself: its attributes of plain values, and those that
    are dicts of plain values (each identifier gets copies); None when it sets anything
    else."""
    plain: dict[str, object] = {}
    dicts: dict[str, dict[object, object]] = {}
    for name, value in vars(Dataset()).items():
        if type(value) is dict and all(v is None or type(v) in (bool, int, str) for v in value.values()):
            dicts[name] = value
        elif value is None or type(value) in (bool, int, str):
            plain[name] = value
        else:
            return None
    return (plain, dicts) if "_dict" in dicts else None


_DATASET_STATE = _dataset_state()


def _new_dataset(elements: MutableMapping[BaseTag, DataElement | RawDataElement]) -> Dataset:
    """``Dataset(elements)``, made as its ``__init__`` leaves it without running it: each of
    its dozen attributes went through Dataset.__setattr__'s keyword checks, a quarter of
    building an identifier (issue 15).  Through ``__init__`` when this pydicom's Dataset
    holds more than plain values and dicts of them."""
    if _DATASET_STATE is None:
        return Dataset(elements)
    plain, dicts = _DATASET_STATE
    dataset: Dataset = object.__new__(Dataset)
    attributes = dataset.__dict__
    attributes.update(plain)
    for name, template in dicts.items():
        attributes[name] = template.copy()
    attributes["_dict"] = elements
    return dataset


def _path_length(item: tuple[Path, tuple[str, object]]) -> int:
    return len(item[0])


def _put(ds: Dataset, path: Path, vr: str, value: object) -> None:
    tag = BaseTag(path[0])
    if len(path) == 1:
        existing = ds.get(tag)
        if existing is not None and existing.VR == "SQ" and vr == "SQ":
            return
        ds.add(_element(tag, vr, value))
        return
    element = ds.get(tag)
    if element is None or element.VR != "SQ":
        element = _element(tag, "SQ", None)
        ds.add(element)
    if len(element.value) == 0:
        element.value.append(Dataset())
    _put(element.value[0], path[1:], vr, value)


def parse_query(target: SearchTarget, args: Mapping[str, Sequence[str]]) -> Query:
    """Validate the query parameters of a search on `target` and build its `Query`.

    :param args: parameter name → values, percent-decoded, in request order.
    :raises BadRequest: naming the parameter, attribute or value at fault.
    """
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
            if offset > MAX_OFFSET:
                raise BadRequest(f"offset must be at most {MAX_OFFSET}, not {shown(values[0])}")
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
                    f"{keyword_of(attribute.tag)} is given more than once ({first}, {name}); "
                    "use a comma-separated list for several UIDs"
                )
            matches[attribute.path] = (attribute, values[0])
        # Anything else is an unsupported parameter, ignored as PS3.18 §8.3 says.

    if "all" in includes and len(set(includes)) > 1:
        raise BadRequest("includefield=all cannot be combined with other includefield values")

    keys = _Keys.defaults(target)
    if "all" in includes:
        for path in target.all_keys():
            keys.add_return(path)
    else:
        for name in includes:
            attribute = resolve_attribute(name)
            if target.returns(attribute):
                keys.add_return(attribute.path, attribute.vr)

    path_keys = target.path_keys()
    for tag, uid in path_keys.items():
        keys.set((tag,), "UI", uid)

    # Combined date-time matching: both halves of a pair (xDate and xTime, side by side
    # at the top level or in one sequence's items) are ranges.
    combined: dict[Path, tuple[Path, tuple[str, str], tuple[str, str]]] = {}
    for path, (attribute, value) in matches.items():
        if attribute.vr != "DA" or "-" not in value:
            continue
        keyword = keyword_for_tag(attribute.tag)
        if not keyword or not keyword.endswith("Date"):
            continue
        time_tag = tag_for_keyword(keyword[:-4] + "Time")
        time_path = (*path[:-1], time_tag) if time_tag is not None else None
        if time_path is None or time_path not in matches:
            continue
        time_attribute, time_value = matches[time_path]
        if "-" not in time_value:
            continue
        match_value(attribute, value, combined=True)
        match_value(time_attribute, time_value, combined=True)
        date_range, time_range = split_range("DA", value), split_range("TM", time_value)
        if date_range is not None and time_range is not None:
            combined[path] = (time_path, date_range, time_range)

    filters: list[Callable[[Dataset], bool]] = []
    combined_times = {time_path for time_path, _, _ in combined.values()}
    exact_times: dict[Path, object] = {}
    required = target.required_keys()
    non_ascii = False
    for path, (attribute, value) in matches.items():
        target.check_match(attribute)
        if len(path) == 1 and path[0] in path_keys:
            if value != path_keys[path[0]]:
                raise BadRequest(f"{attribute.name} contradicts the {keyword_of(path[0])} in the path")
            continue
        if value == "":
            keys.add_return(path, attribute.vr)  # universal matching
            continue
        if path in combined_times:
            keys.add_return(path, attribute.vr)  # matched with its date, here
            exact_times[path] = match_value(attribute, value, combined=True)
            continue
        stored = match_value(attribute, value, combined=path in combined)
        keys.set(path, attribute.vr, stored)
        non_ascii = non_ascii or not value.isascii()
        if path not in combined and (len(path) > 1 or path[0] not in required):
            result_filter = value_filter(attribute, value)
            if result_filter is not None:
                filters.append(result_filter)

    for date_path, (time_path, date_range, time_range) in combined.items():
        low, high = combined_bounds(date_range, time_range)
        filters.append(DateTimeFilter(date_path[-1], time_path[-1], low, high, date_path[:-1]))

    identifier = _identifier(keys, target, non_ascii)
    exact_identifier = None
    if exact_times:
        exact_keys = _Keys({**keys.values, **{path: ("TM", value) for path, value in exact_times.items()}})
        exact_identifier = _identifier(exact_keys, target, non_ascii)
    return Query(target, identifier, limit, offset, warnings, filters, exact_identifier)


def _identifier(keys: _Keys, target: SearchTarget, non_ascii: bool) -> Dataset:
    # Both in the reading validation mode, as ``DataElement(tag, "CS", value)`` makes them
    # (the values are the gateway's own: valid, so not checked again).
    extra = [_element(SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192" if non_ascii else None, None)]
    if target.query_level is not None:
        extra.append(_element(QUERY_RETRIEVE_LEVEL, "CS", target.query_level, None))
    return keys.dataset(extra)

# -*- test-case-name: tests.unit.test_qido_query -*-
"""What is searched: `SearchTarget`, the contract `parse_query` and `search` work to, and
`Target`, the six QIDO-RS resources (PS3.18 §10.6) on the Study Root model: query level,
the UIDs the path fixes, shape.  `dicomrst.qido.worklist` is the other target: MWL-RS.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import quote

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomrst.common.dicomjson import json_string
from dicomrst.common.identifiers import RawIdentifier
from dicomrst.common.rawjson import Members, identifier_attributes
from dicomrst.common.tags import (
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_URL,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    STUDY_INSTANCE_UID,
)
from dicomrst.common.uids import STUDY_ROOT_FIND, is_uid
from dicomrst.errors import BadRequest
from dicomrst.qido.attributes import (
    DEFAULT_KEYS,
    IMAGE,
    RANK,
    REQUIRED_KEYS,
    SERIES,
    STUDY,
    UNIQUE_KEY,
    Attribute,
    Path,
    level_of,
    level_tags,
    vr_of,
)


class SearchTarget(Protocol):
    """A searchable resource and its information model: what `parse_query` builds the
    C-FIND identifier from and `search` shapes the results with.  The query parameters,
    their checks and the gateway's own matching are the same for every target (PS3.18
    §8.3.4, which QIDO-RS and MWL-RS share); what differs is here."""

    @property
    def resource(self) -> str:
        """The URI template, for messages."""

    @property
    def sop_class(self) -> str:
        """The C-FIND SOP Class UID (the information model) the search runs on."""

    @property
    def query_level(self) -> str | None:
        """The Query/Retrieve Level (0008,0052) to send, or None for a model without one."""

    def default_keys(self) -> Iterator[Path]:
        """The return keys every search asks for."""

    def all_keys(self) -> Iterator[Path]:
        """The return keys ``includefield=all`` adds."""

    def returns(self, attribute: Attribute) -> bool:
        """Whether an ``includefield`` attribute is asked for (False: dropped); raises
        `BadRequest` for one this model cannot have where it is written."""

    def check_match(self, attribute: Attribute) -> None:
        """Raise `BadRequest` if `attribute` cannot be matched on here."""

    def required_keys(self) -> frozenset[int]:
        """Top-level keys every SCP of the model must match on: the gateway leaves them
        to the PACS and checks every other match key again itself."""

    def path_keys(self) -> dict[int, str]:
        """Unique keys the resource's path fixes (tag → UID)."""

    def result(self, dataset: Dataset, identifier: Dataset, service: str) -> Dataset:
        """What the client sees of a C-FIND result for `identifier` (Retrieve URLs start
        with `service`, ``{base}/aets/{aet}``)."""

    def raw_result(self, found: RawIdentifier, service: str) -> bytes | None:
        """`result` of a match as received, as the UTF-8 DICOM JSON object
        ``encode_dataset(result(...))`` writes, made from its bytes; None when only the
        decoded data set can be shaped exactly (the caller then uses `result`)."""


def _path_uid(value: str | None, what: str) -> str | None:
    if value is not None and not is_uid(value):
        raise BadRequest(f"invalid {what} in the path: {value!r}")
    return value


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
        return (RANK[self.level] >= 1 and self.study is None) or (self.level == IMAGE and self.series is None)

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

    # -- SearchTarget ---------------------------------------------------------------------

    sop_class = STUDY_ROOT_FIND

    @property
    def query_level(self) -> str:
        return self.level

    def _levels(self) -> tuple[str, ...]:
        return (self.level, *self.adds)

    def default_keys(self) -> Iterator[Path]:
        for level in self._levels():
            yield from DEFAULT_KEYS[level]

    def all_keys(self) -> Iterator[Path]:
        for level in self._levels():
            for tag in sorted(level_tags(level)):
                if vr_of(tag) != "SQ":  # sequences only when asked for by name
                    yield (tag,)

    def _lower_level(self, attribute: Attribute) -> str | None:
        level = level_of(attribute.path[0])
        return level if level is not None and RANK[level] > RANK[self.level] else None

    def returns(self, attribute: Attribute) -> bool:
        # A lower level's attributes "shall not be returned" (PS3.18 §10.6.3.3).
        return self._lower_level(attribute) is None

    def check_match(self, attribute: Attribute) -> None:
        level = self._lower_level(attribute)
        if level is not None:
            raise BadRequest(
                f"{attribute.name} is a {level}-level attribute; it cannot be matched on {self.resource}"
            )

    def required_keys(self) -> frozenset[int]:
        return REQUIRED_KEYS[self.level]

    def path_keys(self) -> dict[int, str]:
        keys = {}
        if self.study is not None:
            keys[UNIQUE_KEY[STUDY]] = self.study
        if self.series is not None:
            keys[UNIQUE_KEY[SERIES]] = self.series
        return keys

    def result(self, dataset: Dataset, identifier: Dataset, service: str) -> Dataset:
        if QUERY_RETRIEVE_LEVEL in dataset:
            del dataset[QUERY_RETRIEVE_LEVEL]  # a C-FIND artefact, not data
        # Path UIDs the PACS left out (StudyInstanceUID at series level, …).
        for tag, uid in self.path_keys().items():
            current = dataset.get(tag)
            if current is None or current.value in (None, ""):
                dataset.add(DataElement(tag, "UI", uid))
        if SPECIFIC_CHARACTER_SET in dataset:
            # The values are decoded now and JSON is UTF-8: say so (PS3.18 F.2).
            charset = dataset[SPECIFIC_CHARACTER_SET].value
            dataset[SPECIFIC_CHARACTER_SET].value = "ISO_IR 192" if charset else None
        url = self._retrieve_url(dataset, service)
        if url is not None:
            dataset.add(DataElement(RETRIEVE_URL, "UR", url))
        return dataset

    def raw_result(self, found: RawIdentifier, service: str) -> bytes | None:
        # `result`, member by member: each is '"GGGGEEEE":{...}', in ascending tag order.
        walked = identifier_attributes(found.data, implicit=found.implicit, wanted=_RAW_WANTED)
        if walked is None:
            return None
        members, tags, values = walked
        uids: dict[int, str | None] = {}
        for tag in _URL_UIDS:
            if tag in values:
                vr, raw = values[tag]
                if vr != "UI":
                    return None  # what pydicom makes of it is its business
                uids[tag] = _ui_value(raw)
        _drop(members, tags, QUERY_RETRIEVE_LEVEL)
        if self.study is not None or self.series is not None:  # else no path keys
            for tag, uid in self.path_keys().items():
                if tag not in uids or uids[tag] == "":
                    _put(members, tags, tag, f'{{"vr":"UI","Value":[{json_string(uid)}]}}')
                    uids[tag] = uid
        if SPECIFIC_CHARACTER_SET in values:
            vr, raw = values[SPECIFIC_CHARACTER_SET]
            if vr != "CS":
                return None
            # The value's truth as pydicom reads it: trailing padding off, then non-empty.
            charset = raw.decode("latin-1").rstrip(" \x00")
            _put(members, tags, SPECIFIC_CHARACTER_SET, _UTF8 if charset else '{"vr":"CS"}')
        path = self._url_path(uids)
        if path is not None:
            # The path is JSON as it is (digits, dots, percent escapes): only the service
            # URL needs escaping, once per service.
            _put(members, tags, RETRIEVE_URL, f'{{"vr":"UR","Value":[{_json_prefix(service)}/{path}"]}}')
        return ("{" + ",".join(members) + "}").encode("utf-8")

    def _url(self, service: str, uids: dict[int, str | None]) -> str | None:
        """The Retrieve URL of the UIDs (None: one is missing, empty or holds a "/")."""
        path = self._url_path(uids)
        return None if path is None else f"{service}/{path}"

    def _url_path(self, uids: dict[int, str | None]) -> str | None:
        """The Retrieve URL below the service: ASCII letters, digits, ``./-_~%``."""
        parts = []
        for tag, segment in _URL_KEYS[self.level]:
            uid = uids.get(tag)
            uid = uid.strip(" \x00") if uid is not None else ""
            if not uid or "/" in uid:
                return None
            # A UID proper (digits and dots) is its own quoting: quote() costs more than
            # the rest of the URL.
            parts.append(f"{segment}/{uid if _UID_CHARS.fullmatch(uid) else quote(uid, safe='.')}")
        return "/".join(parts)

    def _retrieve_url(self, dataset: Dataset, service: str) -> str | None:
        uids: dict[int, str | None] = {}
        for tag in _URL_UIDS:
            element = dataset.get(tag)
            value = element.value if element is not None else None
            uids[tag] = value if isinstance(value, str) else None  # not absent, empty or a list
        return self._url(service, uids)


_URL_UIDS = (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID)
# The Retrieve URL's segments at each level, and the UIDs they name.
_STUDIES = (STUDY_INSTANCE_UID, "studies")
_SERIES = (SERIES_INSTANCE_UID, "series")
_URL_KEYS = {
    STUDY: (_STUDIES,),
    SERIES: (_STUDIES, _SERIES),
    IMAGE: (_STUDIES, _SERIES, (SOP_INSTANCE_UID, "instances")),
}
_UID_CHARS = re.compile(r"[0-9.]+")
_RAW_WANTED = frozenset((*_URL_UIDS, SPECIFIC_CHARACTER_SET))
_UTF8 = '{"vr":"CS","Value":["ISO_IR 192"]}'


@lru_cache(maxsize=16)
def _json_prefix(service: str) -> str:
    """`service` as the start of a JSON string (its closing quote left off)."""
    return json_string(service)[:-1]


def _ui_value(raw: bytes) -> str | None:
    """A UI value as pydicom reads it, if it is one string ('' when empty); None when it
    is several (a list, which `Target.result` treats as no UID)."""
    values = raw.decode("latin-1").rstrip("\x00 ").split("\\")
    return values[0].strip() if len(values) == 1 else None


def _drop(members: Members, tags: list[int], tag: int) -> None:
    i = bisect_left(tags, tag)
    if i < len(tags) and tags[i] == tag:
        del members[i], tags[i]


def _put(members: Members, tags: list[int], tag: int, attribute: str) -> None:
    """Set the member of `tag` (replacing the one there), keeping the tag order."""
    member = f'"{tag:08X}":{attribute}'
    i = bisect_left(tags, tag)
    if i < len(tags) and tags[i] == tag:
        members[i] = member
    else:
        members.insert(i, member)
        tags.insert(i, tag)

# -*- test-case-name: tests.unit.test_index -*-
"""What the index keeps of one stored object, from the head of its Part-10 bytes.

`record_from_head` reads the file meta and the data set up to (not including) Pixel
Data; the reconcile scans (a ranged read of an S3 object's head, a LOCAL file's first
bytes) and the store paths build their `IndexRecord` with it.  `InstanceRow` is what the
index writes for a record: the values of the columns it matches on (`COLUMNS`) and the
attributes as DICOM JSON, from which every other return key, ``includefield=all``
included, is answered.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from io import BytesIO
from typing import BinaryIO, cast

import attrs
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

from dicomrst.common.dicomjson import element_json, original_text
from dicomrst.common.matching import pad_time, valid_time
from dicomrst.common.part10 import (
    MEDIA_STORAGE_SOP_CLASS,
    MEDIA_STORAGE_SOP_INSTANCE,
    TRANSFER_SYNTAX,
    NotPart10,
    read_file_meta,
)
from dicomrst.common.rawjson import INDEX_BINARY_LIMIT, RawValue, index_json
from dicomrst.common.tags import (
    BINARY_VRS,
    LONG_VRS,
    PIXEL_DATA_TAGS,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    STUDY_INSTANCE_UID,
)
from dicomrst.common.transcode import DataSetError, parse_dataset
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from dicomrst.common.walker import ElementWalker
from dicomrst.index.interfaces import IndexRecord, InstanceRow

#: Bytes of an object's head read first; most data sets end well before.
HEAD_BYTES = 64 << 10
#: How much more of an object each further read of its head takes, when its data set is longer.
HEAD_GROWTH = 4

#: Binary values (OB, OW, UN, ...) longer than this are not kept: no search returns them
#: usefully, and a LUT or an icon would make every row large.
MAX_BINARY_VALUE = INDEX_BINARY_LIMIT

STUDY = "STUDY"
SERIES = "SERIES"
IMAGE = "IMAGE"
LEVELS = (STUDY, SERIES, IMAGE)


class NotIndexable(Exception):
    """An object that is not a DICOM Part-10 object the index can read: the message says
    why.  The reconcile scan logs it once and skips the object."""


@attrs.frozen
class Column:
    """An attribute the index keeps in a column of its level's table, to match and sort on
    in the database.

    :ivar kind: ``uid``, ``text``, ``pn`` (plus ``{name}_folded``, case-folded, for PN's
        case-insensitive matching), ``date``, ``time`` (plus ``{name}_key``, the time
        filled to HHMMSS.FFFFFF, for ranges) or ``int``.
    """

    level: str
    tag: int
    vr: str
    name: str
    kind: str

    @property
    def match_column(self) -> str:
        if self.kind == "pn":
            return f"{self.name}_folded"
        if self.kind == "time":
            return f"{self.name}_key"
        return self.name

    def stored(self) -> tuple[str, ...]:
        """Every database column this attribute fills, the value column first."""
        return (self.name, self.match_column) if self.match_column != self.name else (self.name,)


def _columns(level: str, spec: str) -> tuple[Column, ...]:
    columns = []
    for line in spec.strip().splitlines():
        keyword, name, kind = line.split()
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        columns.append(Column(level, tag, dictionary_VR(tag).split(" or ")[0], name, kind))
    return tuple(columns)


# The required and unique keys of each level (PS3.4 C.6.2.1), the default return keys of
# PS3.18 T10.6.3-3..5 that are plain attributes, and the keys viewers search by.
COLUMNS: dict[str, tuple[Column, ...]] = {
    STUDY: _columns(
        STUDY,
        """
        StudyInstanceUID study_uid uid
        PatientName patient_name pn
        PatientID patient_id text
        IssuerOfPatientID issuer_of_patient_id text
        PatientBirthDate patient_birth_date date
        PatientSex patient_sex text
        StudyDate study_date date
        StudyTime study_time time
        AccessionNumber accession_number text
        StudyID study_id text
        ReferringPhysicianName referring_physician_name pn
        StudyDescription study_description text
        """,
    ),
    SERIES: _columns(
        SERIES,
        """
        SeriesInstanceUID series_uid uid
        Modality modality text
        SeriesNumber series_number int
        SeriesDescription series_description text
        SeriesDate series_date date
        SeriesTime series_time time
        BodyPartExamined body_part_examined text
        PerformedProcedureStepStartDate pps_start_date date
        PerformedProcedureStepStartTime pps_start_time time
        """,
    ),
    IMAGE: _columns(
        IMAGE,
        """
        SOPInstanceUID sop_uid uid
        SOPClassUID sop_class uid
        InstanceNumber instance_number int
        Rows image_rows int
        Columns image_columns int
        BitsAllocated bits_allocated int
        NumberOfFrames number_of_frames int
        ContentDate content_date date
        ContentTime content_time time
        """,
    ),
}

COLUMN_OF_TAG: dict[int, Column] = {c.tag: c for level in LEVELS for c in COLUMNS[level]}


def _texts(element: DataElement | None) -> list[str]:
    """The non-empty values of an element as text, padding stripped."""
    if element is None or element.VR == "SQ" or element.value is None:
        return []
    value = element.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    texts = []
    for v in values:
        if v is None:
            continue
        text = v.decode("latin-1") if isinstance(v, bytes) else original_text(v)
        text = text.strip(" \x00")
        if text:
            texts.append(text)
    return texts


def column_values(column: Column, element: DataElement | None) -> tuple[object, ...]:
    """What `column` stores for `element` (None: absent or empty), in `Column.stored` order."""
    return _column_texts(column, _texts(element))


def _column_texts(column: Column, texts: list[str]) -> tuple[object, ...]:
    """What `column` stores for an element's non-empty values as text."""
    if not texts:
        return (None,) * len(column.stored())
    text = "\\".join(texts)  # a VM 1 attribute holding several values stays one string
    if column.kind == "int":
        try:
            return (int(texts[0]),)
        except ValueError:
            return (None,)
    if column.kind == "pn":
        return (text, text.casefold())
    if column.kind == "time":
        bare = texts[0].replace(":", "")
        return (text, pad_time(bare, False) if valid_time(bare) else None)
    return (text,)


def _member(element: DataElement) -> str | None:
    """The element as a member of the stored JSON object, or None when it is not kept."""
    tag = int(element.tag)
    if tag == SPECIFIC_CHARACTER_SET or tag in PIXEL_DATA_TAGS or tag >> 16 == 0x0002:
        return None  # values are kept decoded (JSON is UTF-8); pixel data never
    if element.VR in BINARY_VRS and element.value is not None and len(element.value) > MAX_BINARY_VALUE:
        return None
    try:
        encoded = element_json(element)
    except Exception:  # a value pydicom cannot make sense of: not searchable
        return None
    return f'"{tag:08X}":{encoded}' if encoded is not None else None


def _kept(dataset: Dataset) -> Iterator[str]:
    for element in dataset:
        member = _member(element)
        if member is not None:
            yield member


def instance_row(record: IndexRecord) -> InstanceRow:
    """The row of `record` (CPU work: runs in the index's thread, unless the record
    brings it)."""
    if record.row is not None:
        return record.row
    ds = record.attributes
    assert ds is not None, "a record has its attributes or its row"
    levels: dict[str, dict[str, object]] = {}
    for level in LEVELS:
        values: dict[str, object] = {}
        for column in COLUMNS[level]:
            element = ds.get(column.tag)
            values.update(zip(column.stored(), column_values(column, element), strict=True))
        levels[level] = values
    # The record's own UIDs win over what the data set says (they name the object).
    levels[STUDY]["study_uid"] = record.study
    levels[SERIES]["series_uid"] = record.series
    levels[IMAGE]["sop_uid"] = record.sop_instance
    levels[IMAGE]["sop_class"] = record.sop_class
    attributes = record.attributes_json
    if attributes is None:
        attributes = "{" + ",".join(_kept(ds)) + "}"
    return InstanceRow(levels[STUDY], levels[SERIES], levels[IMAGE], attributes)


def _uid(dataset: Dataset, tag: int) -> str:
    texts = _texts(dataset.get(tag))
    return texts[0] if texts else ""


def record_from_dataset(
    aet: str,
    key: str,
    stamp: str,
    size: int,
    dataset: Dataset,
    *,
    sop_class: str = "",
    sop_instance: str = "",
    transfer_syntax: str,
    attributes_json: str | None = None,
) -> IndexRecord:
    """The record of a parsed data set; the UIDs from the file meta when given, else from
    the data set.  Raises `NotIndexable` when a UID is missing."""
    uids: dict[str, str] = {
        "study": _uid(dataset, STUDY_INSTANCE_UID),
        "series": _uid(dataset, SERIES_INSTANCE_UID),
        "sop_instance": sop_instance or _uid(dataset, SOP_INSTANCE_UID),
        "sop_class": sop_class or _uid(dataset, SOP_CLASS_UID),
    }
    missing = [name for name, value in uids.items() if not value]
    if missing:
        raise NotIndexable(f"no {', '.join(missing)} UID")
    return IndexRecord(
        aet=aet,
        key=key,
        stamp=stamp,
        size=size,
        transfer_syntax=transfer_syntax,
        attributes=dataset,
        attributes_json=attributes_json,
        study=uids["study"],
        series=uids["series"],
        sop_instance=uids["sop_instance"],
        sop_class=uids["sop_class"],
    )


class _NotRaw(Exception):
    """A value the raw path does not read exactly as pydicom would: pydicom reads it."""


_RAW_NUMBERS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4)}
_RAW_LATIN1 = frozenset("AE AS CS DA DT IS TM UI".split())
_RAW_CODEC = frozenset("LO SH UC".split())
#: The top-level values the raw path needs: every column's.
_RAW_WANTED = frozenset(COLUMN_OF_TAG)


def _raw_texts(value: RawValue | None) -> list[str]:
    """`_texts` of an element, from its VR, bytes and codec (`index_json`'s)."""
    if value is None:
        return []
    vr, raw, codec = value
    if not raw:
        return []
    if vr in _RAW_NUMBERS:
        code, width = _RAW_NUMBERS[vr]
        count, rest = divmod(len(raw), width)
        if rest:
            raise _NotRaw
        return [str(v) for v in struct.unpack(f"<{count}{code}", raw)]
    if vr == "PN":
        values = []
        for value_text in raw.rstrip(b"\x00 ").decode(codec).split("\\"):
            groups = value_text.split("=")
            while groups and not groups[-1]:
                groups.pop()  # as pydicom's PersonName: no trailing empty groups
            values.append("=".join(groups))
    elif vr in _RAW_CODEC:
        values = raw.decode(codec).split("\\")
    elif vr in _RAW_LATIN1:
        values = raw.decode("latin-1").split("\\")
    else:
        raise _NotRaw
    texts = [t for t in (v.strip(" \x00") for v in values) if t]
    if vr == "IS":
        for text in texts:
            try:
                int(text)
            except ValueError:
                raise _NotRaw from None  # pydicom may keep another text (a float, a warning)
    return texts


def _raw_record(
    aet: str,
    key: str,
    stamp: str,
    size: int,
    data: bytes,
    *,
    implicit: bool,
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
) -> IndexRecord | None:
    """`record_from_dataset` of `data` (a little-endian data set cut before its Pixel Data)
    with its row made from the bytes, without pydicom; None where pydicom must do it."""
    found = index_json(data, implicit=implicit, wanted=_RAW_WANTED)
    if found is None:
        return None
    attributes, values = found
    try:
        levels: dict[str, dict[str, object]] = {}
        for level in LEVELS:
            row: dict[str, object] = {}
            for column in COLUMNS[level]:
                texts = _raw_texts(values.get(column.tag))
                row.update(zip(column.stored(), _column_texts(column, texts), strict=True))
            levels[level] = row
        first = {
            tag: _raw_texts(values.get(tag))
            for tag in (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID, SOP_CLASS_UID)
        }
    except (_NotRaw, UnicodeDecodeError):
        return None
    uids = {
        "study": first[STUDY_INSTANCE_UID][:1],
        "series": first[SERIES_INSTANCE_UID][:1],
        "sop_instance": [sop_instance] if sop_instance else first[SOP_INSTANCE_UID][:1],
        "sop_class": [sop_class] if sop_class else first[SOP_CLASS_UID][:1],
    }
    if not all(uids.values()):
        return None  # pydicom's path says which is missing
    study, series, instance, sop = (v[0] for v in uids.values())
    levels[STUDY]["study_uid"] = study
    levels[SERIES]["series_uid"] = series
    levels[IMAGE]["sop_uid"] = instance
    levels[IMAGE]["sop_class"] = sop
    return IndexRecord(
        aet=aet,
        key=key,
        stamp=stamp,
        size=size,
        transfer_syntax=transfer_syntax,
        attributes=None,
        row=InstanceRow(levels[STUDY], levels[SERIES], levels[IMAGE], attributes),
        study=study,
        series=series,
        sop_instance=instance,
        sop_class=sop,
    )


def record_from_head(
    aet: str, key: str, stamp: str, size: int, head: bytes, *, complete: bool, raw: bool = False
) -> IndexRecord | None:
    """The record of the object whose first bytes are `head` (`complete`: the whole object),
    or None when more bytes are needed to reach its Pixel Data (read more and call again).

    Raises `NotIndexable` for an object that is not Part 10 or whose data set does not
    parse.  A Deflated object needs all its bytes (None until `complete`).  CPU work:
    call it off the reactor.

    `raw`: make the record's row from the bytes (`dicomrst.common.rawjson.index_json`),
    several times cheaper, and equal to what the index makes with pydicom; pydicom reads
    what that declines (big endian, ISO 2022 character sets, values pydicom would warn
    about, ...).  The record then has a `row` and no `attributes`.
    """
    try:
        meta = read_file_meta(head, final=complete, trust_group_length=False)
    except NotPart10 as e:
        raise NotIndexable(str(e)) from None
    if meta is None:
        return None
    syntax = meta.text(TRANSFER_SYNTAX)
    if not syntax:
        raise NotIndexable("no Transfer Syntax UID in the file meta information")
    start = meta.dataset_offset
    data: bytes = head[start:]
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        if not complete:
            return None
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
        except zlib.error as e:
            raise NotIndexable(f"cannot inflate the data set: {e}") from None
    implicit = syntax == IMPLICIT_VR_LE
    little = syntax != EXPLICIT_VR_BE
    walker = ElementWalker(implicit=implicit, little=little, stop_at=PIXEL_DATA_TAGS)
    walker.feed(data)
    if walker.stopped_at is not None:
        end = walker.stopped_at.offset
    elif walker.failed is not None:
        raise NotIndexable(f"the data set does not parse: {walker.failed}")
    elif complete or syntax == DEFLATED_EXPLICIT_VR_LE:
        end = len(data)
    else:
        return None
    if raw and little:
        record = _raw_record(
            aet,
            key,
            stamp,
            size,
            data[:end],
            implicit=implicit,
            sop_class=meta.text(MEDIA_STORAGE_SOP_CLASS),
            sop_instance=meta.text(MEDIA_STORAGE_SOP_INSTANCE),
            transfer_syntax=syntax,
        )
        if record is not None:
            return record
    try:
        # Every element decoded now: a broken one fails here, not in the index's writer.
        dataset, attributes = _decoded(data[:end], implicit, little)
    except DataSetError as e:
        raise NotIndexable(str(e)) from None
    except Exception as e:
        raise NotIndexable(f"the data set does not parse: {e}") from None
    return record_from_dataset(
        aet,
        key,
        stamp,
        size,
        dataset,
        sop_class=meta.text(MEDIA_STORAGE_SOP_CLASS),
        sop_instance=meta.text(MEDIA_STORAGE_SOP_INSTANCE),
        transfer_syntax=syntax,
        attributes_json=attributes,
    )


# -- decoding elements once ----------------------------------------------------------------
#
# Decoding an element (pydicom's conversion, then its JSON) costs some 14 us; a CT slice's
# head holds ~250 of them (most private), ~4 ms a slice, more than writing and fsyncing it.
# The slices of a series repeat nearly all of them byte for byte, so an element decoded
# once is kept by what decodes it the same way again: its tag, VR, bytes, byte order, the
# data set's Specific Character Set and, for a private element, its private creator (which
# pydicom records on the element).  The kept elements are shared between data sets: a
# record's attributes are read, never changed.

#: Elements kept at most (then all are forgotten: a new series repeats its own).
MEMO_ENTRIES = 8192
#: Values longer than this are decoded every time (rare, and not worth their memory).
MEMO_VALUE_BYTES = 1024
_UNDEFINED_LENGTH = 0xFFFFFFFF

_memo: dict[tuple[object, ...], tuple[DataElement, str | None]] = {}
_implicit_vr: dict[int, str | None] = {}  # a public tag's VR when implicit (None: not kept)


def _unambiguous_vr(tag: int) -> str | None:
    """A public tag's dictionary VR, when an implicit VR element of it always decodes the
    same way (a VR such as ``US or SS`` depends on other elements; SQ is never kept)."""
    if tag not in _implicit_vr:
        try:
            vr: str | None = dictionary_VR(tag)
        except KeyError:
            vr = None
        if vr is not None and (" or " in vr or vr in ("SQ", "UN")):
            vr = None
        _implicit_vr[tag] = vr
    return _implicit_vr[tag]


_Element = DataElement | RawDataElement
_Key = tuple[object, ...]
_KNOWN_VRS = frozenset(vr.value.encode("ascii") for vr in VR)


def _memo_key(
    tag: int, vr: str | None, value: bytes, little: bool, charset: object, creator: object
) -> _Key | None:
    """What decides how a raw element decodes, or None when it is decoded every time."""
    if len(value) > MEMO_VALUE_BYTES or tag < SPECIFIC_CHARACTER_SET:
        return None  # long; or before the character set (group 0000/0004: not in a data set)
    if vr is None:
        if tag >> 16 & 1 or _unambiguous_vr(tag) is None:
            return None  # its VR from the private dictionary, or from other elements
    elif vr == "UN":
        return None
    return (tag, vr, value, little, charset, creator)


class _Decoding:
    """One data set's elements on their way to decoded: those the memo had, in `elements`
    already, and those still raw (`missed`, with their memo keys)."""

    def __init__(self) -> None:
        self.elements: dict[BaseTag, _Element] = {}
        self.members: list[str | None] = []  # in tag order; None: not kept (or still raw)
        self.missed: list[tuple[int, BaseTag, _Key | None]] = []  # (index in members, tag, key)

    def add(self, element: _Element, key: _Key | None) -> None:
        kept = _memo.get(key) if key is not None else None
        if kept is None:
            self.missed.append((len(self.members), element.tag, key))
            self.elements[element.tag] = element
            self.members.append(None)
        elif kept[0].VR == "SQ":
            # A sequence decoded the same way before: what the index stores of it is known,
            # and the element stays as read (pydicom decodes it if asked): its items are data
            # sets of their own, not to be shared.
            self.elements[element.tag] = element
            self.members.append(kept[1])
        else:
            self.elements[kept[0].tag] = kept[0]
            self.members.append(kept[1])


def _split(data: bytes, implicit: bool, little: bool) -> tuple[_Decoding, str | list[str]] | None:
    """`data`'s top-level elements, from the memo or raw as pydicom's reader leaves them
    (which costs ~1 ms a CT head, more than decoding it with the memo), and the encoding
    of their text.  Those of a defined length are split off here, the others (sequences,
    empty values) read by pydicom's own element reader.  None for what only pydicom's
    reader can make sense of (an unknown VR, as when a writer switched to Implicit VR; an
    item at the top level; a value cut off; tags out of order)."""
    implicit_header = struct.Struct("<HHL" if little else ">HHL")
    explicit_header = struct.Struct("<HH2sH" if little else ">HH2sH")
    long_length = struct.Struct("<L" if little else ">L")
    decoding = _Decoding()
    encoding: str | list[str] = default_encoding
    charset: bytes | None = None
    creators: dict[int, bytes] = {}
    position, size, last = 0, len(data), -1
    while position < size:
        if size - position < 8:
            return None
        vr: str | None = None
        if implicit:
            group, number, length = implicit_header.unpack_from(data, position)
            start = position + 8
        else:
            group, number, code, length = explicit_header.unpack_from(data, position)
            if code not in _KNOWN_VRS:
                return None
            vr, start = code.decode("ascii"), position + 8
            if code in LONG_VRS:
                if size - position < 12:
                    return None
                (length,) = long_length.unpack_from(data, position + 8)
                start = position + 12
        tag = group << 16 | number
        if group == 0xFFFE or tag <= last:
            return None
        last = tag
        if length == _UNDEFINED_LENGTH or (length == 0 and vr in (None, "SQ")):
            source = BytesIO(data)
            source.seek(position)
            element = next(data_element_generator(source, implicit, little, encoding=encoding))
            decoding.add(element, None)
            position = source.tell()
            continue
        end = start + length
        if end > size:
            return None
        value = data[start:end]
        position = end
        # An empty value as pydicom's reader gives it (b"" or None, by VR); keyed as b"".
        raw_value = value if length else cast(bytes | None, empty_value_for_VR(vr, raw=True))
        if tag == SPECIFIC_CHARACTER_SET:
            # As pydicom's reader: the encoding of the sequences' items that follow.
            charset = value
            encoding = convert_encodings(
                convert_raw_data_element(
                    RawDataElement(BaseTag(tag), vr, length, value, start, implicit, little)
                ).value
            )
        creator: bytes | None = None
        if group & 1:
            if number < 0x0100:
                creators[tag] = value
            elif vr is not None:
                creator = creators.get((tag & 0xFFFF0000) | (number >> 8), b"")
        key = _memo_key(tag, vr, value, little, charset, creator)
        kept = _memo.get(key) if key is not None and vr != "SQ" else None
        if kept is None:
            element = RawDataElement(BaseTag(tag), vr, length, raw_value, start, implicit, little)
            decoding.add(element, key)
        else:  # the common case, inline
            decoding.elements[kept[0].tag] = kept[0]
            decoding.members.append(kept[1])
    return decoding, encoding


def _parsed(data: bytes, implicit: bool, little: bool) -> tuple[_Decoding, bool, str | list[str]]:
    """`_split`, or pydicom's reader where it cannot; and whether the elements are in
    Implicit VR (pydicom's reader follows a writer that switched)."""
    split = _split(data, implicit, little)
    if split is not None:
        return split[0], implicit, split[1]
    parsed = parse_dataset(data, implicit, little)
    implicit = bool(parsed.original_encoding[0])
    raw = {int(tag): parsed.get_item(tag) for tag in parsed.keys()}
    found = raw.get(SPECIFIC_CHARACTER_SET)
    charset = found.value if isinstance(found, RawDataElement) else None
    decoding = _Decoding()
    for tag in sorted(raw):
        element = raw[tag]
        key = None
        if isinstance(element, RawDataElement) and element.value is not None:
            if element.length != _UNDEFINED_LENGTH:
                creator: object = None
                if tag >> 16 & 1 and tag & 0xFFFF >= 0x0100:
                    owner = raw.get((tag & 0xFFFF0000) | ((tag >> 8) & 0xFF))
                    creator = owner.value if isinstance(owner, RawDataElement) else b""
                key = _memo_key(tag, element.VR, element.value, little, charset, creator)
        decoding.add(element, key)
    encoding = parsed.original_character_set
    return decoding, implicit, encoding if isinstance(encoding, str) else list(encoding)


def _decoded(data: bytes, implicit: bool, little: bool) -> tuple[Dataset, str]:
    """The data set `data` holds, every element decoded, and what the index stores of it
    (`instance_row`'s JSON object).  Raises what reading and decoding raise."""
    decoding, implicit, encoding = _parsed(data, implicit, little)
    dataset = Dataset(decoding.elements)
    dataset.set_original_encoding(implicit, little, encoding)
    members = decoding.members
    for index, tag, key in decoding.missed:
        element = dataset[tag]  # as pydicom decodes it (character set, VR corrections)
        members[index] = _member(element)
        if key is not None:
            if len(_memo) >= MEMO_ENTRIES:
                _memo.clear()
            _memo[key] = (element, members[index])
    return dataset, "{" + ",".join(m for m in members if m is not None) + "}"


def record_from_stream(
    aet: str, source: BinaryIO, size: int, *, raw: bool = False
) -> tuple[IndexRecord, int]:
    """Blocking: the record of the Part-10 object `source` reads (`size` bytes, from its
    start), read up to its Pixel Data a growing chunk at a time, with an empty ``key``
    and ``stamp`` for the caller to fill; and the bytes read.  `NotIndexable` as
    `record_from_head` raises it, or when the object ends before its data set does.
    `raw` as for `record_from_head`."""
    data = b""
    want = HEAD_BYTES
    while True:
        chunk = source.read(max(0, want - len(data)))
        data += chunk
        complete = len(data) >= size or not chunk
        record = record_from_head(aet, "", "", size, data, complete=complete, raw=raw)
        if record is not None:
            return record, len(data)
        if complete:
            raise NotIndexable("the object ends before its data set does")
        want = len(data) * HEAD_GROWTH


def decode_attributes(text: str) -> dict[str, object]:
    """The stored DICOM JSON object, parsed (tags as keys, attribute objects as values)."""
    decoded = json.loads(text)
    return decoded if isinstance(decoded, dict) else {}

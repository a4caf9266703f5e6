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
from typing import BinaryIO

import attrs
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

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


def _kept(dataset: Dataset) -> Iterator[str]:
    for element in dataset:
        tag = int(element.tag)
        if tag == SPECIFIC_CHARACTER_SET or tag in PIXEL_DATA_TAGS or tag >> 16 == 0x0002:
            continue  # values are kept decoded (JSON is UTF-8); pixel data never
        if element.VR in BINARY_VRS and element.value is not None and len(element.value) > MAX_BINARY_VALUE:
            continue
        try:
            encoded = element_json(element)
        except Exception:  # a value pydicom cannot make sense of: not searchable
            continue
        if encoded is not None:
            yield f'"{tag:08X}":{encoded}'


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
    return InstanceRow(levels[STUDY], levels[SERIES], levels[IMAGE], "{" + ",".join(_kept(ds)) + "}")


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
        dataset = parse_dataset(data[:end], implicit, little)
        # Decode every element now: a broken one fails here, not in the index's writer.
        for _ in dataset:
            pass
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
    )


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

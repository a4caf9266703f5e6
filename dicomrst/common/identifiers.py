# -*- test-case-name: tests.unit.test_move -*-
"""Q/R identifiers (PS3.4 C.4): the data set a C-FIND, C-GET or C-MOVE request carries."""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomrst.common.transcode import DataSetError, check_length
from dicomrst.common.uids import IMPLICIT_VR_LE


def retrieve_identifier(study: str, series: str | None = None, instance: str | None = None) -> Dataset:
    """The identifier of a study, series or instance, at that level, with the unique keys
    of the levels above it (a C-GET or C-MOVE of it, or the C-FIND asking if it exists)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE" if instance else "SERIES" if series else "STUDY"
    identifier.StudyInstanceUID = study
    if series or instance:
        identifier.SeriesInstanceUID = series or ""
    if instance:
        identifier.SOPInstanceUID = instance
    return identifier


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    """`ds` as the bytes of a DIMSE data set in `transfer_syntax` (Explicit or Implicit VR LE)."""
    # pydicom's writer cost ~0.2 ms for a QIDO-RS identifier (every request has one);
    # what it holds (empty return keys, ASCII match values) is written here, the same bytes.
    implicit = transfer_syntax == IMPLICIT_VR_LE
    try:
        return _write(ds, implicit)
    except _Unwritten:
        pass
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    write_dataset(fp, ds)
    return fp.getvalue()


class _Unwritten(Exception):
    """`_write` leaves this data set to pydicom's writer."""


_TEXT = frozenset("AE AS CS DA DT TM LO SH PN LT ST UC UT UR UI".split())
_LONG_LENGTH = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_CHARSETS = (None, "", "ISO_IR 192", "ISO_IR 100")  # ASCII is itself in each
_TAG_LENGTH = struct.Struct("<HHL")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHL")


_LISTS = (MultiValue, list)
# The header of an empty element (a return key) by tag, VR and syntax: a search's
# identifier is mostly those, the same ones request after request.
_EMPTY: dict[tuple[int, str, bool], bytes] = {}
_EMPTY_KEPT = 1024


def _write(ds: Dataset, implicit: bool) -> bytes:
    """What pydicom's `write_dataset` writes for `ds`, when every element is empty, a
    string of ASCII characters (or several) in a text VR, or a sequence of such items;
    `_Unwritten` otherwise."""
    charset = ds.get_item(0x00080005)
    if charset is not None and (
        not isinstance(charset, DataElement) or charset.VR != "CS" or charset.value not in _CHARSETS
    ):
        raise _Unwritten
    out = []
    # In tag order, compared as plain ints: pydicom's BaseTag orders in Python, and
    # get_item per tag cost more than the writing.
    # (The tags are unique: the pairs never compare their elements.)
    for tag, element in sorted(zip(map(int, ds.keys()), ds.values(), strict=True)):
        if not isinstance(element, DataElement) or tag & 0xFFFF == 0 or element.is_undefined_length:
            raise _Unwritten
        vr = element.VR
        value = element.value
        if vr == "SQ":
            if not isinstance(value, Sequence):
                raise _Unwritten
            items = []
            for item in value:
                if getattr(item, "is_undefined_length_sequence_item", False):
                    raise _Unwritten
                data = _write(item, implicit)
                items.append(_TAG_LENGTH.pack(0xFFFE, 0xE000, len(data)) + data)
            raw = b"".join(items)
        elif value is None or value == "" or (isinstance(value, _LISTS) and not value):
            raw = b""  # most of a query's elements: the return keys
        elif vr in _TEXT:
            values = value if isinstance(value, _LISTS) else (value,)
            if vr != "PN" and not all(isinstance(v, str) for v in values):
                raise _Unwritten  # numbers, bytes, dates: pydicom formats those
            text = "\\".join(str(v) for v in values)
            if not text.isascii():
                raise _Unwritten
            raw = text.encode("ascii")
            if len(raw) % 2:
                raw += b"\0" if vr == "UI" else b" "
        else:
            raise _Unwritten
        length = len(raw)
        if not length:
            header = _EMPTY.get((tag, vr, implicit))
            if header is not None:
                out.append(header)
                continue
        if implicit:
            out.append(_TAG_LENGTH.pack(tag >> 16, tag & 0xFFFF, length))
        elif vr in _LONG_LENGTH:
            out.append(_EXPLICIT_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), 0, length))
        elif length <= 0xFFFF and len(vr) == 2:
            out.append(_EXPLICIT_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length))
        else:
            raise _Unwritten
        if not length and len(_EMPTY) < _EMPTY_KEPT:
            _EMPTY[(tag, vr, implicit)] = out[-1]
        out.append(raw)
    return b"".join(out)


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """A received identifier (a C-FIND match) as a pydicom Dataset, every element
    converted; `DataSetError` (and nothing else) when the bytes are not one.

    pydicom reads lazily: an element it cannot convert would raise wherever it is first
    looked at (in the QIDO-RS response, long after the C-FIND-RSP).  So each one is
    converted here, where a failure is the PACS's malformed response.
    """
    implicit = transfer_syntax == IMPLICIT_VR_LE
    try:
        ds = read_dataset(BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
        _convert(ds)
    except Exception as e:  # pydicom raises whatever its reading hits
        raise DataSetError(f"undecodable identifier: {e}") from None
    return ds


class RawIdentifier:
    """A C-FIND match as it arrived: its data set's bytes, decoded only if asked.

    A QIDO-RS result is written as DICOM JSON straight from the bytes
    (`dicomrst.common.rawjson.identifier_members`), which is several times cheaper than
    decoding it with pydicom first; `dataset` is for whatever needs the values.
    """

    __slots__ = ("_dataset", "data", "transfer_syntax")

    def __init__(self, data: bytes, transfer_syntax: str) -> None:
        self.data = data
        self.transfer_syntax = transfer_syntax
        self._dataset: Dataset | None = None

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == IMPLICIT_VR_LE

    def dataset(self) -> Dataset:
        """The match decoded (`decode_identifier`, once): `DataSetError` when malformed."""
        if self._dataset is None:
            self._dataset = decode_identifier(self.data, self.transfer_syntax)
        return self._dataset


Found = Dataset | RawIdentifier
"""A match `IBackend.find` hands over: decoded (searches in the index) or as received
(C-FIND on a PACS)."""


def found_dataset(found: Found) -> Dataset:
    """A match's data set, decoded if it came as received."""
    return found if isinstance(found, Dataset) else found.dataset()


def _convert(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            check_length(raw)
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _convert(item)
        else:
            str(element.value)  # PN, DA, DS, ... objects are built when first shown


def describe_target(study: str, series: str | None = None, instance: str | None = None) -> str:
    """``study S[ series SE][ instance I]``, for messages and log lines."""
    what = f"study {study}"
    if series:
        what += f" series {series}"
    if instance:
        what += f" instance {instance}"
    return what

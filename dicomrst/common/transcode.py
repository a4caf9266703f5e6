# -*- test-case-name: tests.unit.test_wado_parts -*-
"""Data sets in another transfer syntax: what goes out over HTTP, and what a PACS takes.

* `to_explicit_le` turns a data set in Implicit VR LE, Explicit VR BE or Deflated Explicit
  VR LE into Explicit VR LE (PS3.18 §8.7.3: the first two never go out over HTTP), and
  a compressed one via `decompress_to_explicit_le`. The re-encoding keeps every value's
  bytes: pydicom parses the elements, we give each raw element its explicit VR (byte-
  swapping the binary values of big-endian data) and pydicom writes them back unconverted.
  Private elements of unknown VR become UN (PS3.5 §6.2.2); a value longer than 65534
  bytes in a VR with a 16-bit length field becomes UN (PS3.18 §8.7.3.4 note 3).
* `decompress_to_explicit_le` uses pydicom's pixel decoders: its own (RLE, with numpy),
  Pillow's and imagecodecs' (`dicomrst.common.codecs`), all installed by default; for a
  syntax none of them decodes (JPEG XL, video, a broken install) it raises
  `CannotTranscode`, so the caller can send the stored syntax, answer 406 or fail the part.
* `convert_dataset` turns a data set into Explicit or Implicit VR LE, for a PACS that
  accepted an instance only in one of those (STOW-RS over C-STORE).

All of these are CPU work on whole data sets: callers run them in a thread.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from functools import lru_cache
from io import BytesIO

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32

from dicomrst.common.codecs import install as install_decoders
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.errors import NotAcceptable, UpstreamError


class CannotTranscode(NotAcceptable):
    """The data set cannot be produced in the wanted transfer syntax here (406 when it
    is the only part; otherwise the caller fails that part)."""


class DataSetError(UpstreamError):
    """The data set from the PACS cannot be parsed in its transfer syntax (502)."""


@lru_cache(maxsize=64)
def can_decompress(transfer_syntax: str) -> bool:
    """pydicom has a working pixel data decoder for `transfer_syntax` in this process."""
    install_decoders()
    try:
        # get_decoder is documented as pydicom.pixels.get_decoder, which re-exports it
        # implicitly; import it from where it is defined.
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(transfer_syntax).is_available)
    except Exception:  # no decoder for the UID, no numpy, a broken plugin
        return False


def to_explicit_le(dataset_bytes: bytes, transfer_syntax: str) -> bytes:
    """`dataset_bytes` (a data set without meta, in `transfer_syntax`) in Explicit VR LE.

    Explicit VR LE is returned as is; Deflated Explicit VR LE is inflated; Implicit VR LE
    and Explicit VR BE are re-encoded; compressed syntaxes are decompressed
    (`decompress_to_explicit_le`). Raises `CannotTranscode` for a syntax it cannot
    handle, `DataSetError` for bytes that do not parse.
    """
    if transfer_syntax == EXPLICIT_VR_LE:
        return dataset_bytes
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        return _inflate(dataset_bytes)
    if transfer_syntax == IMPLICIT_VR_LE:
        return _reencode(dataset_bytes, implicit=True, little=True)
    if transfer_syntax == EXPLICIT_VR_BE:
        return _reencode(dataset_bytes, implicit=False, little=False)
    return decompress_to_explicit_le(dataset_bytes, transfer_syntax)


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    except zlib.error as e:
        raise DataSetError(f"cannot inflate a deflated data set: {e}") from None


def parse_dataset(data: bytes, implicit: bool, little: bool) -> Dataset:
    """A data set (no meta) parsed lazily by pydicom; `DataSetError` when it does not parse."""
    try:
        return read_dataset(BytesIO(data), implicit, little)
    except Exception as e:  # pydicom raises a variety of errors for truncated data
        raise DataSetError(f"cannot parse the data set: {e}") from None


def _write(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    write_dataset(out, ds)
    return out.getvalue()


def _reencode(data: bytes, *, implicit: bool, little: bool) -> bytes:
    ds = parse_dataset(data, implicit, little)
    try:
        _make_explicit_le(ds, little)
        return _write(ds)
    except (DataSetError, CannotTranscode):
        raise
    except Exception as e:
        raise DataSetError(f"cannot re-encode the data set: {e}") from None


# Bytes per value unit of the binary VRs whose byte order changes.
_SWAP = {
    "AT": "H", "OW": "H", "SS": "H", "US": "H",
    "FL": "I", "OF": "I", "OL": "I", "SL": "I", "UL": "I",
    "FD": "Q", "OD": "Q", "OV": "Q", "SV": "Q", "UV": "Q",
}  # fmt: skip


def _swapped(value: bytes, vr: str) -> bytes:
    unit = _SWAP.get(vr)
    if unit is None or not value:
        return value
    words = array(unit)
    if len(value) % words.itemsize:
        raise DataSetError(f"a {vr} value of {len(value)} bytes is not a whole number of values")
    words.frombytes(value)
    words.byteswap()
    return words.tobytes()


def _implicit_vr(tag: BaseTag, ds: Dataset) -> str:
    """The VR of an element read in Implicit VR (pydicom's lookup, without its warning)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        pass
    if tag.is_private:
        if tag.is_private_creator:
            return "LO"
        creator = ds.get(tag.group << 16 | (tag.element >> 8)) if tag.element & 0xFF00 else None
        if creator is not None and creator.value:
            try:
                return str(private_dictionary_VR(tag, creator.value))
            except KeyError:
                pass
        return "UN"
    return "UL" if tag.element == 0 else "UN"


def resolve_ambiguous(ds: Dataset, tag: BaseTag) -> DataElement:
    """The element at `tag`, converted, with its ambiguous VR ('OB or OW', 'US or SS', …)
    resolved by pydicom from the data set (Bits Allocated, Pixel Representation, LUT
    Descriptor); when that is impossible (LUT Data without a LUT Descriptor), OW if the
    VR allows it, else US. Only implicit VR data sets have ambiguous VRs, so values are
    little endian."""
    raw = ds.get_item(tag)
    try:
        element = ds[tag]
    except Exception:
        element = ds.get_item(tag)
    if isinstance(element, DataElement) and element.VR not in AMBIGUOUS_VR:
        return element
    try:
        kind = str(dictionary_VR(tag))
    except KeyError:
        kind = "OB or OW"
    value = raw.value if isinstance(raw, RawDataElement) else element.value
    if isinstance(value, bytes | bytearray):
        if "OW" in kind:
            element = DataElement(tag, "OW", bytes(value))
        else:
            element = DataElement(
                tag, "US", list(struct.unpack(f"<{len(value) // 2}H", value[: len(value) & ~1]))
            )
    else:
        element = DataElement(tag, "US", value)
    ds[tag] = element
    return element


def check_length(element: RawDataElement) -> None:
    """pydicom reads a value cut short by the end of the data without complaint."""
    value = element.value
    if element.length != 0xFFFFFFFF and value is not None and len(value) != element.length:
        raise DataSetError(f"the data set ends inside {element.tag} ({len(value)} of {element.length} bytes)")


def _make_explicit_le(ds: Dataset, little: bool) -> None:
    """Give every element of `ds` (recursively) an explicit VR and little-endian bytes,
    and mark `ds` as read in Explicit VR LE so pydicom writes the raw values as they are."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag)
        if isinstance(element, RawDataElement):
            check_length(element)
            vr = element.VR if element.VR is not None else _implicit_vr(tag, ds)
            if vr in AMBIGUOUS_VR:
                element = resolve_ambiguous(ds, tag)
            elif vr == "SQ":
                element = ds[tag]
        if isinstance(element, DataElement):
            if element.VR == "SQ":
                for item in element.value or ():
                    _make_explicit_le(item, little)
            elif not little and isinstance(element.value, bytes) and element.VR in _SWAP:
                element.value = _swapped(element.value, str(element.VR))
            continue
        value = element.value if little else _swapped(element.value, vr)
        length = element.length
        if length != 0xFFFFFFFF:
            length = len(value)
            if length > 0xFFFE and vr not in EXPLICIT_VR_LENGTH_32:
                vr = "UN"
        ds[tag] = element._replace(
            VR=vr, value=value, length=length, is_implicit_VR=False, is_little_endian=True
        )
    ds.set_original_encoding(False, True, ds.original_character_set)


def decompress_to_explicit_le(dataset_bytes: bytes, transfer_syntax: str) -> bytes:
    """A data set in an encapsulated (compressed) syntax, decompressed to Explicit VR LE.

    Colour data is converted to RGB as pydicom does; the SOP Instance UID is kept. Raises
    `CannotTranscode` when no decoder is available for the syntax or decoding fails.
    """
    if not can_decompress(transfer_syntax):
        raise CannotTranscode(
            f"cannot decompress transfer syntax {transfer_syntax} here (no pixel data decoder for it)"
        )
    ds = parse_dataset(dataset_bytes, implicit=False, little=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)  # as pydicom would convert it
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as e:  # decoder errors come as RuntimeError, ValueError, NotImplementedError…
        raise CannotTranscode(f"cannot decompress the pixel data from {transfer_syntax}: {e}") from None
    pixel_data = ds.get_item(0x7FE00010)
    if pixel_data is not None and len(pixel_data.value or b"") > 0xFFFFFFFE:
        raise CannotTranscode("the decompressed pixel data is too large for Explicit VR LE (PS3.18 8.7.8.1)")
    del ds.file_meta
    try:
        return _write(ds)
    except Exception as e:
        raise DataSetError(f"cannot encode the decompressed data set: {e}") from None


def convert_dataset(data: bytes, transfer_syntax: str, target: str) -> bytes:
    """`data` (a data set without meta, in `transfer_syntax`) in `target`, which is
    Explicit or Implicit VR LE.  Raises `CannotTranscode` when the pixel data cannot be
    decompressed here, `DataSetError` when the bytes do not parse."""
    if transfer_syntax == target:
        return data
    explicit = to_explicit_le(data, transfer_syntax)
    if target == EXPLICIT_VR_LE:
        return explicit
    if target != IMPLICIT_VR_LE:
        raise CannotTranscode(f"cannot convert {transfer_syntax} to {target}")
    ds = parse_dataset(explicit, implicit=False, little=True)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = True
    try:
        write_dataset(out, ds)
    except Exception as e:
        raise DataSetError(f"cannot encode the data set in Implicit VR LE: {e}") from None
    return out.getvalue()

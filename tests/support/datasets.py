"""Data sets for tests in both suites: building them, encoding them, comparing them.

`assert_same_dataset` compares two pydicom data sets element by element (VR and value,
sequences recursively, File Meta and trailing padding aside); `part10` writes one as a Part-10
file; `encode` and `instance` (small CT-like instances with chosen Study/Series UIDs) give raw
data-set bytes as they come off an association; `bulk_paths_dataset` has bulk data at several
depths, for metadata encoders. The generated instances the pynetdicom PACS
serves are in `tests.support.pacs.datasets`; the WADO, metadata and STOW fixtures in
`tests.support.wado`, `tests.support.metadata` and `tests.support.stow`.
"""

from __future__ import annotations

import io
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from twisted.trial.unittest import SynchronousTestCase

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


#: Data Set Trailing Padding, which any application may drop (PS3.5 7.2); CT_small has it
#: and Orthanc's C-STORE (DCMTK) leaves it out.
TRAILING_PADDING = 0xFFFCFFFC


def assert_same_dataset(case: SynchronousTestCase, got: Dataset, want: Dataset, where: str = "") -> None:
    """Every element outside group 0002 (but trailing padding), its VR and value, recursively."""

    def compared(ds: Dataset) -> list[Any]:
        return sorted(tag for tag in ds.keys() if tag.group != 0x0002 and tag != TRAILING_PADDING)

    got_tags, want_tags = compared(got), compared(want)
    case.assertEqual(got_tags, want_tags, f"{where}: different elements")
    for tag in want_tags:
        a, b = got[tag], want[tag]
        case.assertEqual(a.VR, b.VR, f"{where} {tag}: VR")
        if a.VR == "SQ":
            case.assertEqual(len(a.value), len(b.value), f"{where} {tag}: items")
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                assert_same_dataset(case, x, y, f"{where} {tag}[{i}]")
        else:
            case.assertEqual(a.value, b.value, f"{where} {tag} {a.keyword}: value")


def part10(ds: Dataset) -> bytes:
    """`ds` (with its File Meta) as a Part-10 file: preamble, DICM, File Meta, data set."""
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    """`ds`'s data set alone (no File Meta), in Explicit or Implicit VR Little Endian."""
    ds.file_meta = FileMetaDataset()
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


def instance(study: str | None, series: str | None, pixels: int = 4096) -> Dataset:
    """A small CT Image Storage instance with those Study/Series UIDs (None: left out)."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20240101"
    ds.PatientName = "Peek^Test"
    ds.PatientID = "P1"
    if study is not None:
        ds.StudyInstanceUID = study
    if series is not None:
        ds.SeriesInstanceUID = series
    ds.InstanceNumber = 1
    ds.Rows = 1
    ds.Columns = min(pixels // 2, 0xFFFF)
    ds.BitsAllocated = 16
    ds.PixelData = bytes(range(256)) * (pixels // 256)
    return ds


def bulk_paths_dataset() -> Dataset:
    """Bulk data at several depths: a small inline OB, an OB over the thresholds in an item,
    an icon's pixel data, a 1200-byte FL, an empty sequence, a UL of exactly 1024 bytes, and a
    File Meta element left in the data set (dropped when served)."""
    ds = Dataset()
    ds.PatientName = "Doe^J"
    ds.add_new(0x00091010, "OB", b"\x01\x02")  # small binary stays inline
    first = Dataset()
    first.add_new(0x00400009, "OB", b"\xab" * 3000)  # VR as in the example path
    first.RequestedProcedureID = "RP1"
    second = Dataset()
    icon = Dataset()
    icon.Rows = 1
    icon.BitsAllocated = 16
    icon.add_new(0x7FE00010, "OW", b"\x00\x01")  # pixel data: bulk whatever its size
    second.IconImageSequence = DicomSequence([icon])
    second.add_new(0x00700022, "FL", [7.0] * 300)  # Graphic Data, 1200 bytes
    ds.RequestAttributesSequence = DicomSequence([first, second])
    ds.add_new(0x00283010, "SQ", DicomSequence([]))
    ds.add_new(0x00603020, "UL", [1] * 256)  # exactly 1024 bytes: inline
    ds.add_new(0x00020010, "UI", EXPLICIT_VR_LE)  # meta left in the data set: dropped
    return ds

"""Stored objects for the `dicomrst.imaging` and frames tests (unit and integration): pydicom's
test files and synthetic images.

`testdata` is one of pydicom's test files as bytes, `read_dataset` reads such bytes back with
pydicom (its warnings silenced); `image` is the header of a synthetic image (the size, frames,
bits and samples asked for, no Pixel Data), and `part10` writes a data set as a Part-10 file
in the transfer syntax asked for, its elements as they are (unlike `tests.support.datasets.part10`,
which keeps the data set's own File Meta).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, generate_uid


def testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as f:
        return f.read()


def read_dataset(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data))


def part10(ds: Dataset, syntax: str) -> bytes:
    """`ds` written as a Part-10 file in `syntax`, its elements as they are."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian, implicit_vr=False)
    return out.getvalue()


def image(rows: int, columns: int, frames: int, bits: int = 8, samples: int = 1) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        bits,
        max(bits, 1),
        max(bits, 1) - 1,
        0,
    )
    return ds

"""STOW-RS request bodies and instances, for the STOW tests of both suites.

`multipart_body` writes a ``multipart/related`` body as RFC 2046 does (default boundary
`BOUNDARY`); `part10_bytes` is a small but real Part-10 object written by pydicom (choose its
UIDs, SOP class, transfer syntax and size) and `expected_info` what pydicom reads from such
bytes (the `Part10Info` a STOW part must give). `TEST_FILES` are pydicom's test files in the
transfer syntaxes STOW-RS clients send, `fresh_test_file` one of them with new UIDs, and
`uploaded` a data set as the web layer hands it to a backend (an `UploadedInstance`, spooled to
a file or in memory). `OrthancStored` is a TestCase mixin reading back what Orthanc stored.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pydicom
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dicomrst.backends.values import UploadedInstance
from dicomrst.stow.part10 import Part10Info
from tests.support.datasets import CT_IMAGE_STORAGE, part10

if TYPE_CHECKING:
    from tests.support import peers

BOUNDARY = b"dicomrst-test.boundary=1"


def multipart_body(
    parts: Sequence[tuple[Sequence[tuple[str, str]], bytes]],
    boundary: bytes = BOUNDARY,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
) -> bytes:
    """A multipart body as RFC 2046 writes it; `padding` is transport padding after each delimiter."""
    out = bytearray(preamble + b"\r\n" if preamble else b"")
    for headers, content in parts:
        out += b"--" + boundary + padding + b"\r\n"
        for name, value in headers:
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += b"\r\n" + content + b"\r\n"
    out += b"--" + boundary + b"--" + padding
    if epilogue:
        out += b"\r\n" + epilogue
    return bytes(out)


def part10_bytes(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    sop_class: str = CT_IMAGE_STORAGE,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_bytes: int = 512,
    extra: Dataset | None = None,
) -> bytes:
    """A small but real Part-10 object written by pydicom."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.PatientName = "STOW^TEST"
    ds.PatientID = "STOW-1"
    if study != "":
        ds.StudyInstanceUID = study or generate_uid()
    if series != "":
        ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "OT"
    if extra is not None:
        ds.update(extra)
    ds.Rows = max(1, pixel_bytes // 512)
    ds.Columns = 256
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * 2 * ds.Rows
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def expected_info(data: bytes) -> Part10Info:
    """What pydicom says about the same bytes."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    offset = fp.tell()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return Part10Info(
        sop_class_uid=str(meta.MediaStorageSOPClassUID),
        sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
        transfer_syntax=str(meta.TransferSyntaxUID),
        dataset_offset=offset,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID) if "SeriesInstanceUID" in ds else None,
    )


#: pydicom's test files in the transfer syntaxes STOW-RS clients send.
TEST_FILES = {
    "explicit": "CT_small.dcm",
    "implicit": "MR_small_implicit.dcm",
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg2000": "JPEG2000.dcm",
    "rle": "MR_small_RLE.dcm",
}


def fresh_test_file(name: str, study: str | None = None) -> Dataset:
    """A pydicom test file with new Study/Series/SOP Instance UIDs (Orthanc keeps what it got)."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    ds = dcmread(path)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def uploaded(case: SynchronousTestCase, ds: Dataset, *, in_memory: bool = False) -> UploadedInstance:
    """`ds` as the web layer hands it over: a Part-10 object spooled to a file (or in memory)."""
    data = part10(ds)
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise AssertionError("not a Part-10 object starting with (0002,0000)")
    (group_length,) = struct.unpack("<I", data[140:144])
    offset = 144 + group_length
    meta = ds.file_meta
    path = None
    if not in_memory:
        path = os.path.join(case.mktemp())
        with open(path, "wb") as f:
            f.write(data)
    return UploadedInstance(
        sop_class_uid=str(meta.MediaStorageSOPClassUID),
        sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        transfer_syntax=str(meta.TransferSyntaxUID),
        dataset_offset=offset,
        size=len(data),
        path=path,
        data=data if in_memory else None,
    )


if TYPE_CHECKING:
    _OrthancBase = TestCase
else:
    _OrthancBase = object


class OrthancStored(_OrthancBase):
    """A TestCase mixin: `orthanc_dataset` reads back what Orthanc stored for a SOP Instance UID
    (found through its REST ``/tools/lookup``, fetched as the stored file)."""

    async def orthanc_dataset(self, orthanc: peers.Orthanc, sop_instance_uid: str) -> Dataset:
        found = await self._lookup(orthanc, sop_instance_uid)
        response = await orthanc.http.get(f"{orthanc.url}/instances/{found}/file", timeout=30)
        body = await response.content()
        self.assertEqual(response.code, 200)
        return dcmread(io.BytesIO(body))

    async def _lookup(self, orthanc: peers.Orthanc, sop_instance_uid: str) -> str:
        response = await orthanc.http.post(
            f"{orthanc.url}/tools/lookup", data=sop_instance_uid.encode("ascii"), timeout=30
        )
        hits = json.loads(await response.text())
        ids = [hit["ID"] for hit in hits if hit["Type"] == "Instance"]
        self.assertEqual(len(ids), 1, f"Orthanc has no instance {sop_instance_uid}")
        return str(ids[0])

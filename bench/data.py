"""Deterministic test data: studies built from pydicom's test files, and a large CT."""

from __future__ import annotations

import datetime
import io
import random
import struct

import attrs
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def small_studies(n_studies: int, n_patients: int, seed: int = 7) -> list[bytes]:
    """One CT_small instance per study, spread over `n_patients` patient IDs."""
    rng = random.Random(seed)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = []
    for i in range(n_studies):
        ds = base.copy()
        ds.PatientID = f"BENCH{i % n_patients:03d}"
        ds.PatientName = f"Bench^Patient{i % n_patients:03d}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), "study", str(i)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), "series", str(i)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sop", str(i)])
        ds.StudyDate = f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def ct_study(n_slices: int = 200, size: int = 512, seed: int = 11) -> tuple[str, list[bytes]]:
    """A synthetic CT study, `n_slices` of `size`x`size` 16-bit, Explicit VR LE Part-10 files.

    200 slices of 512x512 is the ~105 MB study the issues' targets are stated for.
    """
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    rng = np.random.default_rng(seed)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study = generate_uid(entropy_srcs=[str(seed), "ct-study", str(n_slices)])
    series = generate_uid(entropy_srcs=[str(seed), "ct-series", str(n_slices)])
    # One noise image, shifted per slice: realistic size, cheap to make.
    noise = rng.integers(0, 4095, size=(size, size), dtype=np.uint16)
    out = []
    for i in range(n_slices):
        ds = base.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientID = "BENCHCT"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "ct-sop", str(n_slices), str(i)])
        ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = np.roll(noise, i, axis=0).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return study, out


#: Modalities of the archive's studies, with their weights; a PT study also has a CT series.
MODALITIES = (("CT", 30), ("MR", 25), ("CR", 15), ("US", 10), ("DX", 10), ("PT", 5), ("NM", 5))
#: Every tenth patient has a name outside ASCII (UTF-8, Specific Character Set ISO_IR 192).
NON_ASCII_NAMES = ("Müller^Jürgen", "Gaßner^Zoë", "Ñúñez^José", "Østergård^Åse", "Dvořák^Antonín")


@attrs.frozen
class ArchiveInstance:
    study: str
    series: str
    sop: str
    head: bytes  # the Part-10 file up to its Pixel Data element

    def part10(self, size: int = 8, pixels: bytes | None = None) -> bytes:
        """The whole file as a `size` x `size` 16-bit image (`pixels`, or bytes of its own),
        Pixel Data (OW) last. The head is written for 8x8; its Rows and Columns are patched."""
        head = self.head
        if size != 8:
            for tag in (b"\x28\x00\x10\x00", b"\x28\x00\x11\x00"):  # Rows, Columns
                head = head.replace(
                    tag + b"US\x02\x00\x08\x00", tag + b"US\x02\x00" + struct.pack("<H", size), 1
                )
        data = (
            pixels
            if pixels is not None
            else (bytes(range(256)) * (size * size // 128 + 1))[: size * size * 2]
        )
        return head + _PIXEL_DATA_OW + struct.pack("<I", len(data)) + data

    @property
    def key(self) -> str:
        return f"{self.study}/{self.series}/{self.sop}.dcm"


_PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"


def archive(
    n_studies: int = 1000, n_patients: int = 200, per_series: int = 5, seed: int = 17
) -> list[ArchiveInstance]:
    """A deterministic archive: `n_studies` studies of two series of `per_series` instances
    (10,000 instances by default), spread over `n_patients` patients, several modalities,
    study dates over 2023 and 2024, some non-ASCII patient names. Each instance is its
    Explicit VR Little Endian head; `ArchiveInstance.part10` adds the pixel data (8x8 for
    searches, 512x512 for the S3 scan)."""
    from pydicom.uid import ExplicitVRLittleEndian

    rng = random.Random(seed)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del base.PixelData
    if "DataSetTrailingPadding" in base:
        del base.DataSetTrailingPadding
    base.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 12, 11, 0
    names, weights = zip(*MODALITIES, strict=True)
    out = []
    for i in range(n_studies):
        p = i % n_patients
        modality = rng.choices(names, weights)[0]
        day = rng.randrange(731)  # 2023-01-01 .. 2024-12-31
        date = (datetime.date(2023, 1, 1) + datetime.timedelta(days=day)).strftime("%Y%m%d")
        study = generate_uid(entropy_srcs=[str(seed), "study", str(i)])
        for s, series_modality in enumerate((modality, "CT" if modality == "PT" else modality)):
            series = generate_uid(entropy_srcs=[str(seed), "series", str(i), str(s)])
            for k in range(per_series):
                ds = base  # changed in place and written out: a copy per instance costs more
                if p % 10 == 3:
                    ds.SpecificCharacterSet = "ISO_IR 192"
                    ds.PatientName = f"{NON_ASCII_NAMES[p // 10 % len(NON_ASCII_NAMES)]}{p:03d}"
                else:
                    ds.SpecificCharacterSet = "ISO_IR 100"
                    ds.PatientName = f"Bench^Patient{p:03d}"
                ds.PatientID = f"BENCH{p:03d}"
                ds.StudyInstanceUID = study
                ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
                ds.StudyTime = f"{8 + i % 10:02d}{i % 60:02d}00"
                ds.AccessionNumber = f"ACC{i:05d}"
                ds.StudyID = str(i)
                ds.StudyDescription = f"Bench study {i}"
                ds.Modality = series_modality
                ds.SeriesInstanceUID = series
                ds.SeriesNumber = s + 1
                ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sop", str(i), str(s), str(k)])
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.InstanceNumber = k + 1
                ds.Rows = ds.Columns = 8
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                out.append(ArchiveInstance(study, series, ds.SOPInstanceUID, buf.getvalue()))
    return out

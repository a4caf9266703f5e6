"""Deterministic test data: studies built from pydicom's test files, and a large CT."""

from __future__ import annotations

import io
import random

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

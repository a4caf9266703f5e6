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

"""The instances the get-* and move-* profiles serve, built the same in the test process.

`get_instance(series, index, rows, columns)` makes instance `index` of series `series` of the
one study `get_study_uid()`, byte for byte the same on every call and in every process, so a
test rebuilds what the PACS sent to compare it with what came through the gateway. Only
pydicom (and numpy, for the pixels) is needed: this module is imported by the test process too.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

GET_UID_ROOT = "1.2.826.0.1.3680043.8.498.78"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: A storage SOP class nobody proposes: its C-STORE sub-operation cannot be sent (fails).
UNPROPOSED_SOP_CLASS = "1.2.826.0.1.3680043.8.498.78.99"


def get_study_uid() -> str:
    return f"{GET_UID_ROOT}.1"


def get_series_uid(series: int) -> str:
    return f"{GET_UID_ROOT}.2.{series + 1}"


def get_sop_uid(series: int, index: int) -> str:
    return f"{GET_UID_ROOT}.3.{series + 1}.{index + 1}"


def get_instance(series: int, index: int, rows: int = 16, columns: int = 16) -> Dataset:
    """Instance `index` of series `series` (both from 0), the same on every call."""
    import numpy
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = get_sop_uid(series, index)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = get_sop_uid(series, index)
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "GETACC1"
    ds.Modality = "CT"
    ds.PatientName = "Get^Peer"
    ds.PatientID = "GETPID"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.SliceThickness = "1.25"
    ds.StudyInstanceUID = get_study_uid()
    ds.SeriesInstanceUID = get_series_uid(series)
    ds.StudyID = "1"
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = numpy.random.default_rng([series, index, rows, columns])
    ds.PixelData = rng.integers(0, 1 << 16, size=rows * columns, dtype=numpy.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


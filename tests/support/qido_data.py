"""The data set the QIDO-RS integration tests load into Orthanc, and what it holds.

pydicom's own test files (several modalities and transfer syntaxes, and its character-set
files) plus one generated study of 3 series × 4 instances, every one given fresh,
deterministic UIDs (`pydicom.uid.generate_uid` with fixed entropy sources) and a patient,
study date and time chosen here, so that each query parameter the tests use has matches
and non-matches. `build()` returns the files as Part-10 bytes together with the facts
about each instance (`Instance`) the tests compute their expectations from.

The dates are picked for the date and combined date-time range tests: with
``StudyDate=20200101-20210704&StudyTime=100000-130000`` the combined (PS3.4 C.2.2.2.5)
match is 2020-01-01 10:00 … 2021-07-04 13:00 as one continuous range, which takes the
study at 2020-06-15 23:59:59 (outside the time window when date and time are matched
separately) and leaves out those at 2020-01-01 08:30 and 2021-07-04 14:00.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENTROPY = "dicomrst-qido-orthanc-tests-v1"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: The generated study's ScheduledProcedureStepIDs, per series number (series 2 has none).
SPS_IDS: dict[int, tuple[str, ...]] = {1: ("SPS-0001",), 3: ("SPS-3A", "SPS-3B")}


def uid(*parts: object) -> str:
    """A UID that is the same on every run for the same ``parts``."""
    return generate_uid(entropy_srcs=[ENTROPY, *(str(p) for p in parts)])


@dataclass(frozen=True)
class Instance:
    """One uploaded instance and the attributes the tests match on."""

    label: str
    study: str
    series: str
    sop: str
    patient_id: str
    patient_name: str  # as pydicom decodes it: all component groups, '=' separated
    study_date: str
    study_time: str
    modality: str
    series_number: int | None
    instance_number: int | None
    sps_ids: tuple[str, ...] = ()
    study_description: str | None = None
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Source:
    """A pydicom file and what to set on it; ``study``/``series`` labels group files."""

    label: str
    path: str
    patient_id: str
    patient_name: str | None  # None: keep the file's own (non-ASCII) name
    study_date: str
    study_time: str
    study: str  # label of its study
    series: str  # label of its series
    modality: str | None = None  # None: keep the file's
    series_number: int | None = 1
    instance_number: int | None = 1
    study_description: str | None = None


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return str(path)


def _charset(name: str) -> str:
    for path in get_charset_files():
        if str(path).endswith("/" + name):
            return str(path)
    raise FileNotFoundError(f"pydicom charset file {name} is not installed")


SOURCES: tuple[Source, ...] = (
    # '&' and '=' in a value: the query string must carry them percent-encoded.
    Source(
        "ct",
        _testdata("CT_small.dcm"),
        "QIDO-DOE-1",
        "Doe^John",
        "20190315",
        "083000",
        "ct",
        "ct",
        study_description="R&D = 1+1",
    ),
    Source("mr", _testdata("MR_small.dcm"), "QIDO-DOE-2", "Doe^Jane", "20200101", "120000", "mr", "mr"),
    Source("rtplan", _testdata("rtplan.dcm"), "QIDO-ROE", "Roe^Richard", "20200615", "235959", "rt", "rt"),
    # Two NM series of one study: JPEG 2000 and JPEG baseline.
    Source(
        "nm-j2k", _testdata("JPEG2000.dcm"), "QIDO-SMITH", "Smith^Anna", "20210704", "101010", "nm", "nm1"
    ),
    Source(
        "nm-jpeg",
        _testdata("JPEG-lossy.dcm"),
        "QIDO-SMITH",
        "Smith^Anna",
        "20210704",
        "101010",
        "nm",
        "nm2",
        series_number=2,
    ),
    Source(
        "us", _testdata("examples_ybr_color.dcm"), "QIDO-POE", "Poe^Edgar", "20221111", "070000", "us", "us"
    ),
    # Character sets: ISO_IR 100 (French accents), ISO_IR 192 (UTF-8), ISO 2022 (Japanese),
    # ISO_IR 144 (Cyrillic), and a UTF-8 file whose sequence item switches to ISO 2022.
    Source("fren", _charset("chrFren.dcm"), "QIDO-FREN", None, "20200101", "083000", "fren", "fren"),
    Source("x1", _charset("chrX1.dcm"), "QIDO-X1", None, "20210704", "140000", "x1", "x1"),
    Source("h31", _charset("chrH31.dcm"), "QIDO-H31", None, "20230520", "160000", "h31", "h31"),
    Source("russ", _charset("chrRuss.dcm"), "QIDO-RUSS", None, "20231231", "235959", "russ", "russ"),
    Source(
        "sqenc",
        _charset("chrSQEncoding.dcm"),
        "QIDO-SQENC",
        "Sequence^Encoding",
        "20190101",
        "000000",
        "sqenc",
        "sqenc",
        modality="MR",
    ),
)

#: The generated study: (series number, modality, SOP class) × 4 instances.
GENERATED_SERIES = ((1, "CT", CT_IMAGE), (2, "MR", MR_IMAGE), (3, "OT", SECONDARY_CAPTURE))
GENERATED_INSTANCES = 4
GENERATED_PATIENT = ("QIDO-MULTI", "Generated^Multi")
GENERATED_DATE = ("20240229", "143000")


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _from_source(source: Source) -> Instance:
    ds = dcmread(source.path)
    study, series, sop = uid("study", source.study), uid("series", source.series), uid("sop", source.label)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.PatientID = source.patient_id
    if source.patient_name is not None:
        ds.PatientName = source.patient_name
    ds.StudyDate = source.study_date
    ds.StudyTime = source.study_time
    ds.StudyID = source.study[:16]
    ds.AccessionNumber = f"ACC-{source.study}"[:16]
    if source.modality is not None:
        ds.Modality = source.modality
    if source.study_description is not None:
        ds.StudyDescription = source.study_description
    ds.SeriesNumber = source.series_number
    ds.InstanceNumber = source.instance_number
    return Instance(
        label=source.label,
        study=study,
        series=series,
        sop=sop,
        patient_id=source.patient_id,
        patient_name=str(ds.PatientName),
        study_date=source.study_date,
        study_time=source.study_time,
        modality=str(ds.Modality),
        series_number=source.series_number,
        instance_number=source.instance_number,
        study_description=source.study_description,
        data=_part10(ds),
    )


def _generated() -> list[Instance]:
    patient_id, patient_name = GENERATED_PATIENT
    study_date, study_time = GENERATED_DATE
    study = uid("study", "generated")
    instances = []
    for series_number, modality, sop_class in GENERATED_SERIES:
        series = uid("series", "generated", series_number)
        sps_ids = SPS_IDS.get(series_number, ())
        for number in range(1, GENERATED_INSTANCES + 1):
            sop = uid("sop", "generated", series_number, number)
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop
            ds.StudyDate, ds.StudyTime = study_date, study_time
            ds.SeriesDate, ds.SeriesTime = study_date, study_time
            ds.AccessionNumber = "ACC-generated"
            ds.Modality = modality
            ds.ReferringPhysicianName = "Referrer^Ruth"
            ds.StudyDescription = "Generated multi-series study"
            ds.SeriesDescription = f"Generated series {series_number}"
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.StudyID = "GENERATED"
            ds.SeriesNumber = series_number
            ds.InstanceNumber = number
            if sps_ids:
                items = []
                for sps_id in sps_ids:
                    item = Dataset()
                    item.RequestedProcedureID = f"RP-{series_number}"
                    item.ScheduledProcedureStepID = sps_id
                    items.append(item)
                ds.RequestAttributesSequence = Sequence(items)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = 8
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = bytes(range(128))
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            instances.append(
                Instance(
                    label=f"generated-{series_number}-{number}",
                    study=study,
                    series=series,
                    sop=sop,
                    patient_id=patient_id,
                    patient_name=patient_name,
                    study_date=study_date,
                    study_time=study_time,
                    modality=modality,
                    series_number=series_number,
                    instance_number=number,
                    sps_ids=sps_ids,
                    study_description=ds.StudyDescription,
                    data=_part10(ds),
                )
            )
    return instances


def build() -> list[Instance]:
    """Every instance to upload, with its bytes (about 0.4 MB in all)."""
    return [_from_source(s) for s in SOURCES] + _generated()


@dataclass(frozen=True)
class Manifest:
    """What was uploaded, and the expected unique keys of a query computed from it."""

    instances: tuple[Instance, ...]

    def by_label(self, label: str) -> Instance:
        for instance in self.instances:
            if instance.label == label:
                return instance
        raise KeyError(label)

    @property
    def generated(self) -> list[Instance]:
        return [i for i in self.instances if i.label.startswith("generated-")]

    def select(self, predicate: Callable[[Instance], bool] = lambda i: True) -> list[Instance]:
        return [i for i in self.instances if predicate(i)]

    def studies(self, predicate: Callable[[Instance], bool] = lambda i: True) -> set[str]:
        return {i.study for i in self.select(predicate)}

    def series(self, predicate: Callable[[Instance], bool] = lambda i: True) -> set[str]:
        return {i.series for i in self.select(predicate)}

    def sops(self, predicate: Callable[[Instance], bool] = lambda i: True) -> set[str]:
        return {i.sop for i in self.select(predicate)}

    def modalities_of(self, study: str) -> set[str]:
        return {i.modality for i in self.instances if i.study == study}

    def studies_with_modality(self, modalities: Iterable[str]) -> set[str]:
        wanted = set(modalities)
        return {i.study for i in self.instances if i.modality in wanted}


def manifest() -> Manifest:
    return Manifest(tuple(build()))

"""Generated instances for the index tests (unit, SQLite, PostgreSQL): a few patients,
studies, series and instances whose attributes exercise every kind of matching, as
Part-10 bytes and as the `IndexRecord` the index gets for each."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomrst.index.interfaces import IndexRecord
from dicomrst.index.records import record_from_head

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"


def uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["dicomrst-index-tests", *(str(p) for p in parts)])


@dataclass
class Series:
    number: int | None
    modality: str
    sop_class: str
    instances: int
    description: str = ""
    sps_ids: tuple[str, ...] = ()


@dataclass
class Study:
    label: str
    patient_id: str
    patient_name: str
    date: str
    time: str
    accession: str = ""
    institution: str = ""
    charset: str = ""
    series: list[Series] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return uid("study", self.label)


STUDIES = [
    Study("a", "P_1", "Doe^John", "20200101", "083000", "ACC1", "General Hospital",
          series=[Series(1, "CT", CT, 3, "Head", ("SPS-1",)), Series(2, "CT", CT, 2, "Neck")]),
    Study("b", "PX1", "DOE^JANE", "20200615", "235959", "ACC2", "St. Mary%",
          series=[Series(1, "MR", MR, 2, "Brain", ("SPS-2A", "SPS-2B"))]),
    Study("c", "P2", "Smith^Anna", "20210704", "140000", "", "General Hospital",
          series=[Series(None, "SR", SC, 1), Series(3, "CT", CT, 1, "Chest")]),
    Study("d", "P3", "Buc^Jérôme", "20190303", "", "ACC4", "Clinique",
          charset="ISO_IR 100", series=[Series(1, "OT", SC, 1)]),
    Study("e", "P3", "Buc^Jérôme", "", "101500.25", "ACC5",
          charset="ISO_IR 192", series=[Series(7, "MR", MR, 1, "T1")]),
]  # fmt: skip


def dataset(study: Study, index: int, series: Series, number: int) -> Dataset:
    ds = Dataset()
    if study.charset:
        ds.SpecificCharacterSet = study.charset
    ds.SOPClassUID = series.sop_class
    ds.SOPInstanceUID = uid("sop", study.label, index, number)
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.SeriesDescription = series.description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientWeight = "70.5"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = uid("series", study.label, index)
    ds.StudyID = f"S-{study.label}"
    if series.number is not None:
        ds.SeriesNumber = series.number
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if series.sps_ids:
        items = []
        for sps in series.sps_ids:
            item = Dataset()
            item.ScheduledProcedureStepID = sps
            item.RequestedProcedureID = f"RP-{sps}"
            items.append(item)
        ds.RequestAttributesSequence = Sequence(items)
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(8)
    return ds


def part10(ds: Dataset, implicit: bool = False) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@dataclass(frozen=True)
class Stored:
    study: Study
    series: Series
    dataset: Dataset
    data: bytes
    record: IndexRecord


def build(aet: str = "LOCAL") -> list[Stored]:
    """Every instance of `STUDIES`, odd ones in Implicit VR."""
    stored = []
    count = 0
    for study in STUDIES:
        for index, series in enumerate(study.series):
            for number in range(1, series.instances + 1):
                ds = dataset(study, index, series, number)
                data = part10(ds, implicit=count % 2 == 1)
                count += 1
                key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                record = record_from_head(aet, key, f"1:{len(data)}", len(data), data, complete=True)
                assert record is not None
                stored.append(Stored(study, series, ds, data, record))
    return stored

"""The worklist the MWL-RS integration tests load into Orthanc's ModalityWorklists plugin and
into DCMTK's wlmscpfs: `ITEMS` (Scheduled Procedure Steps of several modalities, stations,
dates and patients, some named in UTF-8 with Specific Character Set ISO_IR 192), written as
``.wl`` files (Part 10, Modality Worklist Information Model - FIND as the media storage SOP
class) by `write_worklist` into one directory both peers read.
"""

from __future__ import annotations

import os

import attrs
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from dicomrst.common.uids import MODALITY_WORKLIST_FIND

UID_ROOT = "1.2.826.0.1.3680043.8.498.4711"


@attrs.frozen
class WorklistItem:
    """One Scheduled Procedure Step with its patient and requested procedure."""

    n: int
    patient_name: str
    patient_id: str
    sex: str
    modality: str
    station: str  # Scheduled Station AE Title
    date: str  # Scheduled Procedure Step Start Date
    time: str  # ... Start Time
    utf8: bool = False
    protocol_code: tuple[str, str, str] | None = None  # value, scheme, meaning

    @property
    def sps_id(self) -> str:
        return f"SPS{self.n}"

    @property
    def accession(self) -> str:
        return f"ACC{self.n}"

    @property
    def description(self) -> str:
        return f"Procedure {self.n}"

    def dataset(self) -> Dataset:
        ds = Dataset()
        if self.utf8:
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = self.sex
        # wlmscpfs answers 4 ("unknown") for an item without one, Orthanc nothing: a RIS
        # states it, so these do.
        ds.PregnancyStatus = 1 if self.sex == "M" else 4
        ds.AccessionNumber = self.accession
        ds.ReferringPhysicianName = "Referring^Doctor"
        ds.RequestedProcedureID = f"RP{self.n}"
        ds.RequestedProcedureDescription = self.description
        ds.RequestedProcedurePriority = "ROUTINE"
        ds.StudyInstanceUID = f"{UID_ROOT}.{self.n}"
        step = Dataset()
        step.ScheduledStationAETitle = self.station
        step.ScheduledProcedureStepStartDate = self.date
        step.ScheduledProcedureStepStartTime = self.time
        step.Modality = self.modality
        step.ScheduledPerformingPhysicianName = "Performing^Doctor"
        step.ScheduledProcedureStepDescription = f"Step {self.n}"
        step.ScheduledProcedureStepID = self.sps_id
        step.ScheduledStationName = f"STATION{self.n}"
        step.ScheduledProcedureStepLocation = "ROOM1"
        if self.protocol_code is not None:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = self.protocol_code
            step.ScheduledProtocolCodeSequence = Sequence([code])
            requested = Dataset()
            requested.CodeValue, requested.CodingSchemeDesignator, requested.CodeMeaning = self.protocol_code
            ds.RequestedProcedureCodeSequence = Sequence([requested])
        ds.ScheduledProcedureStepSequence = Sequence([step])
        return ds

    def part10(self) -> Dataset:
        ds = self.dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MODALITY_WORKLIST_FIND
        meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.99.{self.n}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        return ds


ITEMS: tuple[WorklistItem, ...] = (
    WorklistItem(1, "Doe^Jane", "P1", "F", "CT", "CT1", "20260105", "080000"),
    WorklistItem(2, "Roe^Richard", "P2", "M", "MR", "MR1", "20260106", "120000"),
    WorklistItem(3, "Müller^Jürgen", "P3", "M", "CT", "CT2", "20260107", "170000", utf8=True),
    WorklistItem(4, "Wang^XiaoDong=王^小東", "P4", "M", "US", "US1", "20260201", "093000", utf8=True),
    WorklistItem(5, "Early^Bird", "P5", "F", "CT", "CT1", "20260106", "070000"),
    WorklistItem(
        6,
        "Coded^Case",
        "P6",
        "F",
        "MR",
        "MR1",
        "20260110",
        "101500",
        protocol_code=("MRBRAIN", "99LOCAL", "MR Brain"),
    ),
    WorklistItem(7, "Παπαδόπουλος^Νίκος", "P7", "M", "CR", "CR1", "20260131", "235900", utf8=True),
)


def write_worklist(directory: str, items: tuple[WorklistItem, ...] = ITEMS) -> None:
    """``item{n}.wl`` for each item in `directory` (created), and the ``lockfile`` wlmscpfs wants."""
    os.makedirs(directory, exist_ok=True)
    for item in items:
        item.part10().save_as(os.path.join(directory, f"item{item.n}.wl"), enforce_file_format=True)
    with open(os.path.join(directory, "lockfile"), "w", encoding="ascii"):
        pass

# -*- test-case-name: tests.unit.test_qido_query -*-
"""Query levels, the level each attribute belongs to, each level's default return keys,
and attribute IDs (keyword, tag, dotted path) as they appear in query parameters.

Study Root C-FIND has three levels; the Patient IE's attributes are STUDY-level keys
there. The level tables are what the gateway needs to (a) drop ``includefield``
attributes of a level below the query level (PS3.18 §10.6.3.3: they "shall not be
returned"), (b) refuse to *match* on an attribute of a lower level, and (c) expand
``includefield=all``. They hold the attributes of the Patient, Study, Series and
Instance Q/R key tables (PS3.4 C.6.1.1, C.6.2.1) and of the modules of those IEs that
PACS commonly index; an attribute in none of them is treated as belonging to whatever
level is queried (sent as asked, never dropped), so a gap in the tables costs nothing
but an unfiltered key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomrst.errors import BadRequest

STUDY = "STUDY"
SERIES = "SERIES"
IMAGE = "IMAGE"
RANK = {STUDY: 0, SERIES: 1, IMAGE: 2}

Path = tuple[int, ...]
"""An attribute as a path of tags: ``(tag,)``, or ``(sequence, ..., tag)`` for an item key."""


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the tables below; tests check every name
        raise KeyError(keyword)
    return tag


def _tags(keywords: str) -> frozenset[int]:
    return frozenset(_tag(k) for k in keywords.split())


# Patient IE (Study Root: STUDY-level keys).
_PATIENT = """
    PatientName PatientID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence TypeOfPatientID
    PatientBirthDate PatientBirthTime PatientSex OtherPatientIDsSequence OtherPatientNames
    PatientBirthName PatientMotherBirthName EthnicGroup PatientComments PatientSpeciesDescription
    PatientSpeciesCodeSequence PatientBreedDescription PatientBreedCodeSequence ResponsiblePerson
    ResponsiblePersonRole ResponsibleOrganization PatientIdentityRemoved DeidentificationMethod
    PatientSexNeutered StrainDescription QualityControlSubject PatientAddress PatientTelephoneNumbers
    MilitaryRank BranchOfService CountryOfResidence RegionOfResidence MedicalAlerts Allergies
    SmokingStatus PatientReligiousPreference ReferencedPatientSequence
    NumberOfPatientRelatedStudies NumberOfPatientRelatedSeries NumberOfPatientRelatedInstances
"""

# Study IE (General Study, Patient Study modules and the study-level Q/R keys).
_STUDY = """
    StudyDate StudyTime AccessionNumber IssuerOfAccessionNumberSequence StudyInstanceUID StudyID
    StudyDescription ReferringPhysicianName ReferringPhysicianIdentificationSequence
    ConsultingPhysicianName PhysiciansOfRecord NameOfPhysiciansReadingStudy ProcedureCodeSequence
    ModalitiesInStudy SOPClassesInStudy AnatomicRegionsInStudyCodeSequence
    NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances OtherStudyNumbers
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence PatientAge PatientSize
    PatientWeight Occupation AdditionalPatientHistory AdmissionID IssuerOfAdmissionIDSequence
    ServiceEpisodeID ServiceEpisodeDescription ReasonForPerformedProcedureCodeSequence
    RequestingService ReferencedStudySequence ReasonForVisit ReasonForVisitCodeSequence
    PregnancyStatus LastMenstrualDate
"""

# Series IE (General Series, General Equipment, Frame of Reference modules).
_SERIES = """
    Modality SeriesInstanceUID SeriesNumber SeriesDate SeriesTime SeriesDescription
    SeriesDescriptionCodeSequence NumberOfSeriesRelatedInstances BodyPartExamined Laterality
    ProtocolName PatientPosition PerformingPhysicianName OperatorsName Manufacturer
    ManufacturerModelName InstitutionName InstitutionAddress InstitutionalDepartmentName StationName
    DeviceSerialNumber SoftwareVersions PerformedProcedureStepStartDate PerformedProcedureStepStartTime
    PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepID
    PerformedProcedureStepDescription PerformedProtocolCodeSequence RequestAttributesSequence
    ReferencedPerformedProcedureStepSequence CommentsOnThePerformedProcedureStep FrameOfReferenceUID
    PositionReferenceIndicator SmallestPixelValueInSeries LargestPixelValueInSeries
    AnatomicalOrientationType RelatedSeriesSequence
"""

# Instance level (SOP Common, General/Image Pixel, SR and document modules).
_IMAGE = """
    SOPClassUID SOPInstanceUID InstanceNumber Rows Columns BitsAllocated BitsStored HighBit
    NumberOfFrames SamplesPerPixel PhotometricInterpretation PixelRepresentation ImageType
    ContentDate ContentTime AcquisitionDate AcquisitionTime AcquisitionDateTime AcquisitionNumber
    InstanceCreationDate InstanceCreationTime InstanceCreatorUID ImageComments ContentLabel
    ContentDescription ContentCreatorName ConceptNameCodeSequence CompletionFlag VerificationFlag
    DocumentTitle MIMETypeOfEncapsulatedDocument PresentationCreationDate PresentationCreationTime
    ObservationDateTime ImagePositionPatient ImageOrientationPatient SliceLocation SliceThickness
    PixelSpacing WindowCenter WindowWidth LossyImageCompression BurnedInAnnotation
    RecognizableVisualFeatures AvailableTransferSyntaxUID ContentTemplateSequence
    ReferencedSOPSequence TemporalPositionIdentifier
"""

# Q/R attributes that belong to every level (PS3.4 C.3.4, C.4.1.1.3.2).
ANY_LEVEL = _tags(
    """
    SpecificCharacterSet QueryRetrieveLevel RetrieveAETitle InstanceAvailability
    TimezoneOffsetFromUTC RetrieveURL StorageMediaFileSetID StorageMediaFileSetUID
    """
)

_BY_LEVEL: dict[str, frozenset[int]] = {
    STUDY: _tags(_PATIENT) | _tags(_STUDY),
    SERIES: _tags(_SERIES),
    IMAGE: _tags(_IMAGE),
}

_LEVEL_OF: dict[int, str] = {tag: level for level, tags in _BY_LEVEL.items() for tag in tags}


def level_of(tag: int) -> str | None:
    """STUDY, SERIES or IMAGE for a known attribute; None for any-level or unclassified ones."""
    return _LEVEL_OF.get(tag)


def level_tags(level: str) -> frozenset[int]:
    """Every attribute the tables place at `level` (what ``includefield=all`` asks for)."""
    return _BY_LEVEL[level]


# Keys a C-FIND SCP must match on (Required and Unique, PS3.4 C.6.2.1); every other
# key is optional and the SCU must be ready to filter on it itself.
REQUIRED_KEYS: dict[str, frozenset[int]] = {
    STUDY: _tags("StudyDate StudyTime AccessionNumber PatientName PatientID StudyID StudyInstanceUID"),
    SERIES: _tags("Modality SeriesNumber SeriesInstanceUID"),
    IMAGE: _tags("InstanceNumber SOPInstanceUID"),
}

UNIQUE_KEY = {
    STUDY: _tag("StudyInstanceUID"),
    SERIES: _tag("SeriesInstanceUID"),
    IMAGE: _tag("SOPInstanceUID"),
}


def _paths(keywords: str) -> tuple[Path, ...]:
    return tuple(tuple(_tag(k) for k in word.split(".")) for word in keywords.split())


# The attributes a QIDO response must carry at each level (PS3.18 T10.6.3-3…5),
# including the "if known" ones, as C-FIND return keys. Timezone Offset From UTC is
# left out: in a C-FIND identifier it states the query's timezone and may not be
# empty (PS3.4 C.4.1.1.3.1). Retrieve URL is added by the gateway.
DEFAULT_KEYS: dict[str, tuple[Path, ...]] = {
    STUDY: _paths(
        """
        StudyDate StudyTime AccessionNumber InstanceAvailability ModalitiesInStudy
        ReferringPhysicianName PatientName PatientID PatientBirthDate PatientSex StudyInstanceUID
        StudyID NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances
        """
    ),
    SERIES: _paths(
        """
        StudyInstanceUID Modality SeriesDescription SeriesInstanceUID SeriesNumber
        NumberOfSeriesRelatedInstances PerformedProcedureStepStartDate PerformedProcedureStepStartTime
        RequestAttributesSequence.ScheduledProcedureStepID RequestAttributesSequence.RequestedProcedureID
        """
    ),
    IMAGE: _paths(
        """
        StudyInstanceUID SeriesInstanceUID SOPClassUID SOPInstanceUID InstanceAvailability
        InstanceNumber Rows Columns BitsAllocated NumberOfFrames
        """
    ),
}


# -- attribute names in query parameters ------------------------------------------------

HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Z][A-Za-z0-9]*")


def looks_like_attribute(name: str) -> bool:
    """Whether a parameter name is an attribute ID (a keyword, a tag or a dotted path of them).

    Keywords start with a capital letter (PS3.6), so names like ``_``, ``accept``,
    ``charset`` or ``token`` are other parameters, which are ignored if unsupported.
    """
    # Component by component: one regex for the dotted path, with its two overlapping
    # alternatives (ABCDEF12 is both a tag and a keyword), backtracked exponentially on
    # a long path that fails at its end.
    return all(HEX_TAG.fullmatch(c) or _KEYWORD.fullmatch(c) for c in name.split("."))


@dataclass(frozen=True)
class Attribute:
    """A resolved attribute ID: its tag path, the VR of its last element, and how it was written."""

    path: Path
    vr: str
    name: str

    @property
    def tag(self) -> int:
        return self.path[-1]


@lru_cache(maxsize=4096)  # every search asks for the VRs of its ~15 keys
def vr_of(tag: int) -> str:
    vr = dictionary_VR(tag)
    # Ambiguous VRs ("US or SS", "OB or OW"): the first is the usual one and any
    # choice encodes the same in Implicit VR, which is what a query needs.
    return vr.split(" or ")[0]


def resolve_attribute(name: str) -> Attribute:
    """``PatientID``, ``00100020`` or ``RequestAttributesSequence.00400009`` → `Attribute`.

    Raises `BadRequest` naming the unknown keyword or tag.
    """
    path: list[int] = []
    vr = ""
    components = name.split(".")
    for i, component in enumerate(components):
        if HEX_TAG.fullmatch(component):
            tag = int(component, 16)
            if tag >> 16 & 1:
                raise BadRequest(f"private attribute {component.upper()} is not supported (in '{name}')")
            if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002, 0xFFFE):
                raise BadRequest(f"{component.upper()} is not a data set attribute (in '{name}')")
            try:
                vr = vr_of(tag)
            except KeyError:
                raise BadRequest(f"unknown attribute tag {component.upper()} (in '{name}')") from None
        else:
            found = tag_for_keyword(component)
            if found is None or found >> 16 in (0x0000, 0x0002, 0xFFFE):
                raise BadRequest(f"unknown attribute keyword '{component}' (in '{name}')")
            tag = found
            vr = vr_of(tag)
        if vr == "NONE":
            raise BadRequest(f"{component} is not a data set attribute (in '{name}')")
        if i < len(components) - 1 and vr != "SQ":
            raise BadRequest(f"{component} is not a sequence, so it cannot be followed by '.' (in '{name}')")
        path.append(tag)
    return Attribute(tuple(path), vr, name)


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"

# -*- test-case-name: tests.unit.test_mwl -*-
"""MWL-RS: the Modality Scheduled Procedure Steps resource (PS3.18 ch. 14) as a search
target on the Modality Worklist Information Model (PS3.4 K.6.1).

PS3.18 §14.4 defines the search as the QIDO-RS search with another information model:
the same query parameters (T8.3.4-1) and rules, and the semantics of an MWL C-FIND.  So it
runs through `dicomrst.qido.query` and `dicomrst.qido.search` like the QIDO resources;
this module holds what the worklist model changes:

* **One level, no Query/Retrieve Level** (PS3.4 K.1.1 note 2): the identifier carries
  none, and every attribute of the model may be matched or returned.
* **Scheduled Procedure Step attributes are item keys** of Scheduled Procedure Step
  Sequence (0040,0100): ``ScheduledProcedureStepSequence.Modality=CT`` or
  ``00400100.00080060=CT`` (PS3.18 §8.3.4.1 dotted paths).  Written at the top level
  (``Modality=CT``) they would match nothing in a worklist, so that is a 400 naming the
  path to use, for ``includefield`` too.
* **Default return keys**: every attribute of PS3.4 Table K.6-1 (read in the 2019-2021
  editions) with a Return Key Type of 1, 1C, 2 or 2C, i.e. what a worklist SCP must
  return, with the Code Sequence Macro's and the SOP reference's item keys asked for
  explicitly; plus Issuer of Patient ID (type 3), which qualifies Patient ID where a
  site has several issuers.  ``includefield=all`` adds the table's type 3 attributes
  that are not sequences.
* **Required matching keys** (type R) at the top level are Patient's Name and Patient ID;
  the PACS must match those.  Every other match key, the Scheduled Procedure Step item
  keys included, is checked again on each result (`dicomrst.qido.query`), as some SCPs
  ignore optional keys (DCMTK's wlmscpfs: Scheduled Procedure Step ID, Requested
  Procedure Description, ...).  Combined date-time matching on the step's start date
  and time is done by the gateway too: Orthanc's worklist plugin matches the two apart.
* **Results**: every return key asked for is present, empty when the PACS left it out
  (a return key's value is unknown either way; PS3.4 K.2.2.1.2 has the SCP return
  type 2 keys empty, and some SCPs omit them), so a client sees the same shape from
  every PACS; Specific Character Set is ``ISO_IR 192`` in every result (the values are
  decoded and DICOM JSON is UTF-8, PS3.18 F.2); no Retrieve URL (the study is yet to
  be made).  Results come in the PACS's order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomrst.common.identifiers import RawIdentifier
from dicomrst.common.tags import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET
from dicomrst.common.uids import MODALITY_WORKLIST_FIND
from dicomrst.errors import BadRequest
from dicomrst.qido.attributes import Attribute, Path, keyword_of

RESOURCE = "/modality-scheduled-procedure-steps"


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the tables below; tests check every name
        raise KeyError(keyword)
    return tag


def _paths(text: str, under: Path = ()) -> tuple[Path, ...]:
    """Keywords (or dotted paths of them) → tag paths, inside the sequence path `under`."""
    return tuple((*under, *(_tag(k) for k in word.split("."))) for word in text.split())


SPS = _tag("ScheduledProcedureStepSequence")

# PS3.4 Table K.6-1: the keys of Return Key Type 1, 1C, 2 or 2C, in the table's order.
_CODE = "CodeValue CodingSchemeDesignator CodingSchemeVersion CodeMeaning"  # Code Sequence Macro
_SOP_REFERENCE = "ReferencedSOPClassUID ReferencedSOPInstanceUID"
DEFAULT_KEYS: tuple[Path, ...] = (
    # Scheduled Procedure Step
    *_paths(
        """
        ScheduledStationAETitle ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime
        Modality ScheduledPerformingPhysicianName ScheduledProcedureStepDescription
        ScheduledStationName ScheduledProcedureStepLocation ScheduledProtocolCodeSequence
        PreMedication ScheduledProcedureStepID RequestedContrastAgent
        """,
        under=(SPS,),
    ),
    *_paths(_CODE, under=(SPS, _tag("ScheduledProtocolCodeSequence"))),
    # Requested Procedure
    *_paths("RequestedProcedureID RequestedProcedureDescription"),
    *_paths(_CODE, under=(_tag("RequestedProcedureCodeSequence"),)),
    *_paths("StudyInstanceUID"),
    *_paths(_SOP_REFERENCE, under=(_tag("ReferencedStudySequence"),)),
    *_paths("RequestedProcedurePriority PatientTransportArrangements"),
    # Imaging Service Request
    *_paths("AccessionNumber RequestingPhysician ReferringPhysicianName"),
    # Visit Identification, Visit Status, Visit Relationship
    *_paths("AdmissionID CurrentPatientLocation"),
    *_paths(_SOP_REFERENCE, under=(_tag("ReferencedPatientSequence"),)),
    # Patient Identification (Issuer of Patient ID is type 3: see the module docstring)
    *_paths("PatientName PatientID IssuerOfPatientID"),
    # Patient Demographic
    *_paths("PatientBirthDate PatientSex PatientWeight ConfidentialityConstraintOnPatientDataDescription"),
    # Patient Medical
    *_paths("PatientState PregnancyStatus MedicalAlerts Allergies SpecialNeeds"),
)

# The table's type 3 attributes that are not sequences: what includefield=all adds.
OPTIONAL_KEYS: tuple[Path, ...] = (
    *_paths("ScheduledProcedureStepStatus", under=(SPS,)),
    *_paths("BarcodeValue StudyDate StudyTime PatientSize"),
)

#: Matching keys of type R outside the sequence (PS3.4 Table K.6-1).
REQUIRED_KEYS = frozenset((_tag("PatientName"), _tag("PatientID")))

#: Attributes the table has only as Scheduled Procedure Step items.
SPS_ITEMS = frozenset(
    path[1] for path in (*DEFAULT_KEYS, *OPTIONAL_KEYS) if path[0] == SPS and len(path) == 2
)


@dataclass(frozen=True)
class WorklistTarget:
    """``/modality-scheduled-procedure-steps`` (see the module docstring)."""

    resource: str = RESOURCE
    sop_class: str = MODALITY_WORKLIST_FIND
    query_level: None = None

    def default_keys(self) -> Iterator[Path]:
        return iter(DEFAULT_KEYS)

    def all_keys(self) -> Iterator[Path]:
        return iter(OPTIONAL_KEYS)

    def _check_placed(self, attribute: Attribute) -> None:
        if len(attribute.path) == 1 and attribute.tag in SPS_ITEMS:
            keyword = keyword_of(attribute.tag)
            raise BadRequest(
                f"{attribute.name} is an attribute of the Scheduled Procedure Step: in a worklist "
                f"it is in ScheduledProcedureStepSequence, so write "
                f"ScheduledProcedureStepSequence.{keyword} (or 00400100.{attribute.tag:08X})"
            )

    def returns(self, attribute: Attribute) -> bool:
        self._check_placed(attribute)
        return True

    def check_match(self, attribute: Attribute) -> None:
        self._check_placed(attribute)

    def required_keys(self) -> frozenset[int]:
        return REQUIRED_KEYS

    def path_keys(self) -> dict[int, str]:
        return {}

    def raw_result(self, found: RawIdentifier, service: str) -> bytes | None:
        return None  # the keys a result lacks are added from the identifier: `result`

    def result(self, dataset: Dataset, identifier: Dataset, service: str) -> Dataset:
        if QUERY_RETRIEVE_LEVEL in dataset:
            del dataset[QUERY_RETRIEVE_LEVEL]  # not in this model; some SCPs echo it
        _fill(dataset, identifier)
        dataset.add(DataElement(SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192"))
        return dataset


def _empty(tag: int, vr: str) -> DataElement:
    return DataElement(
        tag, vr, DicomSequence() if vr == "SQ" else None, validation_mode=pydicom_config.IGNORE
    )


def _fill(result: Dataset, keys: Dataset) -> None:
    """Add to `result` every key of `keys` it lacks, empty; into every item of a sequence
    whose item keys `keys` gives."""
    for key in keys:
        if key.tag == SPECIFIC_CHARACTER_SET:
            continue
        element = result.get(key.tag)
        if element is None:
            result.add(_empty(key.tag, key.VR))
        elif key.VR == "SQ" and element.VR == "SQ" and key.value:
            for item in element.value:
                _fill(item, key.value[0])

"""MWL-RS (``/aets/{aet}/modality-scheduled-procedure-steps``, dicomrst.qido.worklist): the
parameters, the Modality Worklist C-FIND identifier built from them, the gateway's own matching,
the response, and the worklist C-FIND through DimseBackend and the S3 backend; all in memory.

The same search against Orthanc's worklist plugin and DCMTK's wlmscpfs is
tests/integration/test_mwl_peers.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.backends.pacs import POOL_CONTEXTS
from dicomrst.backends.s3 import S3Backend
from dicomrst.common.identifiers import found_dataset
from dicomrst.common.uids import MODALITY_WORKLIST_FIND, STUDY_ROOT_FIND
from dicomrst.config import parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.find import FindFailed, FindNotAccepted
from dicomrst.errors import BadRequest, ServiceUnavailable, UpstreamError, UpstreamTimeout
from dicomrst.qido.matching import DateTimeFilter
from dicomrst.qido.query import DEFAULT_LIMIT, FUZZY_WARNING, MORE_RESULTS_WARNING, Query, parse_query
from dicomrst.qido.worklist import DEFAULT_KEYS, OPTIONAL_KEYS, REQUIRED_KEYS, SPS, SPS_ITEMS, WorklistTarget
from dicomrst.ul import pdu
from dicomrst.ul.errors import AssociationTimeout
from dicomrst.ul.negotiation import AcceptorPolicy
from dicomrst.web.app import GatewayApp
from dicomrst.web.errors import http_status
from tests.support.fakes import FakeBackend
from tests.support.http import ROOT, AppRequests
from tests.support.pool import CALLED, QIDO, PoolTestCase
from tests.support.ul import TICK

MWL = "/aets/PACS/modality-scheduled-procedure-steps"
SPS_KEY = "ScheduledProcedureStepSequence"


def w(params: Mapping[str, str | Sequence[str]] | None = None) -> Query:
    """The worklist query for `params` (name → value or values)."""
    args = {k: [v] if isinstance(v, str) else list(v) for k, v in (params or {}).items()}
    return parse_query(WorklistTarget(), args)


def keywords(paths: Sequence[tuple[int, ...]]) -> set[str]:
    return {".".join(keyword_for_tag(t) for t in path) for path in paths}


def element(tag_or_keyword: int | str, value: Any) -> DataElement:
    tag = tag_or_keyword if isinstance(tag_or_keyword, int) else tag_for_keyword(tag_or_keyword)
    assert tag is not None
    return DataElement(tag, dictionary_VR(tag), value)


def item(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        ds.add(element(keyword, value))
    return ds


def worklist_item(
    n: int, modality: str = "CT", ae: str = "CT1", date: str = "20260105", time: str = "080000", **extra: Any
) -> Dataset:
    """A C-FIND result of the worklist model: a patient and one Scheduled Procedure Step."""
    step = item(
        Modality=modality,
        ScheduledStationAETitle=ae,
        ScheduledProcedureStepStartDate=date,
        ScheduledProcedureStepStartTime=time,
        ScheduledProcedureStepID=f"SPS{n}",
    )
    ds = item(PatientName=f"Doe^Pat{n}", PatientID=f"P{n}", AccessionNumber=f"ACC{n}", **extra)
    ds.add(DataElement(SPS, "SQ", DicomSequence([step])))
    return ds


def wire(dataset: Dataset) -> Dataset:
    """`dataset` as a C-FIND SCU receives it: encoded, then read back undecoded."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, dataset)
    return read_dataset(BytesIO(fp.getvalue()), True, True)


# -- PS3.4 Table K.6-1 as the gateway holds it ------------------------------------------------------


class TableTests(SynchronousTestCase):
    def test_default_return_keys_are_those_an_scp_must_return(self) -> None:
        # Return Key Type 1, 1C, 2 or 2C in Table K.6-1, plus Issuer of Patient ID.
        code = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")
        reference = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")
        expected = {
            *(
                f"{SPS_KEY}.{k}"
                for k in (
                    "ScheduledStationAETitle ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime "
                    "Modality ScheduledPerformingPhysicianName ScheduledProcedureStepDescription "
                    "ScheduledStationName ScheduledProcedureStepLocation ScheduledProtocolCodeSequence "
                    "PreMedication ScheduledProcedureStepID RequestedContrastAgent"
                ).split()
            ),
            *(f"{SPS_KEY}.ScheduledProtocolCodeSequence.{k}" for k in code),
            *(f"RequestedProcedureCodeSequence.{k}" for k in code),
            *(f"ReferencedStudySequence.{k}" for k in reference),
            *(f"ReferencedPatientSequence.{k}" for k in reference),
            *(
                "RequestedProcedureID RequestedProcedureDescription StudyInstanceUID "
                "RequestedProcedurePriority PatientTransportArrangements AccessionNumber RequestingPhysician "
                "ReferringPhysicianName AdmissionID CurrentPatientLocation PatientName PatientID "
                "IssuerOfPatientID PatientBirthDate PatientSex PatientWeight "
                "ConfidentialityConstraintOnPatientDataDescription PatientState PregnancyStatus "
                "MedicalAlerts Allergies SpecialNeeds"
            ).split(),
        }
        self.assertEqual(keywords(DEFAULT_KEYS), expected)
        self.assertEqual(len(DEFAULT_KEYS), len(expected))  # no path twice

    def test_optional_keys_are_the_tables_type_3_non_sequences(self) -> None:
        self.assertEqual(
            keywords(OPTIONAL_KEYS),
            {
                f"{SPS_KEY}.ScheduledProcedureStepStatus",
                "BarcodeValue",
                "StudyDate",
                "StudyTime",
                "PatientSize",
            },
        )

    def test_paths_go_through_sequences_only(self) -> None:
        for path in (*DEFAULT_KEYS, *OPTIONAL_KEYS):
            for tag in path[:-1]:
                self.assertEqual(dictionary_VR(tag), "SQ", path)

    def test_required_keys_and_step_items(self) -> None:
        self.assertEqual(REQUIRED_KEYS, {tag_for_keyword("PatientName"), tag_for_keyword("PatientID")})
        self.assertIn(tag_for_keyword("Modality"), SPS_ITEMS)
        self.assertIn(tag_for_keyword("ScheduledStationAETitle"), SPS_ITEMS)
        self.assertNotIn(tag_for_keyword("PatientName"), SPS_ITEMS)

    def test_target(self) -> None:
        target = WorklistTarget()
        self.assertEqual(target.sop_class, MODALITY_WORKLIST_FIND)
        self.assertIsNone(target.query_level)
        self.assertEqual(target.path_keys(), {})
        self.assertEqual(target.resource, "/modality-scheduled-procedure-steps")


# -- the identifier --------------------------------------------------------------------------------


class IdentifierTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        ident = w().identifier
        self.assertNotIn("QueryRetrieveLevel", ident)  # one level, none named (PS3.4 K.1.1)
        self.assertIn("SpecificCharacterSet", ident)
        self.assertFalse(ident.SpecificCharacterSet)
        [step] = ident.ScheduledProcedureStepSequence
        self.assertEqual(
            set(step.dir()),
            {
                "ScheduledStationAETitle",
                "ScheduledProcedureStepStartDate",
                "ScheduledProcedureStepStartTime",
                "Modality",
                "ScheduledPerformingPhysicianName",
                "ScheduledProcedureStepDescription",
                "ScheduledStationName",
                "ScheduledProcedureStepLocation",
                "ScheduledProtocolCodeSequence",
                "PreMedication",
                "ScheduledProcedureStepID",
                "RequestedContrastAgent",
            },
        )
        for keyword in step.dir():
            if keyword != "ScheduledProtocolCodeSequence":
                self.assertIn(step[keyword].value, (None, ""), keyword)
        [code] = step.ScheduledProtocolCodeSequence
        self.assertEqual(
            set(code.dir()), {"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning"}
        )
        [reference] = ident.ReferencedStudySequence
        self.assertEqual(set(reference.dir()), {"ReferencedSOPClassUID", "ReferencedSOPInstanceUID"})
        for keyword in (
            "PatientName",
            "PatientID",
            "AccessionNumber",
            "RequestedProcedureID",
            "StudyInstanceUID",
            "PatientBirthDate",
            "PregnancyStatus",
        ):
            self.assertIn(keyword, ident)
            self.assertIn(ident[keyword].value, (None, ""), keyword)
        self.assertNotIn("Modality", ident)  # only inside the step
        self.assertNotIn("RetrieveURL", ident)
        self.assertEqual(w().filters, [])

    def test_step_attributes_by_keyword_or_tag_go_into_the_one_item(self) -> None:
        for params in (
            {f"{SPS_KEY}.Modality": "CT", f"{SPS_KEY}.ScheduledStationAETitle": "CT1"},
            {"00400100.00080060": "CT", "00400100.00400001": "CT1"},
            {f"{SPS_KEY}.00080060": "CT", "00400100.ScheduledStationAETitle": "CT1"},
        ):
            [step] = w(params).identifier.ScheduledProcedureStepSequence
            self.assertEqual((step.Modality, step.ScheduledStationAETitle), ("CT", "CT1"), params)
            self.assertIn("ScheduledProcedureStepID", step)  # the default item keys stay

    def test_start_date_range_and_wildcards(self) -> None:
        for value in ("20260101-20260131", "20260101-", "-20260131", "20260105"):
            [step] = w(
                {f"{SPS_KEY}.ScheduledProcedureStepStartDate": value}
            ).identifier.ScheduledProcedureStepSequence
            self.assertEqual(step.ScheduledProcedureStepStartDate, value)
        query = w({"PatientName": "Doe*", f"{SPS_KEY}.ScheduledPerformingPhysicianName": "Perf*"})
        self.assertEqual(str(query.identifier.PatientName), "Doe*")
        [step] = query.identifier.ScheduledProcedureStepSequence
        self.assertEqual(str(step.ScheduledPerformingPhysicianName), "Perf*")

    def test_non_ascii_name_makes_the_identifier_utf8(self) -> None:
        ident = w({"PatientName": "Müller^Jürgen"}).identifier
        self.assertEqual(ident.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(ident.PatientName), "Müller^Jürgen")

    def test_includefield(self) -> None:
        ident = w(
            {"includefield": [f"{SPS_KEY}.ScheduledProcedureStepStatus,00101010", "StudyDate"]}
        ).identifier
        [step] = ident.ScheduledProcedureStepSequence
        self.assertIn("ScheduledProcedureStepStatus", step)
        self.assertIn("PatientAge", ident)
        self.assertIn("StudyDate", ident)
        ident = w({"includefield": "all"}).identifier
        [step] = ident.ScheduledProcedureStepSequence
        self.assertIn("ScheduledProcedureStepStatus", step)
        for keyword in ("BarcodeValue", "StudyDate", "StudyTime", "PatientSize", "PatientName"):
            self.assertIn(keyword, ident)

    def test_parameters_shared_with_qido(self) -> None:
        query = w({"limit": "5", "offset": "10", "fuzzymatching": "true"})
        self.assertEqual((query.limit, query.offset), (5, 10))
        self.assertEqual(query.warnings, [FUZZY_WARNING])
        self.assertEqual(w({"limit": "100000"}).limit, DEFAULT_LIMIT)
        self.assertEqual(w({"accept": "application/json", "_": "123"}).identifier, w().identifier)

    def test_required_keys_are_left_to_the_pacs_and_the_rest_filtered(self) -> None:
        self.assertEqual(w({"PatientID": "P1", "PatientName": "Doe*"}).filters, [])
        self.assertEqual(len(w({"AccessionNumber": "ACC1"}).filters), 1)
        # Item keys are checked again: some SCPs match none of the optional ones.
        self.assertEqual(len(w({f"{SPS_KEY}.ScheduledProcedureStepID": "SPS1"}).filters), 1)
        self.assertEqual(len(w({f"{SPS_KEY}.Modality": "CT"}).filters), 1)


class BadRequestTests(SynchronousTestCase):
    def assertBad(self, params: Mapping[str, str | Sequence[str]], *fragments: str) -> None:
        with self.assertRaises(BadRequest) as e:
            w(params)
        for fragment in fragments:
            self.assertIn(fragment, e.exception.message)

    def test_step_attribute_at_the_top_level_names_its_path(self) -> None:
        self.assertBad(
            {"Modality": "CT"}, "Modality", "ScheduledProcedureStepSequence.Modality", "00400100.00080060"
        )
        self.assertBad({"00400001": "CT1"}, "ScheduledProcedureStepSequence.ScheduledStationAETitle")
        self.assertBad(
            {"includefield": "ScheduledProcedureStepStartDate"},
            "ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate",
        )

    def test_values_and_names(self) -> None:
        self.assertBad(
            {f"{SPS_KEY}.ScheduledProcedureStepStartDate": "2026-01-01"},
            f"{SPS_KEY}.ScheduledProcedureStepStartDate",
            "DA",
        )
        self.assertBad(
            {f"{SPS_KEY}.ScheduledProcedureStepStartDate": "20260131-20260101"}, "ends before it starts"
        )
        self.assertBad({f"{SPS_KEY}.ScheduledStationAETitle": "A" * 17}, "ScheduledStationAETitle", "16")
        self.assertBad({f"{SPS_KEY}.Modality": "CT\\MR"}, "backslash")
        self.assertBad({f"{SPS_KEY}.NoSuchThing": "x"}, "NoSuchThing")
        self.assertBad({"PatientName.PatientID": "x"}, "PatientName", "not a sequence")
        self.assertBad({SPS_KEY: "CT"}, "sequence")
        self.assertBad({"includefield": ["all", "PatientAge"]}, "includefield=all")
        self.assertBad({"limit": "-1"}, "limit")
        self.assertBad({"fuzzymatching": "yes"}, "fuzzymatching")
        self.assertBad({"PatientID": ["P1", "P2"]}, "PatientID", "more than once")


class GatewayMatchingTests(SynchronousTestCase):
    def test_item_keys_are_matched_on_the_step(self) -> None:
        query = w({f"{SPS_KEY}.Modality": "CT", f"{SPS_KEY}.ScheduledProcedureStepID": "SPS1"})
        self.assertTrue(query.accepts(worklist_item(1)))
        self.assertFalse(query.accepts(worklist_item(1, modality="MR")))  # an SCP ignoring the key
        self.assertFalse(query.accepts(worklist_item(2)))

    def test_start_date_range(self) -> None:
        query = w({f"{SPS_KEY}.ScheduledProcedureStepStartDate": "20260101-20260131"})
        self.assertTrue(query.accepts(worklist_item(1, date="20260131")))
        self.assertFalse(query.accepts(worklist_item(1, date="20260201")))

    def test_combined_start_date_and_time_is_one_period(self) -> None:
        # PS3.4 K.6-1: July 5 to 7 with 10am to 6pm is the period from July 5 10am to July 7 6pm.
        query = w(
            {
                f"{SPS_KEY}.ScheduledProcedureStepStartDate": "20260105-20260107",
                f"{SPS_KEY}.ScheduledProcedureStepStartTime": "1000-1800",
            }
        )
        [step] = query.identifier.ScheduledProcedureStepSequence
        self.assertEqual(step.ScheduledProcedureStepStartDate, "20260105-20260107")
        self.assertFalse(step.ScheduledProcedureStepStartTime)  # the PACS gets the dates only
        [period] = query.filters
        assert isinstance(period, DateTimeFilter)
        self.assertEqual(period.parent, (SPS,))
        expectations = {
            ("20260105", "080000"): False,
            ("20260105", "100000"): True,
            ("20260106", "070000"): True,  # inside the period, outside 10-18 that day
            ("20260107", "180000"): True,
            ("20260107", "183000"): False,
            ("20260108", "120000"): False,
        }
        for (date, time), expected in expectations.items():
            self.assertEqual(query.accepts(worklist_item(1, date=date, time=time)), expected, (date, time))
        # No step at all: nothing to judge.
        self.assertTrue(query.accepts(item(PatientID="P1")))

    def test_a_single_date_with_a_time_range_is_two_matches(self) -> None:
        query = w(
            {
                f"{SPS_KEY}.ScheduledProcedureStepStartDate": "20260106",
                f"{SPS_KEY}.ScheduledProcedureStepStartTime": "1000-1800",
            }
        )
        [step] = query.identifier.ScheduledProcedureStepSequence
        self.assertEqual(step.ScheduledProcedureStepStartTime, "1000-1800")
        self.assertTrue(query.accepts(worklist_item(1, date="20260106", time="120000")))
        self.assertFalse(query.accepts(worklist_item(1, date="20260106", time="070000")))


# -- the response ------------------------------------------------------------------------------------


class WorklistWebCase(AppRequests):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        s3 = parse_config(
            {
                "aets": [
                    {
                        "aet": "BUCKET",
                        "backend": "S3",
                        "endpoint": "http://192.0.2.9:9000",
                        "bucket": "images",
                        "endpoint-style": "path",
                    }
                ]
            }
        )
        self.bucket = S3Backend(s3.aets[0], MemoryReactorClock())
        self.app = GatewayApp({"PACS": self.pacs, "BUCKET": self.bucket}, self.clock)
        self.stub = StubTreq(self.app.resource())

    def search(self, query: str = "", **kwargs: Any) -> list[dict[str, Any]]:
        response, body = self.fetch(MWL + query, **kwargs)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/dicom+json"])
        result = json.loads(body)
        self.assertIsInstance(result, list)
        return result  # type: ignore[no-any-return]

    def assertError(self, response: Any, body: bytes, status: int, *fragments: str) -> None:
        self.assertEqual(response.code, status, body)
        message = json.loads(body)["error"]
        for fragment in fragments:
            self.assertIn(fragment, message)

    def warnings(self, response: Any) -> list[str]:
        return [v.decode() for v in response.headers.getRawHeaders(b"Warning") or []]


class ResponseTests(WorklistWebCase):
    def test_the_find_is_a_worklist_find(self) -> None:
        self.pacs.results = [worklist_item(1)]
        [result] = self.search(f"?{SPS_KEY}.Modality=CT&00400100.00400002=20260101-20260131")
        [call] = self.pacs.finds
        self.assertEqual(call.model, MODALITY_WORKLIST_FIND)
        [step] = call.identifier.ScheduledProcedureStepSequence
        self.assertEqual((step.Modality, step.ScheduledProcedureStepStartDate), ("CT", "20260101-20260131"))
        self.assertNotIn("QueryRetrieveLevel", call.identifier)
        self.assertEqual(result["00100020"], {"vr": "LO", "Value": ["P1"]})
        [step_json] = result["00400100"]["Value"]
        self.assertEqual(step_json["00080060"], {"vr": "CS", "Value": ["CT"]})
        self.assertEqual(step_json["00400001"], {"vr": "AE", "Value": ["CT1"]})

    def test_every_key_asked_for_is_in_every_result(self) -> None:
        # What the PACS left out comes back empty (the JSON model's empty attribute), the
        # same shape whichever SCP answered.
        self.pacs.results = [worklist_item(1)]
        [result] = self.search("?includefield=PatientAge")
        identifier = self.pacs.finds[0].identifier
        expected = {f"{e.tag:08X}" for e in identifier} | {"00080005"}
        self.assertEqual(set(result), expected)
        self.assertEqual(result["00101010"], {"vr": "AS"})
        self.assertEqual(result["00101030"], {"vr": "DS"})
        self.assertEqual(result["00081110"], {"vr": "SQ"})
        [step] = result["00400100"]["Value"]
        self.assertEqual(step["00400012"], {"vr": "LO"})  # Pre-Medication
        self.assertEqual(step["00400008"], {"vr": "SQ"})  # Scheduled Protocol Code Sequence
        self.assertEqual(len(step), 12)

    def test_items_of_returned_sequences_are_completed(self) -> None:
        code = item(CodeValue="MRBRAIN", CodingSchemeDesignator="99LOCAL", CodeMeaning="MR Brain")
        ds = worklist_item(1)
        ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = DicomSequence([code])
        self.pacs.results = [ds]
        [result] = self.search()
        [step] = result["00400100"]["Value"]
        [code_json] = step["00400008"]["Value"]
        self.assertEqual(code_json["00080100"], {"vr": "SH", "Value": ["MRBRAIN"]})
        self.assertEqual(code_json["00080103"], {"vr": "SH"})  # Coding Scheme Version, asked for

    def test_character_set_is_utf8_and_values_are_decoded(self) -> None:
        latin1 = worklist_item(1)
        latin1.SpecificCharacterSet = "ISO_IR 100"
        latin1.PatientName = "Müller^Jürgen"
        ascii_only = worklist_item(2)  # no Specific Character Set from this SCP
        self.pacs.results = [wire(latin1), wire(ascii_only)]
        first, second = self.search()
        self.assertEqual(first["00080005"], {"vr": "CS", "Value": ["ISO_IR 192"]})
        self.assertEqual(first["00100010"], {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]})
        self.assertEqual(second["00080005"], {"vr": "CS", "Value": ["ISO_IR 192"]})

    def test_no_retrieve_url_and_no_query_level(self) -> None:
        ds = worklist_item(1, StudyInstanceUID="1.2.3.4")
        ds.QueryRetrieveLevel = "WORKLIST"  # some SCPs echo what they were not asked
        self.pacs.results = [ds]
        [result] = self.search()
        self.assertNotIn("00081190", result)
        self.assertNotIn("00080052", result)
        self.assertEqual(result["0020000D"], {"vr": "UI", "Value": ["1.2.3.4"]})

    def test_no_match_is_200_and_an_empty_array(self) -> None:
        self.assertEqual(self.search("?PatientID=NOBODY"), [])

    def test_application_json_and_not_acceptable(self) -> None:
        response, _ = self.fetch(MWL, headers={"Accept": "application/json"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        for accept in ('multipart/related; type="application/dicom+xml"', "image/png"):
            response, body = self.fetch(MWL, headers={"Accept": accept})
            self.assertError(response, body, 406, "application/dicom+json")
        self.assertEqual(len(self.pacs.finds), 1)

    def test_gateway_matching_offset_limit_and_the_more_warning(self) -> None:
        self.pacs.results = [worklist_item(n, modality="CT" if n % 2 else "MR") for n in range(1, 11)]
        response, body = self.fetch(MWL + f"?{SPS_KEY}.Modality=CT&offset=1&limit=2")
        self.assertEqual(response.code, 200)
        self.assertEqual([r["00100020"]["Value"][0] for r in json.loads(body)], ["P3", "P5"])
        self.assertEqual([w.split(": ", 1)[1] for w in self.warnings(response)], [MORE_RESULTS_WARNING])
        response, body = self.fetch(MWL + f"?{SPS_KEY}.Modality=CT&offset=3&limit=2")
        self.assertEqual([r["00100020"]["Value"][0] for r in json.loads(body)], ["P7", "P9"])
        self.assertEqual(self.warnings(response), [])

    def test_combined_date_time_through_the_web(self) -> None:
        self.pacs.results = [
            worklist_item(1, date="20260105", time="080000"),
            worklist_item(2, date="20260106", time="070000"),
            worklist_item(3, date="20260107", time="170000"),
        ]
        results = self.search(
            f"?{SPS_KEY}.ScheduledProcedureStepStartDate=20260105-20260107"
            f"&{SPS_KEY}.ScheduledProcedureStepStartTime=1000-1800"
        )
        self.assertEqual([r["00100020"]["Value"][0] for r in results], ["P2", "P3"])

    def test_fuzzymatching_warning(self) -> None:
        response, _ = self.fetch(MWL + "?fuzzymatching=true")
        self.assertEqual(self.warnings(response), [f"299 {ROOT}/aets/PACS: {FUZZY_WARNING}"])

    def test_head_does_not_search(self) -> None:
        response, body = self.fetch(MWL, method="HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.pacs.finds, [])


class ErrorTests(WorklistWebCase):
    def test_bad_parameters_are_400_naming_them(self) -> None:
        cases = {
            "?Modality=CT": "ScheduledProcedureStepSequence.Modality",
            f"?{SPS_KEY}.ScheduledProcedureStepStartDate=2026-01-01": "ScheduledProcedureStepStartDate",
            "?limit=ten": "limit",
            "?NoSuchKeyword=1": "NoSuchKeyword",
            "?includefield=all&includefield=PatientAge": "includefield=all",
        }
        for query, named in cases.items():
            response, body = self.fetch(MWL + query)
            self.assertError(response, body, 400, named)
        self.assertEqual(self.pacs.finds, [])

    def test_unknown_aet_is_404(self) -> None:
        response, body = self.fetch("/aets/NOPE/modality-scheduled-procedure-steps?Modality=CT")
        self.assertError(response, body, 404, "NOPE")

    def test_s3_backend_is_503(self) -> None:
        response, body = self.fetch("/aets/BUCKET/modality-scheduled-procedure-steps")
        self.assertError(response, body, 503, "no worklist")
        self.assertIsNone(response.headers.getRawHeaders(b"Retry-After"))
        # The S3 backend says it itself; QIDO there stays a 501.
        failure = self.failureResultOf(
            self.bucket.find(Dataset(), limit=None, on_result=lambda ds: None, model=MODALITY_WORKLIST_FIND),
            ServiceUnavailable,
        )
        self.assertEqual(http_status(failure.value), 503)
        self.assertEqual(self.fetch("/aets/BUCKET/studies")[0].code, 501)

    def failing(self, error: Exception) -> tuple[Any, bytes]:
        self.pacs.hold = True
        d = self.start(MWL)
        [call] = self.pacs.finds
        call.send(worklist_item(1))
        self.assertNoResult(d)  # nothing is written before the find ends
        call.deferred.errback(error)
        return self.finish(d)

    def test_failure_status_is_502_without_partial_results(self) -> None:
        response, body = self.failing(FindFailed("PACS", 0xA900))
        self.assertError(response, body, 502, "0xA900")

    def test_context_not_accepted_is_502_naming_the_model(self) -> None:
        response, body = self.failing(FindNotAccepted("PACS", MODALITY_WORKLIST_FIND))
        self.assertError(response, body, 502, "Modality Worklist Information Model - FIND")

    def test_timeout_is_504(self) -> None:
        response, body = self.failing(UpstreamTimeout("no C-FIND response from PACS within 30 s"))
        self.assertError(response, body, 504, "30 s")

    def test_pool_exhausted_is_503_with_retry_after(self) -> None:
        response, body = self.failing(ServiceUnavailable("no free association to PACS", retry_after=3))
        self.assertError(response, body, 503, "association")
        self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"3"])

    def test_upstream_error_is_502(self) -> None:
        response, body = self.failing(UpstreamError("PACS: association lost"))
        self.assertError(response, body, 502, "association lost")


# -- the worklist C-FIND through DimseBackend, in memory -------------------------------------------

MWL_TIMEOUT = 2.5  # a binary fraction: "one TICK earlier" is exact on the float clock


class DimseWorklistTests(PoolTestCase):
    def find(self, backend: Any, model: str = MODALITY_WORKLIST_FIND) -> tuple[Deferred[None], list[Dataset]]:
        results: list[Dataset] = []
        identifier = (
            w({f"{SPS_KEY}.Modality": "CT"}).identifier if model == MODALITY_WORKLIST_FIND else Dataset()
        )
        if model == STUDY_ROOT_FIND:
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.PatientID = ""
        return backend.find(identifier, limit=None, on_result=results.append, model=model), results

    def test_worklist_find_goes_on_the_worklist_context_and_shares_the_association(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [worklist_item(1), worklist_item(2)]
        d, results = self.find(backend)
        link = self.connect()
        self.successResultOf(d)
        self.assertEqual([found_dataset(r).PatientID for r in results], ["P1", "P2"])
        (request,) = self.scp.requests
        self.assertEqual((request.sop_class, request.abstract_syntax), (MODALITY_WORKLIST_FIND,) * 2)
        assert request.identifier is not None
        self.assertEqual(request.identifier.ScheduledProcedureStepSequence[0].Modality, "CT")
        self.assertEqual(link.messages(), [commands.C_FIND_RQ])
        self.assertStats(backend.pool, idle=1)
        # A QIDO search next runs on the same association, on the Study Root context.
        d2, _ = self.find(backend, STUDY_ROOT_FIND)
        self.flush()
        self.successResultOf(d2)
        self.assertEqual(self.scp.requests[1].sop_class, STUDY_ROOT_FIND)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_silence_is_cancel_then_abort_at_the_mwl_rs_timeout(self) -> None:
        backend = self.make_backend(qido_ms=int(QIDO * 1000), mwl_ms=int(MWL_TIMEOUT * 1000))
        d, _ = self.find(backend)
        link = self.connect()
        self.reactor.advance(MWL_TIMEOUT - TICK)
        self.assertNoResult(d)
        self.reactor.advance(TICK)
        error = self.failureResultOf(d, AssociationTimeout).value
        self.assertEqual(http_status(error), 504)
        self.assertIn("2.5 s", str(error))
        self.assertEqual(link.messages(), [commands.C_FIND_RQ, commands.C_CANCEL_RQ])
        self.assertEqual(link.pdus()[-1], pdu.ABORT)
        self.assertStats(backend.pool)

    def test_qido_keeps_the_qido_rs_timeout(self) -> None:
        backend = self.make_backend(qido_ms=int(QIDO * 1000), mwl_ms=int(MWL_TIMEOUT * 1000))
        d, _ = self.find(backend, STUDY_ROOT_FIND)
        self.connect()
        self.reactor.advance(QIDO - TICK)
        self.assertNoResult(d)
        self.reactor.advance(TICK)
        self.failureResultOf(d, AssociationTimeout)

    def test_failure_status_keeps_the_association(self) -> None:
        backend = self.make_backend()
        d, _ = self.find(backend)
        self.connect()
        self.scp.requests[0].final(0xA900)
        self.flush()
        error = self.failureResultOf(d, FindFailed).value
        self.assertEqual((error.status, http_status(error)), (0xA900, 502))
        self.assertStats(backend.pool, idle=1)

    def test_a_pacs_without_a_worklist(self) -> None:
        backend = self.make_backend()
        without = AcceptorPolicy(
            CALLED, tuple(c for c in POOL_CONTEXTS if c.abstract_syntax != MODALITY_WORKLIST_FIND)
        )
        d, _ = self.find(backend)
        link = self.connect(without)
        error = self.failureResultOf(d, FindNotAccepted).value
        self.assertEqual(http_status(error), 502)
        self.assertIn("did not accept Modality Worklist Information Model - FIND", str(error))
        self.assertEqual(link.messages(), [])  # nothing was sent
        # The association serves the rest, so it stays in the pool.
        self.assertStats(backend.pool, idle=1)
        self.scp.auto = []
        d2, _ = self.find(backend, STUDY_ROOT_FIND)
        self.flush()
        self.successResultOf(d2)
        self.assertEqual(len(self.reactor.tcpClients), 1)

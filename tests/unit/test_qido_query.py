"""Tests for dicomrst.qido.query and dicomrst.qido.attributes: QIDO parameters → C-FIND identifier."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import DA, TM
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.identifiers import encode_identifier
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE, is_uid
from dicomrst.errors import BadRequest
from dicomrst.qido import attributes
from dicomrst.qido.attributes import IMAGE, SERIES, STUDY, looks_like_attribute, resolve_attribute
from dicomrst.qido.matching import DateTimeFilter
from dicomrst.qido.query import (
    DEFAULT_LIMIT,
    EMPTY_VALUE_WARNING,
    FUZZY_WARNING,
    MULTIPLE_VALUE_WARNING,
    Query,
    parse_query,
)
from dicomrst.qido.target import Target
from dicomrst.qido.worklist import WorklistTarget

STUDY_UID = "1.2.840.113619.2.1"
SERIES_UID = "1.2.840.113619.2.1.2"


def q(target: Target | None = None, **params: str | Sequence[str]) -> Query:
    args = {name: [value] if isinstance(value, str) else list(value) for name, value in params.items()}
    return parse_query(target or Target.studies(), args)


def qa(target: Target, args: dict[str, list[str]]) -> Query:
    return parse_query(target, args)


def result(**values: Any) -> Dataset:
    """A C-FIND result; values by keyword, VR from the dictionary."""
    ds = Dataset()
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        ds.add(DataElement(tag, dictionary_VR(tag), value))
    return ds


class UIDTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for uid in ("0", "1.2.3", "1.2.840.10008.1.2.1", "2.25." + "1" * 39, "1.0.3"):
            self.assertTrue(is_uid(uid), uid)

    def test_invalid(self) -> None:
        for uid in ("", "1.2.abc", "1..2", ".1.2", "1.2.", "1.02.3", "01.2", "1.2.3 ", "1" * 65, "1.2\\3"):
            self.assertFalse(is_uid(uid), uid)

    def test_path_uids_are_checked(self) -> None:
        with self.assertRaises(BadRequest) as e:
            Target.study_series("1.2.abc")
        self.assertIn("Study Instance UID", e.exception.message)
        self.assertIn("1.2.abc", e.exception.message)
        with self.assertRaises(BadRequest) as e:
            Target.study_series_instances(STUDY_UID, "1.02")
        self.assertIn("Series Instance UID", e.exception.message)
        with self.assertRaises(BadRequest):
            Target.study_instances("1." * 40 + "1")


class AttributeTableTests(SynchronousTestCase):
    def test_levels_do_not_overlap(self) -> None:
        study, series, image = (attributes.level_tags(level) for level in (STUDY, SERIES, IMAGE))
        self.assertEqual(study & series, frozenset())
        self.assertEqual(study & image, frozenset())
        self.assertEqual(series & image, frozenset())
        self.assertEqual(attributes.ANY_LEVEL & (study | series | image), frozenset())

    def test_level_of(self) -> None:
        self.assertEqual(attributes.level_of(0x00100010), STUDY)  # PatientName: Patient IE
        self.assertEqual(attributes.level_of(0x00081030), STUDY)
        self.assertEqual(attributes.level_of(0x00080060), SERIES)
        self.assertEqual(attributes.level_of(0x00280010), IMAGE)
        self.assertIsNone(attributes.level_of(0x00080056))  # InstanceAvailability: any level
        self.assertIsNone(attributes.level_of(0x00189004))  # unclassified

    def test_required_keys_belong_to_their_level(self) -> None:
        for level, tags in attributes.REQUIRED_KEYS.items():
            self.assertTrue(tags <= attributes.level_tags(level), level)


class NameTests(SynchronousTestCase):
    def test_looks_like_attribute(self) -> None:
        for name in ("PatientID", "00100020", "0020000d", "RequestAttributesSequence.00400009", "A.B"):
            self.assertTrue(looks_like_attribute(name), name)
        for name in ("_", "accept", "charset", "token", "Patient-ID", "0010002", "A..B", "A.", ""):
            self.assertFalse(looks_like_attribute(name), name)

    def test_resolve_keyword_and_tag(self) -> None:
        self.assertEqual(resolve_attribute("PatientID").path, (0x00100020,))
        self.assertEqual(resolve_attribute("00100020").path, (0x00100020,))
        self.assertEqual(resolve_attribute("0020000d").path, (0x0020000D,))
        attribute = resolve_attribute("00400275.00400009")
        self.assertEqual((attribute.path, attribute.vr), ((0x00400275, 0x00400009), "SH"))
        self.assertEqual(resolve_attribute("SmallestPixelValueInSeries").vr, "US")  # "US or SS"

    def test_unknown_names_are_named(self) -> None:
        cases = {
            "PatientNmae": "PatientNmae",
            "00191234": "00191234",  # private
            "00100021.00100020": "00100021",  # LO, not a sequence
            "99990010": "99990010",
            "CommandGroupLength": "CommandGroupLength",
            "00080000": "00080000",  # group length
            "TransferSyntaxUID": "TransferSyntaxUID",  # file meta
            "RequestAttributesSequence.Nope": "Nope",
        }
        for name, named in cases.items():
            with self.assertRaises(BadRequest, msg=name) as e:
                resolve_attribute(name)
            self.assertIn(named, e.exception.message)


class IdentifierTests(SynchronousTestCase):
    def test_study_defaults(self) -> None:
        ident = q().identifier
        self.assertEqual(ident.QueryRetrieveLevel, "STUDY")
        for keyword in (
            "StudyDate StudyTime AccessionNumber ModalitiesInStudy ReferringPhysicianName PatientName "
            "PatientID PatientBirthDate PatientSex StudyInstanceUID StudyID NumberOfStudyRelatedSeries "
            "NumberOfStudyRelatedInstances InstanceAvailability SpecificCharacterSet"
        ).split():
            self.assertIn(keyword, ident, keyword)
            self.assertIn(ident[keyword].value, (None, ""), keyword)
        self.assertNotIn("Modality", ident)
        self.assertNotIn("SeriesInstanceUID", ident)
        self.assertNotIn("TimezoneOffsetFromUTC", ident)  # never empty in a query

    def test_series_defaults_carry_the_study_uid(self) -> None:
        ident = q(Target.study_series(STUDY_UID)).identifier
        self.assertEqual(ident.QueryRetrieveLevel, "SERIES")
        self.assertEqual(ident.StudyInstanceUID, STUDY_UID)
        for keyword in (
            "Modality SeriesInstanceUID SeriesNumber NumberOfSeriesRelatedInstances SeriesDescription "
            "PerformedProcedureStepStartDate PerformedProcedureStepStartTime"
        ).split():
            self.assertIn(keyword, ident, keyword)
            self.assertFalse(ident[keyword].value, keyword)
        [item] = ident.RequestAttributesSequence
        self.assertEqual(set(item.dir()), {"ScheduledProcedureStepID", "RequestedProcedureID"})
        # Baseline hierarchical: no other study-level keys.
        self.assertNotIn("PatientName", ident)
        self.assertNotIn("StudyDate", ident)

    def test_instance_defaults_carry_study_and_series_uids(self) -> None:
        ident = q(Target.study_series_instances(STUDY_UID, SERIES_UID)).identifier
        self.assertEqual(ident.QueryRetrieveLevel, "IMAGE")
        self.assertEqual((ident.StudyInstanceUID, ident.SeriesInstanceUID), (STUDY_UID, SERIES_UID))
        for keyword in (
            "SOPClassUID SOPInstanceUID InstanceNumber Rows Columns BitsAllocated NumberOfFrames "
            "InstanceAvailability"
        ).split():
            self.assertIn(keyword, ident, keyword)
        self.assertNotIn("Modality", ident)

    def test_relational_resources_add_upper_defaults_without_upper_unique_values(self) -> None:
        ident = q(Target.all_series()).identifier
        self.assertEqual(ident.QueryRetrieveLevel, "SERIES")
        self.assertIn("Modality", ident)
        self.assertIn("PatientName", ident)  # study defaults
        self.assertFalse(ident.StudyInstanceUID)  # a return key, not a match
        self.assertTrue(Target.all_series().relational)

        ident = q(Target.all_instances()).identifier
        self.assertEqual(ident.QueryRetrieveLevel, "IMAGE")
        for keyword in ("PatientName", "StudyDate", "Modality", "SeriesNumber", "SOPInstanceUID"):
            self.assertIn(keyword, ident)
        self.assertFalse(ident.StudyInstanceUID)
        self.assertFalse(ident.SeriesInstanceUID)

        ident = q(Target.study_instances(STUDY_UID)).identifier
        self.assertEqual(ident.StudyInstanceUID, STUDY_UID)
        self.assertFalse(ident.SeriesInstanceUID)
        self.assertIn("Modality", ident)  # series defaults
        self.assertNotIn("PatientName", ident)  # but not the study's
        self.assertTrue(Target.study_instances(STUDY_UID).relational)
        self.assertFalse(Target.study_series_instances(STUDY_UID, SERIES_UID).relational)

    def test_match_by_keyword_and_by_tag(self) -> None:
        self.assertEqual(q(PatientID="12345").identifier.PatientID, "12345")
        self.assertEqual(q(**{"00100020": "12345"}).identifier.PatientID, "12345")
        self.assertEqual(q(**{"0010002": "x"}).identifier.PatientID, None)  # not an attribute name: ignored

    def test_uid_list(self) -> None:
        ident = q(StudyInstanceUID="1.2.3,1.2.4").identifier
        self.assertEqual(list(ident.StudyInstanceUID), ["1.2.3", "1.2.4"])
        self.assertEqual(q(StudyInstanceUID="1.2.3").identifier.StudyInstanceUID, "1.2.3")
        series = q(Target.study_series(STUDY_UID), SeriesInstanceUID="1.2.3,1.2.4").identifier
        self.assertEqual(list(series.SeriesInstanceUID), ["1.2.3", "1.2.4"])

    def test_wildcards_pass_through(self) -> None:
        ident = q(PatientName="Doe*J?hn", AccessionNumber="A*").identifier
        self.assertEqual(str(ident.PatientName), "Doe*J?hn")
        self.assertEqual(ident.AccessionNumber, "A*")
        ident = q(Target.study_series(STUDY_UID), Modality="C?").identifier
        self.assertEqual(ident.Modality, "C?")

    def test_date_time_ranges(self) -> None:
        for value in ("20200101-20201231", "-20201231", "20200101-", "20200101"):
            self.assertEqual(q(StudyDate=value).identifier.StudyDate, value)
        for value in ("1000-1200", "-1200", "10-", "101530.123456"):
            self.assertEqual(q(StudyTime=value).identifier.StudyTime, value)
        target = Target.all_instances()
        for value in ("20200101120000-20200102", "2020-", "-202001", "20200101120000-0500", "2020-2021"):
            self.assertEqual(q(target, AcquisitionDateTime=value).identifier.AcquisitionDateTime, value)

    def test_sequence_paths(self) -> None:
        target = Target.study_series(STUDY_UID)
        ident = q(target, **{"RequestAttributesSequence.ScheduledProcedureStepID": "SPS1"}).identifier
        [item] = ident.RequestAttributesSequence
        self.assertEqual(item.ScheduledProcedureStepID, "SPS1")
        self.assertIn("RequestedProcedureID", item)  # the default item key stays
        ident = q(target, **{"00400275.00400009": "SPS1", "00400275.00401001": "RP1"}).identifier
        [item] = ident.RequestAttributesSequence
        self.assertEqual((item.ScheduledProcedureStepID, item.RequestedProcedureID), ("SPS1", "RP1"))

    def test_empty_value_is_universal_matching(self) -> None:
        ident = q(StudyDescription="").identifier
        self.assertIn("StudyDescription", ident)
        self.assertFalse(ident.StudyDescription)
        self.assertEqual(q(StudyDescription="").filters, [])

    def test_includefield(self) -> None:
        ident = q(includefield=["00081030, PatientAge", "IssuerOfPatientID", ""]).identifier
        for keyword in ("StudyDescription", "PatientAge", "IssuerOfPatientID"):
            self.assertIn(keyword, ident)
            self.assertFalse(ident[keyword].value)

    def test_includefield_of_lower_levels_is_dropped(self) -> None:
        # OHIF asks for Modality at study level.
        ident = q(includefield="00081030,00080060,Rows").identifier
        self.assertIn("StudyDescription", ident)
        self.assertNotIn("Modality", ident)
        self.assertNotIn("Rows", ident)
        ident = q(Target.study_series(STUDY_UID), includefield="BodyPartExamined,SOPClassUID").identifier
        self.assertIn("BodyPartExamined", ident)
        self.assertNotIn("SOPClassUID", ident)

    def test_includefield_sequence_path(self) -> None:
        name = "ReferencedPerformedProcedureStepSequence.ReferencedSOPInstanceUID"
        ident = q(Target.all_series(), includefield=name).identifier
        [item] = ident.ReferencedPerformedProcedureStepSequence
        self.assertIn("ReferencedSOPInstanceUID", item)

    def test_includefield_all(self) -> None:
        ident = q(includefield="all").identifier
        for keyword in ("StudyDescription", "PatientAge", "OtherPatientNames", "AdmissionID"):
            self.assertIn(keyword, ident, keyword)
        self.assertNotIn("Modality", ident)
        self.assertNotIn("OtherPatientIDsSequence", ident)  # sequences only by name
        ident = q(Target.all_instances(), includefield="all").identifier
        for keyword in ("StudyDescription", "BodyPartExamined", "ContentDate"):
            self.assertIn(keyword, ident, keyword)
        q(includefield=["all", "all"])  # repeated "all" is still only "all"

    def test_match_key_wins_over_includefield(self) -> None:
        ident = q(includefield="PatientID", PatientID="X").identifier
        self.assertEqual(ident.PatientID, "X")

    def test_upper_level_match_keys_are_sent_and_filtered(self) -> None:
        query = q(Target.study_series(STUDY_UID), PatientName="Doe^J*")
        self.assertEqual(str(query.identifier.PatientName), "Doe^J*")
        self.assertEqual(len(query.filters), 1)
        self.assertTrue(query.accepts(result(PatientName="DOE^JOHN")))
        self.assertFalse(query.accepts(result(PatientName="Roe^Jane")))

    def test_path_uid_repeated_as_a_parameter(self) -> None:
        q(Target.study_series(STUDY_UID), StudyInstanceUID=STUDY_UID)
        with self.assertRaises(BadRequest) as e:
            q(Target.study_series(STUDY_UID), StudyInstanceUID="1.2.3")
        self.assertIn("StudyInstanceUID", e.exception.message)

    def test_unsupported_parameters_are_ignored(self) -> None:
        query = q(_="1690000000", accept="application/dicom+json", charset="utf-8", token="x")
        self.assertEqual(query.identifier, q().identifier)
        self.assertEqual(query.warnings, [])

    def test_special_characters_reach_the_identifier(self) -> None:
        ident = q(PatientID="A=B&C", StudyDescription="50% a,b #1 [x]").identifier
        self.assertEqual(ident.PatientID, "A=B&C")
        self.assertEqual(ident.StudyDescription, "50% a,b #1 [x]")  # a comma is literal outside UIDs
        self.assertFalse(ident.SpecificCharacterSet)
        self.assertEqual(q(Target.all_instances(), TextValue="a\\b").identifier.TextValue, "a\\b")  # UT

    def test_non_ascii_sets_utf8(self) -> None:
        ident = q(PatientName="Müller^Jürgen").identifier
        self.assertEqual(ident.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(ident.PatientName), "Müller^Jürgen")
        ident = q(PatientName="山田^太郎=やまだ^たろう").identifier
        self.assertEqual(ident.SpecificCharacterSet, "ISO_IR 192")
        # Encodes as UTF-8 in the identifier.
        from io import BytesIO

        from pydicom.filebase import DicomBytesIO
        from pydicom.filereader import read_dataset
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_dataset(fp, ident)
        self.assertIn("山田".encode(), fp.getvalue())
        back = read_dataset(BytesIO(fp.getvalue()), True, True)
        self.assertEqual(str(back.PatientName), "山田^太郎=やまだ^たろう")

    def test_numbers(self) -> None:
        target = Target.all_instances()
        ident = q(target, Rows="512", InstanceNumber="7", SliceThickness="1.25").identifier
        self.assertEqual(ident.Rows, 512)
        self.assertEqual(ident.InstanceNumber, 7)
        self.assertEqual(float(ident.SliceThickness), 1.25)

    def test_limit_and_offset(self) -> None:
        query = q()
        self.assertEqual((query.limit, query.offset), (DEFAULT_LIMIT, 0))
        self.assertEqual(query.backend_limit, DEFAULT_LIMIT + 1)
        query = q(limit="10", offset="20")
        self.assertEqual((query.limit, query.offset, query.backend_limit), (10, 20, 31))
        self.assertEqual(q(limit="0").limit, 0)
        self.assertEqual(q(limit="1000000").limit, DEFAULT_LIMIT)

    def test_matching_warnings(self) -> None:
        self.assertEqual(q(fuzzymatching="true").warnings, [FUZZY_WARNING])
        self.assertEqual(q(fuzzymatching="false").warnings, [])
        self.assertEqual(
            q(emptyvaluematching="true", multiplevaluematching="true").warnings,
            [EMPTY_VALUE_WARNING, MULTIPLE_VALUE_WARNING],
        )
        self.assertEqual(q(emptyvaluematching="false", multiplevaluematching="false").warnings, [])


class BadRequestTests(SynchronousTestCase):
    def assertBad(self, *named: str, target: Target | None = None, **params: str | Sequence[str]) -> str:
        with self.assertRaises(BadRequest) as e:
            q(target, **params)
        for name in named:
            self.assertIn(name, e.exception.message)
        return e.exception.message

    def test_unknown_keyword_or_tag(self) -> None:
        self.assertBad("PatientNmae", PatientNmae="x")
        self.assertBad("00091010", **{"00091010": "x"})
        self.assertBad("Foo", includefield="StudyDescription,Foo")
        self.assertBad("99990010", includefield="99990010")
        self.assertBad("Bogus", **{"RequestAttributesSequence.Bogus": "x"}, target=Target.all_series())

    def test_values_that_do_not_fit_the_vr(self) -> None:
        instances = Target.all_instances()
        cases: list[tuple[str, str, Target | None]] = [
            ("Rows", "abc", instances),
            ("Rows", "70000", instances),
            ("Rows", "-1", instances),
            ("InstanceNumber", "1.5", instances),
            ("SliceThickness", "thick", instances),
            ("StudyDate", "2020-01-01", None),
            ("StudyDate", "20201301", None),
            ("StudyDate", "20200230", None),
            ("StudyDate", "20200101-2020", None),
            ("StudyDate", "20201231-20200101", None),
            ("StudyDate", "-", None),
            ("StudyDate", "2020*", None),
            ("StudyTime", "2500", None),
            ("StudyTime", "12:00", None),
            ("StudyTime", "1200-1100", None),
            ("AcquisitionDateTime", "2020-13", instances),
            ("StudyInstanceUID", "1.2.abc", None),
            ("StudyInstanceUID", "1.2.3,,1.2.4", None),
            ("StudyInstanceUID", "1.2.*", None),
            ("PatientAge", "45", None),
            ("PatientID", "A\\B", None),
            ("PatientID", "x" * 65, None),
            ("AccessionNumber", "x" * 17, None),
            ("PatientSex", "é", None),
            ("PatientID", "a\x00b", None),
            ("PatientName", "a=b=c=d", None),
        ]
        for keyword, value, target in cases:
            with self.assertRaises(BadRequest, msg=f"{keyword}={value!r}") as e:
                q(target, **{keyword: value})
            self.assertIn(keyword, e.exception.message)

    def test_sequence_and_binary_values(self) -> None:
        self.assertBad("RequestAttributesSequence", target=Target.all_series(), RequestAttributesSequence="x")
        self.assertBad("PixelData", target=Target.all_instances(), PixelData="x")

    def test_same_attribute_twice(self) -> None:
        self.assertBad("PatientID", PatientID=["a", "b"])
        self.assertBad("PatientID", "00100020", PatientID="a", **{"00100020": "b"})

    def test_lower_level_match_key(self) -> None:
        message = self.assertBad("Modality", Modality="CT")
        self.assertIn("/studies", message)
        self.assertBad("Rows", target=Target.study_series(STUDY_UID), Rows="512")

    def test_limit_offset(self) -> None:
        for value in ("-1", "abc", "1.5", "", "\uff11"):  # the last: a full-width digit one
            self.assertBad("limit", limit=value)
            self.assertBad("offset", offset=value)
        self.assertBad("limit", limit=["1", "2"])

    def test_numbers_with_thousands_of_digits(self) -> None:
        # int() raises ValueError beyond 4300 digits: each such parse is a 400 naming the
        # parameter, with a short message, never an unhandled error (issue 11).
        huge = "9" * 5000
        self.assertEqual(q(limit=huge).limit, DEFAULT_LIMIT)  # "at most": any huge limit is the cap
        self.assertEqual(q(limit="0" * 5000 + "7").limit, 7)  # leading zeros are not digits that count
        padded = q(Target.all_instances(), Rows="0" * 5000 + "7")  # a valid US, matched here too
        self.assertEqual(padded.identifier.Rows, 7)
        self.assertTrue(padded.accepts(result(Rows=7)))
        self.assertFalse(padded.accepts(result(Rows=8)))
        cases = [
            ("offset", {"offset": huge}),
            ("Rows", {"Rows": huge}),  # US
            ("Rows", {"Rows": "-" + huge}),
            ("InstanceNumber", {"InstanceNumber": huge}),  # IS
            ("SmallestPixelValueInSeries", {"SmallestPixelValueInSeries": "-" + huge}),  # US or SS
            ("SliceThickness", {"SliceThickness": huge}),  # DS
        ]
        for name, params in cases:
            level = attributes.level_of(tag_for_keyword(name) or 0)
            target = {SERIES: Target.all_series(), IMAGE: Target.all_instances()}.get(level or STUDY)
            message = self.assertBad(name, target=target, **params)
            self.assertLess(len(message), 200, message)

    def test_regexes_on_input_do_not_backtrack(self) -> None:
        # Both took seconds (the first quadratic, the second exponential in the path's
        # length) before failing; now they fail at once.  The test just has to finish.
        self.assertBad("FrameTime", target=Target.all_instances(), FrameTime="1" * 16000 + "x")  # DS
        self.assertFalse(looks_like_attribute(".".join(["ABCDEF12"] * 60) + "!"))
        self.assertTrue(looks_like_attribute(".".join(["ABCDEF12"] * 60)))

    def test_booleans(self) -> None:
        for name in ("fuzzymatching", "emptyvaluematching", "multiplevaluematching"):
            self.assertBad(name, **{name: "yes"})

    def test_includefield_all_with_others(self) -> None:
        self.assertBad("all", includefield=["all", "PatientAge"])
        self.assertBad("all", includefield="all,PatientAge")


class GatewayFilterTests(SynchronousTestCase):
    def test_required_keys_are_left_to_the_pacs(self) -> None:
        query = q(PatientName="doe*", PatientID="1", StudyDate="20200101-", AccessionNumber="A1")
        self.assertEqual(query.filters, [])
        self.assertEqual(query.backend_limit, DEFAULT_LIMIT + 1)

    def test_optional_keys_are_filtered_when_the_result_carries_them(self) -> None:
        query = q(limit="5", offset="2", StudyDescription="Chest*", PatientBirthDate="19700101-19791231")
        self.assertEqual(len(query.filters), 2)
        self.assertIsNone(query.backend_limit)  # the gateway stops the find itself
        self.assertEqual(query.wanted, 8)
        self.assertTrue(query.accepts(result(StudyDescription="Chest PA", PatientBirthDate="19750505")))
        self.assertFalse(query.accepts(result(StudyDescription="chest PA")))  # LO: case-sensitive
        self.assertFalse(query.accepts(result(StudyDescription="Chest", PatientBirthDate="19800101")))
        self.assertTrue(query.accepts(result()))  # not carried: kept
        self.assertTrue(query.accepts(result(StudyDescription="", PatientBirthDate=None)))  # empty: kept

    def test_single_value_multi_valued_result(self) -> None:
        query = q(Target.all_instances(), ImageType="DERIVED")
        self.assertFalse(query.accepts(result(ImageType=["ORIGINAL", "PRIMARY"])))
        self.assertTrue(query.accepts(result(ImageType=["DERIVED", "SECONDARY"])))

    def test_uid_list_filter(self) -> None:
        query = q(Target.all_series(), StudyInstanceUID="1.2.3,1.2.4")
        self.assertTrue(query.accepts(result(StudyInstanceUID="1.2.4")))
        self.assertFalse(query.accepts(result(StudyInstanceUID="1.2.5")))

    def test_number_and_time_filters(self) -> None:
        query = q(Target.all_series(), NumberOfStudyRelatedInstances="12")
        self.assertTrue(query.accepts(result(NumberOfStudyRelatedInstances="12")))
        self.assertFalse(query.accepts(result(NumberOfStudyRelatedInstances="13")))
        query = q(Target.study_series(STUDY_UID), SeriesTime="1000-1200")
        self.assertTrue(query.accepts(result(SeriesTime="1130")))
        self.assertTrue(query.accepts(result(SeriesTime="120059.5")))  # "1200" covers that minute
        self.assertFalse(query.accepts(result(SeriesTime="0959")))
        self.assertFalse(query.accepts(result(SeriesTime="1201")))

    def test_pn_filter_is_case_insensitive(self) -> None:
        query = q(Target.all_series(), PatientName="doe^john")
        self.assertTrue(query.accepts(result(PatientName="DOE^JOHN")))
        self.assertFalse(query.accepts(result(PatientName="DOE^JANE")))

    def test_sequence_item_keys_match_any_item(self) -> None:
        # Orthanc ignores item keys but returns the sequence: some item must match.
        query = q(Target.all_series(), **{"RequestAttributesSequence.ScheduledProcedureStepID": "X*"})
        self.assertIsNone(query.backend_limit)

        def with_items(*ids: str) -> Dataset:
            items = []
            for sps_id in ids:
                item = Dataset()
                item.ScheduledProcedureStepID = sps_id
                items.append(item)
            return result(RequestAttributesSequence=DicomSequence(items))

        self.assertTrue(query.accepts(with_items("A", "X1")))
        self.assertFalse(query.accepts(with_items("A", "B")))
        self.assertTrue(query.accepts(with_items()))  # no items: not supported, kept
        self.assertTrue(query.accepts(with_items("")))
        self.assertTrue(query.accepts(result(Modality="CT")))  # absent: kept
        tagged = q(Target.all_series(), **{"00400275.00400009": "X1"})
        self.assertFalse(tagged.accepts(with_items("A")))

    def test_value_the_result_charset_cannot_hold_is_not_judged(self) -> None:
        # Orthanc answers in Latin-1 and drops what Latin-1 lacks: it matched, we cannot tell.
        query = q(Target.all_series(), PatientName="*王*")
        lossy = result(SpecificCharacterSet="ISO_IR 100", PatientName="Wang^XiaoDong=^")
        self.assertTrue(query.accepts(lossy))
        utf8 = result(SpecificCharacterSet="ISO_IR 192", PatientName="Wang^XiaoDong=^")
        self.assertFalse(query.accepts(utf8))
        self.assertTrue(query.accepts(result(SpecificCharacterSet="ISO_IR 192", PatientName="Wang=王")))
        # Latin-1 holds these accents, so the filter applies.
        query = q(Target.all_series(), PatientName="Buc^Jérôme")
        self.assertTrue(query.accepts(result(SpecificCharacterSet="ISO_IR 100", PatientName="Buc^Jérôme")))
        self.assertFalse(query.accepts(result(SpecificCharacterSet="ISO_IR 100", PatientName="Buc^Jerome")))
        # No Specific Character Set: decoded as Latin-1 like pydicom does, so judged.
        self.assertFalse(query.accepts(result(PatientName="Buc^J?r?me")))


class CombinedDateTimeTests(SynchronousTestCase):
    def test_both_ranges_query_the_date_and_filter_date_time(self) -> None:
        query = q(StudyDate="20200101-20200102", StudyTime="2300-0100")
        ident = query.identifier
        self.assertEqual(ident.StudyDate, "20200101-20200102")
        self.assertIn("StudyTime", ident)
        self.assertFalse(ident.StudyTime)  # a return key: the gateway matches time
        [f] = query.filters
        self.assertIsInstance(f, DateTimeFilter)
        self.assertIsNone(query.backend_limit)
        accepts = query.accepts
        self.assertTrue(accepts(result(StudyDate="20200101", StudyTime="233000")))
        self.assertTrue(accepts(result(StudyDate="20200102", StudyTime="0030")))
        self.assertFalse(accepts(result(StudyDate="20200101", StudyTime="0900")))  # before 23:00
        self.assertFalse(accepts(result(StudyDate="20200102", StudyTime="2330")))  # after 01:00 next day
        self.assertFalse(accepts(result(StudyDate="20200101", StudyTime="2259")))
        self.assertFalse(accepts(result(StudyDate="20200102", StudyTime="0200")))
        self.assertTrue(accepts(result(StudyDate="20200102")))  # no time: by date alone
        self.assertFalse(accepts(result(StudyDate="20200103")))
        # Not separate date and time matching: the middle day matches at any time.
        accepts = q(StudyDate="20200101-20200103", StudyTime="2300-0100").accepts
        self.assertTrue(accepts(result(StudyDate="20200102", StudyTime="1200")))

    def test_open_ends(self) -> None:
        accepts = q(StudyDate="20200101-", StudyTime="1000-").accepts
        self.assertFalse(accepts(result(StudyDate="20200101", StudyTime="0959")))
        self.assertTrue(accepts(result(StudyDate="20200101", StudyTime="1000")))
        self.assertTrue(accepts(result(StudyDate="20250101", StudyTime="0000")))
        accepts = q(StudyDate="-20200101", StudyTime="-1000").accepts
        self.assertTrue(accepts(result(StudyDate="19990101", StudyTime="2300")))
        self.assertFalse(accepts(result(StudyDate="20200101", StudyTime="1001")))

    def test_single_date_with_time_range_is_left_to_the_pacs(self) -> None:
        query = q(StudyDate="20200101", StudyTime="1000-1200")
        self.assertEqual(query.identifier.StudyTime, "1000-1200")
        self.assertEqual(query.filters, [])

    def test_other_pairs(self) -> None:
        query = q(Target.study_series(STUDY_UID), SeriesDate="20200101-20200102", SeriesTime="2300-0100")
        self.assertFalse(query.identifier.SeriesTime)
        [f] = query.filters
        self.assertIsInstance(f, DateTimeFilter)

    def test_combined_parts_are_still_validated(self) -> None:
        with self.assertRaises(BadRequest) as e:
            q(StudyDate="20200101-20200102", StudyTime="2300-2500")
        self.assertIn("StudyTime", e.exception.message)

    def test_datetime_months_at_the_ends_of_the_calendar(self) -> None:
        # Found by the qido-query fuzz harness: a DT range ending in a month of year 0000
        # or 9999 asked Python's dates for the next month, outside their range: an
        # unhandled error (a 500).
        for value, inside, outside in (
            ("000001", "00000131", "00000201"),
            ("-000002", "00000229", "00000301"),  # year 0 is a leap year (proleptic Gregorian)
            ("999912", "99991231235959", "99981231"),
            ("19991231-999912", "99991231", "19991230"),
        ):
            query = q(Target.all_instances(), AcquisitionDateTime=value)
            self.assertTrue(query.accepts(result(AcquisitionDateTime=inside)), value)
            self.assertFalse(query.accepts(result(AcquisitionDateTime=outside)), value)


class SequenceIdentifierTests(SynchronousTestCase):
    def test_includefield_sequence_without_items_is_universal(self) -> None:
        ident = q(Target.all_series(), includefield="ReferencedPerformedProcedureStepSequence").identifier
        self.assertIsInstance(ident.ReferencedPerformedProcedureStepSequence, DicomSequence)
        self.assertEqual(len(ident.ReferencedPerformedProcedureStepSequence), 0)


def converted(ds: Dataset) -> Dataset:
    """`ds` rebuilt with ``DataElement(tag, VR, value)`` per element: pydicom's conversion
    and validation of every value, as the identifier was built before issue 15."""
    copy = Dataset()
    for element in ds:
        if element.VR == "SQ":
            copy.add(
                DataElement(element.tag, "SQ", DicomSequence([converted(item) for item in element.value]))
            )
        else:
            copy.add(DataElement(element.tag, element.VR, element.value))
    return copy


def written(ds: Dataset, transfer_syntax: str) -> bytes:
    """`ds` as pydicom's writer encodes it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    write_dataset(fp, ds)
    return fp.getvalue()


#: Parameters and values for random queries: every VR a key can have, ranges, lists,
#: wildcards, non-ASCII, item keys, and values that are 400s.
RANDOM_NAMES = (
    "PatientName PatientID StudyDate StudyTime AccessionNumber ModalitiesInStudy StudyInstanceUID "
    "SeriesInstanceUID SOPInstanceUID SeriesNumber InstanceNumber NumberOfStudyRelatedSeries PatientAge "
    "PatientWeight 00100020 00100010 Modality SeriesDescription StudyDescription ReferringPhysicianName "
    "PatientBirthDate PatientSex StudyID SeriesDate AcquisitionDateTime ImageComments PatientComments "
    "AdditionalPatientHistory NumberOfFrames Rows StationName OtherPatientIDs 00080060 "
    "RequestAttributesSequence.ScheduledProcedureStepID RequestAttributesSequence.RequestedProcedureID "
    "ScheduledProcedureStepSequence.Modality ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate "
    "ScheduledProcedureStepSequence.ScheduledProcedureStepStartTime includefield includefield limit offset"
).split()
RANDOM_VALUES = (
    "", "P1", "Doe^J*", "Doe^John=ドウ^ジョン", "Müller", "20200101", "20200101-20201231", "-20201231",
    "0800-1700", "101530.5", "CT", "CT,MR", f"{STUDY_UID},{SERIES_UID}", STUDY_UID, "12", "+12", "045Y",
    "70.5", "1e3", "a\\b", "x?y", "*", "all", "PatientAge,StudyDescription", "00100020",
    "RequestAttributesSequence", "NumberOfFrames", "20", "abc", "20200101101530-20200102", "tab\there",
    "A" * 70,
)  # fmt: skip


class UnconvertedElementTests(SynchronousTestCase):
    """Return keys, text match values, the level and the character set are stored without
    pydicom's value conversion and validation: each element is what ``DataElement(tag, VR,
    value)`` (converting) makes of the same value, and the identifier encodes to the same
    bytes."""

    def assert_converted(self, ds: Dataset) -> None:
        for element in ds:
            fresh = DataElement(element.tag, element.VR, element.value)
            self.assertIs(type(fresh.value), type(element.value), element)
            if element.VR == "SQ":
                for item in element.value:
                    self.assert_converted(item)
            else:
                self.assertEqual(fresh.value, element.value, element)

    def assert_same_identifier(self, ds: Dataset) -> None:
        self.assert_converted(ds)
        reference = converted(ds)
        for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
            self.assertEqual(encode_identifier(ds, syntax), encode_identifier(reference, syntax))
            self.assertEqual(written(ds, syntax), written(reference, syntax))

    def test_random_queries(self) -> None:
        rng = random.Random(15)
        targets = (
            Target.studies(),
            Target.study_series(STUDY_UID),
            Target.study_series_instances(STUDY_UID, SERIES_UID),
            Target.study_instances(STUDY_UID),
            Target.all_series(),
            Target.all_instances(),
            WorklistTarget(),
        )
        parsed = 0
        for _ in range(1500):
            args: dict[str, list[str]] = {}
            for _ in range(rng.randint(0, 4)):
                args.setdefault(rng.choice(RANDOM_NAMES), []).append(rng.choice(RANDOM_VALUES))
            try:
                query = qa(rng.choice(targets), args)
            except BadRequest:
                continue
            parsed += 1
            self.assert_same_identifier(query.identifier)
            if query.exact_identifier is not None:
                self.assert_same_identifier(query.exact_identifier)
        self.assertGreater(parsed, 500)

    def test_level_and_character_set_are_in_the_reading_validation_mode(self) -> None:
        ident = q(PatientName="Müller").identifier
        for keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            self.assertEqual(ident[keyword].validation_mode, pydicom_config.settings.reading_validation_mode)
        self.assertEqual(ident.SpecificCharacterSet, "ISO_IR 192")

    def test_dates_and_times_follow_pydicom_datetime_conversion(self) -> None:
        self.patch(pydicom_config, "datetime_conversion", True)
        ident = q(StudyDate="20200101", StudyTime="101530", PatientAge="045Y").identifier
        self.assertIsInstance(ident["StudyDate"].value, DA)
        self.assertIsInstance(ident["StudyTime"].value, TM)
        self.assertIs(type(ident["PatientAge"].value), str)
        self.assert_same_identifier(ident)

    def test_the_identifier_is_a_dataset_as_its_constructor_makes_it(self) -> None:
        first, second = q().identifier, q().identifier
        for ident in (first, second):
            fresh = Dataset(dict(ident))
            self.assertEqual(vars(ident), vars(fresh))
            self.assertIs(type(ident), Dataset)
        for name, value in vars(first).items():
            if isinstance(value, dict):
                self.assertIsNot(value, vars(second)[name], name)  # each its own
        first.PatientID = "changed"
        first.file_meta = FileMetaDataset()
        self.assertEqual(second.PatientID, None)
        self.assertFalse(hasattr(second, "file_meta"))

    def test_sequence_return_keys_are_not_shared(self) -> None:
        first = q(Target.all_series(), includefield="ReferencedPerformedProcedureStepSequence").identifier
        second = q(Target.all_series(), includefield="ReferencedPerformedProcedureStepSequence").identifier
        first.ReferencedPerformedProcedureStepSequence.append(Dataset())
        self.assertEqual(len(second.ReferencedPerformedProcedureStepSequence), 0)

    def test_every_target_and_key_kind(self) -> None:
        targets = (
            Target.studies(),
            Target.study_series(STUDY_UID),
            Target.study_series_instances(STUDY_UID, SERIES_UID),
            Target.study_instances(STUDY_UID),
            Target.all_series(),
            Target.all_instances(),
        )
        args: list[dict[str, list[str]]] = [
            {},
            {"includefield": ["all"]},
            {"PatientName": ["Doe^J*"], "StudyDate": ["20200101-20201231"], "StudyTime": ["0800-1700"]},
            {"StudyInstanceUID": [f"{STUDY_UID},{SERIES_UID}"], "ModalitiesInStudy": ["CT"]},
            {"includefield": ["RequestAttributesSequence", "00100020", "NumberOfFrames"]},
            {"RequestAttributesSequence.ScheduledProcedureStepID": ["SPS1"], "PatientID": ["Müller"]},
        ]
        for target in targets:
            for arg in args:
                try:
                    query = qa(target, arg)
                except BadRequest:
                    continue
                self.assert_converted(query.identifier)
                if query.exact_identifier is not None:
                    self.assert_converted(query.exact_identifier)

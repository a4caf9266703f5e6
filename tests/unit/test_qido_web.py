"""Tests for QIDO-RS through the web layer (dicomrst.web.qido) and the DICOM JSON encoder.

A fake IBackend (tests.support.fakes) records each find's identifier and limit and replays
results the test controls; the real PACS tests (Orthanc, pynetdicom) live elsewhere.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dicomrst.backends.interfaces import IBackend
from dicomrst.common.dicomjson import dataset_json
from dicomrst.errors import NotAcceptable, ServiceUnavailable, UpstreamError, UpstreamTimeout
from dicomrst.qido.negotiation import select_search_media
from dicomrst.qido.query import DEFAULT_LIMIT, FUZZY_WARNING, MORE_RESULTS_WARNING
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import make_site
from tests.support.fakes import FakeBackend
from tests.support.http import ROOT, AppRequests, Connection

STUDY = "1.2.840.113619.2.55.3"
SERIES = "1.2.840.113619.2.55.3.1"
SOP = "1.2.840.113619.2.55.3.1.1"
DICOM_JSON = [b"application/dicom+json"]


def ds(**values: Any) -> Dataset:
    """A dataset from keyword=value pairs (VRs from the dictionary)."""
    dataset = Dataset()
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


def wire(dataset: Dataset) -> Dataset:
    """`dataset` as a C-FIND SCU would receive it: encoded, then read back undecoded."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, dataset)
    return read_dataset(BytesIO(fp.getvalue()), True, True)


def study(n: int = 1, **extra: Any) -> Dataset:
    values = {
        "QueryRetrieveLevel": "STUDY",
        "StudyInstanceUID": f"{STUDY}.{n}",
        "PatientName": "Doe^John",
        "PatientID": "P1",
        "StudyDate": "20200101",
    }
    return ds(**(values | extra))


class QidoTestCase(AppRequests):
    base_path = "/"
    raw = False  # results as bytes, as a PACS's arrive (JSON written from them)

    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.pacs.raw = self.raw
        self.s3 = FakeBackend("BUCKET", "S3", unsupported=True)
        self.app = GatewayApp({"PACS": self.pacs, "BUCKET": self.s3}, self.clock, base_path=self.base_path)
        self.stub = StubTreq(self.app.resource())

    def search(self, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        response, body = self.fetch(path, **kwargs)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), DICOM_JSON)
        result = json.loads(body)
        self.assertIsInstance(result, list)
        return result  # type: ignore[no-any-return]

    def assertError(self, response: Any, body: bytes, status: int, *fragments: str) -> str:
        self.assertEqual(response.code, status, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        message = json.loads(body)["error"]
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message  # type: ignore[no-any-return]

    def warnings(self, response: Any) -> list[str]:
        return [w.decode() for w in response.headers.getRawHeaders(b"Warning") or []]


class ResourceTests(QidoTestCase):
    def test_fake_backend_provides_ibackend(self) -> None:
        verifyObject(IBackend, self.pacs)
        verifyObject(IBackend, self.s3)

    def test_studies(self) -> None:
        self.pacs.results = [study(1), study(2)]
        results = self.search("/aets/PACS/studies")
        [call] = self.pacs.finds
        self.assertEqual(call.identifier.QueryRetrieveLevel, "STUDY")
        self.assertEqual(call.limit, DEFAULT_LIMIT + 1)
        self.assertEqual([r["0020000D"]["Value"] for r in results], [[f"{STUDY}.1"], [f"{STUDY}.2"]])
        self.assertEqual(
            results[0]["00081190"],
            {"vr": "UR", "Value": [f"{ROOT}/aets/PACS/studies/{STUDY}.1"]},
        )
        self.assertNotIn("00080052", results[0])  # QueryRetrieveLevel is a C-FIND artefact

    def test_study_series(self) -> None:
        # The PACS leaves StudyInstanceUID out; the path supplies it.
        self.pacs.results = [ds(SeriesInstanceUID=SERIES, Modality="CT", SeriesNumber="2")]
        [result] = self.search(f"/aets/PACS/studies/{STUDY}/series")
        ident = self.pacs.finds[0].identifier
        self.assertEqual((ident.QueryRetrieveLevel, ident.StudyInstanceUID), ("SERIES", STUDY))
        self.assertIn("SeriesInstanceUID", ident)
        self.assertEqual(result["0020000D"], {"vr": "UI", "Value": [STUDY]})
        self.assertEqual(result["0020000E"], {"vr": "UI", "Value": [SERIES]})
        self.assertEqual(result["00200011"], {"vr": "IS", "Value": [2]})
        self.assertEqual(result["00081190"]["Value"], [f"{ROOT}/aets/PACS/studies/{STUDY}/series/{SERIES}"])

    def test_study_series_instances(self) -> None:
        self.pacs.results = [ds(SOPInstanceUID=SOP, SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Rows=512)]
        [result] = self.search(f"/aets/PACS/studies/{STUDY}/series/{SERIES}/instances")
        ident = self.pacs.finds[0].identifier
        self.assertEqual(ident.QueryRetrieveLevel, "IMAGE")
        self.assertEqual((ident.StudyInstanceUID, ident.SeriesInstanceUID), (STUDY, SERIES))
        self.assertEqual(result["0020000D"]["Value"], [STUDY])
        self.assertEqual(result["0020000E"]["Value"], [SERIES])
        self.assertEqual(result["00280010"], {"vr": "US", "Value": [512]})
        self.assertEqual(
            result["00081190"]["Value"], [f"{ROOT}/aets/PACS/studies/{STUDY}/series/{SERIES}/instances/{SOP}"]
        )

    def test_study_instances(self) -> None:
        self.pacs.results = [ds(SeriesInstanceUID=SERIES, SOPInstanceUID=SOP)]
        [result] = self.search(f"/aets/PACS/studies/{STUDY}/instances")
        ident = self.pacs.finds[0].identifier
        self.assertEqual((ident.QueryRetrieveLevel, ident.StudyInstanceUID), ("IMAGE", STUDY))
        self.assertFalse(ident.SeriesInstanceUID)  # relational: a return key only
        self.assertEqual(
            result["00081190"]["Value"], [f"{ROOT}/aets/PACS/studies/{STUDY}/series/{SERIES}/instances/{SOP}"]
        )

    def test_all_series(self) -> None:
        self.pacs.results = [ds(StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES, PatientName="Doe^J")]
        [result] = self.search("/aets/PACS/series?PatientID=P1")
        ident = self.pacs.finds[0].identifier
        self.assertEqual((ident.QueryRetrieveLevel, ident.PatientID), ("SERIES", "P1"))
        self.assertFalse(ident.StudyInstanceUID)
        self.assertEqual(result["00081190"]["Value"], [f"{ROOT}/aets/PACS/studies/{STUDY}/series/{SERIES}"])

    def test_all_instances(self) -> None:
        # Without the upper UIDs no Retrieve URL can be built; the rest is still returned.
        self.pacs.results = [ds(SOPInstanceUID=SOP)]
        [result] = self.search("/aets/PACS/instances")
        self.assertEqual(self.pacs.finds[0].identifier.QueryRetrieveLevel, "IMAGE")
        self.assertNotIn("00081190", result)
        self.assertEqual(result["00080018"]["Value"], [SOP])

    def test_no_retrieve_url_from_a_uid_list(self) -> None:
        self.pacs.results = [ds(StudyInstanceUID=["1.2.3", "1.2.4"])]
        [result] = self.search("/aets/PACS/studies")
        self.assertNotIn("00081190", result)
        self.assertEqual(result["0020000D"]["Value"], ["1.2.3", "1.2.4"])

    def test_trailing_slash(self) -> None:
        self.assertEqual(self.search("/aets/PACS/studies/"), [])

    def test_no_match_is_200_empty_array(self) -> None:
        response, body = self.fetch("/aets/PACS/studies?PatientID=nobody")
        self.assertEqual((response.code, body), (200, b"[]"))
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), DICOM_JSON)
        self.assertEqual(response.headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])

    def test_query_parameters_reach_the_identifier(self) -> None:
        self.fetch(
            "/aets/PACS/studies?PatientName=M%C3%BCller%5EJ*&StudyDate=20200101-20201231"
            "&StudyInstanceUID=1.2.3,1.2.4&PatientID=A%3DB%26C&includefield=00081030"
        )
        ident = self.pacs.finds[0].identifier
        self.assertEqual(str(ident.PatientName), "Müller^J*")
        self.assertEqual(ident.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(ident.StudyDate, "20200101-20201231")
        self.assertEqual(list(ident.StudyInstanceUID), ["1.2.3", "1.2.4"])
        self.assertEqual(ident.PatientID, "A=B&C")
        self.assertIn("StudyDescription", ident)



class HostileQueryTests(QidoTestCase):
    def test_numbers_with_thousands_of_digits_are_400_naming_the_parameter(self) -> None:
        # These answered 500 with a traceback in the log (issue 11).
        for query, name in (
            ("limit=" + "9" * 5000 + "&offset=" + "9" * 5000, "offset"),
            ("Rows=" + "9" * 5000, "Rows"),
            ("InstanceNumber=" + "1" * 4301, "InstanceNumber"),
        ):
            response, body = self.fetch("/aets/PACS/instances?" + query)
            message = self.assertError(response, body, 400, name)
            self.assertLess(len(body), 300, message)
        self.assertEqual(self.pacs.finds, [])
        self.assertEqual(self.flushLoggedErrors(), [])

class RetrieveURLTests(QidoTestCase):
    base_path = "/dicomweb/"

    def test_base_path_and_host_header(self) -> None:
        self.pacs.results = [study(1)]
        [result] = self.search("/dicomweb/aets/PACS/studies", headers={"Host": "viewer.example:8443"})
        self.assertEqual(
            result["00081190"]["Value"], [f"http://viewer.example:8443/dicomweb/aets/PACS/studies/{STUDY}.1"]
        )

    def test_scheme_of_the_connection(self) -> None:
        self.pacs.results = [study(1)]
        [result] = self.search("https://gw.example/dicomweb/aets/PACS/studies")
        self.assertEqual(result["00081190"]["Value"], [f"https://gw.example/dicomweb/aets/PACS/studies/{STUDY}.1"])

    def test_outside_the_base_path_is_404(self) -> None:
        response, _ = self.fetch("/aets/PACS/studies")
        self.assertEqual(response.code, 404)
        self.assertEqual(self.pacs.finds, [])


class JSONModelTests(QidoTestCase):
    def one(self, dataset: Dataset) -> dict[str, Any]:
        self.pacs.results = [dataset]
        [result] = self.search(f"/aets/PACS/studies/{STUDY}/series/{SERIES}/instances")
        return result  # type: ignore[no-any-return]

    def test_value_types(self) -> None:
        dataset = ds(
            SOPInstanceUID=SOP,
            PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
            ReferringPhysicianName="",
            InstanceNumber="  007",
            SliceThickness="1.50",
            PixelSpacing=["0.5", "0.25"],
            ImageType=["ORIGINAL", "", "AXIAL"],
            Rows=512,
            FrameIncrementPointer=0x00181063,
            RescaleSlope="1e3",
            NumberOfFrames=None,
            RequestAttributesSequence=DicomSequence([ds(ScheduledProcedureStepID="S1"), Dataset()]),
            ReferencedImageSequence=DicomSequence(),
        )
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.add(DataElement(0x00091010, "LO", "private"))
        dataset.add(DataElement(0x00080000, "UL", 42))  # a group length: dropped
        dataset.add(DataElement(0x00181050, "DS", ["1.5", "", "2"]))  # SpatialResolution with an empty value
        dataset.add(DataElement(0x00280106, "US", [1, 2]))  # SmallestImagePixelValue as multi-valued US
        dataset.add(DataElement(0x00186020, "SL", -5))  # ReferencePixelX0
        dataset.add(DataElement(0x00181060, "DS", "nan"))  # TriggerTime: not a JSON number
        dataset.add(DataElement(0x00189087, "FD", 1.25))  # DiffusionBValue
        dataset.add(DataElement(0x00291030, "OB", b"\x01\x02\x03"))  # private
        result = self.one(wire(dataset))
        self.assertEqual(list(result), sorted(result))
        self.assertTrue(all(k == k.upper() and len(k) == 8 for k in result))
        self.assertEqual(
            result["00100010"],
            {
                "vr": "PN",
                "Value": [
                    {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
                ],
            },
        )
        self.assertEqual(result["00080090"], {"vr": "PN"})
        self.assertEqual(result["00200013"], {"vr": "IS", "Value": [7]})
        self.assertEqual(result["00180050"], {"vr": "DS", "Value": [1.5]})
        self.assertEqual(result["00280030"], {"vr": "DS", "Value": [0.5, 0.25]})
        self.assertEqual(result["00281053"], {"vr": "DS", "Value": [1000.0]})
        self.assertEqual(result["00181050"], {"vr": "DS", "Value": [1.5, None, 2]})
        self.assertEqual(result["00181060"], {"vr": "DS", "Value": [None]})  # JSON has no NaN
        self.assertEqual(result["00080008"], {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]})
        self.assertEqual(result["00280010"], {"vr": "US", "Value": [512]})
        self.assertEqual(result["00280106"], {"vr": "US", "Value": [1, 2]})
        self.assertEqual(result["00186020"], {"vr": "SL", "Value": [-5]})
        self.assertEqual(result["00189087"], {"vr": "FD", "Value": [1.25]})
        self.assertEqual(result["00280009"], {"vr": "AT", "Value": ["00181063"]})
        self.assertEqual(result["00280008"], {"vr": "IS"})
        self.assertEqual(
            result["00400275"],
            {"vr": "SQ", "Value": [{"00400009": {"vr": "SH", "Value": ["S1"]}}, {}]},
        )
        self.assertEqual(result["00081140"], {"vr": "SQ"})
        # Private elements read in Implicit VR without their dictionary are UN: base64.
        self.assertEqual(result["00091010"], {"vr": "UN", "InlineBinary": "cHJpdmF0ZSA="})  # "private "
        self.assertEqual(result["00291030"], {"vr": "UN", "InlineBinary": "AQIDAA=="})
        self.assertEqual(result["00080005"], {"vr": "CS", "Value": ["ISO_IR 192"]})
        self.assertNotIn("00080000", result)

    def test_ds_digits_are_kept(self) -> None:
        body = dataset_json(wire(ds(SliceThickness="1.50", PixelSpacing=["+0.500", "5."])))
        self.assertIn('"00180050":{"vr":"DS","Value":[1.50]}', body)
        self.assertIn('"00280030":{"vr":"DS","Value":[0.500,5.0]}', body)

    def test_binary_is_inline(self) -> None:
        dataset = Dataset()
        dataset.add(DataElement(0x00420011, "OB", b"\x00\x01\xfe\xff"))  # EncapsulatedDocument
        self.assertEqual(
            json.loads(dataset_json(dataset)), {"00420011": {"vr": "OB", "InlineBinary": "AAH+/w=="}}
        )

    def test_float_single_is_short(self) -> None:
        dataset = Dataset()
        dataset.add(DataElement(0x00182043, "FL", [0.1, float("inf")]))  # LocalizingCursorPosition
        self.assertEqual(json.loads(dataset_json(wire(dataset)))["00182043"]["Value"], [0.1, None])

    def test_results_are_decoded_from_their_character_set(self) -> None:
        other = ds(PatientID="X", IssuerOfPatientID="Hôpital Saint-Éloi")
        latin1 = ds(
            SOPInstanceUID=SOP,
            PatientName="Müller^Jürgen",
            InstitutionName="Hôpital",
            OtherPatientIDsSequence=DicomSequence([other]),
        )
        latin1.SpecificCharacterSet = "ISO_IR 100"
        japanese = ds(SOPInstanceUID=SOP + ".2", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう")
        japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        self.pacs.results = [wire(latin1), wire(japanese)]
        _, body = self.fetch(f"/aets/PACS/studies/{STUDY}/series/{SERIES}/instances")
        self.assertIn("Müller".encode(), body)  # UTF-8 on the wire
        first, second = json.loads(body)
        self.assertEqual(first["00100010"]["Value"], [{"Alphabetic": "Müller^Jürgen"}])
        self.assertEqual(first["00080080"]["Value"], ["Hôpital"])
        [item] = first["00101002"]["Value"]
        self.assertEqual(item["00100021"]["Value"], ["Hôpital Saint-Éloi"])
        self.assertEqual(first["00080005"]["Value"], ["ISO_IR 192"])
        self.assertEqual(second["00100010"]["Value"][0]["Ideographic"], "山田^太郎")


class NegotiationTests(QidoTestCase):
    def content_type(self, accept: str | None, query: str = "") -> tuple[int, list[bytes] | None]:
        headers = {"Accept": accept} if accept is not None else {}
        response, _ = self.fetch(f"/aets/PACS/studies{query}", headers=headers)
        return response.code, response.headers.getRawHeaders(b"Content-Type")

    def test_accepted(self) -> None:
        cases = {
            None: DICOM_JSON,
            "*/*": DICOM_JSON,
            "application/*": DICOM_JSON,
            "application/dicom+json": DICOM_JSON,
            "application/dicom+json; charset=utf-8": DICOM_JSON,
            "application/json": [b"application/json"],
            "application/json, application/dicom+json;q=0.9": [b"application/json"],
            "application/dicom+json;q=0.5, application/json;q=0.8": [b"application/json"],
            "text/html, */*;q=0.1": DICOM_JSON,
            # */* covers both; with DICOM JSON refused, plain JSON is still acceptable.
            "application/dicom+json;q=0, */*": [b"application/json"],
            "application/dicom+json;q=0, application/*": [b"application/json"],
            'multipart/related; type="application/dicom+xml", application/json;q=0.1': [b"application/json"],
        }
        for accept, expected in cases.items():
            self.assertEqual(self.content_type(accept), (200, expected), accept)

    def test_accept_query_parameter_wins(self) -> None:
        code, media = self.content_type("application/dicom+json", "?accept=application/json")
        self.assertEqual((code, media), (200, [b"application/json"]))

    def test_not_acceptable(self) -> None:
        for accept in (
            "application/dicom+xml",
            'multipart/related; type="application/dicom+xml"',
            "image/jpeg",
            "application/dicom+json;q=0",
            "application/dicom+json; charset=iso-8859-1",
        ):
            response, body = self.fetch("/aets/PACS/studies", headers={"Accept": accept})
            self.assertError(response, body, 406, "application/dicom+json", "dicom+xml")
        self.assertEqual(self.pacs.finds, [])


class SearchMediaTests(SynchronousTestCase):
    """`select_search_media` keeps its answers by Accept (and ``accept=``): the same
    answer the second time, per pair of values, and never a refusal kept as an answer."""

    def test_answers_are_per_header_and_parameter(self) -> None:
        cases = [
            ("application/json", None, "application/json"),
            ("application/dicom+json", None, "application/dicom+json"),
            ("application/dicom+json", "application/json", "application/json"),
            ("application/json", "*/*", "application/json"),  # no wildcards in accept=
            (None, None, "application/dicom+json"),
            ("*/*", "", "application/dicom+json"),
        ]
        for _ in range(2):  # the second round from what the first kept
            for header, param, expected in cases:
                self.assertEqual(select_search_media(header, param), expected, (header, param))

    def test_refusals_are_raised_every_time(self) -> None:
        for _ in range(2):
            self.assertRaises(NotAcceptable, select_search_media, "application/dicom+xml", None)
            self.assertRaises(NotAcceptable, select_search_media, "image/jpeg", "application/dicom+xml")

    def test_long_and_many_values_are_answered_alike(self) -> None:
        long = ", ".join(f"text/x-{i}" for i in range(100)) + ", application/json"
        self.assertEqual(select_search_media(long, None), "application/json")
        for i in range(200):
            self.assertEqual(select_search_media(f"application/json, text/x-{i}", None), "application/json")
        self.assertEqual(select_search_media("application/dicom+json", None), "application/dicom+json")


class BadRequestTests(QidoTestCase):
    def test_bad_parameters_are_400_naming_them(self) -> None:
        cases = {
            "?PatientNmae=x": "PatientNmae",
            "?includefield=Bogus": "Bogus",
            "?StudyDate=2020-01-01": "StudyDate",
            "?StudyInstanceUID=1.2.abc": "StudyInstanceUID",
            "?limit=-1": "limit",
            "?offset=x": "offset",
            "?PatientID=a&PatientID=b": "PatientID",
            "?includefield=all&includefield=PatientAge": "all",
            "?fuzzymatching=maybe": "fuzzymatching",
            "?Modality=CT": "Modality",
            "?PatientID=a%5Cb": "backslash",
        }
        for query, named in cases.items():
            response, body = self.fetch(f"/aets/PACS/studies{query}")
            self.assertError(response, body, 400, named)
        self.assertEqual(self.pacs.finds, [])

    def test_instance_level_value_checks(self) -> None:
        response, body = self.fetch("/aets/PACS/instances?Rows=abc")
        self.assertError(response, body, 400, "Rows", "abc")

    def test_malformed_path_uid_is_400(self) -> None:
        for path in (
            "/aets/PACS/studies/1.2.abc/series",
            f"/aets/PACS/studies/{STUDY}/series/1..2/instances",
            "/aets/PACS/studies/01.2/instances",
        ):
            response, body = self.fetch(path)
            self.assertError(response, body, 400, "in the path")
        self.assertEqual(self.pacs.finds, [])

    def test_query_not_utf8_is_400(self) -> None:
        response, body = self.fetch("/aets/PACS/studies?PatientName=%FF")
        self.assertError(response, body, 400, "UTF-8")

    def test_unknown_aet_is_404_before_anything_else(self) -> None:
        for path in ("/aets/NOPE/studies", "/aets/NOPE/studies/1.2.abc/series?limit=x"):
            response, body = self.fetch(path, headers={"Accept": "image/png"})
            self.assertError(response, body, 404, "NOPE")

    def test_unsupported_parameters_are_ignored(self) -> None:
        self.assertEqual(self.search("/aets/PACS/studies?_=1700000000&charset=utf-8&token=abc"), [])


class UpstreamErrorTests(QidoTestCase):
    def failing(self, error: Exception, results: int = 2) -> tuple[Any, bytes]:
        self.pacs.hold = True
        d = self.start("/aets/PACS/studies")
        [call] = self.pacs.finds
        call.send(*(study(n) for n in range(results)))
        self.assertNoResult(d)  # nothing is written before the find ends
        call.deferred.errback(error)
        return self.finish(d)

    def test_failure_status_is_502_and_no_partial_results(self) -> None:
        response, body = self.failing(UpstreamError("C-FIND failed with status 0xA700 (Out of resources)"))
        self.assertError(response, body, 502, "0xA700", "Out of resources")

    def test_timeout_is_504(self) -> None:
        response, body = self.failing(UpstreamTimeout("PACS sent no C-FIND response within 30000 ms"))
        self.assertError(response, body, 504, "30000 ms")

    def test_pool_exhausted_is_503_with_retry_after(self) -> None:
        response, body = self.failing(ServiceUnavailable("no free association to PACS", retry_after=5), 0)
        self.assertError(response, body, 503, "association")
        self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"5"])

    def test_s3_backend_is_501(self) -> None:
        response, body = self.fetch("/aets/BUCKET/studies")
        self.assertError(response, body, 501, "index")

    def test_unexpected_error_is_500(self) -> None:
        self.pacs.find = lambda *a, **k: fail(RuntimeError("boom"))  # type: ignore[method-assign]
        response, body = self.fetch("/aets/PACS/studies")
        self.assertError(response, body, 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


    def test_result_that_cannot_be_encoded_stops_the_find_and_is_500(self) -> None:
        self.pacs.hold = True
        d = self.start("/aets/PACS/studies")
        [call] = self.pacs.finds
        broken = study(1)
        broken.add(DataElement(0x00201206, "US", "many", validation_mode=0))  # not a number
        call.send(study(0), broken, study(2))
        self.clock.advance(0)
        self.assertTrue(call.cancelled)
        response, body = self.finish(d)
        self.assertError(response, body, 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class LimitOffsetTests(QidoTestCase):
    def test_offset_limit_and_more_results_warning(self) -> None:
        self.pacs.results = [study(n) for n in range(10)]
        response, body = self.fetch("/aets/PACS/studies?limit=5&offset=2")
        self.assertEqual(self.pacs.finds[0].limit, 8)
        self.assertEqual(self.pacs.finds[0].sent, 8)  # the backend stopped after offset + limit + 1
        uids = [r["0020000D"]["Value"][0] for r in json.loads(body)]
        self.assertEqual(uids, [f"{STUDY}.{n}" for n in range(2, 7)])
        self.assertEqual(
            self.warnings(response), [f"299 {ROOT}/aets/PACS: {MORE_RESULTS_WARNING}"]
        )

    def test_last_page_has_no_warning(self) -> None:
        self.pacs.results = [study(n) for n in range(7)]
        response, body = self.fetch("/aets/PACS/studies?limit=5&offset=2")
        self.assertEqual(len(json.loads(body)), 5)
        self.assertEqual(self.warnings(response), [])

    def test_offset_past_the_end(self) -> None:
        self.pacs.results = [study(n) for n in range(3)]
        self.assertEqual(self.search("/aets/PACS/studies?offset=5"), [])

    def test_limit_zero(self) -> None:
        self.pacs.results = [study(1)]
        response, body = self.fetch("/aets/PACS/studies?limit=0")
        self.assertEqual(body, b"[]")
        self.assertEqual(len(self.warnings(response)), 1)

    def test_default_limit(self) -> None:
        self.pacs.results = [study(n) for n in range(DEFAULT_LIMIT + 5)]
        response, body = self.fetch("/aets/PACS/studies")
        self.assertEqual(len(json.loads(body)), DEFAULT_LIMIT)
        self.assertEqual(self.pacs.finds[0].sent, DEFAULT_LIMIT + 1)
        self.assertIn(MORE_RESULTS_WARNING, self.warnings(response)[0])

    def test_gateway_filtering_stops_the_find_itself(self) -> None:
        # StudyDescription is optional: this PACS ignores it, the gateway filters.
        self.pacs.hold = True
        d = self.start("/aets/PACS/studies?StudyDescription=Chest*&limit=2")
        [call] = self.pacs.finds
        self.assertIsNone(call.limit)
        call.send(
            study(1, StudyDescription="Head"),
            study(2, StudyDescription="Chest PA"),
            study(3, StudyDescription="Knee"),
            study(4, StudyDescription="Chest lat"),
            study(5),  # not carried: kept
        )
        self.assertNoResult(d)
        self.assertFalse(call.cancelled)
        call.send(study(6, StudyDescription="Chest again"), study(7, StudyDescription="Chest too"))
        self.assertFalse(call.cancelled)  # cancelled outside the backend's call stack
        self.clock.advance(0)
        self.assertTrue(call.cancelled)
        response, body = self.finish(d)
        self.assertEqual(response.code, 200)
        uids = [r["0020000D"]["Value"][0] for r in json.loads(body)]
        self.assertEqual(uids, [f"{STUDY}.2", f"{STUDY}.4"])
        self.assertIn(MORE_RESULTS_WARNING, self.warnings(response)[0])

    def test_combined_date_time_is_filtered_by_the_gateway(self) -> None:
        self.pacs.results = [
            study(1, StudyDate="20200101", StudyTime="2200"),
            study(2, StudyDate="20200101", StudyTime="2330"),
            study(3, StudyDate="20200102", StudyTime="0030"),
            study(4, StudyDate="20200102", StudyTime="0130"),
        ]
        results = self.search("/aets/PACS/studies?StudyDate=20200101-20200102&StudyTime=2300-0100")
        ident = self.pacs.finds[0].identifier
        self.assertEqual((ident.StudyDate, ident.StudyTime), ("20200101-20200102", None))
        self.assertEqual([r["0020000D"]["Value"][0] for r in results], [f"{STUDY}.2", f"{STUDY}.3"])


class WarningTests(QidoTestCase):
    def test_fuzzymatching_warning(self) -> None:
        response, _ = self.fetch("/aets/PACS/studies?fuzzymatching=true&PatientName=doe")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.warnings(response), [f"299 {ROOT}/aets/PACS: {FUZZY_WARNING}"])
        response, _ = self.fetch("/aets/PACS/studies?fuzzymatching=false")
        self.assertEqual(self.warnings(response), [])

    def test_several_warnings(self) -> None:
        self.pacs.results = [study(1), study(2)]
        response, _ = self.fetch("/aets/PACS/studies?fuzzymatching=true&emptyvaluematching=true&limit=1")
        texts = self.warnings(response)
        self.assertEqual(len(texts), 3)
        self.assertIn("emptyvaluematching", texts[1])


class HeadTests(QidoTestCase):
    def test_head_does_not_search(self) -> None:
        response, body = self.fetch("/aets/PACS/studies?fuzzymatching=true", method="HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), DICOM_JSON)
        self.assertEqual(len(self.warnings(response)), 1)
        self.assertEqual(self.pacs.finds, [])

    def test_head_checks_like_get(self) -> None:
        self.assertEqual(self.fetch("/aets/PACS/studies?limit=x", method="HEAD")[0].code, 400)
        self.assertEqual(self.fetch("/aets/NOPE/studies", method="HEAD")[0].code, 404)
        response, _ = self.fetch("/aets/PACS/series", method="HEAD", headers={"Accept": "image/png"})
        self.assertEqual(response.code, 406)
        self.assertEqual(self.pacs.finds, [])


class CancellationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        self.pacs.hold = True
        app = GatewayApp({"PACS": self.pacs}, self.clock)
        self.site = make_site(app.resource(), self.clock, request_timeout=30.0)

    def test_client_disconnect_cancels_the_find(self) -> None:
        conn = Connection(self.site)
        conn.send("GET", "/aets/PACS/studies?PatientID=P1")
        [call] = self.pacs.finds
        call.send(study(1))
        self.assertFalse(call.cancelled)
        conn.lose()
        self.assertTrue(call.cancelled)
        self.assertEqual(self.site.inflight, 0)

    def test_request_timeout_cancels_the_find_and_is_504(self) -> None:
        conn = Connection(self.site)
        conn.send("GET", "/aets/PACS/studies")
        [call] = self.pacs.finds
        self.clock.advance(30)
        self.assertTrue(call.cancelled)
        head, _ = conn.head_and_body()
        self.assertTrue(head.startswith(b"HTTP/1.1 504 "), head)

    def test_response_through_the_site(self) -> None:
        conn = Connection(self.site)
        conn.send("GET", "/aets/PACS/studies")
        [call] = self.pacs.finds
        call.send(study(1))
        call.finish()
        head, body = conn.head_and_body()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"Content-Type: application/dicom+json", head)
        self.assertIn(b"Content-Length: %d" % len(body), head)
        [result] = json.loads(body)
        self.assertEqual(
            result["00081190"]["Value"], [f"http://gateway.example/aets/PACS/studies/{STUDY}.1"]
        )


# The same requests with results as a PACS delivers them (bytes, `RawIdentifier`): their
# JSON is written from the bytes (`SearchTarget.raw_result`) unless the gateway filters.


class RawResourceTests(ResourceTests):
    raw = True


class RawRetrieveURLTests(RetrieveURLTests):
    raw = True


class RawJSONModelTests(JSONModelTests):
    raw = True


class RawLimitOffsetTests(LimitOffsetTests):
    raw = True


class RawUpstreamErrorTests(UpstreamErrorTests):
    raw = True

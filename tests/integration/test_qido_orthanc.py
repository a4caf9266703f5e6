"""QIDO-RS through the real gateway (``twistd dicomrst``) to a real Orthanc, checked against Orthanc.

Each test starts its own Orthanc (with the DICOMweb plugin), loads `tests.support.qido_data` into it over
its REST API while the gateway starts (`tests.support.gateway.start_gateway`), and stops both by PID at
cleanup (trial has no per-class fixture that keeps processes across tests cleanly).

Ground truth, for which entities match a query: Orthanc's own QIDO-RS (``/dicom-web/...``) *and*
the expectation computed from what was uploaded (`qido_data.Manifest`); the gateway must agree
with both. Where Orthanc cannot be the judge the test says so and uses the computed expectation
(or Orthanc's REST ``/tools/find``):

* combined date-time range matching (PS3.4 C.2.2.2.5): Orthanc's QIDO matches date and time
  separately; the gateway does the combined match itself;
* sequence item keys: Orthanc matches on none (QIDO or C-FIND) but returns the sequence in
  C-FIND answers, which the gateway filters on; a series without the sequence is kept (an SCP
  that does not support a key answers it empty or not at all, and that is all the gateway sees);
* values that need percent-encoding: Orthanc's DICOMweb plugin (1.7) does not percent-decode
  query values (``PatientID=QIDO%2DSMITH`` finds nothing), so it is sent ``*``, ``?``, ``^``
  and ``,`` as they are, and a value with non-ASCII characters, ``&``, ``=`` or spaces is judged
  by ``/tools/find`` instead (the gateway always gets the fully percent-encoded form);
* Orthanc's ``?`` stands for one byte of UTF-8, so it does not match one accented letter;
* Orthanc answers C-FIND in its ``DefaultEncoding`` (Latin-1 unless configured) whatever the
  query's character set, dropping characters Latin-1 lacks; names outside Latin-1 are checked
  against an Orthanc configured with ``DefaultEncoding: Utf8``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import treq
from dicomweb_client.api import DICOMwebClient
from twisted.internet import threads
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.support import peers, qido_data
from tests.support.gateway import Gateway, Response, pacs_aet, start_gateway
from tests.support.qido_data import Instance, Manifest
from tests.support.qido_orthanc import (
    DEFAULTS,
    ORTHANC_RAW,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    UNIQUE,
    Params,
    query_string,
    resource,
    unique_keys,
    value,
    values,
)

TIMEOUT = 180
AET = "ORTHANC"
SERVICE = f"/aets/{AET}"
DICOM_JSON = "application/dicom+json"
MORE_RESULTS = "There are additional results that can be requested"
FUZZY = "fuzzymatching parameter is not supported"

RETRIEVE_URL = "00081190"

_TAG = re.compile(r"^[0-9A-F]{8}$")
_NUMBER_VRS = frozenset("IS DS US SS UL SL FL FD SV UV".split())
_PN_GROUPS = frozenset(("Alphabetic", "Ideographic", "Phonetic"))
_STRING_VRS = frozenset("AE AS CS DA DT LO LT SH ST TM UC UI UR UT".split())

#: A value Orthanc's QIDO can be sent: `ORTHANC_RAW` and what needs no percent-encoding.
_ORTHANC_VALUE = re.compile(r"[A-Za-z0-9_.~^*?,-]*")


def pn_groups(name: str) -> dict[str, str]:
    """``A=I=P`` → the DICOM JSON PN object (empty groups left out)."""
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("="), strict=False))
    return {k: v for k, v in groups.items() if v}


def check_dicom_json(case: TestCase, results: Any, where: str) -> None:
    """The DICOM JSON model (PS3.18 F.2): an array of objects keyed by sorted uppercase tags."""
    case.assertIsInstance(results, list, where)
    for item in results:
        _check_object(case, item, where)


def _check_object(case: TestCase, obj: Any, where: str) -> None:
    case.assertIsInstance(obj, dict, where)
    keys = list(obj)
    for key in keys:
        case.assertRegex(key, _TAG, f"{where}: key {key!r}")
    case.assertEqual(keys, sorted(keys), f"{where}: keys not in ascending order")
    for key, element in obj.items():
        here = f"{where} {key}"
        case.assertIsInstance(element, dict, here)
        case.assertIn("vr", element, here)
        vr = element["vr"]
        case.assertRegex(vr, r"^[A-Z]{2}$", here)
        case.assertLessEqual(set(element), {"vr", "Value", "InlineBinary", "BulkDataURI"}, here)
        if "Value" not in element:
            continue
        items = element["Value"]
        case.assertIsInstance(items, list, here)
        case.assertTrue(items, f"{here}: an empty Value array (leave Value out instead)")
        for item in items:
            if vr == "SQ":
                _check_object(case, item, here)
            elif item is None:
                continue
            elif vr == "PN":
                case.assertIsInstance(item, dict, f"{here}: PN values are objects")
                case.assertLessEqual(set(item), _PN_GROUPS, here)
                for group in item.values():
                    case.assertIsInstance(group, str, here)
            elif vr in _NUMBER_VRS:
                case.assertIsInstance(item, int | float, f"{here}: {vr} values are numbers: {item!r}")
                case.assertFalse(isinstance(item, bool), here)
            elif vr in _STRING_VRS or vr == "AT":
                case.assertIsInstance(item, str, here)


class _Records(logging.Handler):
    """Keeps the messages logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@attrs.define(eq=False)
class Stack:
    """One Orthanc loaded with `qido_data` and one gateway in front of it."""

    orthanc: peers.Orthanc
    gw: Gateway
    data: Manifest
    #: Sends URLs as they are (treq would percent-encode '^' in a query; Orthanc needs it raw).
    raw: Agent


async def start_stack(
    case: TestCase, orthanc_config: Mapping[str, Any] | None = None, **gateway: Any
) -> Stack:
    """Orthanc, then the gateway starting while the data is uploaded; all stopped at cleanup."""
    orthanc = await peers.start_orthanc(case, aet=AET, extra_config=orthanc_config)
    pool = HTTPConnectionPool(peers._reactor(), persistent=True)
    case.addCleanup(pool.closeCachedConnections)  # before Orthanc stops (cleanups run last-in first)
    starting = start_gateway(case, [pacs_aet(AET, orthanc.host, orthanc.dicom_port)], **gateway)
    data = qido_data.manifest()
    try:
        for instance in data.instances:
            answer = await orthanc.upload(instance.data)
            case.assertEqual(answer.get("Status"), "Success", answer)
    finally:
        gw = await starting
    return Stack(orthanc, gw, data, Agent(peers._reactor(), pool=pool))


class QidoTestCase(TestCase):
    timeout = TIMEOUT

    stack: Stack

    # -- requests -------------------------------------------------------------------------

    async def gateway(
        self,
        path: str,
        params: Params = (),
        headers: Mapping[str, str] | None = None,
        gw: Gateway | None = None,
        prefix: str = "",
    ) -> tuple[Response, list[dict[str, Any]]]:
        """GET ``{prefix}/aets/ORTHANC{path}?{params}``; a 200 of well-formed DICOM JSON."""
        gw = gw or self.stack.gw
        url = prefix + SERVICE + path + query_string(params)
        response = await gw.get(url, headers=dict(headers or {}))
        where = f"gateway GET {url}"
        self.assertEqual(response.code, 200, f"{where}: {response.body!r}\n{gw.log_tail()}")
        self.assertEqual(response.header("Content-Type"), DICOM_JSON, where)
        results = response.json()
        check_dicom_json(self, results, where)
        return response, results

    async def orthanc(self, path: str, params: Params = ()) -> list[dict[str, Any]]:
        """Orthanc's own QIDO-RS answer to the same search.

        Orthanc 1.10's DICOMweb plugin does not percent-decode query values (``QIDO%2DSMITH``
        finds nothing), so values are sent as they are, and only values that need no encoding
        can be asked about (others are judged by `orthanc_find` or computed).
        """
        items = list(params.items()) if isinstance(params, Mapping) else list(params)
        for name, text in items:
            if not _ORTHANC_VALUE.fullmatch(text):
                raise AssertionError(f"Orthanc's QIDO cannot be asked {name}={text!r}: it needs encoding")
        url = self.stack.orthanc.url + "/dicom-web" + path + query_string(params, safe=ORTHANC_RAW)
        headers = Headers({b"Accept": [DICOM_JSON.encode()]})
        response = await self.stack.raw.request(b"GET", url.encode("ascii"), headers)
        body = (await treq.content(response)).decode("utf-8")
        self.assertEqual(response.code, 200, f"Orthanc GET {url}: {body}")
        results: list[dict[str, Any]] = json.loads(body)
        return results

    async def orthanc_find(self, level: str, query: Mapping[str, str]) -> set[str]:
        """Orthanc's REST ``/tools/find``: the unique keys of the matches at ``level``."""
        body = json.dumps({"Level": level, "Expand": True, "Query": dict(query)}).encode("utf-8")
        response = await self.stack.orthanc.http.post(self.stack.orthanc.url + "/tools/find", data=body)
        text = await response.text(encoding="utf-8")
        self.assertEqual(response.code, 200, text)
        tag = {"Study": "StudyInstanceUID", "Series": "SeriesInstanceUID", "Instance": "SOPInstanceUID"}[
            level
        ]
        return {found["MainDicomTags"][tag] for found in json.loads(text)}

    async def assert_search(
        self, path: str, params: Params, expected: set[str], orthanc_agrees: bool = True
    ) -> list[dict[str, Any]]:
        """The gateway finds exactly ``expected``; so does Orthanc's QIDO unless told it cannot."""
        _, results = await self.gateway(path, params)
        where = f"{path}{query_string(params)}"
        self.assertEqual(
            unique_keys(results, path), expected, f"gateway {where}: {self.names(results, path)}"
        )
        self.assertEqual(len(results), len(expected), f"gateway {where}: duplicates")
        if orthanc_agrees:
            truth = await self.orthanc(path, params)
            self.assertEqual(
                unique_keys(truth, path), expected, f"Orthanc {where}: {self.names(truth, path)}"
            )
        return results

    def names(self, results: Sequence[Mapping[str, Any]], path: str) -> list[str]:
        """Labels of the results, for failure messages."""
        labels = {}
        for i in self.stack.data.instances:
            labels.setdefault(i.study, "study:" + i.label)
            labels.setdefault(i.series, "series:" + i.label)
            labels[i.sop] = i.label
        return sorted(labels.get(k, k) for k in unique_keys(results, path))

    # -- expectations ---------------------------------------------------------------------

    def expect(self, path: str, predicate: Callable[[Instance], bool] = lambda i: True) -> set[str]:
        data = self.stack.data
        return {"studies": data.studies, "series": data.series, "instances": data.sops}[resource(path)](
            predicate
        )

    def check_retrieve_urls(self, results: Sequence[Mapping[str, Any]], path: str, base: str) -> None:
        """RetrieveURL is ``{base}/aets/ORTHANC/studies/{s}[/series/{se}[/instances/{i}]]``."""
        level = resource(path)
        for result in results:
            url = base + SERVICE + "/studies/" + value(result, STUDY_UID)
            if level in ("series", "instances"):
                url += "/series/" + value(result, SERIES_UID)
            if level == "instances":
                url += "/instances/" + value(result, SOP_UID)
            self.assertEqual(values(result, RETRIEVE_URL), [url], path)
            self.assertEqual(result[RETRIEVE_URL]["vr"], "UR")


class ResourceTests(QidoTestCase):
    async def test_every_resource_finds_what_orthanc_finds(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        everything = {"/studies": data.studies(), "/series": data.series(), "/instances": data.sops()}
        for path, expected in everything.items():
            results = await self.assert_search(path, (), expected)
            self.check_results(path, results, stack.gw.url)

        for study in sorted(data.studies()):
            for path in (f"/studies/{study}/series", f"/studies/{study}/instances"):
                results = await self.assert_search(
                    path, (), self.expect(path, lambda i, s=study: i.study == s)
                )
                self.check_results(path, results, stack.gw.url)
                for result in results:
                    self.assertEqual(value(result, STUDY_UID), study, path)
        for series in sorted(data.series()):
            study = next(i.study for i in data.instances if i.series == series)
            path = f"/studies/{study}/series/{series}/instances"
            results = await self.assert_search(path, (), data.sops(lambda i, se=series: i.series == se))
            self.check_results(path, results, stack.gw.url)
            for result in results:
                self.assertEqual((value(result, STUDY_UID), value(result, SERIES_UID)), (study, series))

    def check_results(self, path: str, results: Sequence[Mapping[str, Any]], base: str) -> None:
        """Default attributes present, unique keys of the upper levels, values as uploaded."""
        level = resource(path)
        data = self.stack.data
        for result in results:
            for tag in DEFAULTS[level]:
                self.assertIn(tag, result, f"{path}: {tag} missing")
            self.assertNotIn("00080052", result, "QueryRetrieveLevel is a C-FIND artefact")
            if level == "studies":
                study = value(result, STUDY_UID)
                members = data.select(lambda i, s=study: i.study == s)
                first = members[0]
                self.assertEqual(value(result, "00100020"), first.patient_id)
                self.assertEqual(
                    (value(result, "00080020"), value(result, "00080030")),
                    (first.study_date, first.study_time),
                )
                self.assertEqual(set(values(result, "00080061")), {i.modality for i in members}, study)
                self.assertEqual(value(result, "00201208"), len(members))
                self.assertEqual(value(result, "00201206"), len({i.series for i in members}))
            elif level == "series":
                self.assertIn(STUDY_UID, result, f"{path}: StudyInstanceUID missing at series level")
                series = value(result, SERIES_UID)
                members = data.select(lambda i, se=series: i.series == se)
                self.assertEqual(value(result, STUDY_UID), members[0].study)
                self.assertEqual(value(result, "00080060"), members[0].modality)
                self.assertEqual(value(result, "00200011"), members[0].series_number)
                self.assertEqual(value(result, "00201209"), len(members))
            else:
                self.assertIn(STUDY_UID, result, f"{path}: StudyInstanceUID missing at instance level")
                self.assertIn(SERIES_UID, result, f"{path}: SeriesInstanceUID missing at instance level")
                instance = next(i for i in data.instances if i.sop == value(result, SOP_UID))
                self.assertEqual(
                    (value(result, STUDY_UID), value(result, SERIES_UID)), (instance.study, instance.series)
                )
                self.assertEqual(value(result, "00200013"), instance.instance_number)
        self.check_retrieve_urls(results, path, base)


class MatchingTests(QidoTestCase):
    async def test_matching_parameters_find_what_orthanc_finds(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        generated = data.generated[0]
        gen, gen_series = generated.study, generated.series
        uid_list = sorted(data.studies(lambda i: i.label in ("ct", "us", "x1")))
        series_list = sorted(data.series(lambda i: i.label in ("mr", "generated-3-1")))

        def pn(pattern: str) -> Callable[[Instance], bool]:
            return lambda i: fnmatch.fnmatchcase(i.patient_name, pattern)

        def dates(low: str, high: str) -> Callable[[Instance], bool]:
            return lambda i: (not low or i.study_date >= low) and (not high or i.study_date <= high)

        cases: list[tuple[str, dict[str, str], Callable[[Instance], bool]]] = [
            ("/studies", {"PatientID": "QIDO-DOE-1"}, lambda i: i.patient_id == "QIDO-DOE-1"),
            ("/studies", {"00100020": "QIDO-SMITH"}, lambda i: i.patient_id == "QIDO-SMITH"),
            ("/studies", {"PatientName": "Doe*"}, pn("Doe*")),
            ("/studies", {"PatientName": "?oe*"}, pn("?oe*")),
            ("/studies", {"PatientName": "Smith^Anna"}, pn("Smith^Anna")),
            ("/studies", {"StudyDate": "20200101"}, dates("20200101", "20200101")),
            ("/studies", {"StudyDate": "20200101-20210704"}, dates("20200101", "20210704")),
            ("/studies", {"StudyDate": "-20200101"}, dates("", "20200101")),
            ("/studies", {"StudyDate": "20221111-"}, dates("20221111", "")),
            # One date and a time range: a plain pair of keys, matched by the PACS.
            (
                "/studies",
                {"StudyDate": "20200101", "StudyTime": "100000-130000"},
                lambda i: i.study_date == "20200101" and "100000" <= i.study_time <= "130000",
            ),
            (
                "/studies",
                {"ModalitiesInStudy": "CT"},
                lambda i: i.study in data.studies_with_modality(["CT"]),
            ),
            (
                "/studies",
                {"ModalitiesInStudy": "MR"},
                lambda i: i.study in data.studies_with_modality(["MR"]),
            ),
            ("/studies", {"StudyInstanceUID": ",".join(uid_list)}, lambda i: i.study in uid_list),
            ("/studies", {"AccessionNumber": "ACC-nm"}, lambda i: i.label.startswith("nm-")),
            ("/studies", {"PatientID": "NO-SUCH-PATIENT"}, lambda i: False),
            ("/series", {"Modality": "MR"}, lambda i: i.modality == "MR"),
            ("/series", {"Modality": "NM", "PatientID": "QIDO-SMITH"}, lambda i: i.modality == "NM"),
            ("/series", {"SeriesNumber": "2"}, lambda i: i.series_number == 2),
            ("/series", {"PatientName": "?oe*"}, pn("?oe*")),
            ("/series", {"StudyDate": "20210704"}, dates("20210704", "20210704")),
            ("/series", {"StudyInstanceUID": ",".join(uid_list)}, lambda i: i.study in uid_list),
            ("/series", {"SeriesInstanceUID": ",".join(series_list)}, lambda i: i.series in series_list),
            (f"/studies/{gen}/series", {"Modality": "OT"}, lambda i: i.study == gen and i.modality == "OT"),
            (
                f"/studies/{gen}/series",
                {"SeriesNumber": "3"},
                lambda i: i.study == gen and i.series_number == 3,
            ),
            ("/instances", {"InstanceNumber": "3"}, lambda i: i.instance_number == 3),
            ("/instances", {"PatientID": "QIDO-SMITH"}, lambda i: i.patient_id == "QIDO-SMITH"),
            (
                "/instances",
                {"Modality": "CT", "StudyDate": "20240101-"},
                lambda i: i.study == gen and i.modality == "CT",
            ),
            ("/instances", {"SeriesInstanceUID": ",".join(series_list)}, lambda i: i.series in series_list),
            (
                f"/studies/{gen}/instances",
                {"InstanceNumber": "3"},
                lambda i: i.study == gen and i.instance_number == 3,
            ),
            (
                f"/studies/{gen}/instances",
                {"Modality": "MR"},
                lambda i: i.study == gen and i.modality == "MR",
            ),
            (
                f"/studies/{gen}/series/{gen_series}/instances",
                {"InstanceNumber": "2"},
                lambda i: i.series == gen_series and i.instance_number == 2,
            ),
            (
                f"/studies/{gen}/series/{gen_series}/instances",
                {"SOPInstanceUID": generated.sop},
                lambda i: i.sop == generated.sop,
            ),
        ]
        for path, params, predicate in cases:
            expected = self.expect(path, predicate)
            no_match = params.get("PatientID") == "NO-SUCH-PATIENT"
            self.assertEqual(not expected, no_match, f"{path} {params}: the data should match something")
            await self.assert_search(path, params, expected)
            if not all(_ORTHANC_VALUE.fullmatch(v) for v in params.values()):
                continue
            # Sent as Orthanc is sent (wildcards and '^' unencoded): the same answer.
            _, results = await self.gateway(path + query_string(params, safe=ORTHANC_RAW))
            self.assertEqual(unique_keys(results, path), expected, f"{path} {params} unencoded")

    async def test_combined_date_time_range_is_matched_by_the_gateway(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        params = {"StudyDate": "20200101-20210704", "StudyTime": "100000-130000"}
        low, high = "20200101100000", "20210704130000"

        def combined(i: Instance) -> bool:
            return low <= i.study_date + i.study_time <= high

        def separately(i: Instance) -> bool:
            return "20200101" <= i.study_date <= "20210704" and "100000" <= i.study_time <= "130000"

        expected = data.studies(combined)
        # The data tells the two apart: 2020-06-15 23:59:59 is in the combined range only, and
        # 2020-01-01 08:30 and 2021-07-04 14:00 are in neither.
        self.assertIn(data.by_label("rtplan").study, expected - data.studies(separately))
        self.assertNotIn(data.by_label("fren").study, expected)
        self.assertNotIn(data.by_label("x1").study, expected)

        # Orthanc's QIDO matches date and time separately: the computed expectation judges.
        await self.assert_search("/studies", params, expected, orthanc_agrees=False)
        await self.assert_search("/series", params, data.series(combined), orthanc_agrees=False)
        await self.assert_search("/instances", params, data.sops(combined), orthanc_agrees=False)

        # Filtered by the gateway, paged by the gateway: one result a page, a C-CANCEL each time.
        _, everything = await self.gateway("/studies", params)
        order = [value(r, STUDY_UID) for r in everything]
        for offset in range(len(order) + 1):
            response, page = await self.gateway("/studies", {**params, "limit": "1", "offset": str(offset)})
            self.assertEqual([value(r, STUDY_UID) for r in page], order[offset : offset + 1])
            self.assertEqual(MORE_RESULTS in (response.header("Warning") or ""), offset < len(order) - 1)

    async def test_sequence_item_keys(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        gen = data.generated[0].study

        def kept(sps: str) -> Callable[[Instance], bool]:
            # A series whose RequestAttributesSequence holds no matching item is left out; one
            # without the sequence stays (Orthanc neither matches item keys nor answers the
            # sequence of a series that has none, so nothing tells it apart).
            return lambda i: not i.sps_ids or any(fnmatch.fnmatchcase(s, sps) for s in i.sps_ids)

        def strictly(sps: str) -> Callable[[Instance], bool]:
            return lambda i: any(fnmatch.fnmatchcase(s, sps) for s in i.sps_ids)

        cases = [
            ("/series", "RequestAttributesSequence.ScheduledProcedureStepID", "SPS-3B"),
            ("/series", "00400275.00400009", "SPS-0001"),
            ("/series", "RequestAttributesSequence.ScheduledProcedureStepID", "SPS-3*"),
            (f"/studies/{gen}/series", "RequestAttributesSequence.ScheduledProcedureStepID", "SPS-3A"),
            (f"/studies/{gen}/series", "00400275.00400009", "NO-SUCH-STEP"),
            (f"/studies/{gen}/instances", "RequestAttributesSequence.ScheduledProcedureStepID", "SPS-0001"),
            ("/instances", "00400275.00400009", "SPS-3B"),
        ]
        for path, name, sps in cases:
            scope = gen if path.startswith("/studies/") else None

            def in_path(i: Instance, scope: str | None = scope) -> bool:
                return scope is None or i.study == scope

            keeps, matches = kept(sps), strictly(sps)
            expected = self.expect(path, lambda i, p=keeps, f=in_path: f(i) and p(i))
            strict = self.expect(path, lambda i, p=matches, f=in_path: f(i) and p(i))
            # The gateway's filtering shows: something Orthanc answered is left out.
            self.assertLess(expected, self.expect(path, in_path), (path, sps))
            results = await self.assert_search(path, {name: sps}, expected, orthanc_agrees=False)
            self.assertLessEqual(strict, unique_keys(results, path))
            for result in results:
                items = values(result, "00400275")
                if items:  # what the gateway returns never contradicts the query
                    ids = [v for item in items for v in values(item, "00400009")]
                    self.assertTrue(any(fnmatch.fnmatchcase(s, sps) for s in ids), (path, sps, ids))
            # (Orthanc's own QIDO, 1.7, ignores the key: it answers as if it were not there.)


class ParameterTests(QidoTestCase):
    async def test_includefield_and_the_json_model(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        generated = data.generated[0]
        gen = generated.study
        multi = {"PatientID": "QIDO-MULTI"}

        # A comma-separated list, repeated, keywords and tags.
        params = [
            *multi.items(),
            ("includefield", "StudyDescription,00100030"),
            ("includefield", "PatientSex"),
        ]
        results = await self.assert_search("/studies", params, {gen})
        self.assertEqual(values(results[0], "00081030"), [generated.study_description])
        self.assertEqual(values(results[0], "00100030"), ["19700101"])
        self.assertEqual(values(results[0], "00100040"), ["O"])
        self.assertEqual(values(results[0], "00100010"), [{"Alphabetic": "Generated^Multi"}])

        params = [("includefield", "SeriesDate"), ("includefield", "00080031,SeriesDescription,PatientName")]
        results = await self.assert_search(
            f"/studies/{gen}/series", params, data.series(lambda i: i.study == gen)
        )
        for result in results:
            self.assertEqual(values(result, "00080021"), [generated.study_date])
            self.assertEqual(values(result, "00080031"), [generated.study_time])
            self.assertEqual(values(result, "00100010"), [{"Alphabetic": "Generated^Multi"}])  # upper level

        params = [("InstanceNumber", "1"), ("includefield", "PhotometricInterpretation,00280002,00280101")]
        results = await self.assert_search(
            f"/studies/{gen}/instances",
            params,
            data.sops(lambda i: i.study == gen and i.instance_number == 1),
        )
        for result in results:
            self.assertEqual(values(result, "00280004"), ["MONOCHROME2"])
            self.assertEqual(values(result, "00280002"), [1])
            self.assertEqual(values(result, "00280101"), [16])
            self.assertEqual(values(result, "00280010"), [8])  # Rows: a default, US as a number

        # includefield=all, at each level: the JSON model holds for everything returned.
        for path, present in (
            ("/studies", ["00081030", "00080062", "00100030"]),
            ("/series", ["0008103E", "00080021", "00400275"]),
            ("/instances", ["00280004", "00280101", "00280002"]),
        ):
            results = await self.assert_search(
                path,
                {**multi, "includefield": "all"},
                self.expect(path, lambda i: i.patient_id == "QIDO-MULTI"),
            )
            for tag in present:
                self.assertTrue(any(values(r, tag) for r in results), f"{path} includefield=all: {tag}")

        # An attribute of a lower level is not returned (PS3.18 §10.6.3.3).
        results = await self.assert_search(
            "/studies", {**multi, "includefield": "Rows,SeriesDescription"}, {gen}
        )
        self.assertNotIn("00280010", results[0])
        self.assertNotIn("0008103E", results[0])

        # Sequences: the series' RequestAttributesSequence items, as objects.
        results = await self.assert_search(
            f"/studies/{gen}/series",
            {"SeriesNumber": "3"},
            data.series(lambda i: i.study == gen and i.series_number == 3),
        )
        items = values(results[0], "00400275")
        self.assertEqual([value(item, "00400009") for item in items], list(qido_data.SPS_IDS[3]))

    async def test_limit_offset_and_fuzzymatching(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        gen = data.generated[0].study

        for path in ("/studies", "/instances", f"/studies/{gen}/instances"):
            _, everything = await self.gateway(path)
            key = UNIQUE[resource(path)]
            order = [value(r, key) for r in everything]
            self.assertEqual(
                set(order),
                self.expect(path, lambda i, p=path: p != f"/studies/{gen}/instances" or i.study == gen),
            )
            self.assertEqual(len(order), len(set(order)))
            pages: list[str] = []
            limit = 5
            for offset in range(0, len(order) + limit, limit):
                params = {"limit": str(limit), "offset": str(offset)}
                response, page = await self.gateway(path, params)
                got = [value(r, key) for r in page]
                self.assertEqual(got, order[offset : offset + limit], f"{path} {params}")
                warning = response.header("Warning") or ""
                self.assertEqual(
                    MORE_RESULTS in warning, offset + limit < len(order), f"{path} {params}: {warning!r}"
                )
                if MORE_RESULTS in warning:
                    self.assertTrue(warning.startswith(f"299 {stack.gw.url}{SERVICE}: "), warning)
                pages += got
                # The same page again: the same slice.
                _, again = await self.gateway(path, params)
                self.assertEqual([value(r, key) for r in again], got)
            self.assertEqual(pages, order)

        # Exactly all of them: no Warning; one fewer: the Warning.
        count = len(self.expect(f"/studies/{gen}/instances", lambda i: i.study == gen))
        response, page = await self.gateway(f"/studies/{gen}/instances", {"limit": str(count)})
        self.assertEqual((len(page), response.header("Warning")), (count, None))
        response, page = await self.gateway(f"/studies/{gen}/instances", {"limit": str(count - 1)})
        self.assertEqual(len(page), count - 1)
        self.assertIn(MORE_RESULTS, response.header("Warning") or "")
        # With match keys too.
        response, page = await self.gateway("/studies", {"PatientName": "?oe*", "limit": "2", "offset": "1"})
        self.assertEqual(len(page), 2)
        self.assertIn(MORE_RESULTS, response.header("Warning") or "")

        # fuzzymatching=true: accepted, a Warning, and literal matching only.
        literal = data.studies(lambda i: i.patient_name.startswith("Doe"))
        response, results = await self.gateway("/studies", {"PatientName": "Doe*", "fuzzymatching": "true"})
        self.assertIn(FUZZY, response.header("Warning") or "")
        self.assertEqual(unique_keys(results, "/studies"), literal)
        response, results = await self.gateway("/studies", {"PatientName": "Jon", "fuzzymatching": "true"})
        self.assertIn(FUZZY, response.header("Warning") or "")
        self.assertEqual(results, [])
        response, results = await self.gateway("/studies", {"PatientName": "Doe*", "fuzzymatching": "false"})
        self.assertIsNone(response.header("Warning"))
        self.assertEqual(unique_keys(results, "/studies"), literal)

    async def test_bad_requests_and_empty_results(self) -> None:
        self.stack = stack = await start_stack(self)
        gw = stack.gw
        gen = stack.data.generated[0]

        async def error(
            url: str, status: int, *needles: str, headers: Mapping[str, str] | None = None
        ) -> None:
            response = await gw.get(url, headers=dict(headers or {}))
            self.assertEqual(response.code, status, f"{url}: {response.body!r}\n{gw.log_tail()}")
            self.assertEqual(response.header("Content-Type"), "application/json", url)
            message = response.json()["error"]
            for needle in needles:
                self.assertIn(needle, message, url)

        await error(f"{SERVICE}/instances?Rows=abc", 400, "Rows")
        await error(f"{SERVICE}/studies?Rows=abc", 400, "Rows")
        await error(f"{SERVICE}/studies?StudyDate=2020-13-45", 400, "StudyDate")
        await error(f"{SERVICE}/studies?StudyDate=20201345", 400, "StudyDate")
        await error(f"{SERVICE}/studies?StudyDate=2024", 400, "StudyDate")
        await error(f"{SERVICE}/studies?Foo=1", 400, "Foo")
        await error(f"{SERVICE}/studies?0009FFFF=1", 400, "0009FFFF")
        await error(f"{SERVICE}/studies?limit=-1", 400, "limit")
        await error(f"{SERVICE}/studies?limit=ten", 400, "limit")
        await error(f"{SERVICE}/studies?offset=-5", 400, "offset")
        await error(f"{SERVICE}/studies/1.2.abc/series", 400, "1.2.abc")
        await error(f"{SERVICE}/studies/{gen.study}/series/1.02.3/instances", 400, "1.02.3")
        await error(
            f"{SERVICE}/studies/{gen.study}/instances?StudyInstanceUID=1.2.3", 400, "StudyInstanceUID"
        )
        await error(f"{SERVICE}/studies", 406, headers={"Accept": "application/dicom+xml"})
        await error(
            f"{SERVICE}/series", 406, headers={"Accept": "multipart/related; type=application/dicom+xml"}
        )
        await error("/aets/NOPE/studies", 404, "NOPE")
        await error(f"/aets/NOPE/studies/{gen.study}/series", 404, "NOPE")

        # No match: 200 and an empty array (CP-2473), never 204.
        for path, params in (
            ("/studies", {"PatientID": "NO-SUCH-PATIENT"}),
            ("/series", {"Modality": "XA"}),
            (f"/studies/{gen.study}/series/{gen.series}/instances", {"InstanceNumber": "99"}),
            ("/studies/1.2.3.4/series", {}),
        ):
            response, results = await self.gateway(path, params)
            self.assertEqual(results, [], path)
            self.assertEqual(response.body.strip(), b"[]", path)
        # application/json is a media type the gateway serves too.
        response = await gw.get(
            f"{SERVICE}/studies?PatientID=QIDO-MULTI", headers={"Accept": "application/json"}
        )
        self.assertEqual((response.code, response.header("Content-Type")), (200, "application/json"))
        self.assertEqual(unique_keys(response.json(), "/studies"), {gen.study})

        # '=', '&', '+', ' ' percent-encoded reach the PACS as themselves (and match). Orthanc's
        # QIDO finds nothing once '&' or '=' is percent-encoded in a value: its /tools/find judges.
        ct = stack.data.by_label("ct")
        for params in (
            {"StudyDescription": "R&D = 1+1"},
            {"StudyDescription": "R&D*"},
            {"StudyDescription": "*= 1+1"},
        ):
            await self.assert_search("/studies", params, {ct.study}, orthanc_agrees=False)
            self.assertEqual(await self.orthanc_find("Study", params), {ct.study}, params)
        for params in ({"PatientID": "A&B=C"}, {"PatientName": "x=y=z"}, {"StudyDescription": "a&b=c"}):
            await self.assert_search("/studies", params, set(), orthanc_agrees=False)
            self.assertEqual(await self.orthanc_find("Study", params), set(), params)
        # A '+' is a space (form encoding, as dicomweb-client writes spaces); %2B is a '+'.
        _, results = await self.gateway("/studies?StudyDescription=R%26D+%3D+1%2B1")
        self.assertEqual(unique_keys(results, "/studies"), {ct.study})


class PathAndHostTests(QidoTestCase):
    async def test_retrieve_url_follows_host_and_base_path(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        gen = data.generated[0]
        based = await start_gateway(
            self,
            [pacs_aet(AET, stack.orthanc.host, stack.orthanc.dicom_port)],
            http={"base-path": "/dicomweb"},
            ready_path="/dicomweb",
        )
        paths = ("/studies", "/series", "/instances", f"/studies/{gen.study}/series/{gen.series}/instances")
        for path in paths:
            _, results = await self.gateway(path, {"PatientID": "QIDO-MULTI"})
            self.assertTrue(results)
            self.check_retrieve_urls(results, path, stack.gw.url)

            _, results = await self.gateway(path, {"PatientID": "QIDO-MULTI"}, gw=based, prefix="/dicomweb")
            self.assertTrue(results)
            self.check_retrieve_urls(results, path, based.url + "/dicomweb")
            url = value(results[0], RETRIEVE_URL)
            self.assertEqual(urlsplit(url).netloc, f"{peers.LOCALHOST}:{based.http_port}")

            # The request's Host, as the client addressed the gateway (a proxy passing it on).
            headers = {"Host": "pacs.example.org:8443"}
            _, results = await self.gateway(
                path, {"PatientID": "QIDO-MULTI"}, headers=headers, gw=based, prefix="/dicomweb"
            )
            self.check_retrieve_urls(results, path, "http://pacs.example.org:8443/dicomweb")
        # Outside the base path there is nothing.
        response = await based.get(f"{SERVICE}/studies")
        self.assertEqual(response.code, 404)


class CharacterSetTests(QidoTestCase):
    async def test_non_ascii_names_with_orthanc_answering_latin1(self) -> None:
        # Orthanc's default: C-FIND answers in ISO_IR 100 whatever the query's character set.
        self.stack = stack = await start_stack(self)
        data = stack.data
        fren, x1 = data.by_label("fren"), data.by_label("x1")
        self.assertEqual(fren.patient_name, "Buc^Jérôme")

        for name in (fren.patient_name, "*Jérôme", "Buc^Jé*"):
            results = await self.assert_search(
                "/studies", {"PatientName": name}, {fren.study}, orthanc_agrees=False
            )
            self.assertEqual(await self.orthanc_find("Study", {"PatientName": name}), {fren.study})
            self.assertEqual(values(results[0], "00100010"), [{"Alphabetic": "Buc^Jérôme"}])
        # Orthanc's '?' stands for one byte of UTF-8, not one character: 'Buc^J?r?me' finds
        # nothing there, by C-FIND or /tools/find. The gateway can only pass on what it finds.
        found = await self.orthanc_find("Study", {"PatientName": "Buc^J?r?me"})
        _, results = await self.gateway("/studies", {"PatientName": "Buc^J?r?me"})
        self.assertEqual(unique_keys(results, "/studies"), found)
        # Orthanc's QIDO can only be asked in ASCII (it does not percent-decode).
        await self.assert_search("/studies", {"PatientName": "Buc*"}, {fren.study})
        # At series level PatientName is an upper-level key the gateway checks itself.
        await self.assert_search(
            "/series", {"PatientName": fren.patient_name}, {fren.series}, orthanc_agrees=False
        )
        await self.assert_search("/series", {"PatientName": "Buc^Jerome"}, set())

        # Beyond Latin-1: Orthanc matches, but answers the name without its ideographic group.
        for path, level, unique in (("/studies", "Study", x1.study), ("/series", "Series", x1.series)):
            for name in (x1.patient_name, "*王*"):
                results = await self.assert_search(
                    path, {"PatientName": name}, {unique}, orthanc_agrees=False
                )
                self.assertEqual(await self.orthanc_find(level, {"PatientName": name}), {unique})
                self.assertEqual(pn_groups(x1.patient_name)["Alphabetic"], "Wang^XiaoDong")
                self.assertEqual(value(results[0], "00100010")["Alphabetic"], "Wang^XiaoDong")

    async def test_non_ascii_names_with_orthanc_answering_utf8(self) -> None:
        self.stack = stack = await start_stack(self, {"DefaultEncoding": "Utf8"})
        data = stack.data
        searches = {
            "fren": ["Buc^Jérôme", "Buc^J*"],
            "x1": ["Wang^XiaoDong=王^小東", "*王^小東"],
            "h31": ["Yamada^Tarou=山田^太郎=やまだ^たろう", "*山田*", "*やまだ^たろう"],
            "russ": [data.by_label("russ").patient_name, "Люк*"],  # the file mixes Cyrillic and Latin
        }
        for label, names in searches.items():
            instance = data.by_label(label)
            for name in names:
                for path, level, unique in (
                    ("/studies", "Study", instance.study),
                    ("/series", "Series", instance.series),
                ):
                    self.assertEqual(await self.orthanc_find(level, {"PatientName": name}), {unique}, name)
                    orthanc_agrees = name.isascii()
                    results = await self.assert_search(path, {"PatientName": name}, {unique}, orthanc_agrees)
                    self.assertEqual(values(results[0], "00100010"), [pn_groups(instance.patient_name)], name)
        # Every name of the data set comes back as the file holds it, from an unfiltered search.
        _, results = await self.gateway("/studies")
        names = {value(r, STUDY_UID): values(r, "00100010") for r in results}
        for instance in data.instances:
            self.assertEqual(names[instance.study], [pn_groups(instance.patient_name)], instance.label)


class DicomwebClientTests(QidoTestCase):
    async def test_dicomweb_client_searches(self) -> None:
        self.stack = stack = await start_stack(self)
        data = stack.data
        gen = data.generated[0]
        gateway = DICOMwebClient(stack.gw.url + SERVICE)
        orthanc = DICOMwebClient(stack.orthanc.url + "/dicom-web")
        self.addCleanup(gateway._session.close)
        self.addCleanup(orthanc._session.close)
        # dicomweb-client logs a response's Warning header: keep what it logs.
        logged = _Records()
        client_log = logging.getLogger("dicomweb_client")
        client_log.addHandler(logged)
        client_log.propagate = False
        self.addCleanup(setattr, client_log, "propagate", True)
        self.addCleanup(client_log.removeHandler, logged)

        async def both(method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
            """The same dicomweb-client call on the gateway and on Orthanc; the gateway's answer.

            Not compared with Orthanc: pages (each server has its own order) and wildcards
            (dicomweb-client percent-encodes '*', which Orthanc then takes literally).
            """
            ours = await threads.deferToThread(getattr(gateway, method), **kwargs)
            check_dicom_json(self, ours, f"dicomweb-client {method}({kwargs})")
            filters = kwargs.get("search_filters", {})
            wildcards = any("*" in str(v) or "?" in str(v) for v in filters.values())
            if "offset" not in kwargs and "limit" not in kwargs and not wildcards:
                theirs = await threads.deferToThread(getattr(orthanc, method), **kwargs)
                self.assertEqual(unique_keys(ours, path), unique_keys(theirs, path), f"{method}({kwargs})")
            return ours

        found = await both("search_for_studies", "/studies")
        self.assertEqual(unique_keys(found, "/studies"), data.studies())
        found = await both("search_for_studies", "/studies", search_filters={"PatientID": "QIDO-SMITH"})
        self.assertEqual(unique_keys(found, "/studies"), data.studies(lambda i: i.patient_id == "QIDO-SMITH"))
        found = await both(
            "search_for_studies",
            "/studies",
            search_filters={"PatientName": "Doe*", "StudyDate": "20190101-20201231"},
        )
        self.assertEqual(unique_keys(found, "/studies"), data.studies(lambda i: i.label in ("ct", "mr")))
        found = await both(
            "search_for_studies",
            "/studies",
            fields=["StudyDescription", "00100030"],
            search_filters={"PatientID": "QIDO-MULTI"},
        )
        self.assertEqual(value(found[0], "00081030"), gen.study_description)
        self.assertEqual(value(found[0], "00100030"), "19700101")

        found = await both("search_for_series", "/series", study_instance_uid=gen.study)
        self.assertEqual(unique_keys(found, "/series"), data.series(lambda i: i.study == gen.study))
        found = await both("search_for_series", "/series", search_filters={"Modality": "NM"})
        self.assertEqual(unique_keys(found, "/series"), data.series(lambda i: i.modality == "NM"))
        found = await both(
            "search_for_series", "/series", study_instance_uid=gen.study, fields=["SeriesDate"]
        )
        self.assertTrue(all(value(r, "00080021") == gen.study_date for r in found))

        found = await both(
            "search_for_instances", "/instances", study_instance_uid=gen.study, series_instance_uid=gen.series
        )
        self.assertEqual(unique_keys(found, "/instances"), data.sops(lambda i: i.series == gen.series))
        found = await both(
            "search_for_instances",
            "/instances",
            study_instance_uid=gen.study,
            search_filters={"InstanceNumber": 2},
        )
        self.assertEqual(
            unique_keys(found, "/instances"),
            data.sops(lambda i: i.study == gen.study and i.instance_number == 2),
        )
        found = await both(
            "search_for_instances",
            "/instances",
            search_filters={"PatientID": "QIDO-SMITH"},
            fields=["PhotometricInterpretation"],
        )
        self.assertEqual(unique_keys(found, "/instances"), data.sops(lambda i: i.patient_id == "QIDO-SMITH"))

        # limit and offset: a slice of the gateway's own order; get_remaining pages through all.
        everything = await both("search_for_instances", "/instances")
        order = [value(r, SOP_UID) for r in everything]
        page = await both("search_for_instances", "/instances", limit=4, offset=6)
        self.assertEqual([value(r, SOP_UID) for r in page], order[6:10])
        paged = await both("search_for_instances", "/instances", limit=5, get_remaining=True)
        self.assertEqual([value(r, SOP_UID) for r in paged], order)

        # fuzzymatching=True is accepted (literal matching, with a Warning the client logs).
        self.assertFalse([m for m in logged.messages if FUZZY in m])
        found = await both(
            "search_for_studies", "/studies", fuzzymatching=True, search_filters={"PatientName": "Doe*"}
        )
        self.assertEqual(
            unique_keys(found, "/studies"), data.studies(lambda i: i.patient_name.startswith("Doe"))
        )
        self.assertTrue([m for m in logged.messages if FUZZY in m], logged.messages)
        self.assertTrue([m for m in logged.messages if MORE_RESULTS in m], logged.messages)  # get_remaining

        # dicomweb-client sends "Host: 127.0.0.1" without the port, so RetrieveURL has none:
        # the gateway builds it from the Host header as sent.
        self.assertEqual(urlsplit(value(found[0], RETRIEVE_URL)).netloc, peers.LOCALHOST)

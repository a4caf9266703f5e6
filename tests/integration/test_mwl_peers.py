"""MWL-RS through the real gateway (``twistd dicomrst``) to two real worklist SCPs: Orthanc's
ModalityWorklists plugin and DCMTK's wlmscpfs, loaded with the same ``.wl`` files
(`tests.support.mwl_data`). The same searches go to both through the gateway, and both must
answer the same, and what the worklist holds.

The gateway makes the answers comparable where the two SCPs legitimately differ
(`dicomrst.qido.worklist`): return keys one leaves out and the other returns empty are
present and empty; the character set is ISO_IR 192; optional keys one of them does not match
on (wlmscpfs 3.6.7: Scheduled Procedure Step ID, Requested Procedure Description, Patient's
Sex...) and combined start date-time ranges (Orthanc matches date and time apart) are
matched by the gateway. What it cannot even out, the queries avoid and this says:

* result order is each SCP's own (both keep theirs from one search to the next), so answers
  are compared sorted by Scheduled Procedure Step ID, and paging is checked per SCP;
* PN matching is case-insensitive in Orthanc and case-sensitive in wlmscpfs (the standard
  leaves it to the SCP), so names are matched in their own case;
* matching on an optional key that some items lack: Orthanc fails those items, wlmscpfs
  (which does not match on it) returns them, and the gateway keeps a result whose value is
  empty (an SCP that does not support a key answers it empty), so no query does that.

dicomweb-client (0.61) has no worklist search: requests are plain HTTP, and the results are
read back into pydicom datasets as a client would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from pydicom.dataset import Dataset
from twisted.trial.unittest import TestCase

from dicomrst.common.identifiers import found_dataset
from dicomrst.common.uids import MODALITY_WORKLIST_FIND
from dicomrst.dimse.find import FindFailed
from dicomrst.web.errors import http_status
from tests.support import peers
from tests.support.dimse_backend import FindTestCase
from tests.support.gateway import Gateway, Response, pacs_aet, start_gateway
from tests.support.mwl_data import ITEMS, WorklistItem, write_worklist

TIMEOUT = 180
ORTHANC_AET = "ORTHANCWL"
WLM_AET = "WLMSCPFS"
RESOURCE = "modality-scheduled-procedure-steps"
DICOM_JSON = "application/dicom+json"
SPS = "ScheduledProcedureStepSequence"
ALL = tuple(item.n for item in ITEMS)

Params = Sequence[tuple[str, str]]

#: (what, parameters, the items it finds)
QUERIES: tuple[tuple[str, Params, tuple[int, ...]], ...] = (
    ("everything", (), ALL),
    ("modality by keyword path", ((f"{SPS}.Modality", "CT"),), (1, 3, 5)),
    ("modality by tag path", (("00400100.00080060", "MR"),), (2, 6)),
    ("station AE title", ((f"{SPS}.ScheduledStationAETitle", "CT1"),), (1, 5)),
    ("start date range", ((f"{SPS}.ScheduledProcedureStepStartDate", "20260105-20260107"),), (1, 2, 3, 5)),
    ("start date from", (("00400100.00400002", "20260201-"),), (4,)),
    ("start date until", ((f"{SPS}.ScheduledProcedureStepStartDate", "-20260105"),), (1,)),
    ("single start date", ((f"{SPS}.ScheduledProcedureStepStartDate", "20260110"),), (6,)),
    (
        "combined start date and time: 5 Jan 10:00 to 7 Jan 18:00",
        (
            (f"{SPS}.ScheduledProcedureStepStartDate", "20260105-20260107"),
            (f"{SPS}.ScheduledProcedureStepStartTime", "1000-1800"),
        ),
        (2, 3, 5),
    ),
    (
        "modality, station and dates",
        (
            (f"{SPS}.Modality", "CT"),
            (f"{SPS}.ScheduledStationAETitle", "CT1"),
            (f"{SPS}.ScheduledProcedureStepStartDate", "20260101-20260131"),
        ),
        (1, 5),
    ),
    ("patient ID", (("PatientID", "P2"),), (2,)),
    ("name wildcard", (("PatientName", "D*"),), (1,)),
    ("UTF-8 name wildcard", (("PatientName", "Müller*"),), (3,)),
    ("UTF-8 name, all groups", (("PatientName", "Wang^XiaoDong=王^小東"),), (4,)),
    ("Greek name", (("PatientName", "Παπαδόπουλος^Νίκος"),), (7,)),
    ("accession number", (("AccessionNumber", "ACC3"),), (3,)),
    ("step ID (wlmscpfs does not match on it)", ((f"{SPS}.ScheduledProcedureStepID", "SPS4"),), (4,)),
    ("requested procedure description", (("RequestedProcedureDescription", "Procedure 2"),), (2,)),
    ("performing physician wildcard", ((f"{SPS}.ScheduledPerformingPhysicianName", "Perf*"),), ALL),
    ("includefield", (("includefield", f"{SPS}.ScheduledProcedureStepStatus,PatientAge"),), ALL),
    ("includefield=all", (("includefield", "all"),), ALL),
    ("fuzzymatching", (("PatientID", "P1"), ("fuzzymatching", "true")), (1,)),
    ("no match", (("PatientID", "NOBODY"),), ()),
)


def query_string(params: Params) -> str:
    """``?a=b&…`` with everything but letters and digits percent-encoded (UTF-8)."""
    return "?" + urlencode(list(params), quote_via=quote, safe="") if params else ""


def step_id(result: dict[str, Any]) -> str:
    [step] = result["00400100"]["Value"]
    return str(step["00400009"]["Value"][0])


def by_step(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=step_id)


def warnings(response: Response, aet: str) -> list[str]:
    """The Warning headers, the AE title in the service URL written as ``{aet}``."""
    values = response.headers.getRawHeaders("Warning") or []
    return [v.replace(f"/aets/{aet}:", "/aets/{aet}:") for v in values]


def first_difference(a: Any, b: Any, where: str = "") -> str:
    """Where two JSON values first differ, for assertion messages."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{where}/{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(x, y, f"{where}[{i}]")
    return f"{where or '/'}: {a!r} != {b!r}"


def mwl_aet(aet: str, host: str, port: int, timeout_ms: int = 30_000) -> dict[str, Any]:
    return {**pacs_aet(aet, host, port), "mwl-rs": {"timeout": timeout_ms}}


async def search(gateway: Gateway, aet: str, params: Params, accept: str = DICOM_JSON) -> Response:
    return await gateway.get(f"/aets/{aet}/{RESOURCE}{query_string(params)}", headers={"Accept": [accept]})


class BothPeersTests(TestCase):
    timeout = TIMEOUT

    async def start(self) -> Gateway:
        database = peers._temp_dir(self, "worklist")
        directory = os.path.join(database, WLM_AET)  # wlmscpfs: one directory per called AE title
        write_worklist(directory)
        wlm = await peers.start_wlmscpfs(self, database, WLM_AET)
        orthanc = await peers.start_orthanc_worklists(self, directory, ORTHANC_AET)
        return await start_gateway(
            self,
            [mwl_aet(ORTHANC_AET, orthanc.host, orthanc.dicom_port), mwl_aet(WLM_AET, wlm.host, wlm.port)],
        )

    async def both(self, gateway: Gateway, params: Params, what: str) -> list[dict[str, Any]]:
        """Search both through the gateway; assert they answer alike; Orthanc's results, sorted."""
        orthanc = await search(gateway, ORTHANC_AET, params)
        wlm = await search(gateway, WLM_AET, params)
        for aet, response in ((ORTHANC_AET, orthanc), (WLM_AET, wlm)):
            self.assertEqual(
                response.code, 200, f"{what} on {aet}: {response.body[:500]!r}\n{gateway.log_tail()}"
            )
            self.assertEqual(response.header("Content-Type"), DICOM_JSON, what)
        self.assertEqual(warnings(orthanc, ORTHANC_AET), warnings(wlm, WLM_AET), what)
        from_orthanc, from_wlm = by_step(orthanc.json()), by_step(wlm.json())
        self.assertEqual(
            [step_id(r) for r in from_orthanc], [step_id(r) for r in from_wlm], f"{what}: different items"
        )
        self.assertTrue(from_orthanc == from_wlm, f"{what}: {first_difference(from_orthanc, from_wlm)}")
        return from_orthanc

    async def test_same_answers_from_orthanc_and_wlmscpfs(self) -> None:
        gateway = await self.start()
        for what, params, expected in QUERIES:
            results = await self.both(gateway, params, what)
            self.assertEqual([step_id(r) for r in results], [f"SPS{n}" for n in expected], what)

        response = await search(gateway, ORTHANC_AET, (("PatientID", "P1"), ("fuzzymatching", "true")))
        [warning] = warnings(response, ORTHANC_AET)
        self.assertIn("The fuzzymatching parameter is not supported", warning)

        # application/json, as QIDO-RS answers it too.
        for aet in (ORTHANC_AET, WLM_AET):
            response = await search(gateway, aet, (("PatientID", "P2"),), accept="application/json")
            self.assertEqual((response.code, response.header("Content-Type")), (200, "application/json"))
            self.assertEqual([step_id(r) for r in response.json()], ["SPS2"])

    async def test_results_hold_what_the_worklist_holds(self) -> None:
        gateway = await self.start()
        results = await self.both(gateway, (), "everything")
        for result, item in zip(results, ITEMS, strict=True):
            self.check_item(result, item)

    def check_item(self, result: dict[str, Any], item: WorklistItem) -> None:
        ds = Dataset.from_json(result)  # what a client reading the JSON gets
        self.assertEqual(ds.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(ds.PatientName), item.patient_name)
        self.assertEqual(
            (ds.PatientID, ds.PatientSex, ds.AccessionNumber), (item.patient_id, item.sex, item.accession)
        )
        self.assertEqual(ds.RequestedProcedureDescription, item.description)
        self.assertEqual(ds.StudyInstanceUID, item.dataset().StudyInstanceUID)
        [step] = ds.ScheduledProcedureStepSequence
        self.assertEqual(
            (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate),
            (item.modality, item.station, item.date),
        )
        self.assertEqual(
            (step.ScheduledProcedureStepStartTime, step.ScheduledProcedureStepID), (item.time, item.sps_id)
        )
        if item.protocol_code is not None:
            [code] = step.ScheduledProtocolCodeSequence
            self.assertEqual(
                (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning), item.protocol_code
            )
            self.assertEqual(code.CodingSchemeVersion, "")  # asked for, unknown
            [requested] = ds.RequestedProcedureCodeSequence
            self.assertEqual(requested.CodeValue, item.protocol_code[0])
        else:
            self.assertEqual(len(step.ScheduledProtocolCodeSequence), 0)
        if item.n == 4:
            self.assertEqual(
                result["00100010"]["Value"], [{"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}]
            )
        # Return keys neither SCP has a value for: present, empty.
        self.assertEqual(result["00380010"], {"vr": "LO"})  # Admission ID
        self.assertEqual(step.PreMedication, "")
        self.assertNotIn("00081190", result)  # no Retrieve URL: the study is yet to be made

    async def test_limit_and_offset_page_through_each_worklist(self) -> None:
        gateway = await self.start()
        for aet in (ORTHANC_AET, WLM_AET):
            whole = await search(gateway, aet, ())
            self.assertEqual(whole.code, 200)
            order = [step_id(r) for r in whole.json()]
            pages: list[str] = []
            for offset in (0, 3, 6):
                page = await search(gateway, aet, (("limit", "3"), ("offset", str(offset))))
                self.assertEqual(page.code, 200, aet)
                pages += [step_id(r) for r in page.json()]
                more = [w for w in warnings(page, aet) if "additional results" in w]
                self.assertEqual(len(more), 1 if offset < 6 else 0, f"{aet} offset {offset}")
            # Each SCP keeps its own order from one search to the next, so pages add up.
            self.assertEqual(pages, order, aet)
            self.assertEqual(sorted(pages), sorted(f"SPS{n}" for n in ALL), aet)
        filtered = await search(
            gateway, WLM_AET, ((f"{SPS}.ScheduledProcedureStepID", "SPS4"), ("limit", "1"))
        )
        self.assertEqual([step_id(r) for r in filtered.json()], ["SPS4"])  # matched by the gateway

    async def test_bad_requests_are_400_before_any_c_find(self) -> None:
        gateway = await self.start()
        cases = {
            (("Modality", "CT"),): f"{SPS}.Modality",
            ((f"{SPS}.ScheduledProcedureStepStartDate", "2026-01-01"),): "ScheduledProcedureStepStartDate",
            (("limit", "-1"),): "limit",
        }
        for params, named in cases.items():
            for aet in (ORTHANC_AET, WLM_AET):
                response = await search(gateway, aet, params)
                self.assertEqual(response.code, 400, response.body)
                self.assertIn(named, response.json()["error"])
        self.assertEqual((await search(gateway, "NOSUCHAET", ())).code, 404)


class FailureTests(TestCase):
    timeout = TIMEOUT

    async def test_pacs_without_a_worklist_is_502_and_its_association_serves_qido(self) -> None:
        # The pynetdicom PACS's find profile accepts Study Root FIND, not the worklist model
        # (as Orthanc without its worklist plugin does).
        scp = await peers.start_pynetdicom_scp(self, "find", aet="PYFIND", matches=3)
        gateway = await start_gateway(self, [mwl_aet(scp.aet, scp.host, scp.port)])
        response = await search(gateway, scp.aet, ())
        self.assertEqual(response.code, 502, response.body)
        self.assertIn("did not accept Modality Worklist Information Model - FIND", response.json()["error"])
        studies = await gateway.get(f"/aets/{scp.aet}/studies", headers={"Accept": [DICOM_JSON]})
        self.assertEqual(studies.code, 200, studies.body)
        self.assertEqual(len(studies.json()), 3)
        [accepted] = scp.events("accepted")  # one association: kept after the 502, reused for QIDO
        rejected = {cx["abstract_syntax"] for cx in accepted["rejected_contexts"]}
        self.assertIn(MODALITY_WORKLIST_FIND, rejected)

    async def test_silent_worklist_scp_is_504_after_mwl_rs_timeout(self) -> None:
        database = peers._temp_dir(self, "worklist")
        write_worklist(os.path.join(database, WLM_AET))
        slow = await peers.start_wlmscpfs(self, database, WLM_AET, extra_args=("--sleep-before", "3"))
        gateway = await start_gateway(self, [mwl_aet(WLM_AET, slow.host, slow.port, timeout_ms=500)])
        response = await search(gateway, WLM_AET, ())
        self.assertEqual(response.code, 504, response.body)
        self.assertIn("within 0.5 s", response.json()["error"])


class WorklistFindTests(FindTestCase):
    """The worklist C-FIND of DimseBackend against wlmscpfs, below the web layer."""

    async def test_failure_status_is_502_and_keeps_the_association(self) -> None:
        database = peers._temp_dir(self, "worklist")
        write_worklist(os.path.join(database, WLM_AET))
        wlm = await peers.start_wlmscpfs(self, database, WLM_AET)
        backend = self.backend(WLM_AET, wlm.port)
        # Two Scheduled Procedure Step items: the model allows one (PS3.4 K.6-1); wlmscpfs
        # answers A900. The web layer never sends this; the failure path is what is tested.
        bad = Dataset()
        bad.PatientID = ""
        ct, mr = Dataset(), Dataset()
        ct.Modality, mr.Modality = "CT", "MR"
        bad.ScheduledProcedureStepSequence = [ct, mr]
        results: list[Dataset] = []
        try:
            await backend.find(bad, limit=None, on_result=results.append, model=MODALITY_WORKLIST_FIND)
        except FindFailed as e:
            self.assertEqual((e.status, http_status(e)), (0xA900, 502))
        else:
            self.fail(f"the find succeeded with {len(results)} results")
        self.assertEqual(backend.pool.stats()["idle"], 1)
        good = Dataset()
        good.PatientID = ""
        step = Dataset()
        step.Modality = "CT"
        good.ScheduledProcedureStepSequence = [step]
        await backend.find(good, limit=None, on_result=results.append, model=MODALITY_WORKLIST_FIND)
        self.assertEqual(sorted(found_dataset(r).PatientID for r in results), ["P1", "P3", "P5"])
        self.assertEqual(backend.pool.stats()["idle"], 1)

"""DimseBackend.find and its association pool against real peers, on the real reactor.

The misbehaving PACS is tests/support/pacs/ (pynetdicom, in a subprocess) with its find-*
profiles; the well-behaved one is Orthanc.  Everything is on 127.0.0.1; every test stops its
backend in cleanup (before its peer), so no association outlives the test.
"""

from __future__ import annotations

import io
import uuid

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.python.failure import Failure

from dicomrst.backends.pacs.backend import CallerNotAccepted
from dicomrst.dimse.find import FindFailed
from dicomrst.errors import ServiceUnavailable, UpstreamError
from dicomrst.ul.errors import AssociationAborted, AssociationRejected, AssociationTimeout
from dicomrst.web.errors import http_status
from tests.support import peers
from tests.support.dimse_backend import CALLING, FindTestCase, global_reactor, sleep, study_query

# -- a pynetdicom PACS -----------------------------------------------------------------------------


class PynetdicomFindTests(FindTestCase):
    async def test_results_arrive(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find", aet="PYFIND", matches=5)
        backend = self.backend(scp.aet, scp.port)
        results = await self.find(backend, study_query(PatientID="PID*"))
        self.assertEqual(len(results), 5)
        self.assertEqual({r.QueryRetrieveLevel for r in results}, {"STUDY"})
        self.assertEqual(len({r.StudyInstanceUID for r in results}), 5)
        (c_find,) = scp.events("c_find")
        self.assertEqual((c_find["level"], c_find["patient_id"]), ("STUDY", "PID*"))
        self.assertEqual(backend.pool.stats()["idle"], 1)
        (requested,) = scp.events("requested")
        self.assertEqual((requested["calling_aet"], requested["called_aet"]), (CALLING, "PYFIND"))

    async def test_limit_sends_c_cancel_and_the_association_is_reused(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find", matches=40, delay=0.05)
        backend = self.backend(scp.aet, scp.port)
        results = await self.find(backend, limit=2)
        self.assertEqual(len(results), 2)
        (c_find,) = scp.events("c_find")
        (c_cancel,) = await self.peer_event(scp, "c_cancel")
        self.assertEqual(c_cancel["message_id"], c_find["message_id"])
        # The PACS honoured it rather than sending all 40.
        (cancelled,) = await self.peer_event(scp, "find_cancelled")
        self.assertLess(cancelled["sent"], 40)
        self.assertEqual(backend.pool.stats()["idle"], 1)
        again = await self.find(backend, limit=3)
        self.assertEqual(len(again), 3)
        self.assertEqual(len(scp.events("accepted")), 1, "the second find did not reuse the association")
        self.assertEqual({e["assoc"] for e in scp.events("c_find")}, {1})

    async def failure_status(self, status: int) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-fail", status=status, ok_before=2)
        backend = self.backend(scp.aet, scp.port)
        error, results, _ = await self.find_error(backend)
        self.assertIsInstance(error, FindFailed)
        assert isinstance(error, FindFailed)
        self.assertEqual(error.status, status)
        self.assertEqual(http_status(error), 502)
        self.assertIn(f"0x{status:04X}", str(error))
        self.assertEqual(len(results), 2)  # delivered, but the find as a whole failed
        # The association is fine after a failure status: the next find reuses it.
        self.assertEqual(backend.pool.stats()["idle"], 1)
        self.assertEqual(len(await self.find(backend)), 5)
        self.assertEqual(len(scp.events("accepted")), 1)

    async def test_out_of_resources_is_502(self) -> None:
        await self.failure_status(0xA700)

    async def test_unable_to_process_is_502(self) -> None:
        await self.failure_status(0xC000)

    async def test_stalled_find_times_out_cancels_and_aborts(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-stall")
        backend = self.backend(scp.aet, scp.port, qido_timeout_ms=1000)
        error, _, took = await self.find_error(backend)
        self.assertIsInstance(error, AssociationTimeout)
        self.assertEqual(http_status(error), 504)
        self.assertTrue(0.9 <= took < 2.5, f"timed out after {took:.2f} s")
        self.assertEqual(backend.pool.stats(), {"idle": 0, "busy": 0, "opening": 0, "releasing": 0})
        (c_find,) = scp.events("c_find")
        (c_cancel,) = await self.peer_event(scp, "c_cancel")
        self.assertEqual(c_cancel["message_id"], c_find["message_id"])
        (ended,) = await self.peer_event(scp, "stall_ended")
        self.assertEqual(ended["reason"], "aborted")
        (aborted,) = await self.peer_event(scp, "aborted")
        self.assertLessEqual(c_cancel["t"], aborted["t"])
        self.assertLessEqual(c_cancel["t"], ended["t"])
        # The next find works, on a new association.
        self.assertEqual(len(await self.find(backend)), 5)
        self.assertEqual(len(scp.events("accepted")), 2)

    async def test_rejection_frees_the_slot(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "reject")
        backend = self.backend(scp.aet, scp.port, size=1, pool_timeout_ms=5000)
        for _ in range(3):
            error, _, took = await self.find_error(backend)
            self.assertIsInstance(error, AssociationRejected)
            self.assertEqual(http_status(error), 502)
            self.assertLess(took, 2.0)
            self.assertEqual(backend.pool.stats(), {"idle": 0, "busy": 0, "opening": 0, "releasing": 0})
        self.assertEqual(len(await self.peer_event(scp, "rejected", 3)), 3)

    async def test_abort_after_results(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-abort", ok_before=2)
        backend = self.backend(scp.aet, scp.port)
        error, results, _ = await self.find_error(backend)
        self.assertIsInstance(error, UpstreamError)
        self.assertIn("after 2 results", str(error))
        self.assertEqual(len(results), 2)
        await self.peer_event(scp, "abort_sent")
        self.assertEqual(backend.pool.stats()["busy"], 0)
        self.assertEqual(len(await self.find(backend)), 5)
        self.assertEqual(len(scp.events("accepted")), 2)

    async def test_abort_before_any_result(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-abort", ok_before=0)
        backend = self.backend(scp.aet, scp.port)
        error, results, _ = await self.find_error(backend)
        # Aborted when asked, nothing delivered: what a PACS that refuses our AE title does,
        # and the error says so (the abort itself is its cause).
        self.assertIsInstance(error, CallerNotAccepted)
        self.assertIsInstance(error.__cause__, AssociationAborted)
        self.assertEqual(results, [])
        # A fresh association is not retried: the PACS saw one C-FIND.
        self.assertEqual(len(scp.events("c_find")), 1)
        self.assertEqual(len(await self.find(backend)), 5)

    async def idle_close(self, close: str) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-idle-close", idle_close=1.0, close=close)
        backend = self.backend(scp.aet, scp.port)
        self.assertEqual(len(await self.find(backend)), 5)
        await sleep(1.5)
        self.assertEqual(len(await self.find(backend)), 5)
        self.assertEqual(len(scp.events("accepted")), 2)
        self.assertEqual(len(scp.events("aborted" if close == "abort" else "released")), 1)
        # The pool had noticed: no C-FIND went to the closed association.
        self.assertEqual(len(scp.events("c_find")), 2)
        self.assertEqual([e["assoc"] for e in scp.events("c_find")], [1, 2])

    async def test_idle_association_aborted_by_the_pacs(self) -> None:
        await self.idle_close("abort")

    async def test_idle_association_released_by_the_pacs(self) -> None:
        await self.idle_close("release")


class PoolLimitTests(FindTestCase):
    async def test_50_concurrent_finds_on_4_associations(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-slow", matches=3, delay=0.02)
        backend = self.backend(scp.aet, scp.port, size=4)
        most_busy = 0

        async def one(i: int) -> int:
            nonlocal most_busy
            results = await self.find(backend, study_query(PatientID=f"P{i}"))
            stats = backend.pool.stats()
            most_busy = max(most_busy, stats["busy"] + stats["opening"])
            return len(results)

        outcomes = await DeferredList([Deferred.fromCoroutine(one(i)) for i in range(50)], consumeErrors=True)
        failures = [r for ok, r in outcomes if not ok]
        self.assertEqual(failures, [])
        self.assertEqual([r for _, r in outcomes], [3] * 50)
        self.assertEqual(len(scp.events("c_find")), 50)
        counts = scp.events("assoc_count")
        self.assertLessEqual(max(e["count"] for e in counts), 4)
        self.assertEqual(len(scp.events("accepted")), 4)
        self.assertLessEqual(most_busy, 4)

    async def test_stalled_pacs_excess_requests_get_503(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "find-stall", times=None)
        backend = self.backend(scp.aet, scp.port, size=2, pool_timeout_ms=500, qido_timeout_ms=2500)
        start = global_reactor().seconds()
        ended: list[float] = [0.0] * 6

        async def one(i: int) -> list[Dataset]:
            try:
                return await self.find(backend)
            finally:
                ended[i] = global_reactor().seconds() - start

        outcomes = await DeferredList([Deferred.fromCoroutine(one(i)) for i in range(6)], consumeErrors=True)
        errors = [r.value if isinstance(r, Failure) else r for _, r in outcomes]
        busy = [(e, t) for e, t in zip(errors, ended, strict=True) if isinstance(e, ServiceUnavailable)]
        slow = [(e, t) for e, t in zip(errors, ended, strict=True) if isinstance(e, AssociationTimeout)]
        self.assertEqual((len(busy), len(slow)), (4, 2), errors)
        for error, took in busy:
            assert isinstance(error, ServiceUnavailable)
            self.assertEqual(http_status(error), 503)
            self.assertIsNotNone(error.retry_after)
            self.assertGreaterEqual(error.retry_after or 0, 1)
            self.assertTrue(0.4 <= took < 1.5, took)
        for error, took in slow:
            self.assertEqual(http_status(error), 504)
            self.assertTrue(2.4 <= took < 4.0, took)
        self.assertLessEqual(max(e["count"] for e in scp.events("assoc_count")), 2)
        self.assertEqual(len(scp.events("c_find")), 2)


# -- Orthanc -------------------------------------------------------------------------------------


def _fresh(name: str, patient_id: str, study_uid: str, series_uid: str) -> bytes:
    """A pydicom test file moved to our patient, study and series, with a new SOP instance UID."""
    path = get_testdata_file(name)
    assert path is not None, name
    ds = dcmread(path)
    ds.PatientID = patient_id
    ds.PatientName = "Find^Test"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


class OrthancFindTests(FindTestCase):
    async def load(self, orthanc: peers.Orthanc, studies: int) -> tuple[str, set[str]]:
        """Upload `studies` studies (CT and MR files) of a new patient; (its ID, the study UIDs)."""
        patient_id = f"DRST-{uuid.uuid4().hex[:12]}"
        uids = set()
        for i in range(studies):
            study = generate_uid()
            uids.add(study)
            for name in ("CT_small.dcm", "MR_small.dcm")[: 1 + i % 2]:
                answer = await orthanc.upload(_fresh(name, patient_id, study, generate_uid()))
                self.assertEqual(answer["Status"], "Success", answer)
        return patient_id, uids

    async def test_study_find_by_patient_id(self) -> None:
        orthanc = await peers.start_orthanc(self, aet="ORTHANCF")
        patient_id, studies = await self.load(orthanc, 3)
        await self.load(orthanc, 1)  # somebody else
        backend = self.backend(orthanc.aet, orthanc.dicom_port)
        results = await self.find(backend, study_query(PatientID=patient_id))
        self.assertEqual({r.StudyInstanceUID for r in results}, studies)
        self.assertEqual({r.PatientID for r in results}, {patient_id})
        self.assertEqual(len(results), 3)
        # Series level within one study.
        study = sorted(studies)[0]
        series = Dataset()
        series.QueryRetrieveLevel = "SERIES"
        series.StudyInstanceUID = study
        series.SeriesInstanceUID = ""
        series.Modality = ""
        found = await self.find(backend, series)
        self.assertGreaterEqual(len(found), 1)
        self.assertEqual({r.StudyInstanceUID for r in found}, {study})
        self.assertEqual(backend.pool.stats()["idle"], 1)

    async def test_cancel_on_the_first_result_leaks_nothing(self) -> None:
        orthanc = await peers.start_orthanc(self, aet="ORTHANCC")
        patient_id, _ = await self.load(orthanc, 12)
        backend = self.backend(orthanc.aet, orthanc.dicom_port)
        results: list[Dataset] = []
        holder: list[Deferred[None]] = []

        def on_result(ds: Dataset) -> None:
            results.append(ds)
            holder[0].cancel()  # the HTTP client went away

        holder.append(backend.find(study_query(PatientID=patient_id), limit=None, on_result=on_result))
        with self.assertRaises(CancelledError):
            await holder[0]
        self.assertEqual(len(results), 1)
        pool = backend.pool
        await self.until(lambda: pool.stats()["busy"] == 0, "the association came back or went")
        self.assertEqual(pool.stats()["opening"], 0)
        self.assertLessEqual(pool.stats()["idle"], 1)
        # Whatever state it is in, the pool still works.
        self.assertEqual(len(await self.find(backend, study_query(PatientID=patient_id))), 12)
        self.assertEqual(pool.stats(), {"idle": 1, "busy": 0, "opening": 0, "releasing": 0})
        (connection,) = pool._all
        assert connection.association is not None
        closed = connection.association.whenClosed
        await backend.stop()
        self.assertEqual(closed.result, "released")

    async def test_cancel_while_the_association_opens_leaks_nothing(self) -> None:
        orthanc = await peers.start_orthanc(self, aet="ORTHANCO")
        backend = self.backend(orthanc.aet, orthanc.dicom_port)
        d = backend.find(study_query(PatientID="NOBODY"), limit=None, on_result=lambda ds: None)
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        pool = backend.pool
        await self.until(lambda: pool.stats()["opening"] == 0, "the association is up")
        # It joined the pool instead of being left open behind our back.
        self.assertEqual(pool.stats(), {"idle": 1, "busy": 0, "opening": 0, "releasing": 0})
        (connection,) = pool._all
        assert connection.association is not None
        closed = connection.association.whenClosed
        await backend.stop()
        self.assertEqual(closed.result, "released")

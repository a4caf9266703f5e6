"""The LOCAL reconcile scan on real files and a real SQLite index, its thread work run on
the test's thread: files copied in are indexed and searchable, a changed file is read
again, a deleted one leaves the index, temporary files are never looked at, and a file
that is not DICOM, or not where its UIDs put it, is logged once and skipped."""

from __future__ import annotations

import os
import shutil
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.backends.local import LocalBackend
from dicomrst.index.database import SqlIndex, SqliteDatabase
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from tests.support.stow import expected_info, part10_bytes
from tests.support.threads import InlinePool, ThreadsReactor

AET = "ARCHIVE"


class _Reactor(ThreadsReactor):
    def __init__(self) -> None:
        super().__init__(InlinePool())
        self.now = 0.0

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> Any:
        return self.pool

    def seconds(self) -> float:
        return self.now


def _patient(name: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    return ds


class LocalReconcileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        reactor = _Reactor()
        directory = self.mktemp()
        os.makedirs(directory)
        pool = InlinePool()
        self.index = SqlIndex(SqliteDatabase(reactor, os.path.join(directory, "index.sqlite"), pool=pool))
        self.successResultOf(self.index.start())
        self.addCleanup(lambda: self.successResultOf(self.index.stop()))
        self.backend = LocalBackend(AET, self.root, reactor, index=self.index)
        self.successResultOf(self.backend.start())
        self.reconciler = self.backend.reconciler()

    def put(self, data: bytes, key: str | None = None) -> str:
        """Copy an object in behind the backend's back; its key."""
        if key is None:
            info = expected_info(data)
            key = f"{info.study_instance_uid}/{info.series_instance_uid}/{info.sop_instance_uid}.dcm"
        path = os.path.join(self.root, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return key

    def scan(self) -> Any:
        return self.successResultOf(self.reconciler.scan())

    def patients(self) -> list[str]:
        identifier = parse_query(Target.all_instances(), {"PatientName": [""]}).identifier
        found: list[Dataset] = []
        self.successResultOf(self.index.find(AET, identifier, limit=None, offset=0, on_result=found.append))
        return sorted(str(ds.PatientName) for ds in found)

    def test_added_changed_removed(self) -> None:
        study = generate_uid()
        a = part10_bytes(study=study, extra=_patient("A^A"))
        b = part10_bytes(extra=_patient("B^B"))  # the patient is the study's: another study
        key_a, key_b = self.put(a), self.put(b)
        first = self.scan()
        self.assertEqual((first.listed, first.added, first.changed, first.removed), (2, 2, 0, 0))
        self.assertEqual(self.patients(), ["A^A", "B^B"])
        self.assertEqual(set(self.successResultOf(self.index.stamps(AET))), {key_a, key_b})

        again = self.scan()
        self.assertEqual((again.added, again.changed, again.removed, again.bytes_read), (0, 0, 0, 0))

        info = expected_info(a)
        changed = part10_bytes(
            study=study,
            series=info.series_instance_uid,
            sop=info.sop_instance_uid,
            extra=_patient("C^C"),
            pixel_bytes=1024,
        )  # another size: another stamp
        self.put(changed, key_a)
        os.unlink(os.path.join(self.root, *key_b.split("/")))
        third = self.scan()
        self.assertEqual((third.added, third.changed, third.removed), (0, 1, 1))
        self.assertEqual(self.patients(), ["C^C"])

        shutil.rmtree(os.path.join(self.root, study))
        self.assertEqual(self.scan().removed, 1)
        self.assertEqual(self.patients(), [])

    def test_records_are_committed_in_batches(self) -> None:
        from dicomrst.index import database

        transactions: list[int] = []
        write_batch = database.write_batch

        def counted(session: Any, writes: list[Any]) -> list[object]:
            transactions.append(len(writes))
            return write_batch(session, writes)

        self.patch(database, "write_batch", counted)
        for i in range(30):
            self.put(part10_bytes(extra=_patient(f"P^{i:02d}")))
        self.assertEqual(self.scan().added, 30)
        self.assertEqual(transactions, [30])
        self.assertEqual(len(self.patients()), 30)

    def test_temporary_unreadable_and_misplaced_files(self) -> None:
        good = part10_bytes(extra=_patient("GOOD^ONE"))
        info = expected_info(good)
        self.put(good)
        where = f"{info.study_instance_uid}/{info.series_instance_uid}"
        # A store in progress (or a crash's leftover): hidden, never read.
        self.put(good[:100], f"{where}/.{generate_uid()}.dcm.00aa11bb22cc-1.tmp")
        self.put(b"not DICOM at all", f"{where}/{generate_uid()}.dcm")
        other = part10_bytes(extra=_patient("MIS^PLACED"))
        self.put(other, f"{where}/{generate_uid()}.dcm")  # its UIDs name another path
        self.put(good, "notes/readme.dcm")  # not the layout: a stray
        with _Logged() as logged:
            first = self.scan()
        self.assertEqual(
            (first.listed, first.added, first.unreadable, first.misplaced, first.strays), (3, 1, 1, 1, 1)
        )
        self.assertEqual(self.patients(), ["GOOD^ONE"])
        self.assertEqual(len([e for e in logged.events if "skipping file" in e]), 1)
        (misplaced,) = [e for e in logged.events if "not where their UIDs put them" in e]
        self.assertIn(f"1 file(s) of {AET}", misplaced)
        self.assertIn(f"its UIDs say {expected_info(other).study_instance_uid}/", misplaced)
        self.assertEqual(len([e for e in logged.events if "are not {study}" in e]), 1)
        with _Logged() as logged:
            again = self.scan()
        # Logged once: not read again until they change.
        self.assertEqual((again.unreadable, again.misplaced, again.bytes_read), (0, 0, 0))
        self.assertEqual(logged.events, [])

    def test_a_missing_directory_fails_the_scan_and_keeps_the_records(self) -> None:
        key = self.put(part10_bytes(extra=_patient("KEPT^ONE")))
        self.scan()
        shutil.move(self.root, self.root + ".unmounted")
        self.failureResultOf(self.reconciler.scan(), FileNotFoundError)
        self.assertEqual(set(self.successResultOf(self.index.stamps(AET))), {key})
        self.assertEqual(self.patients(), ["KEPT^ONE"])


class _Logged:
    """Collects the formatted warnings of ``dicomrst.index`` while in use."""

    def __enter__(self) -> _Logged:
        from twisted.logger import formatEvent, globalLogPublisher

        self.events: list[str] = []
        self._publisher = globalLogPublisher

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "dicomrst.index" and event["log_level"].name == "warn":
                self.events.append(formatEvent(event))

        self._observer = observe
        globalLogPublisher.addObserver(observe)
        return self

    def __exit__(self, *exc: object) -> None:
        self._publisher.removeObserver(self._observer)

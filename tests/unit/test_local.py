"""The LOCAL backend on real files in a temporary directory, its thread work run on the
test's thread (`InlinePool`, or `HeldPool` where the order of reads matters): STOW-RS then
retrieve byte-identical, conflicts, durability order (file, then index), leftovers of a
crash neither served nor kept, backpressure, metadata from the head, ranged reads, echo,
search through the index (the real one, SQLite in the test's directory, its work on
the test's thread too), and C-STOREs streamed in (`receive`)."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dicomrst.backends.interfaces import IBackend, IInstanceIntake, IRangedReads
from dicomrst.backends.local import LocalArchiveError, LocalBackend
from dicomrst.backends.local.files import InvalidObject, list_objects
from dicomrst.backends.local.retrieve import CHUNK
from dicomrst.backends.local.store import DISK_CONCURRENCY
from dicomrst.backends.values import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_CONFLICT,
    FAILURE_PROCESSING,
    SUCCESS,
    ObjectChanged,
    UploadedInstance,
)
from dicomrst.common.uids import MODALITY_WORKLIST_FIND
from dicomrst.errors import NotFound, NotImplementedService, ServiceUnavailable, UpstreamError
from dicomrst.index.database import SqlIndex, SqliteDatabase
from tests.support.datasets import encode
from tests.support.sinks import RecordingSink
from tests.support.stow import expected_info, part10_bytes
from tests.support.threads import HeldPool, InlinePool

AET = "ARCHIVE"


class _Reactor(Clock):
    """A clock whose threads call back at once (the pools run on the test's thread)."""

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.pool = pool

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> Any:
        return self.pool


def uploaded(case: SynchronousTestCase, data: bytes, info: Any = None) -> UploadedInstance:
    info = info or expected_info(data)
    path = case.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return UploadedInstance(
        sop_class_uid=info.sop_class_uid,
        sop_instance_uid=info.sop_instance_uid,
        study_instance_uid=info.study_instance_uid,
        series_instance_uid=info.series_instance_uid,
        transfer_syntax=info.transfer_syntax,
        dataset_offset=info.dataset_offset,
        size=len(data),
        path=path,
    )


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.pool: Any = InlinePool()
        self.reactor = _Reactor(self.pool)
        directory = self.mktemp()
        os.makedirs(directory)
        self.index_path = os.path.join(directory, "index.sqlite")
        # Its own inline pool: the backend's may be held by a test.
        index_pool = InlinePool()
        self.index = SqlIndex(SqliteDatabase(_Reactor(index_pool), self.index_path, pool=index_pool))
        self.successResultOf(self.index.start())
        self.addCleanup(lambda: self.successResultOf(self.index.stop()))
        self.backend = LocalBackend(AET, self.root, self.reactor, index=self.index)
        self.successResultOf(self.backend.start())

    def indexed(self) -> dict[str, dict[str, Any]]:
        """The index's instance rows of AET, by SOP Instance UID."""
        columns = ("sop_uid", "sop_class", "transfer_syntax", "object_key", "stamp", "size", "attributes")

        def read(session: Any) -> list[Any]:
            return session.execute(f"SELECT {', '.join(columns)} FROM instances WHERE aet = ?", (AET,))

        rows = self.successResultOf(self.index.database.run(read))
        return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}

    def refuse_adds(self, refuse: bool) -> None:
        """Make the index's database refuse (or again accept) new instance rows."""
        with sqlite3.connect(self.index_path) as connection:
            if refuse:
                connection.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON instances "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            else:
                connection.execute("DROP TRIGGER refuse")

    def store(self, data: bytes, info: Any = None) -> int:
        outcome = self.successResultOf(self.backend.store_instance(uploaded(self, data, info)))
        return outcome.status

    def path_of(self, data: bytes) -> str:
        info = expected_info(data)
        assert info.series_instance_uid is not None
        return os.path.join(self.root, info.study_instance_uid, info.series_instance_uid,
                            f"{info.sop_instance_uid}.dcm")

    def retrieve(self, study: str, series: str | None = None, sop: str | None = None,
                 sink: RecordingSink | None = None) -> RecordingSink:
        sink = sink or RecordingSink()
        self.successResultOf(self.backend.retrieve(study, series, sop, sink=sink))
        return sink


class InterfaceTests(_Base):
    def test_provides_backend_ranged_reads_and_intake(self) -> None:
        verifyObject(IBackend, self.backend)
        verifyObject(IRangedReads, self.backend)
        verifyObject(IInstanceIntake, self.backend)
        self.assertEqual(self.backend.kind, "LOCAL")

    def test_start_creates_the_directory_private(self) -> None:
        self.assertTrue(os.path.isdir(self.root))
        self.assertEqual(os.stat(self.root).st_mode & 0o777, 0o700)

    def test_start_fails_on_a_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        backend = LocalBackend(AET, path, self.reactor)
        self.assertRaises(LocalArchiveError, backend.start)


class StoreRetrieveTests(_Base):
    def test_stow_then_retrieve_is_byte_identical(self) -> None:
        data = part10_bytes(pixel_bytes=3 * CHUNK)  # several reads
        info = expected_info(data)
        self.assertEqual(self.store(data), SUCCESS)
        with open(self.path_of(data), "rb") as f:
            self.assertEqual(f.read(), data)
        sink = self.retrieve(info.study_instance_uid)
        [part] = sink.parts
        self.assertEqual(part.meta, (info.sop_class_uid, info.sop_instance_uid, info.transfer_syntax))
        self.assertEqual(b"".join(part.data), data[info.dataset_offset:])
        self.assertEqual(sink.attached[0], sink.attached[0])  # attached, then detached
        self.assertIsNone(sink.attached[-1])

    def test_the_index_gets_the_record_once_the_file_is_there(self) -> None:
        data = part10_bytes()
        info = expected_info(data)
        self.store(data)
        row = self.indexed()[info.sop_instance_uid]
        st = os.stat(self.path_of(data))
        self.assertEqual(row["object_key"], f"{info.study_instance_uid}/{info.series_instance_uid}/"
                                            f"{info.sop_instance_uid}.dcm")
        self.assertEqual(row["stamp"], f"{st.st_mtime_ns}:{st.st_size}")
        self.assertEqual(row["size"], len(data))
        self.assertEqual((row["sop_class"], row["transfer_syntax"]),
                         (info.sop_class_uid, info.transfer_syntax))
        attributes = json.loads(row["attributes"])
        self.assertEqual(attributes["00100020"]["Value"], ["STOW-1"])
        self.assertEqual(attributes["0020000D"]["Value"], [info.study_instance_uid])
        self.assertNotIn("7FE00010", attributes)

    def test_same_object_again_is_success_different_one_a_conflict(self) -> None:
        sop = generate_uid()
        study, series = generate_uid(), generate_uid()
        first = part10_bytes(study=study, series=series, sop=sop)
        self.assertEqual(self.store(first), SUCCESS)
        self.assertEqual(self.store(first), SUCCESS)
        other = part10_bytes(study=study, series=series, sop=sop, extra=_patient("SOMEONE^ELSE"))
        self.assertEqual(self.store(other), FAILURE_CONFLICT)
        with open(self.path_of(first), "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertEqual(_names(os.path.dirname(self.path_of(first))), [f"{sop}.dcm"])

    def test_not_reported_stored_when_the_index_fails(self) -> None:
        """The file is durable, the row is not: failure now, success on the client's retry."""
        data = part10_bytes()
        self.refuse_adds(True)
        self.assertEqual(self.store(data), FAILURE_PROCESSING)
        self.assertTrue(os.path.exists(self.path_of(data)))
        self.assertEqual(self.indexed(), {})
        self.refuse_adds(False)
        self.assertEqual(self.store(data), SUCCESS)
        self.assertEqual(list(self.indexed()), [expected_info(data).sop_instance_uid])

    def test_no_index_stores_files_only(self) -> None:
        backend = LocalBackend(AET, self.root, self.reactor)
        data = part10_bytes()
        outcome = self.successResultOf(backend.store_instance(uploaded(self, data)))
        self.assertEqual(outcome.status, SUCCESS)
        self.assertTrue(os.path.exists(self.path_of(data)))

    def test_unreadable_data_set_is_refused_and_leaves_nothing(self) -> None:
        data = part10_bytes()
        info = expected_info(data)
        broken = data[: info.dataset_offset] + b"\x08\x00\x05\x00ZZ\x04\x00abcd"  # an unknown VR
        self.assertEqual(self.store(broken, info), FAILURE_CANNOT_UNDERSTAND)
        directory = os.path.dirname(self.path_of(data))
        self.assertEqual(_names(directory), [])

    def test_no_series_uid_is_refused(self) -> None:
        data = part10_bytes(series="")
        self.assertEqual(self.store(data), FAILURE_CANNOT_UNDERSTAND)

    def test_study_in_key_order_series_then_instance(self) -> None:
        study = generate_uid()
        stored = [part10_bytes(study=study, series=se) for se in ("1.2.9", "1.2.10", "1.2.9")]
        for data in stored:
            self.store(data)
        sink = self.retrieve(study)
        infos = [expected_info(d) for d in stored]
        keys = sorted(f"{i.series_instance_uid}/{i.sop_instance_uid}.dcm" for i in infos)
        self.assertEqual([f"{p.sop}.dcm" for p in sink.parts], [k.split("/")[1] for k in keys])

    def test_series_and_instance_levels(self) -> None:
        study, series = generate_uid(), generate_uid()
        a = part10_bytes(study=study, series=series)
        b = part10_bytes(study=study, series=generate_uid())
        self.store(a)
        self.store(b)
        self.assertEqual(self.retrieve(study, series).sops, [expected_info(a).sop_instance_uid])
        sop = expected_info(b).sop_instance_uid
        self.assertEqual(self.retrieve(study, expected_info(b).series_instance_uid, sop).sops, [sop])

    def test_not_found(self) -> None:
        data = part10_bytes()
        info = expected_info(data)
        self.store(data)
        sink = RecordingSink()
        self.failureResultOf(self.backend.retrieve(generate_uid(), None, None, sink=sink), NotFound)
        self.failureResultOf(
            self.backend.retrieve(info.study_instance_uid, generate_uid(), None, sink=sink), NotFound
        )
        self.failureResultOf(
            self.backend.retrieve(
                info.study_instance_uid, info.series_instance_uid, generate_uid(), sink=sink
            ),
            NotFound,
        )
        self.failureResultOf(self.backend.retrieve("../..", None, None, sink=sink), NotFound)
        self.assertEqual(sink.parts, [])

    def test_a_file_that_is_not_dicom_fails_the_retrieve(self) -> None:
        study, series = generate_uid(), generate_uid()
        os.makedirs(os.path.join(self.root, study, series))
        with open(os.path.join(self.root, study, series, "1.2.3.dcm"), "wb") as f:
            f.write(b"not dicom at all" * 20)
        failure = self.failureResultOf(self.backend.retrieve(study, None, None, sink=RecordingSink()))
        self.assertTrue(failure.check(UpstreamError))
        self.assertIn("not a DICOM file", failure.getErrorMessage())


class DurableOrderTests(_Base):
    """Several instances of one series, the backend's thread work held: how many are
    written at once, and when each is reported stored."""

    def setUp(self) -> None:
        super().setUp()
        self.held = HeldPool()
        self.backend = LocalBackend(AET, self.root, _Reactor(self.held), index=self.index)
        started = self.backend.start()
        self.held.run_next()  # the leftovers' removal
        self.successResultOf(started)
        self.ran: list[str] = []

    def pending(self) -> list[str]:
        return [getattr(f, "__name__", "?") for _, f, _, _ in self.held.calls]

    def run_next(self) -> None:
        self.ran.append(self.pending()[0])
        self.held.run_next()

    def test_writes_bounded_and_reported_only_after_a_later_directory_fsync(self) -> None:
        study, series = generate_uid(), generate_uid()
        datas = [part10_bytes(study=study, series=series) for _ in range(DISK_CONCURRENCY + 2)]
        outcomes = [self.backend.store_instance(uploaded(self, data)) for data in datas]
        self.assertEqual(self.pending(), ["_write_upload"] * DISK_CONCURRENCY)
        for _ in range(DISK_CONCURRENCY):
            self.run_next()
        # Four placed under their names; their directory's fsync has not run: none is
        # reported stored, none indexed.  The two others are being written meanwhile.
        self.assertTrue(all(os.path.exists(self.path_of(data)) for data in datas[:DISK_CONCURRENCY]))
        for outcome in outcomes:
            self.assertNoResult(outcome)
        self.assertEqual(self.indexed(), {})
        self.assertEqual(sorted(self.pending()), ["_write_upload"] * 2 + ["fsync_directory"])
        # The first placed is covered by the fsync that began after it; the three others
        # by the next, which starts when it ends.
        while self.pending()[0] != "fsync_directory":
            self.run_next()
        self.run_next()
        self.assertEqual(self.successResultOf(outcomes[0]).status, SUCCESS)
        self.assertEqual(list(self.indexed()), [expected_info(datas[0]).sop_instance_uid])
        for outcome in outcomes[1:]:
            self.assertNoResult(outcome)
        while self.held.calls:
            self.run_next()
        self.assertEqual([self.successResultOf(o).status for o in outcomes[1:]], [SUCCESS] * (len(datas) - 1))
        self.assertEqual(len(self.indexed()), len(datas))
        self.assertLessEqual(self.ran.count("fsync_directory"), 3)

    def test_an_unreadable_upload_is_refused_before_anything_is_written(self) -> None:
        data = part10_bytes()
        info = expected_info(data)
        broken = data[: info.dataset_offset] + b"\x08\x00\x05\x00ZZ\x04\x00abcd"  # an unknown VR
        outcome = self.backend.store_instance(uploaded(self, broken, info))
        self.run_next()
        self.assertEqual(self.successResultOf(outcome).status, FAILURE_CANNOT_UNDERSTAND)
        self.assertEqual(_names(self.root), [])  # not even its study's directory
        self.assertEqual(self.pending(), [])


class LeftoverTests(_Base):
    def test_a_temporary_file_is_not_served_and_removed_at_start(self) -> None:
        data = part10_bytes()
        info = expected_info(data)
        self.store(data)
        directory = os.path.dirname(self.path_of(data))
        leftover = os.path.join(directory, f".{generate_uid()}.dcm.0123456789ab-7.tmp")
        with open(leftover, "wb") as f:
            f.write(part10_bytes(study=info.study_instance_uid, series=info.series_instance_uid))
        self.assertEqual(self.retrieve(info.study_instance_uid).sops, [info.sop_instance_uid])
        restarted = LocalBackend(AET, self.root, self.reactor, index=self.index)
        self.assertEqual(self.successResultOf(restarted.start()), 1)
        self.assertFalse(os.path.exists(leftover))
        self.assertTrue(os.path.exists(self.path_of(data)))

    def test_the_running_backends_own_temporary_files_are_spared(self) -> None:
        mine = os.path.join(self.root, f".1.2.3.dcm.{self.backend.token}-1.tmp")
        with open(mine, "wb") as f:
            f.write(b"being written")
        self.assertEqual(self.successResultOf(self.backend.start()), 0)
        self.assertTrue(os.path.exists(mine))

    def test_listing_ignores_what_is_not_an_object(self) -> None:
        study, series = "1.2.3", "1.2.3.4"
        directory = os.path.join(self.root, study, series)
        os.makedirs(directory)
        os.makedirs(os.path.join(self.root, study, ".hidden"))
        for name in ("1.2.dcm", ".1.3.dcm", "1.4.dcm.tmp", "notes.txt", "x.dcm"):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(b"")
        self.assertEqual([os.path.basename(p) for _, p in list_objects(self.root, study, None)], ["1.2.dcm"])


class BackpressureTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.data = part10_bytes(pixel_bytes=4 * CHUNK)
        self.info = expected_info(self.data)
        self.store(self.data)
        self.held = HeldPool()
        self.reactor.pool = self.held

    def test_paused_sink_gets_nothing_more_and_no_read_starts(self) -> None:
        sink = RecordingSink()
        d = self.backend.retrieve(self.info.study_instance_uid, None, None, sink=sink)
        self.held.run_next()  # the listing
        self.held.run_next()  # open + the head; the next chunk is asked for at once
        producer = sink.attached[0]
        [part] = sink.parts
        self.assertEqual(len(part.data), 1)
        self.assertEqual(len(self.held.calls), 1)
        producer.pauseProducing()
        self.held.run_next()  # that chunk arrives while paused: held, nothing more read
        self.assertEqual(len(part.data), 1)
        self.assertEqual(self.held.calls, [])
        producer.resumeProducing()
        self.assertEqual(len(part.data), 2)
        self.assertEqual(len(self.held.calls), 1)  # one read ahead, no more
        while self.held.calls:
            self.held.run_next()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(b"".join(part.data), self.data[self.info.dataset_offset:])

    def test_stopped_by_the_sink_fails_the_part_and_closes_the_file(self) -> None:
        sink = RecordingSink()
        d = self.backend.retrieve(self.info.study_instance_uid, None, None, sink=sink)
        self.held.run_next()
        self.held.run_next()
        producer = sink.attached[0]
        [part] = sink.parts
        ended: list[object] = []
        part.done.addBoth(ended.append)
        producer.pauseProducing()
        self.held.run_next()
        producer.stopProducing()
        self.failureResultOf(d, CancelledError)
        [failed] = ended
        self.assertIsInstance(failed, Failure)
        self.assertFalse(part.finished)
        self.assertEqual(self.held.calls, [])
        self.assertEqual(_open_fds_to(self.path_of(self.data)), [])

    def test_cancelled_while_a_read_runs_closes_the_file_after_it(self) -> None:
        sink = RecordingSink()
        d = self.backend.retrieve(self.info.study_instance_uid, None, None, sink=sink)
        self.held.run_next()
        self.held.run_next()
        self.held.run_next()  # the second chunk; the third is being read
        self.assertEqual(len(self.held.calls), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertNotEqual(_open_fds_to(self.path_of(self.data)), [])
        self.held.run_next()  # the read ends in its thread; then the file is closed
        self.assertEqual(_open_fds_to(self.path_of(self.data)), [])


class MetadataTests(_Base):
    def test_metadata_reads_only_the_head_when_pixel_data_ends_the_object(self) -> None:
        data = part10_bytes(pixel_bytes=4 * CHUNK)
        info = expected_info(data)
        self.store(data)
        sink = RecordingSink()
        sink.wants_bulk_data = False
        self.retrieve(info.study_instance_uid, sink=sink)
        got = b"".join(sink.parts[0].data)
        self.assertLess(len(got), CHUNK)
        ds = dcmread(_as_file(info.transfer_syntax, got), force=True)
        self.assertEqual(ds.PatientID, "STOW-1")
        self.assertEqual(len(ds.PixelData), 2)


class RangedTests(_Base):
    def test_range_size_and_version(self) -> None:
        data = part10_bytes(pixel_bytes=2 * CHUNK)
        info = expected_info(data)
        self.store(data)
        assert info.series_instance_uid is not None
        args = (info.study_instance_uid, info.series_instance_uid, info.sop_instance_uid)
        got = self.successResultOf(self.backend.read_range(*args, 100, 300))
        self.assertEqual((got.data, got.start, got.size), (data[100:300], 100, len(data)))
        again = self.successResultOf(self.backend.read_range(*args, len(data) - 10, len(data) + 50,
                                                             version=got.version))
        self.assertEqual(again.data, data[-10:])
        path = self.path_of(data)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        self.failureResultOf(self.backend.read_range(*args, 0, 10, version=got.version), ObjectChanged)
        self.failureResultOf(self.backend.read_range(info.study_instance_uid, info.series_instance_uid,
                                                     generate_uid(), 0, 10), NotFound)


class EchoFindTests(_Base):
    def test_echo_checks_the_directory(self) -> None:
        self.assertIsInstance(self.successResultOf(self.backend.echo()), float)
        os.rmdir(self.root)
        failure = self.failureResultOf(self.backend.echo(), UpstreamError)
        self.assertIn(self.root, failure.getErrorMessage())

    def test_find_asks_the_index(self) -> None:
        study = generate_uid()
        self.store(part10_bytes(study=study))
        self.store(part10_bytes())
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        identifier.PatientID = ""
        results: list[Dataset] = []
        self.successResultOf(self.backend.find(identifier, limit=None, on_result=results.append))
        self.assertEqual([(r.StudyInstanceUID, r.PatientID) for r in results], [(study, "STOW-1")])

    def test_qido_pages_skip_the_offset_in_the_index(self) -> None:
        """A QIDO-RS page: the offset goes to the index (which skips it in SQL), not a
        decoded result per skipped match; ``more`` still says a next page exists."""
        from dicomrst.backends.interfaces import IIndexedSearch
        from dicomrst.qido.query import parse_query
        from dicomrst.qido.search import search
        from dicomrst.qido.target import Target

        self.assertTrue(IIndexedSearch.providedBy(self.backend))
        studies = sorted(generate_uid() for _ in range(4))  # no date: in UID order
        for study in studies:
            self.store(part10_bytes(study=study))
        asked: list[tuple[int | None, int]] = []
        find = self.index.find

        def spy(aet: str, identifier: Dataset, *, limit: int | None, offset: int, on_result: Any) -> Any:
            asked.append((limit, offset))
            return find(aet, identifier, limit=limit, offset=offset, on_result=on_result)

        self.index.find = spy  # type: ignore[method-assign]
        pages = []
        for offset in (0, 2, 3):
            # A study list's page (a viewer's): no key the gateway filters on itself.
            query = parse_query(Target.studies(), {"limit": ["2"], "offset": [str(offset)]})
            outcome = self.successResultOf(Deferred.fromCoroutine(search(self.backend, query, "http://gw",
                                                                         self.reactor)))
            pages.append(([r["0020000D"]["Value"][0] for r in json.loads(outcome.body)], outcome.more))
        self.assertEqual(asked, [(3, 0), (3, 2), (3, 3)])
        self.assertEqual([found for found, _ in pages], [studies[:2], studies[2:], studies[3:]])
        self.assertEqual([more for _, more in pages], [True, False, False])

    def _search(self, params: dict[str, str]) -> tuple[list[str], bool]:
        from dicomrst.qido.query import parse_query
        from dicomrst.qido.search import search
        from dicomrst.qido.target import Target

        query = parse_query(Target.studies(), {k: [v] for k, v in params.items()})
        searched = Deferred.fromCoroutine(search(self.backend, query, "http://gw", self.reactor))
        outcome = self.successResultOf(searched)
        return [r["0020000D"]["Value"][0] for r in json.loads(outcome.body)], outcome.more

    def _spy_on_the_index(self) -> list[tuple[int | None, int]]:
        asked: list[tuple[int | None, int]] = []
        find = self.index.find

        def spy(aet: str, identifier: Dataset, *, limit: int | None, offset: int, on_result: Any) -> Any:
            asked.append((limit, offset))
            return find(aet, identifier, limit=limit, offset=offset, on_result=on_result)

        self.index.find = spy  # type: ignore[method-assign]
        return asked

    def test_keys_the_gateway_filters_for_a_pacs_leave_the_offset_to_the_index(self) -> None:
        """An optional key (which a PACS may ignore, so the gateway checks it again on a
        PACS's results) is the index's to match: the offset and limit still go to SQL."""
        knee = sorted(generate_uid() for _ in range(4))
        for study in knee:
            self.store(part10_bytes(study=study, extra=_with(StudyDescription="KNEE")))
        self.store(part10_bytes(extra=_with(StudyDescription="HEAD")))
        asked = self._spy_on_the_index()
        page = {"StudyDescription": "KNEE", "limit": "2", "offset": "2"}
        self.assertEqual(self._search(page), (knee[2:], False))
        self.assertEqual(self._search({**page, "limit": "1", "offset": "1"}), (knee[1:2], True))
        self.assertEqual(asked, [(3, 2), (2, 1)])

    def test_a_date_range_with_a_time_range_is_combined_date_time_matching(self) -> None:
        """PS3.4 C.2.2.2.5, as QIDO-RS on a PACS answers it (the gateway filters there):
        from 1 January 22:00 to 2 January 02:00, not 22:00-02:00 on each day."""
        moments = {"a": ("20200101", "100000"), "b": ("20200101", "230000"), "c": ("20200102", "010000"),
                   "d": ("20200102", "120000"), "e": ("20200102", "")}
        uids = {}
        for label, (date, time) in moments.items():
            uids[label] = generate_uid()
            extra = _with(StudyDate=date, StudyTime=time) if time else _with(StudyDate=date)
            self.store(part10_bytes(study=uids[label], extra=extra))
        asked = self._spy_on_the_index()
        found, more = self._search({"StudyDate": "20200101-20200102", "StudyTime": "2200-0200"})
        self.assertEqual(found, [uids["b"], uids["c"], uids["e"]])  # no time: judged by its date
        self.assertFalse(more)
        found, _ = self._search({"StudyDate": "20200101-20200102", "StudyTime": "2200-0200", "offset": "1"})
        self.assertEqual(found, [uids["c"], uids["e"]])
        self.assertEqual([offset for _, offset in asked], [0, 1])

    def test_combined_date_time_on_a_sequence_s_items(self) -> None:
        """The pair as item keys: some item must fall in the combined range."""
        from pydicom.sequence import Sequence

        uids = []
        for moments in ([("20200101", "230000")], [("20200101", "100000"), ("20200102", "120000")]):
            uids.append(generate_uid())
            extra = Dataset()
            items = []
            for date, time in moments:
                item = Dataset()
                item.ScheduledProcedureStepStartDate = date
                item.ScheduledProcedureStepStartTime = time
                items.append(item)
            extra.ScheduledProcedureStepSequence = Sequence(items)
            self.store(part10_bytes(study=uids[-1], extra=extra))
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        key = Dataset()
        key.ScheduledProcedureStepStartDate = "20200101-20200102"
        key.ScheduledProcedureStepStartTime = "2200-0200"
        identifier.ScheduledProcedureStepSequence = Sequence([key])
        results: list[Dataset] = []
        self.successResultOf(self.index.find(AET, identifier, limit=None, offset=0, on_result=results.append))
        self.assertEqual([r.StudyInstanceUID for r in results], uids[:1])

    def test_no_worklist_and_no_search_without_an_index(self) -> None:
        self.failureResultOf(
            self.backend.find(Dataset(), limit=None, on_result=lambda _: None, model=MODALITY_WORKLIST_FIND),
            ServiceUnavailable,
        )
        bare = LocalBackend(AET, self.root, self.reactor)
        searched = bare.find(Dataset(), limit=None, on_result=lambda _: None)
        self.failureResultOf(searched, NotImplementedService)


class ReceiveTests(_Base):
    """C-STOREs into the archive: the data set as it comes off the association."""

    def receive(self, ds: Dataset, fragments: int = 3) -> Any:
        consumer = self.backend.receive(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "MODALITY")
        body = encode(ds)
        step = len(body) // fragments + 1
        for i in range(0, len(body), step):
            consumer.dataReceived(body[i : i + step])
        return consumer, body

    def test_received_instance_is_stored_indexed_and_served(self) -> None:
        ds = dcmread(_as_file("1.2.840.10008.1.2.1", encode(_dataset())), force=True)
        consumer, body = self.receive(ds)
        self.assertNoResult(consumer.done)  # not before the data set is whole
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), SUCCESS)
        self.assertIn(ds.SOPInstanceUID, self.indexed())
        stored = dcmread(os.path.join(self.root, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                      f"{ds.SOPInstanceUID}.dcm"))
        self.assertEqual(stored.file_meta.SourceApplicationEntityTitle, "MODALITY")
        sink = self.retrieve(ds.StudyInstanceUID)
        self.assertEqual(sink.data(ds.SOPInstanceUID), body)
        self.assertEqual(_names(self.root), [ds.StudyInstanceUID])  # no temporary file left

    def test_association_lost_mid_data_set_leaves_nothing(self) -> None:
        consumer, _ = self.receive(_dataset())
        ended: list[object] = []
        consumer.done.addBoth(ended.append)
        consumer.dataFailed(Failure(ConnectionError("aborted")))
        [failed] = ended
        self.assertIsInstance(failed, Failure)
        self.assertEqual(_names(self.root), [])

    def test_data_set_that_is_not_the_commands_instance_is_refused(self) -> None:
        ds = _dataset()
        consumer = self.backend.receive(ds.SOPClassUID, generate_uid(), "1.2.840.10008.1.2.1", "MODALITY")
        consumer.dataReceived(encode(ds))
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), FAILURE_CANNOT_UNDERSTAND)
        self.assertEqual(_names(self.root), [])

    def test_unsafe_uids_are_refused(self) -> None:
        self.assertRaises(InvalidObject, self.backend.receive, "1.2", "../../x", "1.2.840.10008.1.2.1", "A")
        ds = _dataset()
        ds.StudyInstanceUID = "../../etc"
        consumer = self.backend.receive(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "A")
        consumer.dataReceived(encode(ds))
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), FAILURE_CANNOT_UNDERSTAND)
        self.assertEqual(_names(self.root), [])


# -- helpers ------------------------------------------------------------------------------------


def _patient(name: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    return ds


def _dataset() -> Dataset:
    data = part10_bytes()
    return dcmread(_as_file(expected_info(data).transfer_syntax, data[expected_info(data).dataset_offset:]),
                   force=True)


def _as_file(syntax: str, dataset_bytes: bytes) -> Any:
    """A data set's bytes (no file meta) as something dcmread reads."""
    import io

    from dicomrst.common.part10 import file_meta

    return io.BytesIO(file_meta("1.2.840.10008.5.1.4.1.1.7", "1.2.3", syntax) + dataset_bytes)


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _open_fds_to(path: str) -> list[int]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == os.path.abspath(path):
                found.append(int(fd))
        except OSError:
            pass
    return found


class SpoolingIntakeTests(SynchronousTestCase):
    """C-STOREs into an archive without an intake of its own (S3): spooled with file meta,
    handed to store_instance as a STOW-RS part, its status the C-STORE's; the spool file
    gone afterwards in every case."""

    def setUp(self) -> None:
        from dicomrst.backends.intake import SpoolingIntake
        from tests.support.fakes import FakeBackend

        self.spool = self.mktemp()
        os.makedirs(self.spool)
        self.backend = FakeBackend("BUCKET")
        self.intake = SpoolingIntake(self.backend, _Reactor(InlinePool()), self.spool)

    def test_spooled_then_stored(self) -> None:
        ds = _dataset()
        consumer = self.intake.receive(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "CT1")
        body = encode(ds)
        consumer.dataReceived(body[:100])
        consumer.dataReceived(body[100:])
        self.assertEqual(self.backend.received, [])
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), SUCCESS)
        [(instance, data)] = self.backend.received
        got = (instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        self.assertEqual(got, (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
        self.assertEqual(data[instance.dataset_offset:], body)
        self.assertEqual(dcmread(_bytes(data)).file_meta.SourceApplicationEntityTitle, "CT1")
        self.assertEqual(os.listdir(self.spool), [])

    def test_the_archives_status_is_the_answer(self) -> None:
        ds = _dataset()
        self.backend.statuses[ds.SOPInstanceUID] = FAILURE_CONFLICT
        consumer = self.intake.receive(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "CT1")
        consumer.dataReceived(encode(ds))
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), FAILURE_CONFLICT)
        self.assertEqual(os.listdir(self.spool), [])

    def test_unreadable_or_lost_leaves_nothing(self) -> None:
        consumer = self.intake.receive("1.2", "1.2.3", "1.2.840.10008.1.2.1", "CT1")
        consumer.dataReceived(b"\x08\x00\x05\x00ZZ\x04\x00abcd")
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), FAILURE_CANNOT_UNDERSTAND)
        ds = _dataset()
        ds.StudyInstanceUID = "../../x"
        unsafe = self.intake.receive(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "CT1")
        unsafe.dataReceived(encode(ds))
        unsafe.dataFinished()
        self.assertEqual(self.successResultOf(unsafe.done), FAILURE_CANNOT_UNDERSTAND)
        lost = self.intake.receive("1.2", "1.2.4", "1.2.840.10008.1.2.1", "CT1")
        ended: list[object] = []
        lost.done.addBoth(ended.append)
        lost.dataFailed(Failure(ConnectionError("aborted")))
        self.assertIsInstance(ended[0], Failure)
        self.assertEqual(self.backend.received, [])
        self.assertEqual(os.listdir(self.spool), [])


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def _with(**attributes: str) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds

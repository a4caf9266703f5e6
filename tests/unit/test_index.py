"""The index on SQLite in a temporary directory: records from Part-10 heads, every kind of
matching with identifiers built by the QIDO-RS parser itself, limit/offset and order,
writes (replace, remove, batches), the schema's migration, and ``index.url``.

The database runs on the test's thread (`InlinePool`, `ThreadsReactor`): every Deferred
has fired when its call returns.
"""

from __future__ import annotations

import io
import os
import sqlite3
from typing import Any

from pydicom.dataset import Dataset
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.config import ConfigError, parse_config
from dicomrst.index import records
from dicomrst.index.database import IndexFailed, IndexStartFailed, SqlIndex, SqliteDatabase, redacted
from dicomrst.index.factory import open_index
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.index.records import NotIndexable, instance_row, record_from_dataset, record_from_head
from dicomrst.index.schema import SCHEMA_VERSION, SQLITE, migrations
from dicomrst.index.search import like_pattern
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from tests.support import index_data
from tests.support.threads import HeldPool, InlinePool, ThreadsReactor

AET = "LOCAL"


def make_index(case: SynchronousTestCase, pool: Any = None, name: str = "index.sqlite") -> SqlIndex:
    directory = case.mktemp()
    os.makedirs(directory)
    pool = pool if pool is not None else InlinePool()
    index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), os.path.join(directory, name), pool=pool))
    case.successResultOf(index.start())
    case.addCleanup(lambda: case.successResultOf(index.stop()))
    return index


def find(
    case: SynchronousTestCase, index: SqlIndex, identifier: Dataset, limit: int | None = None, offset: int = 0
) -> list[Dataset]:
    results: list[Dataset] = []
    case.successResultOf(index.find(AET, identifier, limit=limit, offset=offset, on_result=results.append))
    return results


def query(target: Target, **params: str) -> Dataset:
    return parse_query(target, {k: [v] for k, v in params.items()}).identifier


class Loaded(SynchronousTestCase):
    def setUp(self) -> None:
        self.stored = index_data.build(AET)
        self.index = make_index(self)
        for item in self.stored:
            self.successResultOf(self.index.add(item.record))

    def studies(self, **params: str) -> list[str]:
        """Labels of the studies found, in the order found."""
        by_uid = {s.uid: s.label for s in index_data.STUDIES}
        return [by_uid[r.StudyInstanceUID] for r in find(self, self.index, query(Target.studies(), **params))]


class RecordTests(SynchronousTestCase):
    def test_explicit_and_implicit_heads(self) -> None:
        for item in index_data.build()[:2]:
            record = item.record
            self.assertEqual(record.sop_instance, item.dataset.SOPInstanceUID)
            self.assertEqual((record.study, record.series), (item.study.uid, item.dataset.SeriesInstanceUID))
            self.assertEqual(record.sop_class, item.series.sop_class)
            self.assertNotIn(0x7FE00010, record.attributes)
            self.assertEqual(record.attributes.PatientID, item.study.patient_id)

    def test_a_head_cut_before_pixel_data_needs_more(self) -> None:
        data = index_data.build()[0].data
        pixel = data.index(b"\xe0\x7f\x10\x00")
        self.assertIsNone(record_from_head(AET, "k", "s", len(data), data[: pixel - 20], complete=False))
        self.assertIsNone(record_from_head(AET, "k", "s", len(data), data[:100], complete=False))
        record = record_from_head(AET, "k", "s", len(data), data[: pixel + 12], complete=False)
        self.assertIsNotNone(record)

    def test_not_dicom_and_missing_uids(self) -> None:
        with self.assertRaises(NotIndexable):
            record_from_head(AET, "k", "s", 10, b"x" * 200, complete=True)
        ds = index_data.build()[0].dataset
        del ds.StudyInstanceUID
        data = index_data.part10(ds)
        with self.assertRaisesRegex(NotIndexable, "study"):
            record_from_head(AET, "k", "s", len(data), data, complete=True)


def _plain_row(data: bytes) -> records.InstanceRow:
    """The row of a Part-10 object decoded without the element memo (pydicom alone)."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta = ds.file_meta
    del ds.file_meta
    return instance_row(
        record_from_dataset(
            AET,
            "k",
            "s",
            len(data),
            ds,
            sop_class=str(meta.MediaStorageSOPClassUID),
            sop_instance=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax=str(meta.TransferSyntaxUID),
        )
    )


_PYDICOM_FILES = (
    "test_files/CT_small.dcm",  # private elements
    "test_files/MR_small_implicit.dcm",
    "test_files/MR_small_bigendian.dcm",
    "test_files/image_dfl.dcm",  # deflated
    "test_files/rtplan.dcm",  # sequences
    "test_files/reportsi.dcm",  # sequences of undefined length, nested
    "test_files/reportsi_with_empty_number_tags.dcm",
    "test_files/badVR.dcm",  # explicit VRs that are not VRs (pydicom's reader decides)
    "charset_files/chrX1.dcm",  # character sets (0008,0005) other than the default
    "charset_files/chrH31.dcm",
    "charset_files/chrJapMulti.dcm",
)


class ElementMemoTests(SynchronousTestCase):
    """Elements decoded once are reused only where they decode the same way."""

    def setUp(self) -> None:
        records._memo.clear()
        self.addCleanup(records._memo.clear)

    def record(self, ds: Dataset, implicit: bool = False) -> IndexRecord:
        data = index_data.part10(ds, implicit)
        record = record_from_head(AET, "k", "s", len(data), data, complete=True)
        assert record is not None
        return record

    def test_rows_as_without_it_first_and_again(self) -> None:
        for item in index_data.build():
            for _ in range(2):  # decoded, then from the memo
                record = record_from_head(AET, "k", "s", len(item.data), item.data, complete=True)
                assert record is not None
                self.assertEqual(instance_row(record), _plain_row(item.data))
        self.assertTrue(records._memo)

    def test_pydicom_test_files_as_without_it(self) -> None:
        # Explicit and Implicit VR, big endian, deflated, sequences of undefined length,
        # private elements, and writers pydicom's reader works around (the memo's fast
        # split hands those to it).
        import pydicom.data

        for name in _PYDICOM_FILES:
            with open(os.path.join(os.path.dirname(pydicom.data.__file__), name), "rb") as f:
                data = f.read()
            for _ in range(2):
                record = record_from_head(AET, "k", "s", len(data), data, complete=True)
                assert record is not None
                self.assertEqual(instance_row(record), _plain_row(data), name)

    def test_specific_character_set_decides(self) -> None:
        ds = index_data.build()[0].dataset
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "S\xe6ther^Ole"
        item = Dataset()
        item.PatientID = "S\xe6ther"  # a sequence's item: in the data set's character set too
        ds.OtherPatientIDsSequence = [item]
        latin1 = self.record(ds)
        # The same bytes (0xE6) in Latin-2 are another letter.
        data = index_data.part10(ds).replace(b"ISO_IR 100", b"ISO_IR 101")
        latin2 = record_from_head(AET, "k", "s", len(data), data, complete=True)
        assert latin2 is not None
        self.assertEqual(str(latin1.attributes.PatientName), "S\xe6ther^Ole")
        self.assertEqual(str(latin2.attributes.PatientName), "S\u0107ther^Ole")
        self.assertIn("S\u0107ther", instance_row(latin2).attributes)
        self.assertIn("S\xe6ther", instance_row(latin1).attributes)

    def test_a_sequence_seen_before_is_not_shared(self) -> None:
        ds = index_data.build()[0].dataset
        item = Dataset()
        item.PatientID = "OTHER-1"
        ds.OtherPatientIDsSequence = [item]
        first, second = self.record(ds), self.record(ds)
        self.assertIn("SQ", [key[1] for key in records._memo])  # the second from the memo
        self.assertEqual(instance_row(second), instance_row(first))
        self.assertIn("OTHER-1", instance_row(second).attributes)
        sequences = [r.attributes.OtherPatientIDsSequence for r in (first, second)]
        self.assertEqual([s[0].PatientID for s in sequences], ["OTHER-1", "OTHER-1"])
        self.assertIsNot(sequences[0][0], sequences[1][0])

    def test_private_creator_decides(self) -> None:
        ds = index_data.build()[0].dataset
        for creator in ("ACME 1", "OTHER 2"):
            ds.private_block(0x0011, creator, create=True).add_new(0x01, "LO", "same value")
            record = self.record(ds)
            self.assertEqual(record.attributes[0x00111001].private_creator, creator)
            del ds[0x00110010]
            del ds[0x00111001]

    def test_ambiguous_implicit_vr_is_decoded_each_time(self) -> None:
        ds = index_data.build()[0].dataset
        ds.add_new(0x00280106, "US", 0xFFFF)  # Smallest Image Pixel Value: US or SS
        found = []
        for representation in (0, 1):
            ds.PixelRepresentation = representation
            found.append(self.record(ds, implicit=True).attributes.SmallestImagePixelValue)
        self.assertEqual(found, [0xFFFF, -1])

    def test_a_full_memo_starts_again(self) -> None:
        self.patch(records, "MEMO_ENTRIES", 3)
        item = index_data.build()[0]
        record = record_from_head(AET, "k", "s", len(item.data), item.data, complete=True)
        assert record is not None
        self.assertLessEqual(len(records._memo), 3)
        self.assertEqual(instance_row(record), _plain_row(item.data))


class MatchingTests(Loaded):
    def test_single_values_and_required_keys(self) -> None:
        self.assertEqual(self.studies(PatientID="P3"), ["d", "e"])
        self.assertEqual(self.studies(AccessionNumber="ACC2"), ["b"])
        self.assertEqual(self.studies(StudyID="S-c"), ["c"])
        self.assertEqual(self.studies(PatientID="p3"), [])  # LO is case-sensitive

    def test_person_names_ignore_case_and_accents_stay(self) -> None:
        self.assertEqual(self.studies(PatientName="doe^john"), ["a"])
        self.assertEqual(self.studies(PatientName="DOE*"), ["a", "b"])
        self.assertEqual(self.studies(PatientName="buc^jérôme"), ["d", "e"])
        self.assertEqual(self.studies(PatientName="*JÉRÔME"), ["d", "e"])
        self.assertEqual(self.studies(PatientName="Buc^Jerome"), [])

    def test_wildcards_escape_like_specials(self) -> None:
        self.assertEqual(self.studies(PatientID="P_*"), ["a"])  # "_" is a character, not any one
        self.assertEqual(self.studies(PatientID="P?"), ["d", "c", "e"])
        self.assertEqual(self.studies(PatientID="P??"), ["a", "b"])
        self.assertEqual(self.studies(PatientID="*"), ["d", "a", "b", "c", "e"])
        self.assertEqual(like_pattern("a%b_c\\*?"), "a\\%b\\_c\\\\%_")

    def test_universal_matching_returns_empty_values(self) -> None:
        results = find(self, self.index, query(Target.studies(), AccessionNumber=""))
        self.assertEqual(len(results), 5)
        empty = next(r for r in results if r.StudyInstanceUID == index_data.STUDIES[2].uid)
        self.assertIn("AccessionNumber", empty)
        self.assertFalse(empty.AccessionNumber)
        # An empty value does not match a key with a value, "*" aside.
        self.assertEqual(self.studies(AccessionNumber="*"), ["d", "a", "b", "c", "e"])
        self.assertEqual(self.studies(AccessionNumber="A*"), ["d", "a", "b", "e"])

    def test_date_and_time_ranges(self) -> None:
        self.assertEqual(self.studies(StudyDate="20200101-20201231"), ["a", "b"])
        self.assertEqual(self.studies(StudyDate="-20200101"), ["d", "a"])
        self.assertEqual(self.studies(StudyDate="20200615-"), ["b", "c"])
        self.assertEqual(self.studies(StudyDate="20200615"), ["b"])
        self.assertEqual(self.studies(StudyTime="10"), ["e"])  # the whole hour
        self.assertEqual(self.studies(StudyTime="080000-120000"), ["a", "e"])
        self.assertEqual(self.studies(StudyTime="-0830"), ["a"])

    def test_uid_lists(self) -> None:
        a, _, c, *_ = index_data.STUDIES
        self.assertEqual(self.studies(StudyInstanceUID=f"{c.uid},{a.uid}"), ["a", "c"])

    def test_computed_attributes(self) -> None:
        self.assertEqual(self.studies(ModalitiesInStudy="CT"), ["a", "c"])
        self.assertEqual(self.studies(ModalitiesInStudy="M?"), ["b", "e"])
        results = find(
            self, self.index, query(Target.studies(), PatientID="P2", includefield="SOPClassesInStudy")
        )
        (c,) = results
        self.assertEqual(list(c.ModalitiesInStudy), ["CT", "SR"])
        self.assertEqual((c.NumberOfStudyRelatedSeries, c.NumberOfStudyRelatedInstances), (2, 2))
        self.assertEqual(list(c.SOPClassesInStudy), sorted([index_data.CT, index_data.SC]))
        self.assertEqual(self.studies(SOPClassesInStudy=index_data.MR), ["b", "e"])
        self.assertEqual(self.studies(NumberOfStudyRelatedInstances="5"), ["a"])
        self.assertEqual(c.InstanceAvailability, "ONLINE")

    def series_studies(self, **params: str) -> list[str]:
        by_uid = {s.uid: s.label for s in index_data.STUDIES}
        return [
            by_uid[r.StudyInstanceUID] for r in find(self, self.index, query(Target.all_series(), **params))
        ]

    def test_attributes_without_a_column(self) -> None:
        self.assertEqual(self.series_studies(InstitutionName="General Hospital"), ["a", "a", "c", "c"])
        self.assertEqual(self.series_studies(InstitutionName="*%"), ["b"])
        self.assertEqual(self.series_studies(InstitutionName="general hospital"), [])
        self.assertEqual(self.series_studies(InstitutionName="*"), ["d", "a", "a", "b", "c", "c", "e"])
        self.assertEqual(self.studies(PatientWeight="70.5"), ["d", "a", "b", "c", "e"])
        (a,) = find(self, self.index, query(Target.studies(), PatientID="P_1", includefield="PatientWeight"))
        self.assertEqual(float(a.PatientWeight), 70.5)
        self.assertEqual(a.PatientName, "Doe^John")

    def test_series_level_and_sequence_matching(self) -> None:
        a = index_data.STUDIES[0]
        series = find(self, self.index, query(Target.study_series(a.uid)))
        self.assertEqual([s.SeriesNumber for s in series], [1, 2])
        self.assertEqual([s.NumberOfSeriesRelatedInstances for s in series], [3, 2])
        first = series[0]
        (item,) = first.RequestAttributesSequence
        self.assertEqual(item.ScheduledProcedureStepID, "SPS-1")
        self.assertEqual(sorted(item.keys()), [0x00400009, 0x00401001])
        self.assertEqual(len(series[1].RequestAttributesSequence), 0)
        b = index_data.STUDIES[1]
        found = find(
            self,
            self.index,
            query(Target.all_series(), **{"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-2B"}),
        )
        self.assertEqual([s.StudyInstanceUID for s in found], [b.uid])
        self.assertEqual(len(found[0].RequestAttributesSequence), 2)
        found = find(
            self,
            self.index,
            query(Target.all_series(), **{"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-9"}),
        )
        self.assertEqual(found, [])

    def test_relational_series_match_upper_level_keys(self) -> None:
        found = find(self, self.index, query(Target.all_series(), PatientID="P3", Modality="MR"))
        self.assertEqual([s.StudyInstanceUID for s in found], [index_data.STUDIES[4].uid])
        self.assertEqual(found[0].ModalitiesInStudy, "MR")
        self.assertEqual(found[0].PatientName, "Buc^Jérôme")

    def test_instances(self) -> None:
        a = index_data.STUDIES[0]
        series_uid = index_data.uid("series", "a", 0)
        found = find(self, self.index, query(Target.study_series_instances(a.uid, series_uid)))
        self.assertEqual([r.InstanceNumber for r in found], [1, 2, 3])
        self.assertEqual({(r.Rows, r.Columns, r.BitsAllocated) for r in found}, {(2, 2, 16)})
        self.assertEqual({r.SOPClassUID for r in found}, {index_data.CT})
        found = find(
            self, self.index, query(Target.all_instances(), InstanceNumber="2", ImageType="ORIGINAL")
        )
        self.assertEqual(len(found), 3)  # a's two CT series, b's MR
        found = find(self, self.index, query(Target.study_instances(a.uid), includefield="ImageType"))
        self.assertEqual(len(found), 5)
        self.assertEqual(list(found[0].ImageType), ["ORIGINAL", "PRIMARY", "AXIAL"])

    def test_includefield_all(self) -> None:
        (e,) = find(
            self,
            self.index,
            parse_query(
                Target.studies(), {"PatientID": ["P3"], "AccessionNumber": ["ACC5"], "includefield": ["all"]}
            ).identifier,
        )
        self.assertEqual(e.PatientSex, "O")
        self.assertEqual(e.StudyTime, "101500.25")
        self.assertEqual(e.SpecificCharacterSet, "ISO_IR 192")

    def test_limit_offset_and_a_stable_order(self) -> None:
        everything = self.studies()
        self.assertEqual(everything, ["d", "a", "b", "c", "e"])  # by date (none last), time, UID
        identifier = query(Target.studies())
        pages = [find(self, self.index, identifier, limit=2, offset=o) for o in (0, 2, 4)]
        self.assertEqual([len(p) for p in pages], [2, 2, 1])
        uids = [r.StudyInstanceUID for p in pages for r in p]
        self.assertEqual(uids, [r.StudyInstanceUID for r in find(self, self.index, identifier)])
        # The same with a key matched on stored attributes (paged here, not in SQL).
        stored = query(Target.studies(), PatientWeight="70.5")
        self.assertEqual(
            [r.StudyInstanceUID for r in find(self, self.index, stored, limit=2, offset=3)], uids[3:5]
        )
        self.assertEqual(find(self, self.index, stored, limit=0), [])

    def test_other_aets_are_apart(self) -> None:
        results: list[Dataset] = []
        self.successResultOf(
            self.index.find("OTHER", query(Target.studies()), limit=None, offset=0, on_result=results.append)
        )
        self.assertEqual(results, [])

    def test_unsupported_level(self) -> None:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "PATIENT"
        failure = self.failureResultOf(
            self.index.find(AET, identifier, limit=None, offset=0, on_result=print)
        )
        self.assertIn("PATIENT", str(failure.value))


class WriteTests(SynchronousTestCase):
    def test_replace_remove_and_stamps(self) -> None:
        index = make_index(self)
        stored = index_data.build()
        for item in stored:
            self.assertIsNone(self.successResultOf(index.add(item.record)))
        stamps = self.successResultOf(index.stamps(AET))
        self.assertEqual(stamps, {item.record.key: item.record.stamp for item in stored})
        # Changed: the same instance with another patient name and stamp.
        item = next(s for s in stored if s.study.label == "c")
        ds = item.dataset
        ds.PatientName = "Smith^Anne"
        data = index_data.part10(ds)
        record = record_from_head(AET, item.record.key, "2:x", len(data), data, complete=True)
        assert record is not None
        self.assertEqual(self.successResultOf(index.add(record)), item.record.key)  # what it replaced
        self.assertEqual(self.successResultOf(index.stamps(AET))[item.record.key], "2:x")
        (c,) = find(self, index, query(Target.studies(), PatientID="P2"))
        self.assertEqual(c.PatientName, "Smith^Anne")
        self.assertEqual(c.NumberOfStudyRelatedInstances, 2)
        # Removed: the study and its series go with their last instance.
        for item in [s for s in stored if s.study.label == "c"]:
            self.assertTrue(self.successResultOf(index.remove(AET, item.record.sop_instance)))
        self.assertFalse(self.successResultOf(index.remove(AET, item.record.sop_instance)))
        self.assertEqual(find(self, index, query(Target.studies(), PatientID="P2")), [])
        self.assertEqual(find(self, index, query(Target.all_series(), PatientID="P2")), [])
        self.assertEqual(len(find(self, index, query(Target.studies()))), 4)

    def test_add_many_commits_together(self) -> None:
        """The records of `add_many` go in one transaction (not the first one alone), each
        with `add`'s result; a raw-path record's row is what is written."""
        from dicomrst.index import database

        index = make_index(self)
        stored = index_data.build()
        transactions: list[int] = []
        write_batch = database.write_batch

        def counted(session: Any, writes: list[Any]) -> list[object]:
            transactions.append(len(writes))
            return write_batch(session, writes)

        self.patch(database, "write_batch", counted)
        self.assertIsNone(self.successResultOf(index.add(stored[0].record)))
        raw = [
            record_from_head(AET, s.record.key, "2", len(s.data), s.data, complete=True, raw=True)
            for s in stored
        ]
        self.assertTrue(all(r is not None and r.row is not None for r in raw))
        results = self.successResultOf(index.add_many(raw))  # type: ignore[arg-type]
        self.assertEqual(results, [stored[0].record.key] + [None] * (len(stored) - 1))
        self.assertEqual(transactions, [1, len(stored)])
        self.assertEqual(set(self.successResultOf(index.stamps(AET)).values()), {"2"})
        self.assertEqual(self.successResultOf(index.add_many([])), [])

    def test_add_many_fails_as_its_write_does(self) -> None:
        """One bad record fails `add_many` with the index's own error (not FirstError);
        the others are committed."""
        index = make_index(self)
        stored = index_data.build()
        bad = IndexRecord(AET, "1.2", "1.2.3", None, "", "", "k", "s", 1, Dataset())  # type: ignore[arg-type]
        failure = self.failureResultOf(index.add_many([stored[0].record, bad, stored[1].record]))
        self.assertTrue(failure.check(IndexFailed), failure)
        self.assertEqual(len(self.successResultOf(index.stamps(AET))), 2)

    def test_committed_when_acknowledged(self) -> None:
        index = make_index(self)
        path = index.database.path  # type: ignore[attr-defined]
        item = index_data.build()[0]
        self.successResultOf(index.add(item.record))
        # Another connection (another process) sees it: the transaction is committed.
        with sqlite3.connect(path) as other:
            rows = other.execute("SELECT sop_uid, object_key, stamp FROM instances").fetchall()
        self.assertEqual(rows, [(item.record.sop_instance, item.record.key, item.record.stamp)])

    def test_remove_by_key(self) -> None:
        index = make_index(self)
        stored = index_data.build()
        for item in stored[:3]:
            self.successResultOf(index.add(item.record))
        self.assertTrue(self.successResultOf(index.remove_key(AET, stored[0].record.key)))
        self.assertFalse(self.successResultOf(index.remove_key(AET, stored[0].record.key)))
        self.assertFalse(self.successResultOf(index.remove_key("OTHER", stored[1].record.key)))
        self.assertEqual(set(self.successResultOf(index.stamps(AET))), {s.record.key for s in stored[1:3]})

    def test_an_instance_moved_to_another_series(self) -> None:
        index = make_index(self)
        item = index_data.build()[-1]  # study e's only instance
        self.successResultOf(index.add(item.record))
        ds = item.dataset
        ds.SeriesInstanceUID = index_data.uid("moved")
        data = index_data.part10(ds)
        record = record_from_head(AET, item.record.key, "2", len(data), data, complete=True)
        assert record is not None
        self.successResultOf(index.add(record))
        found = find(self, index, query(Target.all_series()))
        self.assertEqual([s.SeriesInstanceUID for s in found], [ds.SeriesInstanceUID])

    def test_concurrent_writes_share_a_transaction(self) -> None:
        pool = HeldPool()
        index = make_index(self, pool=InlinePool())
        held = SqlIndex(SqliteDatabase(ThreadsReactor(pool), index.database.path, pool=pool))  # type: ignore[attr-defined]
        stored = index_data.build()
        d = held.start()
        pool.run_next()
        self.successResultOf(d)
        adds = [held.add(item.record) for item in stored[:5]]
        self.assertEqual(len(pool.calls), 1)  # the first, alone; the rest wait for it
        pool.run_next()
        self.successResultOf(adds[0])
        self.assertNoResult(adds[1])
        self.assertEqual(len(pool.calls), 1)  # the other four, in one batch
        pool.run_next()
        for d in adds:
            self.successResultOf(d)
        self.assertEqual(len(find(self, index, query(Target.all_instances()))), 5)
        d = held.stop()
        self.successResultOf(d)

    def test_a_failing_write_fails_alone(self) -> None:
        pool = HeldPool()
        directory = self.mktemp()
        os.makedirs(directory)
        index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), os.path.join(directory, "i.sqlite"), pool=pool))
        d = index.start()
        pool.run_next()
        self.successResultOf(d)
        stored = index_data.build()
        first = index.add(stored[0].record)
        bad = IndexRecord(AET, "1.2", "1.2.3", None, "", "", "k", "s", 1, Dataset())  # type: ignore[arg-type]
        batch = [index.add(bad), index.add(stored[1].record)]
        pool.run_next()  # the first
        pool.run_next()  # the batch of two: fails
        while pool.calls:
            pool.run_next()  # one by one
        self.successResultOf(first)
        failure = self.failureResultOf(batch[0], IndexFailed)
        self.assertIn("sqlite", str(failure.value))
        self.successResultOf(batch[1])
        d = index.stop()
        self.successResultOf(d)


class SchemaTests(SynchronousTestCase):
    def path(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "index.sqlite")

    def version(self, path: str) -> int:
        with sqlite3.connect(path) as connection:
            return int(connection.execute("SELECT version FROM schema_version").fetchone()[0])

    def test_created_at_the_current_version(self) -> None:
        path = self.path()
        pool = InlinePool()
        index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), path, pool=pool))
        self.successResultOf(index.start())
        self.successResultOf(index.stop())
        self.assertEqual(self.version(path), SCHEMA_VERSION)
        # Started again: nothing to do, the version stays.
        index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), path, pool=pool))
        self.successResultOf(index.start())
        self.successResultOf(index.stop())
        self.assertEqual(self.version(path), SCHEMA_VERSION)

    def test_migrated_from_an_older_version(self) -> None:
        from dicomrst.index import session as session_module

        path = self.path()
        pool = InlinePool()
        index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), path, pool=pool))
        self.successResultOf(index.start())
        item = index_data.build()[0]
        self.successResultOf(index.add(item.record))
        self.successResultOf(index.stop())
        # A later version adds a column; the rows written before it stay.
        steps = [
            *migrations(SQLITE),
            ["ALTER TABLE instances ADD COLUMN later TEXT", "UPDATE instances SET later = 'x'"],
        ]
        database = SqliteDatabase(ThreadsReactor(pool), path, pool=pool)
        version = self.successResultOf(database.run(lambda s: session_module.migrate(s, steps)))
        self.assertEqual((version, self.version(path)), (2, 2))
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT sop_uid, later FROM instances").fetchall()
        self.assertEqual(rows, [(item.record.sop_instance, "x")])
        database.close()

    def test_a_newer_schema_is_refused(self) -> None:
        path = self.path()
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            connection.execute("INSERT INTO schema_version VALUES (99)")
        pool = InlinePool()
        index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), path, pool=pool))
        failure: Failure = self.failureResultOf(index.start(), IndexStartFailed)
        message = str(failure.value)
        self.assertTrue(message.startswith("index.url: "), message)
        self.assertIn("schema version 99", message)
        self.assertIn("upgrade dicomrst", message)
        self.assertEqual(self.version(path), 99)

    def test_an_unopenable_file(self) -> None:
        path = self.path()
        with open(path, "wb") as f:
            f.write(b"not a database" * 100)
        pool = InlinePool()
        index = SqlIndex(SqliteDatabase(ThreadsReactor(pool), path, pool=pool))
        failure = self.failureResultOf(index.start(), IndexStartFailed)
        self.assertIn(f"index.url: cannot open sqlite:{path}", str(failure.value))


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse_config(None)
        self.assertEqual(config.index.url, "sqlite:dicomrst-data/index.sqlite")
        self.assertEqual(config.index.scan_interval, 300_000)

    def test_urls(self) -> None:
        for url in (
            "sqlite:/var/lib/x.sqlite",
            "postgresql://u:p@127.0.0.1:5432/db",
            "postgres:///db?host=/tmp",
        ):
            self.assertEqual(parse_config({"index": {"url": url}}).index.url, url)
        for url, why in (
            ("sqlite:", "file path"),
            ("mysql://h/db", "postgresql://"),
            ("postgresql://h:99999/db", "postgresql://"),
            (5, "expected a string"),
        ):
            with self.assertRaises(ConfigError) as raised:
                parse_config({"index": {"url": url}})
            self.assertEqual(raised.exception.path, "index.url")
            self.assertIn(why, str(raised.exception))
        with self.assertRaises(ConfigError) as raised:
            parse_config({"index": {"url": "mysql://u:secret@h/db"}})
        self.assertNotIn("secret", str(raised.exception))

    def test_open_index(self) -> None:
        reactor: Any = ThreadsReactor()
        for url in ("sqlite:x.sqlite", "postgresql://u@127.0.0.1/db"):
            index = open_index(parse_config({"index": {"url": url}}).index, reactor)
            self.assertTrue(IIndex.providedBy(index))

    def test_passwords_stay_out_of_messages(self) -> None:
        self.assertEqual(redacted("postgresql://u:pw@h:5/db"), "postgresql://u:***@h:5/db")
        self.assertEqual(redacted("postgresql://h/db"), "postgresql://h/db")


class PeriodicScanTests(SynchronousTestCase):
    def test_at_start_then_every_interval_never_overlapping(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        from dicomrst.index.scans import PeriodicScans

        clock = Clock()
        started: list[Deferred[int]] = []

        def scan() -> Deferred[int]:
            started.append(Deferred())
            return started[-1]

        service = PeriodicScans("LOCAL", scan, 60.0, clock)
        service.startService()
        self.assertEqual(len(started), 1)
        joined = service.scan_now()  # joins the running one
        self.assertEqual(len(started), 1)
        clock.advance(120)
        self.assertEqual(len(started), 1)  # the interval counts from the end of a scan
        started[0].callback(7)
        self.assertEqual(self.successResultOf(joined), 7)
        clock.advance(59)
        self.assertEqual(len(started), 1)
        clock.advance(1)
        self.assertEqual(len(started), 2)
        started[1].errback(RuntimeError("bucket gone"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((service.scans, service.failures), (2, 1))
        clock.advance(60)
        self.assertEqual(len(started), 3)  # retried at the next interval
        failed = service.scan_now()
        started[2].errback(RuntimeError("again"))
        self.failureResultOf(failed, RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        stopped = service.stopService()
        self.successResultOf(stopped)
        clock.advance(600)
        self.assertEqual(len(started), 3)

    def test_a_store_or_database_error_is_one_line_not_a_traceback(self) -> None:
        from twisted.internet.defer import fail
        from twisted.internet.task import Clock
        from twisted.logger import globalLogPublisher

        from dicomrst.backends.s3.client import S3Error
        from dicomrst.index.scans import PeriodicScans

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        error = S3Error("bucket", 404, "NoSuchBucket", "The specified bucket does not exist")
        service = PeriodicScans("S3AET", lambda: fail(error), 0, Clock())
        service.startService()
        self.assertEqual(self.flushLoggedErrors(), [])
        [warned] = [e for e in events if e.get("log_namespace") == "dicomrst.index"]
        self.assertEqual(warned["why"], str(error))
        self.assertNotIn("log_failure", warned)
        self.assertEqual(service.failures, 1)


class _HeldIndex:
    """`add_many` answered only when the test says (`answer`); what each call was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[IndexRecord], Any]] = []

    def add_many(self, records: list[IndexRecord]) -> Any:
        from twisted.internet.defer import Deferred

        d: Deferred[list[str | None]] = Deferred()
        self.calls.append((records, d))
        return d

    def answer(self, n: int, failure: Exception | None = None) -> None:
        records, d = self.calls[n]
        if failure is not None:
            d.errback(failure)
        else:
            d.callback([None] * len(records))


class WritesTests(SynchronousTestCase):
    """`ScanBook.writes`: a scan's records go in batches, one after the other; the reads
    wait only when `WRITES_AHEAD` batches are queued; a failed batch fails `done`."""

    def setUp(self) -> None:
        from dicomrst.index import scans

        self.scans = scans
        self.index = _HeldIndex()
        self.book = scans.ScanBook(self.index, AET, "file")  # type: ignore[arg-type]
        self.book.begin(set())
        self.report = scans.ScanReport()
        self.records = [item.record for item in index_data.build()]

    def add(self, writes: Any, n: int) -> Any:
        from twisted.internet.defer import Deferred

        record = self.records[n % len(self.records)]
        return Deferred.fromCoroutine(writes.add(record, f"k{n}", "s", False))

    def test_batches_in_order_and_the_reads_wait_when_far_behind(self) -> None:
        from twisted.internet.defer import Deferred

        writes = self.scans.Writes(self.book, self.report, batch=2)
        added = [self.add(writes, n) for n in range(2 * (self.scans.WRITES_AHEAD + 1))]
        # One batch sent; the others queued behind it; the last add waits.
        self.assertEqual(len(self.index.calls), 1)
        self.assertEqual([bool(d.called) for d in added].count(False), 1)
        self.index.answer(0)
        self.assertTrue(all(d.called for d in added))
        self.assertEqual(len(self.index.calls), 2)  # the next batch, once the first is in
        done = Deferred.fromCoroutine(writes.done())
        for n in range(1, self.scans.WRITES_AHEAD + 1):
            self.assertNoResult(done)
            self.index.answer(n)
        self.successResultOf(done)
        self.assertEqual(self.report.added, 2 * (self.scans.WRITES_AHEAD + 1))

    def test_a_failed_batch_fails_done_and_stops_the_writes(self) -> None:
        from twisted.internet.defer import Deferred

        writes = self.scans.Writes(self.book, self.report, batch=2)
        for n in range(5):
            self.add(writes, n)
        done = Deferred.fromCoroutine(writes.done())
        self.index.answer(0, IndexFailed("down"))
        self.failureResultOf(done, IndexFailed)
        self.assertEqual(len(self.index.calls), 1)  # nothing written after the failure
        self.assertEqual(self.report.added, 0)

    def test_one_instance_twice_in_a_batch_learns_which_key_it_replaced(self) -> None:
        """Two keys of one instance in one batch: the second goes after the first."""
        from twisted.internet.defer import Deferred

        self.book.begin({"a", "b"})
        record = self.records[0]
        d = Deferred.fromCoroutine(
            self.book.add_many([(record, "a", "1", False), (record, "b", "1", False)], self.report)
        )
        self.assertEqual([len(r) for r, _ in self.index.calls], [1])
        self.index.calls[0][1].callback([None])
        self.assertEqual([len(r) for r, _ in self.index.calls], [1, 1])
        self.index.calls[1][1].callback(["a"])
        self.successResultOf(d)
        self.assertEqual((self.report.added, self.report.duplicates), (2, 1))
        self.assertEqual(self.book.skipped, {"b": "1"})

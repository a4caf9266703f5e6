"""The index on a real PostgreSQL server (started by the test from Debian's binaries), and on
SQLite in real threads: the same records give the same answers, in the same order, on
both; two indexes on one PostgreSQL database (two gateways) see each other's writes at
once; concurrent writes to one study from both are all kept; the schema is created once
and left alone by the next start; a scan's batch is one transaction."""

from __future__ import annotations

import os

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from dicomrst.common.dicomjson import encode_dataset
from dicomrst.index.database import IndexFailed, PostgresDatabase, SqlIndex, SqliteDatabase
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from tests.support import index_data
from tests.support.postgres import start_postgres

AET = "LOCAL"

A, B, C, D, E = index_data.STUDIES
SERIES_A0 = index_data.uid("series", "a", 0)

QUERIES: list[tuple[Target, dict[str, str]]] = [
    (Target.studies(), {}),
    (Target.studies(), {"PatientID": "P3"}),
    (Target.studies(), {"PatientName": "doe*"}),
    (Target.studies(), {"PatientName": "*JÉRÔME"}),
    (Target.studies(), {"PatientID": "P_*"}),
    (Target.studies(), {"PatientID": "P?"}),
    (Target.studies(), {"StudyDate": "20200101-20201231"}),
    (Target.studies(), {"StudyDate": "-20200101", "includefield": "all"}),
    (Target.studies(), {"StudyTime": "10"}),
    (Target.studies(), {"ModalitiesInStudy": "CT", "includefield": "SOPClassesInStudy"}),
    (Target.studies(), {"AccessionNumber": "A*", "PatientWeight": "70.5"}),
    (Target.studies(), {"StudyInstanceUID": f"{A.uid},{C.uid}"}),
    (Target.studies(), {"NumberOfStudyRelatedInstances": "5"}),
    (Target.study_series(A.uid), {}),
    (Target.all_series(), {"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-2B"}),
    (Target.all_series(), {"InstitutionName": "General*", "includefield": "all"}),
    (Target.all_series(), {"PatientID": "P3", "Modality": "MR"}),
    (Target.study_series_instances(A.uid, SERIES_A0), {"includefield": "all"}),
    (Target.study_instances(A.uid), {"InstanceNumber": "2"}),
    (Target.all_instances(), {"ImageType": "ORIGINAL", "includefield": "ImageType"}),
]


class IndexDatabaseTests(TestCase):
    timeout = 180

    async def postgres_index(self, url: str, start: bool = True) -> SqlIndex:
        from twisted.internet import reactor

        index = SqlIndex(PostgresDatabase(reactor, url, size=4))
        if start:
            await index.start()
        self.addCleanup(index.stop)
        return index

    async def sqlite_index(self) -> SqlIndex:
        from twisted.internet import reactor

        directory = self.mktemp()
        os.makedirs(directory)
        index = SqlIndex(SqliteDatabase(reactor, os.path.join(directory, "index.sqlite")))
        await index.start()
        self.addCleanup(index.stop)
        return index

    async def answers(self, index: SqlIndex, limit: int | None = None, offset: int = 0) -> list[list[bytes]]:
        answers = []
        for target, params in QUERIES:
            identifier = parse_query(target, {k: [v] for k, v in params.items()}).identifier
            results: list[Dataset] = []
            await index.find(AET, identifier, limit=limit, offset=offset, on_result=results.append)
            answers.append([encode_dataset(r) for r in results])
        return answers

    async def test_postgresql_answers_as_sqlite_does(self) -> None:
        pg = await start_postgres(self)
        stored = index_data.build(AET)
        postgres = await self.postgres_index(pg.url())
        sqlite = await self.sqlite_index()
        # Every add at once: the writes queue, and commit in batches.
        for index in (postgres, sqlite):
            results = await DeferredList([index.add(item.record) for item in stored], consumeErrors=True)
            self.assertTrue(all(ok for ok, _ in results), results)
        expected = await self.answers(sqlite)
        self.assertEqual(await self.answers(postgres), expected)
        self.assertEqual([len(a) for a in expected][:3], [5, 2, 2])
        self.assertTrue(all(expected[1:13]), "a query found nothing")
        self.assertEqual(
            await self.answers(postgres, limit=1, offset=1), await self.answers(sqlite, limit=1, offset=1)
        )
        self.assertEqual(await postgres.stamps(AET), await sqlite.stamps(AET))

    async def test_scan_records_in_one_transaction(self) -> None:
        """What a reconcile scan writes: records made from raw bytes, `add_many` (one
        transaction on PostgreSQL too); the answers are those of pydicom's records."""
        from dicomrst.index import database
        from dicomrst.index.records import record_from_head

        pg = await start_postgres(self)
        stored = index_data.build(AET)
        postgres = await self.postgres_index(pg.url())
        sqlite = await self.sqlite_index()
        for item in stored:
            await sqlite.add(item.record)
        transactions: list[int] = []
        write_batch = database.write_batch

        def counted(session: object, writes: list[object]) -> list[object]:
            transactions.append(len(writes))
            return write_batch(session, writes)  # type: ignore[arg-type]

        self.patch(database, "write_batch", counted)
        raw = [
            record_from_head(
                AET, s.record.key, s.record.stamp, s.record.size, s.data, complete=True, raw=True
            )
            for s in stored
        ]
        self.assertTrue(all(r is not None and r.row is not None for r in raw))
        self.assertEqual(await postgres.add_many(raw), [None] * len(stored))  # type: ignore[arg-type]
        self.assertEqual(transactions, [len(stored)])
        self.assertEqual(await self.answers(postgres), await self.answers(sqlite))

    async def test_two_gateways_on_one_database(self) -> None:
        pg = await start_postgres(self)
        first = await self.postgres_index(pg.url(), start=False)
        second = await self.postgres_index(pg.url(), start=False)
        # Started at once on an empty database: one creates the schema, the other waits for
        # it (the migration's lock) and finds it there.
        started = await DeferredList([first.start(), second.start()], consumeErrors=True)
        self.assertTrue(all(ok for ok, _ in started), started)
        stored = index_data.build(AET)
        study_a = [item for item in stored if item.study.label == "a"]
        # Both write instances of one study and series at once (upserts of the same rows).
        writes = [(first if i % 2 else second).add(item.record) for i, item in enumerate(study_a)]
        results = await DeferredList(writes, consumeErrors=True)
        self.assertTrue(all(ok for ok, _ in results), results)
        for index in (first, second):
            found: list[Dataset] = []
            identifier = parse_query(Target.studies(), {}).identifier
            await index.find(AET, identifier, limit=None, offset=0, on_result=found.append)
            self.assertEqual(
                [(r.StudyInstanceUID, r.NumberOfStudyRelatedInstances) for r in found], [(A.uid, 5)]
            )
        # A write through one is found through the other as soon as it is acknowledged.
        other = next(item for item in stored if item.study.label == "b")
        await first.add(other.record)
        found = []
        identifier = parse_query(Target.studies(), {"PatientID": ["PX1"]}).identifier
        await second.find(AET, identifier, limit=None, offset=0, on_result=found.append)
        self.assertEqual([r.StudyInstanceUID for r in found], [B.uid])
        self.assertTrue(await second.remove(AET, other.record.sop_instance))
        found = []
        await first.find(AET, identifier, limit=None, offset=0, on_result=found.append)
        self.assertEqual(found, [])

    async def test_a_restarted_server_is_reconnected_to(self) -> None:
        pg = await start_postgres(self)
        index = await self.postgres_index(pg.url())
        stored = index_data.build(AET)
        await index.add(stored[0].record)
        identifier = parse_query(Target.studies(), {}).identifier

        async def count() -> int:
            found: list[Dataset] = []
            await index.find(AET, identifier, limit=None, offset=0, on_result=found.append)
            return len(found)

        # Searches at once: every thread of the pool opens its connection.
        self.assertEqual(
            [n for _, n in await DeferredList([Deferred.fromCoroutine(count()) for _ in range(8)])], [1] * 8
        )
        await pg.stop()
        # Down: a search and a write fail as the index's failure (502), and nothing hangs.
        with self.assertRaises(IndexFailed):
            await index.find(AET, identifier, limit=None, offset=0, on_result=lambda ds: None)
        with self.assertRaises(IndexFailed):
            await index.add(stored[1].record)
        await pg.start()
        # Up again: every thread's connection, broken, is replaced as it is used.
        counted = await DeferredList([Deferred.fromCoroutine(count()) for _ in range(8)], consumeErrors=True)
        self.assertEqual(counted, [(True, 1)] * 8)
        await index.add(stored[1].record)
        self.assertEqual(len(await index.stamps(AET)), 2)

"""The S3 reconcile scan against moto's S3 server (a subprocess on loopback, signatures
checked), into an SQLite index: objects put with boto3 behind the gateway's back are
found and searchable after a scan, a replaced object is re-read, a deleted one leaves the
index, a non-DICOM object is logged once and not read again, an unchanged bucket costs
only its listing, and an object's head is read by range, not whole.  Objects outside the
``{prefix}{study}/{series}/{sop}.dcm`` layout, or whose UIDs name another key, are not
indexed (WADO-RS could not retrieve them): counted, and logged once."""

from __future__ import annotations

import os
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from dicomrst.backends.s3 import S3Backend
from dicomrst.backends.s3.reconcile import GROWTH, SCAN_HEAD_BYTES, S3Reconciler
from dicomrst.config import parse_config
from dicomrst.index.database import SqlIndex, SqliteDatabase
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from tests.support import index_data, peers

BUCKET = "indexed"
AET = "S3AET"
PREFIX = "archive/"


class S3ReconcileTests(TestCase):
    timeout = 240

    async def test_objects_behind_the_gateways_back(self) -> None:
        from twisted.internet import reactor

        moto = await peers.start_moto(self)
        await moto.enable_auth()
        s3: Any = moto.boto3()
        await deferToThread(s3.create_bucket, Bucket=BUCKET)
        stored = index_data.build(AET)
        keys = {item.record.sop_instance: PREFIX + item.record.key for item in stored}

        def put(key: str, body: bytes) -> Any:
            return deferToThread(moto.boto3().put_object, Bucket=BUCKET, Key=key, Body=body)

        for item in stored[:-1]:
            await put(keys[item.record.sop_instance], item.data)
        # A large object: only its head is read (pixel data is last).
        big = index_data.dataset(index_data.STUDIES[0], 9, index_data.Series(9, "CT", index_data.CT, 1), 1)
        big.PixelData = bytes(4 << 20)
        big.Rows, big.Columns = 1024, 2048
        big_data = index_data.part10(big)

        def key_of(ds: Dataset) -> str:
            return f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"

        await put(key_of(big), big_data)
        # One whose data set is longer than the first read: read on until Pixel Data.
        long = index_data.dataset(index_data.STUDIES[0], 9, index_data.Series(9, "CT", index_data.CT, 1), 2)
        long.ICCProfile = bytes(40_000)
        long.PixelData = bytes(1 << 20)
        long.Rows, long.Columns = 512, 1024
        await put(key_of(long), index_data.part10(long))
        await put(f"{PREFIX}1.2/3.4/5.6.dcm", b"not DICOM at all")
        await put("elsewhere/x.dcm", stored[0].data)  # outside the prefix: not this AET's
        # Outside the layout: never read.  In the layout but not where its UIDs put it:
        # read once, not indexed.
        for key in ("notes.txt", "copy.dcm", "a/b.dcm", "1.2/3.4/5.6/7.dcm", "1.2//3.dcm"):
            await put(PREFIX + key, stored[0].data)
        misplaced = f"{PREFIX}{stored[0].record.study}/{stored[0].record.series}/1.2.3.dcm"
        await put(misplaced, stored[0].data)

        config = parse_config(
            {
                "aets": [
                    {
                        "aet": AET,
                        "backend": "S3",
                        "endpoint": moto.url,
                        "endpoint-style": "path",
                        "bucket": BUCKET,
                        "prefix": PREFIX,
                        "credentials": {"access-key": moto.access_key, "secret-key": moto.secret_key},
                    }
                ]
            }
        )
        backend = S3Backend(config.aets[0], reactor)
        self.addCleanup(backend.stop)
        directory = self.mktemp()
        os.makedirs(directory)
        index = SqlIndex(SqliteDatabase(reactor, os.path.join(directory, "index.sqlite")))
        await index.start()
        self.addCleanup(index.stop)
        scanner = S3Reconciler(backend.client, index, AET, PREFIX, reactor, concurrency=8)

        async def studies(**params: str) -> list[Dataset]:
            query = parse_query(Target.studies(), {k: [v] for k, v in params.items()})
            found: list[Dataset] = []
            await index.find(AET, query.identifier, limit=None, offset=0, on_result=found.append)
            return found

        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "dicomrst.index" and event["log_level"].name == "warn":
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        first = await scanner.scan()
        self.assertEqual(
            (first.listed, first.added, first.unreadable, first.misplaced, first.strays),
            (len(stored) + 3, len(stored) + 1, 1, 1, 5),
        )
        small = sum(len(item.data) for item in stored[:-1])
        heads = SCAN_HEAD_BYTES + SCAN_HEAD_BYTES * GROWTH  # the big one's, the long one's
        self.assertEqual(first.bytes_read, small + heads + len(b"not DICOM at all") + len(stored[0].data))
        (strays,) = [w for w in warnings if "not {study}/{series}/{sop}.dcm" in w]
        self.assertIn("5 object(s) of S3AET", strays)
        self.assertIn(f"{PREFIX}1.2//3.dcm", strays)  # keys in order: the first three named
        self.assertNotIn(f"{PREFIX}notes.txt", strays)
        (wrong,) = [w for w in warnings if misplaced in w]
        self.assertIn("1 s3 object(s) of S3AET are not where their UIDs put them", wrong)
        self.assertIn(f"its UIDs say {keys[stored[0].record.sop_instance]}", wrong)
        self.assertEqual(len(await studies()), 4)  # e's only instance was not put
        (a,) = await studies(PatientID="P_1")
        self.assertEqual(a.NumberOfStudyRelatedInstances, 7)  # five, the big and the long one
        stamps = await index.stamps(AET)
        self.assertEqual(set(stamps), {*list(keys.values())[:-1], key_of(big), key_of(long)})

        # Nothing changed: only the listing is read, the non-DICOM object included; the
        # keys outside the layout are counted again, not logged again.
        del warnings[:]
        again = await scanner.scan()
        self.assertEqual(
            (again.added, again.changed, again.removed, again.unreadable, again.bytes_read), (0,) * 5
        )
        self.assertEqual((again.strays, again.misplaced, warnings), (5, 0, []))

        # Added, replaced, deleted.
        await put(keys[stored[-1].record.sop_instance], stored[-1].data)
        changed = next(item for item in stored if item.study.label == "c")
        ds = changed.dataset
        ds.PatientName = "Smith^Anne"
        await put(keys[changed.record.sop_instance], index_data.part10(ds))
        gone = [item for item in stored if item.study.label == "b"]
        for item in gone:
            await deferToThread(moto.boto3().delete_object, Bucket=BUCKET, Key=keys[item.record.sop_instance])
        third = await scanner.scan()
        self.assertEqual((third.added, third.changed, third.removed), (1, 1, len(gone)))
        self.assertEqual(await studies(PatientID="PX1"), [])
        (c,) = await studies(PatientID="P2")
        self.assertEqual(c.PatientName, "Smith^Anne")
        self.assertEqual(len(await studies(PatientID="P3")), 2)

        # One instance under two keys, each where its study and series put it (the series
        # was re-assigned): one record, and the other key is not read again at every scan
        # (each would swap which key the index holds).
        copied = stored[0]
        moved = copied.dataset
        moved.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.99.1"
        await put(key_of(moved), index_data.part10(moved))
        fourth = await scanner.scan()
        self.assertEqual((fourth.added, fourth.duplicates), (1, 1))
        fifth = await scanner.scan()
        sixth = await scanner.scan()
        self.assertEqual((sixth.added, sixth.changed, sixth.duplicates, sixth.bytes_read), (0, 0, 0, 0))
        self.assertLessEqual(fifth.added + fifth.duplicates, 2)
        stamps = await index.stamps(AET)
        self.assertEqual(len({keys[copied.record.sop_instance], key_of(moved)} & set(stamps)), 1)

        # A key indexed before that a rename takes out of the layout leaves the index.
        await deferToThread(moto.boto3().delete_object, Bucket=BUCKET, Key=key_of(big))
        await put(f"{PREFIX}big.dcm", big_data)
        seventh = await scanner.scan()
        self.assertEqual((seventh.removed, seventh.added, seventh.strays), (1, 0, 6))
        self.assertNotIn(key_of(big), await index.stamps(AET))

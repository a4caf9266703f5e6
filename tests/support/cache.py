"""The instance cache's test base: a cache over real files in the test's temporary
directory, time a `Clock`, the backend a `FakeBackend`; `Item`, an instance as a PACS
sends it, and `send`, which hands one to the sink a retrieve was given."""

from __future__ import annotations

import io
import os
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.cache import CachedInstance, InstanceCache
from dicomrst.cache.store import MARKER
from dicomrst.common.interfaces import IInstanceConsumer, IInstanceSink
from tests.support.datasets import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    assert_same_dataset,
    encode,
    instance,
)
from tests.support.fakes import FakeBackend, RetrieveCall

STUDY = "1.2.826.0.1.3680043.10.1"
SERIES = "1.2.826.0.1.3680043.10.1.1"
TTL = 300.0


def sop_uid(n: int, series: str = SERIES) -> str:
    return f"{series}.{n}"


class Item:
    """One instance as a PACS sends it: UIDs, data set bytes, the syntax they are in."""

    def __init__(
        self, n: int, series: str = SERIES, syntax: str = EXPLICIT_VR_LE, pixels: int = 4096
    ) -> None:
        ds = instance(STUDY, series, pixels)
        ds.SOPInstanceUID = sop_uid(n, series)
        ds.InstanceNumber = n
        self.ds = ds
        self.sop = str(ds.SOPInstanceUID)
        self.syntax = syntax
        self.data = encode(ds, implicit=syntax == IMPLICIT_VR_LE)


def send(
    sink: IInstanceSink, item: Item, *, pieces: int = 3, finish: bool = True, upto: int | None = None
) -> IInstanceConsumer:
    """Hand `item` to `sink` as a retrieve does: `begin`, fragments, `dataFinished`
    (`upto`: stop after that many bytes, unfinished)."""
    consumer = sink.begin(CT_IMAGE_STORAGE, item.sop, item.syntax)
    data = item.data if upto is None else item.data[:upto]
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        consumer.dataReceived(data[start : start + step])
    if finish and upto is None:
        consumer.dataFinished()
    return consumer


class CacheTestCase(SynchronousTestCase):
    max_size = 10_000_000

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = self.mktemp()
        self.backend = FakeBackend("PACS")
        self.asked: list[Deferred[CachedInstance]] = []
        # Runs last: waits left pending were answered by the cache's stop.
        self.addCleanup(lambda: [d.addErrback(lambda _: None) for d in self.asked])
        self.cache = self.make_cache()
        self.cache.start()
        self.addCleanup(lambda: self.cache.stop())

    def make_cache(self, **kwargs: Any) -> InstanceCache:
        kwargs.setdefault("max_size", self.max_size)
        kwargs.setdefault("ttl", TTL)
        # The series retrieve alone, so most tests have one retrieve to feed;
        # InstanceFirstTests cover the instance fetched ahead of it.
        kwargs.setdefault("instance_first", False)
        return InstanceCache(self.clock, self.directory, **kwargs)

    def ask(
        self, n: int, backend: FakeBackend | None = None, series: str = SERIES
    ) -> Deferred[CachedInstance]:
        d = self.cache.instance(backend or self.backend, STUDY, series, sop_uid(n, series))
        self.asked.append(d)
        return d

    def got(self, d: Deferred[CachedInstance], item: Item) -> Dataset:
        """`d` fired with `item`'s entry: a Part-10 file of its data set, as it arrived."""
        found = self.successResultOf(d)
        with found:
            raw = found.file.read()
        self.assertEqual(len(raw), found.size)
        self.assertEqual((found.sop_instance_uid, found.transfer_syntax), (item.sop, item.syntax))
        self.assertEqual(raw[found.dataset_offset :], item.data)
        ds = dcmread(io.BytesIO(raw))
        self.assertEqual(ds.file_meta.TransferSyntaxUID, item.syntax)
        self.assertEqual(ds.file_meta.MediaStorageSOPInstanceUID, item.sop)
        assert_same_dataset(self, ds, item.ds, item.sop)
        return ds

    def files(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if n != MARKER)

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.directory, n)) for n in self.files())

    def the_retrieve(self, index: int = 0) -> RetrieveCall:
        return self.backend.retrieves[index]

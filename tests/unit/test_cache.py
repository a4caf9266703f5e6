"""The instance cache (dicomrst.cache): entries, bounds, coalesced retrieves, the tee.

Real files in the test's temporary directory; time is a `Clock`; the backend is the web
tests' `FakeBackend`, whose retrieves the tests feed instance by instance, fragment by
fragment, through the sink the cache gave it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from dicomrst.cache import CachedInstance, CacheDirectoryError, InstanceCache
from dicomrst.cache.store import MARKER
from dicomrst.common.interfaces import STORE_SUCCESS
from dicomrst.errors import NotFound, ServiceUnavailable, UpstreamError
from dicomrst.wado.metadata import instance_metadata_json
from dicomrst.wado.negotiation import select_instance_media
from dicomrst.wado.sinks import MultipartSink
from tests.support.cache import SERIES, STUDY, TTL, CacheTestCase, Item, send, sop_uid
from tests.support.datasets import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from tests.support.fakes import FakeBackend
from tests.support.sinks import StubRequest

OTHER_SERIES = "1.2.826.0.1.3680043.10.1.2"


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class CoalescingTests(CacheTestCase):
    def test_one_retrieve_serves_every_instance_of_the_series(self) -> None:
        items = [Item(n) for n in range(5)]
        waiting = [self.ask(n) for n in range(5)]
        self.assertEqual(len(self.backend.retrieves), 1)
        call = self.the_retrieve()
        # The whole series, not the instance asked for.
        self.assertEqual((call.study, call.series, call.instance), (STUDY, SERIES, None))
        for item in items:
            consumer = send(call.sink, item)
            self.assertEqual(self.successResultOf(consumer.done), STORE_SUCCESS)
        call.deferred.callback(5)
        for d, item in zip(waiting, items, strict=True):
            self.got(d, item)
        # Later calls are served from disk.
        for item in reversed(items):
            self.got(self.ask(int(item.sop.rsplit(".", 1)[1])), item)
        self.assertEqual(len(self.backend.retrieves), 1)
        self.assertEqual((self.cache.fills, self.cache.misses, self.cache.hits), (1, 5, 5))

    def test_holds_and_filling(self) -> None:
        """What the frames route asks before it reads by range (`holds`, `filling`)."""
        self.assertFalse(self.cache.holds("PACS", sop_uid(0)))
        self.assertFalse(self.cache.filling("PACS", STUDY, SERIES))
        first = self.ask(0)
        self.assertTrue(self.cache.filling("PACS", STUDY, SERIES))
        self.assertFalse(self.cache.filling("PACS", STUDY, "1.2.3.other"))
        self.assertFalse(self.cache.filling("OTHER", STUDY, SERIES))
        send(self.the_retrieve().sink, Item(0))
        self.got(first, Item(0))
        self.assertTrue(self.cache.holds("PACS", sop_uid(0)))
        self.assertFalse(self.cache.holds("OTHER", sop_uid(0)))
        self.the_retrieve().deferred.callback(1)
        self.assertFalse(self.cache.filling("PACS", STUDY, SERIES))
        self.clock.advance(TTL + 1)
        self.assertFalse(self.cache.holds("PACS", sop_uid(0)))

    def test_concurrent_misses_wait_for_one_retrieve(self) -> None:
        first = self.ask(0)
        send(self.the_retrieve().sink, Item(0))
        self.got(first, Item(0))
        # The retrieve is still running: misses for instances not in yet join it.
        later = [self.ask(n) for n in (3, 1, 3)]
        self.assertEqual(len(self.backend.retrieves), 1)
        for n in (1, 2, 3):
            send(self.the_retrieve().sink, Item(n))
        self.got(later[0], Item(3))
        self.got(later[1], Item(1))
        self.got(later[2], Item(3))

    def test_each_waiter_fires_when_its_instance_is_in(self) -> None:
        first, last = self.ask(0), self.ask(9)
        call = self.the_retrieve()
        partial = send(call.sink, Item(0), upto=1000)
        self.assertNoResult(first)  # not before it is whole
        partial.dataReceived(Item(0).data[1000:])
        partial.dataFinished()
        self.got(first, Item(0))
        self.assertNoResult(last)
        self.assertNoResult(call.deferred)  # the series is not over

    def test_an_instance_the_series_lacks_is_not_found(self) -> None:
        missing = self.ask(7)
        call = self.the_retrieve()
        send(call.sink, Item(0))
        call.deferred.callback(1)
        error = self.failureResultOf(missing, NotFound).value
        self.assertIn(sop_uid(7), str(error))

    def test_a_failed_retrieve_fails_its_waiters(self) -> None:
        a, b = self.ask(0), self.ask(1)
        call = self.the_retrieve()
        send(call.sink, Item(0))
        call.deferred.errback(UpstreamError("PACS answered C-MOVE with status 0xA701"))
        self.got(a, Item(0))  # in before the failure
        self.assertIn("0xA701", str(self.failureResultOf(b, UpstreamError).value))
        # The next call tries again.
        self.ask(1)
        self.assertEqual(len(self.backend.retrieves), 2)

    def test_a_waiter_that_leaves_does_not_stop_the_retrieve(self) -> None:
        a, b = self.ask(0), self.ask(1)
        call = self.the_retrieve()
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.assertFalse(call.cancelled)
        send(call.sink, Item(1))
        self.got(b, Item(1))
        # Nobody waits any more: it still runs to the end, and what it brings is kept.
        gone = self.ask(2)
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        send(call.sink, Item(0))
        send(call.sink, Item(2))
        call.deferred.callback(3)
        self.assertFalse(call.cancelled)
        self.got(self.ask(0), Item(0))
        self.got(self.ask(2), Item(2))
        self.assertEqual(len(self.backend.retrieves), 1)

    def test_another_series_is_another_retrieve(self) -> None:
        self.ask(0)
        self.ask(0, series=OTHER_SERIES)
        self.assertEqual([c.series for c in self.backend.retrieves], [SERIES, OTHER_SERIES])

    def test_no_hit_across_aets(self) -> None:
        a, b = FakeBackend("A"), FakeBackend("B")
        first = self.ask(0, a)
        send(a.retrieves[0].sink, Item(0))
        a.retrieves[0].deferred.callback(1)
        self.got(first, Item(0))
        self.got(self.ask(0, a), Item(0))
        # The same SOP Instance UID at another AET is another instance.
        other = self.ask(0, b)
        self.assertNoResult(other)
        self.assertEqual(len(b.retrieves), 1)
        send(b.retrieves[0].sink, Item(0))
        self.got(other, Item(0))
        self.assertEqual(len(self.files()), 2)

    def test_stop_answers_waiters_and_cancels_its_retrieves(self) -> None:
        waiting = self.ask(0)
        call = self.the_retrieve()
        self.cache.stop()
        self.assertIsInstance(self.failureResultOf(waiting).value, ServiceUnavailable)
        self.assertTrue(call.cancelled)
        self.assertRaises(ConnectionError, call.sink.begin, CT_IMAGE_STORAGE, sop_uid(0), EXPLICIT_VR_LE)
        self.failureResultOf(self.ask(1), ServiceUnavailable)
        self.assertEqual(self.files(), [])


class InstanceFirstTests(CacheTestCase):
    """On a miss, the instance asked for is retrieved alone, then its series."""

    def make_cache(self, **kwargs: Any) -> InstanceCache:
        return super().make_cache(instance_first=True, **kwargs)

    def test_the_instance_asked_for_comes_first_then_its_series(self) -> None:
        items = [Item(n) for n in range(4)]
        first = self.ask(3)
        self.assertEqual(len(self.backend.retrieves), 1)
        lead = self.the_retrieve()
        self.assertEqual((lead.study, lead.series, lead.instance), (STUDY, SERIES, sop_uid(3)))
        # Misses for other instances meanwhile wait for the series, not a retrieve each.
        other = self.ask(1)
        self.assertTrue(self.cache.filling("PACS", STUDY, SERIES))
        send(lead.sink, items[3])
        self.got(first, items[3])
        self.assertEqual(len(self.backend.retrieves), 1)  # the series starts when it ends
        lead.deferred.callback(1)
        self.assertEqual(len(self.backend.retrieves), 2)
        series = self.the_retrieve(1)
        self.assertEqual((series.series, series.instance), (SERIES, None))
        # The PACS sends the whole series, the instance already kept included.
        for item in reversed(items):
            self.assertEqual(self.successResultOf(send(series.sink, item).done), STORE_SUCCESS)
        self.got(other, items[1])
        series.deferred.callback(4)
        self.assertFalse(self.cache.filling("PACS", STUDY, SERIES))
        self.assertEqual(len(self.files()), 4)  # one entry each, the first not written twice
        self.got(self.ask(0), items[0])
        self.assertEqual((self.cache.fills, len(self.backend.retrieves)), (1, 2))

    def test_a_failed_instance_retrieve_still_retrieves_the_series(self) -> None:
        waiting = self.ask(2)
        self.the_retrieve().deferred.errback(NotFound("PACS has no instance"))
        self.assertNoResult(waiting)
        series = self.the_retrieve(1)
        send(series.sink, Item(0))
        series.deferred.callback(1)
        # The series decides: it did not bring the instance either.
        self.assertIn(sop_uid(2), str(self.failureResultOf(waiting, NotFound).value))

    def test_the_series_failing_fails_the_rest(self) -> None:
        first, other = self.ask(0), self.ask(1)
        send(self.the_retrieve().sink, Item(0))
        self.the_retrieve().deferred.callback(1)
        self.got(first, Item(0))
        self.the_retrieve(1).deferred.errback(UpstreamError("C-GET failed with status 0xA701"))
        self.failureResultOf(other, UpstreamError)

    def test_stop_during_the_instance_retrieve(self) -> None:
        waiting = self.ask(0)
        lead = self.the_retrieve()
        self.cache.stop()
        self.assertTrue(lead.cancelled)
        self.failureResultOf(waiting, ServiceUnavailable)
        self.assertEqual(len(self.backend.retrieves), 1)  # no series after the stop
        self.assertFalse(self.cache.filling("PACS", STUDY, SERIES))


class EntryTests(CacheTestCase):
    def test_an_entry_is_a_part10_file_in_the_syntax_it_arrived_in(self) -> None:
        item = Item(0, syntax=IMPLICIT_VR_LE)
        waiting = self.ask(0)
        send(self.the_retrieve().sink, item)
        ds = self.got(waiting, item)
        self.assertEqual(ds.file_meta.MediaStorageSOPClassUID, CT_IMAGE_STORAGE)
        self.assertEqual(ds.file_meta.SourceApplicationEntityTitle, "PACS")

    def test_a_failed_part_leaves_no_entry(self) -> None:
        waiting = self.ask(0)
        call = self.the_retrieve()
        consumer = send(call.sink, Item(0), upto=2000)
        # Under a temporary name while it is written: not an entry anyone can see.
        [temporary] = self.files()
        self.assertTrue(temporary.endswith(".part"), temporary)
        self.assertNotIn(("PACS", sop_uid(0)), self.cache.store)
        self.assertIsNone(self.cache.store.lookup(("PACS", sop_uid(0))))
        answered: list[Failure] = []
        consumer.done.addErrback(answered.append)  # as the retrieve does, to answer the C-STORE
        consumer.dataFailed(Failure(ConnectionError("association aborted")))
        self.assertTrue(answered[0].check(ConnectionError))
        self.assertEqual(self.files(), [])
        call.deferred.errback(UpstreamError("PACS: C-MOVE ended after 1 instance(s)"))
        self.failureResultOf(waiting, UpstreamError)
        self.assertEqual(len(self.cache.store), 0)

    def test_an_instance_that_came_but_was_not_kept_is_fetched_alone(self) -> None:
        # The part failed, yet the C-MOVE ended well (a PACS that counts the failure as
        # a warning): the instance exists, so it is asked for by itself.
        waiting = self.ask(0)
        call = self.the_retrieve()
        send(call.sink, Item(0), upto=2000).dataFailed(Failure(ConnectionError("aborted")))
        call.deferred.callback(0)
        self.assertNoResult(waiting)
        alone = self.backend.retrieves[1]
        self.assertEqual((alone.series, alone.instance), (SERIES, sop_uid(0)))
        send(alone.sink, Item(0))
        alone.deferred.callback(1)
        found = self.successResultOf(waiting)
        self.assertIsNone(found.path)  # a private copy
        with found:
            self.assertEqual(found.file.read()[found.dataset_offset :], Item(0).data)

    def test_an_open_entry_stays_readable_after_eviction(self) -> None:
        item = Item(0)
        waiting = self.ask(0)
        send(self.the_retrieve().sink, item)
        found = self.successResultOf(waiting)
        self.addCleanup(found.close)
        self.clock.advance(TTL)  # expired: unlinked
        self.assertEqual(self.files(), [])
        self.assertEqual(found.file.read()[found.dataset_offset :], item.data)

    def test_an_aet_that_is_not_cached_gets_a_private_copy(self) -> None:
        self.cache.stop()
        self.cache = self.make_cache(bypass=["PACS"])
        self.cache.start()
        waiting = self.ask(0)
        call = self.the_retrieve()
        self.assertEqual(call.instance, sop_uid(0))  # that instance alone
        self.assertEqual(self.files(), [])  # anonymous
        send(call.sink, Item(0))
        call.deferred.callback(1)
        found = self.successResultOf(waiting)
        self.assertIsNone(found.path)
        self.got(succeed_with(found), Item(0))
        self.assertEqual(len(self.cache.store), 0)
        self.ask(0)
        self.assertEqual(len(self.backend.retrieves), 2)
        # Nor do responses fill it.
        sink = RecordingSink()
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        self.assertIs(self.backend.retrieves[2].sink, sink)

    def test_a_private_retrieve_that_brings_nothing_is_not_found(self) -> None:
        self.cache.stop()
        self.cache = self.make_cache(max_size=0)  # no cache at all
        self.cache.start()
        waiting = self.ask(0)
        self.the_retrieve().deferred.callback(0)
        self.failureResultOf(waiting, NotFound)


class OffTests(SynchronousTestCase):
    def test_a_cache_that_keeps_nothing(self) -> None:
        """What routes get when the app was built without a cache: each instance alone, in
        an anonymous temporary file; the system's temporary directory is never claimed."""
        cache = InstanceCache.off(Clock())
        cache.start()
        self.assertFalse(os.path.exists(os.path.join(cache.directory, MARKER)))
        backend = FakeBackend("PACS")
        waiting = cache.instance(backend, STUDY, SERIES, sop_uid(0))
        call = backend.retrieves[0]
        self.assertEqual(call.instance, sop_uid(0))
        send(call.sink, Item(0))
        call.deferred.callback(1)
        with self.successResultOf(waiting) as found:
            self.assertEqual(found.file.read()[found.dataset_offset :], Item(0).data)
        sink = RecordingSink()
        cache.retrieve(backend, STUDY, SERIES, None, sink=sink)
        self.assertIs(backend.retrieves[1].sink, sink)
        cache.stop()


class BoundsTests(CacheTestCase):
    # Room for two of the instances below (each ~4.5 kB with its file meta), not three.
    max_size = 10_000

    def fill(self, *numbers: int) -> None:
        for n in numbers:
            waiting = self.ask(n)
            call = self.backend.retrieves[-1]
            send(call.sink, Item(n))
            call.deferred.callback(1)
            self.successResultOf(waiting).close()

    def test_least_recently_used_is_evicted_at_max_size(self) -> None:
        self.fill(0, 1)
        self.assertEqual(len(self.files()), 2)
        self.got(self.ask(0), Item(0))  # 0 is now the most recently used
        self.fill(2)
        self.assertEqual(len(self.cache.store), 2)
        self.assertLessEqual(self.disk_bytes(), self.max_size)
        self.assertEqual(self.cache.store.committed, self.disk_bytes())
        retrieves = len(self.backend.retrieves)
        self.got(self.ask(0), Item(0))
        self.got(self.ask(2), Item(2))
        self.assertEqual(len(self.backend.retrieves), retrieves)
        self.ask(1)  # evicted: retrieved again
        self.assertEqual(len(self.backend.retrieves), retrieves + 1)

    def test_writes_in_progress_count(self) -> None:
        self.fill(0, 1)
        call = self.backend.retrieves[-1]
        waiting = self.ask(5)
        call = self.backend.retrieves[-1]
        consumer = send(call.sink, Item(5), upto=3000)
        # The entry being written took the room of the least recently used one.
        self.assertEqual(len(self.cache.store), 1)
        self.assertLessEqual(self.disk_bytes(), self.max_size)
        consumer.dataReceived(Item(5).data[3000:])
        consumer.dataFinished()
        self.got(waiting, Item(5))
        self.assertLessEqual(self.disk_bytes(), self.max_size)

    def test_an_instance_larger_than_the_cache_still_reaches_its_waiter(self) -> None:
        big = Item(0, pixels=16384)
        waiting = self.ask(0)
        call = self.the_retrieve()
        send(call.sink, big)
        self.got(waiting, big)
        self.assertEqual(self.files(), [])
        self.assertEqual((self.cache.store.committed, self.cache.store.inflight), (0, 0))
        # One nobody waits for is dropped as soon as it passes the bound.
        consumer = send(call.sink, Item(1, pixels=16384), upto=12_000)
        self.assertEqual(self.files(), [])
        self.assertEqual(self.cache.store.inflight, 0)
        consumer.dataFinished()
        self.assertEqual((self.files(), len(self.cache.store)), ([], 0))

    def test_no_room_even_for_the_header(self) -> None:
        self.cache.stop()
        self.cache = self.make_cache(max_size=100)
        self.cache.start()
        sink = RecordingSink()
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        send(self.the_retrieve().sink, Item(0))
        self.assertEqual(sink.consumers[0].data, Item(0).data)  # the response is served
        self.assertEqual((self.files(), self.cache.store.inflight), ([], 0))
        self.the_retrieve().deferred.callback(1)
        # Nothing left behind that would keep the instance from being written for a waiter.
        waiting = self.ask(0)
        call = self.backend.retrieves[-1]
        self.assertEqual(call.instance, None)
        send(call.sink, Item(0))
        self.got(waiting, Item(0))
        self.assertEqual(self.files(), [])

    def test_ttl_on_the_clock(self) -> None:
        self.fill(0)
        self.clock.advance(TTL - 1)
        self.got(self.ask(0), Item(0))
        self.assertEqual(len(self.backend.retrieves), 1)
        self.clock.advance(1)
        # Expired: off the disk without being asked for, and never served.
        self.assertEqual(self.files(), [])
        self.ask(0)
        self.assertEqual(len(self.backend.retrieves), 2)

    def test_a_hit_does_not_extend_the_ttl(self) -> None:
        self.fill(0)
        for _ in range(3):
            self.clock.advance(TTL / 3 - 1)
            self.got(self.ask(0), Item(0))
        self.clock.advance(3)
        self.ask(0)
        self.assertEqual(len(self.backend.retrieves), 2)


class DirectoryTests(SynchronousTestCase):
    def make(self, directory: str) -> InstanceCache:
        return InstanceCache(Clock(), directory, max_size=1000, ttl=1)

    def test_cleaned_at_start(self) -> None:
        directory = self.mktemp()
        first = self.make(directory)
        first.start()
        for name in ("left-over.dcm", "abc.1.part"):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(b"x")
        os.mkdir(os.path.join(directory, "sub"))
        first.store._lock and os.close(first.store._lock)  # a crash: the lock goes with the process
        first.store._lock = None
        cache = self.make(directory)
        cache.start()
        self.addCleanup(cache.stop)
        self.assertEqual(os.listdir(directory), [MARKER])
        self.assertEqual(os.stat(directory).st_mode & 0o777, 0o700)

    def test_a_directory_that_is_not_a_cache_is_left_alone(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        with open(os.path.join(directory, "notes.txt"), "w") as f:
            f.write("mine")
        error = self.assertRaises(CacheDirectoryError, self.make(directory).start)
        self.assertIn("not a dicomrst cache", str(error))
        self.assertEqual(os.listdir(directory), ["notes.txt"])

    def test_one_gateway_per_directory(self) -> None:
        directory = self.mktemp()
        first = self.make(directory)
        first.start()
        self.addCleanup(first.stop)
        error = self.assertRaises(CacheDirectoryError, self.make(directory).start)
        self.assertIn("in use by another dicomrst process", str(error))

    def test_a_symlink_is_refused(self) -> None:
        target = self.mktemp()
        os.mkdir(target)
        link = self.mktemp()
        os.symlink(target, link)
        self.assertRaises(CacheDirectoryError, self.make(link).start)


class RecordingSink:
    """A response's sink reduced to what the tee passes on."""

    wants_bulk_data = True

    def __init__(self) -> None:
        self.started = False
        self.gone = False
        self.attached: IPushProducer | None = None
        self.ended: list[str] = []
        self.consumers: list[RecordingConsumer] = []
        self.on_data: Callable[[], object] | None = None  # called after each fragment

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> RecordingConsumer:
        if self.gone:
            raise ConnectionError("HTTP client disconnected")
        self.started = True
        consumer = RecordingConsumer(self)
        self.consumers.append(consumer)
        return consumer

    def attach(self, producer: IPushProducer | None) -> None:
        self.attached = producer

    def finish(self) -> None:
        self.ended.append("finish")

    def fail(self, reason: str) -> None:
        self.ended.append("fail")

    def abandon(self) -> None:
        self.ended.append("abandon")


class RecordingConsumer:
    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink
        self.data = b""
        self.finished = False
        self.done: Deferred[int] = Deferred()

    def dataReceived(self, fragment: bytes) -> None:
        self.data += fragment
        if self.sink.on_data is not None:
            self.sink.on_data()

    def dataFinished(self) -> None:
        self.finished = True
        self.done.callback(STORE_SUCCESS)

    def dataFailed(self, reason: Failure) -> None:
        self.done.errback(reason)


class TeeTests(CacheTestCase):
    def test_a_response_fills_the_cache_as_it_streams(self) -> None:
        sink = RecordingSink()
        d = self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        call = self.the_retrieve()
        self.assertIsNot(call.sink, sink)
        items = [Item(n) for n in range(3)]
        for item in items:
            send(call.sink, item)
        call.deferred.callback(3)
        self.assertEqual(self.successResultOf(d), 3)  # the response's result, untouched
        self.assertEqual([c.data for c in sink.consumers], [i.data for i in items])
        for n, item in enumerate(items):
            self.got(self.ask(n), item)
        self.assertEqual(len(self.backend.retrieves), 1)

    def test_the_tee_passes_state_throttle_and_end_through(self) -> None:
        sink = RecordingSink()
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        tee = self.the_retrieve().sink
        producer = Producer()
        tee.attach(producer)
        self.assertIs(sink.attached, producer)
        self.assertFalse(tee.started)
        send(tee, Item(0))
        self.assertTrue(tee.started)
        tee.finish()
        tee.fail("error")
        tee.abandon()
        self.assertEqual(sink.ended, ["finish", "fail", "abandon"])

    def test_a_paused_client_still_pauses_the_source(self) -> None:
        response = MultipartSink(
            StubRequest(),  # type: ignore[arg-type]
            Clock(),  # type: ignore[arg-type]
            select_instance_media(None, None),
            "http://gw/aets/PACS",
            STUDY,
            SERIES,
        )
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=response)
        tee = self.the_retrieve().sink
        association = Producer()
        tee.attach(association)
        send(tee, Item(0))
        response.pauseProducing()  # the client's socket is full
        self.assertTrue(association.paused)
        response.resumeProducing()
        self.assertFalse(association.paused)

    def test_a_series_response_is_the_retrieve_in_progress(self) -> None:
        # A viewer's metadata request retrieves the series; its frame requests wait for
        # that retrieve instead of starting their own.
        sink = RecordingSink()
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        call = self.the_retrieve()
        waiting = self.ask(1)
        self.assertEqual(len(self.backend.retrieves), 1)
        send(call.sink, Item(0))
        send(call.sink, Item(1))
        self.got(waiting, Item(1))
        # A study-level one covers every series of the study.
        self.cache.retrieve(self.backend, STUDY, None, None, sink=RecordingSink())
        other = self.ask(4, series=OTHER_SERIES)
        self.assertEqual(len(self.backend.retrieves), 2)
        send(self.backend.retrieves[1].sink, Item(4, series=OTHER_SERIES))
        self.got(other, Item(4, series=OTHER_SERIES))

    def test_a_client_leaving_midway_leaves_whole_entries_only(self) -> None:
        request = StubRequest()
        response = MultipartSink(
            request,  # type: ignore[arg-type]
            Clock(),  # type: ignore[arg-type]
            select_instance_media(None, None),
            "http://gw/aets/PACS",
            STUDY,
            SERIES,
        )
        d = self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=response)
        call = self.the_retrieve()
        waiting = self.ask(1)
        send(call.sink, Item(0))
        partial = send(call.sink, Item(1), upto=2500)
        # The client goes: twisted.web stops the producer, Klein cancels the handler, which
        # cancels the retrieve; the association then dies under the instance in flight.
        response.stopProducing()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(call.cancelled)
        partial.dataFailed(Failure(ConnectionError("association aborted")))
        self.assertRaises(ConnectionError, call.sink.begin, CT_IMAGE_STORAGE, sop_uid(2), EXPLICIT_VR_LE)
        # The whole instance is a valid entry; the cut one left nothing.
        self.assertEqual(len(self.files()), 1)
        self.got(self.ask(0), Item(0))
        # Whoever waited on that response's retrieve gets one of its own.
        self.assertNoResult(waiting)
        own = self.backend.retrieves[1]
        self.assertEqual((own.series, own.instance), (SERIES, None))
        send(own.sink, Item(1))
        self.got(waiting, Item(1))

    def test_a_client_leaving_after_an_instance_began_still_keeps_it_whole(self) -> None:
        request = StubRequest()
        response = MultipartSink(
            request,  # type: ignore[arg-type]
            Clock(),  # type: ignore[arg-type]
            select_instance_media(None, None),
            "http://gw/aets/PACS",
            STUDY,
            SERIES,
        )
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=response)
        call = self.the_retrieve()
        partial = send(call.sink, Item(0), upto=2500)
        response.stopProducing()
        # The PACS finishes the instance it was sending: complete, so kept.
        partial.dataReceived(Item(0).data[2500:])
        partial.dataFinished()
        self.got(self.ask(0), Item(0))

    def test_an_instance_level_response_fills_but_does_not_coalesce(self) -> None:
        sink = RecordingSink()
        self.cache.retrieve(self.backend, STUDY, SERIES, sop_uid(0), sink=sink)
        waiting = self.ask(1)
        self.assertEqual(len(self.backend.retrieves), 2)
        send(self.the_retrieve().sink, Item(0))
        self.got(self.ask(0), Item(0))
        self.assertNoResult(waiting)

    def test_metadata_from_s3_is_not_teed(self) -> None:
        # S3 hands a sink that wants no bulk data objects cut before their pixel data.
        bucket = FakeBackend("BUCKET", kind="S3")
        sink = RecordingSink()
        sink.wants_bulk_data = False
        self.cache.retrieve(bucket, STUDY, SERIES, None, sink=sink)
        self.assertIs(bucket.retrieves[0].sink, sink)
        dimse = RecordingSink()
        dimse.wants_bulk_data = False
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=dimse)
        self.assertIsNot(self.backend.retrieves[0].sink, dimse)

    def test_a_refused_instance_is_not_kept_and_its_waiter_fetches_it(self) -> None:
        sink = RecordingSink()
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        call = self.the_retrieve()
        waiting = self.ask(0)
        sink.gone = True
        self.assertRaises(ConnectionError, send, call.sink, Item(0))
        self.assertEqual(self.files(), [])
        call.deferred.callback(0)
        alone = self.backend.retrieves[1]
        self.assertEqual(alone.instance, sop_uid(0))
        send(alone.sink, Item(0))
        alone.deferred.callback(1)
        self.got(waiting, Item(0))


def succeed_with(found: CachedInstance) -> Deferred[CachedInstance]:
    d: Deferred[CachedInstance] = Deferred()
    d.callback(found)
    return d


class ReplayTests(CacheTestCase):
    """A series retrieved whole answers the next response for it from the cache."""

    def fill(self, items: list[Item], series: str = SERIES, backend: FakeBackend | None = None) -> None:
        backend = backend or self.backend
        d = self.cache.retrieve(backend, STUDY, series, None, sink=RecordingSink())
        call = backend.retrieves[-1]
        for item in items:
            send(call.sink, item)
        call.deferred.callback(len(items))
        self.successResultOf(d)

    def replay(self, sink: RecordingSink, backend: FakeBackend | None = None) -> Deferred[int]:
        d = self.cache.retrieve(backend or self.backend, STUDY, SERIES, None, sink=sink)
        self.clock.pump([0] * 50)  # a chunk per reactor turn
        return d

    def test_a_second_response_comes_from_the_cache(self) -> None:
        items = [Item(n, pixels=300_000) for n in range(3)]  # more than a chunk each
        self.fill(items)
        sink = RecordingSink()
        d = self.replay(sink)
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(len(self.backend.retrieves), 1)
        self.assertEqual(sorted(c.data for c in sink.consumers), sorted(i.data for i in items))
        self.assertTrue(all(c.finished for c in sink.consumers))
        self.assertIsNone(sink.attached)  # detached at the end
        self.assertEqual(self.cache.replays, 1)
        # An instance-level response is not a series: the backend's.
        self.cache.retrieve(self.backend, STUDY, SERIES, sop_uid(0), sink=RecordingSink())
        self.assertEqual(len(self.backend.retrieves), 2)

    def test_not_once_an_instance_is_gone(self) -> None:
        self.fill([Item(n) for n in range(3)])
        os.unlink(os.path.join(self.directory, self.files()[0]))  # deleted behind our back
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=RecordingSink())
        self.assertEqual((len(self.backend.retrieves), self.cache.replays), (2, 0))

    def test_not_past_the_ttl(self) -> None:
        self.fill([Item(0)])
        self.clock.advance(TTL + 1)
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=RecordingSink())
        self.assertEqual(len(self.backend.retrieves), 2)

    def test_not_after_a_failed_or_partly_kept_retrieve(self) -> None:
        d = self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=RecordingSink())
        send(self.the_retrieve().sink, Item(0))
        self.the_retrieve().deferred.errback(UpstreamError("C-GET failed"))
        self.failureResultOf(d, UpstreamError)
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=RecordingSink())
        self.assertEqual(len(self.backend.retrieves), 2)
        # This one brings an instance that is not kept (cut off midway).
        call = self.the_retrieve(1)
        send(call.sink, Item(1))
        cut = call.sink.begin(CT_IMAGE_STORAGE, sop_uid(2), EXPLICIT_VR_LE)
        cut.dataFailed(Failure(ValueError("cut")))
        self.failureResultOf(cut.done, ValueError)
        call.deferred.callback(1)
        self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=RecordingSink())
        self.assertEqual(len(self.backend.retrieves), 3)

    def test_not_across_aets_or_series(self) -> None:
        self.fill([Item(0)])
        other = FakeBackend("OTHER")
        self.cache.retrieve(other, STUDY, SERIES, None, sink=RecordingSink())
        self.assertEqual(len(other.retrieves), 1)
        self.cache.retrieve(self.backend, STUDY, OTHER_SERIES, None, sink=RecordingSink())
        self.assertEqual(len(self.backend.retrieves), 2)

    def test_a_paused_client_pauses_the_replay(self) -> None:
        items = [Item(n, pixels=300_000) for n in range(2)]
        self.fill(items)
        sink = RecordingSink()
        # The client's socket fills with the first chunk: twisted.web pauses the producer.
        sink.on_data = lambda: sink.attached.pauseProducing()  # type: ignore[union-attr]
        d = self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        self.clock.pump([0] * 50)
        self.assertEqual([len(c.data) for c in sink.consumers], [256 * 1024])
        sink.on_data = None
        assert sink.attached is not None
        sink.attached.resumeProducing()
        self.clock.pump([0] * 50)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual([c.data for c in sink.consumers], [i.data for i in items])

    def test_cancelled_midway(self) -> None:
        self.fill([Item(n, pixels=300_000) for n in range(2)])
        sink = RecordingSink()
        d = self.cache.retrieve(self.backend, STUDY, SERIES, None, sink=sink)
        sink.on_data = d.cancel  # the client leaves during the first instance
        self.clock.pump([0] * 50)
        self.failureResultOf(d, CancelledError)
        [consumer] = sink.consumers
        self.failureResultOf(consumer.done, CancelledError)  # its part is not whole
        self.assertIsNone(sink.attached)

    def test_metadata_reads_only_the_head(self) -> None:
        items = [Item(n, pixels=300_000) for n in range(2)]
        self.fill(items)
        sink = RecordingSink()
        sink.wants_bulk_data = False  # a metadata response
        self.assertEqual(self.successResultOf(self.replay(sink)), 2)
        for consumer, item in zip(sink.consumers, sorted(items, key=lambda i: i.sop), strict=True):
            self.assertLess(len(consumer.data), len(item.data) - 299_000)  # no pixel data read
            self.assertEqual(
                instance_metadata_json(consumer.data, item.syntax, "b"),
                instance_metadata_json(item.data, item.syntax, "b"),
            )

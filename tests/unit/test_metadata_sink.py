"""WADO-RS metadata's sink (dicomrst.wado.metadata_sink): the source is answered as soon
as an instance's conversion is under way, at most MAX_CONVERTING conversions at once, and
the retrieve's end waits for them (`settled`).

Conversions run on a `HeldPool`: the test decides when each one is done.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.interfaces import STORE_OUT_OF_RESOURCES, STORE_SUCCESS, IInstanceConsumer
from dicomrst.wado.metadata_sink import MetadataSink
from tests.support.datasets import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, encode, instance
from tests.support.sinks import StubRequest
from tests.support.threads import HeldPool, ThreadsReactor

STUDY = "1.2.826.0.1.3680043.10.7"
SERIES = "1.2.826.0.1.3680043.10.7.1"


class MetadataSinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = HeldPool()
        self.request = StubRequest()
        self.sink = MetadataSink(
            self.request,  # type: ignore[arg-type]  # the stub has what the sink uses
            ThreadsReactor(self.pool),  # type: ignore[arg-type]  # callFromThread and the pool only
            "application/dicom+json",
            "http://gw/aets/PACS",
            STUDY,
            SERIES,
        )

    def deliver(self, n: int, data: bytes | None = None) -> IInstanceConsumer:
        ds = instance(STUDY, SERIES, 64)
        ds.SOPInstanceUID = f"{SERIES}.{n}"
        consumer = self.sink.begin(CT_IMAGE_STORAGE, str(ds.SOPInstanceUID), EXPLICIT_VR_LE)
        consumer.dataReceived(encode(ds) if data is None else data)
        consumer.dataFinished()
        return consumer

    def body(self) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = json.loads(b"".join(self.request.written))
        return objects

    def test_answered_before_the_conversion_is_done(self) -> None:
        consumer = self.deliver(1)
        self.assertEqual(self.successResultOf(consumer.done), STORE_SUCCESS)
        self.assertEqual(len(self.pool.calls), 1)  # still converting
        settled = self.sink.settled()
        self.assertNoResult(settled)
        self.pool.run_next()
        self.successResultOf(settled)
        self.sink.finish()
        [obj] = self.body()
        self.assertEqual(obj["00080018"]["Value"], [f"{SERIES}.1"])

    def test_at_most_max_converting_at_once(self) -> None:
        limit = MetadataSink.MAX_CONVERTING
        answered = [self.deliver(n).done for n in range(limit)]
        for d in answered:
            self.assertEqual(self.successResultOf(d), STORE_SUCCESS)
        # One more: held, and not answered, until a conversion is done.
        extra = self.deliver(limit).done
        self.assertNoResult(extra)
        self.assertEqual(len(self.pool.calls), limit)
        self.pool.run_next()
        self.assertEqual(self.successResultOf(extra), STORE_SUCCESS)
        self.assertEqual(len(self.pool.calls), limit)
        settled = self.sink.settled()
        while self.pool.calls:
            self.assertNoResult(settled)
            self.pool.run_next()
        self.successResultOf(settled)
        self.sink.finish()
        self.assertEqual(sorted(o["00200013"]["Value"][0] for o in self.body()), [1] * (limit + 1))
        self.assertEqual((self.sink.parts, self.sink.dropped), (limit + 1, 0))

    def test_a_failed_conversion_drops_its_instance(self) -> None:
        consumer = self.deliver(1, b"\x08\x00\x18\x00UI\xff\xff")  # an element longer than the data
        self.assertEqual(self.successResultOf(consumer.done), STORE_SUCCESS)
        self.pool.run_next()
        self.successResultOf(self.sink.settled())
        self.assertEqual((self.sink.parts, self.sink.dropped), (0, 1))

    def test_a_client_gone_is_not_written_to(self) -> None:
        self.deliver(1)
        self.sink.abandon()
        self.pool.run_next()
        self.assertEqual(self.request.written, [])
        # What arrives after is refused, or answered out of resources if it was under way.
        self.assertRaises(ConnectionError, self.sink.begin, CT_IMAGE_STORAGE, "1.2.3", EXPLICIT_VR_LE)

    def test_an_instance_completed_after_the_client_left(self) -> None:
        ds = instance(STUDY, SERIES, 64)
        consumer = self.sink.begin(CT_IMAGE_STORAGE, str(ds.SOPInstanceUID), EXPLICIT_VR_LE)
        consumer.dataReceived(encode(ds))
        self.sink.abandon()
        consumer.dataFinished()
        self.assertEqual(self.successResultOf(consumer.done), STORE_OUT_OF_RESOURCES)
        self.assertEqual(self.pool.calls, [])
        done: Deferred[None] = self.sink.settled()
        self.successResultOf(done)

    def test_objects_in_arrival_order_whatever_order_conversions_end(self) -> None:
        for n in range(3):
            self.deliver(n)
        # The last conversion ends first, then the first, then the middle one.
        for index in (2, 0, 0):
            on_result, f, args, kwargs = self.pool.calls.pop(index)
            on_result(True, f(*args, **kwargs))
        self.successResultOf(self.sink.settled())
        self.sink.finish()
        written = [o["00080018"]["Value"][0] for o in self.body()]
        self.assertEqual(written, [f"{SERIES}.{n}" for n in range(3)])

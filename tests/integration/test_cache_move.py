"""The instance cache against a real PACS: one C-MOVE per series, whatever is asked after.

The pynetdicom PACS (tests/support/pacs, its ``move`` profile) moves its generated
instances to our listener, and logs every C-MOVE it receives (``c_move`` events): that log
is what counts the retrieves. The gateway's side runs in this process on the real reactor:
a `DimseBackend` retrieving by C-MOVE to a listener of ours, and an `InstanceCache` in the
test's temporary directory, called as the frames, bulk data and rendered routes call it.
"""

from __future__ import annotations

import io
from typing import Any

from pydicom import dcmread
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from dicomrst.backends.pacs import DimseBackend
from dicomrst.cache import CachedInstance, InstanceCache
from dicomrst.common.interfaces import STORE_SUCCESS, IInstanceConsumer, IInstanceSink
from dicomrst.config import parse_config
from dicomrst.dimse.contexts import receivable_syntaxes
from dicomrst.dimse.move_registry import MoveReceiver, MoveRegistry
from dicomrst.dimse.server import listener_factory
from dicomrst.errors import NotFound
from dicomrst.wado.metadata import instance_metadata_json
from tests.support import peers
from tests.support.datasets import assert_same_dataset
from tests.support.dimse_backend import CALLING, global_reactor
from tests.support.pacs.datasets import get_instance, get_series_uid, get_sop_uid, get_study_uid

LISTENER = "CACHE-LISTENER"
PACS = "PYMOVE"
SERIES = 2
INSTANCES = 6
TIMEOUT = 120


@implementer(IInstanceConsumer)
class _Collecting:
    def __init__(self, sink: CollectingSink, sop: str) -> None:
        self.sink = sink
        self.sop = sop
        self.parts: list[bytes] = []
        self.done: Deferred[int] = Deferred()

    def dataReceived(self, fragment: bytes) -> None:
        self.parts.append(fragment)

    def dataFinished(self) -> None:
        self.sink.received[self.sop] = b"".join(self.parts)
        self.done.callback(STORE_SUCCESS)

    def dataFailed(self, reason: Failure) -> None:
        self.done.errback(reason)


@implementer(IInstanceSink)
class CollectingSink:
    """A WADO-RS response reduced to what it received (as a metadata response sees it)."""

    wants_bulk_data = False

    def __init__(self) -> None:
        self.started = False
        self.gone = False
        self.received: dict[str, bytes] = {}
        self.syntaxes: dict[str, str] = {}

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> _Collecting:
        self.started = True
        self.syntaxes[sop_instance_uid] = transfer_syntax
        return _Collecting(self, sop_instance_uid)

    def metadata(self) -> dict[str, bytes]:
        """What a metadata response makes of each instance received."""
        received, syntaxes = self.received, self.syntaxes
        return {sop: instance_metadata_json(data, syntaxes[sop], "bulk") for sop, data in received.items()}

    def attach(self, producer: IPushProducer | None) -> None:
        pass

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        self.gone = True


class CacheOverMoveTests(TestCase):
    timeout = TIMEOUT

    async def start(self, **options: Any) -> tuple[peers.Peer, DimseBackend, InstanceCache]:
        reactor = global_reactor()
        listener_port = peers.free_port()
        scp = await peers.start_pynetdicom_scp(
            self,
            "move",
            aet=PACS,
            series=SERIES,
            instances=INSTANCES,
            destinations={LISTENER: [peers.LOCALHOST, listener_port]},
            **options,
        )
        registry = MoveRegistry(CALLING)
        factory = listener_factory(LISTENER, reactor, registry)
        port = reactor.listenTCP(listener_port, factory, interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.abort_all)
        config = parse_config(
            {
                "aets": [
                    {
                        "aet": PACS,
                        "host": peers.LOCALHOST,
                        "port": scp.port,
                        "wado-rs": {"retrieve": "move", "receivers": [LISTENER], "timeout": 20_000},
                    }
                ],
                "server": {"dimse": [{"aet": LISTENER, "port": listener_port}]},
            },
            resolve=lambda host: None,
        )
        receiver = MoveReceiver(registry, LISTENER, receivable_syntaxes(True))
        backend = DimseBackend(config.aets[0], CALLING, reactor, receiver)
        self.addCleanup(backend.stop)
        cache = InstanceCache(reactor, self.mktemp(), max_size=100_000_000, ttl=300)
        cache.start()
        self.addCleanup(cache.stop)
        return scp, backend, cache

    def moves(self, scp: peers.Peer) -> list[dict[str, Any]]:
        return scp.events("c_move")

    def check(self, found: CachedInstance, series: int, index: int) -> None:
        with found:
            ds = dcmread(io.BytesIO(found.file.read()))
        self.assertEqual(ds.file_meta.MediaStorageSOPInstanceUID, get_sop_uid(series, index))
        assert_same_dataset(self, ds, get_instance(series, index), f"instance {series}/{index}")

    async def test_one_move_serves_every_lookup_of_the_series(self) -> None:
        # A delay before each C-STORE, so the series takes a while to arrive.
        scp, backend, cache = await self.start(delay=0.2)
        study, series = get_study_uid(), get_series_uid(0)
        first = cache.instance(backend, study, series, get_sop_uid(0, 0))
        rest = [cache.instance(backend, study, series, get_sop_uid(0, i)) for i in range(1, INSTANCES)]
        last = rest[-1]
        fired_before_the_end: list[bool] = []
        first.addCallback(lambda found: (fired_before_the_end.append(not last.called), found)[1])
        results = await gatherResults([first, *rest])
        self.assertEqual(fired_before_the_end, [True])  # its own instance, not the series
        for i, found in enumerate(results):
            self.check(found, 0, i)
        # Everything again, in another order: from disk.
        for i in reversed(range(INSTANCES)):
            self.check(await cache.instance(backend, study, series, get_sop_uid(0, i)), 0, i)
        # The instance asked for first, alone, then its series.
        await self.until_moved(scp, 2)
        lead, whole = self.moves(scp)
        self.assertEqual((lead["level"], whole["level"], whole["series"]), ("IMAGE", "SERIES", series))
        self.assertEqual((cache.fills, cache.hits), (1, INSTANCES))
        # An instance the series does not hold: it and the series were moved again to find out.
        try:
            await cache.instance(backend, study, series, get_sop_uid(0, INSTANCES + 5))
        except NotFound:
            pass
        else:
            self.fail("an instance the series lacks was found")
        await self.until_moved(scp, 4)

    async def test_a_metadata_retrieve_fills_the_cache_for_the_frames(self) -> None:
        """The viewer's cold start: the series metadata request moves the series; its frame
        requests, arriving while it runs and after, make no C-MOVE of their own."""
        scp, backend, cache = await self.start(delay=0.1)
        study, series = get_study_uid(), get_series_uid(1)
        response = CollectingSink()
        metadata = cache.retrieve(backend, study, series, None, sink=response)
        frames = [cache.instance(backend, study, series, get_sop_uid(1, i)) for i in range(INSTANCES)]
        results = await DeferredList(frames, fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual(await metadata, INSTANCES)
        for i, (_, found) in enumerate(results):
            self.check(found, 1, i)
        self.assertEqual(len(response.received), INSTANCES)  # the response got everything too
        for i in range(INSTANCES):
            self.check(await cache.instance(backend, study, series, get_sop_uid(1, i)), 1, i)
        await self.until_moved(scp, 1)
        self.assertEqual(len(self.moves(scp)), 1)
        self.assertEqual(cache.fills, 0)

    async def test_a_series_retrieved_whole_is_answered_from_the_cache(self) -> None:
        """A viewer opening the study again: the second metadata response moves nothing."""
        scp, backend, cache = await self.start()
        study, series = get_study_uid(), get_series_uid(1)
        first, second = CollectingSink(), CollectingSink()
        self.assertEqual(await cache.retrieve(backend, study, series, None, sink=first), INSTANCES)
        await self.until_moved(scp, 1)
        self.assertEqual(await cache.retrieve(backend, study, series, None, sink=second), INSTANCES)
        # The cache hands a metadata response each data set up to its pixel data: the
        # same metadata.
        self.assertEqual(second.metadata(), first.metadata())
        self.assertEqual(len(first.received), INSTANCES)
        self.assertEqual(cache.replays, 1)
        await self.until_moved(scp, 1)

    async def until_moved(self, scp: peers.Peer, n: int) -> None:
        """The PACS logged `n` C-MOVEs and finished them (its log is written as it goes)."""
        reactor = global_reactor()
        deadline = reactor.seconds() + 15
        while len(scp.events("move_done")) < n and reactor.seconds() < deadline:
            d: Deferred[None] = Deferred()
            reactor.callLater(0.05, d.callback, None)
            await d
        self.assertEqual(len(self.moves(scp)), n, scp.events("c_move"))

# -*- test-case-name: tests.unit.test_cache -*-
"""A retrieve answered from the cache: its entries fed to a response's sink as a backend
would feed them.

`Replay` is what `InstanceCache.retrieve` runs instead of the backend's retrieve when it
holds a whole series: each entry's data set goes to the sink in chunks, one instance at
a time (the next begins once the sink answered the last, as after a C-STORE-RSP), and the
sink pauses it as it pauses an association (`IInstanceSink.attach`).  Reads are of local
files, a chunk per reactor turn, so a large series does not hold the reactor.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from dicomrst.backends.objects import without_bulk_tail
from dicomrst.cache.store import CachedInstance
from dicomrst.common.deferreds import shielded
from dicomrst.common.interfaces import IInstanceConsumer, IInstanceSink
from dicomrst.common.pacing import Pacer
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.errors import NotAcceptable
from dicomrst.logs import logger

log = logger("dicomrst.cache")

CHUNK = 256 * 1024
#: What a metadata replay reads first: the file meta and, for most objects, every
#: attribute before the pixel data.
HEAD = 64 * 1024
_NATIVE = frozenset((EXPLICIT_VR_LE, IMPLICIT_VR_LE))


class Replay:
    """Feed `instances` (open entries; closed here, whatever happens) to `sink`."""

    def __init__(self, clock: IReactorTime, sink: IInstanceSink, instances: Sequence[CachedInstance]) -> None:
        self.clock = clock
        self.sink = sink
        self.instances = list(instances)
        self.delivered = 0
        self.stopped = False  # cancelled
        self.pacer = Pacer()  # what the sink pauses, as it pauses an association

    async def _turn(self) -> None:
        """The next reactor turn in which the sink is not paused; CancelledError once the
        replay was stopped or the client left."""
        turn: Deferred[None] = Deferred()
        self.clock.callLater(0, _fire, turn)
        await turn
        await self.pacer.ready()
        if self.stopped or self.pacer.gone:
            raise CancelledError()

    # -- running -------------------------------------------------------------------------------

    def start(self) -> Deferred[int]:
        """Deliver every instance; fires with the number delivered.  Cancelling it stops
        the replay at its next chunk, even when called from inside the sink."""
        inner = Deferred.fromCoroutine(self._run())

        def cancel(_: Deferred[int]) -> None:
            self.stopped = True
            inner.cancel()

        outer: Deferred[int] = Deferred(cancel)

        def forward(result: int | Failure) -> None:
            if outer.called:  # cancelled: the replay's own end does not matter
                return
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        inner.addBoth(forward)
        return outer

    async def _run(self) -> int:
        self.sink.attach(self.pacer)
        try:
            for instance in self.instances:
                await self._one(instance)
            return self.delivered
        finally:
            for instance in self.instances:
                instance.close()
            self.sink.attach(None)

    async def _one(self, instance: CachedInstance) -> None:
        try:
            consumer = self.sink.begin(
                instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax
            )
        except Exception as e:
            if self.sink.gone:
                raise CancelledError() from e
            if isinstance(e, NotAcceptable) and not self.sink.started:
                raise  # the answer is a 406: the rest would be refused too
            log.warn("cached instance {sop} not delivered: {why}", sop=instance.sop_instance_uid, why=str(e))
            return
        f = instance.file
        try:
            if not self.sink.wants_bulk_data and instance.transfer_syntax in _NATIVE:
                # Metadata: the head up to the pixel data is all it needs when pixel data
                # ends the object (as the S3 and LOCAL backends read it).
                f.seek(0)
                head = f.read(HEAD)
                cut = without_bulk_tail(
                    head, instance.dataset_offset, instance.transfer_syntax == IMPLICIT_VR_LE, instance.size
                )
            else:
                cut = None
            if cut is not None:
                await self._turn()
                consumer.dataReceived(cut)
            else:
                f.seek(instance.dataset_offset)
                while True:
                    await self._turn()
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    consumer.dataReceived(chunk)
        except BaseException:
            # Cancelled, or the file could not be read: the part is not whole.
            consumer.dataFailed(Failure())
            raise
        consumer.dataFinished()
        await self._answered(consumer, instance)

    async def _answered(self, consumer: IInstanceConsumer, instance: CachedInstance) -> None:
        try:
            await shielded(consumer.done)
        except Exception as e:
            log.warn("cached instance {sop} not delivered: {why}", sop=instance.sop_instance_uid, why=str(e))
            return
        self.delivered += 1


def _fire(d: Deferred[None]) -> None:
    if not d.called:  # cancelled meanwhile
        d.callback(None)

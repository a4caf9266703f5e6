# -*- test-case-name: tests.integration.test_s3 -*-
"""WADO-RS from S3: GetObject bodies streamed to an `IInstanceSink` in a stable order.

Parts of a multipart response must not interleave, so instances go to the sink one after
the other, in listing order (S3 lists keys in byte order: series UID, then SOP Instance
UID).  To keep `concurrency` GETs busy anyway, the objects that come next are requested
ahead of their turn, and each of those holds at most `prefetch_cap` bytes before its
connection is paused (TCP then holds the server back).  Memory is therefore bounded by
``concurrency * prefetch_cap`` plus the part being written, whatever the study's size; when
an object's turn comes its held bytes go out and its connection resumes.  The alternative,
downloading whole objects ahead, would hold up to `concurrency` instances (large ones are
hundreds of MB); downloading strictly one after another would pay a round trip per
instance.

The object's turn starts once its Part-10 header has arrived: preamble and file meta are
parsed here (the sink gets the SOP class, instance and transfer syntax, then the data set
bytes only).  While it is being written the connection follows the HTTP response: the
sink pauses and resumes it through the object attached with ``sink.attach``.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from dicomrst.backends.objects import HEAD_BYTES, NotDicomObject, parse_file_meta, without_bulk_tail
from dicomrst.backends.s3.client import S3Client, S3Error, body_producer
from dicomrst.backends.values import ObjectChanged, ObjectRange, RangesRefused
from dicomrst.common.deferreds import shielded
from dicomrst.common.interfaces import IInstanceConsumer, IInstanceSink
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.errors import NotAcceptable, NotFound, UpstreamError, UpstreamTimeout
from dicomrst.logs import logger

log = logger("dicomrst.s3")

#: Total bytes held by objects waiting for their turn, shared out per object.
PREFETCH_BUDGET = 8 << 20
MIN_PREFETCH_CAP = 256 << 10
#: Times an object cut off mid-body is asked for again from where it stopped.
RESUMES = 2
_DONE = Failure(net_error.ConnectionDone())


class _Body(Protocol):
    def __init__(self, fetch: _Fetch) -> None:
        self.fetch = fetch

    def connectionMade(self) -> None:
        self.fetch.connected(body_producer(self.transport))

    def dataReceived(self, data: bytes) -> None:
        self.fetch.received(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.fetch.lost(reason)


class _Fetch:
    """One GetObject, started ahead of its turn; holds at most `cap` bytes until then."""

    def __init__(self, run: Retrieval, key: str) -> None:
        self.run = run
        self.key = key
        self.head = b""
        self.meta: tuple[str, str, str] | None = None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.consumer: IInstanceConsumer | None = None
        self.transport: IPushProducer | None = None
        self.ended = False
        self.failure: Failure | None = None
        self.missing = False  # deleted between listing and GET
        self.bytes = 0
        self.size = run.sizes.get(key)
        # Metadata only: the object's head first, the rest only if it is needed.
        self.ranged = run.metadata_only
        self.ranged_head = b""
        self.meta_offset = 0
        self.etag: str | None = None
        self.resumes = 0
        self.aborted = False
        self._paused = False
        self._timer: IDelayedCall | None = None
        self._ready: list[Deferred[None]] = []
        self._request: Deferred[None] = Deferred.fromCoroutine(self._get())

    async def _get(self) -> None:
        headers = {}
        if self.ranged:
            headers = {"Range": f"bytes=0-{HEAD_BYTES - 1}"}
        elif self.bytes:
            # Resuming after a reset: the rest of the same object, or nothing.
            headers = {"Range": f"bytes={self.bytes}-"}
            if self.etag:
                headers["If-Match"] = self.etag
        try:
            response = await self.run.client.request("GET", self.key, headers=headers, ok=(200, 206))
            if self.bytes and response.code != 206:
                response.deliverBody(_Discard())
                raise UpstreamError(f"S3 did not resume {self.key!r} at byte {self.bytes}")
        except CancelledError:
            self._end(Failure(UpstreamError("cancelled")))
            return
        except S3Error as e:
            if e.code == "NoSuchKey":
                self.missing = True
            self._end(Failure(e))
            return
        except Exception:
            self._end(Failure())
            return
        if self.run.stopped or self.aborted:
            response.deliverBody(_Discard())
            return
        if not self.bytes:
            self.etag = (response.headers.getRawHeaders("ETag") or [None])[0]
            if self.ranged and response.code == 206:
                content_range = (response.headers.getRawHeaders("Content-Range") or [""])[0]
                total = content_range.rpartition("/")[2]
                if self.size is None and total.isdigit():
                    self.size = int(total)
            else:
                self.ranged = False  # the whole object came: read it as usual
        response.deliverBody(_Body(self))

    # -- from the connection --------------------------------------------------------------

    def connected(self, transport: IPushProducer) -> None:
        self.transport = transport
        self.update()

    def received(self, data: bytes) -> None:
        self.bytes += len(data)
        self.run.bytes_read += len(data)
        self._arm()
        if self.ranged:
            # Held until the head is complete and it is known how much of it to pass on.
            self.ranged_head += data
            if self.meta is None:
                try:
                    parsed = parse_file_meta(self.ranged_head)
                except NotDicomObject as e:
                    self._fail(NotDicomObject(f"S3 object {self.key!r} is not a DICOM file: {e}"))
                    return
                if parsed is not None:
                    self.meta_offset = parsed[0]
                    self.meta = parsed[1:]
                    self._wake()
            return
        if self.meta is None:
            self.head += data
            try:
                parsed = parse_file_meta(self.head)
            except NotDicomObject as e:
                self._fail(NotDicomObject(f"S3 object {self.key!r} is not a DICOM file: {e}"))
                return
            if parsed is None:
                return
            offset, sop_class, sop_instance, syntax = parsed
            self.meta = (sop_class, sop_instance, syntax)
            data, self.head = self.head[offset:], b""
            self._wake()
        self._deliver(data)

    def lost(self, reason: Failure) -> None:
        if self.ranged and reason.check(ResponseDone):
            self._head_done()
            return
        if reason.check(ResponseDone):
            if self.meta is None:
                try:
                    parsed = parse_file_meta(self.head, complete=True)
                except NotDicomObject as e:
                    self._end(Failure(NotDicomObject(f"S3 object {self.key!r} is not a DICOM file: {e}")))
                    return
                assert parsed is not None
                self.meta = parsed[1:]
            self._end(None)
        elif self.failure is None and not self.aborted and not self.run.stopped and self.resumes < RESUMES:
            # A reset mid-body (S3 drops connections, paused ones too): ask for the rest.
            self.resumes += 1
            self.transport = None
            self._paused = False
            self._disarm()
            log.info(
                "S3 object {key} cut off after {n} bytes ({why}); resuming",
                key=self.key,
                n=self.bytes,
                why=reason.getErrorMessage(),
            )
            self._request = Deferred.fromCoroutine(self._resume())
        elif self.failure is None:
            self._end(
                Failure(
                    UpstreamError(
                        f"S3 object {self.key!r} cut off after {self.bytes} bytes: {reason.getErrorMessage()}"
                    )
                )
            )

    def _head_done(self) -> None:
        """The ranged head has arrived: pass on the data set up to the pixel data if that
        is all metadata needs, else everything so far, and ask for the rest."""
        self.ranged = False
        head, self.ranged_head = self.ranged_head, b""
        if self.meta is None:
            self.head = head
            self.lost(Failure(ResponseDone()))  # the whole object was shorter than the head
            return
        syntax = self.meta[2]
        if self.size is None or self.bytes >= self.size:
            self._deliver(head[self.meta_offset :])
            self._end(None)
            return
        cut = None
        if syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            cut = without_bulk_tail(head, self.meta_offset, syntax == IMPLICIT_VR_LE, self.size)
        if cut is not None:
            self._deliver(cut)
            self._end(None)
            return
        self._deliver(head[self.meta_offset :])
        self.transport = None
        self._paused = False
        self._disarm()
        self._request = Deferred.fromCoroutine(self._get())

    def _deliver(self, data: bytes) -> None:
        if not data:
            return
        if self.consumer is not None:
            self.consumer.dataReceived(data)
            return
        self.held.append(data)
        self.held_bytes += len(data)
        self.update()

    async def _resume(self) -> None:
        try:
            await deferLater(self.run.client.clock, self.run.client.backoff * self.resumes, lambda: None)
        except CancelledError:
            self._end(Failure(UpstreamError("cancelled")))
            return
        await self._get()

    def _fail(self, error: Exception) -> None:
        # Our decision (bad data, timeout): drop the connection, then report.
        failure = Failure(error)
        self.failure = failure
        if self.transport is not None:
            self.transport.stopProducing()
        self._end(failure)

    def _end(self, failure: Failure | None) -> None:
        if self.ended:
            return
        self.ended = True
        self._disarm()
        if failure is not None and self.failure is None:
            self.failure = failure
        self._wake()
        if self.consumer is not None:
            self._finish_consumer(self.consumer)

    def _finish_consumer(self, consumer: IInstanceConsumer) -> None:
        if self.failure is None:
            consumer.dataFinished()
        else:
            consumer.dataFailed(self.failure)

    # -- turn ---------------------------------------------------------------------------------

    def ready(self) -> Deferred[None]:
        """Fires once the header is parsed, or the fetch ended without one."""
        d: Deferred[None] = Deferred()
        if self.meta is not None or self.ended:
            d.callback(None)
        else:
            self._ready.append(d)
        return d

    def _wake(self) -> None:
        waiting, self._ready = self._ready, []
        for d in waiting:
            d.callback(None)

    def attach(self, consumer: IInstanceConsumer) -> None:
        """Its turn: held bytes to `consumer`, then the rest as it arrives."""
        self.consumer = consumer
        held, self.held, self.held_bytes = self.held, [], 0
        for data in held:
            consumer.dataReceived(data)
        if self.ended:
            self._finish_consumer(self.consumer)
        else:
            self.update()

    def update(self) -> None:
        """Pause or resume the connection: ahead of its turn when its buffer is full,
        during its turn when the HTTP response is paused."""
        if self.transport is None or self.ended:
            return
        if self.consumer is None:
            pause = self.held_bytes >= self.run.prefetch_cap
        else:
            pause = self.run.paused
        if pause and not self._paused:
            self._paused = True
            self._disarm()
            self.transport.pauseProducing()
        elif not pause and self._paused:
            self._paused = False
            self._arm()
            self.transport.resumeProducing()
        elif not pause:
            self._arm()

    def _arm(self) -> None:
        # A read timeout only counts while we are reading.
        if self._paused or self.ended:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.run.client.read_timeout)
        else:
            self._timer = self.run.client.clock.callLater(self.run.client.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeout(f"S3 stopped sending {self.key!r} for {self.run.client.read_timeout:g} s"))

    def abort(self) -> None:
        self.aborted = True
        self.held = []
        self._disarm()
        if not self._request.called:
            self._request.cancel()
        if self.transport is not None and not self.ended:
            self.transport.stopProducing()


class _Discard(Protocol):
    def connectionMade(self) -> None:
        body_producer(self.transport).stopProducing()


@implementer(IPushProducer)
class Retrieval:
    """One retrieve: the listing, the window of GETs, and the turns."""

    def __init__(
        self,
        client: S3Client,
        sink: IInstanceSink,
        keys: list[str],
        concurrency: int,
        sizes: dict[str, int] | None = None,
    ) -> None:
        self.client = client
        self.sink = sink
        self.keys = keys
        self.sizes = sizes or {}
        # A sink that says it does not need bulk data (metadata) gets data sets whose pixel
        # data may be a placeholder: only the head of each object is read when that is so.
        self.metadata_only = not sink.wants_bulk_data
        self.concurrency = max(1, concurrency)
        self.prefetch_cap = max(MIN_PREFETCH_CAP, PREFETCH_BUDGET // self.concurrency)
        self.paused = False
        self.stopped = False
        self.window: deque[_Fetch] = deque()
        self.current: _Fetch | None = None
        self.delivered = 0
        self.missing = 0
        self.bytes_read = 0
        self._next = 0

    # -- the sink's throttle (sink.attach) -------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self.current is not None:
            self.current.update()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.current is not None:
            self.current.update()

    def stopProducing(self) -> None:
        self.abort()

    # -- running ---------------------------------------------------------------------------

    def _fill(self) -> None:
        while len(self.window) < self.concurrency and self._next < len(self.keys):
            self.window.append(_Fetch(self, self.keys[self._next]))
            self._next += 1

    async def run(self) -> int:
        self.sink.attach(self)
        try:
            self._fill()
            while self.window:
                fetch = self.window[0]
                await shielded(fetch.ready())
                await self._turn(fetch)
                self.window.popleft()
                self.current = None
                self._fill()
            return self.delivered
        finally:
            self.abort()
            self.sink.attach(None)

    async def _turn(self, fetch: _Fetch) -> None:
        if fetch.meta is None:
            assert fetch.failure is not None
            if fetch.missing:
                self.missing += 1
                if len(self.keys) > 1:
                    log.warn("S3 object {key} disappeared after listing; skipped", key=fetch.key)
                return
            fetch.failure.raiseException()
        assert fetch.meta is not None
        try:
            consumer = self.sink.begin(*fetch.meta)
        except Exception as e:
            if self.sink.gone:
                raise CancelledError() from e
            fetch.abort()
            if isinstance(e, NotAcceptable) and not self.sink.started:
                # The answer will be a 406 (the sink refuses the rest too): stop here
                # rather than download the rest of the study for nothing.
                raise
            log.warn("instance {key} not delivered: {why}", key=fetch.key, why=str(e))
            return
        self.current = fetch
        fetch.attach(consumer)
        try:
            await shielded(consumer.done)
            self.delivered += 1
        except Exception as e:
            if fetch.failure is not None:
                fetch.failure.raiseException()
            log.warn("instance {key} not delivered: {why}", key=fetch.key, why=str(e))
        if fetch.failure is not None:
            fetch.failure.raiseException()

    def abort(self) -> None:
        self.stopped = True
        for fetch in self.window:
            fetch.abort()
        self.window.clear()


def level_prefix(prefix: str, study: str, series: str | None) -> str:
    return f"{prefix}{study}/" + (f"{series}/" if series else "")


def matching_keys(listed: list[tuple[str, int]], under: str, series_level: bool) -> list[str]:
    """The keys that are instances exactly at this level: ``{series}/{sop}.dcm`` under a
    study, ``{sop}.dcm`` under a series; nothing deeper, nothing without ``.dcm``."""
    keys = []
    depth = 0 if series_level else 1
    for key, _size in listed:
        rest = key[len(under) :]
        if not key.startswith(under) or not rest.endswith(".dcm") or rest.count("/") != depth:
            continue
        if any(not part or part == ".dcm" for part in rest.split("/")):
            continue
        keys.append(key)
    return keys


async def retrieve_objects(
    client: S3Client,
    *,
    prefix: str,
    concurrency: int,
    aet: str,
    study: str,
    series: str | None,
    instance: str | None,
    sink: IInstanceSink,
) -> int:
    """Deliver the study, series or instance to `sink`; return the number delivered."""
    if instance is not None:
        assert series is not None
        keys = [f"{level_prefix(prefix, study, series)}{instance}.dcm"]
        sizes: dict[str, int] = {}
    else:
        under = level_prefix(prefix, study, series)
        listed = await client.list_keys(under)
        sizes = dict(listed)
        keys = matching_keys(listed, under, series_level=series is not None)
        if not keys:
            what = f"study {study}" + (f" series {series}" if series else "")
            raise NotFound(f"{aet} has no instance for {what}")
    run = Retrieval(client, sink, keys, concurrency, sizes)
    delivered = await run.run()
    if instance is not None and run.missing:
        raise NotFound(f"{aet} has no instance {instance} in study {study} series {series}")
    return delivered


def parse_content_range(value: str | None) -> tuple[int, int] | None:
    """(first byte, object size) from a ``Content-Range: bytes a-b/size`` header, or None."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    first = span.partition("-")[0]
    if not first.isdigit() or not total.isdigit():
        return None
    return int(first), int(total)


async def read_object_range(
    client: S3Client, key: str, start: int, stop: int, version: str | None = None
) -> ObjectRange:
    """Bytes ``[start, stop)`` of object `key` (one GetObject with ``Range``; with
    ``If-Match`` when `version`, an ETag, is given)."""
    headers = {"Range": f"bytes={start}-{stop - 1}"}
    if version is not None:
        headers["If-Match"] = version
    try:
        response = await client.request("GET", key, headers=headers, ok=(200, 206))
    except S3Error as e:
        if e.code in ("NoSuchKey", "NotFound"):
            raise NotFound(f"no S3 object {key!r}") from None
        if e.status == 412:
            raise ObjectChanged(f"S3 object {key!r} changed since its head was read") from None
        if e.status == 416:  # a range past the end: the object is shorter than its head said
            raise ObjectChanged(f"S3 object {key!r} is shorter than byte {start}") from None
        raise
    found = parse_content_range((response.headers.getRawHeaders("Content-Range") or [None])[0])
    if response.code != 206 or found is None or found[0] != start:
        # A store that ignores Range would send the whole object: not read here.
        response.deliverBody(_Discard())
        raise RangesRefused(f"S3 answered GET {key!r} with {response.code}, not the range asked for")
    etag = (response.headers.getRawHeaders("ETag") or [None])[0]
    data = await client.read_body(response)
    return ObjectRange(data, start, found[1], etag)

# -*- test-case-name: tests.unit.test_cache -*-
"""One retrieve serves a viewer's many calls: instances kept on disk, misses coalesced.

A viewer asks for a series' metadata, then for every frame of every instance, one
request each.  `InstanceCache` keeps the instances that stream through the gateway in an
`EntryStore` (on disk, by AET and SOP Instance UID), so those requests are answered from
local files:

* `InstanceCache.retrieve` is what a WADO-RS instances or metadata response calls instead
  of ``backend.retrieve``: its instances also go into the cache (`TeeSink`), and while it
  runs, a study- or series-level one counts as the retrieve in progress for its series.
  A series whose retrieve ended well and whose every instance is still kept is answered
  from the cache (`Replay`): a viewer that opens a study again, or asks for its metadata
  twice, causes no second retrieve within the TTL.
* `InstanceCache.instance` is what frames, bulk data and rendered responses call: a
  fresh entry is served at once; on a miss the whole series is retrieved once (or the
  retrieve already in progress for it is joined), and each caller is answered as soon as
  *its* instance is stored, not when the series ends.  The instance that caused the miss
  is retrieved alone just before its series: a PACS sends a series in an order of its
  own (Orthanc 1.10: by descending Instance Number), and the first image a viewer asks
  for would otherwise wait for most of the series.  An instance that the series
  retrieve did not bring is a `NotFound`; a retrieve that fails fails its waiters with its
  error.

A caller whose client leaves (its Deferred cancelled) stops waiting, and the retrieve goes
on, even when nobody waits any more: a viewer cancels requests for images that scrolled
out of view and asks for the next ones of the same series a moment later, and stopping the
retrieve then would start it again from the first instance (each C-MOVE moves the whole
series).  The retrieve is bounded as any other (``wado-rs.timeout``, the pool) and stopped
when the gateway stops.  A retrieve borrowed from a response whose client left is
cancelled with that response (`TeeSink`'s owner decides); whoever waited on it gets a
retrieve of its own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from dicomrst.backends.interfaces import IBackend
from dicomrst.cache.replay import Replay
from dicomrst.cache.sinks import FillSink, PrivateSink, TeeSink
from dicomrst.cache.store import CachedInstance, Entry, EntryStore, EntryWriter, Key
from dicomrst.common.interfaces import IInstanceSink
from dicomrst.common.part10 import file_meta
from dicomrst.errors import DicomrstError, NotFound, ServiceUnavailable
from dicomrst.logs import logger

log = logger("dicomrst.cache")

#: ``server.cache.max-size``: 2 GB (decimal, as the other sizes in the config).
DEFAULT_MAX_SIZE = 2_000_000_000
#: ``server.cache.ttl``: five minutes.
DEFAULT_TTL = 300.0


class CacheError(DicomrstError):
    """An instance arrived but could not be kept on local disk (the disk is full, the
    cache directory went away)."""


@attrs.define(eq=False)
class _Waiter:
    """One `InstanceCache.instance` call waiting for its instance."""

    backend: IBackend
    key: Key
    study: str
    series: str
    deferred: Deferred[CachedInstance] = attrs.field(init=False)
    retrieval: _Retrieval | None = None
    private: Deferred[CachedInstance] | None = None  # the instance-level retrieve it fell back to


@attrs.define(eq=False)
class _Retrieval:
    """A retrieve in flight whose instances go into the cache: the cache's own (`own`), or
    a response's that it tees."""

    backend: IBackend
    study: str
    series: str | None  # None: the whole study
    own: bool
    started: float
    waiters: list[_Waiter] = attrs.Factory(list)
    arrived: set[str] = attrs.Factory(set)  # SOP Instance UIDs that began to arrive
    stored: int = 0
    bytes: int = 0
    deferred: Deferred[int] | None = None
    sink: FillSink | None = None  # the cache's own

    def covers(self, aet: str, study: str, series: str) -> bool:
        return self.backend.aet == aet and self.study == study and self.series in (None, series)

    def describe(self) -> str:
        if self.series is None:
            return f"study {self.study}"
        return f"series {self.series} of study {self.study}"


class InstanceCache:
    """The instance cache of a gateway (``server.cache``).

    :param clock: TTL, expiry timer and log timings (a `Clock` in tests).
    :param directory: ``server.cache.path``; `start` creates or empties it.
    :param max_size: bytes on disk at most (0: nothing is cached).
    :param ttl: seconds an entry may be served after it was stored.
    :param bypass: AE titles with ``cache: false``: never cached (see `instance`).
    :param instance_first: on a miss, retrieve the instance asked for alone before its
        series (see the module docstring).
    """

    def __init__(
        self,
        clock: IReactorTime,
        directory: str,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        ttl: float = DEFAULT_TTL,
        bypass: Iterable[str] = (),
        instance_first: bool = True,
    ) -> None:
        self.clock = clock
        self.instance_first = instance_first
        self.store = EntryStore(clock, directory, max_size, ttl, on_stored=self._stored, wanted=self._wanted)
        self.bypass = frozenset(bypass)
        self.hits = 0
        self.misses = 0
        self.fills = 0  # series retrieves the cache started itself
        self.replays = 0  # series responses answered from the cache
        # Series retrieved whole: (aet, study, series) -> their instances and until when
        # the record may be used (the entries' own TTL decides too: each is looked up).
        self._series: dict[tuple[str, str, str], tuple[tuple[str, ...], float]] = {}
        self._waiters: dict[Key, list[_Waiter]] = {}
        self._retrievals: list[_Retrieval] = []
        self._stopped = False
        self._claim = True  # the directory is ours to create, lock and empty

    @classmethod
    def off(cls, clock: IReactorTime) -> InstanceCache:
        """A cache that keeps nothing: `instance` retrieves each instance alone into an
        anonymous file in the system's temporary directory, `retrieve` is the backend's.
        What a `WebContext` built without a cache uses, so routes always have one."""
        cache = cls(clock, tempfile.gettempdir(), max_size=0)
        cache._claim = False
        return cache

    @property
    def directory(self) -> str:
        return self.store.directory

    def caches(self, aet: str) -> bool:
        """Instances of `aet` are kept (``aets[].cache``, and a ``max-size`` above 0)."""
        return self.store.max_size > 0 and aet not in self.bypass

    def holds(self, aet: str, sop: str) -> bool:
        """A fresh entry for instance `sop` of `aet` exists: `instance` answers at once."""
        return self.caches(aet) and (aet, sop) in self.store

    def filling(self, aet: str, study: str, series: str) -> bool:
        """A retrieve that brings `series` into the cache is in progress: `instance`
        waits for it rather than starting one."""
        return self.caches(aet) and any(r.covers(aet, study, series) for r in self._retrievals)

    def start(self) -> None:
        """Claim and empty the directory (`CacheDirectoryError` if it cannot be ours)."""
        self._stopped = False
        if self._claim:
            self.store.start()

    def stop(self) -> None:
        """Answer every waiter with `ServiceUnavailable`, cancel the cache's own retrieves,
        delete the entries.  Entries open by readers stay readable until they close them."""
        self._stopped = True
        waiting = [w for ws in self._waiters.values() for w in ws]
        waiting += [w for r in self._retrievals for w in r.waiters if w not in waiting]
        self._waiters.clear()
        for waiter in waiting:
            self._detach(waiter)
            if not waiter.deferred.called:
                waiter.deferred.errback(ServiceUnavailable("the gateway is shutting down"))
        for retrieval in list(self._retrievals):
            if retrieval.sink is not None:
                retrieval.sink.abandon()  # what still arrives is refused
            if retrieval.own and retrieval.deferred is not None:
                retrieval.deferred.cancel()
        self.store.stop()

    # -- for frames, bulk data, rendered ---------------------------------------------------

    def instance(self, backend: IBackend, study: str, series: str, sop: str) -> Deferred[CachedInstance]:
        """Instance `sop` of `series` in `study` at `backend`, as a Part-10 file open for
        reading (`CachedInstance`; the caller closes it).

        Served from the cache when a fresh entry exists.  Otherwise the whole series is
        retrieved into the cache (or the study or series retrieve in progress is waited
        for), and this fires as soon as `sop` is stored.  Errbacks with `NotFound` when
        the series came without `sop`, with the retrieve's error when it failed
        (`NotFound`, `UpstreamError`, `UpstreamTimeout`, `ServiceUnavailable`), with
        `CacheError` when the instance could not be written to local disk.  Cancelling it
        stops this wait only (see the module docstring).

        For an AET whose instances are not cached, the instance alone is retrieved into a
        private temporary file (no other call shares it; it is gone once closed).
        """
        aet = backend.aet
        if self._stopped:
            return fail(ServiceUnavailable("the gateway is shutting down"))
        if not self.caches(aet):
            return self._private(backend, study, series, sop)
        key = (aet, sop)
        found = self.store.lookup(key)
        if found is not None:
            self.hits += 1
            return succeed(found)
        self.misses += 1
        waiter = _Waiter(backend, key, study, series)
        waiter.deferred = Deferred(lambda d: self._leave(waiter))
        self._waiters.setdefault(key, []).append(waiter)
        self._join(waiter)
        return waiter.deferred

    # -- for instances and metadata ----------------------------------------------------------

    def retrieve(
        self, backend: IBackend, study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[int]:
        """``backend.retrieve(study, series, instance, sink=sink)``, with every instance
        also written into the cache.  Same result, errors and cancellation.

        Not teed: an AET that is not cached, and a sink that does not want bulk data from
        a backend that honours that (S3 then hands over data sets cut before their pixel
        data, which must not become entries; DIMSE always sends whole ones).
        """
        aet = backend.aet
        whole = sink.wants_bulk_data or backend.kind == "DIMSE"
        if self._stopped or not self.caches(aet) or not whole:
            return backend.retrieve(study, series, instance, sink=sink)
        if series is not None and instance is None:
            held = self._whole_series(aet, study, series)
            if held is not None:
                return self._replay(backend, study, series, held, sink)
        retrieval = _Retrieval(backend, study, series, own=False, started=self.clock.seconds())
        tee = TeeSink(sink, lambda cls, sop, ts: self._open_writer(retrieval, cls, sop, ts))
        if instance is not None:
            # One instance: not the retrieve in progress for its series.
            return backend.retrieve(study, series, instance, sink=tee)
        self._retrievals.append(retrieval)
        try:
            d: Deferred[int] = backend.retrieve(study, series, None, sink=tee)
        except BaseException:
            self._retrievals.remove(retrieval)
            raise
        retrieval.deferred = d

        def ended(result: int | Failure) -> int | Failure:
            self._ended(retrieval, result)
            return result  # the response's, untouched

        return d.addBoth(ended)

    def _whole_series(self, aet: str, study: str, series: str) -> list[CachedInstance] | None:
        """Every instance of a series retrieved whole, opened; None unless all are still
        fresh entries."""
        record = self._series.get((aet, study, series))
        if record is None:
            return None
        sops, until = record
        if self.clock.seconds() >= until:
            del self._series[(aet, study, series)]
            return None
        opened: list[CachedInstance] = []
        for sop in sops:
            found = self.store.lookup((aet, sop))
            if found is None:
                for instance in opened:
                    instance.close()
                del self._series[(aet, study, series)]
                return None
            opened.append(found)
        return opened

    def _replay(
        self, backend: IBackend, study: str, series: str, held: list[CachedInstance], sink: IInstanceSink
    ) -> Deferred[int]:
        self.replays += 1
        log.info(
            "cache: answering series {series} of study {study} at {aet} from {n} cached instance(s)",
            series=series,
            study=study,
            aet=backend.aet,
            n=len(held),
        )

        def unreadable(f: Failure) -> Failure:
            if f.check(OSError):
                raise CacheError(f"cannot read a cached instance: {f.getErrorMessage()}")
            return f

        return Replay(self.clock, sink, held).start().addErrback(unreadable)

    def _remember(self, retrieval: _Retrieval) -> None:
        """A series retrieve ended well: if every instance it brought is kept, later
        responses for the series are answered from the cache."""
        aet = retrieval.backend.aet
        if retrieval.series is None or not retrieval.arrived:
            return
        if not all((aet, sop) in self.store for sop in retrieval.arrived):
            return
        now = self.clock.seconds()
        for key in [k for k, (_, until) in self._series.items() if until <= now]:
            del self._series[key]
        sops = tuple(sorted(retrieval.arrived))
        self._series[(aet, retrieval.study, retrieval.series)] = (sops, now + self.store.ttl)

    # -- waiting -------------------------------------------------------------------------------

    def _join(self, waiter: _Waiter) -> None:
        """Wait on a retrieve in progress that brings the waiter's series, else start one."""
        aet = waiter.key[0]
        for retrieval in self._retrievals:
            if retrieval.covers(aet, waiter.study, waiter.series):
                retrieval.waiters.append(waiter)
                waiter.retrieval = retrieval
                return
        self._fill(waiter)

    def _fill(self, waiter: _Waiter) -> None:
        backend = waiter.backend
        retrieval = _Retrieval(backend, waiter.study, waiter.series, own=True, started=self.clock.seconds())
        retrieval.waiters.append(waiter)
        waiter.retrieval = retrieval
        self._retrievals.append(retrieval)
        self.fills += 1
        log.info(
            "cache: retrieving {what} from {aet} (asked for {sop})",
            what=retrieval.describe(),
            aet=backend.aet,
            sop=waiter.key[1],
        )
        if not self.instance_first:
            self._start(retrieval, None).addBoth(lambda result: self._ended(retrieval, result))
            return

        def then(result: object) -> None:
            # Whatever became of the instance alone (not found in this series, an error),
            # the series retrieve decides what its waiters get.
            if self._stopped or retrieval not in self._retrievals:
                self._ended(retrieval, result)
                return
            self._start(retrieval, None).addBoth(lambda result: self._ended(retrieval, result))

        self._start(retrieval, waiter.key[1]).addBoth(then)

    def _start(self, retrieval: _Retrieval, sop: str | None) -> Deferred[int]:
        """Retrieve `sop` (None: the retrieval's whole series) into the cache, as the
        retrieval's current step."""
        sink = FillSink(lambda cls, uid, ts: self._open_writer(retrieval, cls, uid, ts))
        retrieval.sink = sink
        try:
            d: Deferred[int] = retrieval.backend.retrieve(retrieval.study, retrieval.series, sop, sink=sink)
        except Exception:
            d = fail()
        retrieval.deferred = d
        return d

    def _open_writer(
        self, retrieval: _Retrieval, sop_class: str, sop: str, syntax: str
    ) -> EntryWriter | None:
        retrieval.arrived.add(sop)
        if self._stopped:
            return None
        aet = retrieval.backend.aet
        try:
            header = file_meta(sop_class, sop, syntax, aet)
        except ValueError as e:
            log.warn("cache: not keeping {sop}: {why}", sop=sop, why=str(e))
            return None
        return self.store.writer((aet, sop), sop_class, syntax, header)

    def _wanted(self, key: Key) -> bool:
        return bool(self._waiters.get(key))

    def _stored(self, entry: Entry) -> None:
        """An entry is in place: everyone waiting for it gets it (opened here, before
        anything may be evicted to make room for it)."""
        for retrieval in self._retrievals:
            if retrieval.backend.aet == entry.key[0] and entry.key[1] in retrieval.arrived:
                retrieval.stored += 1
                retrieval.bytes += entry.size
                break
        waiters = [w for w in self._waiters.pop(entry.key, []) if not w.deferred.called]
        opened: list[tuple[_Waiter, CachedInstance | Failure]] = []
        for waiter in waiters:
            self._detach(waiter)
            try:
                opened.append((waiter, entry.open()))
            except OSError as e:
                opened.append((waiter, Failure(CacheError(f"cannot read the cached instance: {e}"))))
        for waiter, result in opened:
            if isinstance(result, Failure):
                waiter.deferred.errback(result)
            else:
                waiter.deferred.callback(result)

    def _ended(self, retrieval: _Retrieval, result: object) -> None:
        """A retrieve ended: whoever still waits on it gets an answer, or another retrieve."""
        if retrieval in self._retrievals:
            self._retrievals.remove(retrieval)
        failed = isinstance(result, Failure)
        if not failed:
            self._remember(retrieval)
        if retrieval.own:
            self._log_end(retrieval, result)
        waiters, retrieval.waiters = retrieval.waiters, []
        for waiter in waiters:
            waiter.retrieval = None
            if waiter.deferred.called:
                continue
            sop = waiter.key[1]
            if not failed:
                if sop in retrieval.arrived:
                    # It came, but was not kept (too large, the response refused it, a
                    # write failed): fetch it for this caller alone.
                    self._remove_waiter(waiter)
                    self._fall_back(waiter)
                else:
                    self._remove_waiter(waiter)
                    waiter.deferred.errback(
                        NotFound(f"{waiter.backend.aet} has no instance {sop} in series {waiter.series}")
                    )
            elif retrieval.own or self._stopped:
                self._remove_waiter(waiter)
                assert isinstance(result, Failure)
                waiter.deferred.errback(result)
            else:
                # The response it waited on failed or its client left: its own retrieve.
                self._join(waiter)

    def _log_end(self, retrieval: _Retrieval, result: object) -> None:
        took = self.clock.seconds() - retrieval.started
        aet = retrieval.backend.aet
        if isinstance(result, Failure):
            log.warn(
                "cache: retrieving {what} from {aet} failed after {n} instance(s) in {s:.1f} s: {why}",
                what=retrieval.describe(),
                aet=aet,
                n=retrieval.stored,
                s=took,
                why=result.getErrorMessage(),
            )
        else:
            log.info(
                "cache: retrieved {what} from {aet}: {n} instance(s), {bytes} bytes stored in {s:.1f} s",
                what=retrieval.describe(),
                aet=aet,
                n=retrieval.stored,
                bytes=retrieval.bytes,
                s=took,
            )

    def _fall_back(self, waiter: _Waiter) -> None:
        private = self._private(waiter.backend, waiter.study, waiter.series, waiter.key[1])
        waiter.private = private
        private.addCallbacks(waiter.deferred.callback, waiter.deferred.errback)

    def _leave(self, waiter: _Waiter) -> None:
        """The caller cancelled (its client left): it stops waiting; the retrieve goes on."""
        self._remove_waiter(waiter)
        self._detach(waiter)
        if waiter.private is not None and not waiter.private.called:
            waiter.private.cancel()

    def _remove_waiter(self, waiter: _Waiter) -> None:
        waiting = self._waiters.get(waiter.key)
        if waiting is not None and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._waiters[waiter.key]

    def _detach(self, waiter: _Waiter) -> None:
        retrieval = waiter.retrieval
        if retrieval is not None and waiter in retrieval.waiters:
            retrieval.waiters.remove(waiter)
        waiter.retrieval = None

    # -- not cached ----------------------------------------------------------------------------

    def _private(self, backend: IBackend, study: str, series: str, sop: str) -> Deferred[CachedInstance]:
        sink = PrivateSink(self.store.directory, backend.aet, sop)
        try:
            d: Deferred[int] = backend.retrieve(study, series, sop, sink=sink)
        except Exception:
            d = fail()

        def taken(_: object) -> CachedInstance:
            found = sink.result
            if found is not None:
                return found
            sink.close()
            if sink.error is not None:
                raise CacheError(sink.error)
            raise NotFound(f"{backend.aet} has no instance {sop} in series {series}")

        def failed(f: Failure) -> Failure:
            sink.close()
            return f

        return d.addCallbacks(taken, failed)

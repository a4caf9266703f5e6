# -*- test-case-name: tests.unit.test_pool -*-
"""A pool of associations to one PACS, shared by every DIMSE service.

Rules (issue 3, and what DICOM-RST got wrong):

* at most `size` associations exist at once (opening, busy, idle, or being released
  until the PACS confirms);
* a caller waits at most `acquire_timeout` for one, else 503 with Retry-After;
* idle associations are reused, most recently used first, and released after
  `idle_timeout`; one the PACS closed or aborted is noticed (its UL reports the end)
  and dropped, freeing its slot;
* at most `max_idle` are kept idle: one given back beyond that is released at once.
  Each idle association holds one of the PACS's workers (Orthanc has four), so after
  a burst the pool keeps what steady load reuses, not what the burst needed;
* an association that could not be opened (refused, rejected, timed out) frees its
  slot at once; one whose caller gave up while it was opening joins the pool;
* every association proposes the contexts all services need, so any request can use
  any idle association; the exception is a C-STORE whose SOP class or transfer syntax
  the common contexts lack (compressed syntaxes: 128 contexts do not hold them all),
  which gets an association proposing what it needs, keyed by that request: reused
  by the next instance that needs the same, counted against `size` like any other,
  and retired (released) when its slot is wanted for another kind;
* `stop()` releases everything, fails the waiters, and fires once every connection
  (also one still being opened) is closed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.tls import ClientTLS
from dicomrst.dimse.client import associate
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.errors import AssociationIntact
from dicomrst.errors import ServiceUnavailable
from dicomrst.logs import current_request_id, debug_enabled, info_enabled, logger
from dicomrst.ul.errors import (
    AssociationAborted,
    AssociationClosed,
    AssociationRejected,
    ConnectionLost,
    ProtocolViolation,
)
from dicomrst.ul.negotiation import RESULT_REJECTED_TRANSIENT, AssociationRequest

log = logger("dicomrst.pool")

T = TypeVar("T")

# Errors that mean "the association was dead before the PACS saw our request", for
# a reused association: retrying once on a fresh one is safe.
STALE_ERRORS = (AssociationClosed, ConnectionLost, AssociationAborted)

# Seconds a lowered association ceiling holds before we try `size` again.
CEILING_HOLD = 60.0


@attrs.define(eq=False)
class Lease:
    """An association lent to one operation."""

    connection: DimseConnection
    reused: bool
    idle_timer: IDelayedCall | None = None
    # Set when an operation was abandoned but hands the association back itself
    # once the PACS has finished (e.g. after C-CANCEL).
    detached: bool = False
    # What it was opened with (None: the pool's common request).
    request: AssociationRequest | None = None


class AssociationPool:
    def __init__(
        self,
        reactor: IGatewayReactor,
        host: str,
        port: int,
        request: AssociationRequest,
        *,
        size: int,
        acquire_timeout: float,
        idle_timeout: float,
        connect_timeout: float,
        max_idle: int,
        metrics: Metrics | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self.reactor = reactor
        # Given to every association it opens (None: metrics are off).
        self.metrics = metrics
        # DICOM TLS for every association it opens (None: plain TCP).
        self.tls = tls
        self.clock: IReactorTime = reactor
        self.host = host
        self.port = port
        self.request = request
        self.size = size
        self.acquire_timeout = acquire_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: deque[Lease] = deque()
        self._busy: set[Lease] = set()
        # Released for being idle: they hold their slot until the PACS has confirmed.
        self._releasing: set[Lease] = set()
        self._opening = 0
        # Associations being opened (each fires with None once settled).
        self._attempts: set[Deferred[None]] = set()
        self._waiters: deque[Deferred[Lease | None]] = deque()
        # What each waiter needs, when that is not the common request.
        self._wants: dict[Deferred[Lease | None], AssociationRequest] = {}
        self._stopped = False
        # Every connection of ours whose TCP connection is not closed yet.
        self._all: set[DimseConnection] = set()
        # C-STOREs of STOW-RS queue here, `size` at a time, before asking for an
        # association: a study of many instances must not wait out `acquire_timeout`
        # behind its own earlier instances.
        self.store_slots = DeferredSemaphore(size)
        # Lowered when the PACS turns away associations we would be allowed to open.
        self._ceiling: int | None = None
        self._ceiling_until = 0.0

    @property
    def aet(self) -> str:
        return self.request.called_aet

    def stats(self) -> dict[str, int]:
        return {
            "idle": len(self._idle),
            "busy": len(self._busy),
            "opening": self._opening,
            "releasing": len(self._releasing),
        }

    def _count(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening + len(self._releasing)

    # -- lending ------------------------------------------------------------------

    def _key(self, request: AssociationRequest | None) -> AssociationRequest | None:
        return None if request is None or request == self.request else request

    async def acquire(self, request: AssociationRequest | None = None) -> Lease:
        """An association opened with `request` (default: the common one)."""
        key = self._key(request)
        if self._stopped:
            raise ServiceUnavailable(f"{self.aet}: gateway is shutting down")
        for lease in reversed(list(self._idle)):
            if lease.request != key:
                continue
            self._idle.remove(lease)
            _cancel(lease.idle_timer)
            lease.idle_timer = None
            if not lease.connection.whenEnded.called:
                lease.reused = True
                self._busy.add(lease)
                self._decided("reuse", "an idle association")
                return lease
        if self._count() < self._limit():
            self._decided("open", "a new association")
            try:
                return await self._open(key)
            except AssociationRejected as e:
                if not self._pacs_limit_reached(e):
                    raise
        # Full: an idle association opened for other contexts makes room once released.
        for lease in list(self._idle):
            if lease.request != key:
                self._retire(lease)
                break
        self._decided("wait", f"at most {self.acquire_timeout * 1000:.0f} ms for an association")
        return await self._wait(key)

    def _decided(self, decision: str, what: str, request_id: str | None = None) -> None:
        """A DEBUG line for each decision (reuse, open, wait, release, retire, end)."""
        if not debug_enabled():
            return  # two or three a request: the event's fields cost more than the filter
        extra = {} if request_id is None else {"request_id": request_id}
        log.debug(
            "pool {aet}: {decision}: {what} (busy={busy} idle={idle} opening={opening} waiting={waiting} "
            "size={size})",
            aet=self.aet,
            decision=decision,
            what=what,
            busy=len(self._busy),
            idle=len(self._idle),
            opening=self._opening,
            waiting=len(self._waiters),
            size=self._limit(),
            **extra,
        )

    def _limit(self) -> int:
        if self._ceiling is not None and self.clock.seconds() < self._ceiling_until:
            return min(self.size, self._ceiling)
        self._ceiling = None
        return self.size

    def _pacs_limit_reached(self, error: AssociationRejected) -> bool:
        """A transient rejection while we hold other associations to this PACS: it
        limits associations per peer below `size` (storescp without --fork, PACS with
        a per-AE cap).  Wait for one of ours instead of failing the request, and open
        no more than we now hold for a while."""
        held = len(self._busy) + len(self._idle) + len(self._releasing)
        if error.result != RESULT_REJECTED_TRANSIENT or self._stopped or not (held or self._opening):
            return False
        # Some PACS reject every one of several associations that arrive together
        # (pynetdicom counts them all against its limit), so one still being opened
        # counts as a reason to wait too, and the ceiling is at least one.
        held = max(1, held)
        if self._ceiling != held:
            log.warn(
                "{aet} rejected association {n} ({why}); using at most {held} for {seconds:g} s",
                aet=self.aet,
                n=held + 1,
                why=error,
                held=held,
                seconds=CEILING_HOLD,
            )
        self._ceiling = held
        self._ceiling_until = self.clock.seconds() + CEILING_HOLD
        return True

    def _retire(self, lease: Lease) -> None:
        """Release an idle association; its slot frees when the PACS confirms."""
        if lease in self._idle:
            self._idle.remove(lease)
        _cancel(lease.idle_timer)
        lease.idle_timer = None
        self._releasing.add(lease)
        lease.connection.release().addErrback(_ignore)

    async def _open(self, key: AssociationRequest | None = None) -> Lease:
        # The attempt is not cancelled when our caller gives up: cancelling it half-way
        # would leave an association established behind our back, in no list, until the
        # PACS times it out.  Once up, it joins the pool like any released one.
        self._opening += 1
        opened: Deferred[Lease] = Deferred()
        attempt: Deferred[None] = Deferred.fromCoroutine(
            associate(
                self.reactor,
                self.host,
                self.port,
                key or self.request,
                timeout=self.connect_timeout,
                metrics=self.metrics,
                tls=self.tls,
            )
        ).addBoth(self._settled, opened, key)
        if not attempt.called:
            self._attempts.add(attempt)
            attempt.addBoth(lambda _: self._attempts.discard(attempt))
        return await opened

    def _settled(
        self, result: DimseConnection | Failure, opened: Deferred[Lease], key: AssociationRequest | None
    ) -> None:
        self._opening -= 1
        if isinstance(result, Failure):
            # The slot is free again: a waiter may try its own luck.
            self._wake()
            if not opened.called:
                opened.errback(result)
            return
        connection = result
        self._all.add(connection)
        assert connection.association is not None
        connection.association.whenClosed.addBoth(_passing(self._all.discard, connection))
        if self._stopped:
            connection.abort("gateway is shutting down")
            if not opened.called:
                opened.errback(ServiceUnavailable(f"{self.aet}: gateway is shutting down"))
            return
        lease = Lease(connection, reused=False, request=key)
        self._busy.add(lease)
        connection.whenEnded.addCallback(lambda _: self._ended(lease))
        if opened.called:  # cancelled: whoever waits next gets it, else it idles
            self.release(lease)
        else:
            opened.callback(lease)

    async def _wait(self, key: AssociationRequest | None = None) -> Lease:
        waiter: Deferred[Lease | None] = Deferred()
        self._waiters.append(waiter)
        if key is not None:
            self._wants[waiter] = key
        waiter.addTimeout(self.acquire_timeout, self.clock)
        try:
            lease = await waiter
        except CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        except DeferredTimeout:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise ServiceUnavailable(
                f"{self.aet}: all {self.size} associations busy for {self.acquire_timeout * 1000:.0f} ms",
                retry_after=max(1, math.ceil(self.acquire_timeout)),
            ) from None
        finally:
            self._wants.pop(waiter, None)
        if lease is not None:
            return lease
        # A slot was freed rather than an association handed over.
        if self._stopped:
            raise ServiceUnavailable(f"{self.aet}: gateway is shutting down")
        return await self.acquire(key)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.called:
                waiter.callback(None)
                return

    def release(self, lease: Lease, reusable: bool = True) -> None:
        """Give an association back; `reusable=False` ends it (state unknown)."""
        lease.detached = False
        if lease not in self._busy:
            return
        self._busy.discard(lease)
        connection = lease.connection
        # The request the association served, named on the release line: the release may
        # run in a callback fired by the network, outside the request's context.
        served, connection.request_id = connection.request_id, None
        # `ended` stays None after an orderly release: whenEnded says whether it is over.
        if connection.whenEnded.called or self._stopped or not reusable:
            if not connection.whenEnded.called:
                connection.abort("not reusable" if not self._stopped else "gateway is shutting down")
            self._decided("release", "association ended, not reusable", served)
            self._wake()
            return
        for waiter in list(self._waiters):
            if waiter.called:
                self._waiters.remove(waiter)
            elif self._wants.get(waiter) == lease.request:
                self._waiters.remove(waiter)
                lease.reused = True
                self._busy.add(lease)
                self._decided("release", "association handed to a waiting request", served)
                waiter.callback(lease)
                return
        if self._waiters or len(self._idle) >= self.max_idle:
            # Everyone waiting needs other contexts: this slot serves them better free.
            # Or enough are idle already: this one would only hold a PACS worker.
            self._retire(lease)
            self._decided("release", "association released to the PACS (not kept idle)", served)
            return
        lease.idle_timer = self.clock.callLater(self.idle_timeout, self._idle_expired, lease)
        self._idle.append(lease)
        self._decided("release", "association kept idle", served)

    def _idle_expired(self, lease: Lease) -> None:
        lease.idle_timer = None
        if lease in self._idle:
            self._idle.remove(lease)
            # Its slot stays taken until the release is confirmed (`_ended`), so the
            # PACS never sees more than `size` associations from us.
            self._releasing.add(lease)
            lease.connection.release().addErrback(_ignore)

    def _ended(self, lease: Lease) -> None:
        # The PACS closed or aborted it (or we did): it no longer holds a slot.
        if lease in self._idle:
            self._idle.remove(lease)
            _cancel(lease.idle_timer)
            lease.idle_timer = None
            self._wake()
        elif lease in self._releasing:
            self._releasing.discard(lease)
            self._wake()

    # -- running an operation -------------------------------------------------------

    async def run(
        self,
        operation: Callable[[Lease], Awaitable[T]],
        *,
        retry_stale: bool = True,
        request: AssociationRequest | None = None,
    ) -> T:
        """Run `operation` on a lent association and give it back.

        If a reused association turns out dead before the operation got anything
        back (`operation` raises one of STALE_ERRORS with `lease.reused`), it is run
        once more on a fresh association.  The operation must raise for any outcome
        that leaves the association unusable; a `CancelledError` ends it.
        """
        for attempt in (1, 2):
            lease = await self.acquire(request)
            self._taken(lease)
            try:
                result = await operation(lease)
            except STALE_ERRORS as e:
                self.release(lease, reusable=False)
                if attempt == 1 and retry_stale and lease.reused and not isinstance(e, ProtocolViolation):
                    log.info(
                        "{aet}: reused association was closed by the PACS; retrying on a new one",
                        aet=self.aet,
                    )
                    # Idle ones are reused most recent first, so those left are older than
                    # the one found dead (a PACS restart or idle timeout took them too):
                    # drop them, so the retry runs on a new association.
                    for idle in list(self._idle):
                        idle.connection.abort("presumed closed by the PACS")
                        self._ended(idle)  # if the abort has not ended it already
                    continue
                raise
            except Exception as e:  # CancelledError included; not GeneratorExit
                # A DIMSE failure status leaves the association fine; anything else
                # (timeouts, protocol errors, cancellation) leaves it in doubt.
                if not lease.detached:
                    self.release(lease, reusable=isinstance(e, AssociationIntact))
                raise
            self.release(lease)
            return result
        raise AssertionError("unreachable")

    def _taken(self, lease: Lease) -> None:
        """The association line for a request, when it is taken (the UL logs another when
        it ends); the connection remembers the request for its DIMSE lines."""
        connection = lease.connection
        connection.request_id = current_request_id()
        if not info_enabled():
            return  # one a search: at WARN the event's fields cost more than the filter
        association = connection.association
        log.info(
            "association to {aet} taken ({how}) peer={peer} calling={calling} busy={busy}/{size}",
            aet=self.aet,
            how="reused" if lease.reused else "new",
            peer=association.peer if association is not None else "-",
            calling=association.calling_aet if association is not None else "-",
            busy=len(self._busy),
            size=self._limit(),
        )

    # -- shutdown -------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Release idle associations, abort busy ones, fail waiters; fire once every
        connection of ours is closed (also those still being opened now)."""
        self._stopped = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        while self._idle:
            lease = self._idle.pop()
            _cancel(lease.idle_timer)
            lease.idle_timer = None
            self._releasing.add(lease)
            lease.connection.release().addErrback(_ignore)
        for lease in list(self._busy):
            if not lease.connection.whenEnded.called:
                lease.connection.abort("gateway is shutting down")
        return Deferred.fromCoroutine(self._closed())

    async def _closed(self) -> None:
        # An attempt that completes now aborts its association at once (`_settled`).
        await DeferredList(list(self._attempts))
        closing = [c.association.whenClosed for c in self._all if c.association is not None]
        await DeferredList(closing)


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


def _passing(f: Callable[[T], object], arg: T) -> Callable[[object], object]:
    """A callback that calls f(arg) and passes the result on (others wait on it too)."""

    def callback(result: object) -> object:
        f(arg)
        return result

    return callback


def _ignore(_: object) -> None:
    # release() fails if the association ended some other way meanwhile; `_ended` has
    # already dealt with that.
    return None

"""The association pool (dicomrst.dimse.pool) and C-FIND through DimseBackend, without sockets.

Every association the pool opens is a `MemoryReactorClock.tcpClients` entry; the test completes
it against an in-memory acceptor (`ULProtocol` with an `AcceptorPolicy`, a `DimseConnection` with
a scripted C-FIND SCP) joined by `twisted.test.iosim`, or fails it (`clientConnectionFailed`,
an A-ASSOCIATE-RJ).  Time is the reactor's clock only. That in-memory PACS and `PoolTestCase`
are in `tests.support.pool`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent

from dicomrst.backends.pacs import DimseBackend
from dicomrst.backends.pacs.backend import CallerNotAccepted
from dicomrst.common.identifiers import found_dataset
from dicomrst.dimse import commands
from dicomrst.dimse import pool as pool_module
from dicomrst.dimse.find import FindFailed
from dicomrst.dimse.pool import STALE_ERRORS, AssociationPool, Lease
from dicomrst.errors import ServiceUnavailable, UpstreamError
from dicomrst.logs import request_scope, set_level
from dicomrst.ul import pdu
from dicomrst.ul.errors import (
    AssociationAborted,
    AssociationClosed,
    AssociationRejected,
    AssociationTimeout,
    ConnectFailed,
    ConnectionLost,
)
from dicomrst.web.errors import http_status
from tests.support.pool import (
    BUSY_POLICY,
    CALLED,
    HOST,
    IDLE,
    PORT,
    QIDO,
    WAIT,
    WRONG_AET_POLICY,
    Link,
    PoolTestCase,
    match,
)
from tests.support.ul import TICK

# -- the pool ------------------------------------------------------------------------------------


class SizeTests(PoolTestCase):
    def test_opens_on_demand_up_to_size_then_waits(self) -> None:
        pool = self.make_pool(size=2)
        d1, d2, d3 = (self.acquire(pool) for _ in range(3))
        self.assertEqual(self.pending_connects(), 2)
        self.assertStats(pool, opening=2)
        self.connect()
        self.connect()
        l1, l2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertIsNot(l1.connection, l2.connection)
        self.assertEqual((l1.reused, l2.reused), (False, False))
        self.assertNoResult(d3)
        self.assertEqual(self.pending_connects(), 0)
        self.assertStats(pool, busy=2)
        pool.release(l1)
        self.assertIs(self.successResultOf(d3).connection, l1.connection)

    def test_waiter_gets_the_released_association(self) -> None:
        pool = self.make_pool(size=1)
        (lease,) = self.opened(pool, 1)
        d2, d3 = self.acquire(pool), self.acquire(pool)
        pool.release(lease)
        second = self.successResultOf(d2)
        self.assertIs(second.connection, lease.connection)
        self.assertTrue(second.reused)
        self.assertNoResult(d3)
        pool.release(second)
        self.assertIs(self.successResultOf(d3).connection, lease.connection)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertStats(pool, busy=1)
        self.assertQuiet()  # a handed-over association has no idle timer

    def test_idle_associations_are_reused_most_recent_first(self) -> None:
        pool = self.make_pool(size=2)
        l1, l2 = self.opened(pool, 2)
        pool.release(l1)
        pool.release(l2)
        again = self.successResultOf(self.acquire(pool))
        self.assertIs(again.connection, l2.connection)
        self.assertTrue(again.reused)
        self.assertStats(pool, idle=1, busy=1)

    def test_acquire_timeout_is_503_with_retry_after(self) -> None:
        pool = self.make_pool(size=1, acquire_timeout=WAIT)
        (lease,) = self.opened(pool, 1)
        d = self.acquire(pool)
        self.reactor.advance(WAIT - TICK)
        self.assertNoResult(d)
        self.reactor.advance(TICK)
        error = self.failureResultOf(d, ServiceUnavailable).value
        self.assertEqual(http_status(error), 503)
        self.assertEqual(error.retry_after, 3)
        self.assertIn("all 1 associations busy for 2500 ms", str(error))
        # The waiter that gave up gets nothing; the association goes idle.
        pool.release(lease)
        self.assertStats(pool, idle=1)

    def test_retry_after_is_at_least_one_second(self) -> None:
        pool = self.make_pool(size=1, acquire_timeout=0.25)
        self.opened(pool, 1)
        d = self.acquire(pool)
        self.reactor.advance(0.25)
        self.assertEqual(self.failureResultOf(d, ServiceUnavailable).value.retry_after, 1)

    def test_cancelled_waiter_leaves_the_queue(self) -> None:
        pool = self.make_pool(size=1)
        (lease,) = self.opened(pool, 1)
        d2, d3 = self.acquire(pool), self.acquire(pool)
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        pool.release(lease)
        self.assertIs(self.successResultOf(d3).connection, lease.connection)
        self.assertQuiet()  # the cancelled waiter's timeout went with it


class IdleTests(PoolTestCase):
    def test_idle_association_is_released_at_idle_timeout_exactly(self) -> None:
        pool = self.make_pool()
        lease = self.idle_one(pool)
        (link,) = self.links
        self.reactor.advance(IDLE - TICK)
        self.assertNotIn(pdu.RELEASE_RQ, link.pdus())
        self.assertStats(pool, idle=1)
        self.reactor.advance(TICK)
        self.assertEqual(link.pdus()[-1], pdu.RELEASE_RQ)
        self.assertStats(pool, releasing=1)
        self.flush()
        self.assertEqual(self.successResultOf(link.requestor.whenClosed), "released")
        self.assertIsNone(lease.connection.ended)  # an orderly release
        self.assertStats(pool)
        self.assertQuiet()
        d = self.acquire(pool)
        self.assertEqual(self.pending_connects(), 1)
        self.connect()
        self.assertFalse(self.successResultOf(d).reused)

    def test_no_more_than_max_idle_are_kept_after_a_burst(self) -> None:
        # Each idle association holds a PACS worker thread (Orthanc has four): after a
        # burst of four, later searches would wait for the idle timeout to free them.
        pool = self.make_pool(size=4, max_idle=1)
        leases = self.opened(pool, 4)
        for lease in leases:
            pool.release(lease)
        self.assertStats(pool, idle=1, releasing=3)
        self.flush()
        self.assertStats(pool, idle=1)
        released = [link for link in self.links if pdu.RELEASE_RQ in link.pdus()]
        self.assertEqual(len(released), 3)
        self.assertTrue(all(link.closed() for link in released))
        again = self.successResultOf(self.acquire(pool))
        self.assertIs(again.connection, leases[0].connection)  # the one kept is reused
        pool.release(again)

    def test_max_idle_zero_keeps_none(self) -> None:
        pool = self.make_pool(size=2, max_idle=0)
        (lease,) = self.opened(pool, 1)
        pool.release(lease)
        self.assertStats(pool, releasing=1)
        self.flush()
        self.assertStats(pool)
        self.assertQuiet()

    def test_reuse_restarts_the_idle_timer(self) -> None:
        pool = self.make_pool()
        lease = self.idle_one(pool)
        (link,) = self.links
        self.reactor.advance(IDLE - TICK)
        again = self.successResultOf(self.acquire(pool))
        self.reactor.advance(2 * TICK)
        pool.release(again)
        self.reactor.advance(IDLE - TICK)
        self.assertNotIn(pdu.RELEASE_RQ, link.pdus())
        self.reactor.advance(TICK)
        self.assertIn(pdu.RELEASE_RQ, link.pdus())
        self.assertIs(again.connection, lease.connection)

    def test_association_being_released_keeps_its_slot(self) -> None:
        # Otherwise the PACS would briefly see size + 1 associations from us.
        pool = self.make_pool(size=1)
        self.idle_one(pool)
        self.reactor.advance(IDLE)  # A-RELEASE-RQ written, not yet answered
        d = self.acquire(pool)
        self.assertEqual(self.pending_connects(), 0)
        self.assertNoResult(d)
        self.flush()  # A-RELEASE-RP: the slot is free, the waiter opens its own
        self.assertEqual(self.pending_connects(), 1)
        self.connect()
        self.assertFalse(self.successResultOf(d).reused)
        self.assertStats(pool, busy=1)

    def _peer_ends_idle(self, end: Callable[[Link], None], outcome: str) -> None:
        pool = self.make_pool(size=1)
        lease = self.idle_one(pool)
        (link,) = self.links
        end(link)
        self.flush()
        self.assertIn(outcome, self.successResultOf(link.requestor.whenClosed))
        self.assertStats(pool)
        self.assertQuiet()  # its idle timer is gone too
        d = self.acquire(pool)
        self.assertEqual(self.pending_connects(), 1)
        self.connect()
        new = self.successResultOf(d)
        self.assertIsNot(new.connection, lease.connection)
        self.assertFalse(new.reused)

    def test_idle_association_aborted_by_the_peer_is_dropped(self) -> None:
        self._peer_ends_idle(lambda link: link.acceptor.abort("idle too long"), "aborted by peer")

    def test_idle_association_closed_by_the_peer_is_dropped(self) -> None:
        self._peer_ends_idle(lambda link: link.theirs.loseConnection(), "connection closed")

    def test_idle_association_released_by_the_peer_is_dropped(self) -> None:
        # pynetdicom's network timeout in A-RELEASE mode: the acceptor asks for the release.
        self._peer_ends_idle(lambda link: link.acceptor.release(), "released")


class OpenFailureTests(PoolTestCase):
    def test_connection_refused_frees_the_slot_and_wakes_a_waiter(self) -> None:
        pool = self.make_pool(size=1)
        d1, d2 = self.acquire(pool), self.acquire(pool)
        self.assertEqual(self.pending_connects(), 1)
        self.refuse()
        error = self.failureResultOf(d1, ConnectFailed).value
        self.assertIn(f"{CALLED}@{HOST}:{PORT}", str(error))
        # The waiter tries its own connection at once, not after its acquire timeout.
        self.assertEqual(self.pending_connects(), 1)
        self.assertStats(pool, opening=1)
        self.connect()
        self.assertFalse(self.successResultOf(d2).reused)
        self.assertStats(pool, busy=1)

    def test_rejection_frees_the_slot_and_wakes_a_waiter(self) -> None:
        pool = self.make_pool(size=1)
        d1, d2 = self.acquire(pool), self.acquire(pool)
        self.connect(WRONG_AET_POLICY)
        error = self.failureResultOf(d1, AssociationRejected).value
        self.assertEqual((error.result, error.source, error.reason), (1, 1, 7))
        self.assertEqual(http_status(error), 502)
        self.assertEqual(self.pending_connects(), 1)
        self.connect(WRONG_AET_POLICY)
        self.failureResultOf(d2, AssociationRejected)
        self.assertStats(pool)
        self.assertTrue(all(link.closed() for link in self.links))
        self.assertQuiet()

    def test_repeated_rejections_never_exhaust_the_pool(self) -> None:
        # DICOM-RST leaked the slot of a rejected association: after `size` of them, 503s.
        pool = self.make_pool(size=1)
        for _ in range(3):
            d = self.acquire(pool)
            self.connect(WRONG_AET_POLICY)
            self.failureResultOf(d, AssociationRejected)
            self.assertStats(pool)
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_transient_rejection_while_holding_one_waits_for_it(self) -> None:
        # A PACS that serves one association per peer (storescp without --fork): the
        # second request waits for the first association instead of failing.
        from dicomrst.dimse.pool import CEILING_HOLD

        pool = self.make_pool(size=3)
        (l1,) = self.opened(pool, 1)
        d2 = self.acquire(pool)
        self.connect(BUSY_POLICY)
        self.assertNoResult(d2)
        self.assertStats(pool, busy=1)
        pool.release(l1)
        l2 = self.successResultOf(d2)
        self.assertIs(l2.connection, l1.connection)
        # The ceiling holds: a third request waits too, without trying the PACS again.
        d3 = self.acquire(pool)
        self.assertEqual(self.pending_connects(), 0)
        self.assertNoResult(d3)
        pool.release(l2)
        l3 = self.successResultOf(d3)
        # After the hold, the pool tries for more again.
        self.reactor.advance(CEILING_HOLD)
        d4 = self.acquire(pool)
        self.assertEqual(self.pending_connects(), 1)
        self.connect()
        self.assertIsNot(self.successResultOf(d4).connection, l3.connection)

    def test_transient_rejection_holding_none_fails(self) -> None:
        pool = self.make_pool(size=3)
        d = self.acquire(pool)
        self.connect(BUSY_POLICY)
        error = self.failureResultOf(d, AssociationRejected).value
        self.assertEqual((error.result, error.source, error.reason), (2, 3, 2))
        self.assertStats(pool)

    def test_cancelled_while_opening_joins_the_pool(self) -> None:
        pool = self.make_pool(size=1)
        d = self.acquire(pool)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertStats(pool, opening=1)
        link = self.connect()
        # Established after all: kept as an idle association, not leaked.
        self.assertStats(pool, idle=1)
        self.assertNotIn(pdu.ABORT, link.pdus())
        again = self.successResultOf(self.acquire(pool))
        self.assertIs(again.connection, link.requestor.user)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_cancelled_while_opening_goes_to_the_next_waiter(self) -> None:
        pool = self.make_pool(size=1)
        d1, d2 = self.acquire(pool), self.acquire(pool)
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertNoResult(d2)
        link = self.connect()
        self.assertIs(self.successResultOf(d2).connection, link.requestor.user)
        self.assertStats(pool, busy=1)

    def test_cancelled_open_that_fails_frees_the_slot(self) -> None:
        pool = self.make_pool(size=1)
        d = self.acquire(pool)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.refuse()
        self.assertStats(pool)


# -- run(): the retry-once rule and what goes back to the pool -------------------------------


class RunTests(PoolTestCase):
    def run_op(self, pool: AssociationPool, operation: Any, **kw: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(pool.run(operation, **kw))

    def test_success_returns_the_association_to_idle(self) -> None:
        pool = self.make_pool()

        async def op(lease: Lease) -> str:
            return "done"

        d = self.run_op(pool, op)
        self.connect()
        self.assertEqual(self.successResultOf(d), "done")
        self.assertStats(pool, idle=1)

    def retried_on_a_fresh_one(self, error: type[Exception]) -> None:
        self.assertIn(error, STALE_ERRORS)
        pool = self.make_pool(size=1)
        stale = self.idle_one(pool)
        seen: list[Lease] = []

        async def op(lease: Lease) -> str:
            seen.append(lease)
            if lease.reused:
                raise error("association is gone")
            return "fresh"

        d = self.run_op(pool, op)
        self.assertNoResult(d)
        self.assertEqual(self.pending_connects(), 1)  # the stale one's slot was freed
        self.assertIn(pdu.ABORT, self.links[0].pdus())
        self.connect()
        self.assertEqual(self.successResultOf(d), "fresh")
        self.assertEqual([lease.reused for lease in seen], [True, False])
        self.assertIs(seen[0].connection, stale.connection)
        self.assertStats(pool, idle=1)

    def test_stale_closed_association_is_retried_once(self) -> None:
        self.retried_on_a_fresh_one(AssociationClosed)

    def test_stale_lost_connection_is_retried_once(self) -> None:
        self.retried_on_a_fresh_one(ConnectionLost)

    def test_stale_aborted_association_is_retried_once(self) -> None:
        self.retried_on_a_fresh_one(AssociationAborted)

    def test_fresh_association_is_not_retried(self) -> None:
        pool = self.make_pool()
        calls: list[Lease] = []

        async def op(lease: Lease) -> None:
            calls.append(lease)
            raise ConnectionLost("closed during the request")

        d = self.run_op(pool, op)
        self.connect()
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertStats(pool)

    def test_retried_at_most_once(self) -> None:
        pool = self.make_pool(size=1)
        self.idle_one(pool)
        calls: list[Lease] = []

        async def op(lease: Lease) -> None:
            calls.append(lease)
            raise AssociationClosed("association is not established")

        d = self.run_op(pool, op)
        self.connect()
        self.failureResultOf(d, AssociationClosed)
        self.assertEqual([lease.reused for lease in calls], [True, False])
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertStats(pool)

    def test_older_idle_associations_are_dropped_before_the_retry(self) -> None:
        # The most recently used idle one was dead: the older ones are presumed dead too,
        # so the retry runs on a new association, not on another stale one.
        pool = self.make_pool(size=3)
        l1, l2, l3 = self.opened(pool, 3)
        for lease in (l1, l2, l3):
            pool.release(lease)
        calls: list[Lease] = []

        async def op(lease: Lease) -> str:
            calls.append(lease)
            if lease.reused:
                raise ConnectionLost("connection closed by peer without release or abort")
            return "fresh"

        d = self.run_op(pool, op)
        self.assertEqual([link.pdus()[-1] for link in self.links], [pdu.ABORT] * 3)
        self.assertStats(pool, opening=1)
        self.connect()
        self.assertEqual(self.successResultOf(d), "fresh")
        self.assertIs(calls[0].connection, l3.connection)
        self.assertEqual([lease.reused for lease in calls], [True, False])
        self.assertStats(pool, idle=1)
        self.flush()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)  # only the new idle timer

    def test_no_retry_when_not_asked(self) -> None:
        pool = self.make_pool()
        self.idle_one(pool)

        async def op(lease: Lease) -> None:
            raise AssociationAborted("aborted by peer")

        self.failureResultOf(self.run_op(pool, op, retry_stale=False), AssociationAborted)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_failure_status_keeps_the_association(self) -> None:
        pool = self.make_pool()
        lease = self.idle_one(pool)

        async def op(lease: Lease) -> None:
            raise FindFailed(CALLED, 0xA700)

        error = self.failureResultOf(self.run_op(pool, op), FindFailed).value
        self.assertEqual(http_status(error), 502)
        self.assertStats(pool, idle=1)
        self.assertNotIn(pdu.ABORT, self.links[0].pdus())
        self.assertIs(self.successResultOf(self.acquire(pool)).connection, lease.connection)

    def ends_the_association(self, error: Exception) -> None:
        pool = self.make_pool()

        async def op(lease: Lease) -> None:
            raise error

        d = self.run_op(pool, op)
        self.connect()
        self.failureResultOf(d, type(error))
        self.assertIn(pdu.ABORT, self.links[0].pdus())
        self.assertStats(pool)

    def test_upstream_error_ends_the_association(self) -> None:
        self.ends_the_association(UpstreamError("protocol trouble"))

    def test_timeout_ends_the_association(self) -> None:
        self.ends_the_association(AssociationTimeout("slow"))

    def test_bug_ends_the_association(self) -> None:
        self.ends_the_association(RuntimeError("bug"))

    def test_cancelled_operation_ends_the_association(self) -> None:
        pool = self.make_pool()
        never: Deferred[None] = Deferred()

        async def op(lease: Lease) -> None:
            await never

        d = self.run_op(pool, op)
        self.connect()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIn(pdu.ABORT, self.links[0].pdus())
        self.assertStats(pool)

    def test_detached_lease_is_handed_back_by_its_operation(self) -> None:
        pool = self.make_pool()
        held: list[Lease] = []
        never: Deferred[None] = Deferred()

        async def op(lease: Lease) -> None:
            try:
                await never
            except CancelledError:
                lease.detached = True
                held.append(lease)
                raise

        d = self.run_op(pool, op)
        self.connect()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertStats(pool, busy=1)
        self.assertNotIn(pdu.ABORT, self.links[0].pdus())
        pool.release(held[0])
        self.assertStats(pool, idle=1)


class StopTests(PoolTestCase):
    def test_stop_releases_idle_and_aborts_busy(self) -> None:
        pool = self.make_pool(size=2)
        busy, idle = self.opened(pool, 2)
        pool.release(idle)
        stopped = pool.stop()
        busy_link, idle_link = self.links
        self.assertEqual(idle_link.pdus()[-1], pdu.RELEASE_RQ)
        self.assertEqual(busy_link.pdus()[-1], pdu.ABORT)
        self.assertNoResult(stopped)  # fires once the connections are closed
        self.flush()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.successResultOf(idle_link.requestor.whenClosed), "released")
        self.assertTrue(busy_link.closed())
        pool.release(busy)
        self.assertStats(pool)
        self.assertQuiet()

    def test_stop_fails_waiters_and_later_acquires(self) -> None:
        pool = self.make_pool(size=1)
        self.opened(pool, 1)
        waiter = self.acquire(pool)
        pool.stop()
        self.assertIn("shutting down", str(self.failureResultOf(waiter, ServiceUnavailable).value))
        self.failureResultOf(self.acquire(pool), ServiceUnavailable)
        self.flush()
        self.assertQuiet()

    def test_release_after_stop_ends_the_association(self) -> None:
        pool = self.make_pool()
        (lease,) = self.opened(pool, 1)
        lease.detached = True  # e.g. a cancelled find waiting for the PACS to confirm
        pool.stop()
        self.assertEqual(self.links[0].pdus()[-1], pdu.ABORT)
        pool.release(lease)
        self.assertStats(pool)

    def test_stop_waits_for_an_association_being_opened(self) -> None:
        pool = self.make_pool()
        d = self.acquire(pool)
        stopped = pool.stop()
        self.assertNoResult(stopped)
        link = self.connect()
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(link.pdus()[-1], pdu.ABORT)
        self.assertTrue(link.closed())
        self.successResultOf(stopped)
        self.assertStats(pool)

    def test_stop_waits_for_an_open_that_fails(self) -> None:
        pool = self.make_pool()
        d = self.acquire(pool)
        stopped = pool.stop()
        self.refuse()
        self.failureResultOf(d, ConnectFailed)
        self.successResultOf(stopped)

    def test_stop_waits_for_connections_ended_but_not_yet_closed(self) -> None:
        pool = self.make_pool()
        (lease,) = self.opened(pool, 1)
        pool.release(lease, reusable=False)  # A-ABORT written, TCP close not yet seen
        self.assertStats(pool)
        self.assertFalse(self.links[0].closed())
        stopped = pool.stop()
        self.assertNoResult(stopped)
        self.flush()
        self.successResultOf(stopped)

    def test_stop_of_an_empty_pool(self) -> None:
        self.successResultOf(self.make_pool().stop())


# -- C-FIND through DimseBackend ---------------------------------------------------------------


class BackendFindTests(PoolTestCase):
    def find(
        self, backend: DimseBackend, limit: int | None = None, level: str = "STUDY"
    ) -> tuple[Deferred[None], list[Dataset]]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.PatientID = "PID*"
        identifier.StudyInstanceUID = ""
        results: list[Dataset] = []
        return backend.find(identifier, limit=limit, on_result=results.append), results

    def test_results_arrive_and_the_association_goes_idle(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [match(i) for i in range(3)]
        d, results = self.find(backend, level="SERIES")
        link = self.connect()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual([found_dataset(r).PatientID for r in results], ["PID0", "PID1", "PID2"])
        (request,) = self.scp.requests
        assert request.identifier is not None
        self.assertEqual(request.identifier.QueryRetrieveLevel, "SERIES")
        self.assertEqual(link.messages(), [commands.C_FIND_RQ])
        self.assertStats(backend.pool, idle=1)
        # The next find reuses it.
        d2, results2 = self.find(backend)
        self.flush()
        self.successResultOf(d2)
        self.assertEqual(len(results2), 3)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_results_are_delivered_as_they_arrive(self) -> None:
        backend = self.make_backend()
        d, results = self.find(backend)
        self.connect()
        (request,) = self.scp.requests
        request.pending(match(0))
        self.flush()
        self.assertEqual(len(results), 1)
        self.assertNoResult(d)
        request.pending(match(1))
        request.final()
        self.flush()
        self.successResultOf(d)
        self.assertEqual(len(results), 2)

    def test_limit_sends_c_cancel_and_drops_what_follows(self) -> None:
        backend = self.make_backend()
        d, results = self.find(backend, limit=2)
        link = self.connect()
        (request,) = self.scp.requests
        request.pending(match(0), match(1))
        self.flush()
        self.assertEqual(len(results), 2)
        self.assertEqual(self.scp.cancels, [request.message_id])
        self.assertEqual(link.messages(), [commands.C_FIND_RQ, commands.C_CANCEL_RQ])
        self.assertNoResult(d)  # waiting for the PACS to end the find
        request.pending(match(2), match(3))  # already on the wire when the cancel arrived
        request.final(commands.CANCEL)
        self.flush()
        self.successResultOf(d)
        self.assertEqual(len(results), 2)
        self.assertStats(backend.pool, idle=1)
        d2, _ = self.find(backend)
        self.flush()
        self.scp.requests[1].final()
        self.flush()
        self.successResultOf(d2)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_limit_then_success_is_fine(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [match(i) for i in range(5)]
        d, results = self.find(backend, limit=2)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(len(results), 2)
        self.assertStats(backend.pool, idle=1)

    def test_limit_zero_delivers_nothing(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [match(i) for i in range(3)]
        d, results = self.find(backend, limit=0)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(results, [])

    def fails_with(self, status: int) -> None:
        backend = self.make_backend()
        d, results = self.find(backend)
        link = self.connect()
        (request,) = self.scp.requests
        request.pending(match(0), match(1))
        request.final(status)
        self.flush()
        error = self.failureResultOf(d, FindFailed).value
        self.assertEqual(error.status, status)
        self.assertEqual(http_status(error), 502)
        self.assertIn(f"0x{status:04X}", str(error))
        self.assertEqual(len(results), 2)  # delivered, but the find is an error
        self.assertStats(backend.pool, idle=1)
        self.assertNotIn(pdu.ABORT, link.pdus())

    def test_out_of_resources_is_find_failed_and_the_association_is_kept(self) -> None:
        self.fails_with(0xA700)

    def test_unable_to_process_is_find_failed_and_the_association_is_kept(self) -> None:
        self.fails_with(0xC000)

    def test_sop_class_not_supported_is_find_failed(self) -> None:
        self.fails_with(0x0122)

    def test_cancel_status_we_did_not_ask_for_is_a_failure(self) -> None:
        backend = self.make_backend()
        d, _ = self.find(backend)
        self.connect()
        self.scp.requests[0].final(commands.CANCEL)
        self.flush()
        self.assertEqual(self.failureResultOf(d, FindFailed).value.status, commands.CANCEL)

    def test_warning_status_is_success(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [match(0)]
        self.scp.auto_status = 0xB000
        d, results = self.find(backend)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(len(results), 1)

    def test_silence_is_c_cancel_then_abort_at_the_qido_timeout(self) -> None:
        backend = self.make_backend(qido_ms=int(QIDO * 1000))
        d, _ = self.find(backend)
        link = self.connect()
        self.reactor.advance(QIDO - TICK)
        self.assertNoResult(d)
        self.assertEqual(link.messages(), [commands.C_FIND_RQ])
        self.reactor.advance(TICK)
        error = self.failureResultOf(d, AssociationTimeout).value
        self.assertEqual(http_status(error), 504)
        self.assertEqual(link.messages(), [commands.C_FIND_RQ, commands.C_CANCEL_RQ])
        self.assertEqual(link.pdus()[-1], pdu.ABORT)
        self.assertStats(backend.pool)
        self.flush()
        self.assertEqual(self.scp.cancels, [self.scp.requests[0].message_id])
        self.assertQuiet()
        # The next find opens a new association.
        self.scp.auto = [match(0)]
        d2, results = self.find(backend)
        self.connect()
        self.successResultOf(d2)
        self.assertEqual(len(results), 1)

    def test_each_response_restarts_the_timeout(self) -> None:
        backend = self.make_backend(qido_ms=int(QIDO * 1000))
        d, results = self.find(backend)
        self.connect()
        (request,) = self.scp.requests
        for i in range(3):
            self.reactor.advance(QIDO - TICK)
            request.pending(match(i))
            self.flush()
        self.assertNoResult(d)
        request.final()
        self.flush()
        self.successResultOf(d)
        self.assertEqual(len(results), 3)

    def test_abort_before_any_result_on_a_fresh_association_is_not_retried(self) -> None:
        backend = self.make_backend()
        d, _ = self.find(backend)
        link = self.connect()
        link.acceptor.abort("out of luck")
        self.flush()
        # What a PACS that does not know our AE title does: said so (a 502 all the same).
        error = self.failureResultOf(d, CallerNotAccepted).value
        self.assertIsInstance(error.__cause__, AssociationAborted)
        self.assertIn("most likely does not accept our AE title 'GATEWAY'", str(error))
        self.assertEqual(http_status(error), 502)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertStats(backend.pool)

    def test_abort_after_results_is_an_upstream_error_and_not_retried(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [match(0)]
        d0, _ = self.find(backend)
        link = self.connect()
        self.successResultOf(d0)
        self.scp.auto = None
        d, results = self.find(backend)  # on the reused association
        self.flush()
        self.scp.requests[1].pending(match(0), match(1))
        link.acceptor.abort("mid-stream")
        self.flush()
        error = self.failureResultOf(d, UpstreamError).value
        self.assertNotIsInstance(error, AssociationAborted)
        self.assertIn("after 2 results", str(error))
        self.assertEqual(len(results), 2)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_reused_association_the_pacs_closed_meanwhile_is_retried(self) -> None:
        backend = self.make_backend(size=1)
        self.scp.auto = [match(0)]
        d0, _ = self.find(backend)
        first = self.connect()
        self.successResultOf(d0)
        # The PACS aborts the idle association; we send the next C-FIND before we hear of it.
        first.acceptor.abort("idle")
        d, results = self.find(backend)
        self.assertEqual(first.messages(), [commands.C_FIND_RQ] * 2)
        self.flush()
        self.assertEqual(self.pending_connects(), 1)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(len(results), 1)
        self.assertEqual(len(self.scp.requests), 2)  # the aborted PACS never served the first try
        self.assertStats(backend.pool, idle=1)

    def test_cancelled_find_sends_c_cancel_and_keeps_the_association(self) -> None:
        backend = self.make_backend()
        d, results = self.find(backend)
        link = self.connect()
        (request,) = self.scp.requests
        request.pending(match(0))
        self.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.flush()
        self.assertEqual(self.scp.cancels, [request.message_id])
        self.assertStats(backend.pool, busy=1)  # until the PACS confirms
        request.pending(match(1))
        request.final(commands.CANCEL)
        self.flush()
        self.assertEqual(len(results), 1)  # nothing after the client left
        self.assertStats(backend.pool, idle=1)
        self.assertNotIn(pdu.ABORT, link.pdus())
        self.scp.auto = [match(0)]
        d2, _ = self.find(backend)
        self.flush()
        self.successResultOf(d2)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_cancelled_find_never_confirmed_is_aborted_at_the_timeout(self) -> None:
        backend = self.make_backend(qido_ms=int(QIDO * 1000))
        d, _ = self.find(backend)
        link = self.connect()
        self.reactor.advance(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertStats(backend.pool, busy=1)
        # The PACS still has qido-rs.timeout from its last word (here: our request).
        self.reactor.advance(QIDO - 1 - TICK)
        self.assertNotIn(pdu.ABORT, link.pdus())
        self.reactor.advance(TICK)
        self.assertEqual(link.pdus()[-1], pdu.ABORT)
        self.assertStats(backend.pool)

    def test_cancelled_on_the_first_result(self) -> None:
        backend = self.make_backend()
        self.scp.auto = [match(i) for i in range(4)]
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        results: list[Dataset] = []
        holder: list[Deferred[None]] = []

        def on_result(ds: Dataset) -> None:
            results.append(ds)
            holder[0].cancel()

        holder.append(backend.find(identifier, limit=None, on_result=on_result))
        self.connect()
        self.failureResultOf(holder[0], CancelledError)
        self.assertEqual(len(results), 1)
        self.assertStats(backend.pool, idle=1)

    def test_cancelled_while_waiting_for_an_association(self) -> None:
        backend = self.make_backend(size=1)
        d1, _ = self.find(backend)
        self.connect()
        d2, _ = self.find(backend)
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.scp.requests[0].final()
        self.flush()
        self.successResultOf(d1)
        self.assertEqual(len(self.scp.requests), 1)
        self.assertStats(backend.pool, idle=1)

    def test_busy_pool_is_503(self) -> None:
        backend = self.make_backend(size=1, acquire_ms=2500)
        d1, _ = self.find(backend)
        self.connect()
        d2, _ = self.find(backend)
        self.reactor.advance(WAIT)
        error = self.failureResultOf(d2, ServiceUnavailable).value
        self.assertEqual(error.retry_after, 3)
        self.scp.requests[0].final()
        self.flush()
        self.successResultOf(d1)

    def test_stop_aborts_a_running_find(self) -> None:
        backend = self.make_backend()
        d, _ = self.find(backend)
        link = self.connect()
        stopped = backend.stop()
        self.failureResultOf(d, AssociationAborted)
        self.assertEqual(link.pdus()[-1], pdu.ABORT)
        self.flush()
        self.successResultOf(stopped)
        self.assertQuiet()


class TakenLineTests(PoolTestCase):
    """The INFO line for the association a request takes: built only when INFO shows."""

    def setUp(self) -> None:
        super().setUp()
        # Every event the pool emits, before any level filter: one built and then filtered
        # out is an event here.
        self.logs = EventLoggingObserver()
        self.patch(pool_module, "log", Logger(namespace="dicomrst.pool", observer=self.logs))
        self.addCleanup(set_level, "INFO")

    def taken(self) -> list[str]:
        return [formatEvent(e) for e in self.logs if "taken" in (e.get("log_format") or "")]

    def run_one(self, pool: AssociationPool, request_id: str = "r1") -> str | None:
        """The request the association names while the operation runs."""
        named: list[str | None] = []

        async def op(lease: Lease) -> None:
            named.append(lease.connection.request_id)

        with request_scope(request_id):
            d = Deferred.fromCoroutine(pool.run(op))
        if self.pending_connects():
            self.connect()
        self.successResultOf(d)
        return named[0]

    def test_info_shows_the_association_taken(self) -> None:
        set_level("INFO")
        pool = self.make_pool(size=1)
        self.run_one(pool)
        self.run_one(pool)
        lines = self.taken()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("association to PACS taken (new) peer="), lines)
        self.assertTrue(lines[1].startswith("association to PACS taken (reused) peer="), lines)

    def test_warn_builds_no_event_but_names_the_request(self) -> None:
        set_level("WARN")
        pool = self.make_pool(size=1)
        # The DIMSE lines of the request still name it.
        self.assertEqual(self.run_one(pool, "r1"), "r1")
        self.assertEqual(self.run_one(pool, "r2"), "r2")
        self.assertEqual(self.taken(), [])

"""CpuWorkers: CPU work in a thread pool, a bounded number at once (dicomrst.common.cpu)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.cpu import CpuWorkers, default_limit
from dicomrst.errors import ServiceUnavailable
from tests.support.threads import HeldPool, ThreadsReactor


class CpuWorkersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = HeldPool()
        self.workers = CpuWorkers(ThreadsReactor(self.pool), limit=2)  # type: ignore[arg-type]

    def test_runs_in_the_pool_and_fires_with_the_result(self) -> None:
        d = self.workers.run(lambda a, b=0: a + b, 2, b=3)
        self.assertNoResult(d)  # not on the caller's thread
        self.assertEqual(len(self.pool.calls), 1)
        self.pool.run_next()
        self.assertEqual(self.successResultOf(d), 5)

    def test_exceptions_errback(self) -> None:
        def boom() -> None:
            raise ValueError("bad frame")

        d = self.workers.run(boom)
        self.pool.run_next()
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), "bad frame")
        self.assertEqual(self.workers.running, 0)

    def test_a_burst_queues_behind_the_limit_in_order(self) -> None:
        results = [self.workers.run(lambda i=i: i) for i in range(5)]
        # Only `limit` reach the pool; the rest wait without taking a thread.
        self.assertEqual((len(self.pool.calls), self.workers.running, self.workers.waiting), (2, 2, 3))
        done = []
        for d in results:
            d.addCallback(done.append)
        while self.pool.calls:
            self.pool.run_next()
            self.assertLessEqual(len(self.pool.calls), 2)
        self.assertEqual(done, [0, 1, 2, 3, 4])
        self.assertEqual((self.workers.running, self.workers.waiting), (0, 0))

    def test_cancel_while_waiting_leaves_the_line(self) -> None:
        first, second, third = (self.workers.run(lambda i=i: i) for i in range(3))
        third.cancel()
        self.failureResultOf(third, CancelledError)
        self.assertEqual(self.workers.waiting, 0)
        self.pool.run_next()
        self.pool.run_next()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (0, 1))
        self.assertEqual(self.pool.calls, [])  # the cancelled one never ran

    def test_cancel_while_running_keeps_its_place_until_it_ends(self) -> None:
        first = self.workers.run(lambda: "first")
        self.workers.run(lambda: "second")
        third = self.workers.run(lambda: "third")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        # The thread cannot be stopped: it still holds its place in the bound.
        self.assertEqual((self.workers.running, len(self.pool.calls)), (2, 2))
        self.assertNoResult(third)
        self.pool.run_next()  # "first" ends; its result is dropped, the third starts
        self.assertEqual(len(self.pool.calls), 2)
        self.pool.run_next()
        self.pool.run_next()
        self.assertEqual(self.successResultOf(third), "third")

    def test_a_full_line_is_503(self) -> None:
        workers = CpuWorkers(ThreadsReactor(self.pool), limit=1, max_waiting=1)  # type: ignore[arg-type]
        workers.run(lambda: 1)
        workers.run(lambda: 2)
        failure = self.failureResultOf(workers.run(lambda: 3), ServiceUnavailable)
        self.assertEqual(failure.value.retry_after, 1)

    def test_limits(self) -> None:
        self.assertGreaterEqual(default_limit(), 1)
        self.assertRaises(ValueError, CpuWorkers, ThreadsReactor(self.pool), limit=0)

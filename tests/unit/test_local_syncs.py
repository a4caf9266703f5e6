"""`DirectorySyncs`: one fsync of a directory at a time, covering every caller that came
before it began; callers during it wait for the next.  The fsyncs run in a `HeldPool`
(the test decides when each ends) and are recorded, not done."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.backends.local.syncs import DirectorySyncs
from dicomrst.backends.local.threads import Threads
from tests.support.threads import HeldPool, ThreadsReactor


class DirectorySyncsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = HeldPool()
        self.synced: list[str] = []
        self.failing: set[str] = set()
        self.syncs = DirectorySyncs(Threads(ThreadsReactor(self.pool), self.pool), self.fsync)

    def fsync(self, directory: str) -> None:
        self.synced.append(directory)
        if directory in self.failing:
            raise OSError(5, "Input/output error")

    def running(self) -> int:
        return len(self.pool.calls)

    def test_callers_during_an_fsync_share_the_next(self) -> None:
        first = self.syncs.sync("/a")
        self.assertEqual(self.running(), 1)
        second, third = self.syncs.sync("/a"), self.syncs.sync("/a")
        self.assertEqual(self.running(), 1)  # not a second fsync of /a meanwhile
        self.pool.run_next()
        self.assertIsNone(self.successResultOf(first))
        # The two that came while it ran: their links may be after it began.
        self.assertNoResult(second)
        self.assertNoResult(third)
        self.assertEqual(self.running(), 1)
        self.pool.run_next()
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertEqual(self.synced, ["/a", "/a"])
        self.assertEqual((self.running(), self.syncs.pending), (0, 0))

    def test_directories_are_fsynced_independently(self) -> None:
        a, b = self.syncs.sync("/a"), self.syncs.sync("/b")
        self.assertEqual(self.running(), 2)
        self.pool.run_next()
        self.successResultOf(a)
        self.assertNoResult(b)
        self.pool.run_next()
        self.successResultOf(b)
        self.assertEqual(self.synced, ["/a", "/b"])

    def test_a_failed_fsync_fails_only_those_it_covered(self) -> None:
        self.failing.add("/a")
        first = self.syncs.sync("/a")
        second = self.syncs.sync("/a")
        self.pool.run_next()
        self.failureResultOf(first, OSError)
        self.assertNoResult(second)
        self.failing.clear()
        self.pool.run_next()
        self.successResultOf(second)
        self.assertEqual(self.syncs.pending, 0)

    def test_asking_again_from_a_callback_starts_the_next(self) -> None:
        again: list[Deferred[None]] = []
        first = self.syncs.sync("/a")
        first.addCallback(lambda _: again.append(self.syncs.sync("/a")))
        waiting = self.syncs.sync("/a")
        self.pool.run_next()
        # One fsync for both the waiting caller and the one asking from the callback.
        self.assertEqual(self.running(), 1)
        self.pool.run_next()
        self.successResultOf(waiting)
        self.successResultOf(again[0])
        self.assertEqual((self.running(), self.syncs.pending), (0, 0))

    def test_a_caller_after_the_last_ended_gets_a_new_fsync(self) -> None:
        self.syncs.sync("/a")
        self.pool.run_next()
        later = self.syncs.sync("/a")
        self.assertNoResult(later)
        result = self.pool.run_next()
        self.assertNotIsInstance(result, Failure)
        self.successResultOf(later)
        self.assertEqual(self.synced, ["/a", "/a"])

"""Tests for bench.qido_path, the whole-path QIDO-RS benchmark branches are compared on:
its requests go through the real site, backend, pool and UL, and it notices a wrong
answer (no timing is asserted)."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from bench.qido_path import MATCHES, Crowd, Path, check_response
from dicomrst.logs import current_level, set_level


class PathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(set_level, current_level().name.upper())
        self.reactor = MemoryReactorClock()
        self.path = Path(6, reactor=self.reactor)
        self.addCleanup(self.path.close)

    def test_searches_are_answered_on_one_association(self) -> None:
        for i in range(5):
            self.path.checked(i)  # raises on a wrong C-FIND-RQ or response
        self.assertEqual(len(self.path.reactor.connections), 1)
        raw = self.path.search(5)
        check_response(raw, 5 * MATCHES)

    def test_a_wrong_answer_is_noticed(self) -> None:
        self.path.checked(0)
        raw = self.path.search(1)
        self.assertRaises(RuntimeError, check_response, raw, 0)  # another search's matches
        self.assertRaises(
            RuntimeError, check_response, raw.replace(b"200 OK", b"500 Internal Server Error"), 0
        )
        self.assertRaises(RuntimeError, check_response, raw[:-10], 1 * MATCHES)

    def test_the_critical_windows_are_timed_on_a_checked_search(self) -> None:
        self.path.checked(0)
        self.assertEqual(len(self.path.windows(1)), 4)  # raises on a wrong response
        self.path.checked(2)  # the transports write as before


class CrowdTests(SynchronousTestCase):
    def test_concurrent_searches_share_the_pool(self) -> None:
        self.addCleanup(set_level, current_level().name.upper())
        crowd = Crowd(6, 3, reactor=MemoryReactorClock())
        self.addCleanup(crowd.close)
        crowd.round(check=True)  # raises unless each request got its own search's matches
        crowd.prepare()
        crowd.round(check=True)
        crowd.round()
        self.assertEqual(len(crowd.reactor.connections), 4)  # the pool's size: two requests waited
        self.assertEqual(crowd.made_late, 0)

# -*- test-case-name: tests.unit.test_cpu -*-
"""CPU-heavy work (pixel decoding, rendering, image encoding) off the reactor, bounded.

`CpuWorkers.run` runs a function in a thread pool (the reactor's unless one is given),
at most `limit` at a time; the rest wait in line, in order.  The bound is what keeps a
burst of rendered requests from taking every thread of the pool, and every core, from the
conversions and the reactor that streams the other responses: a queued render costs a
Deferred, a running one a core.  The codecs (imagecodecs, Pillow, numpy) release the GIL
while they work, so a running render does not stop the reactor.

Cancelling the Deferred `run` returns takes a waiting call out of the line; a call
already running cannot be stopped (a thread cannot be), so it runs to its end, keeps
its place in the bound until then, and its result is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from dicomrst.errors import ServiceUnavailable

P = ParamSpec("P")
T = TypeVar("T")


class IThreadsReactor(IReactorThreads, IReactorFromThreads):
    """What `CpuWorkers` asks of its reactor."""


def default_limit() -> int:
    """Half the cores, at least one: the reactor (and the conversions of the streams it
    serves) keeps the rest."""
    return max(1, (os.cpu_count() or 2) // 2)


class CpuWorkers:
    """Runs functions in threads, at most `limit` at once, the others queued in order
    (at most `max_waiting` of them: more is a 503, since each waits for a core).  `what`
    names the work in that 503's message."""

    def __init__(
        self,
        reactor: IThreadsReactor,
        limit: int | None = None,
        pool: ThreadPool | None = None,
        max_waiting: int | None = None,
        what: str = "image conversions",
    ) -> None:
        self.reactor = reactor
        self.what = what
        self.limit = limit if limit is not None else default_limit()
        if self.limit < 1:
            raise ValueError("CpuWorkers needs a limit of at least 1")
        self.max_waiting = max_waiting
        self._pool = pool
        self._semaphore = DeferredSemaphore(self.limit)

    @property
    def running(self) -> int:
        """Calls in a thread now."""
        return self.limit - self._semaphore.tokens

    @property
    def waiting(self) -> int:
        """Calls waiting for a thread."""
        return len(self._semaphore.waiting)

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """`f(*args, **kwargs)` in a thread once one of the `limit` is free; fires with its
        result (or its exception).  `ServiceUnavailable` at once when the line is full."""
        if self.max_waiting is not None and self._semaphore.tokens == 0 and self.waiting >= self.max_waiting:
            failed: Deferred[T] = Deferred()
            failed.errback(
                Failure(
                    ServiceUnavailable(f"{self.waiting} {self.what} already waiting", retry_after=1)
                )
            )
            return failed
        acquired = self._semaphore.acquire()

        def cancel(_: Deferred[T]) -> None:
            if not acquired.called:
                acquired.cancel()  # leaves the line; `out` errbacks with CancelledError

        out: Deferred[T] = Deferred(cancel)

        def start(_: object) -> None:
            pool = self._pool if self._pool is not None else self.reactor.getThreadPool()
            work: Deferred[T] = deferToThreadPool(self.reactor, pool, f, *args, **kwargs)
            work.addBoth(finished)

        def finished(result: Any) -> None:
            self._semaphore.release()
            if out.called:  # cancelled while it ran: nobody wants the result
                return None
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
            return None

        def not_started(reason: Failure) -> None:
            reason.trap(CancelledError)  # `out` was cancelled while waiting

        acquired.addCallbacks(start, not_started)
        return out

# -*- test-case-name: tests.unit.test_local -*-
"""Blocking file work of the LOCAL backend, run in a thread pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

P = ParamSpec("P")
T = TypeVar("T")


class Threads:
    """Runs blocking file work in a thread pool (the reactor's, or one given)."""

    def __init__(self, reactor: Any, pool: Any = None) -> None:
        self.reactor = reactor
        self.pool = pool

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        pool = self.pool if self.pool is not None else self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, f, *args, **kwargs)

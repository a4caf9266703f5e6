"""Thread pools and a reactor for tests of CPU work (`dicomrst.common.cpu.CpuWorkers`) that
run every call on the test's own thread: at once (`InlinePool`) or when the test says
(`HeldPool`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure


class InlinePool:
    """A thread pool that runs each call at once, on the caller's thread."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(
        self, on_result: Callable[..., Any], f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.calls += 1
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class HeldPool:
    """A thread pool whose calls run only when the test says (`run_next`): the calls in
    flight are those started and not yet run."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[..., Any], f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.calls.append((on_result, f, args, kwargs))

    def run_next(self) -> Any:
        """Run the next call; its result or `Failure`."""
        on_result, f, args, kwargs = self.calls.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            failure = Failure()
            on_result(False, failure)
            return failure
        on_result(True, result)
        return result


class ThreadsReactor:
    """callFromThread at once: the pools above call back on the test's thread."""

    def __init__(self, pool: Any = None) -> None:
        self.pool = pool if pool is not None else InlinePool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> Any:
        return self.pool

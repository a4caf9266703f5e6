"""What the gateway asks of its reactor, as one interface to type it by."""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorFDSet,
    IReactorFromThreads,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)


class IGatewayReactor(IReactorTCP, IReactorTime, IReactorThreads, IReactorFromThreads, IReactorFDSet):
    """Timers, TCP connections, the thread pool (conversions), and the file descriptors
    it watches (a graceful stop waits for closing connections to flush).  Twisted's
    default reactors provide all of these; tests pass a `MemoryReactorClock` where only
    some are used."""

"""`Pacer`: the push producer a response registers while something writes into it a piece
at a time, so the writer waits while the client's socket is full and stops when the
client left."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Pacer:
    """The response's producer: the next piece is written once the transport has taken
    the last (`ready`); `gone` once the client left."""

    def __init__(self) -> None:
        self.paused = False
        self.gone = False
        self._waiting: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:  # not cancelled meanwhile
            waiting.callback(None)

    def ready(self) -> Deferred[None]:
        """Fires at once unless paused; else once resumed (or the client left)."""
        if not self.paused or self.gone:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting

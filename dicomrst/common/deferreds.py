"""Waiting on a Deferred that someone else owns."""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def shielded(request: Deferred[T]) -> Deferred[T]:
    """A Deferred that mirrors `request`, but whose cancellation leaves `request` running.

    Cancelling a DIMSE request itself would drop the connection's pending entry, and the
    PACS's remaining responses would then be protocol errors; an operation instead sends
    C-CANCEL and lets the request finish in the background.  (Likewise an S3 download's
    turn: cancelling the wait must not cancel the download's own bookkeeping.)
    """
    shield: Deferred[T] = Deferred()

    def forward(result: T | Failure) -> None:
        if shield.called:
            return
        if isinstance(result, Failure):
            shield.errback(result)
        else:
            shield.callback(result)

    request.addBoth(forward)
    return shield

"""What C-FIND and C-GET share: sending C-CANCEL, and waiting on a request that the
caller may abandon without the request itself being torn down."""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection

T = TypeVar("T")


def send_cancel(connection: DimseConnection, context_id: int, message_id: int) -> bool:
    """C-CANCEL-RQ for `message_id`; False when the association is already gone."""
    if connection.is_ended:
        return False
    try:
        connection.respond(
            context_id, commands.command(commands.C_CANCEL_RQ, MessageIDBeingRespondedTo=message_id)
        )
    except Exception:  # the association is going away; nothing to cancel on
        return False
    return True


def shielded(request: Deferred[T]) -> Deferred[T]:
    """A Deferred that mirrors `request`, but whose cancellation leaves `request` running.

    Cancelling the request itself would drop the DIMSE connection's pending entry,
    and the PACS's remaining responses would then be protocol errors; the operation
    instead sends C-CANCEL and lets the request finish in the background.
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

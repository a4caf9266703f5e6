# -*- test-case-name: tests.test_dimse -*-
"""What every DIMSE operation we start shares: its inactivity timer, C-CANCEL once, and
the timeout that cancels, then aborts."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection


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


class DimseOperation:
    """One C-FIND or C-GET in flight: its inactivity timer, C-CANCEL once, and the
    timeout that cancels, then aborts (the PACS's state is unknown after a silence,
    so the pool must not reuse the association)."""

    name = "DIMSE operation"

    def __init__(self, connection: DimseConnection, clock: IReactorTime, *, aet: str, timeout: float) -> None:
        self.connection = connection
        self.clock = clock
        self.aet = aet
        self.timeout = timeout
        self.cancel_sent = False
        self.timed_out = False
        self._context_id = 0
        self._message_id = 0
        self._timer: IDelayedCall | None = None

    def activity(self) -> None:
        """The PACS answered or sent something: restart the inactivity timer."""
        self._stop_timer()
        self._timer = self.clock.callLater(self.timeout, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def silence_is_ours(self) -> bool:
        """True when the quiet is our doing (we stopped reading); then it is no timeout."""
        return False

    def _timed_out(self) -> None:
        self._timer = None
        if self.silence_is_ours():
            self.activity()
            return
        self.timed_out = True
        self.cancel()
        self.connection.abort(f"{self.name} timed out")

    def cancel(self) -> None:
        """Send C-CANCEL (once); the PACS then ends the operation with a Cancel status."""
        if not self.cancel_sent:
            self.cancel_sent = send_cancel(self.connection, self._context_id, self._message_id)

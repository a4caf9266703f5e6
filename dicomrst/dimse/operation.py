# -*- test-case-name: tests.unit.test_machines -*-
"""What every DIMSE operation we start shares: a state machine, an inactivity timer,
C-CANCEL once, and the timeout that cancels, then aborts.

Each operation (`dicomrst.dimse.find`, `.get`, `.move`, `.store`) declares its states
and transitions as a `Machine` (diagrams in ``docs/state-machines/``); what happens to it
(a response, a sub-operation, the timer, the client leaving) is an event fed to that
machine, and the transitions' actions are methods here or on the operation.  The events
every operation knows:

* ``start``: the request goes out;
* ``activity``: the PACS answered (a pending response) or a sub-operation moved on;
* ``timeout`` / ``quiet-ours``: the inactivity timer expired, while the silence was the
  PACS's / ours (we owe a C-STORE-RSP, or stopped reading for a slow HTTP client);
* ``final`` / ``failed``: the request ended with its final response / with the
  association (aborted, lost, timed out);
* ``abandon``: the caller went away (the HTTP client left).
"""

from __future__ import annotations

from typing import ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from dicomrst.common.machine import Machine, Run
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IncomingMessage


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
    """One DIMSE operation in flight on `connection`.

    A timeout cancels, then aborts: the PACS's state is unknown after a silence, so the
    pool must not reuse the association.
    """

    name: ClassVar[str] = "DIMSE operation"
    machine: ClassVar[Machine]

    def __init__(self, connection: DimseConnection, clock: IReactorTime, *, aet: str, timeout: float) -> None:
        self.connection = connection
        self.clock = clock
        self.aet = aet
        self.timeout = timeout
        self.cancel_sent = False
        self.timed_out = False
        self._context_id = 0
        self._message_id = 0
        # None, or active: `_timer_expired` clears it, `_stop_timer` cancels and clears it.
        self._timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._run = Run(self.machine, self)

    @property
    def state(self) -> str:
        return self._run.state

    def activity(self) -> None:
        """The PACS answered or sent something, or we handed a sub-operation on."""
        self._run.fire("activity")

    def silence_is_ours(self) -> bool:
        """True when the quiet is our doing (we stopped reading); then it is no timeout."""
        return False

    def watch(self, request: Deferred[IncomingMessage]) -> None:
        """Feed the end of `request` to the machine (``final`` or ``failed``)."""

        def ended(result: IncomingMessage | Failure) -> IncomingMessage | Failure:
            if isinstance(result, Failure):
                self._run.fire("failed")
            else:
                self._run.fire("final", result)
            return result

        request.addBoth(ended)

    # -- actions the operations share ---------------------------------------------------

    def _arm_timer(self, *ignored: object) -> None:
        # A lazy deadline: the activity is noted, and the timer, set once, looks when it
        # fires whether the silence has lasted `timeout` since, else waits for the rest.
        # A C-FIND-RSP, or each PDU of a retrieve, costs a clock read, not a reschedule.
        self._last_activity = self.clock.seconds()
        if self._timer is None:
            self._timer = self.clock.callLater(self.timeout, self._timer_expired)

    def _stop_timer(self, *ignored: object) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timer_expired(self) -> None:
        left = self._last_activity + self.timeout - self.clock.seconds()
        if left > 0:  # a float sum a hair short of it costs one more (tiny) wait, no more
            self._timer = self.clock.callLater(left, self._timer_expired)
            return
        self._timer = None
        self._run.fire("quiet-ours" if self.silence_is_ours() else "timeout")

    def _send_cancel(self) -> None:
        """C-CANCEL (once); the PACS then ends the operation with a Cancel status."""
        if not self.cancel_sent:
            self.cancel_sent = send_cancel(self.connection, self._context_id, self._message_id)

    def _give_up(self) -> None:
        """The PACS went quiet: cancel, and abort (its state is unknown now)."""
        self.timed_out = True
        self._send_cancel()
        self.connection.abort(f"{self.name} timed out")

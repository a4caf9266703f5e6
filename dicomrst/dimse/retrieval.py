# -*- test-case-name: tests.unit.test_move -*-
"""What C-GET and C-MOVE share: their sub-operations' instances go into a sink.

A C-GET's sub-operations arrive on its own association, a C-MOVE's on our listener; in
both each C-STORE-RQ's data set goes to the sink (`IInstanceSink`) as it comes off the
wire, and the C-STORE-RSP is sent only once the sink says the instance was handed on (or
failed), so the PACS's sub-operation counts are true (`deliver`).  Both end the same way:
counts and final status in `RetrieveResult`, `RetrieveFailed` for a failure status,
`retrieve_error` and `ended_well` for how an ended operation is judged.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

import attrs
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.common.interfaces import (
    STORE_OUT_OF_RESOURCES,
    IDataSetConsumer,
    IInstanceConsumer,
    IInstanceSink,
)
from dicomrst.common.twisted_internals import flush_now
from dicomrst.dimse import commands
from dicomrst.dimse.commands import Command
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.errors import AssociationIntact
from dicomrst.dimse.status import describe_status
from dicomrst.errors import UpstreamError
from dicomrst.logs import logger
from dicomrst.ul.errors import AssociationError, AssociationTimeout

log = logger("dicomrst.retrieve")


class RetrieveFailed(AssociationIntact, UpstreamError):
    """The PACS ended a C-GET or C-MOVE with a failure status."""

    def __init__(self, aet: str, status: int, result: RetrieveResult, operation: str = "C-GET") -> None:
        super().__init__(
            f"{aet} answered {operation} with status 0x{status:04X} ({describe_status(status)}); "
            f"{result.completed} instance(s) received, {result.failed} failed"
        )
        self.status = status
        self.result = result


@attrs.define
class RetrieveResult:
    status: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    received: int = 0  # C-STORE-RQs that reached the sink

    def count(self, rsp: Command) -> None:
        """Take the status and sub-operation counts of a C-GET-RSP or C-MOVE-RSP."""
        for keyword, field in (
            ("NumberOfCompletedSuboperations", "completed"),
            ("NumberOfFailedSuboperations", "failed"),
            ("NumberOfWarningSuboperations", "warning"),
        ):
            if keyword in rsp:
                setattr(self, field, rsp.number(keyword))
        self.status = rsp.number("Status", 0)


class StoreTarget(TypingProtocol):
    """What C-STORE sub-operations are delivered into: one C-GET or one C-MOVE."""

    sink: IInstanceSink
    result: RetrieveResult
    # Sub-operations handed to the sink and not yet answered (their data set may still
    # be arriving): the operation has not drained while any is.
    outstanding: int
    # Of those, the ones whose data set is whole: the PACS waits for our C-STORE-RSP (the
    # sink is writing or converting), so while any is, the silence is ours.  One whose
    # data set is still arriving is the PACS's to finish, fragment by fragment.
    owed: int

    def activity(self) -> None:
        """Something arrived: restart the inactivity timer."""


class StoreReply:
    """The C-STORE-RSP owed for one C-STORE-RQ; sent once."""

    def __init__(self, connection: DimseConnection, message: IncomingMessage) -> None:
        rq = message.command
        self.connection = connection
        self.context_id = message.context_id
        self.sop_class = str(rq.AffectedSOPClassUID)
        self.sop_instance = str(rq.AffectedSOPInstanceUID)
        self.command = commands.command(
            commands.C_STORE_RSP,
            MessageIDBeingRespondedTo=rq.MessageID,
            AffectedSOPClassUID=rq.AffectedSOPClassUID,
            AffectedSOPInstanceUID=rq.AffectedSOPInstanceUID,
        )
        self.sent = False

    def send(self, status: int) -> None:
        if self.sent:
            return
        self.sent = True
        self.command.Status = status
        if not self.connection.is_ended:
            self.connection.respond(self.context_id, self.command)
            # The PACS sends its next instance only once it has this response: hand it to
            # the kernel now, not after the HTTP response's writes on the next turn.
            association = self.connection.association
            flush_now(association.transport if association is not None else None)


def deliver(target: StoreTarget, reply: StoreReply, transfer_syntax: str) -> IDataSetConsumer | None:
    """Hand one sub-operation's instance to `target.sink`.

    The C-STORE-RSP goes out only when the sink's consumer says the instance was handed
    on (or failed), so the PACS's sub-operation counts are true.  None (the sink refused
    the instance, already answered with a failure) means the data set is read and dropped.
    """

    def respond(status: object) -> None:
        if isinstance(status, Failure):
            log.warn(
                "instance {uid} not delivered: {why}", uid=reply.sop_instance, why=status.getErrorMessage()
            )
        reply.send(status if isinstance(status, int) else STORE_OUT_OF_RESOURCES)

    try:
        consumer = target.sink.begin(reply.sop_class, reply.sop_instance, transfer_syntax)
    except Exception as e:
        respond(Failure(e))
        return None
    target.result.received += 1
    target.outstanding += 1
    watched = _Watched(consumer, target)

    def handed(status: object) -> None:
        target.outstanding -= 1
        if watched.complete:
            target.owed -= 1
        watched.answered = True
        target.activity()
        respond(status)

    consumer.done.addBoth(handed)
    return watched


@implementer(IDataSetConsumer)
class _Watched:
    """Passes fragments on and tells the operation something is happening.

    Each fragment is the whole PDV of a whole PDU, so progress is counted in PDUs: a PACS
    that trickles a data set a byte at a time makes none, and the operation times out.
    """

    def __init__(self, inner: IInstanceConsumer, op: StoreTarget) -> None:
        self.inner = inner
        self.op = op
        self.complete = False  # the whole data set arrived
        self.answered = False  # the sink's `done` fired (possibly before the data set was whole)

    def dataReceived(self, fragment: bytes) -> None:
        self.op.activity()
        self.inner.dataReceived(fragment)

    def dataFinished(self) -> None:
        self.complete = True
        if not self.answered:
            self.op.owed += 1
        self.op.activity()
        self.inner.dataFinished()

    def dataFailed(self, reason: Failure) -> None:
        self.inner.dataFailed(reason)


class RetrieveOperation(TypingProtocol):
    """What `retrieve_error` and `ended_well` read of a C-GET or C-MOVE."""

    @property
    def name(self) -> str: ...

    @property
    def aet(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    @property
    def timed_out(self) -> bool: ...

    @property
    def cancel_sent(self) -> bool: ...

    @property
    def result(self) -> RetrieveResult: ...


def retrieve_error(op: RetrieveOperation, error: Exception) -> Exception | None:
    """What a C-GET or C-MOVE that failed with `error` raises instead (None: `error` itself)."""
    if op.timed_out:
        return AssociationTimeout(
            f"no {op.name} response or sub-operation from {op.aet} within {op.timeout:g} s"
        )
    if op.result.received and isinstance(error, AssociationError):
        # Instances already reached the sink (some may still be converting): not a
        # stale association to retry on, or they would be sent twice.
        return UpstreamError(f"{op.aet}: {op.name} ended after {op.result.received} instance(s): {error}")
    return None


def ended_well(op: RetrieveOperation) -> bool:
    """The final status lets the response end cleanly: success, warning, or the cancel we asked for."""
    status = op.result.status
    category = commands.status_category(status)
    return category in ("success", "warning") or (status == commands.CANCEL and op.cancel_sent)

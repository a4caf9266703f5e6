# -*- test-case-name: tests.test_wado_pacs -*-
"""C-GET SCU (PS3.4 C.4.3) whose C-STORE sub-operations stream to a sink.

The sub-operations arrive on the same association as C-STORE-RQs.  When a command set
arrives the sink is asked for a consumer, and the data set's fragments go to it as
they come off the wire; the C-STORE-RSP is sent only once the sink says the instance
was handed on (or failed), so the PACS's sub-operation counts are true.  `deliver`
does that for C-MOVE's sub-operations too (they arrive on our listener: moves.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol
from weakref import WeakKeyDictionary

import attrs
from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IDataSetConsumer, IncomingMessage
from dicomrst.dimse.find import encode_dataset
from dicomrst.dimse.operation import DimseOperation, shielded
from dicomrst.dimse.status import describe_status
from dicomrst.errors import UpstreamError
from dicomrst.logs import logger
from dicomrst.ul.errors import AssociationError, AssociationTimeout

log = logger("dicomrst.retrieve")

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

STORE_SUCCESS = 0x0000
STORE_OUT_OF_RESOURCES = 0xA700
STORE_CANNOT_UNDERSTAND = 0xC000


class InstanceConsumer(IDataSetConsumer, TypingProtocol):
    """An instance's data set on its way out; `done` fires with the C-STORE status."""

    done: Deferred[int]


class InstanceSink(TypingProtocol):
    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> InstanceConsumer:
        """A consumer for one arriving instance; raise to refuse it."""


class RetrieveFailed(UpstreamError):
    association_ok = True
    #: A failure with nothing moved may mean the PACS has no such entity (some answer an
    #: unknown UID with a failure): the web layer then asks with a C-FIND.
    maybe_not_found = True

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

    def count(self, rsp: Dataset) -> None:
        """Take the status and sub-operation counts of a C-GET-RSP or C-MOVE-RSP."""
        for keyword, field in (
            ("NumberOfCompletedSuboperations", "completed"),
            ("NumberOfFailedSuboperations", "failed"),
            ("NumberOfWarningSuboperations", "warning"),
        ):
            if keyword in rsp:
                setattr(self, field, int(rsp.get(keyword) or 0))
        self.status = int(rsp.get("Status", 0))


class StoreTarget(TypingProtocol):
    """What C-STORE sub-operations are delivered into: one C-GET or one C-MOVE."""

    sink: InstanceSink
    result: RetrieveResult
    # Sub-operations received whose C-STORE-RSP we still owe (the sink is writing or
    # converting them): while any is, the silence is ours, not the PACS's.
    outstanding: int

    def activity(self) -> None:
        """Something arrived: restart the inactivity timer."""


# Who wants an association paused (see `hold_paused`), by association.
_pause_holders: WeakKeyDictionary[Any, set[object]] = WeakKeyDictionary()


def hold_paused(association: Any, holder: object) -> None:
    """Pause `association` (stop reading from the PACS) on behalf of `holder`.

    An association the sub-operations of several retrieves arrive on (a PACS may send
    two C-MOVEs' instances over one association to our listener, or one move's over
    several) must read again only once none of their responses wants it paused: a
    plain pause/resume would let one response's resume override another's pause
    (buffering without bound for a slow client), and a response moving on to another
    association would leave the first one paused for good (the PACS then waits for a
    C-STORE-RSP that never comes).
    """
    holders = _pause_holders.setdefault(association, set())
    holders.add(holder)
    association.pauseProducing()


def release_paused(association: Any, holder: object) -> None:
    """`holder` no longer wants `association` paused; it reads again once nobody does."""
    holders = _pause_holders.get(association)
    if holders is None or holder not in holders:
        return
    holders.discard(holder)
    if not holders:
        del _pause_holders[association]
        association.resumeProducing()


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
            _send_now(self.connection.association)


def _send_now(association: Any) -> None:
    """Hand what was just written on `association` to the kernel now.

    The PACS sends its next instance only once it has our C-STORE-RSP, so the response
    is on the critical path of every sub-operation; a TCP transport would send it on the
    reactor's next turn, after whatever else is ready then (the HTTP response's writes,
    hundreds of kilobytes).  An error is left for that turn to find, as it would be.
    """
    transport = getattr(association, "transport", None)
    do_write = getattr(transport, "doWrite", None)
    if (
        do_write is None
        or not getattr(transport, "connected", False)
        or getattr(transport, "disconnecting", True)
    ):
        return
    do_write()


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

    def handed(status: object) -> None:
        target.outstanding -= 1
        target.activity()
        respond(status)

    consumer.done.addBoth(handed)
    return _Watched(consumer, target)


class _StoreHandler:
    """Serves the C-STORE-RQs of one C-GET."""

    def __init__(self, operation: GetOperation) -> None:
        self.operation = operation

    def request_received(
        self, connection: DimseConnection, message: IncomingMessage
    ) -> IDataSetConsumer | None:
        assert connection.association is not None
        context = connection.association.contexts[message.context_id]
        self.operation.activity()
        return deliver(self.operation, StoreReply(connection, message), context.transfer_syntax)


class _Watched:
    """Passes fragments on and tells the operation something is happening."""

    def __init__(self, inner: InstanceConsumer, op: StoreTarget) -> None:
        self.inner = inner
        self.op = op

    def dataReceived(self, fragment: bytes) -> None:
        self.inner.dataReceived(fragment)

    def dataFinished(self) -> None:
        self.op.activity()
        self.inner.dataFinished()

    def dataFailed(self, reason: Failure) -> None:
        self.inner.dataFailed(reason)


class GetOperation(DimseOperation):
    """One C-GET: the request, its pending responses, the sub-operations, C-CANCEL."""

    name = "C-GET"

    def __init__(
        self,
        connection: DimseConnection,
        clock: IReactorTime,
        *,
        aet: str,
        timeout: float,
        sink: InstanceSink,
    ) -> None:
        super().__init__(connection, clock, aet=aet, timeout=timeout)
        self.sink = sink
        self.result = RetrieveResult()
        self.outstanding = 0

    def start(self, identifier: Dataset) -> Deferred[IncomingMessage]:
        association = self.connection.association
        assert association is not None
        context = association.context(STUDY_ROOT_GET)
        if context is None:
            raise UpstreamError(f"{self.aet} did not accept Study Root C-GET")
        self._context_id = context.context_id
        self.connection.handlers[commands.C_STORE_RQ] = _StoreHandler(self)
        rq = commands.command(
            commands.C_GET_RQ, AffectedSOPClassUID=STUDY_ROOT_GET, Priority=commands.PRIORITY_MEDIUM
        )
        request = self.connection.request(
            context.context_id,
            rq,
            encode_dataset(identifier, context.transfer_syntax),
            on_response=self._response,
        )
        self._message_id = int(rq.MessageID)
        self.activity()
        request.addBoth(self._finished)
        return request

    def _finished(self, result: object) -> object:
        self._stop_timer()
        self.connection.handlers.pop(commands.C_STORE_RQ, None)
        return result

    def silence_is_ours(self) -> bool:
        # We owe a C-STORE-RSP (the sink is still writing or converting), or we stopped
        # reading for a slow HTTP client; the HTTP request timeout bounds the whole retrieve.
        association = self.connection.association
        return bool(self.outstanding) or (association is not None and association._paused)

    def _response(self, message: IncomingMessage) -> IDataSetConsumer | None:
        self.activity()
        self.result.count(message.command)
        return None  # a failed-SOP list, if any, is read and dropped


async def c_get(
    connection: DimseConnection,
    clock: IReactorTime,
    identifier: Dataset,
    *,
    aet: str,
    timeout: float,
    sink: InstanceSink,
    on_abandon: Callable[[Deferred[IncomingMessage]], None] | None = None,
) -> RetrieveResult:
    """Run one C-GET into `sink`; return the sub-operation counts.

    Raises RetrieveFailed for a failure status (the caller decides, by how much was
    already sent, whether that is a 502 or a truncated response), AssociationTimeout
    when the PACS goes quiet for `timeout` seconds.
    """
    op = GetOperation(connection, clock, aet=aet, timeout=timeout, sink=sink)
    request = op.start(identifier)
    shield = shielded(request)
    try:
        await shield
    except CancelledError:
        op.cancel()
        if on_abandon is not None:
            on_abandon(request)
        raise
    except Exception as e:
        instead = retrieve_error(op, e)
        if instead is not None:
            raise instead from e
        raise
    if ended_well(op):
        return op.result
    raise RetrieveFailed(aet, op.result.status, op.result)


def retrieve_error(op: GetOperation | Any, error: Exception) -> Exception | None:
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


def ended_well(op: GetOperation | Any) -> bool:
    """The final status lets the response end cleanly: success, warning, or the cancel we asked for."""
    status = op.result.status
    category = commands.status_category(status)
    return category in ("success", "warning") or (status == commands.CANCEL and op.cancel_sent)

# -*- test-case-name: tests.unit.test_machines -*-
"""C-GET SCU (PS3.4 C.4.3) whose C-STORE sub-operations stream to a sink; its states
are `GET`.

The sub-operations arrive on the same association as C-STORE-RQs; `dicomrst.dimse.retrieval`
hands each one's data set to the sink as it comes off the wire.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from dicomrst.common.deferreds import shielded
from dicomrst.common.identifiers import encode_identifier
from dicomrst.common.interfaces import IDataSetConsumer, IInstanceSink
from dicomrst.common.machine import Machine, transitions
from dicomrst.common.uids import STUDY_ROOT_GET
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.operation import DimseOperation
from dicomrst.dimse.retrieval import (
    RetrieveFailed,
    RetrieveResult,
    StoreReply,
    deliver,
    ended_well,
    retrieve_error,
)
from dicomrst.errors import UpstreamError


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


GET = Machine(
    name="c-get",
    initial="idle",
    states={
        "idle": "not sent yet",
        "getting": "C-GET-RQ sent: sub-operations arrive on this association, each into the sink",
        "abandoned": "the caller left: C-CANCEL sent, the final response frees the association",
        "timed-out": "the PACS went quiet: cancelled and aborted",
        "ended": "the final response came, or the association ended",
    },
    events={
        "start": "the C-GET-RQ goes out",
        "activity": "a C-GET-RSP or C-STORE-RQ arrived, or the sink took an instance",
        "abandon": "the caller went away",
        "timeout": "nothing from the PACS for the timeout",
        "quiet-ours": "the timer expired while we owe a C-STORE-RSP or stopped reading",
        "final": "the final C-GET-RSP",
        "failed": "the association ended first",
    },
    transitions=transitions(
        [
            ("idle", "start", "getting", "_arm_timer"),
            ("getting", "activity", "getting", "_arm_timer"),
            ("getting", "quiet-ours", "getting", "_arm_timer"),
            ("getting", "abandon", "abandoned", "_send_cancel"),
            ("getting", "timeout", "timed-out", "_give_up"),
            ("getting", "final", "ended", "_finish"),
            ("getting", "failed", "ended", "_finish"),
            ("abandoned", "activity", "abandoned", "_arm_timer"),
            ("abandoned", "quiet-ours", "abandoned", "_arm_timer"),
            ("abandoned", "timeout", "timed-out", "_give_up"),
            ("abandoned", "final", "ended", "_finish"),
            ("abandoned", "failed", "ended", "_finish"),
            ("timed-out", "failed", "ended", "_finish"),
            # A sub-operation the sink finishes after the end: nothing to time any more.
            ("ended", "activity", "ended", None),
        ]
    ),
)


class GetOperation(DimseOperation):
    """One C-GET: the request, its pending responses, the sub-operations, C-CANCEL (`GET`)."""

    name = "C-GET"
    machine = GET

    def __init__(
        self,
        connection: DimseConnection,
        clock: IReactorTime,
        *,
        aet: str,
        timeout: float,
        sink: IInstanceSink,
    ) -> None:
        super().__init__(connection, clock, aet=aet, timeout=timeout)
        self.sink = sink
        self.result = RetrieveResult()
        self.outstanding = 0
        self.owed = 0

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
            encode_identifier(identifier, context.transfer_syntax),
            on_response=self._response,
        )
        self._message_id = rq.number("MessageID")
        self._run.fire("start")
        self.watch(request)
        return request

    def abandon(self) -> None:
        """The caller went away: C-CANCEL; the request ends in the background."""
        self._run.fire("abandon")

    def _finish(self, *ignored: object) -> None:
        self._stop_timer()
        self.connection.handlers.pop(commands.C_STORE_RQ, None)

    def silence_is_ours(self) -> bool:
        # We owe a C-STORE-RSP (the sink is still writing or converting a whole data set),
        # or we stopped reading for a slow HTTP client; the HTTP request timeout bounds
        # the whole retrieve.  A data set still arriving is the PACS's to send.
        association = self.connection.association
        return bool(self.owed) or (association is not None and association.paused)

    def _response(self, message: IncomingMessage) -> IDataSetConsumer | None:
        self._run.fire("activity")
        self.result.count(message.command)
        return None  # a failed-SOP list, if any, is read and dropped


async def c_get(
    connection: DimseConnection,
    clock: IReactorTime,
    identifier: Dataset,
    *,
    aet: str,
    timeout: float,
    sink: IInstanceSink,
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
        op.abandon()
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

# -*- test-case-name: tests.unit.test_move -*-
"""C-MOVE SCU (PS3.4 C.4.2) whose sub-operations, arriving on our listener, stream to a sink.

The C-MOVE-RQ goes out on a pooled association; the PACS opens another one to our
listener (the Move Destination) and sends the instances there as C-STOREs, which the
listener's `MoveStoreSCP` hands to this operation (`dicomrst.dimse.move_registry` says
how they are matched).
The C-MOVE-RSPs and the sub-operations both count as signs of life for the inactivity
timer.  Two associations means two orders: the final C-MOVE-RSP may be read before the
last instance has been handled here (a PACS may even send it before that instance's
C-STORE-RSP), so the operation ends only once every instance the PACS reports stored
has arrived and been handed on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from dicomrst.common.deferreds import shielded
from dicomrst.common.identifiers import encode_identifier, retrieve_identifier
from dicomrst.common.interfaces import IDataSetConsumer, IInstanceSink
from dicomrst.common.machine import Machine, transitions
from dicomrst.common.uids import STUDY_ROOT_MOVE
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.errors import AssociationIntact
from dicomrst.dimse.move_registry import MoveRegistry, Sender
from dicomrst.dimse.operation import DimseOperation
from dicomrst.dimse.retrieval import RetrieveFailed, RetrieveResult, ended_well, retrieve_error
from dicomrst.dimse.status import describe_status
from dicomrst.errors import UpstreamError
from dicomrst.logs import logger
from dicomrst.ul.errors import AssociationTimeout
from dicomrst.ul.protocol import ULProtocol

log = logger("dicomrst.move")

MOVE_DESTINATION_UNKNOWN = 0xA801


class MoveDestinationUnknown(RetrieveFailed):
    """A801: the PACS has no address for our listener's AE title.  `likely`: the status
    said less (0xC000, unable to process, for a study the PACS has), but that is the likely
    cause (a stock Orthanc answers so)."""

    def __init__(
        self,
        aet: str,
        status: int,
        result: RetrieveResult,
        destination: str,
        *,
        likely: bool = False,
        what: str = "",
    ) -> None:
        super().__init__(aet, status, result, "C-MOVE")
        fix = (
            f"register this gateway's listener (AE title {destination}, its host and port) "
            f"as a DICOM node on {aet}, or retrieve with C-GET (wado-rs.retrieve: get)"
        )
        if likely:
            self.message = (
                f"{aet} answered C-MOVE with status 0x{status:04X} ({describe_status(status)}) and moved "
                f"nothing of {what or 'what it has'}: it most likely does not know the move destination "
                f"{destination!r} (a stock Orthanc answers so for a destination missing from its "
                f"DicomModalities): {fix}"
            )
        else:
            self.message = (
                f"{aet} does not know the move destination {destination!r} (C-MOVE status "
                f"0x{status:04X}): {fix}"
            )
        self.args = (self.message,)


class SubOperationsMissing(AssociationIntact, AssociationTimeout):
    """After the final C-MOVE-RSP, instances it reports stored never arrived (the C-MOVE
    association itself is fine)."""


def _claim_message_id(connection: DimseConnection, registry: MoveRegistry) -> int:
    """A message ID free on `connection` and unused by every active move.

    The Move Originator Message ID is all a PACS echoes back, and Message IDs are per
    association: two pooled associations to one PACS would both send ID 1.  So the ID of
    a C-MOVE must be unique across the registry; the connection's counter is set so that
    its request is sent with the ID found.
    """
    for _ in range(0xFFFF):
        candidate = connection.next_message_id()
        if not registry.message_id_taken(candidate):
            return candidate
    raise UpstreamError("no free message ID for another C-MOVE")


MOVE = Machine(
    name="c-move",
    initial="idle",
    states={
        "idle": "not sent yet",
        "moving": "C-MOVE-RQ sent: responses come here, sub-operations on our listener into the sink",
        "answered": "the final C-MOVE-RSP is in; the caller waits for the instances or ends",
        "draining": "waiting for instances the PACS reports stored, and for those still being written",
        "drained": "every instance reported stored arrived and was handed on",
        "abandoned": "the caller left: C-CANCEL sent, late C-STOREs refused; ends after the request",
        "timed-out": "silence: cancelled and aborted, or reported instances never came",
        "ended": "unregistered: late C-STOREs are refused, the sink no longer pauses the listener",
    },
    events={
        "start": "the C-MOVE-RQ goes out (registered in the same turn)",
        "activity": "a C-MOVE-RSP or a sub-operation arrived, or the sink took an instance",
        "quiet-ours": "the timer expired while we owe a C-STORE-RSP or paused the listener",
        "timeout": "nothing from the PACS for the timeout",
        "final": "the final C-MOVE-RSP",
        "failed": "the association ended first",
        "drain": "the caller waits for what the final response reports moved",
        "drained": "nothing moved is missing or still being written",
        "abandon": "the caller went away",
        "end": "the caller is done with the operation",
    },
    transitions=transitions(
        [
            ("idle", "start", "moving", "_arm_timer"),
            ("idle", "end", "ended", "_end"),
            ("moving", "activity", "moving", "_arm_timer"),
            ("moving", "quiet-ours", "moving", "_arm_timer"),
            ("moving", "timeout", "timed-out", "_give_up"),
            ("moving", "final", "answered", "_take_final"),
            ("moving", "failed", "ended", "_end"),
            ("moving", "abandon", "abandoned", "_abandon"),
            ("moving", "end", "ended", "_end"),
            ("answered", "activity", "answered", "_arm_timer"),
            ("answered", "drain", "draining", "_check_drained"),
            ("answered", "abandon", "ended", "_let_go"),
            ("answered", "end", "ended", "_end"),
            ("draining", "activity", "draining", "_arm_and_check"),
            ("draining", "quiet-ours", "draining", "_arm_timer"),
            ("draining", "drained", "drained", "_resolve_drained"),
            ("draining", "timeout", "timed-out", "_missing"),
            ("draining", "abandon", "ended", "_let_go"),
            ("drained", "activity", "drained", None),
            ("drained", "end", "ended", "_end"),
            ("abandoned", "activity", "abandoned", "_arm_timer"),
            ("abandoned", "quiet-ours", "abandoned", "_arm_timer"),
            ("abandoned", "timeout", "abandoned", "_give_up"),
            ("abandoned", "final", "abandoned", "_stop_timer"),
            ("abandoned", "failed", "abandoned", "_stop_timer"),
            ("abandoned", "end", "ended", "_end"),
            ("timed-out", "activity", "timed-out", None),
            ("timed-out", "failed", "timed-out", "_stop_timer"),
            ("timed-out", "end", "ended", "_end"),
            ("ended", "activity", "ended", None),
            ("ended", "final", "ended", None),
            ("ended", "failed", "ended", None),
            ("ended", "end", "ended", None),
        ]
    ),
)


class MoveOperation(DimseOperation):
    """One C-MOVE: the request, its responses, its sub-operations (via the registry);
    its states are `MOVE`."""

    name = "C-MOVE"
    machine = MOVE

    def __init__(
        self,
        connection: DimseConnection,
        clock: IReactorTime,
        *,
        aet: str,
        timeout: float,
        sink: IInstanceSink,
        registry: MoveRegistry,
        destination: str,
        senders: tuple[Sender, ...],
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> None:
        super().__init__(connection, clock, aet=aet, timeout=timeout)
        self.sink = sink
        self.registry = registry
        self.pacs_aet = aet
        self.senders = senders
        self.destination = destination
        self.study = study
        self.series = series
        self.instance = instance
        self.message_id = 0
        self.result = RetrieveResult()
        self.outstanding = 0
        self.owed = 0
        self.delivered: set[str] = set()
        self.final: IncomingMessage | None = None
        self.ended: Deferred[None] = Deferred()
        self._store_association: ULProtocol | None = None
        self._drained: Deferred[None] | None = None
        self._request: Deferred[IncomingMessage] | None = None

    # -- ActiveMove ------------------------------------------------------------------

    def store_association(self, association: ULProtocol) -> None:
        if association is not self._store_association:
            self._store_association = association
            if self.state not in ("abandoned", "ended"):
                self.sink.attach(association)

    # -- what the caller does ----------------------------------------------------------

    def start(self) -> Deferred[IncomingMessage]:
        association = self.connection.association
        assert association is not None
        context = association.context(STUDY_ROOT_MOVE)
        if context is None:
            raise UpstreamError(f"{self.aet} did not accept Study Root C-MOVE")
        self._context_id = context.context_id
        rq = commands.command(
            commands.C_MOVE_RQ,
            AffectedSOPClassUID=STUDY_ROOT_MOVE,
            Priority=commands.PRIORITY_MEDIUM,
            MoveDestination=self.destination,
        )
        self.message_id = _claim_message_id(self.connection, self.registry)
        identifier = retrieve_identifier(self.study, self.series, self.instance)
        request = self.connection.request(
            context.context_id,
            rq,
            encode_identifier(identifier, context.transfer_syntax),
            on_response=self._response,
            message_id=self.message_id,
        )
        # Registered in the same reactor turn as the send: no sub-operation can come first.
        self.registry.register(self)
        self._message_id = self.message_id
        self._request = request
        self._run.fire("start")
        self.watch(request)
        return request

    def drain(self) -> Deferred[None]:
        """Fires once nothing the PACS sent is still being handled here; fails with
        SubOperationsMissing if instances it reports stored do not come within the timeout."""
        d: Deferred[None] = Deferred()
        self._drained = d
        self._run.fire("drain")
        return d

    def abandon(self) -> None:
        """The client went away: C-CANCEL, and refuse whatever still comes; the operation
        ends (and the association is judged) when the PACS answers the cancel."""
        self._run.fire("abandon")

    def end(self) -> None:
        """Late C-STOREs are refused from now on; the response no longer pauses the listener."""
        self._run.fire("end")

    def missing(self) -> int:
        """Instances the PACS reports stored that have not reached the sink yet."""
        return max(0, self.result.completed + self.result.warning - self.result.received)

    def silence_is_ours(self) -> bool:
        # We owe a C-STORE-RSP (the sink is still writing or converting a whole data
        # set), or the response paused the listener's association for a slow HTTP client.
        store = self._store_association
        return bool(self.owed) or (store is not None and store.paused)

    def _response(self, message: IncomingMessage) -> IDataSetConsumer | None:
        self._run.fire("activity")
        self.result.count(message.command)
        return None  # a failed-SOP list, if any, is read and dropped

    # -- actions ------------------------------------------------------------------------

    def _take_final(self, message: IncomingMessage) -> None:
        self.final = message

    def _check_drained(self) -> None:
        if self.outstanding == 0 and self.missing() == 0:
            self._run.fire("drained")

    def _arm_and_check(self) -> None:
        self._arm_timer()
        self._check_drained()

    def _resolve_drained(self) -> None:
        d, self._drained = self._drained, None
        if d is not None and not d.called:
            d.callback(None)

    def _missing(self) -> None:
        self.timed_out = True
        d, self._drained = self._drained, None
        if d is not None and not d.called:
            d.errback(
                SubOperationsMissing(
                    f"{self.aet} reported {self.result.completed + self.result.warning} instance(s) "
                    f"moved to {self.destination}, {self.result.received} arrived within {self.timeout:g} s"
                )
            )

    def _abandon(self) -> None:
        self._send_cancel()
        self.registry.unregister(self)
        # Ended once the request is (the PACS confirmed the cancel, or the association
        # ended), after the callbacks the caller added when it let go of the request:
        # the association goes back to the pool before `ended` lets a queued move
        # (sequential mode) take one.
        if self._request is not None:
            self._request.addBoth(self._end_after)

    def _end_after(self, result: object) -> object:
        self._run.fire("end")
        return result

    def _let_go(self) -> None:
        # The final C-MOVE-RSP is in: the PACS has nothing left running to cancel (a
        # C-CANCEL now is an error in its log), and instances still on their way are
        # refused once the move is unregistered.
        self.registry.unregister(self)
        self._end()

    def _end(self, *ignored: object) -> None:
        self._stop_timer()
        self.registry.unregister(self)
        if self._store_association is not None:
            self.sink.attach(None)
        self._store_association = None
        if not self.ended.called:
            self.ended.callback(None)


async def c_move(
    op: MoveOperation,
    *,
    on_abandon: Callable[[Deferred[IncomingMessage]], None] | None = None,
) -> RetrieveResult:
    """Run the C-MOVE `op` into its sink; return the sub-operation counts.

    Same outcomes as `c_get`: RetrieveFailed for a failure status (MoveDestinationUnknown
    for A801), AssociationTimeout when neither a response nor a sub-operation comes for
    the operation's timeout.
    """
    try:
        request = op.start()
    except BaseException:
        op.end()  # it never started: `ended` must still fire (sequential mode waits on it)
        raise
    shield = shielded(request)
    abandoned = False
    try:
        try:
            await shield
            status = op.result.status
            if commands.status_category(status) in ("success", "warning", "cancel"):
                # A failure status may still come with instances already sent, but the
                # retrieve fails anyway: do not wait for them.
                await op.drain()
        except CancelledError:
            abandoned = True
            # The caller's callbacks first: the association goes back to the pool
            # before `ended` lets a queued move (sequential mode) take one.
            if on_abandon is not None:
                on_abandon(request)
            op.abandon()
            raise
        except SubOperationsMissing:
            raise
        except Exception as e:
            instead = retrieve_error(op, e)
            if instead is not None:
                raise instead from e
            raise
    finally:
        if not abandoned:
            op.end()
    if ended_well(op):
        return op.result
    status = op.result.status
    if status == MOVE_DESTINATION_UNKNOWN:
        raise MoveDestinationUnknown(op.aet, status, op.result, op.destination)
    raise RetrieveFailed(op.aet, status, op.result, "C-MOVE")

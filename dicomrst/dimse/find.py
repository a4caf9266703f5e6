# -*- test-case-name: tests.unit.test_pool -*-
"""C-FIND SCU on a pooled association; its states are `FIND`.

The information model is the caller's: Study Root Q/R (PS3.4 C.4.1) for QIDO-RS,
Modality Worklist (PS3.4 K.4.1) for MWL-RS.  Both run the same exchange.

Results are handed to the caller one by one as their Pending responses arrive, as
received (`RawIdentifier`: the caller decodes what it needs, or writes JSON straight from
the bytes); nothing accumulates here.  Once `limit` results are in we send C-CANCEL and
drop whatever Pending responses were already on the wire.  A failure or an
unexpected Cancel status is an error, never a short list that looks complete.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import UID
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from dicomrst.common.deferreds import shielded
from dicomrst.common.identifiers import RawIdentifier, encode_identifier
from dicomrst.common.interfaces import IDataSetConsumer
from dicomrst.common.machine import Machine, transitions
from dicomrst.common.transcode import DataSetError
from dicomrst.common.uids import IMPLICIT_VR_LE, STUDY_ROOT_FIND
from dicomrst.dimse import commands
from dicomrst.dimse.connection import BufferConsumer, DimseConnection, IncomingMessage
from dicomrst.dimse.errors import AssociationIntact
from dicomrst.dimse.operation import DimseOperation
from dicomrst.dimse.status import describe_status
from dicomrst.errors import UpstreamError
from dicomrst.ul.errors import AssociationTimeout
from dicomrst.ul.pdu import ProtocolError


class FindFailed(AssociationIntact, UpstreamError):
    """The PACS ended a C-FIND with a failure status."""

    def __init__(self, aet: str, status: int) -> None:
        super().__init__(f"{aet} answered C-FIND with status 0x{status:04X} ({describe_status(status)})")
        self.status = status


class FindNotAccepted(AssociationIntact, UpstreamError):
    """The PACS did not accept the presentation context of the information model asked
    for (a PACS without a worklist, say).  Nothing was sent: the association, which
    serves the other models, stays in the pool."""

    def __init__(self, aet: str, sop_class: str) -> None:
        super().__init__(f"{aet} did not accept {UID(sop_class).name} ({sop_class}) when we associated")
        self.sop_class = sop_class


FIND = Machine(
    name="c-find",
    initial="idle",
    states={
        "idle": "not sent yet",
        "finding": "C-FIND-RQ sent: each match goes to the caller as it arrives",
        "cancelled": "limit reached: C-CANCEL sent, further matches are read and dropped",
        "abandoned": "the caller left: C-CANCEL sent, the final response frees the association",
        "timed-out": "the PACS went quiet: cancelled and aborted",
        "ended": "the final response came, or the association ended",
    },
    events={
        "start": "the C-FIND-RQ goes out",
        "activity": "a C-FIND-RSP arrived",
        "limit": "the caller has all the matches it asked for",
        "abandon": "the caller went away",
        "timeout": "no response for the timeout",
        "final": "the final C-FIND-RSP",
        "failed": "the association ended first",
    },
    transitions=transitions(
        [
            ("idle", "start", "finding", "_arm_timer"),
            ("finding", "activity", "finding", "_arm_timer"),
            ("finding", "limit", "cancelled", "_send_cancel"),
            ("finding", "abandon", "abandoned", "_send_cancel"),
            ("finding", "timeout", "timed-out", "_give_up"),
            ("finding", "final", "ended", "_stop_timer"),
            ("finding", "failed", "ended", "_stop_timer"),
            ("cancelled", "activity", "cancelled", "_arm_timer"),
            ("cancelled", "abandon", "abandoned", None),
            ("cancelled", "timeout", "timed-out", "_give_up"),
            ("cancelled", "final", "ended", "_stop_timer"),
            ("cancelled", "failed", "ended", "_stop_timer"),
            ("abandoned", "activity", "abandoned", "_arm_timer"),
            ("abandoned", "timeout", "timed-out", "_give_up"),
            ("abandoned", "final", "ended", "_stop_timer"),
            ("abandoned", "failed", "ended", "_stop_timer"),
            ("timed-out", "failed", "ended", None),
        ]
    ),
)


class FindOperation(DimseOperation):
    """One C-FIND: request, pending results, the final status, C-CANCEL (`FIND`)."""

    name = "C-FIND"
    machine = FIND

    def __init__(
        self,
        connection: DimseConnection,
        clock: IReactorTime,
        *,
        aet: str,
        limit: int | None,
        timeout: float,
        on_result: Callable[[RawIdentifier], None],
        sop_class: str = STUDY_ROOT_FIND,
    ) -> None:
        super().__init__(connection, clock, aet=aet, timeout=timeout)
        self.sop_class = sop_class
        self.limit = limit
        self.on_result = on_result
        self.delivered = 0
        self._transfer_syntax = IMPLICIT_VR_LE

    def start(self, identifier: Dataset) -> Deferred[IncomingMessage]:
        association = self.connection.association
        assert association is not None
        context = association.context(self.sop_class)
        if context is None:
            raise FindNotAccepted(self.aet, self.sop_class)
        self._context_id = context.context_id
        self._transfer_syntax = context.transfer_syntax
        rq = commands.command(
            commands.C_FIND_RQ, AffectedSOPClassUID=self.sop_class, Priority=commands.PRIORITY_MEDIUM
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

    def _response(self, message: IncomingMessage) -> IDataSetConsumer | None:
        run = self._run
        run.fire("activity")
        command = message.command
        if not commands.is_pending(command.number("Status", 0)) or not commands.has_dataset(command):
            return None
        if run.state != "finding":
            return None  # past the limit, or nobody wants it: read and drop
        return BufferConsumer(self._identifier)

    def _identifier(self, data: bytes) -> None:
        if self.state != "finding":
            return
        if self.limit is not None and self.delivered >= self.limit:  # limit=0
            self._run.fire("limit")
            return
        self.delivered += 1
        try:
            self.on_result(RawIdentifier(data, self._transfer_syntax))
        except DataSetError as e:
            # The caller decoded a malformed match: the PACS broke the protocol, not the
            # search: the association ends (one A-ABORT), and the find fails with the reason.
            self.delivered -= 1
            raise ProtocolError(f"C-FIND-RSP from {self.aet} with an {e}") from None
        if self.limit is not None and self.delivered >= self.limit:
            self._run.fire("limit")

    def check(self, final: IncomingMessage) -> None:
        status = final.command.number("Status", 0)
        if status == commands.SUCCESS:
            return
        if status == commands.CANCEL and self.cancel_sent:
            return
        if commands.status_category(status) == "warning":
            return
        raise FindFailed(self.aet, status)


async def c_find(
    connection: DimseConnection,
    clock: IReactorTime,
    identifier: Dataset,
    *,
    aet: str,
    limit: int | None,
    timeout: float,
    on_result: Callable[[RawIdentifier], None],
    on_abandon: Callable[[Deferred[IncomingMessage]], None] | None = None,
    sop_class: str = STUDY_ROOT_FIND,
) -> int:
    """Run one C-FIND of the information model `sop_class`; return the number of
    results delivered.

    If we are cancelled (the HTTP client left) the find is C-CANCELled and the
    request is handed to `on_abandon` so the association can go back to the pool
    once the PACS has confirmed the cancel, instead of being torn down.
    """
    op = FindOperation(
        connection, clock, aet=aet, limit=limit, timeout=timeout, on_result=on_result, sop_class=sop_class
    )
    request = op.start(identifier)
    shield = shielded(request)
    try:
        final = await shield
    except CancelledError:
        op.abandon()
        if on_abandon is not None:
            on_abandon(request)
        raise
    except Exception as e:
        if op.timed_out:
            raise AssociationTimeout(f"no C-FIND response from {aet} within {timeout:g} s") from e
        if op.delivered:
            # Results already went out: not a stale association, so no retry.
            raise UpstreamError(f"{aet}: C-FIND ended after {op.delivered} results: {e}") from e
        raise
    op.check(final)
    return op.delivered

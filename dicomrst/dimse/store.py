# -*- test-case-name: tests.unit.test_stow_dimse -*-
"""C-STORE SCU (PS3.4 B.2.2, PS3.7 9.1.1): one instance per request.

The data set is read from its file (or memory) in pieces and sent as P-DATA while
the TCP send buffer takes it: the association's transport pauses us when the PACS
reads slower than we read the disk, so a 1 GB instance costs a few hundred kilobytes
of memory, never its size.  The C-STORE-RSP status is the outcome; an association
that ends (abort, lost connection, our inactivity timeout) before it arrives is an
error the caller turns into a failed instance, never a stored one.
`dicomrst.backends.pacs.store` stores STOW-RS instances with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

from dicomrst.common.machine import Machine, transitions
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.operation import DimseOperation
from dicomrst.logs import logger
from dicomrst.ul.errors import AssociationTimeout
from dicomrst.ul.negotiation import AcceptedContext

log = logger("dicomrst.store")

# Bytes read from the file per step: several PDUs' worth, so the disk and the socket
# each see large operations, while the send buffer (its high-water mark pauses us)
# holds at most about this much beyond the kernel's.
READ_CHUNK = 256 * 1024


def choose_context(
    contexts: Iterable[AcceptedContext], sop_class_uid: str, transfer_syntax: str
) -> AcceptedContext | None:
    """The accepted context to send an instance on: one in its own transfer syntax if
    there is one (no conversion), else Explicit VR LE, else Implicit VR LE, else None.
    Contexts on which we may not act as SCU (role selection said no) do not count."""
    ours = [cx for cx in contexts if cx.abstract_syntax == sop_class_uid and cx.as_scu]
    for wanted in (transfer_syntax, EXPLICIT_VR_LE, IMPLICIT_VR_LE):
        for cx in ours:
            if cx.transfer_syntax == wanted:
                return cx
    return None


@implementer(IPushProducer)
class _DataSetSender:
    """Sends a data set from `source` piece by piece, paused and resumed by the
    association's TCP send buffer."""

    def __init__(self, op: StoreOperation, source: BinaryIO, context_id: int, chunk: int) -> None:
        self.op = op
        self.source = source
        self.context_id = context_id
        self.chunk = chunk & ~1 or 2
        self.sent = 0
        self.finished = False
        self.stopped = False
        self._paused = False
        self._running = False
        self._next = b""
        self._registered = False

    def start(self) -> None:
        association = self.op.connection.association
        assert association is not None
        self._next = self.source.read(self.chunk)
        association.register_write_producer(self)
        self._registered = True
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._running:
            return
        self._running = True
        try:
            while not self._paused and not self.finished and not self.stopped:
                piece, self._next = self._next, self.source.read(self.chunk)
                last = not self._next
                self.op.connection.send_data(self.context_id, piece, last)
                self.sent += len(piece)
                self.op.activity()
                if last:
                    self.finished = True
                    self._close()
                    self.op.all_sent()
        except Exception as e:
            # The association went away under us: its end fails the request, which
            # reports it; here we only stop.
            log.debug("C-STORE data set sending stopped: {error}", error=e)
            self.stopProducing()
        finally:
            self._running = False

    def stopProducing(self) -> None:
        if not self.finished:
            self.stopped = True
        self._close()

    def _close(self) -> None:
        if self._registered:
            self._registered = False
            association = self.op.connection.association
            if association is not None:
                association.unregister_write_producer()
        self.source.close()


STORE = Machine(
    name="c-store",
    initial="idle",
    states={
        "idle": "not sent yet",
        "sending": "the data set goes out as fast as the send buffer takes it",
        "awaiting": "all of it sent; waiting for the C-STORE-RSP",
        "timed-out": "no progress for the timeout: aborted (C-STORE has no C-CANCEL)",
        "ended": "the C-STORE-RSP came, or the association ended",
    },
    events={
        "start": "the C-STORE-RQ command goes out",
        "activity": "a piece of the data set went out",
        "sent": "the last piece went out",
        "timeout": "no progress for the timeout",
        "final": "the C-STORE-RSP",
        "failed": "the association ended first",
    },
    transitions=transitions(
        [
            ("idle", "start", "sending", "_arm_timer"),
            ("sending", "activity", "sending", "_arm_timer"),
            ("sending", "sent", "awaiting", None),
            ("sending", "timeout", "timed-out", "_give_up"),
            ("sending", "final", "ended", "_answered_early"),
            ("sending", "failed", "ended", "_finish"),
            ("awaiting", "timeout", "timed-out", "_give_up"),
            ("awaiting", "final", "ended", "_finish"),
            ("awaiting", "failed", "ended", "_finish"),
            ("timed-out", "final", "ended", "_finish"),
            ("timed-out", "failed", "ended", "_finish"),
        ]
    ),
)


class StoreOperation(DimseOperation):
    """One C-STORE: the request, the data set streamed from `source`, the response (`STORE`)."""

    name = "C-STORE"
    machine = STORE

    def __init__(self, connection: DimseConnection, clock: IReactorTime, *, aet: str, timeout: float) -> None:
        super().__init__(connection, clock, aet=aet, timeout=timeout)
        self.sender: _DataSetSender | None = None

    def start(
        self,
        context: AcceptedContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        source: BinaryIO,
        *,
        chunk: int = READ_CHUNK,
    ) -> Deferred[IncomingMessage]:
        rq = commands.command(
            commands.C_STORE_RQ,
            AffectedSOPClassUID=sop_class_uid,
            AffectedSOPInstanceUID=sop_instance_uid,
            Priority=commands.PRIORITY_MEDIUM,
        )
        self._context_id = context.context_id
        try:
            request = self.connection.request(context.context_id, rq, streamed=True)
        except Exception:
            source.close()
            raise
        self._message_id = rq.number("MessageID")
        self._run.fire("start")
        self.watch(request)
        self.sender = _DataSetSender(self, source, context.context_id, chunk)
        self.sender.start()
        return request

    def all_sent(self) -> None:
        self._run.fire("sent")

    def _send_cancel(self) -> None:
        # There is no C-CANCEL for C-STORE (PS3.7 9.3.2): a stalled store is aborted.
        return None

    def _finish(self, *ignored: object) -> None:
        self._stop_timer()
        if self.sender is not None and not self.sender.finished:
            self.sender.stopProducing()

    def _answered_early(self, message: IncomingMessage) -> None:
        self._finish()
        # The PACS answered before it had the whole data set (PS3.7 9.1.1.2 allows an
        # early failure): the message cannot be completed without sending the rest, and
        # the association's state is in doubt.
        self.connection.abort("C-STORE answered before its data set was sent")


async def c_store(
    connection: DimseConnection,
    clock: IReactorTime,
    context: AcceptedContext,
    sop_class_uid: str,
    sop_instance_uid: str,
    source: BinaryIO,
    *,
    aet: str,
    timeout: float,
    chunk: int = READ_CHUNK,
) -> tuple[int, str]:
    """Send one instance; return the C-STORE-RSP's (status, error comment).

    `source` is positioned at the data set and is closed here.  Raises the
    association's error (`AssociationError`) if it ended before the response, and
    `AssociationTimeout` after `timeout` s without progress (then it is aborted).
    """
    op = StoreOperation(connection, clock, aet=aet, timeout=timeout)
    request = op.start(context, sop_class_uid, sop_instance_uid, source, chunk=chunk)
    try:
        final = await request
    except Exception as e:
        if op.timed_out:
            sent = op.sender.sent if op.sender is not None else 0
            raise AssociationTimeout(
                f"no progress on C-STORE to {aet} for {timeout:g} s ({sent} bytes sent)"
            ) from e
        raise
    status = final.command.number("Status", 0xFFFF)
    comment = str(final.command.get("ErrorComment", "") or "")
    return status, comment

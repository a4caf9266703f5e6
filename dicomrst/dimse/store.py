# -*- test-case-name: tests.test_stow_dimse -*-
"""C-STORE SCU (PS3.4 B.2.2, PS3.7 9.1.1) for STOW-RS: one instance per request.

The data set is read from its file (or memory) in pieces and sent as P-DATA while
the TCP send buffer takes it: the association's transport pauses us when the PACS
reads slower than we read the disk, so a 1 GB instance costs a few hundred kilobytes
of memory, never its size.  The C-STORE-RSP status is the outcome; an association
that ends (abort, lost connection, our inactivity timeout) before it arrives is an
error the caller turns into a failed instance, never a stored one.

Transfer syntax conversion (`convert_dataset`) runs in a thread: the accepted
context's syntax is one of the instance's own, Explicit VR LE or Implicit VR LE, and
any of those can be produced from the others (decompression needs a pixel decoder).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any, BinaryIO

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.operation import DimseOperation
from dicomrst.dimse.pool import AssociationPool, Lease
from dicomrst.dimse.status import describe_status
from dicomrst.errors import ServiceUnavailable, UpstreamTimeout
from dicomrst.logs import logger
from dicomrst.stow.model import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_PROCESSING,
    FAILURE_SOP_CLASS_NOT_SUPPORTED,
    FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED,
    SUCCESS,
    StoreOutcome,
    UploadedInstance,
)
from dicomrst.ul.errors import (
    AssociationClosed,
    AssociationError,
    AssociationRejected,
    AssociationTimeout,
    ConnectFailed,
    ConnectionLost,
    NoAcceptableContext,
)
from dicomrst.ul.negotiation import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    RESULT_REJECTED_PERMANENT,
    AcceptedContext,
    AssociationRequest,
    ContextProposal,
)
from dicomrst.wado import part10

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


def convert_dataset(data: bytes, transfer_syntax: str, target: str) -> bytes:
    """`data` (a data set without meta, in `transfer_syntax`) in `target`, which is
    Explicit or Implicit VR LE.  Raises `part10.CannotTranscode` when the pixel data
    cannot be decompressed here, `part10.DataSetError` when the bytes do not parse.
    Runs in a thread (CPU-heavy)."""
    if transfer_syntax == target:
        return data
    explicit = part10.to_explicit_le(data, transfer_syntax)
    if target == EXPLICIT_VR_LE:
        return explicit
    if target != IMPLICIT_VR_LE:
        raise part10.CannotTranscode(f"cannot convert {transfer_syntax} to {target}")
    ds = part10.parse_dataset(explicit, implicit=False, little=True)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = True
    try:
        write_dataset(out, ds)
    except Exception as e:
        raise part10.DataSetError(f"cannot encode the data set in Implicit VR LE: {e}") from None
    return out.getvalue()


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


class StoreOperation(DimseOperation):
    """One C-STORE: the request, the data set streamed from `source`, the response."""

    name = "C-STORE"

    def __init__(self, connection: DimseConnection, clock: IReactorTime, *, aet: str, timeout: float) -> None:
        super().__init__(connection, clock, aet=aet, timeout=timeout)
        self.sender: _DataSetSender | None = None

    def cancel(self) -> None:
        # There is no C-CANCEL for C-STORE (PS3.7 9.3.2): a stalled store is aborted.
        return None

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
        self._message_id = int(rq.MessageID)
        self.activity()
        request.addBoth(self._finished)
        self.sender = _DataSetSender(self, source, context.context_id, chunk)
        self.sender.start()
        return request

    def _finished(self, result: object) -> object:
        self._stop_timer()
        sender = self.sender
        if sender is not None and not sender.finished:
            sender.stopProducing()
            if not isinstance(result, Failure):
                # The PACS answered before it had the whole data set (PS3.7 9.1.1.2
                # allows an early failure): the message cannot be completed without
                # sending the rest, and the association's state is in doubt.
                self.connection.abort("C-STORE answered before its data set was sent")
        return result


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
    status = int(final.command.get("Status", 0xFFFF))
    comment = str(final.command.get("ErrorComment", "") or "")
    return status, comment


# -- one uploaded instance through the pool -------------------------------------------


def store_request(
    pool: AssociationPool, sop_class_uid: str, transfer_syntax: str
) -> AssociationRequest | None:
    """The association an instance needs: None (the pool's common one) when that
    proposes its SOP class in its transfer syntax; else one for just this SOP class,
    with its own syntax in a context of its own (so the PACS can take it unchanged)
    and Explicit/Implicit VR LE in another (so it can refuse the first and still
    get the instance, converted)."""
    common = pool.request
    for proposal in common.contexts:
        if proposal.abstract_syntax == sop_class_uid and transfer_syntax in proposal.transfer_syntaxes:
            return None
    uncompressed = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
    if transfer_syntax in uncompressed:
        other = IMPLICIT_VR_LE if transfer_syntax == EXPLICIT_VR_LE else EXPLICIT_VR_LE
        contexts: tuple[ContextProposal, ...] = (ContextProposal(sop_class_uid, (transfer_syntax, other)),)
    else:
        contexts = (
            ContextProposal(sop_class_uid, (transfer_syntax,)),
            ContextProposal(sop_class_uid, uncompressed),
        )
    return AssociationRequest(common.calling_aet, common.called_aet, contexts, max_pdu=common.max_pdu)


def _read_and_convert(instance: UploadedInstance, target: str) -> bytes:
    with instance.open() as f:
        f.seek(instance.dataset_offset)
        data = f.read()
    return convert_dataset(data, instance.transfer_syntax, target)


def _unsupported(instance: UploadedInstance, why: str) -> StoreOutcome:
    # The PACS took none of the contexts proposed for the SOP class: when it said it
    # knows the class but not the syntaxes, that is a transfer syntax failure (C122).
    status = (
        FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED
        if "transfer syntaxes not supported" in why and "abstract syntax" not in why
        else FAILURE_SOP_CLASS_NOT_SUPPORTED
    )
    return StoreOutcome(instance.sop_class_uid, instance.sop_instance_uid, status, why)


async def store_instance(
    pool: AssociationPool, reactor: Any, instance: UploadedInstance, *, timeout: float
) -> StoreOutcome:
    """C-STORE one STOW-RS instance over `pool`; the outcome of every failure that
    concerns this instance only is a StoreOutcome.  Raises `ServiceUnavailable` when
    no association to the PACS can be had at all (refused, unreachable, pool busy
    past its timeout, shutting down).

    Status codes of our own: 0x0122 when the PACS accepts no context for the SOP
    class (0xC122 when it knows the class but none of the syntaxes), 0xC122 when the
    instance cannot be converted to the syntax it accepted, 0xC000 when the data set
    does not parse, 0x0110 when the association is aborted, lost or silent for
    `timeout` s before the C-STORE-RSP (the instance may or may not be stored; it
    is not reported stored).
    """
    aet = pool.aet
    request = store_request(pool, instance.sop_class_uid, instance.transfer_syntax)
    started = reactor.seconds()

    def outcome(status: int, reason: str = "") -> StoreOutcome:
        return StoreOutcome(instance.sop_class_uid, instance.sop_instance_uid, status, reason)

    # Errors of `once` that the pool may retry; any other such error came from setting up.
    lost: list[Exception] = []

    async def once(lease: Lease) -> StoreOutcome:
        association = lease.connection.association
        assert association is not None
        context = choose_context(
            association.contexts.values(), instance.sop_class_uid, instance.transfer_syntax
        )
        if context is None:
            return outcome(
                FAILURE_SOP_CLASS_NOT_SUPPORTED,
                f"{aet} did not accept SOP class {instance.sop_class_uid}",
            )
        if context.transfer_syntax == instance.transfer_syntax:
            source: BinaryIO = instance.open()
            try:
                source.seek(instance.dataset_offset)
            except Exception:
                source.close()
                raise
        else:
            try:
                converted = await deferToThreadPool(
                    reactor, reactor.getThreadPool(), _read_and_convert, instance, context.transfer_syntax
                )
            except part10.CannotTranscode as e:
                return outcome(
                    FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED,
                    f"{aet} does not accept {instance.transfer_syntax} for this SOP class and "
                    f"the instance cannot be converted to {context.transfer_syntax}: {e}",
                )
            except part10.DataSetError as e:
                return outcome(FAILURE_CANNOT_UNDERSTAND, f"cannot convert the data set: {e}")
            source = io.BytesIO(converted)
        try:
            status, comment = await c_store(
                lease.connection,
                reactor,
                context,
                instance.sop_class_uid,
                instance.sop_instance_uid,
                source,
                aet=aet,
                timeout=timeout,
            )
        except AssociationTimeout as e:
            return outcome(FAILURE_PROCESSING, str(e))
        except (ConnectionLost, AssociationClosed) as e:
            if lease.reused:
                lost.append(e)
                raise  # the pool retries once on a fresh association
            return outcome(FAILURE_PROCESSING, f"association to {aet} lost during C-STORE")
        except AssociationError as e:
            return outcome(FAILURE_PROCESSING, f"association to {aet} ended during C-STORE: {e}")
        reason = f"{aet} answered C-STORE with 0x{status:04X} ({describe_status(status)})"
        if comment:
            reason += f": {comment}"
        return outcome(status, "" if status == SUCCESS else reason)

    async def run() -> StoreOutcome:
        async with _Slot(pool.store_slots):
            try:
                return await pool.run(once, request=request)
            except (ConnectionLost, AssociationClosed) as e:
                if not lost or lost[-1] is not e:
                    # Lost while being set up: no association could be had.
                    raise ServiceUnavailable(f"{aet}: no association for C-STORE: {e}") from e
                return outcome(FAILURE_PROCESSING, f"association to {aet} lost during C-STORE: {e}")
            except NoAcceptableContext as e:
                if request is None:
                    raise ServiceUnavailable(f"{aet}: {e}") from e
                return _unsupported(instance, str(e))
            except AssociationRejected as e:
                if request is None or e.result != RESULT_REJECTED_PERMANENT:
                    # A transient rejection (congestion, too many associations) says
                    # nothing about the SOP class.
                    raise ServiceUnavailable(f"{aet}: {e}") from e
                # The PACS takes our common associations but not one proposing only this
                # SOP class (DCMTK rejects an association with no acceptable context).
                return _unsupported(
                    instance,
                    f"{aet} rejected an association for SOP class "
                    f"{instance.sop_class_uid} in {instance.transfer_syntax}: {e}",
                )
            except (ConnectFailed, AssociationError, UpstreamTimeout) as e:
                raise ServiceUnavailable(f"{aet}: no association for C-STORE: {e}") from e

    result = await run()
    # One line per STOW request comes from the web layer; per instance only failures
    # and warnings are worth the operator's attention at the default level.
    emit = log.debug if result.status == SUCCESS else log.warn
    emit(
        "C-STORE {aet} sop={sop} ts={ts} bytes={size} status=0x{status:04X} ms={ms:.1f}{reason}",
        aet=aet,
        sop=instance.sop_instance_uid,
        ts=instance.transfer_syntax,
        size=instance.size,
        status=result.status,
        ms=(reactor.seconds() - started) * 1000,
        reason=f" reason={result.reason!r}" if result.reason else "",
    )
    return result


class _Slot:
    """`async with` on a DeferredSemaphore."""

    def __init__(self, semaphore: DeferredSemaphore) -> None:
        self.semaphore = semaphore

    async def __aenter__(self) -> None:
        await self.semaphore.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.semaphore.release()

# -*- test-case-name: tests.unit.test_stow_dimse -*-
"""STOW-RS into a PACS: one uploaded instance, C-STOREd over the AET's association pool.

The association an instance needs (`store_request`), the accepted context it goes on
(`dicomrst.dimse.store.choose_context`), conversion to the syntax the PACS took (in a
thread: `dicomrst.common.transcode.convert_dataset`), and every way that can fail mapped
to the instance's `StoreOutcome`.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from twisted.internet.threads import deferToThreadPool

from dicomrst.backends.values import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_PROCESSING,
    FAILURE_SOP_CLASS_NOT_SUPPORTED,
    FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED,
    SUCCESS,
    StoreOutcome,
    UploadedInstance,
)
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.transcode import CannotTranscode, DataSetError, convert_dataset
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.dimse.pool import AssociationPool, Lease
from dicomrst.dimse.status import describe_status
from dicomrst.dimse.store import c_store, choose_context
from dicomrst.errors import ServiceUnavailable, UpstreamTimeout
from dicomrst.logs import logger
from dicomrst.ul.errors import (
    AssociationClosed,
    AssociationError,
    AssociationRejected,
    AssociationTimeout,
    ConnectFailed,
    ConnectionLost,
    NoAcceptableContext,
)
from dicomrst.ul.negotiation import RESULT_REJECTED_PERMANENT, AssociationRequest, ContextProposal

log = logger("dicomrst.store")


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
    pool: AssociationPool, reactor: IGatewayReactor, instance: UploadedInstance, *, timeout: float
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
            except CannotTranscode as e:
                return outcome(
                    FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED,
                    f"{aet} does not accept {instance.transfer_syntax} for this SOP class and "
                    f"the instance cannot be converted to {context.transfer_syntax}: {e}",
                )
            except DataSetError as e:
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
        async with pool.store_slots:
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

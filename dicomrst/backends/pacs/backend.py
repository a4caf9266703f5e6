# -*- test-case-name: tests.unit.test_pool -*-
"""An AET served by a PACS over DIMSE, through one association pool.

Search is a C-FIND (Study Root, or Modality Worklist for MWL-RS); retrieve a C-MOVE to
one of our listeners (or a C-GET), issued at the level asked for (not always the study,
as DICOM-RST does); store a C-STORE per instance (`dicomrst.backends.pacs.store`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, DeferredLock
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend
from dicomrst.backends.pacs.store import store_instance
from dicomrst.backends.values import StoreOutcome, UploadedInstance
from dicomrst.common.addresses import host_networks
from dicomrst.common.identifiers import Found, describe_target, retrieve_identifier
from dicomrst.common.interfaces import IInstanceSink
from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.tls import ClientTLS
from dicomrst.common.uids import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MODALITY_WORKLIST_FIND,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from dicomrst.config import AetConfig
from dicomrst.dimse.connection import IncomingMessage
from dicomrst.dimse.contexts import STORAGE_CONTEXTS
from dicomrst.dimse.echo import c_echo
from dicomrst.dimse.find import c_find
from dicomrst.dimse.get import c_get
from dicomrst.dimse.move import MoveDestinationUnknown, MoveOperation, c_move
from dicomrst.dimse.move_registry import MoveReceiver, Sender
from dicomrst.dimse.pool import STALE_ERRORS, AssociationPool, Lease
from dicomrst.dimse.retrieval import RetrieveFailed, RetrieveResult
from dicomrst.errors import NotFound, UpstreamError
from dicomrst.logs import logger
from dicomrst.ul.errors import AssociationAborted, ProtocolViolation
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal
from dicomrst.ul.pdu import SOURCE_SERVICE_USER

log = logger("dicomrst.pacs")

T = TypeVar("T")

#: Status of a C-MOVE (or C-GET) that failed for no reason the PACS names.
UNABLE_TO_PROCESS = 0xC000

# Orthanc's settings that let unknown calling AE titles use each service.
_ORTHANC_ALLOW = {
    "C-FIND": "DicomAlwaysAllowFind",
    "C-MOVE": "DicomAlwaysAllowMove",
    "C-GET": "DicomAlwaysAllowGet",
    "C-ECHO": "DicomAlwaysAllowEcho",
}


class CallerNotAccepted(UpstreamError):
    """The PACS accepted our association and aborted it when asked for a service: it most
    likely does not know our AE title."""


# Every pooled association proposes what every service needs, so any idle one
# serves any request.  Verification is included so a PACS that strictly checks
# contexts never sees a C-ECHO on a context it did not accept (DICOM-RST #64).
# STORAGE_CONTEXTS (dimse/contexts.py) carry C-GET's instances back with our SCP role.
POOL_CONTEXTS = (
    ContextProposal(VERIFICATION),
    ContextProposal(STUDY_ROOT_FIND),
    ContextProposal(STUDY_ROOT_MOVE),
    ContextProposal(STUDY_ROOT_GET),
    # MWL-RS.  A PACS without a worklist rejects just this context; the association
    # still serves the rest, and a worklist search there fails with `FindNotAccepted`.
    ContextProposal(MODALITY_WORKLIST_FIND),
    *STORAGE_CONTEXTS,
)


@implementer(IBackend)
class DimseBackend:
    kind = "DIMSE"

    def __init__(
        self,
        config: AetConfig,
        calling_aet: str,
        reactor: IGatewayReactor,
        receiver: MoveReceiver | None = None,
        metrics: Metrics | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        """`tls`: ``aets[].tls`` made ready (`dicomrst.common.tls.client_tls`)."""
        assert config.host is not None and config.port is not None
        self.config = config
        self.host = config.host
        self.port = config.port
        # C-MOVE to `receiver` (a listener of ours) when configured so, else C-GET.
        self.receiver = receiver if config.wado_rs.retrieve == "move" else None
        # Who may deliver our C-MOVEs' sub-operations; resolved now, at startup, before
        # the reactor runs (the config check has already resolved each name once).
        self.senders: tuple[Sender, ...] = ()
        if self.receiver is not None:
            self.senders = tuple(Sender(aet, host_networks(host)) for aet, host in config.move_senders())
        self.retrieve_syntaxes: tuple[str, ...] = (
            self.receiver.transfer_syntaxes if self.receiver is not None else (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        )
        self.store_concurrency = config.pool.size
        # wado-rs.mode: sequential (DICOM-RST): one C-MOVE at a time to this AET.
        self._move_lock = DeferredLock() if config.wado_rs.mode == "sequential" else None
        self.aet = config.aet
        self.calling_aet = calling_aet
        self.reactor = reactor
        self.pool = AssociationPool(
            reactor,
            config.host,
            config.port,
            AssociationRequest(calling_aet, config.aet, POOL_CONTEXTS),
            size=config.pool.size,
            acquire_timeout=config.pool.timeout_s,
            idle_timeout=config.pool.idle_timeout_s,
            connect_timeout=config.pool.timeout_s,
            max_idle=config.pool.max_idle,
            metrics=metrics,
            tls=tls,
        )

    def echo(self) -> Deferred[float]:
        """C-ECHO on an association of the pool; fire with milliseconds until its response
        (waiting for an association included).

        Through the pool like every other request, so a burst of health checks opens no
        more than `pool.size` associations to the PACS, waits like the rest for one, and
        gets 503 when none comes free in `pool.timeout`.
        """
        started = self.reactor.seconds()

        async def once(lease: Lease) -> float:
            await c_echo(lease.connection, aet=self.aet, timeout=self.config.pool.timeout_s)
            return (self.reactor.seconds() - started) * 1000

        return Deferred.fromCoroutine(self._run("C-ECHO", once))

    def _abandoner(self, lease: Lease) -> Callable[[Deferred[IncomingMessage]], None]:
        """What an operation does with its request when the client leaves: the association
        returns to the pool once the PACS confirms the C-CANCEL (or is dropped if it errs
        or stalls)."""

        def abandon(request: Deferred[IncomingMessage]) -> None:
            lease.detached = True
            request.addCallbacks(
                lambda _: self.pool.release(lease), lambda _: self.pool.release(lease, reusable=False)
            )

        return abandon

    def find(
        self,
        identifier: Dataset,
        *,
        limit: int | None,
        on_result: Callable[[Found], None],
        model: str = STUDY_ROOT_FIND,
    ) -> Deferred[None]:
        # Each service has its own per-response timeout in the config, as in DICOM-RST.
        timeout = (
            self.config.mwl_rs.timeout_s if model == MODALITY_WORKLIST_FIND else self.config.qido_rs.timeout_s
        )

        async def once(lease: Lease) -> None:
            await c_find(
                lease.connection,
                self.reactor,
                identifier,
                aet=self.aet,
                limit=limit,
                timeout=timeout,
                on_result=on_result,
                on_abandon=self._abandoner(lease),
                sop_class=model,
            )

        return Deferred.fromCoroutine(self._run("C-FIND", once))

    async def _run(self, operation: str, once: Callable[[Lease], Awaitable[T]]) -> T:
        """`once` on a pooled association, with an abort the PACS answers it with explained."""
        try:
            return await self.pool.run(once)
        except AssociationAborted as e:
            if e.source != SOURCE_SERVICE_USER or isinstance(e, ProtocolViolation):
                raise
            # The PACS accepted the association and then aborted it when asked, with nothing
            # delivered yet (else the error would be another): what a PACS that does not know
            # our AE title does (a stock Orthanc for C-FIND, C-MOVE and C-GET).
            raise self._explained(
                CallerNotAccepted(
                    f"{self.aet} aborted the association when asked for {operation} (A-ABORT from "
                    f"the service user): it most likely does not accept our AE title "
                    f"{self.calling_aet!r} (server.aet). Register {self.calling_aet} (with this "
                    f"gateway's address) as a DICOM node on {self.aet}, or let it answer unknown "
                    f"callers (Orthanc: {_ORTHANC_ALLOW.get(operation, 'DicomAlwaysAllow*')}: true)"
                )
            ) from e

    def _explained(self, error: UpstreamError) -> UpstreamError:
        # The client gets the message in the 502 body; the operator gets it in the log.
        log.warn("{aet}: {why}", aet=self.aet, why=error.message)
        return error

    def retrieve(
        self, study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[int]:
        """C-MOVE or C-GET at the level asked for; fires with the instances handed to `sink`."""
        return Deferred.fromCoroutine(self._retrieve(study, series, instance, sink))

    async def _retrieve(
        self, study: str, series: str | None, instance: str | None, sink: IInstanceSink
    ) -> int:
        try:
            if self.receiver is not None:
                result = await self._move(study, series, instance, sink)
            else:
                result = await self._run(
                    "C-GET", self._get_once(retrieve_identifier(study, series, instance), sink)
                )
        except RetrieveFailed as e:
            # Some PACS (Orthanc among them) answer a retrieve of an unknown UID with a
            # failure and no sub-operations instead of Success with none.  Ask with a
            # C-FIND whether the entity exists: if not, that is a 404, not a PACS failure.
            moved = e.result.completed or e.result.failed or e.result.received
            if isinstance(e, MoveDestinationUnknown):
                raise self._explained(e) from None
            if moved:
                raise
            what = describe_target(study, series, instance)
            if not await self._exists(study, series, instance):
                raise NotFound(f"{self.aet} has no instance for {what}") from e
            if self.receiver is not None and e.status == UNABLE_TO_PROCESS:
                # It has the study, moved none of it and says only "unable to process": what
                # a stock Orthanc answers for a destination missing from DicomModalities
                # (others say A801, move destination unknown).
                raise self._explained(
                    MoveDestinationUnknown(
                        self.aet, e.status, e.result, self.receiver.aet, likely=True, what=what
                    )
                ) from e
            raise
        return result.received

    async def _exists(self, study: str, series: str | None, instance: str | None) -> bool:
        found: list[Found] = []
        await self.find(retrieve_identifier(study, series, instance), limit=1, on_result=found.append)
        return bool(found)

    def _get_once(
        self, identifier: Dataset, sink: IInstanceSink
    ) -> Callable[[Lease], Awaitable[RetrieveResult]]:
        async def once(lease: Lease) -> RetrieveResult:
            association = lease.connection.association
            assert association is not None
            sink.attach(association)
            get = c_get(
                lease.connection,
                self.reactor,
                identifier,
                aet=self.aet,
                timeout=self.config.wado_rs.timeout_s,
                sink=sink,
                on_abandon=self._abandoner(lease),
            )
            try:
                return await get
            except STALE_ERRORS as e:
                raise self._not_retried(sink, "C-GET", e) from e
            finally:
                # The sink must not pause (or resume) the association once it is back
                # in the pool; if it was paused, it reads again (a C-GET that was
                # cancelled then drains).
                sink.attach(None)

        return once

    def _not_retried(self, sink: IInstanceSink, operation: str, error: Exception) -> Exception:
        """A stale association may be retried by the pool, unless bytes already went out
        (a part's header is written before its data set has all arrived): a retry would
        send instances twice, or follow a cut-off part with whole ones in a body that
        ends cleanly."""
        if sink.started:
            return UpstreamError(f"{self.aet}: association lost during {operation}: {error}")
        return error

    async def _move(
        self, study: str, series: str | None, instance: str | None, sink: IInstanceSink
    ) -> RetrieveResult:
        receiver = self.receiver
        assert receiver is not None
        lock = self._move_lock
        if lock is not None:
            await lock.acquire()
        ops: list[MoveOperation] = []

        async def once(lease: Lease) -> RetrieveResult:
            op = MoveOperation(
                lease.connection,
                self.reactor,
                aet=self.aet,
                timeout=self.config.wado_rs.timeout_s,
                sink=sink,
                registry=receiver.registry,
                destination=receiver.aet,
                senders=self.senders,
                study=study,
                series=series,
                instance=instance,
            )
            ops.append(op)
            try:
                return await c_move(op, on_abandon=self._abandoner(lease))
            except STALE_ERRORS as e:
                raise self._not_retried(sink, "C-MOVE", e) from e

        try:
            return await self._run("C-MOVE", once)
        finally:
            if lock is not None:
                # Held until the move has really ended: one the client abandoned runs on
                # until the PACS confirms the C-CANCEL, and its stragglers must not meet
                # the next move.
                if ops and not ops[-1].ended.called:
                    ops[-1].ended.addBoth(lambda _: lock.release())
                else:
                    lock.release()

    def store_instance(self, instance: UploadedInstance) -> Deferred[StoreOutcome]:
        """C-STORE one STOW-RS instance (`dicomrst.backends.pacs.store` has the rules)."""
        return Deferred.fromCoroutine(
            store_instance(self.pool, self.reactor, instance, timeout=self.config.stow_rs.timeout_s)
        )

    def stop(self) -> Deferred[None]:
        return self.pool.stop()

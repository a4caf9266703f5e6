# -*- test-case-name: tests.test_qido_pacs -*-
"""An AET served by a PACS over DIMSE, through one association pool."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend
from dicomrst.config import AetConfig
from dicomrst.dimse.contexts import STORAGE_CONTEXTS
from dicomrst.dimse.echo import echo_scu
from dicomrst.dimse.find import c_find
from dicomrst.dimse.move import MoveOperation, c_move
from dicomrst.dimse.moves import MoveReceiver
from dicomrst.dimse.pool import STALE_ERRORS, AssociationPool, Lease
from dicomrst.dimse.retrieve import InstanceSink, RetrieveResult, c_get
from dicomrst.dimse.store import store_instance
from dicomrst.errors import UpstreamError
from dicomrst.stow.model import StoreOutcome, UploadedInstance
from dicomrst.ul.negotiation import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    VERIFICATION,
    AssociationRequest,
    ContextProposal,
)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

# Every pooled association proposes what every service needs, so any idle one
# serves any request.  Verification is included so a PACS that strictly checks
# contexts never sees a C-ECHO on a context it did not accept (DICOM-RST #64).
# STORAGE_CONTEXTS (dimse/contexts.py) carry C-GET's instances back with our SCP role.
POOL_CONTEXTS = (
    ContextProposal(VERIFICATION),
    ContextProposal(STUDY_ROOT_FIND),
    ContextProposal(STUDY_ROOT_MOVE),
    ContextProposal(STUDY_ROOT_GET),
    *STORAGE_CONTEXTS,
)


@implementer(IBackend)
class DimseBackend:
    kind = "DIMSE"

    def __init__(
        self, config: AetConfig, calling_aet: str, reactor: IReactorTCP, receiver: MoveReceiver | None = None
    ) -> None:
        assert config.host is not None and config.port is not None
        self.config = config
        # C-MOVE to `receiver` (a listener of ours) when configured so, else C-GET.
        self.receiver = receiver if config.wado_rs.retrieve == "move" else None
        # The transfer syntaxes retrieved instances may arrive in (the up-front 406 check).
        self.retrieve_syntaxes: tuple[str, ...] = (
            self.receiver.transfer_syntaxes if self.receiver is not None else (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        )
        # wado-rs.mode: sequential (DICOM-RST): one C-MOVE at a time to this AET.
        self._move_lock = DeferredLock() if config.wado_rs.mode == "sequential" else None
        self.aet = config.aet
        self.calling_aet = calling_aet
        self.reactor = reactor
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self.pool = AssociationPool(
            reactor,
            config.host,
            config.port,
            AssociationRequest(calling_aet, config.aet, POOL_CONTEXTS),
            size=config.pool.size,
            acquire_timeout=config.pool.timeout_s,
            idle_timeout=config.pool.idle_timeout_s,
            connect_timeout=config.pool.timeout_s,
        )

    def echo(self) -> Deferred[float]:
        # A fresh association each time, outside the pool: a health check must
        # prove the PACS accepts new associations, which a reused one would not.
        assert self.config.host is not None and self.config.port is not None
        return echo_scu(
            self.reactor,
            self.config.host,
            self.config.port,
            self.calling_aet,
            self.aet,
            timeout=self.config.pool.timeout_s,
        )

    def find(
        self, identifier: Dataset, *, limit: int | None, on_result: Callable[[Dataset], None]
    ) -> Deferred[None]:
        async def once(lease: Lease) -> None:
            def abandon(request: Deferred[object]) -> None:
                # The client left: the association returns to the pool once the
                # PACS confirms the C-CANCEL (or is dropped if it errs or stalls).
                lease.detached = True
                request.addCallbacks(
                    lambda _: self.pool.release(lease), lambda _: self.pool.release(lease, reusable=False)
                )

            await c_find(
                lease.connection,
                self.clock,
                identifier,
                aet=self.aet,
                limit=limit,
                timeout=self.config.qido_rs.timeout_s,
                on_result=on_result,
                on_abandon=abandon,
            )

        return Deferred.fromCoroutine(self.pool.run(once))

    def retrieve(
        self, study: str, series: str | None, instance: str | None, *, sink: InstanceSink
    ) -> Deferred[RetrieveResult]:
        """C-MOVE or C-GET at the level asked for (not always the study, as DICOM-RST does)."""
        if self.receiver is not None:
            return Deferred.fromCoroutine(self._move(study, series, instance, sink))
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE" if instance else "SERIES" if series else "STUDY"
        identifier.StudyInstanceUID = study
        if series:
            identifier.SeriesInstanceUID = series
        if instance:
            identifier.SOPInstanceUID = instance

        async def once(lease: Lease) -> RetrieveResult:
            attach = getattr(sink, "attach", None)
            if attach is not None:
                attach(lease.connection.association)

            def abandon(request: Deferred[object]) -> None:
                lease.detached = True
                request.addCallbacks(
                    lambda _: self.pool.release(lease), lambda _: self.pool.release(lease, reusable=False)
                )

            get = c_get(
                lease.connection,
                self.clock,
                identifier,
                aet=self.aet,
                timeout=self.config.wado_rs.timeout_s,
                sink=sink,
                on_abandon=abandon,
            )
            try:
                return await get
            except STALE_ERRORS as e:
                if getattr(sink, "started", False) or getattr(sink, "parts", 0):
                    # Bytes already went out (a part's header is written before its
                    # data set has all arrived): a retry would send instances twice, or
                    # follow a cut-off part with whole ones in a body that ends cleanly.
                    raise UpstreamError(f"{self.aet}: association lost during C-GET: {e}") from e
                raise
            finally:
                if attach is not None:
                    # The sink must not pause (or resume) the association once it is
                    # back in the pool; if it was paused, it reads again (a C-GET that
                    # was cancelled then drains).
                    attach(None)

        return Deferred.fromCoroutine(self.pool.run(once))

    async def _move(
        self, study: str, series: str | None, instance: str | None, sink: InstanceSink
    ) -> RetrieveResult:
        receiver = self.receiver
        assert receiver is not None
        lock = self._move_lock
        if lock is not None:
            await lock.acquire()
        ops: list[MoveOperation] = []

        async def once(lease: Lease) -> RetrieveResult:
            def abandon(request: Deferred[object]) -> None:
                # The client left: the association returns to the pool once the PACS
                # confirms the C-CANCEL (or is dropped if it errs or stalls).
                lease.detached = True
                request.addCallbacks(
                    lambda _: self.pool.release(lease), lambda _: self.pool.release(lease, reusable=False)
                )

            try:
                return await c_move(
                    lease.connection,
                    self.clock,
                    aet=self.aet,
                    timeout=self.config.wado_rs.timeout_s,
                    sink=sink,
                    registry=receiver.registry,
                    destination=receiver.aet,
                    study=study,
                    series=series,
                    instance=instance,
                    on_abandon=abandon,
                    on_start=ops.append,
                )
            except STALE_ERRORS as e:
                if getattr(sink, "started", False) or getattr(sink, "parts", 0):
                    raise UpstreamError(f"{self.aet}: association lost during C-MOVE: {e}") from e
                raise

        try:
            return await self.pool.run(once)
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
        """C-STORE one STOW-RS instance (dicomrst.dimse.store has the rules)."""
        return Deferred.fromCoroutine(
            store_instance(self.pool, self.reactor, instance, timeout=self.config.stow_rs.timeout_s)
        )

    def stop(self) -> Deferred[object]:
        return self.pool.stop()

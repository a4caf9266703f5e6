# -*- test-case-name: tests.test_qido_pacs -*-
"""An AET served by a PACS over DIMSE, through one association pool."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend
from dicomrst.config import AetConfig
from dicomrst.dimse.echo import echo_scu
from dicomrst.dimse.find import c_find
from dicomrst.dimse.pool import STALE_ERRORS, AssociationPool, Lease
from dicomrst.dimse.retrieve import InstanceSink, RetrieveResult, c_get
from dicomrst.errors import UpstreamError
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
# C-GET brings its instances back on the same association, so it also carries a
# context with the SCP role for every storage SOP class pynetdicom knows (120, which
# with the four above stays under the limit of 128).  Explicit VR Little Endian comes
# first: what arrives in it streams to HTTP untouched (PS3.18 forbids Implicit VR).
STORAGE_CONTEXTS = tuple(
    ContextProposal(cx.abstract_syntax, (EXPLICIT_VR_LE, IMPLICIT_VR_LE), scu_role=True, scp_role=True)
    for cx in StoragePresentationContexts
)
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

    def __init__(self, config: AetConfig, calling_aet: str, reactor: IReactorTCP) -> None:
        assert config.host is not None and config.port is not None
        self.config = config
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
        """C-GET at the level asked for (not always the study, as DICOM-RST does)."""
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

    def stop(self) -> Deferred[object]:
        return self.pool.stop()

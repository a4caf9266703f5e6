# -*- test-case-name: tests.unit.test_dimse -*-
"""Our DIMSE listeners (``server.dimse[]``): each connection is an acceptor association."""

from __future__ import annotations

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory

from dicomrst.common.metrics import Metrics
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection, RequestHandler
from dicomrst.dimse.contexts import listener_policy
from dicomrst.dimse.echo import VERIFICATION_CONTEXT, EchoSCP
from dicomrst.dimse.move_destination import MoveStoreSCP
from dicomrst.dimse.move_registry import MoveRegistry
from dicomrst.dimse.storage_scp import ArchiveStoreSCP, OpenInstance
from dicomrst.ul.negotiation import DEFAULT_MAX_PDU, AcceptorPolicy, ContextProposal
from dicomrst.ul.protocol import DEFAULT_ARTIM_TIMEOUT, ULProtocol

#: Seconds an established association may go without a whole PDU from the peer while
#: it is the peer's turn (``server.dimse[].idle-timeout``).
DEFAULT_IDLE_TIMEOUT = 60.0


class DimseServerFactory(Factory):
    """Accepts associations called `aet`; serves C-ECHO, and whatever `handlers` add
    (C-STORE for C-MOVE sub-operations: `listener_factory`).

    Every state in which an association waits for its peer is timed: ARTIM before the
    A-ASSOCIATE-RQ is whole and after the release, `idle_timeout` in between, counted in
    whole PDUs so that a peer sending a byte a second holds nothing for long."""

    noisy = False

    def __init__(
        self,
        aet: str,
        clock: IReactorTime,
        *,
        contexts: tuple[ContextProposal, ...] = (VERIFICATION_CONTEXT,),
        handlers: dict[int, RequestHandler] | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        artim_timeout: float = DEFAULT_ARTIM_TIMEOUT,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        policy: AcceptorPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.aet = aet
        self.metrics = metrics  # counts its associations' bytes (None: metrics are off)
        self.clock = clock
        self.policy = policy or AcceptorPolicy(aet, contexts, max_pdu=max_pdu)
        self.handlers: dict[int, RequestHandler] = {commands.C_ECHO_RQ: EchoSCP(), **(handlers or {})}
        self.artim_timeout = artim_timeout
        self.idle_timeout = idle_timeout
        self.open: set[ULProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> ULProtocol:
        protocol = ULProtocol(
            self.clock,
            DimseConnection(self.clock, self.handlers),
            policy=self.policy,
            artim_timeout=self.artim_timeout,
            idle_timeout=self.idle_timeout,
            metrics=self.metrics,
        )
        self.open.add(protocol)
        protocol.whenClosed.addBoth(self._closed, protocol)
        return protocol

    def _closed(self, outcome: str, protocol: ULProtocol) -> str:
        self.open.discard(protocol)
        return outcome  # for whoever else waits on whenClosed

    def abort_all(self) -> None:
        """At shutdown: nothing we serve must outlive the process quietly."""
        for protocol in list(self.open):
            protocol.abort("gateway shutting down")


def listener_factory(
    aet: str,
    clock: IReactorTime,
    registry: MoveRegistry,
    *,
    uncompressed: bool = True,
    max_pdu: int = DEFAULT_MAX_PDU,
    artim_timeout: float = DEFAULT_ARTIM_TIMEOUT,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    store_to: tuple[str, OpenInstance] | None = None,
    allowed_callers: frozenset[str] = frozenset(),
    metrics: Metrics | None = None,
) -> DimseServerFactory:
    """A ``server.dimse[]`` listener: C-ECHO, and C-STORE for the moves in `registry`, or,
    with `store_to` (the archive AET, and how an instance is opened in it), into that
    archive (`ArchiveStoreSCP`).  Only `allowed_callers` may associate (empty: anyone).

    It takes every storage SOP class in Explicit or Implicit VR Little Endian, and the
    compressed transfer syntaxes only when `uncompressed` is false.
    """
    handler: RequestHandler
    if store_to is not None:
        handler = ArchiveStoreSCP(aet, store_to[0], store_to[1])
    else:
        handler = MoveStoreSCP(registry, aet)
    return DimseServerFactory(
        aet,
        clock,
        handlers={commands.C_STORE_RQ: handler},
        max_pdu=max_pdu,
        artim_timeout=artim_timeout,
        idle_timeout=idle_timeout,
        policy=listener_policy(aet, uncompressed, max_pdu, allowed_callers),
        metrics=metrics,
    )

# -*- test-case-name: tests.unit.test_move -*-
"""Our listeners as a C-MOVE destination: the STORE-SCP that gives each sub-operation
to the retrieve it belongs to (`dicomrst.dimse.move_registry` says how it is found).

A C-STORE that matches no active move is refused with 0x0124 (Refused: Not Authorized,
PS3.7 C.5): we did not ask for it, and saying "failed" (rather than accepting and
dropping it, as DICOM-RST does) keeps the PACS's sub-operation counts true; unlike
A7xx (out of resources) it does not invite a retry.
"""

from __future__ import annotations

import zlib

from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.common.interfaces import IDataSetConsumer
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.common.walker import PEEK_LIMIT, UIDPeeker
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.move_registry import ActiveMove, MoveRegistry
from dicomrst.dimse.retrieval import StoreReply, deliver
from dicomrst.logs import logger
from dicomrst.ul.protocol import ULProtocol

log = logger("dicomrst.move")

#: Refused: Not Authorized (PS3.7 C.5.x, a general status allowed for C-STORE).
STORE_NOT_AUTHORIZED = 0x0124


class MoveStoreSCP:
    """The C-STORE-RQ handler of one listener: each instance to its move, or refused."""

    def __init__(self, registry: MoveRegistry, aet: str) -> None:
        self.registry = registry
        self.aet = aet

    def request_received(
        self, connection: DimseConnection, message: IncomingMessage
    ) -> IDataSetConsumer | None:
        association = connection.association
        assert association is not None
        transfer_syntax = association.contexts[message.context_id].transfer_syntax
        reply = StoreReply(connection, message)
        calling = association.calling_aet
        found = self.registry.correlate(self.aet, calling, association.peer_host, message.command)
        if found.move is not None:
            return self.deliver(found.move, reply, association, transfer_syntax)
        if found.refused is not None:
            self.refuse(reply, association, found.refused)
            return None
        for move in found.candidates:
            move.activity()
        return _Correlating(self, reply, association, transfer_syntax, found.candidates)

    def deliver(
        self, move: ActiveMove, reply: StoreReply, association: ULProtocol, transfer_syntax: str
    ) -> IDataSetConsumer | None:
        move.activity()
        move.store_association(association)
        consumer = deliver(move, reply, transfer_syntax)
        if consumer is not None:
            move.delivered.add(reply.sop_instance)
        return consumer

    def refuse(self, reply: StoreReply, association: ULProtocol, why: str) -> None:
        log.warn(
            "refused C-STORE of {uid} from {calling} at {peer} on {aet} (0x{status:04X}): {why}",
            uid=reply.sop_instance,
            calling=association.calling_aet,
            peer=association.peer,
            aet=self.aet,
            status=STORE_NOT_AUTHORIZED,
            why=why,
        )
        reply.send(STORE_NOT_AUTHORIZED)


@implementer(IDataSetConsumer)
class _Correlating:
    """Holds a data set's first bytes until its Study/Series UIDs tell which move it is for,
    then hands it (held bytes first) to that move's sink, or refuses it."""

    def __init__(
        self,
        scp: MoveStoreSCP,
        reply: StoreReply,
        association: ULProtocol,
        transfer_syntax: str,
        candidates: tuple[ActiveMove, ...],
    ) -> None:
        self.scp = scp
        self.reply = reply
        self.association = association
        self.transfer_syntax = transfer_syntax
        self.candidates = candidates
        self.peeker = UIDPeeker(implicit=transfer_syntax == IMPLICIT_VR_LE)
        # A deflated data set is peeked at through an inflater; all other syntaxes we
        # accept have their top-level elements in (Explicit or Implicit VR) LE.
        deflated = transfer_syntax == DEFLATED_EXPLICIT_VR_LE
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.decided = False
        self.inner: IDataSetConsumer | None = None

    def dataReceived(self, fragment: bytes) -> None:
        if self.decided:
            if self.inner is not None:
                self.inner.dataReceived(fragment)
            return
        self.held.append(fragment)
        self.held_bytes += len(fragment)
        data = fragment
        if self.inflater is not None:
            try:
                data = self.inflater.decompress(fragment, PEEK_LIMIT)
            except zlib.error:
                data = b"\xff" * 8  # not a deflate stream: the peeker fails on it
        if self.peeker.feed(data) or self.held_bytes > PEEK_LIMIT:
            self._decide()

    def dataFinished(self) -> None:
        if not self.decided:
            self._decide()
        if self.inner is not None:
            self.inner.dataFinished()

    def dataFailed(self, reason: Failure) -> None:
        self.held = []
        if self.inner is not None:
            self.inner.dataFailed(reason)

    def _decide(self) -> None:
        self.decided = True
        held, self.held = self.held, []
        uids = self.peeker.uids
        registry = self.scp.registry
        move = registry.choose(self.candidates, self.reply.sop_instance, uids.study, uids.series)
        if move is None:
            if self.peeker.failed or not uids.study:
                why = f"its Study Instance UID could not be read ({self.peeker.failed or 'not found'})"
            else:
                why = (
                    f"no active retrieve asked for study {uids.study} series {uids.series} "
                    "(and the PACS sent no Move Originator Message ID)"
                )
            self.scp.refuse(self.reply, self.association, why)
            return
        self.inner = self.scp.deliver(move, self.reply, self.association, self.transfer_syntax)
        if self.inner is not None:
            for piece in held:
                self.inner.dataReceived(piece)

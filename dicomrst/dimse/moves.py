# -*- test-case-name: tests.test_move -*-
"""The C-MOVEs in flight, and the STORE-SCP that gives each sub-operation to its own.

A C-MOVE's instances come back on another association, which the PACS opens to one of
our ``server.dimse[]`` listeners.  Every C-STORE-RQ arriving there is matched with the
retrieve waiting for it:

* by the Move Originator Message ID (0000,1031), when the PACS sends it (with the Move
  Originator AE Title (0000,1030), which must then be our calling AE title), among the
  moves of the PACS whose AE title calls us;
* else by the UIDs: the SOP Instance UID of the command and the Study and Series Instance
  UIDs peeked from the first bytes of the data set, against those moves' identifiers.

Moves are looked for among those of the PACS that calls (the calling AE title equals the
AET of the move's PACS), or among all when that AE title has none (PACS that send their
sub-operations from another AE title).  Message IDs of moves are unique across the
registry, so two moves on two pooled associations to one PACS are never confused.

A C-STORE that matches no active move is refused with 0x0124 (Refused: Not Authorized,
PS3.7 C.5): we did not ask for it, and saying "failed" (rather than accepting and
dropping it, as DICOM-RST does) keeps the PACS's sub-operation counts true; unlike
A7xx (out of resources) it does not invite a retry.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from twisted.python.failure import Failure

from dicomrst.dimse.connection import DimseConnection, IDataSetConsumer, IncomingMessage
from dicomrst.dimse.contexts import DEFLATED_EXPLICIT_VR_LE
from dicomrst.dimse.peek import UIDPeeker
from dicomrst.dimse.retrieve import StoreReply, StoreTarget, deliver
from dicomrst.logs import logger
from dicomrst.ul.negotiation import IMPLICIT_VR_LE

log = logger("dicomrst.move")

#: Refused: Not Authorized (PS3.7 C.5.x, a general status allowed for C-STORE).
STORE_NOT_AUTHORIZED = 0x0124

#: Bytes of a data set held at most while its UIDs are looked for.
PEEK_LIMIT = 1 << 20


class ActiveMove(StoreTarget, TypingProtocol):
    """A C-MOVE waiting for its sub-operations (dicomrst.dimse.move.MoveOperation)."""

    pacs_aet: str  # the AE title the C-MOVE was sent to
    destination: str  # our listener's AE title named as Move Destination
    message_id: int
    study: str
    series: str | None
    instance: str | None
    delivered: set[str]  # SOP Instance UIDs handed to the sink

    def store_association(self, association: Any) -> None:
        """A sub-operation arrived on `association` (the response may pause it)."""


@attrs.frozen
class MoveReceiver:
    """What a backend needs to retrieve with C-MOVE: the registry, the listener's AE title
    (the Move Destination) and the transfer syntaxes that listener accepts."""

    registry: MoveRegistry
    aet: str
    transfer_syntaxes: tuple[str, ...]


@attrs.frozen
class Correlation:
    """Where a C-STORE-RQ goes: one move, one of several (by the data set's UIDs), or nowhere."""

    move: ActiveMove | None = None
    candidates: tuple[ActiveMove, ...] = ()
    refused: str | None = None


class MoveRegistry:
    """The active moves of the whole gateway, shared by the backends and the listeners."""

    def __init__(self, our_aet: str) -> None:
        self.our_aet = our_aet
        self._moves: list[ActiveMove] = []

    @property
    def active(self) -> tuple[ActiveMove, ...]:
        return tuple(self._moves)

    def message_id_taken(self, message_id: int) -> bool:
        return any(m.message_id == message_id for m in self._moves)

    def register(self, move: ActiveMove) -> None:
        if self.message_id_taken(move.message_id):
            raise ValueError(f"message ID {move.message_id} is already used by an active move")
        self._moves.append(move)

    def unregister(self, move: ActiveMove) -> None:
        if move in self._moves:
            self._moves.remove(move)

    def is_active(self, move: ActiveMove) -> bool:
        return move in self._moves

    def correlate(self, destination: str, calling_aet: str, command: Any) -> Correlation:
        """Match a C-STORE-RQ's command set, received on listener `destination` from
        `calling_aet`; the data set is not needed unless `candidates` is returned."""
        mine = [m for m in self._moves if m.destination == destination]
        if not mine:
            return Correlation(refused="no retrieve is waiting for instances")
        from_caller = [m for m in mine if m.pacs_aet == calling_aet]
        pool = from_caller or mine
        originator = str(command.get("MoveOriginatorApplicationEntityTitle") or "").strip()
        originator_id = command.get("MoveOriginatorMessageID")
        if originator and originator != self.our_aet:
            return Correlation(refused=f"its Move Originator AE Title {originator!r} is not ours")
        if originator_id is not None:
            for m in pool:
                if m.message_id == originator_id:
                    return Correlation(move=m)
            return Correlation(refused=f"no retrieve of ours is C-MOVE message {originator_id}")
        sop = str(command.get("AffectedSOPInstanceUID") or "")
        candidates = tuple(m for m in pool if m.instance is None or m.instance == sop)
        if not candidates:
            return Correlation(refused="no active retrieve asked for that instance")
        return Correlation(candidates=candidates)

    def choose(
        self, candidates: Iterable[ActiveMove], sop: str, study: str | None, series: str | None
    ) -> ActiveMove | None:
        """The first (oldest) of `candidates` still active whose identifier the instance
        matches and which has not had it yet: two retrieves of one series each get it once."""
        if not study:
            return None
        for m in candidates:
            if not self.is_active(m) or m.study != study or sop in m.delivered:
                continue
            if m.series is not None and m.series != series:
                continue
            if m.instance is not None and m.instance != sop:
                continue
            return m
        return None


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
        found = self.registry.correlate(self.aet, calling, message.command)
        if found.move is not None:
            return self.deliver(found.move, reply, association, transfer_syntax)
        if found.refused is not None:
            self.refuse(reply, calling, found.refused)
            return None
        for move in found.candidates:
            move.activity()
        return _Correlating(self, reply, association, transfer_syntax, found.candidates)

    def deliver(
        self, move: ActiveMove, reply: StoreReply, association: Any, transfer_syntax: str
    ) -> IDataSetConsumer | None:
        move.activity()
        move.store_association(association)
        consumer = deliver(move, reply, transfer_syntax)
        if consumer is not None:
            move.delivered.add(reply.sop_instance)
        return consumer

    def refuse(self, reply: StoreReply, calling: str, why: str) -> None:
        log.warn(
            "refused C-STORE of {uid} from {calling} on {aet} (0x{status:04X}): {why}",
            uid=reply.sop_instance,
            calling=calling,
            aet=self.aet,
            status=STORE_NOT_AUTHORIZED,
            why=why,
        )
        reply.send(STORE_NOT_AUTHORIZED)


class _Correlating:
    """Holds a data set's first bytes until its Study/Series UIDs tell which move it is for,
    then hands it (held bytes first) to that move's sink, or refuses it."""

    def __init__(
        self,
        scp: MoveStoreSCP,
        reply: StoreReply,
        association: Any,
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
        calling = getattr(self.association, "calling_aet", "")
        if move is None:
            if self.peeker.failed or not uids.study:
                why = f"its Study Instance UID could not be read ({self.peeker.failed or 'not found'})"
            else:
                why = (
                    f"no active retrieve asked for study {uids.study} series {uids.series} "
                    "(and the PACS sent no Move Originator Message ID)"
                )
            self.scp.refuse(self.reply, calling, why)
            return
        self.inner = self.scp.deliver(move, self.reply, self.association, self.transfer_syntax)
        if self.inner is not None:
            for piece in held:
                self.inner.dataReceived(piece)

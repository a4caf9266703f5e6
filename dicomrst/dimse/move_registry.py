# -*- test-case-name: tests.unit.test_move -*-
"""The C-MOVEs in flight, and how an incoming C-STORE-RQ is matched with one of them.

A C-MOVE's instances come back on another association, which the PACS opens to one of
our ``server.dimse[]`` listeners (`dicomrst.dimse.move_destination`).  Every C-STORE-RQ
arriving there is matched with the retrieve waiting for it:

* only among the moves whose PACS may send it: each move names its senders (by default
  the PACS itself: its AE title calling from its configured host; ``wado-rs.senders``
  for a PACS that sends from elsewhere), and the association's calling AE title and peer
  address must be one of them.  Any other node is refused, whatever UIDs or Message ID
  it carries: it cannot feed another client's response;
* then by the Move Originator Message ID (0000,1031), when the PACS sends it (with the
  Move Originator AE Title (0000,1030), which must then be our calling AE title);
* else by the UIDs: the SOP Instance UID of the command and the Study and Series Instance
  UIDs peeked from the first bytes of the data set, against those moves' identifiers.

Message IDs of moves are unique across the registry, so two moves on two pooled
associations to one PACS are never confused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Protocol as TypingProtocol

import attrs

from dicomrst.common.addresses import Network, in_networks
from dicomrst.dimse.commands import Command
from dicomrst.dimse.retrieval import StoreTarget
from dicomrst.ul.protocol import ULProtocol


@functools.lru_cache(maxsize=256)
def _in_networks(peer_host: str, networks: tuple[Network, ...]) -> bool:
    # Asked for every C-STORE of every move, from the same few peers: parsing the address
    # each time was 4% of the reactor's work per sub-operation (sampled, CT study).
    return in_networks(peer_host, networks)


@attrs.frozen
class Sender:
    """A node that may deliver a move's sub-operations: the calling AE title it uses and
    the networks it connects from (its addresses, resolved at startup)."""

    aet: str
    networks: tuple[Network, ...]

    def allows(self, calling_aet: str, peer_host: str) -> bool:
        return calling_aet == self.aet and _in_networks(peer_host, self.networks)

    def describe(self) -> str:
        return f"{self.aet} from {', '.join(str(n) for n in self.networks)}"


class ActiveMove(StoreTarget, TypingProtocol):
    """A C-MOVE waiting for its sub-operations (dicomrst.dimse.move.MoveOperation)."""

    pacs_aet: str  # the AE title the C-MOVE was sent to
    senders: tuple[Sender, ...]  # who may deliver its sub-operations
    destination: str  # our listener's AE title named as Move Destination
    message_id: int
    study: str
    series: str | None
    instance: str | None
    delivered: set[str]  # SOP Instance UIDs handed to the sink

    def store_association(self, association: ULProtocol) -> None:
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

    def correlate(self, destination: str, calling_aet: str, peer_host: str, command: Command) -> Correlation:
        """Match a C-STORE-RQ's command set, received on listener `destination` from
        `calling_aet` at `peer_host`; the data set is not needed unless `candidates` is
        returned."""
        mine = [m for m in self._moves if m.destination == destination]
        if not mine:
            return Correlation(refused="no retrieve is waiting for instances")
        pool = [m for m in mine if any(s.allows(calling_aet, peer_host) for s in m.senders)]
        if not pool:
            expected = sorted({s.describe() for m in mine for s in m.senders})
            return Correlation(
                refused=f"no running retrieve asked {calling_aet} at {peer_host or 'an unknown address'} "
                f"(they expect {'; '.join(expected)})"
            )
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

"""The move-* profiles of the pynetdicom PACS: a Study Root C-MOVE SCP serving the generated
instances of the get-* profiles to the C-MOVE's destination, on an association it requests."""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom import AE, evt

from tests.support.pacs.datasets import CT_IMAGE_STORAGE, GET_UID_ROOT, UNPROPOSED_SOP_CLASS
from tests.support.pacs.get import GetSCP
from tests.support.pacs.profiles import (
    Counter,
    Profile,
    assoc_fields,
    assoc_number,
    profile,
    stall_until_gone,
)

# The move-* profiles serve the instances of the get-* profiles (`get_instance`: study
# `get_study_uid()`, `series` x `instances`, `rows` x `columns`) to the C-MOVE's Move
# Destination, looked up in `destinations` ({AET: [host, port]}, as a PACS has them configured;
# an AET not listed is answered A801, Move Destination unknown). The sub-operations go on an
# association this peer requests from the destination (pynetdicom's own C-MOVE SCP machinery,
# with `associate` replaced on the AE so the profile chooses what it looks like):
#   calling_aet       (default: our AET) the calling AE title of the sub-operation association
#   transfer_syntaxes (default Explicit then Implicit VR LE) proposed for the storage contexts
#   omit_originator   (false) send the C-STORE-RQs without Move Originator AE Title/Message ID
#                     (else they carry the C-MOVE requestor's calling AET and the C-MOVE's ID)
# Options shared with get-*: series, instances, rows, columns, delay (s before each C-STORE),
# healthy, times (which C-MOVEs misbehave).
#
# Besides the common events (for the C-MOVE associations this peer accepts) they log:
#   c_move      (message_id, level, study, series, sop, destination, matches, n)
#   move_rsp    (status, remaining, completed, failed, warning): each C-MOVE-RSP as sent
#   move_done   (message_id, sent, status): the handler's last word
#   c_cancel    (message_id), move_cancelled (message_id, sent)
#   store_start / store_done (message_id, index, sop), as for get-*
#   sub_requested (calling_aet, called_aet, host, port, contexts), sub_accepted (accepted_contexts),
#   sub_rejected, sub_released, sub_aborted, sub_open / sub_close (count, max: open
#   sub-operation associations): the association to the destination
#   store_rq    (sop, message_id, originator_aet, originator_id): a C-STORE-RQ as sent
#   store_rsp   (status, sop): a C-STORE-RSP from the destination (what its SCP answered)
#   assoc_count (count, max): open C-MOVE connections to this peer

MOVE_PDU = 16384


class _MoveSCP(GetSCP):
    """The shared parts of the move-* profiles (matching, instances and sub-operations as
    `GetSCP`)."""

    kind = "move"

    def __init__(self, p: Profile) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        super().__init__(p)
        self.moves = 0
        self.destinations = {
            str(k): (str(v[0]), int(v[1])) for k, v in p.options.get("destinations", {}).items()
        }
        self.sub_syntaxes = [
            str(ts)
            for ts in p.options.get("transfer_syntaxes", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ]
        self.omit_originator = bool(p.options.get("omit_originator", False))
        self.sub_counter = Counter()
        self.local = threading.local()
        # Our own C-MOVE associations plus one sub-operation association each, in parallel.
        p.ae.maximum_associations = 64
        self.sub_ae = AE(ae_title=str(p.options.get("calling_aet", p.ae.ae_title)))
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(self.sub_ae, name, getattr(p.ae, name))
        self.sub_ae.maximum_associations = 64
        # pynetdicom's C-MOVE SCP calls `self.ae.associate(host, port, ae_title=destination)`:
        # an instance attribute takes the method's place.
        p.ae.associate = self._associate  # type: ignore[method-assign]

    def _sub_fields(self, assoc: Any) -> dict[str, Any]:
        return {"sub": assoc_number(assoc)}

    def _associate(self, addr: str, port: int, **kwargs: Any) -> Any:
        from pynetdicom.presentation import build_context

        called = str(kwargs.pop("ae_title", "ANY-SCP"))
        contexts = [build_context(CT_IMAGE_STORAGE, self.sub_syntaxes)]
        log = self.p.log

        def fields(event: evt.Event) -> dict[str, Any]:
            return self._sub_fields(event.assoc)

        def on_open(event: evt.Event) -> None:
            count, most = self.sub_counter.opened()
            log.write("sub_open", count=count, max=most, **fields(event))

        def on_close(event: evt.Event) -> None:
            count, most = self.sub_counter.closed()
            log.write("sub_close", count=count, max=most, **fields(event))

        def on_accepted(event: evt.Event) -> None:
            log.write(
                "sub_accepted",
                accepted_contexts=[
                    {
                        "abstract_syntax": str(cx.abstract_syntax),
                        "transfer_syntax": str(cx.transfer_syntax[0]),
                    }
                    for cx in event.assoc.accepted_contexts
                ],
                **fields(event),
            )

        def on_sent(event: evt.Event) -> None:
            message = event.message
            if type(message).__name__ == "C_STORE_RQ":
                command = message.command_set
                originator = command.get("MoveOriginatorApplicationEntityTitle")
                originator_id = command.get("MoveOriginatorMessageID")
                log.write(
                    "store_rq",
                    sop=str(command.AffectedSOPInstanceUID),
                    message_id=int(command.MessageID),
                    originator_aet=str(originator).strip() or None if originator is not None else None,
                    originator_id=None if originator_id is None else int(originator_id),
                    **fields(event),
                )

        def on_recv(event: evt.Event) -> None:
            message = event.message
            if type(message).__name__ == "C_STORE_RSP":
                command = message.command_set
                log.write(
                    "store_rsp",
                    status=int(command.Status),
                    sop=str(command.get("AffectedSOPInstanceUID", "")),
                    **fields(event),
                )

        handlers = [
            (evt.EVT_CONN_OPEN, on_open),
            (evt.EVT_CONN_CLOSE, on_close),
            (evt.EVT_ACCEPTED, on_accepted),
            (evt.EVT_REJECTED, lambda event: log.write("sub_rejected", **fields(event))),
            (evt.EVT_RELEASED, lambda event: log.write("sub_released", **fields(event))),
            (evt.EVT_ABORTED, lambda event: log.write("sub_aborted", **fields(event))),
            (evt.EVT_DIMSE_SENT, on_sent),
            (evt.EVT_DIMSE_RECV, on_recv),
        ]
        log.write(
            "sub_requested",
            calling_aet=self.sub_ae.ae_title,
            called_aet=called,
            host=addr,
            port=port,
            contexts=[{"abstract_syntax": CT_IMAGE_STORAGE, "transfer_syntaxes": self.sub_syntaxes}],
        )
        assoc = self.sub_ae.associate(
            addr, port, contexts=contexts, ae_title=called, max_pdu=MOVE_PDU, evt_handlers=handlers
        )
        send = assoc.send_c_store
        requestor = getattr(self.local, "requestor", None)

        def send_c_store(
            dataset: Any, msg_id: int = 1, priority: int = 2, originator_id: int | None = None, **_: Any
        ) -> Any:
            if self.omit_originator:
                return send(dataset, msg_id=msg_id, priority=priority)
            # PS3.7 9.1.1.1.6: the AE that invoked the C-MOVE, i.e. our requestor (pynetdicom
            # 3.0 would put our own AE title there).
            return send(
                dataset,
                msg_id=msg_id,
                priority=priority,
                originator_aet=requestor,
                originator_id=originator_id,
            )

        assoc.send_c_store = send_c_store  # type: ignore[method-assign]
        # The handler runs on this thread (the C-MOVE's association thread): let it find
        # the sub-operation association.
        self.local.sub_assoc = assoc
        return assoc

    def sub_assoc(self) -> Any:
        return getattr(self.local, "sub_assoc", None)

    def _dimse_sent(self, event: evt.Event) -> None:
        message = event.message
        if type(message).__name__ == "C_MOVE_RSP":
            command = message.command_set
            counts = {
                name: int(command[keyword].value)
                for name, keyword in (
                    ("remaining", "NumberOfRemainingSuboperations"),
                    ("completed", "NumberOfCompletedSuboperations"),
                    ("failed", "NumberOfFailedSuboperations"),
                    ("warning", "NumberOfWarningSuboperations"),
                )
                if keyword in command and command[keyword].value is not None
            }
            self.p.log.write("move_rsp", status=int(command.Status), **counts, **assoc_fields(event))

    def destination(self, event: evt.Event) -> tuple[Any, Any]:
        return self.destinations.get(str(event.move_destination).strip(), (None, None))

    def begin(self, event: evt.Event) -> tuple[list[tuple[int, int]], bool]:  # type: ignore[override]
        """Log the C-MOVE; (its matches, whether this one should misbehave)."""
        self.local.sub_assoc = None
        self.local.requestor = str(event.assoc.requestor.ae_title).strip()
        self.moves += 1
        n = self.moves
        identifier = event.identifier
        found = self.matches(identifier)
        self.p.log.write(
            "c_move",
            message_id=int(event.request.MessageID),
            level=str(identifier.get("QueryRetrieveLevel", "")),
            study=str(identifier.get("StudyInstanceUID", "") or ""),
            series=str(identifier.get("SeriesInstanceUID", "") or ""),
            sop=str(identifier.get("SOPInstanceUID", "") or ""),
            destination=str(event.move_destination).strip(),
            matches=len(found),
            n=n,
            **assoc_fields(event),
        )
        faulty = n > self.healthy and (self.times is None or n <= self.healthy + self.times)
        return found, faulty


    def head(self, event: evt.Event, found: list[tuple[int, int]], count: int | None = None) -> Any:
        """The first two yields: the destination, then the number of sub-operations. Returns
        False when pynetdicom answers by itself from here on (A801 or no match)."""
        destination = self.destination(event)
        if destination[0] is None:
            self.p.log.write("unknown_destination", destination=str(event.move_destination).strip())
            self.done(event, 0, 0xA801)
        yield destination
        if destination[0] is None:
            return False
        yield len(found) if count is None else count
        return bool(found) or (count or 0) > 0

    def answer(self, event: evt.Event, found: list[tuple[int, int]]) -> Any:
        """Serve like the `move` profile (pynetdicom sends the final response itself)."""
        if not (yield from self.head(event, found)):
            return
        sent = yield from self.send(event, found)
        if sent is not None:
            self.done(event, sent, 0x0000)


@profile("move")
def _profile_move(p: Profile) -> None:
    """Study Root C-MOVE SCP: every matching instance as a C-STORE sub-operation to the Move
    Destination (`delay`, 0 s, before each), then Success; a C-CANCEL seen between
    sub-operations ends it with Cancel. A destination not in `destinations` gets A801."""
    scp = _MoveSCP(p)

    def on_move(event: evt.Event) -> Any:
        found, _ = scp.begin(event)
        yield from scp.answer(event, found)

    p.on(evt.EVT_C_MOVE, on_move)


@profile("move-no-originator")
def _profile_move_no_originator(p: Profile) -> None:
    """`move` whose C-STORE-RQs carry no Move Originator AE Title / Message ID."""
    p.options["omit_originator"] = True
    _profile_move(p)


@profile("move-other-aet")
def _profile_move_other_aet(p: Profile) -> None:
    """`move` whose sub-operation association has another calling AE title (`calling_aet`,
    default PYSTORE) than this peer's own."""
    p.options.setdefault("calling_aet", "PYSTORE")
    _profile_move(p)


@profile("move-implicit")
def _profile_move_implicit(p: Profile) -> None:
    """`move` proposing only Implicit VR Little Endian for the sub-operations."""
    p.options.setdefault("transfer_syntaxes", ["1.2.840.10008.1.2"])
    _profile_move(p)


@profile("move-warning")
def _profile_move_warning(p: Profile) -> None:
    """`move` plus one sub-operation (after the first good instance) that fails: an instance
    of a SOP class with no proposed context, which cannot be sent. Final status Warning B000
    with one failed sub-operation (pynetdicom counts and answers it)."""
    scp = _MoveSCP(p)

    def on_move(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty or not found:
            yield from scp.answer(event, found)
            return
        if not (yield from scp.head(event, found, len(found) + 1)):
            return
        sent = yield from scp.send(event, found[:1])
        if sent is None:
            return
        bad = scp.instance(*found[0])
        bad.SOPClassUID = UNPROPOSED_SOP_CLASS
        bad.SOPInstanceUID = f"{GET_UID_ROOT}.4.1"
        bad.file_meta.MediaStorageSOPClassUID = UNPROPOSED_SOP_CLASS
        bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        p.log.write("store_unsendable", sop=str(bad.SOPInstanceUID), **assoc_fields(event))
        yield 0xFF00, bad
        rest = yield from scp.send(event, found, start=1)
        if rest is not None:
            scp.done(event, len(found), 0xB000)

    p.on(evt.EVT_C_MOVE, on_move)


@profile("move-fail")
def _profile_move_fail(p: Profile) -> None:
    """`ok_before` (1) sub-operations, then the failure `status` (0xA702; 0xC000 too) as the
    final response."""
    scp = _MoveSCP(p)
    ok_before = int(p.options.get("ok_before", 1))
    status = int(p.options.get("status", 0xA702))

    def on_move(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        if not (yield from scp.head(event, found, max(len(found), 1))):
            return
        sent = yield from scp.send(event, found[:ok_before])
        if sent is not None:
            scp.done(event, sent, status)
            yield status, None

    p.on(evt.EVT_C_MOVE, on_move)


@profile("move-late-final")
def _profile_move_late_final(p: Profile) -> None:
    """`move`, but after the last C-STORE the sub-operation association is released and the
    final C-MOVE-RSP (Success) waits `final_delay` (1.0) s more."""
    scp = _MoveSCP(p)
    final_delay = float(p.options.get("final_delay", 1.0))

    def on_move(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        if not (yield from scp.head(event, found)):
            return
        sent = yield from scp.send(event, found)
        if sent is None:
            return
        sub = scp.sub_assoc()
        if sub is not None:
            sub.release()
        p.log.write("final_delayed", message_id=int(event.request.MessageID), seconds=final_delay)
        time.sleep(final_delay)
        scp.done(event, sent, 0x0000)

    p.on(evt.EVT_C_MOVE, on_move)


@profile("move-abort")
def _profile_move_abort(p: Profile) -> None:
    """A-ABORT after `ok_before` (1) complete sub-operations: of the C-MOVE association and of
    the sub-operation association (`which`: "both", default; "move"; "store")."""
    scp = _MoveSCP(p)
    ok_before = int(p.options.get("ok_before", 1))
    which = str(p.options.get("which", "both"))

    def on_move(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        if not (yield from scp.head(event, found)):
            return
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        fields = assoc_fields(event)
        p.log.write("abort_sent", message_id=int(event.request.MessageID), sent=sent, which=which, **fields)
        sub = scp.sub_assoc()
        if which in ("both", "store") and sub is not None:
            sub.abort()
        if which in ("both", "move"):
            event.assoc.abort()
        else:
            # The C-MOVE association stays: say how it ended.
            yield 0xA702, None

    p.on(evt.EVT_C_MOVE, on_move)


@profile("move-stall")
def _profile_move_stall(p: Profile) -> None:
    """Accept the C-MOVE and never answer (after `ok_before`, default 0, sub-operations); the
    handler waits until the requestor aborts or the connection goes (``stalling``, then
    ``stall_ended`` with ``reason``)."""
    scp = _MoveSCP(p)
    ok_before = int(p.options.get("ok_before", 0))
    p.ae.network_timeout = None
    p.ae.dimse_timeout = None

    def on_move(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        if ok_before == 0:
            # Before the destination is even named: no sub-operation association at all.
            stall_until_gone(p, event)
            return
        if not (yield from scp.head(event, found, max(len(found), 1))):
            return
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        stall_until_gone(p, event)

    p.on(evt.EVT_C_MOVE, on_move)


"""The find-* profiles of the pynetdicom PACS: a Study Root C-FIND SCP that misbehaves on demand."""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.support.pacs.profiles import Counter, Profile, assoc_fields, profile, stall_until_gone

# Every find-* profile accepts Verification and Study Root FIND/MOVE/GET (what dicomrst's pool
# proposes) and logs, besides the common events:
#   c_find      (message_id, level = the identifier's QueryRetrieveLevel, patient_id, n = the
#                n-th C-FIND this process served, 1, 2, ...)
#   c_cancel    (message_id = MessageIDBeingRespondedTo), as soon as the C-CANCEL-RQ arrives
#   find_cancelled (message_id, sent): the handler saw the cancel and answered 0xFE00
#   find_done   (message_id, sent, status): the handler's last word
#   assoc_count (count, max): open connections to this peer (TCP, counted at conn open/close)
# The faulty profiles misbehave on their first `times` C-FINDs (default 1; null = always) and
# answer the later ones like `find`.

FIND_UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def _find_match(identifier: Dataset, index: int) -> Dataset:
    """Match `index` for `identifier`: its level, its unique keys when given, made-up ones else."""
    level = str(identifier.get("QueryRetrieveLevel", "STUDY") or "STUDY")

    def given(keyword: str, default: str) -> str:
        value = str(identifier.get(keyword, "") or "")
        return value if value and not any(c in value for c in "*?\\") else default

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = given("PatientID", f"PID{index + 1}")
    ds.PatientName = f"Find^Match{index + 1}"
    ds.StudyInstanceUID = given("StudyInstanceUID", f"{FIND_UID_ROOT}.1.{index + 1}")
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = given("SeriesInstanceUID", f"{FIND_UID_ROOT}.2.{index + 1}")
        ds.Modality = "OT"
    if level == "IMAGE":
        ds.SOPInstanceUID = f"{FIND_UID_ROOT}.3.{index + 1}"
    return ds


class _FindSCP:
    """The shared parts of the find-* profiles."""

    def __init__(self, p: Profile) -> None:
        self.p = p
        self.counter = Counter()
        self.matches = int(p.options.get("matches", 5))
        self.delay = float(p.options.get("delay", 0))
        times = p.options.get("times", 1)
        self.times = None if times is None else int(times)
        for context in (
            Verification,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            p.ae.add_supported_context(context)
        p.on(evt.EVT_CONN_OPEN, self._conn_open)
        p.on(evt.EVT_CONN_CLOSE, self._conn_close)
        p.on(evt.EVT_DIMSE_RECV, self._dimse_recv)

    def _conn_open(self, event: evt.Event) -> None:
        count, most = self.counter.opened()
        self.p.log.write("assoc_count", count=count, max=most, **assoc_fields(event))

    def _conn_close(self, event: evt.Event) -> None:
        count, most = self.counter.closed()
        self.p.log.write("assoc_count", count=count, max=most, **assoc_fields(event))

    def _dimse_recv(self, event: evt.Event) -> None:
        message = event.message
        if type(message).__name__ == "C_CANCEL_RQ":
            self.p.log.write(
                "c_cancel",
                message_id=int(message.command_set.MessageIDBeingRespondedTo),
                **assoc_fields(event),
            )

    def begin(self, event: evt.Event) -> tuple[int, bool]:
        """Log the C-FIND; (its number, whether this one should misbehave)."""
        n = self.counter.next_find()
        identifier = event.identifier
        self.p.log.write(
            "c_find",
            message_id=int(event.request.MessageID),
            level=str(identifier.get("QueryRetrieveLevel", "")),
            patient_id=str(identifier.get("PatientID", "")),
            n=n,
            **assoc_fields(event),
        )
        return n, self.times is None or n <= self.times

    def done(self, event: evt.Event, sent: int, status: int) -> None:
        self.p.log.write(
            "find_done",
            message_id=int(event.request.MessageID),
            sent=sent,
            status=status,
            **assoc_fields(event),
        )

    def pending(self, event: evt.Event, count: int) -> Any:
        """Yield up to `count` matches; stop with 0xFE00 at a C-CANCEL. Returns how many went."""
        identifier = event.identifier
        for i in range(count):
            if self.delay:
                time.sleep(self.delay)
            if event.is_cancelled:
                self.p.log.write(
                    "find_cancelled",
                    message_id=int(event.request.MessageID),
                    sent=i,
                    **assoc_fields(event),
                )
                self.done(event, i, 0xFE00)
                yield 0xFE00, None
                return None
            yield 0xFF00, _find_match(identifier, i)
        return count

    def answer(self, event: evt.Event) -> Any:
        """Answer like the `find` profile: `matches` pendings, then Success."""
        sent = yield from self.pending(event, self.matches)
        if sent is not None:
            self.done(event, sent, 0x0000)


@profile("find")
def _profile_find(p: Profile) -> None:
    """Study Root C-FIND SCP: `matches` (5) Pending matches `delay` (0) s apart, then Success;
    a C-CANCEL seen between matches ends it with Cancel (0xFE00)."""
    scp = _FindSCP(p)

    def on_find(event: evt.Event) -> Any:
        scp.begin(event)
        yield from scp.answer(event)

    p.on(evt.EVT_C_FIND, on_find)


@profile("find-slow")
def _profile_find_slow(p: Profile) -> None:
    """`find` with `delay` (default 0.1) s per match: for pool concurrency (see assoc_count)."""
    p.options.setdefault("delay", 0.1)
    _profile_find(p)


@profile("find-fail")
def _profile_find_fail(p: Profile) -> None:
    """`ok_before` (2) Pending matches, then the failure `status` (0xC000)."""
    scp = _FindSCP(p)
    ok_before = int(p.options.get("ok_before", 2))
    status = int(p.options.get("status", 0xC000))

    def on_find(event: evt.Event) -> Any:
        _, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event)
            return
        sent = yield from scp.pending(event, ok_before)
        if sent is not None:
            scp.done(event, sent, status)
            yield status, None

    p.on(evt.EVT_C_FIND, on_find)


@profile("find-stall")
def _profile_find_stall(p: Profile) -> None:
    """Accept the C-FIND and never answer (after `ok_before`, default 0, matches).

    The handler waits until the requestor aborts or the connection goes (logs ``stalling``,
    then ``stall_ended`` with ``reason``); a C-CANCEL does not end the stall (it is logged as
    ``c_cancel`` all the same).
    """
    scp = _FindSCP(p)
    ok_before = int(p.options.get("ok_before", 0))
    # Our own timers must not end the stall first.
    p.ae.network_timeout = None
    p.ae.dimse_timeout = None

    def on_find(event: evt.Event) -> Any:
        _, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event)
            return
        sent = yield from scp.pending(event, ok_before)
        if sent is None:
            return
        stall_until_gone(p, event)

    p.on(evt.EVT_C_FIND, on_find)


@profile("find-abort")
def _profile_find_abort(p: Profile) -> None:
    """A-ABORT the association during a C-FIND, after `ok_before` (2) Pending matches."""
    scp = _FindSCP(p)
    ok_before = int(p.options.get("ok_before", 2))

    def on_find(event: evt.Event) -> Any:
        _, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event)
            return
        sent = yield from scp.pending(event, ok_before)
        if sent is None:
            return
        p.log.write("abort_sent", message_id=int(event.request.MessageID), sent=sent, **assoc_fields(event))
        event.assoc.abort()

    p.on(evt.EVT_C_FIND, on_find)


@profile("find-idle-close")
def _profile_find_idle_close(p: Profile) -> None:
    """`find`, but an association idle for `idle_close` (1.0) s is ended by this peer:
    `close` "abort" (default, A-ABORT) or "release" (A-RELEASE-RQ). pynetdicom's network
    timeout does it, and the common ``aborted`` / ``released`` events record it."""
    scp = _FindSCP(p)
    p.ae.network_timeout = float(p.options.get("idle_close", 1.0))
    close = str(p.options.get("close", "abort"))
    if close not in ("abort", "release"):
        raise SystemExit(f"find-idle-close: close must be 'abort' or 'release', got {close!r}")

    def on_accepted(event: evt.Event) -> None:
        if close == "release":
            event.assoc.network_timeout_response = "A-RELEASE"

    def on_find(event: evt.Event) -> Any:
        scp.begin(event)
        yield from scp.answer(event)

    p.on(evt.EVT_ACCEPTED, on_accepted)
    p.on(evt.EVT_C_FIND, on_find)


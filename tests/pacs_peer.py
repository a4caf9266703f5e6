"""A scriptable pynetdicom peer for integration tests, run as a subprocess.

pynetdicom's runtime is threaded and blocking, so it never runs inside the trial process; the test
harness (``tests/peers.py``) starts this file with ``sys.executable`` and talks to it through its
stdout and a JSON-lines log.

SCP mode (default)::

    python tests/pacs_peer.py --profile echo --aet PYNETDICOM --port 0 --max-pdu 16384 --log FILE \
        [--opt key=json-value ...]

prints ``READY <port>`` on stdout once the socket listens, then serves until killed (SIGTERM).

SCU mode::

    python tests/pacs_peer.py --scu-echo --host 127.0.0.1 --port P --called-aet X --aet Y

prints one JSON object on stdout: ``{"outcome": "accepted", "status": 0}`` or
``{"outcome": "rejected" | "aborted" | "timeout" | "no-context" | "no-response" |
"connect-failed", ...}`` (``rejected`` adds ``result``, ``source``, ``diagnostic``).

Profiles live in ``PROFILES`` (name -> setup function). A setup function receives a ``Profile`` and
adds supported contexts to ``profile.ae`` and intervention handlers to ``profile.handlers``. The
notification handlers that write the log are bound for every profile.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

# ---------------------------------------------------------------------------------------------
# JSON-lines event log


class EventLog:
    """Thread-safe JSON-lines writer (pynetdicom calls handlers from association threads)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        if self._stream is None:
            return
        record = {"t": round(time.time(), 6), "event": event, **fields}
        line = json.dumps(record, default=str, sort_keys=True)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


_assoc_numbers: dict[int, int] = {}
_assoc_numbers_lock = threading.Lock()


def _assoc_number(assoc: Any) -> int:
    """A small per-process number for an association, stable across its events (1, 2, ...)."""
    with _assoc_numbers_lock:
        number = getattr(assoc, "_pacs_peer_number", None)
        if number is None:
            number = len(_assoc_numbers) + 1
            _assoc_numbers[id(assoc)] = number
            assoc._pacs_peer_number = number
        return number


def _assoc_fields(event: evt.Event) -> dict[str, Any]:
    assoc = event.assoc
    return {
        "assoc": _assoc_number(assoc),
        "peer_address": assoc.requestor.address,
        "peer_port": assoc.requestor.port,
    }


def _logging_handlers(log: EventLog) -> list[tuple[evt.EventType, Callable[..., Any]]]:
    """Notification handlers that record what this peer observed."""

    def on_conn_open(event: evt.Event) -> None:
        log.write("conn_open", **_assoc_fields(event))

    def on_conn_close(event: evt.Event) -> None:
        log.write("conn_close", **_assoc_fields(event))

    def on_requested(event: evt.Event) -> None:
        rq = event.assoc.requestor.primitive
        log.write(
            "requested",
            calling_aet=rq.calling_ae_title,
            called_aet=rq.called_ae_title,
            peer_max_pdu=rq.maximum_length_received,
            contexts=[
                {
                    "id": cx.context_id,
                    "abstract_syntax": str(cx.abstract_syntax),
                    "transfer_syntaxes": [str(ts) for ts in cx.transfer_syntax],
                }
                for cx in rq.presentation_context_definition_list
            ],
            **_assoc_fields(event),
        )

    def on_accepted(event: evt.Event) -> None:
        assoc = event.assoc
        log.write(
            "accepted",
            peer_max_pdu=assoc.requestor.maximum_length,
            our_max_pdu=assoc.acceptor.maximum_length,
            accepted_contexts=[
                {
                    "id": cx.context_id,
                    "abstract_syntax": str(cx.abstract_syntax),
                    "transfer_syntax": str(cx.transfer_syntax[0]),
                }
                for cx in assoc.accepted_contexts
            ],
            rejected_contexts=[
                {"id": cx.context_id, "abstract_syntax": str(cx.abstract_syntax), "result": cx.result}
                for cx in assoc.rejected_contexts
            ],
            **_assoc_fields(event),
        )

    def on_rejected(event: evt.Event) -> None:
        log.write("rejected", **_assoc_fields(event))

    def on_released(event: evt.Event) -> None:
        log.write("released", **_assoc_fields(event))

    def on_aborted(event: evt.Event) -> None:
        log.write("aborted", **_assoc_fields(event))

    def on_pdu_recv(event: evt.Event) -> None:
        pdu = event.pdu
        if isinstance(pdu, P_DATA_TF):
            # pdu_length is the PDU's variable-field length: what the Maximum Length Received
            # sub-item bounds (PS3.8 D.1). pdv_lengths are the PDV item lengths inside it.
            log.write(
                "pdata_recv",
                pdu_length=pdu.pdu_length,
                pdv_lengths=[len(item) - 4 for item in pdu.presentation_data_value_items],
                **_assoc_fields(event),
            )

    def on_dimse_recv(event: evt.Event) -> None:
        message = event.message
        log.write(
            "dimse_recv",
            message=type(message).__name__,
            context_id=message.context_id,
            **_assoc_fields(event),
        )

    return [
        (evt.EVT_CONN_OPEN, on_conn_open),
        (evt.EVT_CONN_CLOSE, on_conn_close),
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_REJECTED, on_rejected),
        (evt.EVT_RELEASED, on_released),
        (evt.EVT_ABORTED, on_aborted),
        (evt.EVT_PDU_RECV, on_pdu_recv),
        (evt.EVT_DIMSE_RECV, on_dimse_recv),
    ]


# ---------------------------------------------------------------------------------------------
# Profiles


class Profile:
    """What a profile setup function gets: the AE to configure, handlers to extend, the log."""

    def __init__(self, ae: AE, log: EventLog, options: dict[str, Any]) -> None:
        self.ae = ae
        self.log = log
        self.options = options
        self.handlers: list[tuple[evt.EventType, Callable[..., Any]]] = []

    def on(self, event_type: evt.EventType, handler: Callable[..., Any]) -> None:
        self.handlers.append((event_type, handler))


PROFILES: dict[str, Callable[[Profile], None]] = {}


def profile(name: str) -> Callable[[Callable[[Profile], None]], Callable[[Profile], None]]:
    def register(setup: Callable[[Profile], None]) -> Callable[[Profile], None]:
        PROFILES[name] = setup
        return setup

    return register


def _echo_logged(p: Profile, event: evt.Event) -> None:
    p.log.write("c_echo", message_id=event.request.MessageID, **_assoc_fields(event))


@profile("echo")
def _profile_echo(p: Profile) -> None:
    """Verification SCP answering Success."""
    p.ae.add_supported_context(Verification)

    def on_echo(event: evt.Event) -> int:
        _echo_logged(p, event)
        return int(p.options.get("status", 0x0000))

    p.on(evt.EVT_C_ECHO, on_echo)


@profile("reject")
def _profile_reject(p: Profile) -> None:
    """Reject every association: rejected-permanent, service-user, called AE title not recognised."""
    p.ae.add_supported_context(Verification)
    result = int(p.options.get("result", 0x01))
    source = int(p.options.get("source", 0x01))
    diagnostic = int(p.options.get("diagnostic", 0x07))

    def on_requested(event: evt.Event) -> None:
        # Same path as pynetdicom's own rejections (acse._negotiate_as_acceptor): send the
        # A-ASSOCIATE-RJ, then kill(), which waits until the DUL is back in Sta1.
        event.assoc.acse.send_reject(result, source, diagnostic)
        p.log.write("rejected", result=result, source=source, diagnostic=diagnostic, **_assoc_fields(event))
        event.assoc.kill()

    p.on(evt.EVT_REQUESTED, on_requested)


@profile("abort")
def _profile_abort(p: Profile) -> None:
    """Accept, then A-ABORT on the first C-ECHO-RQ."""
    p.ae.add_supported_context(Verification)

    def on_echo(event: evt.Event) -> int:
        _echo_logged(p, event)
        p.log.write("abort_sent", **_assoc_fields(event))
        event.assoc.abort()
        return 0x0000

    p.on(evt.EVT_C_ECHO, on_echo)


@profile("stall")
def _profile_stall(p: Profile) -> None:
    """Accept, but never answer C-ECHO: the handler blocks until the process exits."""
    p.ae.add_supported_context(Verification)
    # Nothing sets it: the process is stopped by SIGTERM (default action) while handlers wait.
    never = threading.Event()
    # Our own timers must not end the stall first.
    p.ae.network_timeout = None
    p.ae.dimse_timeout = None

    def on_echo(event: evt.Event) -> int:
        _echo_logged(p, event)
        p.log.write("stalling", **_assoc_fields(event))
        never.wait()
        return 0x0000

    p.on(evt.EVT_C_ECHO, on_echo)


@profile("no-echo")
def _profile_no_echo(p: Profile) -> None:
    """Accept associations but support no Verification context: an echo context is rejected."""
    # pynetdicom refuses to serve with no supported context at all.
    p.ae.add_supported_context(CTImageStorage)


# ---------------------------------------------------------------------------------------------
# Query/Retrieve profiles: a Study Root C-FIND SCP that misbehaves on demand
#
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


class _Counter:
    """Thread-safe counters shared by one peer's association threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finds = 0
        self.open = 0
        self.max_open = 0

    def next_find(self) -> int:
        with self._lock:
            self.finds += 1
            return self.finds

    def opened(self) -> tuple[int, int]:
        with self._lock:
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            return self.open, self.max_open

    def closed(self) -> tuple[int, int]:
        with self._lock:
            self.open -= 1
            return self.open, self.max_open


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
        self.counter = _Counter()
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
        self.p.log.write("assoc_count", count=count, max=most, **_assoc_fields(event))

    def _conn_close(self, event: evt.Event) -> None:
        count, most = self.counter.closed()
        self.p.log.write("assoc_count", count=count, max=most, **_assoc_fields(event))

    def _dimse_recv(self, event: evt.Event) -> None:
        message = event.message
        if type(message).__name__ == "C_CANCEL_RQ":
            self.p.log.write(
                "c_cancel",
                message_id=int(message.command_set.MessageIDBeingRespondedTo),
                **_assoc_fields(event),
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
            **_assoc_fields(event),
        )
        return n, self.times is None or n <= self.times

    def done(self, event: evt.Event, sent: int, status: int) -> None:
        self.p.log.write(
            "find_done",
            message_id=int(event.request.MessageID),
            sent=sent,
            status=status,
            **_assoc_fields(event),
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
                    **_assoc_fields(event),
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
        fields = _assoc_fields(event)
        p.log.write("stalling", message_id=int(event.request.MessageID), **fields)
        assoc = event.assoc
        while True:
            # The DUL thread queues A-ABORT / A-P-ABORT (connection gone) for the association
            # thread, which is this one, blocked here: look at the queue ourselves.
            if assoc.acse.is_aborted():
                reason = "aborted"
                break
            if assoc.acse.is_release_requested():
                reason = "release requested"
                break
            if not assoc.dul.is_alive():
                reason = "connection gone"
                break
            time.sleep(0.01)
        p.log.write("stall_ended", message_id=int(event.request.MessageID), reason=reason, **fields)

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
        p.log.write("abort_sent", message_id=int(event.request.MessageID), sent=sent, **_assoc_fields(event))
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


# ---------------------------------------------------------------------------------------------
# Entry points


class _ReadyAE(AE):
    """Prints ``READY <port>`` once start_server(block=True) has a listening socket."""

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        server = super().make_server(*args, **kwargs)
        # TCPServer binds and listens in its constructor: connections queue in the backlog
        # until serve_forever() starts accepting.
        print(f"READY {server.server_address[1]}", flush=True)
        return server


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--opt expects key=json-value, got {pair!r}")
        options[key] = json.loads(value)
    return options


def run_scp(args: argparse.Namespace) -> int:
    try:
        setup = PROFILES[args.profile]
    except KeyError:
        print(f"unknown profile {args.profile!r}; known: {', '.join(sorted(PROFILES))}", file=sys.stderr)
        return 2
    log_stream = open(args.log, "a", encoding="utf-8") if args.log else None
    log = EventLog(log_stream)
    ae = _ReadyAE(ae_title=args.aet)
    ae.maximum_pdu_size = args.max_pdu
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    p = Profile(ae, log, _parse_options(args.opt))
    setup(p)
    log.write("started", profile=args.profile, aet=args.aet, max_pdu=args.max_pdu, options=p.options)
    ae.start_server((args.host, args.port), block=True, evt_handlers=_logging_handlers(log) + p.handlers)
    return 0


def run_scu_echo(args: argparse.Namespace) -> int:
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    ae.add_requested_context(Verification)
    connected = threading.Event()
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.called_aet,
        max_pdu=args.max_pdu,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.set())],
    )
    result: dict[str, Any]
    if assoc.is_established:
        try:
            status = assoc.send_c_echo()
        except ValueError as exc:
            # No accepted presentation context for Verification (others were accepted).
            result = {"outcome": "no-context", "detail": str(exc)}
            assoc.release()
        else:
            if "Status" in status:
                result = {"outcome": "accepted", "status": int(status.Status)}
                assoc.release()
            else:
                # Empty dataset: the peer aborted, or our DIMSE timeout fired (then pynetdicom
                # sends the A-ABORT itself). Let the association thread finish before looking.
                assoc.join(args.timeout)
                if assoc._sent_abort:
                    result = {"outcome": "timeout"}
                elif assoc.is_aborted:
                    result = {"outcome": "aborted"}
                else:
                    result = {"outcome": "no-response"}
                    assoc.abort()
    elif assoc.is_rejected:
        rj = assoc.acceptor.primitive
        result = {
            "outcome": "rejected",
            "result": rj.result,
            "source": rj.result_source,
            "diagnostic": rj.diagnostic,
        }
    elif not connected.is_set():
        # pynetdicom reports a refused/failed TCP connect as an abort.
        result = {"outcome": "connect-failed"}
    elif assoc.is_aborted:
        ac = assoc.acceptor.primitive
        if ac is not None and ac.result == 0x00 and not assoc.accepted_contexts:
            # Accepted, but with every presentation context rejected: pynetdicom then aborts.
            result = {"outcome": "no-context", "detail": "no presentation context accepted"}
        else:
            result = {"outcome": "aborted"}
    else:
        result = {"outcome": "connect-failed"}
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scu-echo", action="store_true", help="act as a C-ECHO SCU and exit")
    parser.add_argument("--profile", default="echo", help=f"SCP profile: {', '.join(sorted(PROFILES))}")
    parser.add_argument("--aet", default=None, help="our AE title")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port (SCP)")
    parser.add_argument("--called-aet", default="ANY-SCP", help="SCU: called AE title")
    parser.add_argument("--max-pdu", type=int, default=16384, help="our Maximum Length Received")
    parser.add_argument("--timeout", type=float, default=30.0, help="pynetdicom ACSE/DIMSE/network timeouts")
    parser.add_argument("--log", default=None, help="JSON-lines event log (SCP)")
    parser.add_argument("--opt", action="append", default=[], help="profile option key=json-value")
    args = parser.parse_args(argv)
    if args.scu_echo:
        args.aet = args.aet or "PYSCU"
        return run_scu_echo(args)
    args.aet = args.aet or "PYNETDICOM"
    return run_scp(args)


if __name__ == "__main__":
    sys.exit(main())

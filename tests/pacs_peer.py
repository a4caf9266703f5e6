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
# Query/Retrieve profiles: a Study Root C-GET SCP serving generated instances
#
# The instances are made up here (`get_instance`), so a test builds the same data sets to
# compare with what came through: a study `get_study_uid()` of `series` (1) series of
# `instances` (3) CT images each, `rows` x `columns` (16 x 16) 16-bit pixels from a seeded
# generator. A C-GET at any level (study, series, image; unique keys as given) matches those
# instances; each is sent as a C-STORE sub-operation on the requestor's own association
# (pynetdicom does that for each `(0xFF00, ds)` the handler yields), on a context the
# requestor proposed with the SCP role.
#
# Every get-* profile accepts Verification, Study Root FIND/MOVE/GET and, for the storage SOP
# classes, the SCU and SCP roles (`transfer_syntaxes`, default Explicit then Implicit VR LE), and
# logs, besides the common events:
#   c_get       (message_id, level, study, series, sop, matches, n = the n-th C-GET served)
#   store_start (message_id, index, sop): the handler hands instance `index` to pynetdicom
#   store_done  (message_id, index, sop): its C-STORE-RSP came back (the generator resumed)
#   store_rsp   (status, sop): a C-STORE-RSP as it arrives from the requestor
#   c_cancel    (message_id), get_cancelled (message_id, sent)
#   get_done    (message_id, sent, status): the handler's last word
#   assoc_count (count, max): open connections to this peer
#   get_rsp     (status, remaining, completed, failed, warning): each C-GET-RSP as sent
# The faulty profiles serve the first `healthy` (0) C-GETs like `get`, misbehave on the next `times`
# (default 1; null = always) and serve the later ones like `get` again.

GET_UID_ROOT = "1.2.826.0.1.3680043.8.498.78"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: A storage SOP class nobody proposes: its C-STORE sub-operation cannot be sent (fails).
UNPROPOSED_SOP_CLASS = "1.2.826.0.1.3680043.8.498.78.99"


def get_study_uid() -> str:
    return f"{GET_UID_ROOT}.1"


def get_series_uid(series: int) -> str:
    return f"{GET_UID_ROOT}.2.{series + 1}"


def get_sop_uid(series: int, index: int) -> str:
    return f"{GET_UID_ROOT}.3.{series + 1}.{index + 1}"


def get_instance(series: int, index: int, rows: int = 16, columns: int = 16) -> Dataset:
    """Instance `index` of series `series` (both from 0), the same on every call."""
    import numpy
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = get_sop_uid(series, index)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = get_sop_uid(series, index)
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "GETACC1"
    ds.Modality = "CT"
    ds.PatientName = "Get^Peer"
    ds.PatientID = "GETPID"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.SliceThickness = "1.25"
    ds.StudyInstanceUID = get_study_uid()
    ds.SeriesInstanceUID = get_series_uid(series)
    ds.StudyID = "1"
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = numpy.random.default_rng([series, index, rows, columns])
    ds.PixelData = rng.integers(0, 1 << 16, size=rows * columns, dtype=numpy.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


class _GetSCP:
    """The shared parts of the get-* profiles."""

    def __init__(self, p: Profile) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import StoragePresentationContexts

        self.p = p
        self.counter = _Counter()
        self.gets = 0
        self.series = int(p.options.get("series", 1))
        self.instances = int(p.options.get("instances", 3))
        self.rows = int(p.options.get("rows", 16))
        self.columns = int(p.options.get("columns", 16))
        self.delay = float(p.options.get("delay", 0))
        times = p.options.get("times", 1)
        self.times = None if times is None else int(times)
        self.healthy = int(p.options.get("healthy", 0))
        syntaxes = p.options.get("transfer_syntaxes", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for context in (
            Verification,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            p.ae.add_supported_context(context)
        for cx in StoragePresentationContexts:
            p.ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
        p.on(evt.EVT_CONN_OPEN, self._conn_open)
        p.on(evt.EVT_CONN_CLOSE, self._conn_close)
        p.on(evt.EVT_DIMSE_RECV, self._dimse_recv)
        p.on(evt.EVT_DIMSE_SENT, self._dimse_sent)

    def _conn_open(self, event: evt.Event) -> None:
        count, most = self.counter.opened()
        self.p.log.write("assoc_count", count=count, max=most, **_assoc_fields(event))

    def _conn_close(self, event: evt.Event) -> None:
        count, most = self.counter.closed()
        self.p.log.write("assoc_count", count=count, max=most, **_assoc_fields(event))

    def _dimse_sent(self, event: evt.Event) -> None:
        message = event.message
        if type(message).__name__ == "C_GET_RSP":
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
            self.p.log.write("get_rsp", status=int(command.Status), **counts, **_assoc_fields(event))

    def _dimse_recv(self, event: evt.Event) -> None:
        message = event.message
        kind = type(message).__name__
        if kind == "C_CANCEL_RQ":
            self.p.log.write(
                "c_cancel",
                message_id=int(message.command_set.MessageIDBeingRespondedTo),
                **_assoc_fields(event),
            )
        elif kind == "C_STORE_RSP":
            command = message.command_set
            self.p.log.write(
                "store_rsp",
                status=int(command.Status),
                sop=str(command.get("AffectedSOPInstanceUID", "")),
                **_assoc_fields(event),
            )

    def matches(self, identifier: Dataset) -> list[tuple[int, int]]:
        """(series, index) of the instances the identifier's unique keys select."""
        study = str(identifier.get("StudyInstanceUID", "") or "")
        series = str(identifier.get("SeriesInstanceUID", "") or "")
        sop = str(identifier.get("SOPInstanceUID", "") or "")
        if study and study != get_study_uid():
            return []
        found = []
        for s in range(self.series):
            if series and series != get_series_uid(s):
                continue
            for i in range(self.instances):
                if sop and sop != get_sop_uid(s, i):
                    continue
                found.append((s, i))
        return found

    def begin(self, event: evt.Event) -> tuple[list[tuple[int, int]], bool]:
        """Log the C-GET; (its matches, whether this one should misbehave)."""
        self.gets += 1  # association threads: only the counter's lock matters for counts
        n = self.gets
        identifier = event.identifier
        found = self.matches(identifier)
        self.p.log.write(
            "c_get",
            message_id=int(event.request.MessageID),
            level=str(identifier.get("QueryRetrieveLevel", "")),
            study=str(identifier.get("StudyInstanceUID", "") or ""),
            series=str(identifier.get("SeriesInstanceUID", "") or ""),
            sop=str(identifier.get("SOPInstanceUID", "") or ""),
            matches=len(found),
            n=n,
            **_assoc_fields(event),
        )
        faulty = n > self.healthy and (self.times is None or n <= self.healthy + self.times)
        return found, faulty

    def instance(self, series: int, index: int) -> Dataset:
        return get_instance(series, index, self.rows, self.columns)

    def done(self, event: evt.Event, sent: int, status: int) -> None:
        self.p.log.write(
            "get_done",
            message_id=int(event.request.MessageID),
            sent=sent,
            status=status,
            **_assoc_fields(event),
        )

    def send(self, event: evt.Event, found: list[tuple[int, int]], start: int = 0) -> Any:
        """Yield `found[start:]` as C-STORE sub-operations; stop with 0xFE00 at a C-CANCEL.

        Returns how many were handed on (from `start`), or None after a cancel.
        """
        message_id = int(event.request.MessageID)
        for index in range(start, len(found)):
            if self.delay:
                time.sleep(self.delay)
            if event.is_cancelled:
                self.p.log.write("get_cancelled", message_id=message_id, sent=index, **_assoc_fields(event))
                self.done(event, index, 0xFE00)
                yield 0xFE00, None
                return None
            ds = self.instance(*found[index])
            sop = str(ds.SOPInstanceUID)
            self.p.log.write(
                "store_start", message_id=message_id, index=index, sop=sop, **_assoc_fields(event)
            )
            yield 0xFF00, ds
            self.p.log.write(
                "store_done", message_id=message_id, index=index, sop=sop, **_assoc_fields(event)
            )
        return len(found) - start

    def answer(self, event: evt.Event, found: list[tuple[int, int]]) -> Any:
        """Serve like the `get` profile (pynetdicom sends the final response itself)."""
        yield len(found)
        sent = yield from self.send(event, found)
        if sent is not None:
            self.done(event, sent, 0x0000)


@profile("get")
def _profile_get(p: Profile) -> None:
    """Study Root C-GET SCP: every matching instance as a C-STORE sub-operation (`delay`, 0 s,
    before each), then Success; a C-CANCEL seen between sub-operations ends it with Cancel."""
    scp = _GetSCP(p)

    def on_get(event: evt.Event) -> Any:
        found, _ = scp.begin(event)
        yield from scp.answer(event, found)

    p.on(evt.EVT_C_GET, on_get)


@profile("get-warning")
def _profile_get_warning(p: Profile) -> None:
    """`get`, plus one sub-operation (after the first good instance) that fails: an instance of a
    SOP class the requestor did not propose, which cannot be sent. Final status Warning B000
    with one failed sub-operation (pynetdicom counts and answers it)."""
    scp = _GetSCP(p)

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty or not found:
            yield from scp.answer(event, found)
            return
        yield len(found) + 1
        sent = yield from scp.send(event, found[:1])
        if sent is None:
            return
        bad = scp.instance(*found[0])
        bad.SOPClassUID = UNPROPOSED_SOP_CLASS
        bad.SOPInstanceUID = f"{GET_UID_ROOT}.4.1"
        bad.file_meta.MediaStorageSOPClassUID = UNPROPOSED_SOP_CLASS
        bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        p.log.write("store_unsendable", sop=str(bad.SOPInstanceUID), **_assoc_fields(event))
        yield 0xFF00, bad
        rest = yield from scp.send(event, found, start=1)
        if rest is not None:
            scp.done(event, len(found), 0xB000)

    p.on(evt.EVT_C_GET, on_get)


@profile("get-fail")
def _profile_get_fail(p: Profile) -> None:
    """`ok_before` (1) sub-operations, then the failure `status` (0xC000) as final response."""
    scp = _GetSCP(p)
    ok_before = int(p.options.get("ok_before", 1))
    status = int(p.options.get("status", 0xC000))

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        yield len(found)
        sent = yield from scp.send(event, found[:ok_before])
        if sent is not None:
            scp.done(event, sent, status)
            yield status, None

    p.on(evt.EVT_C_GET, on_get)


@profile("get-implicit")
def _profile_get_implicit(p: Profile) -> None:
    """`get` with only Implicit VR Little Endian accepted for the storage SOP classes: the
    instances go out as Implicit VR LE (pynetdicom re-encodes them for the context)."""
    p.options.setdefault("transfer_syntaxes", ["1.2.840.10008.1.2"])
    _profile_get(p)


@profile("get-abort")
def _profile_get_abort(p: Profile) -> None:
    """A-ABORT during a C-GET after `ok_before` (1) complete sub-operations. With `partial`
    (false), first send the command and the first data set fragment of the next instance's
    C-STORE, so the abort comes in the middle of an instance."""
    scp = _GetSCP(p)
    ok_before = int(p.options.get("ok_before", 1))
    partial = bool(p.options.get("partial", False))

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        yield len(found)
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        if partial and sent < len(found):
            _send_partial_store(event, scp.instance(*found[sent]))
            p.log.write("partial_sent", sop=get_sop_uid(*found[sent]), **_assoc_fields(event))
        p.log.write("abort_sent", message_id=int(event.request.MessageID), sent=sent, **_assoc_fields(event))
        event.assoc.abort()

    p.on(evt.EVT_C_GET, on_get)


def _send_partial_store(event: evt.Event, ds: Dataset) -> None:
    """Put the C-STORE-RQ command and the first data set P-DATA of `ds` on the wire, no more."""
    from io import BytesIO

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    assoc = event.assoc
    context = assoc._get_valid_context(ds.SOPClassUID, ExplicitVRLittleEndian, "scu")
    ts = context.transfer_syntax[0]
    primitive = C_STORE()
    primitive.MessageID = (int(event.request.MessageID) + 100) & 0xFFFF
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = BytesIO(encode(ds, ts.is_implicit_VR, ts.is_little_endian))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = list(message.encode_msg(context.context_id, assoc.dimse.maximum_pdu_size))
    # The command set, then the first data set fragment (the data set runs over several).
    for pdu in pdus[:2]:
        assoc.dul.send_pdu(pdu)


@profile("get-stall")
def _profile_get_stall(p: Profile) -> None:
    """Accept the C-GET and never answer (after `ok_before`, default 0, sub-operations); the
    handler waits until the requestor aborts or the connection goes (``stalling``, then
    ``stall_ended`` with ``reason``)."""
    scp = _GetSCP(p)
    ok_before = int(p.options.get("ok_before", 0))
    p.ae.network_timeout = None
    p.ae.dimse_timeout = None

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        yield max(len(found), 1)
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        fields = _assoc_fields(event)
        p.log.write("stalling", message_id=int(event.request.MessageID), **fields)
        assoc = event.assoc
        while True:
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

    p.on(evt.EVT_C_GET, on_get)


# ---------------------------------------------------------------------------------------------
# Query/Retrieve profiles: a Study Root C-MOVE SCP serving the same generated instances
#
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


class _MoveSCP(_GetSCP):
    """The shared parts of the move-* profiles (matching and instances as `_GetSCP`)."""

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
        self.sub_counter = _Counter()
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
        return {"sub": _assoc_number(assoc)}

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
            self.p.log.write("move_rsp", status=int(command.Status), **counts, **_assoc_fields(event))

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
            **_assoc_fields(event),
        )
        faulty = n > self.healthy and (self.times is None or n <= self.healthy + self.times)
        return found, faulty

    def done(self, event: evt.Event, sent: int, status: int) -> None:
        self.p.log.write(
            "move_done",
            message_id=int(event.request.MessageID),
            sent=sent,
            status=status,
            **_assoc_fields(event),
        )

    def send(self, event: evt.Event, found: list[tuple[int, int]], start: int = 0) -> Any:
        """Yield `found[start:]` as Pending (C-STORE sub-operations); stop with 0xFE00 at a
        C-CANCEL. Returns how many were handed on (from `start`), or None after a cancel."""
        message_id = int(event.request.MessageID)
        for index in range(start, len(found)):
            if self.delay:
                time.sleep(self.delay)
            if event.is_cancelled:
                self.p.log.write("move_cancelled", message_id=message_id, sent=index, **_assoc_fields(event))
                self.done(event, index, 0xFE00)
                yield 0xFE00, None
                return None
            ds = self.instance(*found[index])
            sop = str(ds.SOPInstanceUID)
            self.p.log.write(
                "store_start", message_id=message_id, index=index, sop=sop, **_assoc_fields(event)
            )
            yield 0xFF00, ds
            self.p.log.write(
                "store_done", message_id=message_id, index=index, sop=sop, **_assoc_fields(event)
            )
        return len(found) - start

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
        p.log.write("store_unsendable", sop=str(bad.SOPInstanceUID), **_assoc_fields(event))
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
        fields = _assoc_fields(event)
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

    def wait(event: evt.Event) -> None:
        fields = _assoc_fields(event)
        p.log.write("stalling", message_id=int(event.request.MessageID), **fields)
        assoc = event.assoc
        while True:
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

    def on_move(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        if ok_before == 0:
            # Before the destination is even named: no sub-operation association at all.
            wait(event)
            return
        if not (yield from scp.head(event, found, max(len(found), 1))):
            return
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        wait(event)

    p.on(evt.EVT_C_MOVE, on_move)


# ---------------------------------------------------------------------------------------------
# Storage SCP (STOW-RS over C-STORE: tests/test_stow_dimse.py)
#
# Events: stored (sop, sop_class, transfer_syntax, status): a C-STORE-RQ answered with that status
# (an instance counts as stored only with a success or warning status); abort_sent (sop=None,
# received): the A-ABORT sent in the middle of a data set. Received data sets are written as
# ``received/<SOP Instance UID>.dcm`` (Part 10, in the syntax they came in) in the peer's directory.


@profile("store")
def _profile_store(p: Profile) -> None:
    """Storage SCP for pynetdicom's storage SOP classes. Options: `transfer_syntaxes` (Explicit and
    Implicit VR LE), `unsupported` (SOP classes it does not accept), `statuses` (SOP Instance UID ->
    status to answer, default 0x0000), `abort_after_bytes` (A-ABORT once that many data set bytes of
    one C-STORE have arrived, `aborts` times, default 1; nothing more is stored on that association),
    `stall` (SOP Instance UIDs whose C-STORE it
    never answers), `max_associations` (more at once are rejected, "local limit exceeded")."""
    import os
    import socket

    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import StoragePresentationContexts

    default_syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    syntaxes = [str(ts) for ts in p.options.get("transfer_syntaxes", default_syntaxes)]
    unsupported = {str(uid) for uid in p.options.get("unsupported", [])}
    statuses = {str(k): int(v) for k, v in p.options.get("statuses", {}).items()}
    abort_after = p.options.get("abort_after_bytes")
    aborts = [int(p.options.get("aborts", 1))]
    received_bytes: dict[int, int] = {}
    aborted: set[int] = set()
    lock = threading.Lock()
    os.makedirs("received", exist_ok=True)
    if "max_associations" in p.options:
        p.ae.maximum_associations = int(p.options["max_associations"])
    p.ae.add_supported_context(Verification)
    for cx in StoragePresentationContexts:
        if str(cx.abstract_syntax) not in unsupported:
            p.ae.add_supported_context(cx.abstract_syntax, syntaxes)

    stall = {str(uid) for uid in p.options.get("stall", [])}
    if stall:
        p.ae.network_timeout = None
        p.ae.dimse_timeout = None

    def on_store(event: evt.Event) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        with lock:
            was_aborted = id(event.assoc) in aborted
        if was_aborted:
            p.log.write("dropped_after_abort", sop=sop, **_assoc_fields(event))
            return 0xA700
        if sop in stall:
            # Never answer: wait until the requestor gives up on the association.
            p.log.write("stalling", sop=sop, **_assoc_fields(event))
            assoc = event.assoc
            while not assoc.acse.is_aborted() and assoc.dul.is_alive():
                time.sleep(0.01)
            p.log.write("stall_ended", sop=sop, **_assoc_fields(event))
            return 0xC000
        status = statuses.get(sop, 0x0000)
        if status == 0x0000 or status >> 12 == 0xB:
            with open(os.path.join("received", sop + ".dcm"), "wb") as f:
                f.write(event.encoded_dataset())
        p.log.write(
            "stored",
            sop=sop,
            sop_class=str(event.request.AffectedSOPClassUID),
            transfer_syntax=str(event.context.transfer_syntax),
            status=status,
            **_assoc_fields(event),
        )
        return status

    def on_pdu(event: evt.Event) -> None:
        if abort_after is None or not isinstance(event.pdu, P_DATA_TF):
            return
        key = id(event.assoc)
        for item in event.pdu.presentation_data_value_items:
            value = item.presentation_data_value
            with lock:
                if value[0] & 1:  # a command fragment: a new message starts
                    received_bytes[key] = 0
                    continue
                received_bytes[key] = received_bytes.get(key, 0) + len(value) - 1
                if received_bytes[key] < int(abort_after) or aborts[0] <= 0:
                    continue
                aborts[0] -= 1
            p.log.write("abort_sent", sop=None, received=received_bytes[key], **_assoc_fields(event))
            # From the reader thread: A-ABORT (service user) on the wire, then our half of the
            # connection closes (a full close with data unread could reset the connection and
            # lose the A-ABORT). pynetdicom does not know: whatever of the data set still comes
            # is dropped by on_store.
            with lock:
                aborted.add(key)
            sock = event.assoc.dul.socket
            sock.send(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
            sock.socket.shutdown(socket.SHUT_WR)
            return

    p.on(evt.EVT_C_STORE, on_store)
    p.on(evt.EVT_PDU_RECV, on_pdu)


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

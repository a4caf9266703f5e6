"""What every profile of the pynetdicom PACS shares.

The JSON-lines `EventLog` the test process reads (through ``peers.Peer.events``) and the
notification handlers that write it for every profile (`logging_handlers`), the `Profile` a
profile's setup function configures, the `PROFILES` registry its ``@profile(name)`` decorator
fills, and the thread-safe `Counter` the query/retrieve profiles count with (pynetdicom calls
handlers from one thread per association).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF

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


def assoc_number(assoc: Any) -> int:
    """A small per-process number for an association, stable across its events (1, 2, ...)."""
    with _assoc_numbers_lock:
        number = getattr(assoc, "_pacs_peer_number", None)
        if number is None:
            number = len(_assoc_numbers) + 1
            _assoc_numbers[id(assoc)] = number
            assoc._pacs_peer_number = number
        return number


def assoc_fields(event: evt.Event) -> dict[str, Any]:
    assoc = event.assoc
    return {
        "assoc": assoc_number(assoc),
        "peer_address": assoc.requestor.address,
        "peer_port": assoc.requestor.port,
    }


def logging_handlers(log: EventLog) -> list[tuple[evt.EventType, Callable[..., Any]]]:
    """Notification handlers that record what this peer observed."""

    def on_conn_open(event: evt.Event) -> None:
        log.write("conn_open", **assoc_fields(event))

    def on_conn_close(event: evt.Event) -> None:
        log.write("conn_close", **assoc_fields(event))

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
            **assoc_fields(event),
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
            **assoc_fields(event),
        )

    def on_rejected(event: evt.Event) -> None:
        log.write("rejected", **assoc_fields(event))

    def on_released(event: evt.Event) -> None:
        log.write("released", **assoc_fields(event))

    def on_aborted(event: evt.Event) -> None:
        log.write("aborted", **assoc_fields(event))

    def on_pdu_recv(event: evt.Event) -> None:
        pdu = event.pdu
        if isinstance(pdu, P_DATA_TF):
            # pdu_length is the PDU's variable-field length: what the Maximum Length Received
            # sub-item bounds (PS3.8 D.1). pdv_lengths are the PDV item lengths inside it.
            log.write(
                "pdata_recv",
                pdu_length=pdu.pdu_length,
                pdv_lengths=[len(item) - 4 for item in pdu.presentation_data_value_items],
                **assoc_fields(event),
            )

    def on_dimse_recv(event: evt.Event) -> None:
        message = event.message
        log.write(
            "dimse_recv",
            message=type(message).__name__,
            context_id=message.context_id,
            **assoc_fields(event),
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


class Counter:
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


def stall_until_gone(p: Profile, event: evt.Event) -> None:
    """Block the handler (never answering) until the requestor aborts or releases, or the
    connection goes; logs ``stalling``, then ``stall_ended`` with the ``reason``."""
    fields = assoc_fields(event)
    message_id = int(event.request.MessageID)
    p.log.write("stalling", message_id=message_id, **fields)
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
    p.log.write("stall_ended", message_id=message_id, reason=reason, **fields)

"""A scriptable pynetdicom peer for integration tests, run as a subprocess.

pynetdicom's runtime is threaded and blocking, so it never runs inside the trial process; the test
harness (``tests/support/peers.py``) starts this package with ``sys.executable -m
tests.support.pacs`` (the checkout first on PYTHONPATH) and talks to it through its stdout and a
JSON-lines log.

SCP mode (default)::

    python -m tests.support.pacs --profile echo --aet PYNETDICOM --port 0 --max-pdu 16384 \
        --log FILE [--opt key=json-value ...]

prints ``READY <port>`` on stdout once the socket listens, then serves until killed (SIGTERM).

SCU mode::

    python -m tests.support.pacs --scu-echo --host 127.0.0.1 --port P --called-aet X --aet Y

prints one JSON object on stdout: ``{"outcome": "accepted", "status": 0}`` or
``{"outcome": "rejected" | "aborted" | "timeout" | "no-context" | "no-response" |
"connect-failed", ...}`` (``rejected`` adds ``result``, ``source``, ``diagnostic``).

Profiles live in ``PROFILES`` (name -> setup function), filled by the service modules beside
this one (`SERVICES`: echo, find, get, move, store). A setup function receives a ``Profile`` and
adds supported contexts to ``profile.ae`` and intervention handlers to ``profile.handlers``. The
notification handlers that write the log are bound for every profile.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from tests.support.pacs import echo, find, get, move, store
from tests.support.pacs.profiles import PROFILES, EventLog, Profile, logging_handlers

#: The modules whose ``@profile`` setup functions fill PROFILES (imported for that).
SERVICES = (echo, find, get, move, store)


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
    ae.start_server((args.host, args.port), block=True, evt_handlers=logging_handlers(log) + p.handlers)
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

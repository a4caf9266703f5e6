"""Verification profiles of the pynetdicom PACS, and association-level faults around C-ECHO.

echo (answers Success, or the ``status`` option), reject (A-ASSOCIATE-RJ), abort (A-ABORT on
the first C-ECHO-RQ), stall (never answers the C-ECHO), no-echo (no Verification context).
"""

from __future__ import annotations

import threading

from pynetdicom import evt
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.support.pacs.profiles import Profile, assoc_fields, profile


def _echo_logged(p: Profile, event: evt.Event) -> None:
    p.log.write("c_echo", message_id=event.request.MessageID, **assoc_fields(event))


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
        p.log.write("rejected", result=result, source=source, diagnostic=diagnostic, **assoc_fields(event))
        event.assoc.kill()

    p.on(evt.EVT_REQUESTED, on_requested)


@profile("abort")
def _profile_abort(p: Profile) -> None:
    """Accept, then A-ABORT on the first C-ECHO-RQ."""
    p.ae.add_supported_context(Verification)

    def on_echo(event: evt.Event) -> int:
        _echo_logged(p, event)
        p.log.write("abort_sent", **assoc_fields(event))
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
        p.log.write("stalling", **assoc_fields(event))
        never.wait()
        return 0x0000

    p.on(evt.EVT_C_ECHO, on_echo)


@profile("no-echo")
def _profile_no_echo(p: Profile) -> None:
    """Accept associations but support no Verification context: an echo context is rejected."""
    # pynetdicom refuses to serve with no supported context at all.
    p.ae.add_supported_context(CTImageStorage)


"""The store profile of the pynetdicom PACS: a Storage SCP for STOW-RS over C-STORE."""

from __future__ import annotations

import threading
import time

from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification

from tests.support.pacs.profiles import Profile, assoc_fields, profile

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
            p.log.write("dropped_after_abort", sop=sop, **assoc_fields(event))
            return 0xA700
        if sop in stall:
            # Never answer: wait until the requestor gives up on the association.
            p.log.write("stalling", sop=sop, **assoc_fields(event))
            assoc = event.assoc
            while not assoc.acse.is_aborted() and assoc.dul.is_alive():
                time.sleep(0.01)
            p.log.write("stall_ended", sop=sop, **assoc_fields(event))
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
            **assoc_fields(event),
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
            p.log.write("abort_sent", sop=None, received=received_bytes[key], **assoc_fields(event))
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


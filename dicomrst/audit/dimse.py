# -*- test-case-name: tests.unit.test_audit -*-
"""C-STOREs into an archive (a listener's ``store-to``), on the audit trail: one record
per instance, once the archive decided its status (or refused it at once).

A wrapper around the archive's ``receive`` rather than code in the Storage SCP, so the
DIMSE layer knows nothing of the trail.  The C-STORE request names the instance and its
SOP Class, not its study (that is in the data set, which the archive reads): the record
names the instance.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.python.failure import Failure

from dicomrst.audit.record import SERIOUS_FAILURE, AuditRecord, Service, dimse_outcome
from dicomrst.audit.trail import AuditTrail
from dicomrst.common.interfaces import IInstanceConsumer

#: (SOP Class UID, SOP Instance UID, transfer syntax, calling AE title) -> its consumer.
Receive = Callable[[str, str, str, str], IInstanceConsumer]

#: PS3.4 B.2.3: the status a refused instance is answered with (Cannot Understand).
_REFUSED = 0xC000


def audited_receive(trail: AuditTrail, listener_aet: str, archive_aet: str, receive: Receive) -> Receive:
    """`receive`, with a record of each instance on `trail`."""

    def record(
        status: int, reason: str, sop_class: str, sop_instance: str, calling: str, outcome: int
    ) -> None:
        trail.record(
            AuditRecord(
                time=trail.now(),
                service=Service.CSTORE,
                aet=archive_aet,
                outcome=outcome,
                status=status,
                reason=reason,
                auth="dicom",
                calling_aet=calling,
                called_aet=listener_aet,
                instances=(sop_instance,),
                sop_classes=(sop_class,),
            )
        )

    def open_instance(
        sop_class: str, sop_instance: str, transfer_syntax: str, calling: str
    ) -> IInstanceConsumer:
        try:
            consumer = receive(sop_class, sop_instance, transfer_syntax, calling)
        except Exception as e:
            record(_REFUSED, f"refused: {e}", sop_class, sop_instance, calling, SERIOUS_FAILURE)
            raise

        def stored(status: int) -> int:
            reason = "stored" if dimse_outcome(status) == 0 else f"status 0x{status:04X}"
            record(status, reason, sop_class, sop_instance, calling, dimse_outcome(status))
            return status

        def failed(reason: Failure) -> Failure:
            record(
                0x0110,
                f"failed: {reason.getErrorMessage()}",
                sop_class,
                sop_instance,
                calling,
                SERIOUS_FAILURE,
            )
            return reason

        consumer.done.addCallbacks(stored, failed)
        return consumer

    return open_instance

# -*- test-case-name: tests.unit.test_audit -*-
"""One access to patient data, as the audit trail records it: who, from where, through
which AET and service, which studies (series, instances), and how it ended.

The services map onto the DICOM audit events (PS3.15 A.5.3) as IHE's DICOMweb profiles
do: a QIDO-RS or MWL-RS search is a Query (110112, action E); a WADO-RS retrieve of
instances, frames, bulk data or a rendered image is DICOM Instances Transferred (110104,
action R, the gateway the source); a WADO-RS metadata request is DICOM Instances Accessed
(110103, action R: the attributes are read, no instance leaves); a STOW-RS request and a
C-STORE into an archive are DICOM Instances Transferred (110104, action C, the gateway the
destination).
"""

from __future__ import annotations

import enum

import attrs

#: EventOutcomeIndicator (PS3.15 A.5.1): success, minor failure, serious failure.
SUCCESS = 0
MINOR_FAILURE = 4
SERIOUS_FAILURE = 8

#: The SOP Classes a query runs on: the query participant's ID (PS3.15 A.5.3.12).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


class Service(enum.Enum):
    """What was asked, and the DICOM audit event it is recorded as."""

    QIDO = "QIDO"
    MWL = "MWL"
    WADO = "WADO"
    METADATA = "WADO-METADATA"
    STOW = "STOW"
    CSTORE = "C-STORE"

    @property
    def event(self) -> tuple[str, str]:
        """(EventID code, its meaning) in DCM."""
        if self in (Service.QIDO, Service.MWL):
            return ("110112", "Query")
        if self is Service.METADATA:
            return ("110103", "DICOM Instances Accessed")
        return ("110104", "DICOM Instances Transferred")

    @property
    def action(self) -> str:
        """EventActionCode: E(xecute) a query, R(ead) data, C(reate) data here."""
        if self in (Service.QIDO, Service.MWL):
            return "E"
        if self in (Service.STOW, Service.CSTORE):
            return "C"
        return "R"

    @property
    def gateway_is_source(self) -> bool:
        """The gateway sends the data (WADO-RS) rather than receives it (STOW-RS, C-STORE)
        or answers a query (where the requestor is the source, PS3.15 A.5.3.12)."""
        return self in (Service.WADO, Service.METADATA)


@attrs.frozen
class AuditRecord:
    """One audited access.

    :ivar time: POSIX seconds when it ended.
    :ivar service: what was asked.
    :ivar aet: the AET (``/aets/{aet}``, or the archive a listener stores into).
    :ivar user: the authenticated user name; None: anonymous (or not authenticated at all:
        a 401).
    :ivar auth: how the user was authenticated (``basic``, ``oidc``, ``anonymous``; for a
        C-STORE ``dicom``).
    :ivar client: the client's address, as a trusted proxy forwarded it if one did.
    :ivar calling_aet: the calling AE title of a C-STORE.
    :ivar called_aet: the gateway's AE title the C-STORE arrived at.
    :ivar status: the HTTP status sent (0: none, the connection went first), or the
        C-STORE status.
    :ivar outcome: `SUCCESS`, `MINOR_FAILURE` or `SERIOUS_FAILURE`.
    :ivar reason: in words (``complete``, ``disconnected``, ``timeout``, ``HTTP 404``).
    :ivar studies, series, instances: the UIDs concerned: from the path, and for STOW-RS
        those the stored instances belong to.
    :ivar sop_classes: the SOP Class of each of `instances` where known ("" where not).
    :ivar instance_studies: the study of each of `instances` where known ("" where not:
        with one of `studies`, that one).
    :ivar query: a search's query string (PHI: patient names, IDs), as it came.
    :ivar request_id: the HTTP request's ID, as its log lines carry it.
    :ivar path: the HTTP request's path.
    """

    time: float
    service: Service
    aet: str
    outcome: int
    status: int
    reason: str
    user: str | None = None
    auth: str = "anonymous"
    client: str = ""
    calling_aet: str | None = None
    called_aet: str | None = None
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    instance_studies: tuple[str, ...] = ()
    query: str | None = None
    request_id: str | None = None
    path: str | None = None


def http_outcome(status: int, complete: bool) -> int:
    """The EventOutcomeIndicator of an HTTP request answered `status` (0: unanswered);
    `complete`: the response was finished (not cut off, not timed out)."""
    if status == 202 or 400 <= status < 500:
        # STOW-RS 202: some instances failed; 4xx: refused, nothing was done.
        return MINOR_FAILURE
    if 200 <= status < 300 and complete:
        return SUCCESS
    # 5xx, a timeout, a response cut off or a client gone before it was whole.
    return SERIOUS_FAILURE


def dimse_outcome(status: int) -> int:
    """The EventOutcomeIndicator of a C-STORE status (PS3.4 B.2.3): warnings (0xB000,
    0xB007, 0xB006) stored the instance, so they are successes with a note."""
    if status == 0 or status & 0xF000 == 0xB000:
        return SUCCESS
    return SERIOUS_FAILURE

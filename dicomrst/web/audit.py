# -*- test-case-name: tests.unit.test_audit_web -*-
"""One audit record per HTTP request that touches patient data (``telemetry.audit``).

`GatewayRoot` begins a `Note` for every request routed to a QIDO-RS, MWL-RS, WADO-RS or
STOW-RS endpoint once its access check is decided (the caller known, or refused), with
the AET and UIDs of the path; the handler may add to it (STOW-RS: the studies and
instances it stored).  When the request ends, finished or lost (``notifyFinish``), the
note becomes an `AuditRecord` with the status sent, and goes to the trail.  The health
check, ``GET /aets`` and ``GET /`` are not audited: they show no patient data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

import attrs
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest

from dicomrst.audit.record import AuditRecord, Service, http_outcome
from dicomrst.audit.trail import AuditTrail
from dicomrst.auth.principal import Principal
from dicomrst.web.site import GatewayRequest, RequestTimedOut
from dicomrst.web.urls import PublicUrls

#: The audited routes (by endpoint) and what each is recorded as.
ROUTE_SERVICES: Mapping[str, Service] = {
    "search_studies": Service.QIDO,
    "search_study_series": Service.QIDO,
    "search_series_instances": Service.QIDO,
    "search_study_instances": Service.QIDO,
    "search_series": Service.QIDO,
    "search_instances": Service.QIDO,
    "search_worklist": Service.MWL,
    "retrieve_study": Service.WADO,
    "retrieve_series": Service.WADO,
    "retrieve_instance": Service.WADO,
    "study_metadata": Service.METADATA,
    "series_metadata": Service.METADATA,
    "instance_metadata": Service.METADATA,
    "retrieve_frames": Service.WADO,
    "instance_pixeldata": Service.WADO,
    "study_pixeldata": Service.WADO,
    "series_pixeldata": Service.WADO,
    "instance_bulkdata": Service.WADO,
    "rendered_study": Service.WADO,
    "rendered_series": Service.WADO,
    "rendered_instance": Service.WADO,
    "rendered_frames": Service.WADO,
    "thumbnail_study": Service.WADO,
    "thumbnail_series": Service.WADO,
    "thumbnail_instance": Service.WADO,
    "thumbnail_frames": Service.WADO,
    "store_instances": Service.STOW,
    "store_study_instances": Service.STOW,
}


@attrs.define
class Note:
    """What is known of an audited request while it runs."""

    service: Service
    aet: str
    principal: Principal | None  # None: refused before it was known
    client: str
    studies: list[str] = attrs.field(factory=list)
    series: list[str] = attrs.field(factory=list)
    instances: list[str] = attrs.field(factory=list)
    sop_classes: list[str] = attrs.field(factory=list)
    instance_studies: list[str] = attrs.field(factory=list)
    refusal: str | None = None


class WebAudit:
    """The HTTP side of the audit trail (see the module).

    :param trail: where records go; None: auditing is off (nothing is noted).
    :param urls: whose forwarding headers count for the client's address.
    """

    def __init__(self, trail: AuditTrail | None = None, urls: PublicUrls | None = None) -> None:
        self.trail = trail
        self.urls = urls if urls is not None else PublicUrls()
        self._notes: WeakKeyDictionary[IRequest, Note] = WeakKeyDictionary()

    @property
    def enabled(self) -> bool:
        return self.trail is not None

    def begin(
        self,
        request: IRequest,
        endpoint: str,
        values: Mapping[str, Any],
        principal: Principal | None,
        refusal: str | None = None,
    ) -> Note | None:
        """Note `request` (routed to `endpoint` with path `values`) if it is audited; its
        record goes to the trail when it ends.  `refusal`: why the access check refused it."""
        service = ROUTE_SERVICES.get(endpoint)
        # twisted.web's Request (IRequest has no notifyFinish).
        if (
            self.trail is None
            or service is None
            or not isinstance(request, Request)
            or request in self._notes
        ):
            return None
        note = Note(service, str(values.get("aet", "")), principal, self.urls.client_host(request))
        note.refusal = refusal
        for key, into in (("study", note.studies), ("series", note.series), ("sop", note.instances)):
            if values.get(key):
                into.append(str(values[key]))
        if note.instances:
            note.sop_classes.append("")
            note.instance_studies.append(note.studies[0] if note.studies else "")
        self._notes[request] = note
        request.notifyFinish().addBoth(self._ended, request, note)
        return note

    def note(self, request: IRequest) -> Note | None:
        """The note of `request`, None when it is not audited."""
        return self._notes.get(request)

    def stored(self, request: IRequest, instances: Iterable[tuple[str | None, str, str]]) -> None:
        """STOW-RS: the (study, SOP class, SOP instance) of each instance `request` stored."""
        note = self._notes.get(request)
        if note is None:
            return
        for study, sop_class, sop_instance in instances:
            if study and study not in note.studies:
                note.studies.append(study)
            note.instances.append(sop_instance)
            note.sop_classes.append(sop_class)
            note.instance_studies.append(study or "")

    def _ended(self, result: Failure | None, request: IRequest, note: Note) -> None:
        trail = self.trail
        if trail is None:
            return
        started = isinstance(request, Request) and bool(request.startedWriting)
        code = int(request.code) if isinstance(request, Request) else 200
        if not isinstance(result, Failure):
            status, reason = code, "complete"
        elif result.check(RequestTimedOut):
            status, reason = 504, "timeout"
        else:
            why = request.abortReason if isinstance(request, GatewayRequest) else None
            status, reason = (code if started else 0), (why or "disconnected")
        if note.refusal is not None:
            reason = note.refusal
        elif status >= 400 and reason == "complete":
            reason = f"HTTP {status}"
        principal = note.principal
        uri = request.uri.decode("latin-1") if request.uri else ""
        path, _, query = uri.partition("?")
        trail.record(
            AuditRecord(
                time=trail.now(),
                service=note.service,
                aet=note.aet,
                outcome=http_outcome(status, not isinstance(result, Failure)),
                status=status,
                reason=reason,
                user=principal.name if principal is not None else None,
                auth=principal.method if principal is not None else "none",
                client=note.client,
                studies=tuple(note.studies),
                series=tuple(note.series),
                instances=tuple(note.instances),
                sop_classes=tuple(note.sop_classes),
                instance_studies=tuple(note.instance_studies),
                query=query if note.service in (Service.QIDO, Service.MWL) else None,
                request_id=request.request_id if isinstance(request, GatewayRequest) else None,
                path=path,
            )
        )

# -*- test-case-name: tests.unit.test_audit -*-
"""An `AuditRecord` as bytes a collector takes: an RFC 5424 syslog message whose MSG is
the DICOM audit message (PS3.15 A.5, the XML IHE ATNA collectors parse: MSGID
``IHE+RFC-3881``), or one JSON object (``telemetry.audit.format: json``, for log
pipelines that do not read the XML); framed for TCP by octet counting (RFC 6587 §3.4.1,
which RFC 5425 uses over TLS too), or as a line of a file.

The text is made safe once, here: characters XML 1.0 cannot carry and line breaks are
replaced (a file line or a syslog message is never broken or forged by a user name or a
UID from the network), and the header fields keep to RFC 5424's printable ASCII.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

import attrs

from dicomrst.audit.record import STUDY_ROOT_FIND, SUCCESS, WORKLIST_FIND, AuditRecord, Service

#: RFC 5424 §6.2.1: facility 10, security/authorization (IHE ITI-20 asks for it).
FACILITY_AUTH = 10
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4

#: IHE ITI-20: the MSGID of a message whose MSG is the DICOM/RFC 3881 audit XML.
ATNA_MSGID = "IHE+RFC-3881"
JSON_MSGID = "dicomrst-audit"

#: RFC 5424 §6.4: a UTF-8 MSG starts with the byte order mark.
BOM = b"\xef\xbb\xbf"

XML = "xml"
JSON = "json"
FORMATS = (XML, JSON)

# XML 1.0 Char, minus line breaks and tabs (a record is one line).
_NOT_XML = re.compile("[^\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# RFC 5424 PRINTUSASCII.
_NOT_PRINTUSASCII = re.compile("[^\x21-\x7e]")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def header_field(value: str, limit: int) -> str:
    """`value` as an RFC 5424 header field: printable ASCII (others become ``_``), at most
    `limit` characters, ``-`` (the NILVALUE) when empty."""
    cleaned = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or "-"


@attrs.frozen
class Source:
    """Who writes the trail (the gateway): RFC 5424 HOSTNAME, APP-NAME, PROCID, and the
    DICOM audit message's AuditSourceIdentification.

    :ivar hostname: the HOSTNAME; also the AuditSourceID and the gateway participant's
        NetworkAccessPointID.
    :ivar site_id: AuditEnterpriseSiteID (None: left out).
    """

    hostname: str
    app_name: str = "dicomrst"
    procid: str = "-"
    site_id: str | None = None


def timestamp(seconds: float) -> str:
    """RFC 5424 TIMESTAMP (and xsd:dateTime): UTC, microseconds."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def syslog_message(msg: bytes, seconds: float, source: Source, msgid: str, severity: int) -> bytes:
    """An RFC 5424 SYSLOG-MSG: header, no structured data, `msg` (UTF-8, after a BOM)."""
    header = " ".join(
        (
            f"<{FACILITY_AUTH * 8 + severity}>1",
            timestamp(seconds),
            header_field(source.hostname, 255),
            header_field(source.app_name, 48),
            header_field(source.procid, 128),
            header_field(msgid, 32),
            "-",
        )
    )
    return header.encode("ascii") + b" " + BOM + msg


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 (and RFC 5425 §4.3): ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d " % len(message) + message


def encode(record: AuditRecord, source: Source, fmt: str = XML) -> bytes:
    """`record` as a SYSLOG-MSG with `fmt`'s body (unframed)."""
    severity = SEVERITY_NOTICE if record.outcome == SUCCESS else SEVERITY_WARNING
    if fmt == JSON:
        return syslog_message(json_body(record), record.time, source, JSON_MSGID, severity)
    return syslog_message(audit_xml(record, source), record.time, source, ATNA_MSGID, severity)


# -- the DICOM audit message (PS3.15 A.5.1) ------------------------------------------------


def _code(parent: ET.Element, tag: str, code: str, meaning: str, system: str = "DCM") -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _set(element: ET.Element, **attributes: str | None) -> None:
    for name, value in attributes.items():
        if value is not None:
            element.set(name, _text(value))


_SOURCE_ROLE = ("110153", "Source Role ID")
_DESTINATION_ROLE = ("110152", "Destination Role ID")


def audit_xml(record: AuditRecord, source: Source) -> bytes:
    """The DICOM audit message of `record` (PS3.15 A.5.1, the current schema: SOPClass and
    ParticipantObjectContainsStudy are children of ParticipantObjectIdentification), as
    one line of UTF-8 XML without a declaration."""
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification")
    _set(
        event,
        EventActionCode=record.service.action,
        EventDateTime=timestamp(record.time),
        EventOutcomeIndicator=str(record.outcome),
    )
    _code(event, "EventID", *record.service.event)
    if record.outcome != SUCCESS:
        ET.SubElement(event, "EventOutcomeDescription").text = _text(record.reason)

    # The requestor: the HTTP client (or the calling AE of a C-STORE).
    requestor = ET.SubElement(root, "ActiveParticipant")
    client_host = record.client
    _set(
        requestor,
        UserID=record.user if record.user is not None else record.auth,
        AlternativeUserID=f"AETITLES={record.calling_aet}" if record.calling_aet else None,
        UserName=f"{record.user} ({record.auth})" if record.user is not None else None,
        UserIsRequestor="true",
        NetworkAccessPointID=client_host or None,
        NetworkAccessPointTypeCode="2" if client_host else None,
    )
    gateway_source = record.service.gateway_is_source
    _code(requestor, "RoleIDCode", *(_DESTINATION_ROLE if gateway_source else _SOURCE_ROLE))

    # The gateway, as the service (the AET's URL path, or the listener's AE title).
    gateway = ET.SubElement(root, "ActiveParticipant")
    _set(
        gateway,
        UserID=record.path if record.path is not None else (record.called_aet or record.aet),
        AlternativeUserID=f"AETITLES={record.called_aet or record.aet}",
        UserIsRequestor="false",
        NetworkAccessPointID=source.hostname,
        NetworkAccessPointTypeCode="1",
    )
    _code(gateway, "RoleIDCode", *(_SOURCE_ROLE if gateway_source else _DESTINATION_ROLE))

    audit_source = ET.SubElement(root, "AuditSourceIdentification")
    _set(audit_source, AuditEnterpriseSiteID=source.site_id, AuditSourceID=source.hostname)
    _code(audit_source, "AuditSourceTypeCode", "4", "Application Server")

    if record.query is not None:
        sop_class = STUDY_ROOT_FIND if record.service is not Service.MWL else WORKLIST_FIND
        query = ET.SubElement(root, "ParticipantObjectIdentification")
        _set(
            query,
            ParticipantObjectID=sop_class,
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",
        )
        _code(query, "ParticipantObjectIDTypeCode", "110181", "SOP Class UID")
        ET.SubElement(query, "ParticipantObjectQuery").text = _b64(record.query)
        ET.SubElement(query, "ParticipantObjectDetail", {"type": "QueryEncoding", "value": _b64("UTF-8")})

    # Each instance under its study; those of no known study (a C-STORE's) on their own.
    by_study: dict[str, dict[str, list[str]]] = {study: {} for study in record.studies}
    loose: dict[str, list[str]] = {}
    sole = record.studies[0] if len(record.studies) == 1 else ""
    for i, uid in enumerate(record.instances):
        sop_class = record.sop_classes[i] if i < len(record.sop_classes) else ""
        study = record.instance_studies[i] if i < len(record.instance_studies) else sole
        into = by_study[study] if study in by_study else loose
        into.setdefault(sop_class, []).append(uid)

    for study, classes in by_study.items():
        study_object = ET.SubElement(root, "ParticipantObjectIdentification")
        _set(
            study_object,
            ParticipantObjectID=study,
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",
        )
        _code(study_object, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        if len(record.studies) == 1:
            # A series has no element of its own: a detail, as the schema's ValuePair allows.
            for series in record.series:
                ET.SubElement(
                    study_object,
                    "ParticipantObjectDetail",
                    {"type": "SeriesInstanceUID", "value": _b64(series)},
                )
        for sop_class, uids in classes.items():
            _sop_class(study_object, sop_class, uids)

    for sop_class, uids in loose.items():
        # A C-STORE names its instance and SOP Class, not its study (that is in the data set).
        instance_object = ET.SubElement(root, "ParticipantObjectIdentification")
        _set(
            instance_object,
            ParticipantObjectID=sop_class or "-",
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",
        )
        _code(instance_object, "ParticipantObjectIDTypeCode", "110181", "SOP Class UID")
        _sop_class(instance_object, sop_class, uids)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return xml


def _sop_class(parent: ET.Element, sop_class: str, uids: list[str]) -> None:
    element = ET.SubElement(parent, "SOPClass", {"NumberOfInstances": str(len(uids))})
    _set(element, UID=sop_class or None)
    for uid in uids:
        _set(ET.SubElement(element, "Instance"), UID=uid)


# -- JSON ------------------------------------------------------------------------------------


def json_body(record: AuditRecord) -> bytes:
    """`record` as one JSON object (every non-ASCII and control character escaped)."""
    event_code, event_name = record.service.event
    fields: dict[str, object] = {
        "time": timestamp(record.time),
        "event": event_name,
        "event_code": event_code,
        "action": record.service.action,
        "service": record.service.value,
        "aet": record.aet,
        "user": record.user,
        "auth": record.auth,
        "client": record.client,
        "outcome": record.outcome,
        "status": record.status,
        "reason": record.reason,
        "studies": list(record.studies),
        "series": list(record.series),
        "instances": list(record.instances),
    }
    optional = {
        "sop_classes": list(record.sop_classes) if any(record.sop_classes) else None,
        "instance_studies": list(record.instance_studies) if any(record.instance_studies) else None,
        "calling_aet": record.calling_aet,
        "called_aet": record.called_aet,
        "query": record.query,
        "request_id": record.request_id,
        "path": record.path,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")

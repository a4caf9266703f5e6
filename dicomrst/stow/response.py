# -*- test-case-name: tests.unit.test_stow_web -*-
"""The Store Instances Response (PS3.18 Annex I, T I.1-1) and the HTTP status it goes with."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from dicomrst.backends.values import StoreOutcome

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


@attrs.frozen
class InstanceResult:
    """One part's fate, in the order of the parts.

    `outcome` is None for a failure not tied to an instance (its UIDs are unknown): it
    goes in the Other Failures Sequence with `failure_reason`.  `retrieve_url` is this
    gateway's URL of a stored instance (None if its series is unknown).
    """

    outcome: StoreOutcome | None
    failure_reason: int = 0
    retrieve_url: str | None = None
    study_instance_uid: str | None = None
    unavailable: bool = False  # the backend errbacked with ServiceUnavailable


@attrs.frozen
class Summary:
    stored: int
    warnings: int
    failed: int  # failed instances with known UIDs
    other: int  # failures not tied to an instance

    @property
    def status(self) -> int:
        """PS3.18 T10.5.3-1: 200 all stored, 202 some failed or warned, 409 none stored."""
        if self.stored == 0:
            return 409
        if self.failed or self.other or self.warnings:
            return 202
        return 200


def summarize(results: Sequence[InstanceResult]) -> Summary:
    stored = sum(1 for r in results if r.outcome is not None and r.outcome.stored)
    warnings = sum(1 for r in results if r.outcome is not None and r.outcome.warning)
    failed = sum(1 for r in results if r.outcome is not None and not r.outcome.stored)
    other = sum(1 for r in results if r.outcome is None)
    return Summary(stored, warnings, failed, other)


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def _ur(value: str | None) -> dict[str, Any]:
    # Retrieve URL is Type 2: present, empty when there is no single answer.
    return {"vr": "UR", "Value": [value]} if value else {"vr": "UR"}


def store_instances_response(results: Sequence[InstanceResult], study_url: str | None) -> dict[str, Any]:
    """The response data set as DICOM JSON (keys in tag order, US values in decimal)."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for result in results:
        outcome = result.outcome
        if outcome is None:
            other.append({FAILURE_REASON: _us(result.failure_reason)})
            continue
        item: dict[str, Any] = {
            REFERENCED_SOP_CLASS: _ui(outcome.sop_class_uid),
            REFERENCED_SOP_INSTANCE: _ui(outcome.sop_instance_uid),
        }
        if outcome.stored:
            item[RETRIEVE_URL] = _ur(result.retrieve_url)
            if outcome.warning:
                item[WARNING_REASON] = _us(outcome.status)
            referenced.append(item)
        else:
            item[FAILURE_REASON] = _us(outcome.status)
            failed.append(item)
    body: dict[str, Any] = {RETRIEVE_URL: _ur(study_url)}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if other:
        body[OTHER_FAILURES_SEQUENCE] = {"vr": "SQ", "Value": other}
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

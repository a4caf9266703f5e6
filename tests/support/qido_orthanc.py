"""What the QIDO-RS tests against Orthanc share: the attributes a response carries at each
level, the query strings they send (and what Orthanc is sent unencoded), and the unique
keys of a level's results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
UNIQUE = {"studies": STUDY_UID, "series": SERIES_UID, "instances": SOP_UID}

#: Attributes a QIDO response carries at each level (PS3.18 T10.6.3-3…5), as tags.
DEFAULTS = {
    "studies": "00080020 00080030 00080050 00080061 00080090 00100010 00100020 00100030 00100040 "
    "0020000D 00200010 00201206 00201208 00081190".split(),
    "series": "00080060 0008103E 0020000E 00200011 00201209 00081190".split(),
    "instances": "00080016 00080018 00200013 00280010 00280011 00280100 00081190".split(),
}

Params = Sequence[tuple[str, str]] | Mapping[str, str]


def query_string(params: Params, safe: str = "") -> str:
    """``?a=b&…``, every character but letters, digits and `safe` percent-encoded as UTF-8."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    return "?" + urlencode(items, quote_via=quote, safe=safe) if items else ""


#: What Orthanc's QIDO is sent as it is: it does not percent-decode query values.
ORTHANC_RAW = "^*?,"


def resource(path: str) -> str:
    """``studies``, ``series`` or ``instances``: the level a QIDO path searches."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def values(result: Mapping[str, Any], tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value", []))


def value(result: Mapping[str, Any], tag: str) -> Any:
    found = values(result, tag)
    return found[0] if found else None


def unique_keys(results: Sequence[Mapping[str, Any]], path: str) -> set[str]:
    return {value(r, UNIQUE[resource(path)]) for r in results}

# -*- test-case-name: tests.unit.test_qido_web -*-
"""The media type of a QIDO-RS response (PS3.18 §8.7.8.1, §10.6.3)."""

from __future__ import annotations

from dicomrst.common.accept import best_json_media, sources
from dicomrst.errors import NotAcceptable

_NOT_YET = "application/dicom+xml (multipart/related) is not supported yet"

#: Answers by (Accept header, ``accept`` parameter): a client (a viewer, a worklist) sends
#: the same Accept with every search, and parsing it was about as much CPU as the rest of
#: the route's header handling (issue 15).  Bounded: cleared when full; long values
#: (which no real client sends) are not kept.
_CHOSEN: dict[tuple[str | None, str | None], str] = {}
_CACHE_SIZE = 64
_CACHED_LENGTH = 512


def select_search_media(accept_header: str | None, accept_param: str | None) -> str:
    """``application/dicom+json`` (the default, also for ``*/*`` and no Accept at all) or
    ``application/json``; else `NotAcceptable`.  ``accept=`` in the query is consulted
    first and takes no wildcards (PS3.18 §8.3.3.1)."""
    key = (accept_header, accept_param)
    media = _CHOSEN.get(key)
    if media is not None:
        return media
    media = _select(accept_header, accept_param)
    if len(accept_header or "") + len(accept_param or "") <= _CACHED_LENGTH:
        if len(_CHOSEN) >= _CACHE_SIZE:
            _CHOSEN.clear()
        _CHOSEN[key] = media
    return media


def _select(accept_header: str | None, accept_param: str | None) -> str:
    for i, ranges in enumerate(sources(accept_header, accept_param)):
        from_query = i == 0 and accept_param is not None and bool(accept_param.strip())
        acceptable = [r for r in ranges if not (from_query and r.wildcard)]
        media = best_json_media(acceptable, wildcards_match_json=True)
        if media is not None:
            return media
    raise NotAcceptable(
        "search results are available as application/dicom+json or application/json; " + _NOT_YET
    )

# -*- test-case-name: tests.unit.test_wado_parts -*-
"""The HTTP Accept header (and the ``accept=`` query parameter) as media ranges.

RFC 9110 §12.5.1 syntax: ``type/subtype; param=value; q=0.5, …``.  Parameter values may
be quoted (DICOM's ``type="application/dicom"`` always is, and may hold ``;`` or ``,``),
so entries and parameters are split outside quotes.  An entry that cannot be parsed (no
``/``, a parameter without ``=``, a q-value that is not one) is dropped, not an error:
the caller answers 406 if nothing acceptable is left.
"""

from __future__ import annotations

import re

import attrs


@attrs.frozen
class MediaRange:
    """One entry of an Accept value.

    :ivar media: ``type/subtype``, lower case (``*`` wildcards as sent).
    :ivar params: parameter names lower case; values unquoted (``type`` lower case).
    :ivar q: the q-value, 0.0 to 1.0.
    """

    media: str
    params: dict[str, str]
    q: float

    @property
    def wildcard(self) -> bool:
        return "*" in self.media


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside double quotes."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def qvalue(text: str) -> float | None:
    """A q-value; lenient about digits (``q=.5``, ``q=0.8125``), None when invalid."""
    try:
        q = float(text)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None  # also rejects NaN


_DECODED_PLUS = re.compile(r"(?<=[a-z0-9]) +(?=[a-z0-9])")


def parse_accept(text: str, *, query: bool = False) -> list[MediaRange]:
    """An Accept value → media ranges; entries that cannot be parsed are dropped.

    With `query`, the text came from an ``accept=`` query parameter, where a ``+`` may
    have been decoded to a space (``application/dicom json``): such spaces are read as
    ``+``.
    """
    ranges = []
    for entry in split_outside_quotes(text, ","):
        media, *params = split_outside_quotes(entry, ";")
        media = media.strip().lower()
        if query:
            media = _DECODED_PLUS.sub("+", media)
        main, slash, sub = media.partition("/")
        if not slash or not main or not sub or " " in media or (main == "*" and sub != "*"):
            continue
        parameters: dict[str, str] = {}
        q: float | None = 1.0
        valid = True
        for param in params:
            if not param.strip():
                continue
            name, equals, value = param.partition("=")
            name = name.strip().lower()
            value = unquote(value)
            if not equals or not name:
                valid = False
                break
            if name == "q":
                q = qvalue(value)
                if q is None:
                    valid = False
                    break
            else:
                if query and name == "type":
                    value = _DECODED_PLUS.sub("+", value.lower())
                parameters[name] = value.lower() if name == "type" else value
        if valid and q is not None:
            ranges.append(MediaRange(media, parameters, q))
    return ranges


def sources(accept_header: str | None, accept_param: str | None) -> list[list[MediaRange]]:
    """The Accept sources in the order PS3.18 §8.7.8.1 consults them: the ``accept=``
    query parameter (if given), then the header.  No header (or an empty one), which is
    not conformant but common (curl, scripts), counts as ``*/*``."""
    found = []
    if accept_param is not None and accept_param.strip():
        found.append(parse_accept(accept_param, query=True))
    if accept_header is None or not accept_header.strip():
        found.append([MediaRange("*/*", {}, 1.0)])
    else:
        found.append(parse_accept(accept_header))
    return found


DICOM_JSON = "application/dicom+json"
JSON = "application/json"
_JSON_TYPES = (DICOM_JSON, JSON)


def best_json_media(ranges: list[MediaRange], *, wildcards_match_json: bool = False) -> str | None:
    """``application/dicom+json`` or ``application/json``, whichever `ranges` accept with
    the higher q under its most specific matching range (DICOM JSON on a tie); None if
    neither is acceptable.  ``application/*`` and ``*/*`` match DICOM JSON, and with
    `wildcards_match_json` plain JSON too (QIDO: ``application/dicom+json;q=0, */*`` is
    then answered in JSON).  A ``charset`` other than UTF-8 excludes a range: DICOM JSON
    is UTF-8 (PS3.18 F.2)."""
    best: dict[str, tuple[int, float]] = {}
    for rng in ranges:
        charset = rng.params.get("charset")
        if charset is not None and charset.lower() not in ("utf-8", "utf8"):
            continue
        for media in _JSON_TYPES:
            if rng.media == media:
                spec = 2
            elif (media == DICOM_JSON or wildcards_match_json) and rng.media in ("application/*", "*/*"):
                spec = 1 if rng.media == "application/*" else 0
            else:
                continue
            old = best.get(media)
            if old is None or spec > old[0] or (spec == old[0] and rng.q > old[1]):
                best[media] = (spec, rng.q)
    scored = [(best[m][1], -i, m) for i, m in enumerate(_JSON_TYPES) if m in best]
    if not scored:
        return None
    q, _, media = max(scored)
    return media if q > 0 else None

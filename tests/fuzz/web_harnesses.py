"""Fuzz harnesses for what HTTP clients send: the Accept parser (more to come)."""

from __future__ import annotations

from dicomrst.common.accept import best_json_media, parse_accept, sources
from tests.fuzz import harness


@harness("accept")
def accept(data: bytes) -> None:
    # Headers reach the parser decoded as Latin-1, query parameters as UTF-8.
    text = data.decode("latin-1")
    for ranges in sources(text, text):
        best_json_media(ranges)
        best_json_media(ranges, wildcards_match_json=True)
    parse_accept(data.decode("utf-8", "replace"), query=True)

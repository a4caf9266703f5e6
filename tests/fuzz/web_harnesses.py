"""Fuzz harnesses for what HTTP clients send: the Accept parser, the STOW-RS multipart
parser and Part-10 check, and the QIDO-RS query parser.

Each harness returns quietly when the parser accepts its input or rejects it with its
declared error.  Anything else is a finding: another exception, a hang or a blow-up, and,
for the two incremental parsers, a verdict that depends on how the input was cut into
chunks (the network cuts it anywhere).  Chunk boundaries come from the input itself (a
seed byte), so a finding replays the same way without atheris.
"""

from __future__ import annotations

import random

from pydicom.dataset import Dataset
from twisted.web.http import parse_qs

from dicomrst.common.accept import best_json_media, parse_accept, sources
from dicomrst.common.identifiers import decode_identifier, encode_identifier
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.errors import BadRequest
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from dicomrst.stow.multipart import MultipartError, MultipartParser, check_boundary
from dicomrst.stow.part10 import NotPart10, Part10Checker, Part10Info
from tests.fuzz import harness


@harness("accept")
def accept(data: bytes) -> None:
    # Headers reach the parser decoded as Latin-1, query parameters as UTF-8.
    text = data.decode("latin-1")
    for ranges in sources(text, text):
        best_json_media(ranges)
        best_json_media(ranges, wildcards_match_json=True)
    parse_accept(data.decode("utf-8", "replace"), query=True)


def chunks(data: bytes, seed: int) -> list[bytes]:
    """`data` cut at places a seed chooses: single bytes, small and large pieces."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 1, 2, 3, 7, 64, 1000, len(data)))
        out.append(data[i : i + n])
        i += n
    return out


# -- STOW-RS: multipart/related ---------------------------------------------------------------


class _Parts:
    """A PartHandler that records the events, checking the order the parser promises."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._open = False

    def part_begin(self, headers: list[tuple[str, str]]) -> None:
        if self._open:
            raise AssertionError("part_begin inside a part")
        self._open = True
        self.events.append(("begin", headers))
        self.events.append(b"")

    def part_data(self, data: bytes) -> None:
        if not self._open or not data:
            raise AssertionError("part_data outside a part, or empty")
        last = self.events[-1]
        assert isinstance(last, bytes)
        self.events[-1] = last + data

    def part_end(self) -> None:
        if not self._open:
            raise AssertionError("part_end outside a part")
        self._open = False
        self.events.append("end")


def _parse_multipart(boundary: bytes, pieces: list[bytes]) -> tuple[list[object], str | None]:
    parts = _Parts()
    parser = MultipartParser(boundary, parts)
    try:
        for piece in pieces:
            parser.feed(piece)
        parser.finish()
    except MultipartError as e:
        return parts.events, str(e)
    if not parser.complete:
        raise AssertionError("finish() accepted a body without its closing delimiter")
    return parts.events, None


@harness("stow-multipart")
def stow_multipart(data: bytes) -> None:
    """Input: one seed byte, a boundary line, then the body.  The body is parsed whole and
    in the seed's chunks: the parts, and where it failed, must not depend on the cut."""
    if not data:
        return
    seed, rest = data[0], data[1:]
    line, _, body = rest.partition(b"\n")
    try:
        boundary = check_boundary(line.decode("latin-1"))
    except MultipartError:
        boundary = b"dicomrst-fuzz"
        body = rest
    whole = _parse_multipart(boundary, [body])
    cut = _parse_multipart(boundary, chunks(body, seed))
    if whole[1] is None or cut[1] is None:
        if whole != cut:
            raise AssertionError(f"the verdict depends on the chunks: {whole[1]!r} / {cut[1]!r}")
    elif whole[0] != cut[0][: len(whole[0])] and cut[0] != whole[0][: len(cut[0])]:
        # Both failed: an incremental parser reports up to where it got, which may differ
        # by what the last chunk held, but never what it reported before.
        raise AssertionError("the parts before the error depend on the chunks")


# -- STOW-RS: the Part-10 check ----------------------------------------------------------------


def _check_part10(pieces: list[bytes]) -> Part10Info | str:
    checker = Part10Checker()
    for piece in pieces:
        checker.feed(piece)
    try:
        return checker.finish()
    except NotPart10 as e:
        return f"NotPart10: {e}"


@harness("part10")
def part10(data: bytes) -> None:
    """Input: one seed byte, then a STOW part's content.  Checked whole and in chunks: the
    same `Part10Info` or the same refusal."""
    if not data:
        return
    seed, content = data[0], data[1:]
    whole = _check_part10([content])
    cut = _check_part10(chunks(content, seed))
    if whole != cut:
        raise AssertionError(f"the verdict depends on the chunks: {whole!r} / {cut!r}")


# -- QIDO-RS: query parameters → C-FIND identifier ---------------------------------------------

_STUDY = "1.2.826.0.1.3680043.8.498.1"
_SERIES = "1.2.826.0.1.3680043.8.498.1.1"
_TARGETS = (
    Target.studies,
    lambda: Target.study_series(_STUDY),
    lambda: Target.study_series_instances(_STUDY, _SERIES),
    lambda: Target.study_instances(_STUDY),
    Target.all_series,
    Target.all_instances,
)


@harness("qido-query")
def qido_query(data: bytes) -> None:
    """Input: one byte choosing the resource, then a query string as a client sends it.
    Parsed as twisted.web and `dicomrst.web.requests.query_args` do, then by `parse_query`;
    what it accepts must encode as a C-FIND identifier (both VR forms) and its matching
    must judge any result, the identifier itself included."""
    if not data:
        return
    target = _TARGETS[data[0] % len(_TARGETS)]()
    args = parse_qs(data[1:], 1)
    try:
        decoded = {name.decode("utf-8"): [v.decode("utf-8") for v in values] for name, values in args.items()}
    except UnicodeDecodeError:
        return  # a 400 in query_args
    try:
        query = parse_query(target, decoded)
    except BadRequest:
        return
    for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
        encoded = encode_identifier(query.identifier, syntax)
        echoed = decode_identifier(encoded, syntax)
        query.accepts(echoed)
    query.accepts(Dataset())

# -*- test-case-name: tests.test_peek -*-
"""Find the Study and Series Instance UIDs near the start of a data set stream.

A C-STORE command names the SOP class and instance but not the study or series, which
we need early: for the part's Content-Location, and to tell which retrieve an
instance belongs to when a PACS omits the Move Originator fields.  Both UIDs are
top-level elements of group 0020, so walking the top-level elements of the first
few kilobytes finds them without decoding, or holding, the rest.
"""

from __future__ import annotations

import struct

import attrs

STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018

_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class PeekFailed(Exception):
    """The data set ended, or did not parse, before both UIDs were found."""


@attrs.define
class UIDs:
    study: str | None = None
    series: str | None = None


_IMPLICIT = struct.Struct("<HHL")  # group, element, length
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_UL = struct.Struct("<L")
_DELIMITERS = frozenset((_ITEM, _ITEM_END, _SEQ_END))


class UIDPeeker:
    """Fed data-set fragments in order; `done` once both UIDs are known or past.

    `implicit` is True for Implicit VR Little Endian; big endian and deflated data
    sets are not walked (`feed` reports failure), the caller falls back.

    It runs for every retrieved instance, on the reactor: a fragment is walked where it
    lies (not copied), and only an element cut off at its end is kept for the next one.
    """

    def __init__(self, implicit: bool) -> None:
        self.implicit = implicit
        self.uids = UIDs()
        self.done = False
        self.failed: str | None = None
        self._buf = bytearray()  # the start of an element cut off at a fragment's end
        self._skip = 0  # bytes of a value still to skip past the data seen
        self._depth: list[int] = []  # nesting of undefined-length sequences/items

    def feed(self, fragment: bytes) -> bool:
        """Consume a fragment; True when done (found, passed, or failed)."""
        if self.done:
            return True
        if self._skip:
            if len(fragment) <= self._skip:
                self._skip -= len(fragment)
                return False
            fragment = fragment[self._skip :]
            self._skip = 0
        data: bytes | bytearray = self._buf + fragment if self._buf else fragment
        try:
            rest = self._walk(data)
        except PeekFailed as e:
            self.failed = str(e)
            self.done = True
            rest = len(data)
        self._buf = bytearray(data[rest:]) if not self.done and rest < len(data) else bytearray()
        return self.done

    def _walk(self, buf: bytes | bytearray) -> int:
        """Walk the top-level elements from the start of `buf`; the offset of the first
        byte not consumed (an element not complete yet)."""
        depth = self._depth
        implicit = self.implicit
        n = len(buf)
        pos = 0
        while True:
            if n - pos < 8:
                return pos
            if implicit:
                group, element, length = _IMPLICIT.unpack_from(buf, pos)
                header = 8
                tag = group << 16 | element
            else:
                group, element, vr, length = _EXPLICIT.unpack_from(buf, pos)
                header = 8
                tag = group << 16 | element
                if tag in _DELIMITERS:
                    (length,) = _UL.unpack_from(buf, pos + 4)
                elif vr in _LONG_VRS:
                    if n - pos < 12:
                        return pos
                    (length,) = _UL.unpack_from(buf, pos + 8)
                    header = 12
            if not depth and group > 0x0020:
                self._finish()
                return n
            if tag == _ITEM_END or tag == _SEQ_END:
                if not depth:
                    raise PeekFailed("delimiter outside a sequence")
                depth.pop()
                pos += header
                continue
            if length == _UNDEFINED:
                # An undefined-length sequence or item: walk into it.
                depth.append(tag)
                pos += header
                continue
            end = pos + header + length
            if not depth and (tag == STUDY_UID or tag == SERIES_UID):
                if n < end:
                    return pos
                value = bytes(buf[pos + header : end]).rstrip(b"\x00 ").decode("ascii", "replace")
                if tag == STUDY_UID:
                    self.uids.study = value
                else:
                    self.uids.series = value
                if self.uids.study and self.uids.series:
                    self._finish()
                    return n
            if end > n:
                self._skip = end - n
                return n
            pos = end

    def _finish(self) -> None:
        self.done = True

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


class UIDPeeker:
    """Fed data-set fragments in order; `done` once both UIDs are known or past.

    `implicit` is True for Implicit VR Little Endian; big endian and deflated data
    sets are not walked (`feed` reports failure), the caller falls back.
    """

    def __init__(self, implicit: bool) -> None:
        self.implicit = implicit
        self.uids = UIDs()
        self.done = False
        self.failed: str | None = None
        self._buf = bytearray()
        self._pos = 0  # offset in _buf of the next top-level element
        self._skip = 0  # bytes of a value still to skip past the buffer
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
        self._buf += fragment
        try:
            self._walk()
        except PeekFailed as e:
            self.failed = str(e)
            self.done = True
        return self.done

    def _walk(self) -> None:
        buf = self._buf
        while not self.done:
            pos = self._pos
            if len(buf) - pos < 8:
                break
            group, element = struct.unpack_from("<HH", buf, pos)
            tag = group << 16 | element
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                (length,) = struct.unpack_from("<L", buf, pos + 4)
                header = 8
                vr = b""
            elif self.implicit:
                (length,) = struct.unpack_from("<L", buf, pos + 4)
                header = 8
                vr = b"SQ" if length == _UNDEFINED else b""
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    if len(buf) - pos < 12:
                        break
                    (length,) = struct.unpack_from("<L", buf, pos + 8)
                    header = 12
                else:
                    (length,) = struct.unpack_from("<H", buf, pos + 6)
                    header = 8
            if not self._depth and group > 0x0020:
                self._finish()
                return
            if tag in (_ITEM_END, _SEQ_END):
                if not self._depth:
                    raise PeekFailed("delimiter outside a sequence")
                self._depth.pop()
                self._advance(pos + header)
                continue
            if length == _UNDEFINED:
                # An undefined-length sequence or item: walk into it.
                self._depth.append(tag)
                self._advance(pos + header)
                continue
            end = pos + header + length
            if not self._depth and tag in (STUDY_UID, SERIES_UID):
                if len(buf) < end:
                    break
                value = bytes(buf[pos + header : end]).rstrip(b"\x00 ").decode("ascii", "replace")
                if tag == STUDY_UID:
                    self.uids.study = value
                else:
                    self.uids.series = value
                if self.uids.study and self.uids.series:
                    self._finish()
                    return
            if end > len(buf):
                self._skip = end - len(buf)
                self._buf = bytearray()
                self._pos = 0
                return
            self._advance(end)

    def _advance(self, offset: int) -> None:
        self._pos = offset
        if offset > 65536:
            del self._buf[:offset]
            self._pos = 0

    def _finish(self) -> None:
        self.done = True
        self._buf = bytearray()

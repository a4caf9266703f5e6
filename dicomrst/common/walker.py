# -*- test-case-name: tests.unit.test_peek -*-
"""The element walker: the elements of a data set read from its bytes, fed in pieces.

Several jobs need a few top-level elements of a data set long before (or without) the
whole of it: which study and series an arriving instance belongs to (to correlate a
C-MOVE sub-operation, to name a part's Content-Location), the UIDs a STOW part claims,
where the pixel data of an object starts.  `ElementWalker` does the one walk all of them
need: element headers in Explicit or Implicit VR, little or big endian, sequences and
items of undefined length followed (those of a UN of undefined length in Implicit VR LE,
PS3.5 §6.2.2), values skipped without being held unless asked for.

It runs on the reactor for every retrieved instance, so a fragment is walked where it
lies (not copied) and only an element cut off at a fragment's end is kept for the next.
"""

from __future__ import annotations

import struct

import attrs

from dicomrst.common.tags import (
    ITEM_END,
    LONG_VRS,
    PIXEL_DATA_TAGS,
    SEQUENCE_END,
    SERIES_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    UNDEFINED_LENGTH,
)

# An element header read as Implicit VR (tag, 32-bit length) or as Explicit VR (tag, VR,
# 16-bit length); items and delimiters have the implicit shape in every syntax.
_LE_IMPLICIT = struct.Struct("<HHL")
_BE_IMPLICIT = struct.Struct(">HHL")
_LE_EXPLICIT = struct.Struct("<HH2sH")
_BE_EXPLICIT = struct.Struct(">HH2sH")
_LE_U32 = struct.Struct("<L")
_BE_U32 = struct.Struct(">L")


#: Bytes of a data set held at most while its UIDs are looked for (a retrieved instance
#: whose UIDs come later is handled without them).
PEEK_LIMIT = 1 << 20


class WalkFailed(Exception):
    """The bytes are not a data set the walker can follow; the message says where."""


@attrs.frozen
class ElementPosition:
    """Where an element is in the stream: its first byte, header length and value length."""

    offset: int
    header: int
    length: int


class ElementWalker:
    """Fed a data set's bytes in order; keeps the values of the `wanted` top-level tags.

    The walk ends (`done`) when every wanted value is in, at the first top-level element
    of a group above `last_group`, at a top-level element of `stop_at` (its position is
    then `stopped_at`), or when the bytes stop making sense (`failed` says why).

    :param implicit: Implicit VR (else Explicit VR).
    :param little: little endian (else big endian).
    :param check_vr: fail on an explicit VR that is not two upper-case letters.
    :param max_value: the longest wanted value taken (longer ones fail the walk).
    """

    def __init__(
        self,
        *,
        implicit: bool,
        little: bool = True,
        wanted: frozenset[int] = frozenset(),
        last_group: int = 0xFFFF,
        stop_at: frozenset[int] = frozenset(),
        check_vr: bool = False,
        max_value: int = 1024,
    ) -> None:
        self.implicit = implicit
        self.wanted = wanted
        self.last_group = last_group
        self.stop_at = stop_at
        self.check_vr = check_vr
        self.max_value = max_value
        self.values: dict[int, bytes] = {}
        self.stopped_at: ElementPosition | None = None
        self.done = False
        self.failed: str | None = None
        self._implicit_header = _LE_IMPLICIT if little else _BE_IMPLICIT
        self._explicit_header = _LE_EXPLICIT if little else _BE_EXPLICIT
        self._u32 = _LE_U32 if little else _BE_U32
        self._buf = bytearray()  # the start of an element cut off at a fragment's end
        self._base = 0  # stream offset of the next byte fed (or of _buf[0])
        self._skip = 0  # bytes of a value still to skip past the data seen
        # One entry per open sequence or item of undefined length: whether the elements
        # inside it are in Implicit VR.
        self._stack: list[bool] = []

    @property
    def buffered(self) -> int:
        """Bytes held for the next fragment (an element cut off at a fragment's end)."""
        return len(self._buf)

    def feed(self, fragment: bytes | bytearray) -> bool:
        """Walk on through `fragment`; True once done (found, passed, or failed)."""
        if self.done:
            return True
        if self._skip:
            if len(fragment) <= self._skip:
                self._skip -= len(fragment)
                self._base += len(fragment)
                return False
            self._base += self._skip
            fragment = fragment[self._skip :]
            self._skip = 0
        data: bytes | bytearray = self._buf + fragment if self._buf else fragment
        try:
            rest = self._walk(data)
        except WalkFailed as e:
            self.failed = str(e)
            self.done = True
            rest = len(data)
        if self.done or rest >= len(data):
            self._buf = bytearray()
        else:
            self._buf = bytearray(data[rest:])
        self._base += rest
        return self.done

    def _walk(self, buf: bytes | bytearray) -> int:
        """Walk the elements from the start of `buf`; the offset of the first byte not
        consumed (an element not complete yet), or len(buf) when done or skipping."""
        stack = self._stack
        implicit_header = self._implicit_header.unpack_from
        explicit_header = self._explicit_header.unpack_from
        u32 = self._u32.unpack_from
        wanted, stop_at = self.wanted, self.stop_at
        n = len(buf)
        pos = 0
        while True:
            if n - pos < 8:
                return pos
            vr: bytes | None = None
            header = 8
            if stack[-1] if stack else self.implicit:
                group, element, length = implicit_header(buf, pos)
            else:
                group, element, vr, length = explicit_header(buf, pos)
                if group == 0xFFFE:
                    (length,) = u32(buf, pos + 4)
                    vr = None
                elif vr in LONG_VRS:
                    if n - pos < 12:
                        return pos
                    (length,) = u32(buf, pos + 8)
                    header = 12
                elif self.check_vr and not (vr.isalpha() and vr.isupper()):
                    raise WalkFailed(f"element ({group:04X},{element:04X}) has no valid VR")
            tag = group << 16 | element
            if not stack:
                if group == 0xFFFE:
                    raise WalkFailed("an item or delimiter outside a sequence")
                if group > self.last_group:
                    self.done = True
                    return n
                if tag in stop_at:
                    self.stopped_at = ElementPosition(self._base + pos, header, length)
                    self.done = True
                    return n
            elif tag == ITEM_END or tag == SEQUENCE_END:
                stack.pop()
                pos += header
                continue
            if length == UNDEFINED_LENGTH:
                # A sequence or item to walk into; a UN's content is Implicit VR LE.
                stack.append(vr == b"UN" or (stack[-1] if stack else self.implicit))
                pos += header
                continue
            end = pos + header + length
            if not stack and tag in wanted:
                if length > self.max_value:
                    raise WalkFailed(f"element ({group:04X},{element:04X}) is too long for a UID")
                if n < end:
                    return pos
                self.values[tag] = bytes(buf[pos + header : end])
                if len(self.values) == len(wanted):
                    self.done = True
                    return n
            if end > n:
                self._skip = end - n
                return n
            pos = end


def text_value(raw: bytes | None) -> str | None:
    """A UI (or other ASCII) value as text, its padding stripped; None if absent or empty."""
    if raw is None:
        return None
    return raw.rstrip(b"\x00 ").decode("ascii", "replace") or None


@attrs.define
class UIDs:
    study: str | None = None
    series: str | None = None


class UIDPeeker:
    """The Study and Series Instance UIDs of a data set stream (little endian).

    A C-STORE command names the SOP class and instance but not the study or series,
    which are needed early: for a part's Content-Location, and to tell which retrieve an
    instance belongs to when a PACS omits the Move Originator fields.  Both are top-level
    elements of group 0020, so the walk stops there.
    """

    def __init__(self, implicit: bool) -> None:
        self._walker = ElementWalker(
            implicit=implicit, wanted=frozenset((STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)), last_group=0x0020
        )

    @property
    def done(self) -> bool:
        return self._walker.done

    @property
    def failed(self) -> str | None:
        return self._walker.failed

    @property
    def buffered(self) -> int:
        return self._walker.buffered

    @property
    def uids(self) -> UIDs:
        values = self._walker.values
        return UIDs(text_value(values.get(STUDY_INSTANCE_UID)), text_value(values.get(SERIES_INSTANCE_UID)))

    def feed(self, fragment: bytes) -> bool:
        """Consume a fragment; True when done (found, passed, or failed)."""
        return self._walker.feed(fragment)


def find_pixel_data(data: bytes, start: int, implicit: bool) -> ElementPosition | None:
    """Where the top-level pixel data element of the little-endian data set at
    ``data[start:]`` is (offsets into `data`), or None when it is not within `data`, has an
    undefined length, or the walk fails."""
    walker = ElementWalker(implicit=implicit, stop_at=PIXEL_DATA_TAGS)
    walker.feed(data[start:] if start else data)
    found = walker.stopped_at
    if walker.failed is not None or found is None or found.length == UNDEFINED_LENGTH:
        return None
    return ElementPosition(found.offset + start, found.header, found.length)

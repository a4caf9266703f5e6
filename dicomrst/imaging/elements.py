# -*- test-case-name: tests.unit.test_imaging_bulkdata -*-
"""The elements of a stored Part-10 instance, found by seeking: headers read, values skipped.

`open_instance` reads the file meta of a seekable binary file (a cache entry, a local
copy) and returns a `StoredInstance`, which walks the data set one `Level` at a time (the
top level, or the content of one sequence item) and finds elements by tag and sequence
items by index.  Only element headers and the few small values asked for are read: a
value is passed with a seek, so finding the pixel data of a 1 GB object reads kilobytes.

Encodings: Explicit and Implicit VR, little and big endian; sequences and items of
defined and undefined length; the content of a UN element is read as Implicit VR Little
Endian (PS3.5 §6.2.2).  A Deflated Explicit VR Little Endian data set cannot be seeked
into: it is inflated once into a temporary file, and offsets then point into that file
(`StoredInstance.addressable` is False).

`dicomrst.common.walker.ElementWalker` does the same walk for bytes fed in order off the
network, consuming every byte and staying at the top level; here the file is seekable and
lookups go down into sequences by item index, so this is a reader of its own.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

import attrs

from dicomrst.common.part10 import MAX_META, PREAMBLE, TRANSFER_SYNTAX, NotPart10, read_file_meta
from dicomrst.common.tags import ITEM, ITEM_END, LONG_VRS, SEQUENCE_END, UNDEFINED_LENGTH
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from dicomrst.imaging.extent import Span, StoredObjectError

#: Bytes read at a time while walking headers (and the most a file meta group may take).
BLOCK = 64 << 10
#: Sequences nested deeper than this are not followed (no real object comes close).
MAX_DEPTH = 64
#: The largest value `read_value` holds (an Extended Offset Table of 8M frames).
MAX_VALUE = 64 << 20

_HEADERS = {
    # (implicit, little) → the struct of an element header
    (True, True): struct.Struct("<HHL"),
    (True, False): struct.Struct(">HHL"),
    (False, True): struct.Struct("<HH2sH"),
    (False, False): struct.Struct(">HH2sH"),
}
#: Every VR (PS3.5 Table 6.2-1): what the bytes after a tag are in Explicit VR.
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST SV TM UI UL US".split()) | LONG_VRS
_U32 = {True: struct.Struct("<L"), False: struct.Struct(">L")}
_ITEM_HEADER = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}


@attrs.frozen
class Element:
    """An element's header: where it is, its VR (None in Implicit VR) and value length."""

    tag: int
    vr: str | None
    offset: int
    header: int
    length: int

    @property
    def value_offset(self) -> int:
        return self.offset + self.header

    @property
    def undefined(self) -> bool:
        """Of undefined length: a sequence, or encapsulated pixel data."""
        return self.length == UNDEFINED_LENGTH

    @property
    def span(self) -> Span:
        """The value's bytes (of an element of defined length)."""
        return Span(self.value_offset, self.length)


@attrs.frozen
class Level:
    """The elements from byte `start`: up to `end`, or (None) up to an Item Delimitation."""

    start: int
    end: int | None
    implicit: bool
    little: bool


class _Window:
    """Reads at any offset through one buffered block (header walks read little at a time)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._start = 0
        self._buf = b""

    def read(self, pos: int, n: int) -> bytes:
        """Up to `n` bytes at `pos` (fewer at the end of the file)."""
        offset = pos - self._start
        if 0 <= offset and offset + n <= len(self._buf):
            return self._buf[offset : offset + n]
        self._source.seek(pos)
        self._buf = self._source.read(max(n, BLOCK))
        self._start = pos
        return self._buf[:n]


class StoredInstance:
    """A stored instance's data set, walked by seeking in `source`.

    Use `open_instance` for a Part-10 file.  `dataset_offset` is where the data set starts
    in `source` (of `size` bytes), in `transfer_syntax`.  `addressable` is False when
    offsets are not the stored object's own (a deflated data set read from a temporary
    copy); `close` closes only what the instance opened itself.  It seeks in `source`: one
    thread at a time (open one per request).
    """

    def __init__(
        self,
        source: BinaryIO,
        dataset_offset: int,
        transfer_syntax: str,
        size: int,
        *,
        addressable: bool = True,
        owned: BinaryIO | None = None,
    ) -> None:
        self.source = source
        self.dataset_offset = dataset_offset
        self.transfer_syntax = transfer_syntax
        self.size = size
        self.addressable = addressable
        self._owned = owned
        self._window = _Window(source)
        implicit = transfer_syntax == IMPLICIT_VR_LE
        first = self._window.read(dataset_offset, 6)
        if len(first) == 6 and implicit == (first[4:6] in _VRS):
            # Some writers put a data set in the other VR encoding than the syntax says; the
            # first element shows which, and pydicom (hence the metadata) reads it that way.
            implicit = not implicit
        self.top = Level(dataset_offset, size, implicit, transfer_syntax != EXPLICIT_VR_BE)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> StoredInstance:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- headers ----------------------------------------------------------------------

    def header(self, pos: int, level: Level) -> Element:
        """The element header at `pos` in `level`'s encoding."""
        raw = self._window.read(pos, 12)
        if len(raw) < 8:
            raise StoredObjectError(f"the stored object ends inside the element header at byte {pos}")
        vr: str | None = None
        header = 8
        if level.implicit:
            group, number, length = _HEADERS[True, level.little].unpack_from(raw)
        else:
            group, number, raw_vr, length = _HEADERS[False, level.little].unpack_from(raw)
            if group == 0xFFFE:
                (length,) = _U32[level.little].unpack_from(raw, 4)
            elif raw_vr in LONG_VRS:
                if len(raw) < 12:
                    raise StoredObjectError(f"the stored object ends inside the element header at byte {pos}")
                (length,) = _U32[level.little].unpack_from(raw, 8)
                header = 12
                vr = raw_vr.decode("ascii")
            else:
                vr = raw_vr.decode("ascii", "replace")
        return Element(group << 16 | number, vr, pos, header, length)

    def _item_header(self, pos: int, little: bool) -> tuple[int, int]:
        raw = self._window.read(pos, 8)
        if len(raw) < 8:
            raise StoredObjectError(f"the stored object ends inside an item header at byte {pos}")
        group, number, length = _ITEM_HEADER[little].unpack_from(raw)
        return group << 16 | number, length

    @staticmethod
    def inner(element: Element, level: Level) -> tuple[bool, bool]:
        """(implicit, little) of the items of sequence `element`: a UN's content is
        Implicit VR Little Endian (PS3.5 §6.2.2), anything else's is its level's."""
        if element.vr == "UN":
            return True, True
        return level.implicit, level.little

    # -- walking ----------------------------------------------------------------------

    def elements(self, level: Level) -> Iterator[Element]:
        """The elements of `level` in order (their values are not read)."""
        pos = level.start
        while level.end is None or pos < level.end:
            element = self.header(pos, level)
            if element.tag == ITEM_END and level.end is None:
                return
            if element.tag >> 16 == 0xFFFE:
                raise StoredObjectError(f"an item or delimiter among the elements at byte {pos}")
            yield element
            pos = self.after(element, level)

    def after(self, element: Element, level: Level, depth: int = 0) -> int:
        """The offset just past `element`'s value."""
        if not element.undefined:
            return element.value_offset + element.length
        if depth > MAX_DEPTH:
            raise StoredObjectError(f"sequences nested deeper than {MAX_DEPTH} levels")
        implicit, little = self.inner(element, level)
        pos = element.value_offset
        while True:
            tag, length = self._item_header(pos, little)
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise StoredObjectError(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item was due at byte {pos - 8}"
                )
            if length != UNDEFINED_LENGTH:
                pos += length
                continue
            pos = self._item_end(Level(pos, None, implicit, little), depth)

    def _item_end(self, item: Level, depth: int = 0) -> int:
        """The offset just past the Item Delimitation of `item` (of undefined length)."""
        pos = item.start
        while True:
            inside = self.header(pos, item)
            if inside.tag == ITEM_END:
                return inside.value_offset
            pos = self.after(inside, item, depth + 1)

    def items(self, element: Element, level: Level) -> Iterator[Level]:
        """The items of sequence `element` (of `level`) as levels, in order."""
        implicit, little = self.inner(element, level)
        pos = element.value_offset
        end = None if element.undefined else pos + element.length
        while end is None or pos < end:
            tag, length = self._item_header(pos, little)
            if tag == SEQUENCE_END and end is None:
                return
            if tag != ITEM:
                raise StoredObjectError(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item was due at byte {pos}"
                )
            start = pos + 8
            if length != UNDEFINED_LENGTH:
                yield Level(start, start + length, implicit, little)
                pos = start + length
                continue
            item = Level(start, None, implicit, little)
            yield item
            pos = self._item_end(item)

    def find(self, level: Level, tag: int) -> Element | None:
        """Element `tag` of `level`, or None.  Elements are in ascending order (PS3.5
        §7.1), so the walk stops at the first one past `tag`."""
        for element in self.elements(level):
            if element.tag == tag:
                return element
            if element.tag > tag:
                return None
        return None

    def scan(
        self, level: Level, wanted: frozenset[int], stop: frozenset[int]
    ) -> tuple[dict[int, bytes], Element | None]:
        """The values of the `wanted` elements of `level` up to the first element of
        `stop`, and that element (None when `level` has none)."""
        values: dict[int, bytes] = {}
        last = max(stop)
        for element in self.elements(level):
            if element.tag in stop:
                return values, element
            if element.tag > last:
                break
            if element.tag in wanted and not element.undefined:
                values[element.tag] = self.read_value(element)
        return values, None

    def item(self, element: Element, level: Level, index: int) -> Level | None:
        """Item `index` (from 0) of sequence `element`, or None when it has fewer."""
        for n, item in enumerate(self.items(element, level)):
            if n == index:
                return item
        return None

    def first_item(self, element: Element, level: Level) -> Span:
        """The value of encapsulated `element`'s first item: its Basic Offset Table."""
        tag, length = self._item_header(element.value_offset, level.little)
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise StoredObjectError(f"encapsulated data has no valid item at byte {element.value_offset}")
        return Span(element.value_offset + 8, length)

    def fragments(self, element: Element, level: Level) -> tuple[Span, ...]:
        """The item values of encapsulated `element`: the Basic Offset Table first, then
        each fragment (PS3.5 §A.4)."""
        little = level.little
        pos = element.value_offset
        found: list[Span] = []
        while True:
            tag, length = self._item_header(pos, little)
            if tag == SEQUENCE_END:
                return tuple(found)
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise StoredObjectError(f"encapsulated data has no valid item at byte {pos}")
            found.append(Span(pos + 8, length))
            pos += 8 + length

    def read_value(self, element: Element) -> bytes:
        """The value of `element` (defined length, at most `MAX_VALUE` bytes)."""
        if element.undefined or element.length > MAX_VALUE:
            raise StoredObjectError(f"the value at byte {element.offset} is too long to read whole")
        data = self._window.read(element.value_offset, element.length)
        if len(data) != element.length:
            raise StoredObjectError(f"the stored object ends inside the value at byte {element.offset}")
        return data

    def read(self, span: Span) -> bytes:
        """A few bytes of the object (an end marker, a table)."""
        data = self._window.read(span.offset, span.length)
        if len(data) != span.length:
            raise StoredObjectError(f"the stored object ends before byte {span.end}")
        return data


def _inflate(source: BinaryIO, start: int, limit: int) -> BinaryIO:
    """The deflated data set of `source` from `start`, inflated into a temporary file."""
    target = tempfile.TemporaryFile()
    try:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        source.seek(start)
        written = 0
        while chunk := source.read(BLOCK):
            data = inflater.decompress(chunk, BLOCK * 16)
            while True:
                written += len(data)
                if written > limit:
                    raise StoredObjectError(f"the deflated data set inflates to more than {limit} bytes")
                target.write(data)
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, BLOCK * 16)
        target.write(inflater.flush())
    except zlib.error as e:
        target.close()
        raise StoredObjectError(f"cannot inflate the deflated data set: {e}") from None
    except BaseException:
        target.close()
        raise
    return target


def open_instance(
    source: BinaryIO, *, size: int | None = None, max_inflated: int = 4 << 30
) -> StoredInstance:
    """The stored Part-10 instance in `source` (seekable, binary; the caller closes it).

    `size`: the object is that long though `source` holds only its first bytes (the head
    of an S3 object): what lies in the head can be found, and the spans of native frames
    computed, with nothing more read; a walk past the head is a `StoredObjectError`.
    Raises `StoredObjectError` when it is not Part 10 or has no Transfer Syntax UID.  A
    deflated data set is inflated into a temporary file (at most `max_inflated` bytes),
    closed by `StoredInstance.close`.
    """
    source.seek(0)
    head = source.read(len(PREAMBLE) + MAX_META + 16)
    try:
        meta = read_file_meta(head, final=True, trust_group_length=False)
    except NotPart10 as e:
        raise StoredObjectError(str(e)) from None
    if meta is None:  # pragma: no cover - final=True returns a group or raises
        raise StoredObjectError("no file meta group")
    transfer_syntax = meta.text(TRANSFER_SYNTAX)
    if not transfer_syntax:
        raise StoredObjectError("the file meta group has no Transfer Syntax UID")
    if size is None:
        size = source.seek(0, 2)
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        inflated = _inflate(source, meta.dataset_offset, max_inflated)
        return StoredInstance(
            inflated, 0, transfer_syntax, inflated.seek(0, 2), addressable=False, owned=inflated
        )
    return StoredInstance(source, meta.dataset_offset, transfer_syntax, size)

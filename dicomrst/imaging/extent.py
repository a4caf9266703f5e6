# -*- test-case-name: tests.unit.test_imaging_frames -*-
"""Where the bytes of a frame or value are in a stored object, and how they go out.

An `Extent` is pure data: the byte `Span`s to read from the stored object, in order, and
what turns their concatenation into the bytes sent (little endian, per PS3.18 §8.7.3.3.1):

* ``swap``: a big-endian original's values byte-swapped in units of 2, 4 or 8 bytes;
* ``head``/``size``: the bytes kept after swapping (a frame that does not start or end on
  a swap unit, e.g. 8-bit pixels in an OW value of odd-length frames);
* ``bits``/``shift``: a frame of 1-bit pixels that does not start or end on a byte
  boundary (PS3.5 §8.1.1: frames of Bits Allocated 1 are packed without padding): its
  bits shifted down to start at bit 0 of the first byte, the last byte padded with zero
  bits, so a frame always goes out as whole bytes of its own pixels only.

An extent with none of these is `direct`: its bytes go out as stored, so a caller with
ranged reads (S3) can fetch the spans and send them as they come.  `read_extent` and
`iter_extent` read an extent from a seekable file; `Extent.assemble` does the same for
bytes the caller fetched itself.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import BinaryIO

import attrs

from dicomrst.common.transcode import DataSetError

_SWAP_CODES = {2: "H", 4: "I", 8: "Q"}


class StoredObjectError(DataSetError):
    """The stored object is not what its headers say (truncated, malformed, inconsistent)."""


@attrs.frozen
class Span:
    """``length`` bytes from byte ``offset`` of the stored object."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def swapped(data: bytes, unit: int) -> bytes:
    """`data` with each `unit`-byte value's bytes reversed (unit 1: unchanged)."""
    if unit == 1 or not data:
        return data
    if len(data) % unit:
        raise StoredObjectError(f"{len(data)} bytes are not a whole number of {unit}-byte values")
    values = array(_SWAP_CODES[unit])
    values.frombytes(data)
    values.byteswap()
    return values.tobytes()


@attrs.frozen
class Extent:
    """The bytes of one frame or value: `spans` to read, then the transformation.

    ``size`` bytes are kept from ``head`` on in the concatenation of the spans after
    swapping; with ``bits`` set, those bytes are a little-endian bit string of which
    ``bits`` bits from bit ``shift`` on are kept.
    """

    spans: tuple[Span, ...]
    size: int
    swap: int = 1
    head: int = 0
    bits: int | None = None
    shift: int = 0

    @classmethod
    def of(cls, *spans: Span, swap: int = 1) -> Extent:
        """All the bytes of `spans` (swapped in units of `swap`)."""
        return cls(tuple(spans), sum(span.length for span in spans), swap)

    @property
    def stored_length(self) -> int:
        """Bytes read from the stored object."""
        return sum(span.length for span in self.spans)

    @property
    def length(self) -> int:
        """Bytes that go out."""
        return self.size if self.bits is None else (self.bits + 7) // 8

    @property
    def direct(self) -> bool:
        """The bytes go out exactly as stored in the spans."""
        return self.swap == 1 and self.head == 0 and self.bits is None and self.size == self.stored_length

    def assemble(self, data: bytes) -> bytes:
        """The bytes that go out, from `data`: the spans' bytes concatenated."""
        if len(data) != self.stored_length:
            raise StoredObjectError(f"{len(data)} bytes read where {self.stored_length} were expected")
        if self.direct:
            return data
        data = swapped(data, self.swap)[self.head : self.head + self.size]
        if self.bits is not None:
            value = (int.from_bytes(data, "little") >> self.shift) & ((1 << self.bits) - 1)
            data = value.to_bytes(self.length, "little")
        return data

    def slice(self, start: int, stop: int) -> Extent:
        """Bytes ``[start, stop)`` of what goes out, as an extent of their own.

        Reads stay aligned on swap units.  Not for bit-shifted frames (ValueError): those
        are never served in pieces.
        """
        if self.bits is not None:
            raise ValueError("a bit-packed frame cannot be sliced")
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"[{start}, {stop}) is not within {self.size} bytes")
        first, last = self.head + start, self.head + stop
        unit = self.swap
        aligned_first = first - first % unit
        aligned_last = min(-(-last // unit) * unit, self.stored_length)
        spans: list[Span] = []
        pos = 0  # offset of the current span in the concatenation
        for span in self.spans:
            lo, hi = max(aligned_first, pos), min(aligned_last, pos + span.length)
            if lo < hi:
                spans.append(Span(span.offset + lo - pos, hi - lo))
            pos += span.length
        return Extent(tuple(spans), stop - start, unit, first - aligned_first)


def read_spans(source: BinaryIO, spans: tuple[Span, ...]) -> bytes:
    """The bytes of `spans` from `source`, concatenated; `StoredObjectError` if cut short."""
    parts = []
    for span in spans:
        source.seek(span.offset)
        data = source.read(span.length)
        if len(data) != span.length:
            raise StoredObjectError(
                f"the stored object ends at byte {span.offset + len(data)}, inside a value"
                f" that ends at byte {span.end}"
            )
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_extent(source: BinaryIO, extent: Extent) -> bytes:
    """The bytes of `extent` as they go out, read from `source` (seekable)."""
    return extent.assemble(read_spans(source, extent.spans))


def iter_extent(source: BinaryIO, extent: Extent, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of `extent` as they go out, about `chunk` bytes at a time (a large value
    is never held whole).  A bit-shifted frame comes in one piece."""
    if extent.bits is not None:
        yield read_extent(source, extent)
        return
    for start in range(0, extent.size, chunk):
        yield read_extent(source, extent.slice(start, min(start + chunk, extent.size)))

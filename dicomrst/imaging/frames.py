# -*- test-case-name: tests.unit.test_imaging_frames -*-
"""The frames of a stored instance: where each one's bytes are (PS3.5 §8.2, Annex A.4).

`index_frames` walks an instance's top level to its pixel data once and returns a
`FrameIndex`, a plain value (cache it per stored object) whose `frame(n)` is the `Extent`
of frame n (from 1).  Reading it is `read_extent` / `iter_extent` on the same file.

Native pixel data: frame n is bytes ``[(n-1)·L, n·L)`` of the value, L = Rows × Columns ×
Samples per Pixel × Bits Allocated / 8 (× 2/3 for YBR_FULL_422, PS3.3 C.7.6.3.1.2).  The
trailing padding byte of an odd-length value is never part of a frame.  Big-endian
originals come out little endian (PS3.18 §8.7.3.3.1): values swapped in units of Bits
Allocated / 8, or of 2 bytes for 8-bit (and 1-bit) pixels in an OW value, whose bytes a
big-endian encoder swapped pairwise.  Bits Allocated 1: frames are packed without padding
(PS3.5 §8.1.1), so frame n starts at bit (n-1)·Rows·Columns·Samples; it goes out shifted to
start at bit 0 and padded with zero bits to a whole byte.

Encapsulated pixel data: a frame is the concatenation of its fragments' values, mapped by
the first of these rules that applies (the name is `FrameIndex.rule`):

1. ``extended offset table``: (7FE0,0001) and (7FE0,0002) give each frame's offset and
   length; one fragment per frame (PS3.3 C.7.6.3.1.8).  No fragment is walked.
2. ``basic offset table``: a frame is the fragments from its offset up to the next frame's.
   A table whose offsets do not each start a fragment, or do not start at 0 and increase,
   is ignored and the rules below apply.
3. ``single fragment``: one fragment is one frame.
4. ``one fragment per frame``: as many fragments as Number of Frames.
5. ``single frame``: Number of Frames 1, all fragments.
6. ``end markers``: more fragments than frames, JPEG / JPEG-LS / JPEG 2000 / HTJ2K only: a
   frame ends with the fragment whose last 10 bytes hold FFD9 (EOI; EOC in JPEG 2000), and
   fragments after the last marker are one more frame (as pydicom's ``generate_frames``).
7. ``none``: anything else (fewer fragments than frames; RLE, whose frames are one
   fragment each, with more): asking for a frame is a `StoredObjectError`.

Video syntaxes encode all frames as one stream: `FramesNotSeparable` (406).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import pairwise

import attrs

from dicomrst.common.tags import PIXEL_DATA_TAGS
from dicomrst.errors import NotAcceptable, NotFound
from dicomrst.imaging.elements import Element, Level, StoredInstance
from dicomrst.imaging.extent import Extent, Span, StoredObjectError
from dicomrst.imaging.framelist import check_frame_numbers
from dicomrst.imaging.media import END_MARKER_SYNTAXES, VIDEO_SYNTAXES, PartMedia, frame_media

SAMPLES_PER_PIXEL = 0x00280002
PHOTOMETRIC_INTERPRETATION = 0x00280004
NUMBER_OF_FRAMES = 0x00280008
ROWS = 0x00280010
COLUMNS = 0x00280011
BITS_ALLOCATED = 0x00280100
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002

_DESCRIBING = frozenset(
    (SAMPLES_PER_PIXEL, PHOTOMETRIC_INTERPRETATION, NUMBER_OF_FRAMES, ROWS, COLUMNS, BITS_ALLOCATED,
     EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS)
)  # fmt: skip
_END_MARKER = b"\xff\xd9"
_MARKER_WINDOW = 10


class NoPixelData(NotFound):
    """The instance has no (top-level) pixel data, so no frames."""


class FramesNotSeparable(NotAcceptable):
    """The frames are one video stream; they cannot be sent one by one."""


def pixel_swap_unit(little: bool, vr: str | None, bits_allocated: int) -> int:
    """The byte-swap unit that makes a pixel data value little endian (1: none)."""
    if little:
        return 1
    if bits_allocated >= 16:
        if bits_allocated not in (16, 32, 64):
            raise StoredObjectError(f"Bits Allocated {bits_allocated} is not supported in big endian")
        return bits_allocated // 8
    return 2 if vr == "OW" else 1


@attrs.frozen
class NativeLayout:
    """Frames as consecutive runs of `frame_bits` bits of the pixel data `value`."""

    value: Span
    frame_bits: int
    swap: int = 1

    def frame(self, index: int) -> Extent | None:
        """Frame `index` (from 0), or None when the value ends before it does."""
        bit_start = index * self.frame_bits
        first, last = bit_start // 8, -(-(bit_start + self.frame_bits) // 8)
        if last > self.value.length:
            return None
        unit = self.swap
        aligned_first = first - first % unit
        aligned_last = min(-(-last // unit) * unit, self.value.length)
        span = Span(self.value.offset + aligned_first, aligned_last - aligned_first)
        packed = self.frame_bits % 8 or bit_start % 8
        return Extent(
            (span,),
            last - first,
            unit,
            first - aligned_first,
            self.frame_bits if packed else None,
            bit_start % 8,
        )


@attrs.frozen
class FrameIndex:
    """Where the frames of one stored instance are.

    `media` is how they go out unconverted (None: no media type for the stored syntax);
    `rule` how encapsulated frames were mapped (see the module), ``native`` otherwise.
    """

    transfer_syntax: str
    number_of_frames: int
    media: PartMedia | None
    rule: str
    native: NativeLayout | None = None
    encapsulated: tuple[Extent, ...] = ()

    def frame(self, number: int) -> Extent:
        """The extent of frame `number` (from 1).

        Raises `FrameNotFound` past Number of Frames, `FramesNotSeparable` for video, and
        `StoredObjectError` when the pixel data does not hold the frame.
        """
        check_frame_numbers((number,), self.number_of_frames)
        if self.transfer_syntax in VIDEO_SYNTAXES and self.native is None:
            raise FramesNotSeparable("the frames of a video cannot be retrieved one by one")
        if self.native is not None:
            extent = self.native.frame(number - 1)
            if extent is None:
                raise StoredObjectError(f"the pixel data ends before frame {number}")
            return extent
        if number > len(self.encapsulated):
            raise StoredObjectError(
                f"frame {number} is not in the encapsulated pixel data"
                f" ({len(self.encapsulated)} found by rule: {self.rule})"
            )
        return self.encapsulated[number - 1]

    def frames(self, numbers: Iterable[int]) -> list[Extent]:
        """`frame` of each of `numbers`, in their order."""
        return [self.frame(number) for number in numbers]


# -- the pixel data element and what describes it -------------------------------------


def _unsigned(values: dict[int, bytes], tag: int, little: bool, name: str, default: int | None = None) -> int:
    raw = values.get(tag)
    if raw is None or len(raw) == 0:
        if default is None:
            raise StoredObjectError(f"the pixel data has no {name}")
        return default
    if len(raw) != 2:
        raise StoredObjectError(f"{name} is not one US value")
    (value,) = struct.unpack("<H" if little else ">H", raw)
    return int(value)


def _number_of_frames(values: dict[int, bytes]) -> int:
    raw = values.get(NUMBER_OF_FRAMES, b"").strip(b" \x00")
    if not raw:
        return 1
    try:
        number = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise StoredObjectError(f"Number of Frames {raw[:16]!r} is not an integer") from None
    if number < 1:
        raise StoredObjectError(f"Number of Frames {number} is not positive")
    return number


def _offsets(raw: bytes, size: int, little: bool) -> tuple[int, ...]:
    code = {4: "L", 8: "Q"}[size]
    if len(raw) % size:
        raise StoredObjectError(f"an offset table of {len(raw)} bytes is not a whole number of offsets")
    return struct.unpack(f"{'<' if little else '>'}{len(raw) // size}{code}", raw)


def index_frames(instance: StoredInstance) -> FrameIndex:
    """The `FrameIndex` of `instance`'s top-level pixel data.

    Raises `NoPixelData` (404) when there is none or it is empty, `StoredObjectError`
    when what describes it is missing or malformed.
    """
    level = instance.top
    values, element = instance.scan(level, _DESCRIBING, PIXEL_DATA_TAGS)
    if element is None or element.length == 0:
        raise NoPixelData("the instance has no pixel data")
    frames = _number_of_frames(values)
    syntax = instance.transfer_syntax
    media = frame_media(syntax, element.undefined)
    if not element.undefined:
        # A file cut short still has the frames before the cut.
        value = Span(element.value_offset, min(element.length, instance.size - element.value_offset))
        return FrameIndex(syntax, frames, media, "native", native=_native(values, element, value, level))
    rule, extents = _encapsulated(instance, values, element, level, frames)
    return FrameIndex(syntax, frames, media, rule, encapsulated=extents)


def _native(values: dict[int, bytes], element: Element, value: Span, level: Level) -> NativeLayout:
    little = level.little
    rows = _unsigned(values, ROWS, little, "Rows")
    columns = _unsigned(values, COLUMNS, little, "Columns")
    samples = _unsigned(values, SAMPLES_PER_PIXEL, little, "Samples per Pixel", default=1)
    bits = _unsigned(values, BITS_ALLOCATED, little, "Bits Allocated")
    if bits != 1 and bits % 8:
        raise StoredObjectError(f"Bits Allocated {bits} is not supported")
    frame_bits = rows * columns * samples * bits
    photometric = values.get(PHOTOMETRIC_INTERPRETATION, b"").strip(b" \x00")
    if photometric == b"YBR_FULL_422" and bits >= 8:
        frame_bits = frame_bits // 8 // 3 * 2 * 8  # two samples per pixel, as stored
    if frame_bits == 0:
        raise StoredObjectError("the pixel data describes frames of no pixels")
    return NativeLayout(value, frame_bits, pixel_swap_unit(little, element.vr, bits))


# -- encapsulated -----------------------------------------------------------------------


def _encapsulated(
    instance: StoredInstance, values: dict[int, bytes], element: Element, level: Level, frames: int
) -> tuple[str, tuple[Extent, ...]]:
    eot, eot_lengths = values.get(EXTENDED_OFFSET_TABLE), values.get(EXTENDED_OFFSET_TABLE_LENGTHS)
    if eot and eot_lengths:
        offsets, lengths = _offsets(eot, 8, level.little), _offsets(eot_lengths, 8, level.little)
        if len(offsets) != len(lengths):
            raise StoredObjectError("the extended offset table and its lengths differ in size")
        first_item = instance.first_item(element, level).end
        extents = tuple(
            Extent.of(Span(first_item + offset + 8, length))
            for offset, length in zip(offsets, lengths, strict=True)
        )
        return "extended offset table", extents

    items = instance.fragments(element, level)
    if not items:
        raise StoredObjectError("the encapsulated pixel data has no basic offset table item")
    bot, fragments = items[0], items[1:]
    if bot.length:
        grouped = _by_offsets(_offsets(instance.read(bot), 4, level.little), fragments, bot.end)
        if grouped is not None:
            return "basic offset table", grouped
    if len(fragments) == 1:
        return "single fragment", (Extent.of(fragments[0]),)
    if len(fragments) == frames:
        return "one fragment per frame", tuple(Extent.of(fragment) for fragment in fragments)
    if frames == 1:
        return "single frame", (Extent.of(*fragments),)
    if len(fragments) > frames and instance.transfer_syntax in END_MARKER_SYNTAXES:
        return "end markers", _by_end_markers(instance, fragments)
    return "none", ()


def _by_offsets(
    offsets: tuple[int, ...], fragments: tuple[Span, ...], first_item: int
) -> tuple[Extent, ...] | None:
    """Fragments grouped into frames at `offsets` (from the first fragment's item tag, at
    `first_item`), or None when the offsets do not fit the fragments."""
    if not offsets or offsets[0] != 0 or any(b <= a for a, b in pairwise(offsets)):
        return None
    starts = {fragment.offset - 8 - first_item: n for n, fragment in enumerate(fragments)}
    indexes = [starts.get(offset) for offset in offsets]
    if None in indexes:
        return None
    bounds = [*(index for index in indexes if index is not None), len(fragments)]
    return tuple(Extent.of(*fragments[bounds[n] : bounds[n + 1]]) for n in range(len(offsets)))


def _by_end_markers(instance: StoredInstance, fragments: tuple[Span, ...]) -> tuple[Extent, ...]:
    frames: list[Extent] = []
    current: list[Span] = []
    for fragment in fragments:
        current.append(fragment)
        tail = min(fragment.length, _MARKER_WINDOW)
        if _END_MARKER in instance.read(Span(fragment.end - tail, tail)):
            frames.append(Extent.of(*current))
            current = []
    if current:
        frames.append(Extent.of(*current))
    return tuple(frames)

# -*- test-case-name: tests.unit.test_imaging_bulkdata -*-
"""BulkDataURIs resolved to the values they stand for in a stored instance.

The metadata (`dicomrst.wado.metadata`) writes a BulkDataURI as
``{instance URL}/bulkdata/{path}``, `path` being the element's tag as 8 hex digits, after
``{sequence tag}/{item index from 0}/`` for each sequence it is in:
``.../bulkdata/7FE00010``, ``.../bulkdata/00400275/0/00400009``.  `parse_bulk_path` reads
that `path` back (anything else: `BulkDataNotFound`, 404, since the URI is opaque to
clients and a malformed one names nothing), `locate_bulk` finds the element by seeking
and returns its value's `Extent`.

What a value's bytes are (PS3.18 §8.7.3.3.1, T8.7.3-4: ``application/octet-stream`` is
the value in little endian, no VR, no header):

* a value of defined length: its bytes; from a big-endian original, swapped per its VR
  (2 bytes for OW US SS AT, 4 for OF FL OL SL UL, 8 for OD FD OV SV UV) and, for pixel
  data, per Bits Allocated as its frames are (`dicomrst.imaging.frames`);
* encapsulated pixel data (or another OB/OW of undefined length): its fragments' values
  concatenated, without item headers and Basic Offset Table (§8.7.3.3.2: "without the
  fragment delimiters"), `BulkValue.encapsulated` set; for multi-frame pixel data a
  caller sends one part per frame instead, with `dicomrst.imaging.frames`;
* any other value of undefined length (a UN holding a sequence): its encoded items, up to
  the Sequence Delimitation Item.
"""

from __future__ import annotations

import attrs

from dicomrst.common.tags import PIXEL_DATA_TAGS
from dicomrst.errors import NotFound
from dicomrst.imaging.elements import Element, Level, StoredInstance
from dicomrst.imaging.extent import Extent, Span
from dicomrst.imaging.frames import BITS_ALLOCATED, pixel_swap_unit

#: Deeper paths are not ones the metadata writes.
MAX_DEPTH = 32

_SWAP_UNITS = {
    "AT": 2, "OW": 2, "SS": 2, "US": 2,
    "FL": 4, "OF": 4, "OL": 4, "SL": 4, "UL": 4,
    "FD": 8, "OD": 8, "OV": 8, "SV": 8, "UV": 8,
}  # fmt: skip


class BulkDataNotFound(NotFound):
    """The bulk data path names no element of the instance (or is not a path at all)."""


@attrs.frozen
class BulkPath:
    """An element: the (sequence tag, item index) of each enclosing sequence, then its tag."""

    steps: tuple[tuple[int, int], ...]
    tag: int

    def __str__(self) -> str:
        return "".join(f"{tag:08X}/{index}/" for tag, index in self.steps) + f"{self.tag:08X}"


def _tag(text: str, path: str) -> int:
    if len(text) != 8 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise BulkDataNotFound(f"bulk data {path[:80]!r}: {text[:16]!r} is not a tag")
    tag = int(text, 16)
    if tag >> 16 == 0xFFFE:
        raise BulkDataNotFound(f"bulk data {path[:80]!r}: {text} is not an element")
    return tag


def parse_bulk_path(text: str) -> BulkPath:
    """The element named by the part of a BulkDataURI after ``/bulkdata/``."""
    parts = text.strip("/").split("/")
    if len(parts) % 2 == 0 or len(parts) > 2 * MAX_DEPTH + 1:
        raise BulkDataNotFound(f"bulk data {text[:80]!r} is not a path the metadata names")
    steps = []
    for n in range(0, len(parts) - 1, 2):
        index = parts[n + 1]
        if not index.isascii() or not index.isdigit() or len(index) > 9:
            raise BulkDataNotFound(f"bulk data {text[:80]!r}: {index[:16]!r} is not an item index")
        steps.append((_tag(parts[n], text), int(index)))
    return BulkPath(tuple(steps), _tag(parts[-1], text))


@attrs.frozen
class BulkValue:
    """Where a value is and how it goes out.  `vr` is None in Implicit VR (the metadata
    has it); `encapsulated`: the extent is compressed fragments (see the module)."""

    path: BulkPath
    vr: str | None
    extent: Extent
    encapsulated: bool = False


def locate_bulk(instance: StoredInstance, path: BulkPath) -> BulkValue:
    """The value of the element at `path` in `instance`; `BulkDataNotFound` when the
    instance has no such element (or it is a sequence)."""
    level = instance.top
    for tag, index in path.steps:
        element = instance.find(level, tag)
        if element is None or element.vr not in (None, "SQ", "UN"):
            raise BulkDataNotFound(f"bulk data {path}: the instance has no sequence {tag:08X} there")
        item = instance.item(element, level, index)
        if item is None:
            raise BulkDataNotFound(f"bulk data {path}: sequence {tag:08X} has no item {index}")
        level = item
    bits: int | None = None
    if path.tag in PIXEL_DATA_TAGS:
        values, found = instance.scan(level, frozenset((BITS_ALLOCATED,)), frozenset((path.tag,)))
        raw_bits = values.get(BITS_ALLOCATED, b"")
        if len(raw_bits) == 2:
            bits = int.from_bytes(raw_bits, "little" if level.little else "big")
    else:
        found = instance.find(level, path.tag)
    if found is None or found.vr == "SQ":
        raise BulkDataNotFound(f"bulk data {path}: the instance has no such element")
    return _value(instance, path, found, level, bits)


def _value(
    instance: StoredInstance, path: BulkPath, element: Element, level: Level, bits: int | None
) -> BulkValue:
    if element.undefined:
        if element.vr in ("OB", "OW") or path.tag in PIXEL_DATA_TAGS:
            fragments = instance.fragments(element, level)[1:]
            return BulkValue(path, element.vr, Extent.of(*fragments), encapsulated=True)
        end = instance.after(element, level) - 8  # the Sequence Delimitation Item
        return BulkValue(path, element.vr, Extent.of(Span(element.value_offset, end - element.value_offset)))
    if path.tag in PIXEL_DATA_TAGS and bits is not None:
        unit = pixel_swap_unit(level.little, element.vr, bits)
    else:
        unit = 1 if level.little else _SWAP_UNITS.get(element.vr or "", 1)
    return BulkValue(path, element.vr, Extent.of(element.span, swap=unit))

# -*- test-case-name: tests.unit.test_imaging_parsing -*-
"""The HTTP ``Range`` header of a single-part bulk data request (RFC 9110 §14.1-14.2).

`parse_range` turns the header into one `ByteRange` of a representation of a known length,
or None when the whole representation is to be sent (200).  The rules, as implemented:

* ``bytes=first-last``, ``bytes=first-`` and ``bytes=-suffix`` (§14.1.2); the unit is
  case-insensitive; a last-pos past the end is clamped to it; a suffix longer than the
  representation means all of it.
* One range only.  A header with several ranges is ignored (the whole value, 200): a server
  MAY ignore Range (§14.2), and multipart/byteranges is not worth it for bulk data, whose
  clients (viewers) ask for one range at a time.
* Ignored as well (§14.2): a unit other than ``bytes`` (MUST), and an invalid
  ranges-specifier (MAY): no ``=``, a non-number, last-pos < first-pos, empty.
* Not satisfiable (§14.1.2, `RangeNotSatisfiable` → 416 with ``Content-Range: bytes */len``):
  first-pos at or past the end, a zero-length suffix, and any range of an empty value (it
  has no byte to send).
"""

from __future__ import annotations

import attrs

from dicomrst.errors import RangeNotSatisfiable

# Numbers longer than this are past the end of anything we serve; int() is not asked to
# convert them (it refuses beyond 4300 digits anyway).
_MAX_DIGITS = 18


@attrs.frozen
class ByteRange:
    """Bytes ``[start, stop)`` of a representation of `length` bytes (``start < stop``)."""

    start: int
    stop: int
    length: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` value of the 206 response."""
        return f"bytes {self.start}-{self.stop - 1}/{self.length}"


def _number(text: str) -> int | None:
    if not text or not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(header: str | None, length: int) -> ByteRange | None:
    """The one byte range `header` asks for of `length` bytes, or None to send them all.

    Raises `RangeNotSatisfiable` (416) as the module says.
    """
    if header is None:
        return None
    unit, equals, ranges = header.strip().partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip() for spec in ranges.split(",")]
    specs = [spec for spec in specs if spec]  # a list's empty elements (RFC 9110 §5.6.1)
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:
        suffix = _number(last_text)
        if suffix is None:
            return None
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable(f"bytes=-{suffix} of a value of {length} bytes", length)
        return ByteRange(max(0, length - suffix), length, length)
    first = _number(first_text)
    last = _number(last_text) if last_text else None
    if first is None or (last_text and (last is None or last < first)):
        return None
    if first >= length:
        raise RangeNotSatisfiable(f"bytes={first}- is past the end of a value of {length} bytes", length)
    return ByteRange(first, length if last is None else min(last + 1, length), length)

# -*- test-case-name: tests.unit.test_imaging_parsing -*-
"""The ``{frames}`` of ``.../instances/{instance}/frames/{frames}`` (PS3.18 §10.4.1.1).

PS3.18 (2016a-2017b §6.5.4, kept in later editions' template variable): "a comma or %2C
separated list of one or more non duplicate frame numbers.  These may be in any order
(e.g., ../frames/1,2,4,3)"; frame numbers count from 1 (PS3.4 Y.3.2.1.1 counts them the
same way).  Later editions describe the list as ascending; a list in another order is
still served, one part per frame in the order asked, because older clients were told
any order is fine.  A duplicate is malformed: the standard forbids it and two parts
would carry the same Content-Location.

`parse_frame_list` checks the syntax (`BadFrameList`, 400); `check_frame_numbers` checks
the numbers against the object's Number of Frames (`FrameNotFound`, 404).
"""

from __future__ import annotations

from dicomrst.errors import BadRequest, NotFound

#: Number of Frames is an IS (PS3.5 Table 6.2-1): no object has more frames than this.
MAX_FRAME_NUMBER = 2**31 - 1


class BadFrameList(BadRequest):
    """The frame list is not a list of distinct positive integers."""


class FrameNotFound(NotFound):
    """A frame number asked for is past the object's Number of Frames."""


def parse_frame_list(text: str) -> tuple[int, ...]:
    """The frame numbers of a ``{frames}`` path segment, in the order given.

    Takes the segment percent-decoded or not (``%2C`` separates too).  Raises
    `BadFrameList` for an empty list or item, anything but decimal digits, 0, or a
    duplicate; `FrameNotFound` for a number no object can have (above 2**31-1).
    """
    items = text.replace("%2C", ",").replace("%2c", ",").split(",")
    seen: set[int] = set()
    numbers: list[int] = []
    for item in items:
        # str.isdigit accepts other scripts' digits and superscripts; only ASCII will do.
        if not item or not item.isascii() or not item.isdigit():
            raise BadFrameList(f"frame list {text[:64]!r}: frames are comma-separated positive integers")
        digits = item.lstrip("0")
        if not digits:
            raise BadFrameList(f"frame list {text[:64]!r}: frame numbers start at 1")
        if len(digits) > 10 or int(digits) > MAX_FRAME_NUMBER:
            raise FrameNotFound(f"no object has a frame {digits[:16]}")
        number = int(digits)
        if number in seen:
            raise BadFrameList(f"frame list {text[:64]!r}: frame {number} is asked for twice")
        seen.add(number)
        numbers.append(number)
    return tuple(numbers)


def check_frame_numbers(numbers: tuple[int, ...], number_of_frames: int) -> None:
    """Raise `FrameNotFound` for the first of `numbers` past `number_of_frames`."""
    for number in numbers:
        if number < 1 or number > number_of_frames:
            frames = "1 frame" if number_of_frames == 1 else f"{number_of_frames} frames"
            raise FrameNotFound(f"frame {number} does not exist: the object has {frames}")

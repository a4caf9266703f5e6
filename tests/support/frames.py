"""Frames and bulk data as a client sees them, for the frames tests (unit and integration).

`parse_parts` splits any ``multipart/related`` body by the boundary of its Content-Type;
`expected_frames` is what each frame of a data set must be on the wire: native frames as
the slice of Pixel Data in little endian (pydicom's own array, for a big-endian original),
compressed frames as the frame's fragments joined (pydicom's ``generate_frames``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_TYPE = re.compile(r'type="?([^";]+)"?')
OCTET = "multipart/related; type=application/octet-stream"
ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes


def parse_parts(content_type: str, body: bytes) -> list[Part]:
    """The parts of a complete ``multipart/related`` body (AssertionError if it is not)."""
    if not content_type.startswith("multipart/related;"):
        raise AssertionError(f"not multipart/related: {content_type!r}")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise AssertionError(f"no boundary in {content_type!r}")
    delimiter = b"--" + match.group(1).encode("ascii")
    if not body.startswith(delimiter + b"\r\n") or not body.endswith(b"\r\n" + delimiter + b"--\r\n"):
        raise AssertionError(f"not a closed multipart body: {body[:80]!r} ... {body[-80:]!r}")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("ascii").split("\r\n"))
        parts.append(Part(headers, payload))
    return parts


def part_type(content_type: str) -> str | None:
    match = _TYPE.search(content_type)
    return match.group(1) if match else None


def number_of_frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def expected_frames(ds: Dataset) -> list[bytes]:
    """Each frame's bytes as a frames response must carry them (see the module)."""
    n = number_of_frames(ds)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=n))
    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        arr = ds.pixel_array
        little = arr.astype(arr.dtype.newbyteorder("<"))
        data = little.tobytes()
    else:
        data = ds.PixelData
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    return [bytes(data[i * size : (i + 1) * size]) for i in range(n)]

# -*- test-case-name: tests.unit.test_s3_parsing -*-
"""What the gateway reads from the head of a stored Part-10 object (an S3 object, a LOCAL
file): its file meta, and where its pixel data lies (a metadata retrieve reads only the
head when pixel data ends it)."""

from __future__ import annotations

import struct

from dicomrst.common.part10 import (
    MEDIA_STORAGE_SOP_CLASS,
    MEDIA_STORAGE_SOP_INSTANCE,
    TRANSFER_SYNTAX,
    NotPart10,
    read_file_meta,
)
from dicomrst.common.walker import find_pixel_data
from dicomrst.errors import UpstreamError

#: Bytes a metadata retrieve reads first; most headers end well before.
HEAD_BYTES = 64 << 10


class NotDicomObject(UpstreamError):
    """A stored object (in a bucket, in a LOCAL directory) is not a DICOM Part-10 file."""


def parse_file_meta(data: bytes, complete: bool = False) -> tuple[int, str, str, str] | None:
    """(data set offset, SOP Class UID, SOP Instance UID, Transfer Syntax UID) from the
    start of a Part-10 object, or None if more bytes are needed (`complete`: there are no
    more).  Raises `NotDicomObject`."""
    try:
        meta = read_file_meta(data, final=complete, trust_group_length=False)
    except NotPart10 as e:
        raise NotDicomObject(str(e)) from None
    if meta is None:
        return None
    uids = []
    for tag, name in ((MEDIA_STORAGE_SOP_CLASS, "Media Storage SOP Class UID"),
                      (MEDIA_STORAGE_SOP_INSTANCE, "Media Storage SOP Instance UID"),
                      (TRANSFER_SYNTAX, "Transfer Syntax UID")):  # fmt: skip
        value = meta.text(tag)
        if not value:
            raise NotDicomObject(f"no {name} in the file meta information")
        uids.append(value)
    return meta.dataset_offset, uids[0], uids[1], uids[2]


def without_bulk_tail(data: bytes, start: int, implicit: bool, total: int) -> bytes | None:
    """The data set `data[start:]` with its pixel data value replaced by two zero bytes, when
    that value is what ends the object of `total` bytes (so nothing after it is lost); None
    when `data` does not show that.  Metadata describes pixel data by a BulkDataURI only, so
    the placeholder gives the same metadata as the whole object."""
    found = find_pixel_data(data, start, implicit)
    if found is None:
        return None
    pos, header, length = found.offset, found.header, found.length
    if pos + header + length != total:
        return None
    size = struct.pack("<I", 2)
    head = data[pos : pos + 4] + size if implicit else data[pos : pos + 8] + size
    if not implicit and header != 12:
        return None
    return data[start:pos] + head + b"\x00\x00"

# -*- test-case-name: tests.unit.test_stow_part10 -*-
"""Part-10 objects (PS3.10 §7.1): the preamble, ``DICM`` and the file meta group.

* `file_meta` writes them by hand: it runs once per instance on the streaming path,
  before the data set bytes that follow verbatim.
* `read_file_meta` reads them from the first bytes of an object (a STOW-RS part, an S3
  object), checking the structure; what the values must look like is the caller's call.
"""

from __future__ import annotations

import struct

import attrs

from dicomrst.common.tags import LONG_VRS, UNDEFINED_LENGTH
from dicomrst.common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = bytes(128) + b"DICM"
#: A file meta group larger than this is not a sane one (typical: ~200 bytes).
MAX_META = 64 * 1024

META_GROUP_LENGTH = 0x00020000
MEDIA_STORAGE_SOP_CLASS = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE = 0x00020003
TRANSFER_SYNTAX = 0x00020010

_START = len(PREAMBLE)


class NotPart10(Exception):
    """The bytes are not a Part-10 object; the message says why."""


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """A group-0002 element with a 16-bit length, in Explicit VR LE."""
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _ui(element: int, uid: str, name: str) -> bytes:
    value = uid.rstrip("\x00 ").encode("ascii")
    if not value or len(value) > 64:
        raise ValueError(f"{name} {uid!r} is empty or longer than 64 characters")
    if len(value) & 1:
        value += b"\x00"
    return _element(element, b"UI", value)


def _padded(text: str) -> bytes:
    value = text.encode("ascii")
    return value + b" " if len(value) & 1 else value


# Constant elements: version (OB, 32-bit length), implementation class and version name.
_VERSION = struct.pack("<HH2sHI", 2, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_IMPLEMENTATION = _ui(0x0012, IMPLEMENTATION_CLASS_UID, "Implementation Class UID") + _element(
    0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME)
)


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str | None = None
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (group 0002) of one instance.

    UIDs may carry their trailing NUL/space padding; they must be ASCII and 1-64
    characters (else ValueError). `source_aet` becomes (0002,0016) Source Application
    Entity Title when given (1-16 ASCII characters).
    """
    body = [
        _VERSION,
        _ui(0x0002, sop_class_uid, "SOP Class UID"),
        _ui(0x0003, sop_instance_uid, "SOP Instance UID"),
        _ui(0x0010, transfer_syntax, "Transfer Syntax UID"),
        _IMPLEMENTATION,
    ]
    if source_aet is not None and source_aet.strip(" "):
        aet = source_aet.strip(" ")
        if len(aet) > 16 or "\\" in aet or not aet.isprintable():
            raise ValueError(f"invalid Source AE Title {source_aet!r}")
        body.append(_element(0x0016, b"AE", _padded(aet)))
    meta = b"".join(body)
    return PREAMBLE + struct.pack("<HH2sHI", 2, 0x0000, b"UL", 4, len(meta)) + meta


@attrs.frozen
class FileMeta:
    """The file meta group of an object: its elements' values and where the data set starts."""

    elements: dict[int, bytes]
    dataset_offset: int

    def text(self, tag: int) -> str:
        """An element's value as text, padding stripped ('' when absent)."""
        return self.elements.get(tag, b"").rstrip(b"\x00 ").decode("ascii", "replace").strip()


def read_file_meta(
    head: bytes | bytearray, final: bool = False, *, trust_group_length: bool = True
) -> FileMeta | None:
    """The file meta group at the start of `head`, or None until more bytes are in.

    `final`: `head` is the whole object.  Raises `NotPart10` as soon as the bytes show the
    object is not Part 10 (no ``DICM``, a malformed group, an implausible length).  With
    `trust_group_length` false the group ends where group 0002 does, whatever (0002,0000)
    says: objects written by other tools, a wrong group length among them, are served.
    """
    if len(head) < _START:
        if final:
            raise NotPart10("not a DICOM Part-10 object: shorter than the preamble and 'DICM'")
        return None
    if head[_START - 4 : _START] != b"DICM":
        raise NotPart10("not a DICOM Part-10 object: no 'DICM' after the 128-byte preamble")
    pos = _START
    group_end: int | None = None
    meta: dict[int, bytes] = {}
    while True:
        if group_end is not None and pos == group_end:
            return FileMeta(meta, pos)
        if len(head) < pos + 8:
            if final and pos == len(head) and meta and group_end is None:
                return FileMeta(meta, pos)  # an object of file meta only
            break
        group, element, vr = struct.unpack_from("<HH2s", head, pos)
        if group != 0x0002:
            if group_end is not None:
                raise NotPart10("the file meta group is shorter than its group length says")
            if not meta:
                raise NotPart10("not a DICOM Part-10 object: no file meta group after 'DICM'")
            return FileMeta(meta, pos)  # no group length: the group ends where group 0002 does
        if vr in LONG_VRS:
            if len(head) < pos + 12:
                break
            (length,) = struct.unpack_from("<L", head, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            header = 8
        if length == UNDEFINED_LENGTH or pos + header + length > _START + MAX_META:
            raise NotPart10("the file meta group is malformed (an element is too long)")
        if len(head) < pos + header + length:
            break
        value = bytes(head[pos + header : pos + header + length])
        tag = group << 16 | element
        if tag == META_GROUP_LENGTH and pos == _START and trust_group_length:
            if length != 4:
                raise NotPart10("the file meta group length (0002,0000) is malformed")
            (group_length,) = struct.unpack("<L", value)
            if group_length > MAX_META:
                raise NotPart10("the file meta group length (0002,0000) is implausibly large")
            group_end = pos + header + length + group_length
        meta[tag] = value
        pos += header + length
        if group_end is not None and pos > group_end:
            raise NotPart10("an element of the file meta group crosses its group length")
    if len(head) > _START + MAX_META:
        raise NotPart10("the file meta group is malformed (too long)")
    if final:
        raise NotPart10("the object ends inside its file meta group")
    return None

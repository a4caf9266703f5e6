# -*- test-case-name: tests.test_stow_part10 -*-
"""Check a STOW-RS part as a Part-10 object (PS3.10 §7.1) while its bytes stream in.

Only the first bytes are looked at: the 128-byte preamble and ``DICM``, the file meta
group, and the top-level data set elements up to group 0020 (SOP Class and Instance,
Study and Series Instance UIDs).  Values are skipped, never held, so a huge private
element before the UIDs costs no memory.  The rest of the object (pixel data) is
neither parsed nor kept here: checking its content is the PACS's job.
"""

from __future__ import annotations

import re
import struct
import zlib

import attrs

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

PREAMBLE = 128
#: A file meta group larger than this is not a sane one (typical: ~200 bytes).
MAX_META = 64 * 1024
#: A UID is at most 64 characters (PS3.5 §9.1).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)

META_GROUP_LENGTH = 0x00020000
MEDIA_SOP_CLASS = 0x00020002
MEDIA_SOP_INSTANCE = 0x00020003
TRANSFER_SYNTAX = 0x00020010
SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
_WANTED = frozenset((SOP_CLASS, SOP_INSTANCE, STUDY_UID, SERIES_UID))

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class NotPart10(Exception):
    """The part is not a Part-10 object we can store; the message says why."""


@attrs.frozen
class Part10Info:
    """What the first bytes of a valid Part-10 object say."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    study_instance_uid: str
    series_instance_uid: str | None


def _uid(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()
    if not text or len(text) > 64 or not _UID.match(text):
        raise NotPart10(f"{what} {text[:80]!r} is not a valid UID")
    return text


class Part10Checker:
    """Fed a part's bytes in order; `finish()` gives the `Part10Info` or raises `NotPart10`.

    `sop_class_uid`/`sop_instance_uid` are set as soon as the file meta is read, so a part
    that fails later can still be reported by its UIDs.
    """

    def __init__(self) -> None:
        self.sop_class_uid: str | None = None
        self.sop_instance_uid: str | None = None
        self.transfer_syntax: str | None = None
        self.dataset_offset: int | None = None
        self.size = 0
        self._head = bytearray()
        self._error: NotPart10 | None = None
        self._walker: _TopLevelWalker | None = None
        self._inflater: zlib._Decompress | None = None

    @property
    def failed(self) -> bool:
        """True once the bytes seen prove the part is not a Part-10 object."""
        return self._error is not None

    @property
    def uids_known(self) -> bool:
        return self.sop_class_uid is not None and self.sop_instance_uid is not None

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self._error is not None:
            return
        try:
            if self._walker is None:
                self._head += data
                self._read_meta()
            else:
                self._feed_dataset(data)
        except NotPart10 as e:
            self._error = e
            self._head = bytearray()

    def finish(self) -> Part10Info:
        """The part is complete: its verdict."""
        if self._error is None and self._walker is None:
            self._read_meta(final=True)  # raises: the meta never completed
        if self._error is not None:
            raise self._error
        assert self._walker is not None and self.dataset_offset is not None
        assert self.sop_class_uid is not None and self.sop_instance_uid is not None
        assert self.transfer_syntax is not None
        found = self._walker.found
        if self._walker.failed is not None and STUDY_UID not in found:
            raise NotPart10(f"the data set does not parse: {self._walker.failed}")
        study = found.get(STUDY_UID)
        if study is None:
            raise NotPart10("the data set has no Study Instance UID (0020,000D)")
        study_uid = _uid(study, "Study Instance UID")
        series = found.get(SERIES_UID)
        series_uid = _uid(series, "Series Instance UID") if series is not None else None
        # The meta names the object; a data set that says otherwise is inconsistent and
        # would be stored under a name that is not its own.
        if SOP_INSTANCE in found and _uid(found[SOP_INSTANCE], "SOP Instance UID") != self.sop_instance_uid:
            raise NotPart10("SOP Instance UID (0008,0018) differs from the file meta's (0002,0003)")
        if SOP_CLASS in found and _uid(found[SOP_CLASS], "SOP Class UID") != self.sop_class_uid:
            raise NotPart10("SOP Class UID (0008,0016) differs from the file meta's (0002,0002)")
        return Part10Info(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            transfer_syntax=self.transfer_syntax,
            dataset_offset=self.dataset_offset,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
        )

    # -- file meta -----------------------------------------------------------------------

    def _read_meta(self, final: bool = False) -> None:
        head = self._head
        if len(head) < PREAMBLE + 4:
            if final:
                raise NotPart10("not a DICOM Part-10 object: shorter than the preamble and 'DICM'")
            return
        if head[PREAMBLE : PREAMBLE + 4] != b"DICM":
            raise NotPart10("not a DICOM Part-10 object: no 'DICM' after the 128-byte preamble")
        elements = self._meta_elements(final)
        if elements is None:
            return
        meta, end = elements
        for tag, what in ((MEDIA_SOP_CLASS, "(0002,0002) Media Storage SOP Class UID"),
                          (MEDIA_SOP_INSTANCE, "(0002,0003) Media Storage SOP Instance UID"),
                          (TRANSFER_SYNTAX, "(0002,0010) Transfer Syntax UID")):
            if tag not in meta:
                raise NotPart10(f"the file meta has no {what}")
        self.sop_class_uid = _uid(meta[MEDIA_SOP_CLASS], "Media Storage SOP Class UID")
        self.sop_instance_uid = _uid(meta[MEDIA_SOP_INSTANCE], "Media Storage SOP Instance UID")
        ts = self.transfer_syntax = _uid(meta[TRANSFER_SYNTAX], "Transfer Syntax UID")
        self.dataset_offset = end
        self._walker = _TopLevelWalker(implicit=ts == IMPLICIT_VR_LE, little=ts != EXPLICIT_VR_BE)
        if ts == DEFLATED_EXPLICIT_VR_LE:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        rest = bytes(head[end:])
        self._head = bytearray()
        if rest:
            self._feed_dataset(rest)

    def _meta_elements(self, final: bool) -> tuple[dict[int, bytes], int] | None:
        """The meta elements and where the data set starts, or None if more bytes are needed."""
        head = self._head
        pos = PREAMBLE + 4
        group_end: int | None = None
        meta: dict[int, bytes] = {}
        while True:
            if group_end is not None and pos == group_end:
                return meta, pos
            if len(head) < pos + 8:
                break
            group, element, vr = struct.unpack_from("<HH2s", head, pos)
            if group != 0x0002:
                if group_end is not None:
                    raise NotPart10("the file meta group is shorter than its group length says")
                if not meta:
                    raise NotPart10("not a DICOM Part-10 object: no file meta group after 'DICM'")
                return meta, pos  # no group length: the group ends where group 0002 does
            if vr in _LONG_VRS:
                if len(head) < pos + 12:
                    break
                (length,) = struct.unpack_from("<L", head, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from("<H", head, pos + 6)
                header = 8
            if length == _UNDEFINED or pos + header + length > PREAMBLE + 4 + MAX_META:
                raise NotPart10("the file meta group is malformed (an element is too long)")
            if len(head) < pos + header + length:
                break
            value = bytes(head[pos + header : pos + header + length])
            tag = group << 16 | element
            if tag == META_GROUP_LENGTH and pos == PREAMBLE + 4:
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
        if len(head) > PREAMBLE + 4 + MAX_META:
            raise NotPart10("the file meta group is malformed (too long)")
        if final:
            raise NotPart10("the object ends inside its file meta group")
        return None

    # -- data set ------------------------------------------------------------------------

    def _feed_dataset(self, data: bytes) -> None:
        walker = self._walker
        assert walker is not None
        if walker.done:
            return
        inflater = self._inflater
        if inflater is None:
            walker.feed(data)
            return
        pending = data
        # Inflate in bounded steps and only while the walker wants more: a deflate bomb
        # must not be expanded into memory.
        while pending and not walker.done:
            try:
                out = inflater.decompress(pending, 256 * 1024)
            except zlib.error as e:
                raise NotPart10(f"the deflated data set does not inflate: {e}") from None
            pending = inflater.unconsumed_tail
            if out:
                walker.feed(out)
            if inflater.eof:
                break


class _TopLevelWalker:
    """Walks the top-level elements of a data set stream and keeps the values of `_WANTED`.

    Like `dicomrst.dimse.peek.UIDPeeker`, but for any of the four byte orders a STOW part
    can carry (explicit/implicit, little/big endian) and for SOP Class/Instance as well.
    Stops at the first top-level element past group 0020.
    """

    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit = implicit
        self.little = little
        self._u16 = "<H" if little else ">H"
        self._u32 = "<L" if little else ">L"
        self.found: dict[int, bytes] = {}
        self.done = False
        self.failed: str | None = None
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0
        self._depth = 0

    def feed(self, fragment: bytes) -> None:
        if self.done:
            return
        if self._skip:
            if len(fragment) <= self._skip:
                self._skip -= len(fragment)
                return
            fragment = fragment[self._skip :]
            self._skip = 0
        self._buf += fragment
        try:
            self._walk()
        except NotPart10 as e:
            self.failed = str(e)
            self._stop()

    def _walk(self) -> None:
        buf = self._buf
        u16, u32 = self._u16, self._u32
        while not self.done:
            pos = self._pos
            if len(buf) - pos < 8:
                return
            (group,) = struct.unpack_from(u16, buf, pos)
            (element,) = struct.unpack_from(u16, buf, pos + 2)
            tag = group << 16 | element
            if group == 0xFFFE:
                (length,) = struct.unpack_from(u32, buf, pos + 4)
                header = 8
            elif self.implicit:
                (length,) = struct.unpack_from(u32, buf, pos + 4)
                header = 8
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    if len(buf) - pos < 12:
                        return
                    (length,) = struct.unpack_from(u32, buf, pos + 8)
                    header = 12
                elif vr.isalpha() and vr.isupper():
                    (length,) = struct.unpack_from(u16, buf, pos + 6)
                    header = 8
                else:
                    raise NotPart10(f"element ({group:04X},{element:04X}) has no valid VR")
            if self._depth == 0:
                if group == 0xFFFE:
                    raise NotPart10("an item or delimiter outside a sequence")
                if group > 0x0020:
                    self._stop()
                    return
            if tag in (_ITEM_END, _SEQ_END):
                self._depth -= 1
                self._advance(pos + header)
                continue
            if length == _UNDEFINED:
                self._depth += 1
                self._advance(pos + header)
                continue
            end = pos + header + length
            if self._depth == 0 and tag in _WANTED:
                if length > 128:
                    raise NotPart10(f"element ({group:04X},{element:04X}) is too long for a UID")
                if len(buf) < end:
                    return
                self.found[tag] = bytes(buf[pos + header : end])
                if len(self.found) == len(_WANTED):
                    self._stop()
                    return
            if end > len(buf):
                self._skip = end - len(buf)
                self._buf = bytearray()
                self._pos = 0
                return
            self._advance(end)

    def _advance(self, offset: int) -> None:
        self._pos = offset
        if offset > 65536:
            del self._buf[:offset]
            self._pos = 0

    def _stop(self) -> None:
        self.done = True
        self._buf = bytearray()

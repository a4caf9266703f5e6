# -*- test-case-name: tests.unit.test_stow_part10 -*-
"""Check a STOW-RS part as a Part-10 object (PS3.10 §7.1) while its bytes stream in.

Only the first bytes are looked at: the 128-byte preamble and ``DICM``, the file meta
group (`dicomrst.common.part10.read_file_meta`), and the top-level data set elements up
to group 0020 (SOP Class and Instance, Study and Series Instance UIDs, found by
`dicomrst.common.walker.ElementWalker`).  Values are skipped, never held, so a huge
private element before the UIDs costs no memory.  The rest of the object (pixel data)
is neither parsed nor kept here: checking its content is the PACS's job.
"""

from __future__ import annotations

import re
import zlib

import attrs

from dicomrst.common.part10 import (
    MEDIA_STORAGE_SOP_CLASS,
    MEDIA_STORAGE_SOP_INSTANCE,
    TRANSFER_SYNTAX,
    NotPart10,
    read_file_meta,
)
from dicomrst.common.tags import SERIES_INSTANCE_UID, SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from dicomrst.common.walker import ElementWalker

__all__ = ["NotPart10", "Part10Checker", "Part10Info"]

#: A deflated data set is inflated in slices of this many compressed bytes, at fixed
#: offsets of the stream: what the check sees, and where a corrupt stream fails, must
#: not depend on how the network cut the part into chunks.
INFLATE_SLICE = 4096
#: A UID is at most 64 characters (PS3.5 §9.1).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_WANTED = frozenset((SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID))


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
        self._walker: ElementWalker | None = None
        self._inflater: zlib._Decompress | None = None
        self._deflated = bytearray()  # compressed bytes short of a whole INFLATE_SLICE

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
        if self._error is None and self._deflated:
            last, self._deflated = bytes(self._deflated), bytearray()
            try:
                self._inflate(last)
            except NotPart10 as e:
                self._error = e
        if self._error is not None:
            raise self._error
        assert self._walker is not None and self.dataset_offset is not None
        assert self.sop_class_uid is not None and self.sop_instance_uid is not None
        assert self.transfer_syntax is not None
        found = self._walker.values
        if self._walker.failed is not None and STUDY_INSTANCE_UID not in found:
            raise NotPart10(f"the data set does not parse: {self._walker.failed}")
        study = found.get(STUDY_INSTANCE_UID)
        if study is None:
            raise NotPart10("the data set has no Study Instance UID (0020,000D)")
        study_uid = _uid(study, "Study Instance UID")
        series = found.get(SERIES_INSTANCE_UID)
        series_uid = _uid(series, "Series Instance UID") if series is not None else None
        # The meta names the object; a data set that says otherwise is inconsistent and
        # would be stored under a name that is not its own.
        if (
            SOP_INSTANCE_UID in found
            and _uid(found[SOP_INSTANCE_UID], "SOP Instance UID") != self.sop_instance_uid
        ):
            raise NotPart10("SOP Instance UID (0008,0018) differs from the file meta's (0002,0003)")
        if SOP_CLASS_UID in found and _uid(found[SOP_CLASS_UID], "SOP Class UID") != self.sop_class_uid:
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
        meta = read_file_meta(self._head, final)
        if meta is None:
            return
        for tag, what in ((MEDIA_STORAGE_SOP_CLASS, "(0002,0002) Media Storage SOP Class UID"),
                          (MEDIA_STORAGE_SOP_INSTANCE, "(0002,0003) Media Storage SOP Instance UID"),
                          (TRANSFER_SYNTAX, "(0002,0010) Transfer Syntax UID")):  # fmt: skip
            if tag not in meta.elements:
                raise NotPart10(f"the file meta has no {what}")
        self.sop_class_uid = _uid(meta.elements[MEDIA_STORAGE_SOP_CLASS], "Media Storage SOP Class UID")
        self.sop_instance_uid = _uid(
            meta.elements[MEDIA_STORAGE_SOP_INSTANCE], "Media Storage SOP Instance UID"
        )
        ts = self.transfer_syntax = _uid(meta.elements[TRANSFER_SYNTAX], "Transfer Syntax UID")
        end = self.dataset_offset = meta.dataset_offset
        self._walker = ElementWalker(
            implicit=ts == IMPLICIT_VR_LE,
            little=ts != EXPLICIT_VR_BE,
            wanted=_WANTED,
            last_group=0x0020,
            check_vr=True,
            max_value=128,
        )
        if ts == DEFLATED_EXPLICIT_VR_LE:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        rest = bytes(self._head[end:])
        self._head = bytearray()
        if rest:
            self._feed_dataset(rest)

    # -- data set ------------------------------------------------------------------------

    def _feed_dataset(self, data: bytes) -> None:
        walker = self._walker
        assert walker is not None
        if walker.done:
            return
        if self._inflater is None:
            walker.feed(data)
            return
        buffered = self._deflated
        buffered += data
        taken = 0
        while len(buffered) - taken >= INFLATE_SLICE and not walker.done:
            self._inflate(bytes(buffered[taken : taken + INFLATE_SLICE]))
            taken += INFLATE_SLICE
        del buffered[:taken]
        if walker.done:
            self._deflated = bytearray()

    def _inflate(self, pending: bytes) -> None:
        walker, inflater = self._walker, self._inflater
        assert walker is not None and inflater is not None
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

"""Values passed between STOW-RS (`dicomrst.stow`) and the backends that store instances.

The upload parses the multipart body, checks each part as a Part-10 object and hands
every valid one to `IBackend.store_instance` as an `UploadedInstance`; the backend
answers with a `StoreOutcome`, from which the Store Instances Response is built.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import attrs

from dicomrst.errors import UpstreamError

# Status values as PS3.4 Table B.2-1 / PS3.18 Table I.2-2 give them (FailureReason and
# WarningReason carry the same numbers, in decimal in DICOM JSON).
SUCCESS = 0x0000
WARNING_COERCION = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
# Implementation-specific, from the A9xx range as Microsoft's DICOM server does: the
# instance's Study Instance UID is not the one in the URL (PS3.18 10.5.1, T I.2-2).
FAILURE_STUDY_MISMATCH = 0xA901
# Implementation-specific, from the A7xx range: an instance with this SOP Instance UID is
# already stored with different content (S3 backend; no silent overwrite).
FAILURE_CONFLICT = 0xA770


@attrs.frozen
class UploadedInstance:
    """One STOW-RS part that passed the Part-10 checks.

    The whole Part-10 object (preamble, file meta, data set) is either in memory (`data`)
    or spooled to a temporary file (`path`), which the web layer removes after the
    response; backends read it with `open()` and never delete it.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None
    transfer_syntax: str
    dataset_offset: int  # where the data set starts (after preamble and file meta)
    size: int  # bytes in the whole Part-10 object
    path: str | None = None
    data: bytes | None = attrs.field(default=None, repr=False)

    def open(self) -> BinaryIO:
        """The whole Part-10 object, positioned at its start."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")


@attrs.frozen
class StoreOutcome:
    """What became of one instance.

    `status` uses DIMSE status semantics: 0x0000 stored, 0xBxxx stored with a warning
    (it becomes the WarningReason), anything else failed (it becomes the FailureReason).
    `reason` is a short human text for the log line.
    """

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS or 0xB000 <= self.status <= 0xBFFF

    @property
    def warning(self) -> bool:
        return 0xB000 <= self.status <= 0xBFFF


@attrs.frozen
class ObjectRange:
    """What `IRangedReads.read_range` read: `data` from byte `start` of an object of
    `size` bytes whose version (S3: its ETag) is `version` (None: the store gave none)."""

    data: bytes
    start: int
    size: int
    version: str | None = None


class ObjectChanged(UpstreamError):
    """The object is no longer the version an earlier ranged read saw."""


class RangesRefused(UpstreamError):
    """The store sent the whole object where a range was asked for."""

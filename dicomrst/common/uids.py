"""UIDs the gateway names: transfer syntaxes, SOP classes, our implementation (PS3.6 Annex A)."""

from __future__ import annotations

import re

import dicomrst

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Never sent over HTTP (PS3.18 §8.7.3): converted to Explicit VR LE instead.
NOT_FOR_WEB = frozenset((IMPLICIT_VR_LE, EXPLICIT_VR_BE))

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.4): MWL-RS searches.
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

# Our own root under 2.25 (a UUID as an integer, PS3.5 §B.2): no registration needed.
IMPLEMENTATION_CLASS_UID = "2.25.196292983424913393542839104419727407297"
IMPLEMENTATION_VERSION_NAME = ("DICOMRST_" + dicomrst.__version__.replace(".", ""))[:16]

MAX_UID_LENGTH = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: str) -> bool:
    """True for a UID (PS3.5 §9.1): digits and dots, no empty or zero-padded component, ≤64 chars."""
    return len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None

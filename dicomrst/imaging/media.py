# -*- test-case-name: tests.unit.test_imaging_parsing -*-
"""Which media type a frame or pixel data part goes out as, by transfer syntax.

PS3.18 §8.7.3.3 and Table 8.7.3-5: uncompressed data is ``application/octet-stream``
(little endian; its ``transfer-syntax`` is Explicit VR Little Endian, the default of
Table 8.7.3-4), compressed data keeps its stored syntax under that syntax's media type,
frame by frame, without fragment delimiters.  Checked against the table (2019e-2024d):
``image/jpeg`` (.50 .51 .57 .70), ``image/dicom-rle`` (.5), ``image/jls`` (.80 .81),
``image/jp2`` (.90 .91), ``image/jpx`` (.92 .93).  From the media type grammar of
§8.7.3.5 (2024 editions) and not re-checked in the table: ``image/jphc`` (HTJ2K .201-.203),
``image/jxl`` (JPEG XL .110-.112), ``video/mpeg`` (.100 .101 and their .1 fragmentable
forms), ``video/mp4`` (.102-.106 and .1 forms), ``video/H265`` (.107 .108).

`DEFAULT_SYNTAX` is the RESTful default per compressed media type (the "D" rows), what a
request naming the media type without a ``transfer-syntax`` parameter asks for.
"""

from __future__ import annotations

import attrs

from dicomrst.common.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)

OCTET_STREAM = "application/octet-stream"

#: Encapsulated Uncompressed Explicit VR Little Endian (PS3.5 §A.4.11): native frames, one
#: fragment each.
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"

#: Syntaxes whose data set is not encapsulated: their frames are slices of Pixel Data.
NATIVE_SYNTAXES = frozenset((IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE))

_J2K_PART2 = ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93")
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_JPEG_XL = ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")
_MPEG2 = ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101",
          "1.2.840.10008.1.2.4.101.1")  # fmt: skip
_MPEG4 = tuple(f"1.2.840.10008.1.2.4.{n}{s}" for n in range(102, 107) for s in ("", ".1"))
_HEVC = ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108")

#: Compressed transfer syntax → media type of its frames.
COMPRESSED_MEDIA: dict[str, str] = {
    **dict.fromkeys((JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1), "image/jpeg"),
    RLE_LOSSLESS: "image/dicom-rle",
    **dict.fromkeys((JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS), "image/jls"),
    **dict.fromkeys((JPEG_2000_LOSSLESS, JPEG_2000), "image/jp2"),
    **dict.fromkeys(_J2K_PART2, "image/jpx"),
    **dict.fromkeys(_HTJ2K, "image/jphc"),
    **dict.fromkeys(_JPEG_XL, "image/jxl"),
    **dict.fromkeys(_MPEG2, "video/mpeg"),
    **dict.fromkeys(_MPEG4, "video/mp4"),
    **dict.fromkeys(_HEVC, "video/H265"),
}

#: Video syntaxes: the frames are one stream, not separable without decoding (§8.7.3.3.2:
#: video is one part with all its frames).
VIDEO_SYNTAXES = frozenset(_MPEG2 + _MPEG4 + _HEVC)

#: Syntaxes whose frame boundaries may be found from JPEG / JPEG-LS / JPEG 2000 end
#: markers (FFD9: EOI, and EOC in JPEG 2000) when no offset table says where they are.
END_MARKER_SYNTAXES = frozenset(
    (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS,
     JPEG_2000_LOSSLESS, JPEG_2000, *_J2K_PART2, *_HTJ2K)
)  # fmt: skip

#: The RESTful default syntax of each compressed media type (Table 8.7.3-5 "D").
DEFAULT_SYNTAX: dict[str, str] = {
    "image/jpeg": JPEG_LOSSLESS_SV1,
    "image/dicom-rle": RLE_LOSSLESS,
    "image/jls": JPEG_LS_LOSSLESS,
    "image/jp2": JPEG_2000_LOSSLESS,
    "image/jpx": _J2K_PART2[0],
}

#: Names older peers use for the same media types (§8.7.3.3.2 note 8).
MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


@attrs.frozen
class PartMedia:
    """The ``Content-Type`` of one frame or pixel data part: media type and syntax."""

    media_type: str
    transfer_syntax: str

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


#: Uncompressed frames and values, whatever the stored syntax: little endian octets.
NATIVE_MEDIA = PartMedia(OCTET_STREAM, EXPLICIT_VR_LE)


def frame_media(stored_syntax: str, encapsulated: bool) -> PartMedia | None:
    """How the frames of pixel data stored in `stored_syntax` go out unconverted.

    `encapsulated`: the pixel data is encapsulated (it has an undefined length).  Native
    data (and Encapsulated Uncompressed) is `NATIVE_MEDIA`; compressed data its media type
    with the stored syntax; None for a syntax with no media type (the caller decodes it or
    answers 406).
    """
    if not encapsulated or stored_syntax == ENCAPSULATED_UNCOMPRESSED:
        return NATIVE_MEDIA
    media = COMPRESSED_MEDIA.get(stored_syntax)
    return None if media is None else PartMedia(media, stored_syntax)


def media_syntaxes(media_type: str) -> tuple[str, ...]:
    """The transfer syntaxes `media_type` (or an alias of it) can carry, default first."""
    media_type = MEDIA_ALIASES.get(media_type.lower(), media_type.lower())
    if media_type == OCTET_STREAM:
        return (EXPLICIT_VR_LE,)
    found = [uid for uid, media in COMPRESSED_MEDIA.items() if media.lower() == media_type]
    default = DEFAULT_SYNTAX.get(media_type)
    if default is not None:
        found.sort(key=lambda uid: uid != default)
    return tuple(found)

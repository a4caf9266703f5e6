"""Tags and VR sets for the code that reads data set bytes itself (PS3.5 §7, PS3.6)."""

from __future__ import annotations

SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_URL = 0x00081190
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E

#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_DATA_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
#: Data Set Trailing Padding: no content (PS3.10 §7.2).
TRAILING_PADDING = 0xFFFCFFFC

ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF

#: Explicit VRs with a 2-byte reserved field and a 32-bit length (PS3.5 §7.1.2).
LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
#: Binary VRs (the DICOM JSON model writes them as InlineBinary).
BINARY_VRS = frozenset("OB OD OF OL OV OW UN".split())

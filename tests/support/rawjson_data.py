"""Generated DICOM data sets as raw bytes, for the tests that hold a raw-bytes path to its
pydicom oracle (the DICOM JSON walk, QIDO-RS results from C-FIND bytes, index records):
elements of every VR written in Explicit or Implicit VR Little Endian, well formed or not."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary, private_dictionary_VR

_BY_VR: dict[str, list[int]] = {}
for _tag, _entry in DicomDictionary.items():
    if not _entry[3] and _tag & 0xFFFF and _tag >> 16 not in (0x0002, 0xFFFE) and _tag < 0x7FE00000:
        _BY_VR.setdefault(_entry[0], []).append(_tag)

_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_CHARSETS = {
    "": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
    "ISO_IR 144": "iso8859-5",
    "ISO_IR 101": "iso8859-2",
    "ISO_IR 6": "latin-1",
}
_SIZES = {"FL": "f", "FD": "d", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H", "UV": "Q", "AT": "HH"}

pads = st.sampled_from(["", " ", "  ", "\x00", " \x00", "\t"])


def text_values(alphabet: st.SearchStrategy[str], max_size: int = 12) -> st.SearchStrategy[str]:
    """Backslash-separated values, with the padding pydicom strips (or not) around them."""
    one = st.builds(lambda a, s, b: a + s + b, pads, st.text(alphabet, max_size=max_size), pads)
    return st.lists(one, min_size=1, max_size=3).map("\\".join)


ASCII = st.sampled_from("ABCXYZabc019 ^=.-_+/:")
VALID_NUMBER_TEXT = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e6, 1e6).map(lambda x: f"{x:.6g}"),
    st.sampled_from(["+0.500", "5.", ".5", "1e3", "-0", "00012", "1.0", "1e-5", "1.5", ""]),
)
NUMBER_TEXT = st.one_of(
    VALID_NUMBER_TEXT,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1_0", "nan", "abc", "1.2.3", "+", "inf"]),
)


def numbers_text(vr: str, clean: bool) -> st.SearchStrategy[str]:
    numbers = VALID_NUMBER_TEXT if clean else NUMBER_TEXT
    after = st.sampled_from(["", " ", "\t"]) if clean else pads  # float() does not strip NULs
    one = st.builds(lambda a, s, b: a + s + b, st.sampled_from(["", " ", "  "]), numbers, after)
    return st.lists(one, min_size=1, max_size=3).map("\\".join)


def value_bytes(vr: str, codec: str, draw: Callable[[st.SearchStrategy[Any]], Any], clean: bool) -> bytes:
    """A value of `vr`: well formed when `clean`, else now and then not."""
    if not clean and draw(st.integers(0, 30)) == 0:
        return bytes(draw(st.binary(max_size=12)))
    if vr in _SIZES or vr in ("OD", "OF", "OL", "OV", "OW", "OB", "UN"):
        size = {"OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "OB": 1, "UN": 1}.get(vr) or struct.calcsize(
            "<" + _SIZES[vr]
        )
        count = draw(st.integers(0, 5))
        if vr in ("FL", "FD") and draw(st.booleans()):
            floats = draw(st.lists(st.floats(width=32 if vr == "FL" else 64), min_size=count, max_size=count))
            return struct.pack(f"<{count}{_SIZES[vr]}", *floats)
        return bytes(draw(st.binary(min_size=size * count, max_size=size * count)))
    if vr in ("DS", "IS"):
        raw = draw(numbers_text(vr, clean)).encode("latin-1")
    elif vr == "PN":
        extra = {"utf-8": "Ééж頭", "latin-1": "éÜ", "iso8859-5": "жЖ", "iso8859-2": "ěŘ"}[codec]
        alphabet = st.sampled_from("AZaz ^=" + extra)
        raw = draw(text_values(alphabet)).encode(codec, "replace")
    elif vr in ("LO", "SH", "UC", "LT", "ST", "UT"):
        extra = {"utf-8": "é頭ж€", "latin-1": "éÜ", "iso8859-5": "жЖ", "iso8859-2": "ěŘ"}[codec]
        raw = draw(text_values(st.sampled_from("Az 09.\\" + extra))).encode(codec, "replace")
    elif vr == "UI":
        raw = draw(text_values(st.sampled_from("0123456789."), 20)).encode("latin-1")
    else:  # AE AS CS DA DT TM UR
        raw = draw(text_values(ASCII)).encode("latin-1")
    if len(raw) % 2 and draw(st.booleans()):
        raw += b"\x00" if vr == "UI" else b" "
    return raw


class Builder:
    """Writes generated elements in Explicit or Implicit VR Little Endian."""

    def __init__(self, implicit: bool) -> None:
        self.implicit = implicit

    def element(self, tag: int, vr: str, value: bytes, undefined: bool = False) -> bytes:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        length = 0xFFFFFFFF if undefined else len(value)
        if self.implicit:
            return head + struct.pack("<L", length) + value
        if vr in _LONG:
            return head + vr.encode() + b"\x00\x00" + struct.pack("<L", length) + value
        return head + vr.encode() + struct.pack("<H", length) + value


@st.composite
def datasets(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    implicit: bool,
    clean: bool,
    depth: int = 0,
    codec: str = "",
) -> bytes:
    """A data set's bytes: dictionary tags of every VR, private ones, sequences of defined and
    undefined length with items of both kinds, a character set now and then; with `clean`,
    only what the walk must serve itself (no garbage values, no VR the dictionary contradicts)."""
    b = Builder(implicit)
    elements: dict[int, bytes] = {}
    charset = None
    if draw(st.integers(0, 3)) == 0:
        charset = draw(st.sampled_from(sorted(_CHARSETS)))
        elements[0x00080005] = b.element(0x00080005, "CS", charset.encode() + b" " * (len(charset) % 2))
        codec = _CHARSETS[charset]
    codec = codec or "latin-1"
    vrs = sorted(set(_BY_VR) - {"SQ", "OB or OW", "US or SS", "US or OW", "US or SS or OW"})
    for _ in range(draw(st.integers(0, 8 if depth else 14))):
        vr = draw(st.sampled_from(vrs))
        tag = draw(st.sampled_from(_BY_VR[vr]))
        if tag == 0x00080005 or (clean and tag < 0x00080005):
            continue  # text or items before the character set: pydicom decodes them oddly
        value = value_bytes(vr, codec, draw, clean)
        if not implicit and not clean and draw(st.integers(0, 6)) == 0:
            vr = "UN"  # pydicom gives it the dictionary's VR again
        elements[tag] = b.element(tag, vr, value)
    if draw(st.integers(0, 2)) == 0:  # private elements, of a creator pydicom knows or not
        creator = draw(st.sampled_from(["GEMS_IDEN_01", "ACME 1.0", "SIEMENS CSA HEADER", ""]))
        raw_creator = creator.encode() + b" " * (len(creator) % 2)
        elements[0x00090010] = b.element(0x00090010, "LO", raw_creator)
        for element in draw(st.lists(st.sampled_from([0x1001, 0x1002, 0x1004, 0x1010, 0x1027]), max_size=3)):
            vr = draw(st.sampled_from(["UN", "LO", "OB", "SL", "DS"])) if not implicit else "UN"
            if clean:  # a value of the VR pydicom's private dictionary gives the element
                try:
                    vr = private_dictionary_VR(0x00090000 | element, creator)
                except KeyError:
                    vr = "UN"
            value = value_bytes(vr, codec, draw, clean)
            elements[0x00090000 | element] = b.element(0x00090000 | element, vr, value)
    if depth == 0 and draw(st.integers(0, 2)) == 0:  # pixel data and ambiguous VRs
        if clean or draw(st.booleans()):
            elements[0x00280103] = b.element(0x00280103, "US", struct.pack("<H", draw(st.integers(0, 1))))
        vr = draw(st.sampled_from(["US", "SS"]))
        elements[0x00280106] = b.element(0x00280106, vr, value_bytes(vr, codec, draw, clean))
        elements[0x7FE00010] = b.element(0x7FE00010, "OW", bytes(draw(st.binary(max_size=8))))
    if depth == 0 and not implicit and draw(st.integers(0, 3)) == 0:  # encapsulated pixel data
        fragments = [
            b"",
            *draw(st.lists(st.binary(max_size=6).map(lambda f: f + b"\0" * (len(f) % 2)), max_size=3)),
        ]
        content = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(f)) + f for f in fragments)
        elements[0x7FE00010] = b.element(
            0x7FE00010, "OB", content + b"\xfe\xff\xdd\xe0\0\0\0\0", undefined=True
        )
    if depth < 2:
        for _ in range(draw(st.integers(0, 2))):
            tag = draw(st.sampled_from([t for t in _BY_VR["SQ"] if t > 0x00080005 or not clean]))
            vr = "SQ" if implicit or draw(st.integers(0, 4)) else "UN"
            if not clean and draw(st.integers(0, 4)) == 0:
                tag, vr = 0x00091050, "UN"  # a private sequence: pydicom looks for an item
            # A UN sequence's items are in Implicit VR (PS3.5 6.2.2); pydicom tells by the bytes.
            items_implicit = implicit or (vr == "UN" and draw(st.booleans()))
            items = []
            for _ in range(draw(st.integers(0, 2))):
                item = draw(datasets(items_implicit, clean, depth + 1, codec))
                if draw(st.booleans()):
                    items.append(
                        struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + b"\xfe\xff\x0d\xe0\0\0\0\0"
                    )
                else:
                    items.append(struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item)
            content = b"".join(items)
            if draw(st.booleans()) or vr == "UN":
                elements[tag] = b.element(tag, vr, content + b"\xfe\xff\xdd\xe0\0\0\0\0", undefined=True)
            else:
                elements[tag] = b.element(tag, vr, content)
    return b"".join(elements[tag] for tag in sorted(elements))

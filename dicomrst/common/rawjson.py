# -*- test-case-name: tests.unit.test_rawjson -*-
"""DICOM JSON straight from a data set's bytes, for WADO-RS metadata (issue 15).

`metadata_json` walks a data set in Explicit or Implicit VR Little Endian and writes the
DICOM JSON object `dicomrst.wado.metadata` describes (BulkDataURIs, group lengths, group
0002 and trailing padding left out) without building pydicom elements: several times
faster than parsing with pydicom and converting each element, which made a viewer's
series metadata slow.

`index_json` is the same walk for the index (issue 13): the object its rows keep (every
value inline, a few top-level elements left out) and the raw values of its columns, for
the reconcile scans, whose pydicom parse of each object's head was most of their time.

The pydicom encoder stays the reference: the output is byte for byte what it writes, and
its quirks are reproduced on purpose (pydicom's value types, which whitespace each VR
strips, which values it keeps as written). Where that cannot be done cheaply and exactly,
the walk declines and returns None, and the caller uses the pydicom encoder for that data
set: values pydicom would retry under other VRs or warn about (numbers it cannot read,
lengths that are not a whole number of values), ISO 2022 code extensions and multi-byte
character sets other than UTF-8, ambiguous VRs inside sequences, elements out of order,
items or elements that run past their parent, encodings pydicom switches mid-stream
(an Explicit VR data set whose first element looks implicit, and the reverse), truncated
data (pydicom decides whether it is an error).

Attributes of small values are kept in a process-wide table keyed by VR, character set
and bytes (bounded; `clear_cache` empties it): the instances of a series share most values.

`identifier_members` does the same for a C-FIND identifier (QIDO-RS and MWL-RS results),
whose reference is `dicomrst.common.dicomjson.dataset_json` of the data set
`dicomrst.common.identifiers.decode_identifier` reads: every value inline, nothing left out
but group lengths.  It declines, besides the above, what that encoder writes differently
from the metadata one (group 0002 and trailing padding at the top level, pixel data, values
of undefined length that are not sequences, ambiguous VRs).

It is a second walker beside `dicomrst.common.walker.ElementWalker` on purpose: that one is
fed fragments, flattens nesting and skips values; this one needs the whole data set, item
boundaries, defined-length sequences opened and every value.

Rules taken from pydicom 3 (`filereader`, `values`, `hooks`, `valuerep`) and reproduced here:

* An item of a sequence in an Explicit VR data set is read in Implicit VR when its first
  element's VR bytes are not two upper-case letters (PS3.5 §6.2.2 allows it for UN).
* A UN of undefined length is a sequence; a UN whose tag pydicom's dictionaries know takes
  the dictionary's VR; an unknown element in Implicit VR is UN, a private creator LO, a
  private element what pydicom's private dictionary says for its creator.
* Ambiguous VRs at the top level of an Implicit VR data set: Pixel Data is OW (OB when of
  undefined length), Pixel Representation decides between US and SS, overlay and
  waveform-like data are OW.
"""

from __future__ import annotations

import base64
import codecs
import json
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, private_dictionary_VR

from dicomrst.common.dicomjson import decimal_text, float_text
from dicomrst.common.tags import (
    ITEM,
    ITEM_END,
    PIXEL_DATA_TAGS,
    SEQUENCE_END,
    SPECIFIC_CHARACTER_SET,
    TRAILING_PADDING,
    UNDEFINED_LENGTH,
)

__all__ = [
    "RawValue",
    "clear_cache",
    "identifier_attributes",
    "identifier_members",
    "index_json",
    "metadata_json",
]

_HEADER = struct.Struct("<HHL")  # tag and a 32-bit length (Implicit VR, items, delimiters)
_EXPLICIT = struct.Struct("<HH2sH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")

_LONG = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_TEXT_VRS = frozenset("AE AS CS DA DT TM UI UR LO SH UC LT ST UT".split())
_BULK = frozenset("OB OD OF OL OV OW UN FL FD SL SS SV UL US UV".split())
_BINARY = frozenset("OB OD OF OL OV OW UN".split())
_NUMBERS = {
    "FL": ("f", 4), "FD": ("d", 8), "SL": ("l", 4), "SS": ("h", 2), "SV": ("q", 8),
    "UL": ("L", 4), "US": ("H", 2), "UV": ("Q", 8),
}  # fmt: skip
_VRS = {vr.encode(): vr for vr in _TEXT_VRS | _BINARY | set(_NUMBERS) | {"AT", "DS", "IS", "PN", "SQ"}}
_SAFE_INTEGER = 2**53
# pydicom turns a negative first value of these into an unsigned one (LUT Descriptors).
_LUT_DESCRIPTORS = frozenset((0x00281101, 0x00281102, 0x00281103, 0x00283002))
# Ambiguous VRs pydicom resolves from the data set (pydicom.filewriter).
_US_OR_SS = frozenset(
    (0x00189810, 0x00221452, 0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108, 0x00280109,
     0x00280110, 0x00280111, 0x00280120, 0x00280121, 0x00281101, 0x00281102, 0x00281103, 0x00283002,
     0x00409211, 0x00409216, 0x00603004, 0x00603006)
)  # fmt: skip
_OW = frozenset((0x54000110, 0x54000112, 0x5400100A, 0x54001010)) | frozenset(
    group << 16 | 0x3000 for group in range(0x6000, 0x601F, 2)
)
_AMBIGUOUS = frozenset(("OB or OW", "US or SS", "US or OW", "US or SS or OW"))
_ITEM_BYTES = b"\xfe\xff\x00\xe0"
_PIXEL_REPRESENTATION = 0x00280103
_PIXEL_DATA = 0x7FE00010
# Codecs whose text pydicom's PersonName round trip (decode, encode, decode) leaves as is.
_SAFE_CODECS = frozenset(["utf-8"] + [f"iso8859-{n}" for n in range(1, 10)])
_DEFAULT_CODEC = "iso8859-1"
# Explicit VR: pydicom reads an item whose first VR is not two such letters as Implicit VR.
_LETTERS = range(0x41, 0x5B)


class _Decline(Exception):
    """The pydicom encoder must do this data set."""


def metadata_json(data: bytes, *, implicit: bool, bulk_base: str, threshold: int) -> str | None:
    """The WADO-RS metadata object of a data set (no File Meta) in Implicit (`implicit`) or
    Explicit VR Little Endian, as text; None when only the pydicom encoder can write it
    exactly (see the module docstring).

    `bulk_base` is the instance's ``…/bulkdata`` URL; binary and numeric values longer than
    `threshold` bytes and pixel data become BulkDataURIs below it.
    """
    n = len(data)
    if n >= 6 and (data[4] in _LETTERS and data[5] in _LETTERS) == implicit:
        return None  # pydicom switches encodings here, with a warning
    walk = _Walk(data, bulk_base.rstrip("/") + "/", threshold)
    try:
        text, _ = walk.dataset(0, n, implicit, _DEFAULT_CODEC, walk.prefix, top=True, undefined=False)
    except _Decline:
        return None
    except Exception:  # a case the walk does not know: pydicom knows better
        return None
    return text


#: A top-level value `index_json` hands back: its VR (as pydicom gives it), its bytes,
#: and the Python codec of the data set's text.
RawValue = tuple[str, bytes, str]

#: Binary values longer than this are left out of `index_json`'s object (the index's rule).
INDEX_BINARY_LIMIT = 1024


def index_json(
    data: bytes, *, implicit: bool, wanted: frozenset[int]
) -> tuple[str, dict[int, RawValue]] | None:
    """The DICOM JSON object the index keeps for a data set (no File Meta, cut before its
    Pixel Data) in Implicit or Explicit VR Little Endian, as `dicomrst.index.records`
    writes it with pydicom: every value inline, except at the top level Specific Character
    Set (values are decoded), group 0002 and binary values over `INDEX_BINARY_LIMIT`
    bytes, which are left out.  With it, the raw values of the `wanted` top-level tags
    present.  None when only pydicom can say exactly (as `metadata_json`; also data set
    trailing padding and values of undefined length other than sequences)."""
    n = len(data)
    if n >= 6 and (data[4] in _LETTERS and data[5] in _LETTERS) == implicit:
        return None
    walk = _Walk(data, "", _SAFE_INTEGER, index=wanted)
    try:
        text, _ = walk.dataset(0, n, implicit, _DEFAULT_CODEC, "", top=True, undefined=False)
    except _Decline:
        return None
    except Exception:
        return None
    return text, walk.found


Members = list[str]
"""A data set's top-level attributes as JSON object members, ``"GGGGEEEE":{...}``, ascending."""


def identifier_members(
    data: bytes, *, implicit: bool, wanted: frozenset[int] = frozenset()
) -> tuple[Members, dict[int, tuple[str, bytes]]] | None:
    """A C-FIND identifier in Implicit (`implicit`) or Explicit VR Little Endian as the
    members of its DICOM JSON object (``"{" + ",".join(members) + "}"`` is what
    ``dataset_json(decode_identifier(data, ...))`` writes), and the VR and value bytes of
    the top-level elements whose tags are in `wanted` (none that is a sequence).  None when
    only pydicom can write it exactly (see the module docstring)."""
    walked = identifier_attributes(data, implicit=implicit, wanted=wanted)
    return None if walked is None else (walked[0], walked[2])


def identifier_attributes(
    data: bytes, *, implicit: bool, wanted: frozenset[int] = frozenset()
) -> tuple[Members, list[int], dict[int, tuple[str, bytes]]] | None:
    """`identifier_members`, with the members' tags (ascending) beside them."""
    n = len(data)
    if n >= 6 and (data[4] in _LETTERS and data[5] in _LETTERS) == implicit:
        return None
    try:
        flat = _flat_identifier(data, implicit, wanted)
    except Exception:  # _Decline, or anything odd: the full walk decides
        flat = None
    if flat is not None:
        return flat
    walk = _Walk(data, "", _NO_BULK, strict=True, wanted=wanted)
    try:
        walk.dataset(0, n, implicit, _DEFAULT_CODEC, "", top=True, undefined=False)
    except Exception:  # _Decline, or a case the walk does not know: pydicom knows better
        return None
    members = walk.top_members
    return members, [int(member[1:9], 16) for member in members], walk.values


_NO_BULK = 2**62  # the identifier encoder writes every value inline
#: Members of identifiers' elements seen before, by the data set's syntax and character
#: set, then by the element's bytes (header included): the matches of a search share
#: most values.
_ELEMENTS: dict[tuple[bool, str], dict[bytes, tuple[str, str]]] = {}
_ELEMENT_KINDS = 8  # (syntax, character set) pairs kept; a gateway sees one or two
_LONG_BYTES = frozenset(vr.encode() for vr in _LONG)


def _seen(implicit: bool, codec: str) -> dict[bytes, tuple[str, str]]:
    elements = _ELEMENTS.get((implicit, codec))
    if elements is None:
        if len(_ELEMENTS) >= _ELEMENT_KINDS:
            _ELEMENTS.clear()
        elements = _ELEMENTS[(implicit, codec)] = {}
    return elements


#: An element of the last identifier the flat loop wrote, per syntax: its bytes (header
#: included), member, tag, VR, the header's size, and the character set in force before
#: and after it (they differ at Specific Character Set only).
_Entry = tuple[bytes, str, int, str, int, str, str]
_LAYOUT: dict[bool, list[_Entry]] = {}


def _flat_identifier(
    data: bytes, implicit: bool, wanted: frozenset[int]
) -> tuple[Members, list[int], dict[int, tuple[str, bytes]]] | None:
    """What `_Walk` makes of an identifier (``strict``, top level) in the common case:
    elements of public groups with a plain VR and a defined length, no sequences; None as
    soon as anything else comes, and the full walk does the data set.  A C-FIND match is
    nearly always such a list, and this loop has a fraction of the walk's branches (a
    quarter of a QIDO-RS search's CPU was the walk).

    The matches of a search are alike: most of an element's bytes are those of the same
    element of the match before.  So the loop first compares the bytes at hand with the
    next element of the last identifier it wrote (`_LAYOUT`, one ``startswith``) and takes
    its member; else an element whose bytes were seen before (in the same syntax and
    character set) is its member again from `_ELEMENTS`; else it is written.

    A header cut short raises `struct.error`: the caller then leaves the data set to the
    full walk, as it does for None."""
    header = _HEADER.unpack_from
    explicit = _EXPLICIT.unpack_from
    long_vrs = _LONG_BYTES
    codec = _DEFAULT_CODEC
    elements = _seen(implicit, codec)
    previous = _LAYOUT.get(implicit) or []
    known_count = len(previous)
    k = 0  # the element of `previous` the next one may be
    layout: list[_Entry] = []
    members: Members = []
    tags: list[int] = []
    values: dict[int, tuple[str, bytes]] = {}
    # An element before Specific Character Set whose text it would decode otherwise.  Tags
    # ascend, so only those below (0008,0005) are looked at.
    used_codec = False
    pos = 0
    end = len(data)
    last = -1
    vr_bytes = b""
    vr: str | None
    while pos < end:
        if k < known_count:
            entry = previous[k]
            if data.startswith(entry[0], pos) and entry[5] == codec:
                # The same bytes as the last identifier's element here, under the same
                # character set: the same element.  Its tag is above `last`: `previous`
                # ascends, and `k` passes every tag up to the last one written.
                tag = entry[2]
                members.append(entry[1])
                tags.append(tag)
                stop = pos + len(entry[0])
                if tag in wanted:
                    values[tag] = (entry[3], data[pos + entry[4] : stop])
                if tag <= SPECIFIC_CHARACTER_SET:
                    if tag == SPECIFIC_CHARACTER_SET:
                        if used_codec:
                            return None
                        codec = entry[6]
                        elements = _seen(implicit, codec)
                    elif entry[3] in _USES_CODEC:
                        used_codec = True
                layout.append(entry)
                last = tag
                pos = stop
                k += 1
                continue
        if implicit:
            group, element, length = header(data, pos)
            start = pos + 8
        else:
            group, element, vr_bytes, length = explicit(data, pos)
            if vr_bytes in long_vrs:
                (length,) = _U32.unpack_from(data, pos + 8)
                start = pos + 12
            else:
                start = pos + 8
        tag = group << 16 | element
        if tag <= last:
            return None
        last = tag
        stop = start + length
        if stop > end:
            return None  # undefined length too
        while k < known_count and previous[k][2] <= tag:
            k += 1
        codec_before = codec
        element_bytes = None
        if length <= _CACHED_LENGTH and tag != SPECIFIC_CHARACTER_SET:
            element_bytes = data[pos:stop]
            known = elements.get(element_bytes)
            if known is not None:
                vr, member = known
                members.append(member)
                tags.append(tag)
                if tag in wanted:
                    values[tag] = (vr, data[start:stop])
                if tag < SPECIFIC_CHARACTER_SET and vr in _USES_CODEC:
                    used_codec = True
                layout.append((element_bytes, member, tag, vr, start - pos, codec, codec))
                pos = stop
                continue
        vr = (None if group & 1 else _dictionary_vr(tag)) if implicit else _VRS.get(vr_bytes)
        if (
            vr is None
            or group & 1
            or group == 2
            or group >= 0x7FE0  # pixel data, padding, items and delimiters
            or element == 0
            or vr == "SQ"
            or vr == "UN"
            or len(vr) != 2  # ambiguous (US or SS, ...)
        ):
            return None
        raw = data[start:stop]
        if tag == SPECIFIC_CHARACTER_SET:
            if used_codec:
                return None
            codec = _codec(raw)
            elements = _seen(implicit, codec)
        if tag in wanted:
            values[tag] = (vr, raw)
        if vr in _USES_CODEC:
            used_codec = True
        lut_fix = tag in _LUT_DESCRIPTORS
        if length == 0:
            member = f'"{tag:08X}":{{"vr":"{vr}"}}'
        elif tag == SPECIFIC_CHARACTER_SET and vr == "CS":
            member = _charset_member(raw)  # in every match, and not in `elements`
        else:
            member = f'"{tag:08X}":{_attribute(vr, raw, codec, lut_fix)}'
        if not lut_fix:
            if element_bytes is not None:
                if len(elements) >= _CACHE_SIZE:
                    elements.clear()
                elements[element_bytes] = (vr, member)
            else:
                element_bytes = data[pos:stop]
            layout.append((element_bytes, member, tag, vr, start - pos, codec_before, codec))
        members.append(member)
        tags.append(tag)
        pos = stop
    _LAYOUT[implicit] = layout
    return members, tags, values


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str:
    try:
        return str(private_dictionary_VR(tag, creator))
    except KeyError:
        return "UN"


@lru_cache(maxsize=64)
def _charset_member(raw: bytes) -> str:
    """The member of a (non-empty) Specific Character Set value: CS text is ASCII, so it
    does not depend on the character set in force."""
    return f'"{SPECIFIC_CHARACTER_SET:08X}":{_text("CS", raw, _DEFAULT_CODEC)}'


@lru_cache(maxsize=64)
def _codec(raw: bytes) -> str:
    """The Python codec for a Specific Character Set value, as pydicom reads it."""
    items = raw.decode("latin-1").rstrip(" \x00").split("\\")
    encodings = convert_encodings(items[0] if len(items) == 1 else items)
    if len(encodings) != 1:
        raise _Decline  # code extensions
    name = codecs.lookup(encodings[0]).name
    if name not in _SAFE_CODECS:
        raise _Decline
    return name


def _clean_both(text: str) -> str:
    return text.rstrip(" \x00").lstrip(" ")


def _clean_right(text: str) -> str:
    return text.rstrip(" \x00")


def _single(vr: str, value: str, clean: Callable[[str], str]) -> str:
    """`_strings` of one value."""
    if not value:
        return f'{{"vr":"{vr}"}}'
    text = clean(value)
    return f'{{"vr":"{vr}","Value":[{_quote(text) if text else "null"}]}}'


def _strings(vr: str, values: list[str], clean: Callable[[str], str]) -> str:
    """A text attribute from pydicom's values (a single '' is an empty attribute)."""
    if len(values) == 1:  # nearly every value of a match
        return _single(vr, values[0], clean)
    out = []
    for value in values:
        text = clean(value) if value else ""
        out.append(_quote(text) if text else "null")
    return f'{{"vr":"{vr}","Value":[{",".join(out)}]}}'


# What json.dumps(text, ensure_ascii=False) does for a string, without its dispatch: the
# walk's text is decoded strictly, so it never holds the lone surrogates json_string escapes.
_quote: Callable[[str], str] = json.encoder.encode_basestring


def _text(vr: str, raw: bytes, codec: str) -> str:
    """AE AS CS DA DT TM UI UR LO SH UC LT ST UT: as pydicom converts and dicomjson writes."""
    # One value (no backslash: the same byte in every codec the walk takes) is written
    # without splitting: a match's new values are UIDs, accession numbers, IDs.
    if vr == "UI" and b"\\" not in raw:
        return _single(vr, raw.decode("latin-1").rstrip("\x00 ").strip(), _clean_right)
    if vr in ("LO", "SH", "UC"):
        if b"\x1b" in raw:
            raise _Decline
        clean = _clean_right if vr == "UC" else _clean_both
        if b"\\" not in raw:
            return _single(vr, raw.decode(codec).rstrip("\x00 "), clean)
        values = [v.rstrip("\x00 ") for v in raw.decode(codec).split("\\")]
        return _strings(vr, values, clean)
    if vr in ("LT", "ST", "UT"):
        if b"\x1b" in raw:
            raise _Decline
        return _strings(vr, [raw.decode(codec).rstrip("\x00 ")], _clean_right)
    text = raw.decode("latin-1")
    if vr == "CS":
        return _strings(vr, text.rstrip(" \x00").split("\\"), _clean_both)
    if vr == "UI":
        return _strings(vr, [v.strip() for v in text.rstrip("\x00 ").split("\\")], _clean_right)
    if vr == "AE":
        return _strings(vr, [v.strip() for v in text.split("\\")], _clean_both)
    if vr == "UR":
        return _strings(vr, [text.rstrip()], _clean_right)
    return _strings(vr, text.rstrip(" \x00").split("\\"), _clean_both if vr == "AS" else _clean_right)


def _person_names(raw: bytes, codec: str) -> str:
    if b"\x1b" in raw:
        raise _Decline
    values = raw.rstrip(b"\x00 ").decode(codec).split("\\")
    out = []
    for value in values:
        groups = value.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            if len(values) == 1:
                return '{"vr":"PN"}'
            out.append("null")
            continue
        parts = [
            f'"{name}":{_quote(group.rstrip(" "))}'
            for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
            if group.rstrip(" ")
        ]
        out.append("{" + ",".join(parts) + "}" if parts else "null")
    return f'{{"vr":"PN","Value":[{",".join(out)}]}}'


def _decimal(vr: str, value: str) -> str:
    """One IS or DS value as pydicom's IS/ISfloat/DSfloat objects and dicomjson write it."""
    if not value:
        return "null"
    if not value.strip():
        return decimal_text(vr, value)  # pydicom keeps a blank value as the string it is
    if vr == "DS":
        float(value)  # ValueError: pydicom retries other VRs
        return decimal_text(vr, value.strip())
    try:
        number = int(value)
    except ValueError:
        number_f = float(value)  # ValueError, OverflowError: pydicom's own trouble
        if int(number_f) != number_f:
            return decimal_text(vr, str(number_f))  # an ISfloat: written as a float
        return decimal_text(vr, value.strip())
    if number != float(value):  # too large for a float: pydicom makes it an ISfloat
        return decimal_text(vr, str(float(value)))
    return decimal_text(vr, value.strip())


def _decimals(vr: str, raw: bytes) -> str:
    text = raw.decode("latin-1")
    if vr == "DS":
        text = text.strip()
    values = text.rstrip(" \x00").split("\\")
    if len(values) == 1 and not values[0]:
        return f'{{"vr":"{vr}"}}'
    return f'{{"vr":"{vr}","Value":[{",".join(_decimal(vr, v) for v in values)}]}}'


def _numbers(vr: str, raw: bytes, lut_fix: bool) -> str:
    code, size = _NUMBERS[vr]
    count, rest = divmod(len(raw), size)
    if rest:
        raise _Decline  # pydicom raises or makes it UN
    values: list[Any] = list(struct.unpack(f"<{count}{code}", raw))
    if lut_fix and count > 1 and values[0] < 0:
        values[0] += 65536
    if code in "fd":
        out = [float_text(v, code == "f") for v in values]
    elif code in "qQ":
        out = [str(v) if abs(v) <= _SAFE_INTEGER else f'"{v}"' for v in values]
    else:
        out = [str(v) for v in values]
    return f'{{"vr":"{vr}","Value":[{",".join(out)}]}}'


def _tags(raw: bytes) -> str:
    count, rest = divmod(len(raw), 4)
    if rest:
        raise _Decline
    words = struct.unpack(f"<{count * 2}H", raw)
    out = [f'"{words[i] << 16 | words[i + 1]:08X}"' for i in range(0, len(words), 2)]
    return f'{{"vr":"AT","Value":[{",".join(out)}]}}'


_USES_CODEC = frozenset("LO SH UC LT ST UT PN".split())
_CACHED_LENGTH = 64
_CACHE_SIZE = 4096  # a 200-slice CT series needs ~550; at most ~1 MB
_ATTRIBUTES: dict[tuple[str, str, bytes], str] = {}


def clear_cache() -> None:
    """Forget the attributes kept for values seen before (benchmarks measure without them)."""
    _ATTRIBUTES.clear()
    _ELEMENTS.clear()
    _LAYOUT.clear()


def _attribute(vr: str, raw: bytes, codec: str, lut_fix: bool) -> str:
    """The attribute object for a non-empty value of `vr` (not SQ, not bulk data)."""
    if vr in _TEXT_VRS:
        return _text(vr, raw, codec)
    if vr in _NUMBERS:
        return _numbers(vr, raw, lut_fix)
    if vr in _BINARY:
        return f'{{"vr":"{vr}","InlineBinary":"{base64.b64encode(raw).decode()}"}}'
    if vr == "PN":
        return _person_names(raw, codec)
    if vr == "IS" or vr == "DS":
        return _decimals(vr, raw)
    if vr == "AT":
        return _tags(raw)
    raise _Decline


class _Walk:
    """One data set's walk; `dataset` recurses into sequence items."""

    def __init__(
        self,
        data: bytes,
        prefix: str,
        threshold: int,
        *,
        strict: bool = False,
        wanted: frozenset[int] = frozenset(),
        index: frozenset[int] | None = None,
    ) -> None:
        self.data = data
        self.prefix = prefix
        self.threshold = threshold
        # strict: decline what the identifier encoder (dataset_json) writes differently.
        self.strict = strict
        self.wanted = wanted
        self.values: dict[int, tuple[str, bytes]] = {}
        self.top_members: Members = []
        # The index's object (`index_json`) when `index` is given: no bulk data, and the
        # top-level values of the `index` tags collected into `found`.
        self.index = index is not None
        self.index_wanted = index or frozenset()
        self.found: dict[int, RawValue] = {}

    def dataset(
        self, pos: int, end: int, implicit: bool, codec: str, prefix: str, *, top: bool, undefined: bool
    ) -> tuple[str, int]:
        """The data set from `pos` to `end`, or (`undefined`) to its Item Delimitation
        Item: its JSON object and the position after it."""
        data = self.data
        header = _HEADER.unpack_from
        explicit = _EXPLICIT.unpack_from
        u32 = _U32.unpack_from
        threshold = self.threshold
        strict = self.strict
        wanted = self.wanted if top else frozenset()
        cache = _ATTRIBUTES
        members: list[str] = []
        last = -1
        used_codec = False  # pydicom decodes a data set's text with the set it ends up with
        creators: dict[int, bytes] = {}
        pixel_representation: bytes | None = None
        while True:
            if pos >= end:
                if undefined or pos > end:
                    raise _Decline
                break
            if end - pos < 8:
                if top:
                    break  # pydicom stops at a trailing scrap shorter than a header
                raise _Decline
            if implicit:
                group, element, length = header(data, pos)
                vr: str | None = None
                start = pos + 8
            else:
                group, element, vr_bytes, length = explicit(data, pos)
                if group == 0xFFFE:
                    vr = None
                    start = pos + 8
                else:
                    vr = _VRS.get(vr_bytes)
                    if vr is None:
                        raise _Decline  # pydicom guesses: implicit, or an unknown VR
                    if vr in _LONG:
                        if end - pos < 12:
                            raise _Decline
                        (length,) = u32(data, pos + 8)
                        start = pos + 12
                    else:
                        start = pos + 8
            tag = group << 16 | element
            if group == 0xFFFE:
                if tag == ITEM_END and undefined:
                    return "{" + ",".join(members) + "}", pos + 8
                raise _Decline
            if tag <= last:
                raise _Decline  # out of order or repeated: pydicom keeps the last
            last = tag
            if strict and ((top and group == 2) or tag == TRAILING_PADDING or tag in PIXEL_DATA_TAGS):
                raise _Decline
            key = f"{tag:08X}"
            private = group & 1
            # -- the VR pydicom gives the element
            if vr is None:
                if private:
                    used_codec = True
                    vr = self.private_vr(tag, creators, codec)
                else:
                    vr = _dictionary_vr(tag)
                    if vr is None:
                        vr = "UL" if element == 0 else "UN"
            elif vr == "UN" and length != UNDEFINED_LENGTH:
                # pydicom replaces UN by the VR its dictionaries know (Explicit VR)
                if private:
                    used_codec = True
                    vr = self.private_vr(tag, creators, codec)
                elif length < 0xFFFF:
                    vr = _dictionary_vr(tag) or "UN"
            if tag in wanted and (length == UNDEFINED_LENGTH or vr == "SQ"):
                raise _Decline
            if length == UNDEFINED_LENGTH:
                if implicit:
                    known = None if private else _dictionary_vr(tag)
                    if known is None:
                        if end - start < 4:
                            raise _Decline
                        sequence = data[start : start + 4] == _ITEM_BYTES
                    else:
                        sequence = known == "SQ"
                else:
                    sequence = vr in ("SQ", "UN")
                if sequence:
                    used_codec = True
                    items, pos = self.sequence(start, end, None, implicit, codec, f"{prefix}{key}/")
                    if not (element == 0 or (top and group == 2) or tag == TRAILING_PADDING):
                        members.append(f'"{key}":{items}')
                    continue
                if self.index or strict:
                    raise _Decline  # encapsulated data before Pixel Data: pydicom knows
                pos = self.encapsulated(start, end)
                if vr in _AMBIGUOUS:
                    if not (top and implicit and tag == _PIXEL_DATA):
                        raise _Decline
                    vr = "OB"
                if element == 0 or (top and group == 2) or tag == TRAILING_PADDING:
                    continue
                if tag in PIXEL_DATA_TAGS or vr in _BULK:
                    members.append(f'"{key}":{{"vr":"{vr}","BulkDataURI":{json.dumps(prefix + key)}}}')
                    continue
                raise _Decline
            pos = start + length
            if pos > end:
                raise _Decline  # pydicom decides whether a short value is an error
            if tag == SPECIFIC_CHARACTER_SET:
                if used_codec:
                    raise _Decline
                codec = _codec(data[start:pos])
            elif private and 0x10 <= element <= 0xFF:
                if vr != "LO":
                    raise _Decline  # pydicom would read the creator by another VR
                creators[tag] = data[start:pos]
            elif tag == _PIXEL_REPRESENTATION and vr == "US":
                pixel_representation = data[start:pos]
            if tag in wanted:
                self.values[tag] = (vr, data[start:pos])
            lut_fix = tag in _LUT_DESCRIPTORS
            if vr in _AMBIGUOUS:
                if strict or not (top and implicit):
                    raise _Decline  # pydicom looks at the parents' Pixel Representation
                vr = _resolve(tag, length, pixel_representation, tag > _PIXEL_REPRESENTATION)
                lut_fix = False  # pydicom fixes LUT Descriptors only when it knows the VR
            if self.index:
                if tag == TRAILING_PADDING:
                    raise _Decline  # pydicom keeps what the metadata leaves out
                if top:
                    if tag in self.index_wanted:
                        self.found[tag] = (vr, data[start:pos], codec)
                    if tag == SPECIFIC_CHARACTER_SET or tag in PIXEL_DATA_TAGS:
                        continue
                    if vr in _BINARY and length > INDEX_BINARY_LIMIT:
                        continue
            if element == 0 or (top and group == 2) or tag == TRAILING_PADDING:
                continue
            if length == 0:
                members.append(f'"{key}":{{"vr":"{vr}"}}')
                continue
            if not self.index and (tag in PIXEL_DATA_TAGS or (vr in _BULK and length > threshold)):
                if vr not in _BULK:
                    raise _Decline
                members.append(f'"{key}":{{"vr":"{vr}","BulkDataURI":{json.dumps(prefix + key)}}}')
                continue
            if vr == "SQ":
                used_codec = True
                items, _ = self.sequence(start, pos, pos, implicit, codec, f"{prefix}{key}/")
                members.append(f'"{key}":{items}')
                continue
            if vr in _USES_CODEC:
                used_codec = True
            raw = data[start:pos]
            if length > _CACHED_LENGTH or lut_fix:
                members.append(f'"{key}":{_attribute(vr, raw, codec, lut_fix)}')
                continue
            # Most values of a series' instances are alike (and many within one): the
            # attribute for a value is kept, keyed by what it depends on.
            cache_key = (vr, codec, raw)
            attribute = cache.get(cache_key)
            if attribute is None:
                attribute = _attribute(vr, raw, codec, lut_fix)
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[cache_key] = attribute
            members.append(f'"{key}":{attribute}')
        if top:
            self.top_members = members
        return "{" + ",".join(members) + "}", pos

    def sequence(
        self, pos: int, end: int, defined_end: int | None, implicit: bool, codec: str, prefix: str
    ) -> tuple[str, int]:
        """A sequence's items from `pos`: to `defined_end`, or (None) to its Sequence
        Delimitation Item within `end`. The attribute object and the position after it."""
        data = self.data
        header = _HEADER.unpack_from
        limit = end if defined_end is None else defined_end
        items: list[str] = []
        while True:
            if defined_end is not None and pos == defined_end:
                break
            if limit - pos < 8:
                raise _Decline
            group, element, length = header(data, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END:
                if defined_end is not None or length:
                    raise _Decline
                break
            if tag != ITEM:
                raise _Decline
            item_prefix = f"{prefix}{len(items)}/"
            item_end = limit if length == UNDEFINED_LENGTH else pos + length
            if item_end > limit:
                raise _Decline
            item_implicit = implicit
            if (
                not implicit
                and item_end - pos >= 6
                and not (data[pos + 4] in _LETTERS and data[pos + 5] in _LETTERS)
            ):
                item_implicit = True  # pydicom: an item may be in Implicit VR (PS3.5 6.2.2)
            text, pos = self.dataset(
                pos,
                item_end,
                item_implicit,
                codec,
                item_prefix,
                top=False,
                undefined=length == UNDEFINED_LENGTH,
            )
            items.append(text)
        if not items:
            return '{"vr":"SQ"}', pos
        return f'{{"vr":"SQ","Value":[{",".join(items)}]}}', pos

    def encapsulated(self, pos: int, end: int) -> int:
        """The end of a non-sequence value of undefined length (encapsulated pixel data):
        items up to a Sequence Delimitation Item, which pydicom finds the same way."""
        data = self.data
        header = _HEADER.unpack_from
        while True:
            if end - pos < 8:
                raise _Decline  # pydicom scans the bytes for a delimiter instead
            group, element, length = header(data, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise _Decline
            pos += length
            if pos > end:
                raise _Decline

    def private_vr(self, tag: int, creators: dict[int, bytes], codec: str) -> str:
        """The VR pydicom gives a private element it has no VR for (hooks._private_vr_for_tag)."""
        element = tag & 0xFFFF
        if 0x10 <= element <= 0xFF:
            return "LO"
        if not element & 0xFF00:
            return "UN"
        raw = creators.get(tag >> 16 << 16 | element >> 8)
        if raw is None:
            return "UN"
        if b"\x1b" in raw:
            raise _Decline
        values = [v.rstrip("\x00 ") for v in raw.decode(codec).split("\\")]
        if len(values) != 1:
            raise _Decline
        return _private_vr(tag, values[0])


def _resolve(tag: int, length: int, pixel_representation: bytes | None, after: bool) -> str:
    """An ambiguous VR at the top level of an Implicit VR data set, as pydicom resolves it
    (`pydicom.filewriter.correct_ambiguous_vr_element`); `after`: the element comes after
    Pixel Representation's tag."""
    if tag == _PIXEL_DATA or tag in _OW:
        return "OW"
    if tag not in _US_OR_SS or length % 2 or not after:
        raise _Decline
    if pixel_representation is None:
        raise _Decline  # pydicom guesses from Pixel Data, or fails
    if not pixel_representation:
        return "SS"  # pydicom: an empty Pixel Representation is not 0
    if len(pixel_representation) != 2:
        raise _Decline
    return "US" if _U16.unpack(pixel_representation)[0] == 0 else "SS"

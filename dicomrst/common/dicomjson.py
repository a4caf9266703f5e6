# -*- test-case-name: tests.unit.test_qido_web -*-
"""pydicom datasets → the DICOM JSON Model (PS3.18 Annex F), one dataset at a time.

Written by hand rather than with ``Dataset.to_json_dict`` because results from a PACS
are not always tidy: that method fails on an empty value inside a multi-valued DS,
and it cannot keep a DS's written precision. Here:

* keys are the tags as 8 uppercase hex digits, ascending; group lengths are dropped;
* ``"vr"`` comes first, then ``"Value"`` or ``"InlineBinary"``; a zero-length element
  has neither (``{"vr":"PN"}``); an empty value among several is ``null``;
* PN values are objects with ``Alphabetic``/``Ideographic``/``Phonetic``, empty
  groups left out; SQ values are item objects (an empty item is ``{}``);
* IS, DS and the binary numbers are JSON numbers (a DS keeps its digits as written
  when they are a valid JSON number; NaN and infinities, which JSON lacks, are
  ``null``); SV/UV beyond ±2**53 are strings so JavaScript keeps them exact; an IS or
  DS that is not a number stays a string (the model allows both);
* AT values are 8 uppercase hex digits; OB/OW/UN/… are base64 ``InlineBinary``;
* text is whatever pydicom decoded with the dataset's Specific Character Set, written
  as UTF-8.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, IS, TM, DSdecimal, DSfloat, PersonName

from dicomrst.common.tags import BINARY_VRS

_STRING_VRS = frozenset("AE AS CS DA DT LO LT SH ST TM UC UI UR UT".split())
_STRIP_BOTH = frozenset("AE AS CS LO SH DS IS".split())  # leading spaces are padding too
_INT_VRS = frozenset("SL SS UL US".split())
_BIG_INT_VRS = frozenset("SV UV".split())
_FLOAT_VRS = frozenset("FL FD".split())
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SAFE_INTEGER = 2**53
# pydicom's value types that remember the text they were read from.
_KEEP_TEXT = (IS, DSfloat, DSdecimal, DA, DT, TM)


def json_string(text: str) -> str:
    """`text` as a JSON string, UTF-8 characters kept (escaped only when they cannot be)."""
    encoded = json.dumps(text, ensure_ascii=False)
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a broken decode: escape it
        encoded = json.dumps(text)
    return encoded


def _clean(vr: str, text: str) -> str:
    text = text.rstrip(" \x00")
    return text.lstrip(" ") if vr in _STRIP_BOTH else text


def float_text(value: float, single: bool) -> str:
    """An FL (`single`) or FD value as a JSON number; ``null`` for NaN and infinities."""
    if not math.isfinite(value):
        return "null"
    if single:
        # The shortest decimal that reads back as the same 32-bit float.
        packed = struct.pack("<f", value)
        for digits in range(1, 10):
            text = f"{value:.{digits}g}"
            try:
                if struct.pack("<f", float(text)) == packed:
                    return _number_text(text)
            except OverflowError:  # near the largest float32, a short text rounds past it
                continue
    return _number_text(repr(value))


def _number_text(text: str) -> str:
    """A Python number's text as a JSON number (``1e+20`` is fine; ``inf`` is not)."""
    return text if _JSON_NUMBER.fullmatch(text) else json.dumps(float(text))


def original_text(value: object) -> str:
    """A value as written in the data set: the string pydicom's IS, DS, DA, DT and TM
    objects keep (`original_string`, when they were read from one), else ``str(value)``."""
    if isinstance(value, _KEEP_TEXT):
        try:
            original = value.original_string  # set only when built from a string
        except AttributeError:
            return str(value)
        if isinstance(original, str):
            return original
    return str(value)


def _decimal(vr: str, value: object) -> str:
    """An IS or DS value as a JSON number, keeping the written digits when JSON allows."""
    return decimal_text(vr, original_text(value))


def decimal_text(vr: str, text: str) -> str:
    """An IS or DS value written as `text` (see `original_text`) as a JSON number, or as a
    JSON string when it is not a number."""
    text = _clean(vr, text)
    if text.startswith("+"):
        text = text[1:]
    if _JSON_NUMBER.fullmatch(text):
        return text
    try:
        number = int(text) if vr == "IS" else float(text)
    except ValueError:
        return json_string(text)  # not a number at all: keep it as the string it is
    if isinstance(number, float):
        return float_text(number, single=False)
    return str(number)


def _person_name(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    groups = list(value.components) if isinstance(value, PersonName) else str(value).split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    parts = [
        f'"{name}":{json_string(group.rstrip(" "))}'
        for name, group in zip(names, groups, strict=False)
        if group and group.rstrip(" ")
    ]
    return "{" + ",".join(parts) + "}" if parts else "null"


def _value(vr: str, value: Any) -> str:  # one value of a pydicom element, of any VR
    if value is None or value == "":
        return "null"
    if vr == "PN":
        return _person_name(value)
    if vr in ("IS", "DS"):
        return _decimal(vr, value)
    if vr in _INT_VRS:
        return str(int(value))
    if vr in _BIG_INT_VRS:
        number = int(value)
        return str(number) if abs(number) <= _SAFE_INTEGER else f'"{number}"'
    if vr in _FLOAT_VRS:
        return float_text(float(value), single=vr == "FL")
    if vr == "AT":
        return f'"{int(value):08X}"'
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = _clean(vr, original_text(value))
    return json_string(text) if text else "null"


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes | bytearray | list | tuple | MultiValue):
        return len(value) == 0
    return str(value) == ""  # an empty PersonName


def element_json(element: DataElement) -> str | None:
    """One attribute object, e.g. ``{"vr":"PN","Value":[{"Alphabetic":"Doe^J"}]}``.

    None for elements the model leaves out (group lengths).
    """
    if element.tag.element == 0:
        return None
    vr = str(element.VR).split(" or ")[0]
    value = element.value
    if vr == "SQ":
        items = [dataset_json(item) for item in value or ()]
        return f'{{"vr":"SQ","Value":[{",".join(items)}]}}' if items else '{"vr":"SQ"}'
    if _is_empty(value):
        return f'{{"vr":"{vr}"}}'
    if vr in BINARY_VRS or (isinstance(value, bytes) and vr not in _STRING_VRS and vr != "PN"):
        raw = bytes(value) if isinstance(value, bytes | bytearray) else b""
        if not raw:
            return f'{{"vr":"{vr}"}}'
        return f'{{"vr":"{vr}","InlineBinary":"{base64.b64encode(raw).decode("ascii")}"}}'
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    rendered = [_value(vr, v) for v in values]
    return f'{{"vr":"{vr}","Value":[{",".join(rendered)}]}}'


def dataset_json(dataset: Dataset) -> str:
    """One data set as a JSON object (text)."""
    members = []
    for element in dataset:  # ascending tag order
        encoded = element_json(element)
        if encoded is not None:
            members.append(f'"{int(element.tag):08X}":{encoded}')
    return "{" + ",".join(members) + "}"


def encode_dataset(dataset: Dataset) -> bytes:
    """One data set as a UTF-8 JSON object, to be placed in an array by `json_array`."""
    return dataset_json(dataset).encode("utf-8")


def json_array(encoded: Iterable[bytes]) -> Iterator[bytes]:
    """Pieces of the top-level JSON array around already-encoded data sets."""
    yield b"["
    first = True
    for item in encoded:
        if not first:
            yield b","
        first = False
        yield item
    yield b"]"

"""Property tests (hypothesis) of two writers, each read back by an independent reader.

* The DICOM JSON encoder (`dicomrst.common.dicomjson`, QIDO-RS results and WADO-RS
  metadata): a data set of random elements of every VR, encoded and read back with
  pydicom's ``Dataset.from_json``, is the same data set.
* The multipart writer (`dicomrst.wado.multipart`, WADO-RS responses): random parts,
  written and parsed back by the STOW-RS multipart parser and by the standard library's
  email parser, are the same parts.

Examples are derandomized (the same on every run) and unbounded in time.
"""

from __future__ import annotations

import email
import json
import struct
import warnings
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.dicomjson import dataset_json
from dicomrst.stow.multipart import MultipartParser, parse_media_type
from dicomrst.wado.multipart import MultipartWriter, part_content_type

SETTINGS = settings(max_examples=100, deadline=None, database=None, derandomize=True)

# -- DICOM JSON ---------------------------------------------------------------------------------

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = "0123456789"
# Text without control characters or backslashes (the value separator); no padding spaces.
_TEXT_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\\")


def _text(max_size: int, chars: Any = _TEXT_CHARS) -> st.SearchStrategy[str]:
    return st.text(chars, min_size=1, max_size=max_size).map(lambda s: s.strip(" ")).filter(bool)


def _float32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


_UID = st.lists(st.integers(0, 10**6), min_size=2, max_size=6).map(lambda parts: ".".join(map(str, parts)))
_DATE = st.dates().map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}")
_TIME = st.times().map(lambda t: f"{t.hour:02d}{t.minute:02d}{t.second:02d}")
# LT/ST/UT: one value, which may hold backslashes and starts with spaces that count.
_LONG_TEXT = (
    st.tuples(
        st.sampled_from(["", " ", "  "]), st.text(_TEXT_CHARS | st.just("\\"), min_size=1, max_size=200)
    )
    .map(lambda t: (t[0] + t[1]).rstrip())
    .filter(bool)
)
_PN_GROUP = st.lists(
    _text(12, st.characters(whitelist_categories=("Lu", "Ll", "Lo"))), min_size=1, max_size=3
)
_PN = st.lists(_PN_GROUP, min_size=1, max_size=3).map(lambda groups: "=".join("^".join(g) for g in groups))

# VR → (a strategy for one value, whether the VR may hold several values)
_VALUES: dict[str, tuple[st.SearchStrategy[Any], bool]] = {
    "AE": (_text(16, st.sampled_from(_UPPER + _DIGITS + " -_")), True),
    "AS": (st.tuples(st.integers(0, 999), st.sampled_from("DWMY")).map(lambda t: f"{t[0]:03d}{t[1]}"), True),
    "CS": (_text(16, st.sampled_from(_UPPER + _DIGITS + "_ ")), True),
    "DA": (_DATE, True),
    "DT": (st.tuples(_DATE, _TIME).map("".join), True),
    "TM": (_TIME, True),
    "LO": (_text(64), True),
    "SH": (_text(16), True),
    "UC": (_text(200), True),
    "LT": (_LONG_TEXT, False),
    "ST": (_LONG_TEXT, False),
    "UT": (_LONG_TEXT, False),
    "UR": (_text(100, st.sampled_from(_UPPER + _DIGITS + ":/.?=&%-_~")), False),
    "UI": (_UID, True),
    "PN": (_PN, True),
    "IS": (st.integers(-(2**31), 2**31 - 1).map(str), True),
    "DS": (st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.6g}"), True),
    "FL": (st.floats(allow_nan=False, allow_infinity=False, width=32), True),
    "FD": (st.floats(allow_nan=False, allow_infinity=False), True),
    "SS": (st.integers(-(2**15), 2**15 - 1), True),
    "US": (st.integers(0, 2**16 - 1), True),
    "SL": (st.integers(-(2**31), 2**31 - 1), True),
    "UL": (st.integers(0, 2**32 - 1), True),
    "SV": (st.integers(-(2**63), 2**63 - 1), True),
    "UV": (st.integers(0, 2**64 - 1), True),
    "AT": (st.integers(0, 2**32 - 1), True),
}
_STRING_VRS = frozenset("AE AS CS DA DT TM LO SH UC UI PN".split())
# Binary VRs: the size their values come in.
_BINARY = {"OB": 1, "UN": 1, "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


@st.composite
def _element_value(draw: st.DrawFn, vr: str, depth: int) -> Any:
    if vr == "SQ":
        return Sequence(draw(st.lists(datasets(depth + 1), max_size=2)))
    if vr in _BINARY:
        size = _BINARY[vr]
        return draw(st.binary(max_size=12).map(lambda b: b[: len(b) - len(b) % size]))
    value, multiple = _VALUES[vr]
    if multiple and vr in _STRING_VRS:
        value = value | st.just("")  # an empty value among others: null in JSON
    values = draw(st.lists(value, max_size=3 if multiple else 1))
    return values if len(values) != 1 else values[0]


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    vrs = [*_VALUES, *_BINARY] + (["SQ"] if depth < 2 else [])
    ds = Dataset()
    # The top level has an element of every VR; items, a few.  Private groups (odd), so
    # the VR is the element's own, never the dictionary's.
    elements = vrs if depth == 0 else draw(st.lists(st.sampled_from(vrs), max_size=3))
    for i, vr in enumerate(elements):
        ds.add(DataElement(0x00091010 + i, vr, draw(_element_value(vr, depth))))
    return ds


def _canon_value(vr: str, value: Any) -> Any:
    if vr == "SQ":
        return tuple(canonical(item) for item in value or ())
    if vr in _BINARY:
        return bytes(value or b"")
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if all(v is None or v == "" for v in values):
        return ()
    values = ["" if v is None else v for v in values]  # an empty value among others
    convert = {
        "PN": str,
        "IS": int,
        "DS": float,
        "FL": _float32,
        "FD": float,
        "AT": int,
        **{vr: int for vr in ("SS", "US", "SL", "UL", "SV", "UV")},
    }.get(vr, str)
    return tuple(convert(v) for v in values)


def canonical(ds: Dataset) -> dict[int, tuple[str, Any]]:
    """What a data set says, in plain values: tags to (VR, values)."""
    return {int(e.tag): (e.VR, _canon_value(e.VR, e.value)) for e in ds}


class DicomJSONTests(SynchronousTestCase):
    @SETTINGS
    @given(datasets())
    def test_pydicom_reads_back_the_same_data_set(self, dataset: Dataset) -> None:
        encoded = dataset_json(dataset)
        self._check_model(json.loads(encoded))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom warns about values it finds invalid
            back = Dataset.from_json(json.loads(encoded))
        self.assertEqual(canonical(back), canonical(dataset), encoded)

    def _check_model(self, obj: dict[str, Any]) -> None:
        """What reading back cannot show: tags and AT values are 8 uppercase hex digits,
        in ascending order, and an attribute has "vr" and at most one of its values."""
        self.assertEqual(list(obj), sorted(obj))
        for tag, attribute in obj.items():
            self.assertRegex(tag, "^[0-9A-F]{8}$")
            self.assertLessEqual(len(set(attribute) & {"Value", "InlineBinary", "BulkDataURI"}), 1)
            if attribute["vr"] == "AT":
                for value in attribute.get("Value", []):
                    self.assertRegex(value, "^[0-9A-F]{8}$")
            if attribute["vr"] == "SQ":
                for item in attribute.get("Value", []):
                    self._check_model(item)

    def test_the_largest_single_float(self) -> None:
        # Found while writing the test above (its random floats rarely reach the ends):
        # a short decimal of float32's maximum rounds above it, and packing that as a
        # float32 raised OverflowError, failing any result or metadata that carried it.
        ds = Dataset()
        ds.add(
            DataElement(0x00091010, "FL", [_float32(3.4028234663852886e38), -_float32(3.4028234663852886e38)])
        )
        back = Dataset.from_json(json.loads(dataset_json(ds)))
        self.assertEqual(canonical(back), canonical(ds))


# -- multipart ----------------------------------------------------------------------------------

_BCHARS = _UPPER + _UPPER.lower() + _DIGITS + "'()+_,-./:=? "
_BOUNDARY = st.text(st.sampled_from(_BCHARS), min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
_PART = st.tuples(
    st.binary(max_size=300)
    | st.lists(st.sampled_from([b"\r\n", b"--", b"\r", b"\n", b"x", b"\x00"]), max_size=40).map(b"".join),
    st.none() | _UID,  # a transfer syntax
    st.none() | st.text(st.sampled_from(_BCHARS.strip() + "%"), min_size=1, max_size=60),  # a location
    st.booleans(),  # with Content-Length
)


class _Collect:
    def __init__(self) -> None:
        self.parts: list[tuple[list[tuple[str, str]], bytes]] = []

    def part_begin(self, headers: list[tuple[str, str]]) -> None:
        self.parts.append((headers, b""))

    def part_data(self, data: bytes) -> None:
        headers, body = self.parts[-1]
        self.parts[-1] = (headers, body + data)

    def part_end(self) -> None:
        pass


def _written(
    boundary: str | None, parts: list[tuple[bytes, str | None, str | None, bool]]
) -> tuple[str, bytes]:
    writer = MultipartWriter(boundary)
    out = b""
    for body, syntax, location, with_length in parts:
        out += writer.part_header(
            part_content_type("application/dicom", syntax), location, len(body) if with_length else None
        )
        out += body
    return writer.content_type("application/dicom"), out + writer.close()


def _expected_headers(
    syntax: str | None, location: str | None, with_length: bool, length: int
) -> list[tuple[str, str]]:
    headers = [("content-type", part_content_type("application/dicom", syntax))]
    if location is not None:
        headers.append(("content-location", location))
    if with_length:
        headers.append(("content-length", str(length)))
    return headers


class MultipartTests(SynchronousTestCase):
    @SETTINGS
    @given(st.none() | _BOUNDARY, st.lists(_PART, min_size=1, max_size=4), st.integers(1, 50))
    def test_our_parser_reads_back_the_same_parts(
        self, boundary: str | None, parts: list[Any], step: int
    ) -> None:
        if boundary is not None:
            assume(all(b"\r\n--" + boundary.encode() not in b"\r\n" + body for body, *_ in parts))
        content_type, body = _written(boundary, parts)
        media = parse_media_type(content_type)
        self.assertEqual((media.essence, media.params["type"]), ("multipart/related", "application/dicom"))
        collect = _Collect()
        parser = MultipartParser(media.params["boundary"].encode("ascii"), collect)
        for i in range(0, len(body), step):
            parser.feed(body[i : i + step])
        parser.finish()
        self.assertEqual(
            collect.parts,
            [(_expected_headers(s, loc, n, len(b)), b) for b, s, loc, n in parts],
        )

    @SETTINGS
    @given(st.none() | _BOUNDARY, st.lists(_PART, min_size=1, max_size=4))
    def test_the_email_parser_reads_back_the_same_parts(self, boundary: str | None, parts: list[Any]) -> None:
        if boundary is not None:
            assume(all(b"\r\n--" + boundary.encode() not in b"\r\n" + body for body, *_ in parts))
        content_type, body = _written(boundary, parts)
        message = email.message_from_bytes(
            b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n" + body
        )
        self.assertTrue(message.is_multipart(), content_type)
        read = [
            (p.get("Content-Location"), p.get("Content-Length"), p.get_payload(decode=True))
            for p in message.get_payload()
        ]
        self.assertEqual(read, [(loc, str(len(b)) if n else None, b) for b, _, loc, n in parts])

"""The DICOM JSON walk over raw bytes (dicomrst.common.rawjson) against its reference, the
pydicom encoder (`dicomrst.wado.metadata.pydicom_metadata_json`): byte for byte on the
metadata fixtures of the test suite, the benchmark CT, pydicom's own test files and
generated data sets; and it must not decline the data it is meant to serve fast."""

from __future__ import annotations

import glob
import os
import struct
import warnings
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary, private_dictionary_VR
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.part10 import NotPart10, read_file_meta
from dicomrst.common.rawjson import metadata_json
from dicomrst.common.transcode import DataSetError
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.wado.metadata import instance_metadata_json, pydicom_metadata_json
from tests.support.datasets import encode, instance

BASE = "http://gw/aets/PACS/studies/1/series/2/instances/3/bulkdata"


def oracle(data: bytes, implicit: bool, threshold: int = 1024, base: str = BASE) -> str | None:
    """The pydicom encoder's text, or None when it raises DataSetError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom_metadata_json(
                data, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE, base, threshold
            ).decode("utf-8")
        except DataSetError:
            return None


def fast(data: bytes, implicit: bool, threshold: int = 1024, base: str = BASE) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the walk itself never makes pydicom warn
        return metadata_json(data, implicit=implicit, bulk_base=base, threshold=threshold)


class Compare(SynchronousTestCase):
    def assert_same(self, data: bytes, implicit: bool, threshold: int = 1024, *, served: bool = True) -> None:
        """The walk writes what pydicom writes; with `served`, it did not decline."""
        got = fast(data, implicit, threshold)
        if got is None:
            if served:
                self.fail("the walk declined a data set it should serve")
            return
        self.assertEqual(got, oracle(data, implicit, threshold))


def split(blob: bytes) -> tuple[bytes, str] | None:
    """A Part-10 file's data set and transfer syntax (None: not one)."""
    try:
        meta = read_file_meta(blob, True)
    except NotPart10:
        return None
    if meta is None:
        return None
    return blob[meta.dataset_offset :], meta.text(0x00020010)


class FixtureTests(Compare):
    def test_bench_ct(self) -> None:
        from bench.data import ct_study

        _, blobs = ct_study(2, size=16)
        for blob in blobs:
            parts = split(blob)
            assert parts is not None
            self.assert_same(parts[0], implicit=False)

    def test_metadata_fixtures(self) -> None:
        """The data sets the WADO-RS metadata tests of both suites serve."""
        from tests.support.metadata import encoded, metadata_data, with_icon, with_voi_lut

        for stored in [s for group in metadata_data().values() for s in group]:
            parts = split(stored.data)
            assert parts is not None
            data, syntax = parts
            self.assert_same(data, implicit=syntax == IMPLICIT_VR_LE)
            ds = stored.dataset()
            self.assert_same(encoded(ds), implicit=False)
            self.assert_same(encoded(ds, implicit=True), implicit=True, served=False)
        ds = with_voi_lut(with_icon(instance("1.2", "1.3")))
        for threshold in (0, 16, 1024, 1 << 20):
            self.assert_same(encode(ds), implicit=False, threshold=threshold)

    def test_wado_parts_fixtures(self) -> None:
        """`tests.unit.test_wado_parts`'s nested data set: paths of bulk data in items."""
        from tests.unit.test_wado_parts import MetadataTests

        ds = MetadataTests.nested(MetadataTests())
        for threshold in (0, 10, 1024):
            self.assert_same(encode(ds), implicit=False, threshold=threshold)
            self.assert_same(encode(ds, implicit=True), implicit=True, threshold=threshold, served=False)

    def test_pydicom_files(self) -> None:
        """Every little-endian test file pydicom ships that the walk serves is identical."""
        served = 0
        folder = os.path.dirname(get_testdata_file("CT_small.dcm") or "")
        for path in sorted(glob.glob(os.path.join(folder, "*.dcm"))):
            with open(path, "rb") as f:
                parts = split(f.read())
            if parts is None or parts[1] in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
                continue
            data, syntax = parts
            implicit = syntax == IMPLICIT_VR_LE
            got = fast(data, implicit)
            if got is not None:
                served += 1
                self.assertEqual(got, oracle(data, implicit), path)
        self.assertGreater(served, 50)

    def test_instance_metadata_json(self) -> None:
        """Every caller gets the walk: the same bytes as the reference, for each syntax."""
        data = encode(instance("1.2", "1.3"))
        self.assertEqual(
            instance_metadata_json(data, EXPLICIT_VR_LE, BASE),
            pydicom_metadata_json(data, EXPLICIT_VR_LE, BASE),
        )

    def test_declines(self) -> None:
        """What the walk leaves to pydicom, which still answers it."""
        ds = Dataset()
        ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=\033$B;3ED\033(B^\033$BB@O:\033(B"
        cases = {
            "code extensions": (encode(ds), False),
            "truncated": (encode(instance("1.2", "1.3"))[:-3], False),
            "unordered": (encode(instance("1.2", "1.3"))[-8:] + encode(instance("1.2", "1.3"))[:-8], False),
            "big-endian-looking": (b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100", False),
        }
        for name, (data, implicit) in cases.items():
            self.assertIsNone(fast(data, implicit), name)
        self.assertIn("山田".encode(), instance_metadata_json(encode(ds), EXPLICIT_VR_LE, BASE))


# -- generated data sets -----------------------------------------------------------------------

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


_settings = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class GeneratedTests(Compare):
    @_settings
    @given(st.data())
    def test_explicit(self, data: st.DataObject) -> None:
        raw = data.draw(datasets(False, False))
        threshold = data.draw(st.sampled_from([0, 4, 16, 1024]))
        self.assert_same(raw, implicit=False, threshold=threshold, served=False)

    @_settings
    @given(st.data())
    def test_implicit(self, data: st.DataObject) -> None:
        raw = data.draw(datasets(True, False))
        threshold = data.draw(st.sampled_from([0, 4, 16, 1024]))
        self.assert_same(raw, implicit=True, threshold=threshold, served=False)

    @_settings
    @given(st.data())
    def test_served(self, data: st.DataObject) -> None:
        """Well-formed data sets of every VR are the walk's own, in both syntaxes."""
        implicit = data.draw(st.booleans())
        raw = data.draw(datasets(implicit, True))
        threshold = data.draw(st.sampled_from([0, 4, 16, 1024]))
        self.assert_same(raw, implicit=implicit, threshold=threshold)

"""Index records made from a head's raw bytes (`record_from_head` with ``raw``) against the
pydicom path, their oracle: the same record and, byte for byte, the same row (column
values and attributes JSON) on the index fixtures, the metadata fixtures, pydicom's test
files, the benchmark's archive and generated data sets; the raw path must serve the
common data itself, and hand what it declines (big endian, ISO 2022) to pydicom."""

from __future__ import annotations

import glob
import os
import struct
import warnings
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.index.interfaces import IndexRecord
from dicomrst.index.records import COLUMN_OF_TAG, NotIndexable, instance_row, record_from_head
from tests.support import index_data
from tests.support.rawjson_data import Builder, datasets, value_bytes

AET = "AET"


def records(data: bytes) -> tuple[IndexRecord | None, IndexRecord | None]:
    """(pydicom's record, the raw path's) of a whole Part-10 file; None where it is not indexable."""
    out: list[IndexRecord | None] = []
    for raw in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out.append(record_from_head(AET, "k", "s", len(data), data, complete=True, raw=raw))
            except NotIndexable:
                out.append(None)
    return out[0], out[1]


class Compare(SynchronousTestCase):
    def assert_same(self, data: bytes, *, served: bool = True, what: str = "") -> None:
        oracle, raw = records(data)
        if oracle is None:
            self.assertIsNone(raw, what)
            return
        assert raw is not None
        if served:
            self.assertIsNotNone(raw.row, f"the raw path declined {what}")
        self.assertEqual(raw, oracle, what)
        self.assertEqual(instance_row(raw), instance_row(oracle), what)


class FixtureTests(Compare):
    def test_index_fixtures(self) -> None:
        for item in index_data.build(AET):
            self.assert_same(item.data)

    def test_bench_archive(self) -> None:
        from bench.data import archive

        for item in archive(20, 20):
            self.assert_same(item.part10(16))

    def test_metadata_fixtures(self) -> None:
        from tests.support.metadata import metadata_data

        for stored in [s for group in metadata_data().values() for s in group]:
            self.assert_same(stored.data)

    def test_pydicom_files(self) -> None:
        """Every pydicom test file with the UIDs the index needs: the same record."""
        served = 0
        folder = os.path.dirname(get_testdata_file("CT_small.dcm") or "")
        for path in sorted(glob.glob(os.path.join(folder, "*.dcm"))):
            with open(path, "rb") as f:
                data = f.read()
            oracle, raw = records(data)
            if oracle is None:
                continue
            assert raw is not None
            served += raw.row is not None
            self.assertEqual(raw, oracle, path)
            self.assertEqual(instance_row(raw), instance_row(oracle), path)
        self.assertGreater(served, 20)

    def test_declined_to_pydicom(self) -> None:
        """Big endian and ISO 2022 code extensions: pydicom's record, no row."""
        ds = index_data.dataset(index_data.STUDIES[0], 0, index_data.STUDIES[0].series[0], 1)
        ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=\033$B;3ED\033(B^\033$BB@O:\033(B"
        data = index_data.part10(ds)
        oracle, raw = records(data)
        assert raw is not None and oracle is not None
        self.assertIsNone(raw.row)
        self.assertEqual(instance_row(raw), instance_row(oracle))
        self.assertIn("山田", str(instance_row(raw).study["patient_name"]))

        big = dcmread(get_testdata_file("MR_small_bigendian.dcm"))
        self.assertEqual(big.file_meta.TransferSyntaxUID, ExplicitVRBigEndian)
        with open(get_testdata_file("MR_small_bigendian.dcm") or "", "rb") as f:
            oracle, raw = records(f.read())
        assert raw is not None
        self.assertIsNone(raw.row)
        self.assertEqual(instance_row(raw), instance_row(oracle))  # type: ignore[arg-type]

    def test_missing_uids_are_not_indexable_either_way(self) -> None:
        ds = index_data.dataset(index_data.STUDIES[0], 0, index_data.STUDIES[0].series[0], 1)
        del ds.SeriesInstanceUID
        data = index_data.part10(ds)
        for raw in (False, True):
            with self.assertRaisesRegex(NotIndexable, "series"):
                record_from_head(AET, "k", "s", len(data), data, complete=True, raw=raw)


# -- generated data sets ------------------------------------------------------------------------

_CHARSETS = {"": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8", "ISO_IR 144": "iso8859-5"}
# A VR the column's element may be written with besides the dictionary's.
_OTHER_VRS = {"PN": "LO", "IS": "US", "US": "IS", "DA": "LO", "TM": "SH", "LO": "UN", "CS": "LO"}


@st.composite
def part10(draw: Callable[[st.SearchStrategy[Any]], Any], implicit: bool, clean: bool) -> bytes:
    """A Part-10 file: the index's columns (some absent, empty, padded, multi-valued, of
    another VR), a character set now and then, binary values around the index's 1 KiB
    limit, a sequence whose items are `datasets`, Pixel Data last."""
    b = Builder(implicit)
    elements: dict[int, bytes] = {}
    charset = draw(st.sampled_from(sorted(_CHARSETS)))
    if charset:
        elements[0x00080005] = b.element(0x00080005, "CS", charset.encode() + b" " * (len(charset) % 2))
    codec = _CHARSETS[charset]
    for tag, column in COLUMN_OF_TAG.items():
        if column.kind == "uid" or not draw(st.integers(0, 3)):
            continue  # the UIDs are written below
        vr = column.vr
        if not implicit and not clean and draw(st.integers(0, 5)) == 0:
            vr = _OTHER_VRS.get(vr, vr)
        if clean and vr == "IS":  # integers: a float-looking IS is left to pydicom
            value = str(draw(st.integers(-99999, 999999))).encode()
            value += b" " * (len(value) % 2)
        else:
            value = value_bytes(vr, codec, draw, clean)
        elements[tag] = b.element(tag, vr, value)
    uids = [generate_uid() for _ in range(4)]
    for tag, value in zip((0x00080016, 0x00080018, 0x0020000D, 0x0020000E), uids, strict=True):
        raw = value.encode() + b"\0" * (len(value) % 2)
        if not clean and draw(st.integers(0, 5)) == 0:
            raw = b" " + raw + b"\\" + raw  # padded and two values: the first is the UID
        elements[tag] = b.element(tag, "UI", raw)
    for tag, size in ((0x00091010, draw(st.sampled_from([0, 2, 1024, 1026]))), (0x00283006, 1030)):
        if draw(st.booleans()):
            if tag == 0x00091010:
                elements[0x00090010] = b.element(0x00090010, "LO", b"ACME 1.0")
            elements[tag] = b.element(tag, "OB" if tag == 0x00091010 else "US", bytes(size))
    if draw(st.booleans()):
        items = [draw(datasets(implicit, clean, 1, codec)) for _ in range(draw(st.integers(1, 2)))]
        content = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item for item in items)
        elements[0x00400275] = b.element(0x00400275, "SQ", content)
    elements[0x7FE00010] = b.element(0x7FE00010, "OW", bytes(8))
    body = b"".join(elements[tag] for tag in sorted(elements))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uids[0]
    meta.MediaStorageSOPInstanceUID = uids[1]
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = bytes(128)
    from io import BytesIO

    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)  # an empty data set: the file meta alone
    return out.getvalue() + body


_settings = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class GeneratedTests(Compare):
    @_settings
    @given(st.data())
    def test_any(self, data: st.DataObject) -> None:
        """Whatever the raw path does not decline is pydicom's record."""
        implicit = data.draw(st.booleans())
        self.assert_same(data.draw(part10(implicit, False)), served=False)

    @_settings
    @given(st.data())
    def test_served(self, data: st.DataObject) -> None:
        """Well-formed heads are the raw path's own, in both syntaxes."""
        implicit = data.draw(st.booleans())
        self.assert_same(data.draw(part10(implicit, True)))

"""The DICOM JSON walk over raw bytes (dicomrst.common.rawjson) against its reference, the
pydicom encoder (`dicomrst.wado.metadata.pydicom_metadata_json`): byte for byte on the
metadata fixtures of the test suite, the benchmark CT, pydicom's own test files and
generated data sets; and it must not decline the data it is meant to serve fast."""

from __future__ import annotations

import glob
import os
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.part10 import NotPart10, read_file_meta
from dicomrst.common.rawjson import metadata_json
from dicomrst.common.transcode import DataSetError
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.wado.metadata import instance_metadata_json, pydicom_metadata_json
from tests.support.datasets import bulk_paths_dataset, encode, instance
from tests.support.rawjson_data import datasets

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
        """The nested data set of the metadata tests: paths of bulk data in items."""
        ds = bulk_paths_dataset()
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

"""BulkDataURIs resolved in stored instances (`dicomrst.imaging.bulkdata`, `.elements`).

Every BulkDataURI the metadata (`dicomrst.wado.metadata`) writes for an instance must
resolve to the element's value: the bytes pydicom reads for that element, little endian
(for a big-endian, implicit or deflated original: the value of its explicit little-endian
twin).
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.part10 import TRANSFER_SYNTAX, read_file_meta
from dicomrst.errors import NotAcceptable, NotFound
from dicomrst.imaging.bulkdata import BulkDataNotFound, BulkPath, locate_bulk, parse_bulk_path
from dicomrst.imaging.byterange import parse_range
from dicomrst.imaging.elements import open_instance
from dicomrst.imaging.extent import StoredObjectError, iter_extent, read_extent
from dicomrst.imaging.frames import index_frames
from dicomrst.wado.metadata import instance_metadata_json
from tests.support.imaging import read_dataset, testdata

BASE = "http://gateway/studies/1/series/2/instances/3/bulkdata"


def bulk_paths(data: bytes) -> list[str]:
    """The paths of every BulkDataURI the metadata of Part-10 `data` names (threshold 3)."""
    meta = read_file_meta(data, True, trust_group_length=False)
    assert meta is not None
    encoded = instance_metadata_json(
        data[meta.dataset_offset :], meta.text(TRANSFER_SYNTAX), BASE, threshold=3
    )
    return re.findall(r'"BulkDataURI":"' + re.escape(BASE) + r'/([^"]+)"', encoded.decode())


def resolve(data: bytes, path: str) -> bytes:
    with open_instance(io.BytesIO(data)) as instance:
        value = locate_bulk(instance, parse_bulk_path(path))
        whole = read_extent(instance.source, value.extent)
        assert b"".join(iter_extent(instance.source, value.extent, chunk=6)) == whole
        return whole


def raw_value(data: bytes, path: str) -> bytes:
    """The value at `path` as pydicom reads it from (little-endian) `data`; encapsulated
    data as its fragments after the Basic Offset Table."""
    ds: Any = read_dataset(data)
    parsed = parse_bulk_path(path)
    for tag, index in parsed.steps:
        ds = ds[tag].value[index]
    element = ds.get_item(parsed.tag)
    value = element.value
    assert isinstance(value, bytes), (path, type(value))
    if element.length == 0xFFFFFFFF:
        buffer = io.BytesIO(value)
        parse_basic_offsets(buffer)
        return b"".join(generate_fragments(buffer))
    return value


def part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def words(data: bytes, big: bool) -> bytes:
    """16-bit words as a big-endian writer stores an OW value given in little endian."""
    return b"".join(data[n : n + 2][::-1] for n in range(0, len(data), 2)) if big else data


def nested(big: bool = False, undefined: bool = False) -> Dataset:
    """Bulk values at the top and two sequence levels deep; OW values as stored for `big`."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Bulk^Data"
    ds.RedPaletteColorLookupTableDescriptor = [256, 0, 16]
    ds.SegmentedRedPaletteColorLookupTableData = words(bytes(range(64)), big)  # OW
    regions = []
    for n in range(3):
        region = Dataset()
        region.PhysicalDeltaX = 0.25 * (n + 1)  # FD: 8 bytes
        region.RegionFlags = 0x12345678 + n  # UL: 4 bytes
        regions.append(region)
    ds.SequenceOfUltrasoundRegions = Sequence(regions)
    waveform, channel, other = Dataset(), Dataset(), Dataset()
    for item in (waveform, channel, other):
        item.WaveformBitsAllocated = 16  # makes WaveformData OW
    channel.WaveformData = words(bytes(range(100, 140)), big)  # two levels down
    channel.ChannelMinimumValue = words(b"\x01\x02\x03\x04\x05\x06", big)  # OW here, like WaveformData
    other.WaveformData = words(bytes(range(40)), big)
    waveform.ChannelDefinitionSequence = Sequence([other, channel])
    waveform.WaveformData = words(bytes(range(200, 232)), big)
    ds.WaveformSequence = Sequence([waveform])
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 4, 4, 1, 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = words(bytes(range(32)), big)
    ds["PixelData"].VR = "OW"
    if undefined:
        for keyword in ("SequenceOfUltrasoundRegions", "WaveformSequence"):
            ds[keyword].is_undefined_length = True
        waveform["ChannelDefinitionSequence"].is_undefined_length = True
        for item in [*regions, waveform, other, channel]:
            item.is_undefined_length_sequence_item = True
    return ds


class BulkDataTests(SynchronousTestCase):
    def assertResolves(self, data: bytes, twin: bytes | None = None, minimum: int = 1) -> list[str]:
        """Every BulkDataURI of `data` resolves to its value in `twin` (default: itself)."""
        paths = bulk_paths(data)
        self.assertGreaterEqual(len(paths), minimum)
        for path in paths:
            self.assertEqual(resolve(data, path), raw_value(twin or data, path), path)
        return paths

    def test_nested_values_in_every_encoding(self) -> None:
        reference = part10(nested(), ExplicitVRLittleEndian)
        paths = self.assertResolves(reference, minimum=13)
        self.assertIn("54000100/0/003A0200/1/54001010", paths)
        self.assertIn("00186011/2/0018602C", paths)
        for syntax, big, undefined in [
            (ExplicitVRLittleEndian, False, True),
            (ImplicitVRLittleEndian, False, False),
            (ImplicitVRLittleEndian, False, True),
            (ExplicitVRBigEndian, True, False),
            (ExplicitVRBigEndian, True, True),
            (DeflatedExplicitVRLittleEndian, False, True),
        ]:
            data = part10(nested(big, undefined), syntax)
            self.assertEqual(self.assertResolves(data, twin=reference), paths, (syntax, undefined))

    def test_test_files(self) -> None:
        for name in (
            "waveform_ecg.dcm",
            "examples_palette.dcm",
            "CT_small.dcm",
            "rtdose.dcm",
            "image_dfl.dcm",
        ):
            self.assertResolves(testdata(name))

    def test_big_endian_test_files(self) -> None:
        self.assertResolves(testdata("MR_small_bigendian.dcm"), twin=testdata("MR_small.dcm"))
        # 32-bit pixels in an OW value: swapped per Bits Allocated, not per 16-bit word.
        self.assertResolves(testdata("rtdose_expb.dcm"), twin=testdata("rtdose.dcm"))

    def test_encapsulated_pixel_data_is_its_fragments(self) -> None:
        data = testdata("examples_ybr_color.dcm")
        self.assertEqual(self.assertResolves(data)[-1], "7FE00010")
        with open_instance(io.BytesIO(data)) as instance:
            value = locate_bulk(instance, parse_bulk_path("7FE00010"))
        self.assertTrue(value.encapsulated)
        self.assertEqual(len(value.extent.spans), 30)

    def test_range_of_a_value(self) -> None:
        data = testdata("rtdose_expb.dcm")
        expected = raw_value(testdata("rtdose.dcm"), "7FE00010")
        with open_instance(io.BytesIO(data)) as instance:
            extent = locate_bulk(instance, parse_bulk_path("7FE00010")).extent
            for header in ("bytes=0-0", "bytes=1-6", "bytes=-3", "bytes=5997-", "bytes=101-9999"):
                wanted = parse_range(header, extent.length)
                assert wanted is not None
                got = read_extent(instance.source, extent.slice(wanted.start, wanted.stop))
                self.assertEqual(got, expected[wanted.start : wanted.stop], header)

    def test_paths_that_name_nothing(self) -> None:
        data = part10(nested(), ExplicitVRLittleEndian)
        for path in (
            "7FE00011",
            "00186011/3/0018602C",
            "00186011/0/00186099",
            "00100010/0/00100020",  # not a sequence
            "54000100/0/003A0200/2/54001010",
            "00186011",  # a sequence is not bulk data
            "00020010",  # file meta is not in the data set
        ):
            with open_instance(io.BytesIO(data)) as instance:
                self.assertRaises(BulkDataNotFound, locate_bulk, instance, parse_bulk_path(path))

    def test_malformed_paths(self) -> None:
        for path in ("", "xyz", "7FE0001", "7FE000100", "00186011/0", "00186011/a/0018602C",
                     "00186011/-1/0018602C", "FFFEE000", "00186011/0/FFFEE00D", "00186011//0018602C",
                     "+7FE0010"):  # fmt: skip
            self.assertRaises(BulkDataNotFound, parse_bulk_path, path)
        self.assertIsInstance(BulkDataNotFound("x"), NotFound)
        path = parse_bulk_path("/54000100/0/003a0200/12/54001010/")
        self.assertEqual(path, BulkPath(((0x54000100, 0), (0x003A0200, 12)), 0x54001010))
        self.assertEqual(str(path), "54000100/0/003A0200/12/54001010")

    def test_file_meta_only_object(self) -> None:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.3", generate_uid()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = part10(ds, ExplicitVRLittleEndian)
        with open_instance(io.BytesIO(data)) as instance:
            self.assertRaises(BulkDataNotFound, locate_bulk, instance, parse_bulk_path("7FE00010"))
        self.assertIsNotNone(dcmread(io.BytesIO(data)))


class DamagedObjectTests(SynchronousTestCase):
    """Whatever the stored bytes, the lookups end in one of their declared errors."""

    EXPECTED = (StoredObjectError, NotFound, NotAcceptable)

    def survive(self, data: bytes) -> None:
        try:
            with open_instance(io.BytesIO(data)) as instance:
                try:
                    index = index_frames(instance)
                    for number in range(1, min(index.number_of_frames, 4) + 1):
                        read_extent(instance.source, index.frame(number))
                except self.EXPECTED:
                    pass
                for path in ("7FE00010", "00186011/0/0018602C", "54000100/0/003A0200/1/54001010"):
                    try:
                        value = locate_bulk(instance, parse_bulk_path(path))
                        read_extent(instance.source, value.extent)
                    except self.EXPECTED:
                        pass
        except StoredObjectError:
            pass

    @settings(deadline=None, max_examples=150)
    @given(
        st.sampled_from(["nested", "CT_small.dcm", "examples_ybr_color.dcm", "rtdose_expb.dcm"]), st.data()
    )
    def test_changed_bytes(self, name: str, data: st.DataObject) -> None:
        original = bytearray(
            part10(nested(undefined=True), ExplicitVRLittleEndian) if name == "nested" else testdata(name)
        )
        # Damage lands where the headers are: the file meta and the first few kilobytes.
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(128, min(len(original), 4096) - 1))
            original[position] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(132, min(len(original), 4096)) | st.just(len(original)))
        self.survive(bytes(original[:cut]))

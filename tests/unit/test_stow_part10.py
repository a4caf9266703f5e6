"""Tests for dicomrst.stow.part10: a STOW part checked as a Part-10 object as it streams in.

Real objects come from pydicom's test files (every byte order and compressed syntaxes) and
from pydicom itself; the expected UIDs and data set offsets are what pydicom reads.
"""

from __future__ import annotations

import random
import struct

from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.stow.part10 import NotPart10, Part10Checker, Part10Info
from tests.support.stow import expected_info, part10_bytes

TEST_FILES = (
    "CT_small.dcm",  # Explicit VR LE
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # Deflated Explicit VR LE
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
)


def check(data: bytes, step: int | None = None) -> Part10Info:
    checker = Part10Checker()
    if step is None:
        checker.feed(data)
    else:
        for i in range(0, len(data), step):
            checker.feed(data[i : i + step])
    info = checker.finish()
    assert checker.size == len(data)
    return info


class ValidTests(SynchronousTestCase):
    def test_pydicom_test_files_in_every_byte_order(self) -> None:
        for name in TEST_FILES:
            path = get_testdata_file(name)
            self.assertIsNotNone(path, name)
            with open(str(path), "rb") as f:
                data = f.read()
            expected = expected_info(data)
            for step in (None, 1, 7, 1000):
                self.assertEqual(check(data, step), expected, (name, step))

    def test_written_by_pydicom_explicit_and_implicit(self) -> None:
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            data = part10_bytes(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5", transfer_syntax=ts)
            info = check(data, 3)
            self.assertEqual(info, expected_info(data))
            uids = (info.study_instance_uid, info.series_instance_uid, info.sop_instance_uid)
            self.assertEqual((*uids, info.transfer_syntax), ("1.2.3", "1.2.3.4", "1.2.3.4.5", ts))
            self.assertEqual(data[info.dataset_offset : info.dataset_offset + 2], b"\x08\x00")

    def test_no_series_is_allowed(self) -> None:
        info = check(part10_bytes(series=""))
        self.assertIsNone(info.series_instance_uid)

    def test_long_elements_before_the_study_are_skipped(self) -> None:
        extra = Dataset()
        # A big private value and a nested sequence, both before group 0020.
        extra.add_new(0x00091010, "OB", b"\xfe" * 300_000)
        item = Dataset()
        item.CodeValue = "X"
        item.CodingSchemeDesignator = "99"
        extra.ProcedureCodeSequence = [item, item]
        data = part10_bytes(study="1.2.840.99", extra=extra)
        for step in (None, 4096, 65537):
            self.assertEqual(check(data, step).study_instance_uid, "1.2.840.99")

    def test_meta_without_group_length(self) -> None:
        data = part10_bytes(study="1.2.3")
        # Drop (0002,0000): 12 bytes right after DICM.
        self.assertEqual(data[132:136], b"\x02\x00\x00\x00")
        stripped = data[:132] + data[144:]
        info = check(stripped)
        self.assertEqual(info.study_instance_uid, "1.2.3")
        self.assertEqual(info.dataset_offset, expected_info(data).dataset_offset - 12)


class InvalidTests(SynchronousTestCase):
    def assertRejected(self, data: bytes, message: str) -> Part10Checker:
        for step in (None, 1, 50):
            checker = Part10Checker()
            if step is None:
                checker.feed(data)
            else:
                for i in range(0, len(data), step):
                    checker.feed(data[i : i + step])
            with self.assertRaises(NotPart10) as raised:
                checker.finish()
            self.assertIn(message, str(raised.exception))
        return checker

    def test_text(self) -> None:
        checker = self.assertRejected(b"hello, this is not DICOM\r\n" * 10, "no 'DICM'")
        self.assertFalse(checker.uids_known)
        self.assertTrue(checker.failed)

    def test_too_short(self) -> None:
        self.assertRejected(b"\x00" * 100, "shorter than the preamble")

    def test_data_set_without_preamble(self) -> None:
        data = part10_bytes()
        self.assertRejected(data[expected_info(data).dataset_offset :], "no 'DICM'")

    def test_nothing_after_dicm(self) -> None:
        self.assertRejected(b"\x00" * 128 + b"DICM", "ends inside its file meta")

    def test_truncated_meta(self) -> None:
        data = part10_bytes()
        self.assertRejected(data[:200], "ends inside its file meta")

    def test_meta_without_transfer_syntax(self) -> None:
        data = part10_bytes()
        ts = data.index(b"\x02\x00\x10\x00UI")
        (length,) = struct.unpack_from("<H", data, ts + 6)
        # Rewrite the tag to (0002,0011): unknown, the element count and sizes stay right.
        broken = data[:ts] + b"\x02\x00\x11\x00" + data[ts + 4 :]
        self.assertGreater(length, 0)
        self.assertRejected(broken, "no (0002,0010) Transfer Syntax UID")

    def test_invalid_uid_in_meta(self) -> None:
        data = part10_bytes(sop="1.2.3.4")
        broken = data.replace(b"1.2.3.4\x00", b"1.2.x.4\x00", 1)
        self.assertRejected(broken, "is not a valid UID")

    def test_no_study_instance_uid(self) -> None:
        checker = self.assertRejected(part10_bytes(study=""), "no Study Instance UID")
        # Its UIDs are known from the meta: it can be reported as a failed instance.
        self.assertTrue(checker.uids_known)

    def test_data_set_names_another_instance(self) -> None:
        data = part10_bytes(sop="1.2.3.4")
        # Change the data set's (0008,0018) only (its second occurrence).
        first = data.index(b"1.2.3.4\x00")
        second = data.index(b"1.2.3.4\x00", first + 1)
        broken = data[:second] + b"1.2.3.5\x00" + data[second + 8 :]
        self.assertRejected(broken, "differs from the file meta")

    def test_real_file_whose_meta_names_another_instance(self) -> None:
        # pydicom's rtplan.dcm: (0002,0003) is not its (0008,0018).  Stored, it would be
        # reported under a UID the PACS does not know it by.
        path = get_testdata_file("rtplan.dcm")
        with open(str(path), "rb") as f:
            self.assertRejected(f.read(), "SOP Instance UID (0008,0018) differs")

    def test_garbage_data_set(self) -> None:
        data = part10_bytes()
        offset = expected_info(data).dataset_offset
        self.assertRejected(data[:offset] + b"\x08\x00\x16\x00\x01\x02" + b"\xff" * 64, "no valid VR")


class ChunkingTests(SynchronousTestCase):
    """A part's verdict must not depend on how the network cut it into chunks.  For a
    deflated data set it did (found by the part10 fuzz harness): fed whole, a corrupt
    stream failed before the UIDs reached the check; fed in chunks, the UIDs went through
    first and the part was accepted."""

    def test_a_corrupt_deflated_stream_gets_one_verdict_however_it_is_cut(self) -> None:
        rng = random.Random(1)
        extra = Dataset()
        # After the UIDs: ~24 KB of deflate stream with Huffman-coded blocks, which a
        # flipped byte breaks.
        extra.add_new(0x00291010, "OB", bytes(rng.choice(b"0123456789abcdef") for _ in range(40_000)))
        data = part10_bytes(transfer_syntax=DeflatedExplicitVRLittleEndian, extra=extra)
        offset = expected_info(data).dataset_offset
        for at in (offset + 3000, offset + 9000):
            corrupt = data[:at] + bytes(b ^ 0xFF for b in data[at : at + 64]) + data[at + 64 :]
            verdicts = set()
            for step in (None, 1, 7, 1000, 4096, 5000):
                try:
                    verdicts.add(repr(check(corrupt, step)))
                except NotPart10 as e:
                    verdicts.add(f"NotPart10: {e}")
            self.assertEqual(len(verdicts), 1, verdicts)

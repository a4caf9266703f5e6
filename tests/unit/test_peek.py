"""The Study/Series Instance UID peeker (dicomrst.common.walker) over data-set streams
fed in fragments of every size, as they come off an association."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from dicomrst.common.walker import UIDPeeker
from tests.support.datasets import encode, instance


def peek(data: bytes, size: int, implicit: bool = False) -> UIDPeeker:
    peeker = UIDPeeker(implicit)
    for offset in range(0, len(data), size):
        if peeker.feed(data[offset : offset + size]):
            break
    return peeker


SIZES = (1, 2, 3, 5, 8, 13, 64, 1000, 4096, 1 << 20)


class PeekTests(TestCase):
    def setUp(self) -> None:
        self.study, self.series = generate_uid(), generate_uid()

    def assertFound(self, data: bytes, implicit: bool = False, series: str | None = "") -> None:
        for size in SIZES:
            peeker = peek(data, size, implicit)
            self.assertTrue(peeker.done, size)
            self.assertIsNone(peeker.failed, size)
            self.assertEqual(peeker.uids.study, self.study, size)
            self.assertEqual(peeker.uids.series, self.series if series == "" else series, size)

    def test_explicit_and_implicit_in_fragments_of_every_size(self) -> None:
        ds = instance(self.study, self.series)
        self.assertFound(encode(ds))
        self.assertFound(encode(ds, implicit=True), implicit=True)

    def test_without_series_it_is_done_once_group_0020_is_past(self) -> None:
        self.assertFound(encode(instance(self.study, None)), series=None)

    def test_uids_inside_sequences_are_not_taken(self) -> None:
        for undefined in (False, True):
            ds = instance(self.study, self.series)
            item = Dataset()
            item.StudyInstanceUID = generate_uid()
            item.SeriesInstanceUID = generate_uid()
            inner = Dataset()
            inner.StudyInstanceUID = generate_uid()
            item.ReferencedSeriesSequence = Sequence([inner])
            # (0008,1115) sorts before (0020,000D): the walk meets it first.
            ds.ReferencedSeriesSequence = Sequence([item])
            if undefined:
                ds["ReferencedSeriesSequence"].is_undefined_length = True
                item["ReferencedSeriesSequence"].is_undefined_length = True
                item.is_undefined_length_sequence_item = True
                inner.is_undefined_length_sequence_item = True
            self.assertFound(encode(ds))
            self.assertFound(encode(ds, implicit=True), implicit=True)

    def test_a_large_value_before_the_uids_is_skipped_not_held(self) -> None:
        ds = instance(self.study, self.series)
        ds.add_new(0x00091010, "OB", b"\x01" * 300_000)
        ds.add_new(0x00091011, "LO", "after the large one")
        data = encode(ds)
        self.assertFound(data)
        peeker = UIDPeeker(False)
        for offset in range(0, len(data), 65536):
            if peeker.feed(data[offset : offset + 65536]):
                break
            self.assertLess(peeker.buffered, 70_000)

    def test_a_large_first_fragment_is_not_kept(self) -> None:
        data = encode(instance(self.study, self.series, pixels=400_000))
        peeker = UIDPeeker(False)
        self.assertTrue(peeker.feed(data))
        self.assertEqual((peeker.uids.study, peeker.uids.series), (self.study, self.series))
        self.assertEqual(peeker.buffered, 0)

    def test_a_stray_delimiter_ends_the_walk_without_uids(self) -> None:
        data = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + encode(instance(self.study, self.series))
        for size in SIZES:
            peeker = peek(data, size)
            self.assertTrue(peeker.done)
            self.assertEqual((peeker.uids.study, peeker.uids.series), (None, None))

    def test_data_set_ending_early_is_not_done(self) -> None:
        data = encode(instance(self.study, self.series))
        cut = data.index(self.study.encode()) - 4
        peeker = peek(data[:cut], 7)
        self.assertFalse(peeker.done)
        self.assertIsNone(peeker.uids.study)

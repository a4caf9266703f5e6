"""Frames of stored instances (`dicomrst.imaging.frames`, `dicomrst.imaging.extent`).

Every frame is compared with an independent view of the same pixels: for native data the
frame's slice of Pixel Data as pydicom reads it (for a big-endian original, the same
slice of its little-endian twin among pydicom's test files), for encapsulated data
pydicom's ``generate_frames`` of the original, and for the synthetic objects the frames
they were built from.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, BinaryIO

from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.uids import JPEG_BASELINE, RLE_LOSSLESS
from dicomrst.errors import NotAcceptable, NotFound
from dicomrst.imaging.elements import BLOCK, open_instance
from dicomrst.imaging.extent import Extent, Span, StoredObjectError, iter_extent, read_extent, read_spans
from dicomrst.imaging.framelist import FrameNotFound
from dicomrst.imaging.frames import FrameIndex, FramesNotSeparable, NoPixelData, index_frames
from dicomrst.imaging.media import NATIVE_MEDIA, PartMedia
from tests.support.imaging import image, part10, read_dataset, testdata


def encapsulated(
    frames: list[bytes], syntax: str, *, fragments: int = 1, bot: bool = True, **extra: Any
) -> bytes:
    ds = image(8, 8, len(frames))
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=bot)
    ds["PixelData"].VR = "OB"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return part10(ds, syntax)


class CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def index_of(data: bytes) -> tuple[FrameIndex, BinaryIO]:
    instance = open_instance(io.BytesIO(data))
    return index_frames(instance), instance.source


def all_frames(data: bytes) -> list[bytes]:
    """Each frame of `data` read three ways (whole, in chunks, from the spans), which agree."""
    index, source = index_of(data)
    frames = []
    for number in range(1, index.number_of_frames + 1):
        extent = index.frame(number)
        whole = read_extent(source, extent)
        assert b"".join(iter_extent(source, extent, chunk=7)) == whole
        assert extent.assemble(read_spans(source, extent.spans)) == whole
        assert len(whole) == extent.length
        frames.append(whole)
    return frames


class NativeFramesTests(SynchronousTestCase):
    def assertSlices(self, name: str, frame_length: int, frames: int, twin: str | None = None) -> None:
        """The frames of test file `name` are the slices of `frame_length` bytes of the
        Pixel Data of `twin` (a little-endian copy; default: itself)."""
        pixels = read_dataset(testdata(twin or name)).PixelData
        expected = [pixels[n * frame_length : (n + 1) * frame_length] for n in range(frames)]
        got = all_frames(testdata(name))
        self.assertEqual(len(got), frames)
        self.assertEqual(got, expected)

    def test_ct(self) -> None:
        self.assertSlices("CT_small.dcm", 128 * 128 * 2, 1)
        index, _ = index_of(testdata("CT_small.dcm"))
        self.assertEqual((index.rule, index.media), ("native", NATIVE_MEDIA))
        self.assertTrue(index.frame(1).direct)

    def test_rt_dose_15_frames_implicit_vr(self) -> None:
        self.assertSlices("rtdose.dcm", 10 * 10 * 4, 15)

    def test_big_endian_originals_come_out_little_endian(self) -> None:
        self.assertSlices("MR_small_bigendian.dcm", 64 * 64 * 2, 1, twin="MR_small.dcm")
        self.assertSlices("rtdose_expb.dcm", 10 * 10 * 4, 15, twin="rtdose.dcm")  # 32-bit in OW
        self.assertSlices("liver_expb_1frame.dcm", 512 * 512 // 8, 1, twin="liver_1frame.dcm")
        index, _ = index_of(testdata("rtdose_expb.dcm"))
        self.assertEqual(index.frame(3).swap, 4)
        self.assertFalse(index.frame(3).direct)

    def test_odd_length_rgb(self) -> None:
        # 3x3 RGB: 27 bytes; the value's padding byte is not part of the frame.
        self.assertSlices("SC_rgb_small_odd.dcm", 27, 1)
        # 8-bit RGB in an OW value of a big-endian original: bytes swapped pairwise.
        self.assertSlices("SC_rgb_small_odd_big_endian.dcm", 27, 1, twin="SC_rgb_small_odd.dcm")

    def test_rgb_and_ybr_full_422(self) -> None:
        self.assertSlices("examples_rgb_color.dcm", 240 * 320 * 3, 1)
        self.assertSlices("SC_ybr_full_422_uncompressed.dcm", 100 * 100 * 2, 1)  # 2 samples a pixel

    def test_deflated(self) -> None:
        self.assertSlices("image_dfl.dcm", 512 * 512, 1)
        instance = open_instance(io.BytesIO(testdata("image_dfl.dcm")))
        self.assertFalse(instance.addressable)
        instance.close()

    def test_odd_length_frames_of_8_bit_ow_big_endian(self) -> None:
        frames = [bytes(range(n, n + 15)) for n in (0, 100, 200)]  # 3x5, odd
        ds = image(3, 5, 3)
        ds.PixelData = b"".join(frames) + b"\x00"
        ds["PixelData"].VR = "OW"
        little = part10(ds, ExplicitVRLittleEndian)
        self.assertEqual(all_frames(little), frames)
        # What a big-endian writer stores for that OW value: each byte pair swapped.
        value = b"".join(frames) + b"\x00"
        ds.PixelData = b"".join(value[n : n + 2][::-1] for n in range(0, len(value), 2))
        big = part10(ds, ExplicitVRBigEndian)
        self.assertEqual(all_frames(big), frames)
        index, _ = index_of(big)
        self.assertEqual((index.frame(2).head, index.frame(2).swap), (1, 2))

    def test_one_bit_frames_not_byte_aligned(self) -> None:
        # 4 frames of 3x5 1-bit pixels: 60 bits packed without padding (PS3.5 8.1.1).
        pixels = [[(n * 7 + k * 3) % 5 == 0 for k in range(15)] for n in range(4)]
        bits = [bit for frame in pixels for bit in frame]
        value = sum(1 << i for i, bit in enumerate(bits) if bit).to_bytes(8, "little")
        ds = image(3, 5, 4, bits=1)
        ds.PixelData = value
        ds["PixelData"].VR = "OB"

        def packed(frame: list[bool]) -> bytes:
            return sum(1 << i for i, bit in enumerate(frame) if bit).to_bytes(2, "little")

        self.assertEqual(all_frames(part10(ds, ExplicitVRLittleEndian)), [packed(f) for f in pixels])
        index, _ = index_of(part10(ds, ExplicitVRLittleEndian))
        self.assertEqual((index.frame(2).bits, index.frame(2).shift), (15, 7))
        self.assertRaises(ValueError, index.frame(2).slice, 0, 1)

    def test_one_bit_single_frame_is_direct(self) -> None:
        self.assertSlices("liver_1frame.dcm", 512 * 512 // 8, 1)
        index, _ = index_of(testdata("liver_1frame.dcm"))
        self.assertTrue(index.frame(1).direct)

    def test_frame_numbers_past_the_object(self) -> None:
        index, _ = index_of(testdata("rtdose.dcm"))
        self.assertRaises(FrameNotFound, index.frame, 16)
        self.assertRaises(FrameNotFound, index.frame, 0)
        self.assertIsInstance(FrameNotFound("x"), NotFound)
        self.assertEqual(len(index.frames([15, 1, 7])), 3)

    def test_truncated_pixel_data(self) -> None:
        # MR_truncated: 8130 bytes of a 8192-byte frame.
        index, _ = index_of(testdata("MR_truncated.dcm"))
        self.assertRaises(StoredObjectError, index.frame, 1)
        # A multi-frame file cut inside its pixel data: the frames before the cut are served.
        data = testdata("rtdose.dcm")[:-1000]
        index, source = index_of(data)
        self.assertEqual(read_extent(source, index.frame(12)), all_frames(testdata("rtdose.dcm"))[11])
        self.assertRaises(StoredObjectError, index.frame, 13)
        # Cut after indexing (a file that changed underneath): the read fails.
        self.assertRaises(
            StoredObjectError, read_extent, io.BytesIO(data), index_of(testdata("rtdose.dcm"))[0].frame(15)
        )

    def test_no_pixel_data(self) -> None:
        self.assertRaises(NoPixelData, index_of, testdata("rtplan.dcm"))
        self.assertRaises(NoPixelData, index_of, testdata("test-SR.dcm"))

    def test_not_part10(self) -> None:
        self.assertRaises(StoredObjectError, open_instance, io.BytesIO(b"\x00" * 200))
        self.assertRaises(StoredObjectError, open_instance, io.BytesIO(b""))

    def test_reads_only_headers_and_the_frame(self) -> None:
        # 40 frames of 128x128x16 bit (1.3 MB): indexing and reading frame 20 read about
        # one header block and the frame, not the object.
        frame_length = 128 * 128 * 2
        ds = image(128, 128, 40, bits=16)
        ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelData = b"".join(bytes([n]) * frame_length for n in range(40))
        ds["PixelData"].VR = "OW"
        source = CountingFile(part10(ds, ExplicitVRLittleEndian))
        instance = open_instance(source)
        frame = read_extent(instance.source, index_frames(instance).frame(20))
        self.assertEqual(frame, bytes([19]) * frame_length)
        self.assertLess(source.read_bytes, 3 * BLOCK + frame_length)

    def test_native_frames_located_from_the_head_alone(self) -> None:
        # What a backend with ranged reads does: walk the head, then fetch the frame's span.
        data = testdata("rtdose.dcm")
        full, _ = index_of(data)
        head = open_instance(io.BytesIO(data[:4096]), size=len(data))
        index = index_frames(head)
        self.assertEqual(index, full)
        extent = index.frame(9)
        self.assertTrue(extent.direct)
        [span] = extent.spans
        self.assertEqual(data[span.offset : span.end], all_frames(data)[8])


def pydicom_frames(data: bytes) -> list[bytes]:
    ds = read_dataset(data)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    offsets = None
    if "ExtendedOffsetTable" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=offsets))


class EncapsulatedFramesTests(SynchronousTestCase):
    def assertPydicomFrames(self, data: bytes, rule: str, frames: int) -> list[bytes]:
        got = all_frames(data)
        self.assertEqual(len(got), frames)
        self.assertEqual(got, pydicom_frames(data)[:frames])
        index, _ = index_of(data)
        self.assertEqual(index.rule, rule)
        return got

    def test_rle_no_basic_offset_table(self) -> None:
        self.assertPydicomFrames(testdata("rtdose_rle.dcm"), "one fragment per frame", 15)
        index, _ = index_of(testdata("rtdose_rle.dcm"))
        self.assertEqual(index.media, PartMedia("image/dicom-rle", RLE_LOSSLESS))

    def test_rle_with_basic_offset_table(self) -> None:
        self.assertPydicomFrames(testdata("MR_small_RLE.dcm"), "basic offset table", 1)
        self.assertPydicomFrames(testdata("SC_rgb_rle_2frame.dcm"), "basic offset table", 2)

    def test_jpeg_baseline_with_basic_offset_table(self) -> None:
        frames = self.assertPydicomFrames(testdata("examples_ybr_color.dcm"), "basic offset table", 30)
        self.assertTrue(all(frame.startswith(b"\xff\xd8") for frame in frames))
        index, _ = index_of(testdata("examples_ybr_color.dcm"))
        self.assertEqual(index.media, PartMedia("image/jpeg", JPEG_BASELINE))
        self.assertTrue(all(index.frame(n).direct for n in range(1, 31)))

    def test_jpeg_2000(self) -> None:
        self.assertPydicomFrames(testdata("JPEG2000.dcm"), "single fragment", 1)
        self.assertPydicomFrames(testdata("MR_small_jp2klossless.dcm"), "single fragment", 1)
        # One frame in three fragments, no table.
        self.assertPydicomFrames(testdata("examples_jpeg2k.dcm"), "single frame", 1)

    def test_jpeg_ls_and_jpeg_lossless(self) -> None:
        self.assertPydicomFrames(testdata("MR_small_jpeg_ls_lossless.dcm"), "single fragment", 1)
        self.assertPydicomFrames(testdata("SC_rgb_jpeg_gdcm.dcm"), "single fragment", 1)

    def test_every_bundled_encapsulated_file(self) -> None:
        names = [
            "693_J2KI.dcm", "GDCMJ2K_TextGBR.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG-lossy.dcm",
            "JPEG2000-embedded-sequence-delimiter.dcm", "JPEGLSNearLossless_08.dcm",
            "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm", "SC_jpeg_no_color_transform.dcm",
            "SC_jpeg_no_color_transform_2.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm",
            "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_jls_lossy_line.dcm",
            "SC_rgb_jpeg.dcm",  # its data set is in Implicit VR whatever its syntax says
            "SC_rgb_jpeg_lossy_gdcm.dcm",
            "SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm",
            "SC_rgb_small_odd_jpeg.dcm", "rtdose_rle_1frame.dcm",
        ]  # fmt: skip
        for name in names:
            data = testdata(name)
            self.assertEqual(all_frames(data), pydicom_frames(data), name)

    def jpeg_frames(self) -> list[bytes]:
        return pydicom_frames(testdata("examples_ybr_color.dcm"))

    def test_several_fragments_per_frame_with_basic_offset_table(self) -> None:
        frames = self.jpeg_frames()
        data = encapsulated(frames, JPEG_BASELINE, fragments=3)
        self.assertEqual(self.assertPydicomFrames(data, "basic offset table", 30), frames)

    def test_several_fragments_per_frame_found_by_end_markers(self) -> None:
        frames = self.jpeg_frames()
        data = encapsulated(frames, JPEG_BASELINE, fragments=3, bot=False)
        self.assertEqual(self.assertPydicomFrames(data, "end markers", 30), frames)
        index, _ = index_of(data)
        self.assertEqual(len(index.frame(7).spans), 3)

    def test_extended_offset_table(self) -> None:
        frames = self.jpeg_frames()
        value, offsets, lengths = encapsulate_extended(frames)
        ds = image(8, 8, len(frames))
        ds.PixelData = value
        ds["PixelData"].VR = "OB"
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = offsets, lengths
        data = part10(ds, JPEG_BASELINE)
        self.assertEqual(self.assertPydicomFrames(data, "extended offset table", 30), frames)

    def test_odd_length_frames(self) -> None:
        # Fragments are padded to even lengths; a frame is its fragments as stored.
        frames = [b"\xff\xd8" + bytes([n]) * (2 * n + 1) + b"\xff\xd9" for n in range(1, 6)]
        data = encapsulated(frames, JPEG_BASELINE)
        got = self.assertPydicomFrames(data, "basic offset table", 5)
        self.assertEqual(got, [frame + b"\x00" for frame in frames])
        data = encapsulated(frames, JPEG_BASELINE, bot=False)
        self.assertEqual(self.assertPydicomFrames(data, "one fragment per frame", 5), got)

    def test_basic_offset_table_not_on_fragments_is_ignored(self) -> None:
        frames = [bytes([n]) * 10 for n in range(3)]
        value = bytearray(encapsulate(frames, has_bot=True))
        value[12:16] = (7).to_bytes(4, "little")  # the second frame's offset, off its fragment
        ds = image(8, 8, 3)
        ds.PixelData = bytes(value)
        ds["PixelData"].VR = "OB"
        self.assertEqual(all_frames(part10(ds, RLE_LOSSLESS)), frames)
        index, _ = index_of(part10(ds, RLE_LOSSLESS))
        self.assertEqual(index.rule, "one fragment per frame")

    def test_unmappable_fragments(self) -> None:
        # RLE frames are one fragment each: more fragments than frames cannot be mapped.
        frames = [bytes([n]) * 10 for n in range(3)]
        index, _ = index_of(encapsulated(frames, RLE_LOSSLESS, fragments=2, bot=False))
        self.assertEqual(index.rule, "none")
        self.assertRaises(StoredObjectError, index.frame, 1)
        # Fewer fragments than frames.
        data = encapsulated(frames, RLE_LOSSLESS, bot=False, NumberOfFrames=4)
        index, _ = index_of(data)
        self.assertEqual(index.rule, "none")
        self.assertRaises(FrameNotFound, index.frame, 5)

    def test_video_frames_are_not_separable(self) -> None:
        data = encapsulated([b"\x00\x00\x01\xb3" * 4], "1.2.840.10008.1.2.4.102")
        index, _ = index_of(data)
        self.assertEqual(index.media, PartMedia("video/mp4", "1.2.840.10008.1.2.4.102"))
        self.assertRaises(FramesNotSeparable, index.frame, 1)
        self.assertIsInstance(FramesNotSeparable("x"), NotAcceptable)


class ExtentTests(SynchronousTestCase):
    def test_slices_of_a_swapped_value(self) -> None:
        # 32-bit big-endian values 0..9 at byte 5 of the file, cut at every range.
        data = b"head_" + b"".join(n.to_bytes(4, "big") for n in range(10))
        expected = b"".join(n.to_bytes(4, "little") for n in range(10))
        extent = Extent.of(Span(5, 40), swap=4)
        source = io.BytesIO(data)
        self.assertEqual(read_extent(source, extent), expected)
        for start in range(41):
            for stop in range(start, 41):
                self.assertEqual(read_extent(source, extent.slice(start, stop)), expected[start:stop])

    def test_slices_across_spans(self) -> None:
        data = bytes(range(100))
        extent = Extent.of(Span(10, 5), Span(50, 7), Span(90, 3))
        expected = data[10:15] + data[50:57] + data[90:93]
        self.assertTrue(extent.direct)
        for start in range(16):
            for stop in range(start, 16):
                sliced = extent.slice(start, stop)
                self.assertTrue(sliced.direct)
                self.assertEqual(read_extent(io.BytesIO(data), sliced), expected[start:stop])
        self.assertRaises(ValueError, extent.slice, 3, 16)

    def test_assemble_checks_the_length(self) -> None:
        self.assertRaises(StoredObjectError, Extent.of(Span(0, 4)).assemble, b"abc")

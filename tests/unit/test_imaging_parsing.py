"""Frame lists, Range headers and frame media types (`dicomrst.imaging.framelist`,
`.byterange`, `.media`), with property tests for the two parsers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from dicomrst.common.uids import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000,
    JPEG_BASELINE,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
)
from dicomrst.errors import BadRequest, NotFound, RangeNotSatisfiable
from dicomrst.imaging.byterange import ByteRange, parse_range
from dicomrst.imaging.framelist import BadFrameList, FrameNotFound, check_frame_numbers, parse_frame_list
from dicomrst.imaging.media import (
    ENCAPSULATED_UNCOMPRESSED,
    NATIVE_MEDIA,
    PartMedia,
    frame_media,
    media_syntaxes,
)
from dicomrst.web.errors import error_response, http_status

SETTINGS = settings(deadline=None, max_examples=200)
frame_numbers = st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=20, unique=True)


class FrameListTests(SynchronousTestCase):
    @SETTINGS
    @given(frame_numbers, st.lists(st.integers(0, 3), min_size=20, max_size=20), st.booleans())
    def test_round_trip_in_the_order_given(self, numbers: list[int], zeros: list[int], encoded: bool) -> None:
        items = ["0" * z + str(n) for n, z in zip(numbers, zeros, strict=False)]
        text = ("%2C" if encoded else ",").join(items)
        self.assertEqual(parse_frame_list(text), tuple(numbers))

    @SETTINGS
    @given(st.text(max_size=30))
    def test_anything_parses_or_is_refused(self, text: str) -> None:
        try:
            numbers = parse_frame_list(text)
        except (BadFrameList, FrameNotFound):
            return
        self.assertTrue(numbers)
        self.assertEqual(len(set(numbers)), len(numbers))
        self.assertTrue(all(1 <= n < 2**31 for n in numbers))

    @SETTINGS
    @given(frame_numbers, st.data())
    def test_duplicates_are_refused(self, numbers: list[int], data: st.DataObject) -> None:
        repeated = data.draw(st.sampled_from(numbers))
        position = data.draw(st.integers(0, len(numbers)))
        items = [str(n) for n in numbers]
        items.insert(position, str(repeated))
        self.assertRaises(BadFrameList, parse_frame_list, ",".join(items))

    def test_malformed(self) -> None:
        # Among them: an Arabic-Indic digit one and a superscript two (str.isdigit says digits).
        for text in ("", ",", "1,", ",1", "1,,2", "0", "00", "1,0", "-1", "+1", "1.0", " 1", "1 ", "a",
                     "1;2", "\u0661", "\u00b2", "0x1", "1%2c%2C2"):  # fmt: skip
            self.assertRaises(BadFrameList, parse_frame_list, text)
        self.assertIsInstance(BadFrameList("x"), BadRequest)

    def test_numbers_no_object_has(self) -> None:
        self.assertEqual(parse_frame_list(str(2**31 - 1)), (2**31 - 1,))
        self.assertRaises(FrameNotFound, parse_frame_list, str(2**31))
        self.assertRaises(FrameNotFound, parse_frame_list, "1," + "9" * 5000)

    def test_against_number_of_frames(self) -> None:
        check_frame_numbers((1, 15, 3), 15)
        self.assertRaises(FrameNotFound, check_frame_numbers, (1, 16), 15)
        self.assertIsInstance(FrameNotFound("x"), NotFound)


class RangeTests(SynchronousTestCase):
    @SETTINGS
    @given(st.integers(0, 1000), st.integers(0, 1200), st.integers(0, 1200) | st.none())
    def test_first_last(self, length: int, first: int, last: int | None) -> None:
        header = f"bytes={first}-{'' if last is None else last}"
        if last is not None and last < first:
            self.assertIsNone(parse_range(header, length))
        elif first >= length:
            error = self.assertRaises(RangeNotSatisfiable, parse_range, header, length)
            self.assertEqual(error.length, length)
        else:
            end = length - 1 if last is None else min(last, length - 1)
            self.assertEqual(parse_range(header, length), ByteRange(first, end + 1, length))

    @SETTINGS
    @given(st.integers(0, 1000), st.integers(0, 1200))
    def test_suffix(self, length: int, suffix: int) -> None:
        if suffix == 0 or length == 0:
            self.assertRaises(RangeNotSatisfiable, parse_range, f"bytes=-{suffix}", length)
        else:
            self.assertEqual(
                parse_range(f"bytes=-{suffix}", length), ByteRange(max(0, length - suffix), length, length)
            )

    @SETTINGS
    @given(st.text(max_size=40), st.integers(0, 100))
    def test_anything_is_a_range_none_or_416(self, header: str, length: int) -> None:
        try:
            found = parse_range(header, length)
        except RangeNotSatisfiable as e:
            self.assertEqual(e.length, length)
            return
        if found is not None:
            self.assertTrue(0 <= found.start < found.stop <= length)

    def test_ignored(self) -> None:
        for header in (None, "", "bytes", "bytes=", "bytes=-", "bytes=a-b", "bytes=5-3", "items=0-1",
                       "bytes=0-1,3-4", "bytes=0-1, 5-", "bytes=1", "bytes=0x1-2", "bytes=--1"):  # fmt: skip
            self.assertIsNone(parse_range(header, 10), header)

    def test_forms(self) -> None:
        self.assertEqual(parse_range("bytes=0-0", 10), ByteRange(0, 1, 10))
        self.assertEqual(parse_range("Bytes=2-", 10), ByteRange(2, 10, 10))
        self.assertEqual(parse_range(" bytes=, 2-4 ,", 10), ByteRange(2, 5, 10))  # empty list elements
        self.assertEqual(parse_range("bytes=0-" + "9" * 40, 10), ByteRange(0, 10, 10))
        self.assertEqual(parse_range("bytes=-" + "9" * 40, 10), ByteRange(0, 10, 10))
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=" + "9" * 40 + "-", 10)
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=0-", 0)
        self.assertEqual(ByteRange(2, 5, 10).content_range, "bytes 2-4/10")
        self.assertEqual(ByteRange(2, 5, 10).size, 3)

    def test_416_with_the_length(self) -> None:
        error = RangeNotSatisfiable("past the end", 1234)
        self.assertEqual(http_status(error), 416)
        request = DummyRequest([b""])
        error_response(request, Failure(error))
        self.assertEqual(request.responseCode, 416)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Content-Range"), [b"bytes */1234"])


class MediaTests(SynchronousTestCase):
    def test_native(self) -> None:
        for syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE, "1.2.840.10008.1.2.1.99"):
            self.assertEqual(frame_media(syntax, encapsulated=False), NATIVE_MEDIA)
        self.assertEqual(frame_media(ENCAPSULATED_UNCOMPRESSED, encapsulated=True), NATIVE_MEDIA)
        self.assertEqual(
            NATIVE_MEDIA.content_type, "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        )

    def test_compressed(self) -> None:
        for syntax, media in (
            (JPEG_BASELINE, "image/jpeg"),
            ("1.2.840.10008.1.2.4.51", "image/jpeg"),
            ("1.2.840.10008.1.2.4.57", "image/jpeg"),
            (JPEG_LOSSLESS_SV1, "image/jpeg"),
            (RLE_LOSSLESS, "image/dicom-rle"),
            (JPEG_LS_LOSSLESS, "image/jls"),
            ("1.2.840.10008.1.2.4.81", "image/jls"),
            ("1.2.840.10008.1.2.4.90", "image/jp2"),
            (JPEG_2000, "image/jp2"),
            ("1.2.840.10008.1.2.4.92", "image/jpx"),
            ("1.2.840.10008.1.2.4.201", "image/jphc"),
            ("1.2.840.10008.1.2.4.110", "image/jxl"),
            ("1.2.840.10008.1.2.4.100.1", "video/mpeg"),
            ("1.2.840.10008.1.2.4.106.1", "video/mp4"),
            ("1.2.840.10008.1.2.4.107", "video/H265"),
        ):
            self.assertEqual(frame_media(syntax, encapsulated=True), PartMedia(media, syntax))
        self.assertIsNone(frame_media("1.2.840.10008.1.2.4.94", encapsulated=True))  # JPIP referenced
        self.assertIsNone(frame_media("1.2.3.4.5", encapsulated=True))
        self.assertEqual(
            PartMedia("image/jpeg", JPEG_BASELINE).content_type,
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
        )

    def test_syntaxes_of_a_media_type(self) -> None:
        self.assertEqual(media_syntaxes("image/jpeg")[0], JPEG_LOSSLESS_SV1)
        jpeg = {JPEG_BASELINE, "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", JPEG_LOSSLESS_SV1}
        self.assertEqual(set(media_syntaxes("IMAGE/JPEG")), jpeg)
        self.assertEqual(media_syntaxes("image/x-dicom-rle"), (RLE_LOSSLESS,))
        self.assertEqual(media_syntaxes("image/x-jls")[0], JPEG_LS_LOSSLESS)
        self.assertEqual(media_syntaxes("application/octet-stream"), (EXPLICIT_VR_LE,))
        self.assertEqual(media_syntaxes("image/png"), ())

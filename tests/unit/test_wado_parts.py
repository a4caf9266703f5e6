"""Tests for the pure WADO-RS parts: Accept negotiation, multipart framing, Part-10 meta
and transfer syntax conversion, metadata with BulkDataURIs (dicomrst.wado)."""

from __future__ import annotations

import json
import warnings
from array import array
from email.message import Message
from email.parser import BytesParser
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common import transcode
from dicomrst.common.dicomjson import dataset_json
from dicomrst.common.part10 import file_meta
from dicomrst.common.transcode import (
    CannotTranscode,
    DataSetError,
    can_decompress,
    decompress_to_explicit_le,
    to_explicit_le,
)
from dicomrst.common.uids import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LE,
)
from dicomrst.errors import BadRequest, NotAcceptable
from dicomrst.wado import negotiation
from dicomrst.wado.metadata import instance_metadata_json
from dicomrst.wado.multipart import MultipartWriter, part_content_type
from dicomrst.wado.negotiation import (
    DEFAULT_CHOICE,
    TransferSyntaxChoice,
    part_transfer_syntax,
    select_instance_media,
    select_metadata_media,
)
from dicomrst.web.errors import http_status
from tests.support.datasets import bulk_paths_dataset

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
RLE = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"
MPEG2 = "1.2.840.10008.1.2.4.100"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"
BROWSER = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


def test_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return path


def split_file(name: str) -> tuple[bytes, str]:
    """A pydicom test file's data set bytes (after the meta) and its transfer syntax."""
    with open(test_file(name), "rb") as f:
        raw = f.read()
    ds = dcmread(BytesIO(raw), stop_before_pixels=True)
    meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    return raw[meta_end:], str(ds.file_meta.TransferSyntaxUID)


def read_file(name: str) -> Dataset:
    with open(test_file(name), "rb") as f:
        return dcmread(f)


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    return fp.getvalue()


def read_explicit_le(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), False, True)


def swapped(value: bytes, vr: str) -> bytes:
    words = array({"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}[vr])
    words.frombytes(value)
    words.byteswap()
    return words.tobytes()


def assert_same_elements(
    test: SynchronousTestCase, expected: Dataset, actual: Dataset, big_endian: bool = False
) -> None:
    """Element by element: tag, VR and value (Pixel Data compared by the caller). With
    `big_endian`, `expected` was read from big endian data, whose O* values pydicom
    leaves as they were encoded."""
    test.assertEqual([e.tag for e in expected], [e.tag for e in actual])
    for element in expected:
        if element.tag == 0x7FE00010:
            continue
        other = actual[element.tag]
        test.assertEqual((element.tag, element.VR), (other.tag, other.VR))
        if element.VR == "SQ":
            test.assertEqual(len(element.value), len(other.value))
            for item, other_item in zip(element.value, other.value, strict=True):
                assert_same_elements(test, item, other_item, big_endian)
        elif big_endian and element.VR in ("OW", "OF", "OL", "OD", "OV"):
            test.assertEqual(swapped(element.value, element.VR), other.value, str(element.tag))
        else:
            test.assertEqual(element.value, other.value, str(element.tag))


# -- Accept negotiation -----------------------------------------------------------------


class InstanceAcceptTests(SynchronousTestCase):
    def choose(self, header: str | None, param: str | None = None, **kw: Any) -> TransferSyntaxChoice:
        return select_instance_media(header, param, **kw)

    def assertDefault(self, header: str | None, param: str | None = None) -> None:
        choice = self.choose(header, param)
        self.assertEqual(choice.syntaxes[0][0], EXPLICIT_VR_LE, header)
        self.assertTrue(choice.multipart)
        self.assertFalse(choice.any, header)
        self.assertEqual(choice.media_type, DICOM_MULTIPART)

    def test_default_explicit_le(self) -> None:
        """Headers that ask for instances without naming a syntax get Explicit VR LE."""
        for header in (
            None,  # missing: treated as */*, not 406 (documented choice)
            "",
            "   ",
            "*/*",
            "multipart/*",
            DICOM_MULTIPART,  # dicomweb-client's default
            "multipart/related; type=application/dicom",
            "multipart/related;type=application/dicom",
            "multipart/related",
            'Multipart/Related; Type="Application/DICOM"',
            'multipart/related; type="application/dicom"; boundary=x',  # unknown parameters ignored
            'multipart/related; type="application/dicom"; x="a,b;c"',  # separators inside quotes
            BROWSER,
            f"application/json, {DICOM_MULTIPART}",
            f"garbage, {DICOM_MULTIPART}; q=0.3",
        ):
            self.assertDefault(header)
        self.assertEqual(self.choose(None), DEFAULT_CHOICE)

    def test_wildcard_transfer_syntax(self) -> None:
        for header in (
            f"{DICOM_MULTIPART}; transfer-syntax=*",
            "multipart/related; type=application/dicom; transfer-syntax=*",
            'multipart/related; type="application/dicom"; transfer-syntax="*"',
            "multipart/related; transfer-syntax=*",
        ):
            choice = self.choose(header)
            self.assertTrue(choice.any, header)
            self.assertEqual(choice.syntaxes, ())
            self.assertEqual(choice.quality(JPEG_BASELINE), 1.0)
            self.assertEqual(choice.quality(EXPLICIT_VR_LE), 1.0)

    def test_named_transfer_syntax(self) -> None:
        choice = self.choose(f"{DICOM_MULTIPART}; transfer-syntax={JPEG_BASELINE}")
        self.assertEqual(choice.syntaxes, ((JPEG_BASELINE, 1.0),))
        self.assertFalse(choice.any)
        self.assertEqual(choice.quality(EXPLICIT_VR_LE), 0.0)

    def test_q_values_order(self) -> None:
        choice = self.choose(
            f"{DICOM_MULTIPART}; transfer-syntax={JPEG_BASELINE}; q=0.5, "
            f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_LE}; q=0.9, "
            f"{DICOM_MULTIPART}; transfer-syntax={JPEG_LOSSLESS}; q=0.5, "
            f"{DICOM_MULTIPART}; transfer-syntax=*; q=0.1"
        )
        self.assertEqual(choice.syntaxes, ((EXPLICIT_VR_LE, 0.9), (JPEG_BASELINE, 0.5), (JPEG_LOSSLESS, 0.5)))
        self.assertEqual(choice.wildcard, 0.1)
        self.assertEqual(choice.quality(RLE), 0.1)

    def test_q_zero_excludes(self) -> None:
        choice = self.choose(
            f"{DICOM_MULTIPART}; transfer-syntax=*, {DICOM_MULTIPART}; transfer-syntax={RLE}; q=0"
        )
        self.assertTrue(choice.any)
        self.assertEqual(choice.excluded, frozenset([RLE]))
        self.assertEqual(choice.quality(RLE), 0.0)
        self.assertEqual(choice.quality(JPEG_BASELINE), 1.0)
        # The default syntax excluded, anything else welcome.
        choice = self.choose(f"{DICOM_MULTIPART}; q=0, {DICOM_MULTIPART}; transfer-syntax=*; q=0.5")
        self.assertEqual(choice.quality(EXPLICIT_VR_LE), 0.0)
        self.assertEqual(choice.quality(JPEG_BASELINE), 0.5)

    def test_most_specific_range_wins(self) -> None:
        # */* (q=1) means Explicit VR LE less specifically than the typed range with *.
        choice = self.choose(f"*/*, {DICOM_MULTIPART}; transfer-syntax=*; q=0.4")
        self.assertEqual(choice.quality(EXPLICIT_VR_LE), 0.4)
        # A typed range naming the default beats * in the same range.
        choice = self.choose(f"{DICOM_MULTIPART}; transfer-syntax=*; q=0.4, {DICOM_MULTIPART}")
        self.assertEqual(choice.quality(EXPLICIT_VR_LE), 1.0)
        # A typed q=0 * excludes what a wildcard range allowed.
        with self.assertRaises(NotAcceptable):
            self.choose(f"*/*, {DICOM_MULTIPART}; transfer-syntax=*; q=0")

    def test_not_acceptable(self) -> None:
        for header in (
            "application/json",
            "application/dicom+json",
            "image/jpeg",
            "text/html",
            OHIF,  # bulk data, not instances
            "multipart/related; type=application/octet-stream",
            'multipart/related; type="image/jpeg"',
            "application/dicom",  # single part: not for a study/series
            "*/*; q=0",
            f"{DICOM_MULTIPART}; q=0",
            f"{DICOM_MULTIPART}; transfer-syntax={IMPLICIT_VR_LE}",  # never over HTTP
            f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_BE}",
            f"{DICOM_MULTIPART}; transfer-syntax=1.2.840.abc",
            f"{DICOM_MULTIPART}; q=abc",
            f"{DICOM_MULTIPART}; q=1.5",
            "garbage",
            ";;;,,,",
            "multipart",
            "*/json",
        ):
            e = self.assertRaises(NotAcceptable, self.choose, header)
            self.assertEqual(http_status(e), 406)
            self.assertIn(DICOM_MULTIPART, e.message)
            self.assertIn(EXPLICIT_VR_LE, e.message)

    def test_mixing_dicom_and_rendered(self) -> None:
        for header in (
            f"{DICOM_MULTIPART}, image/jpeg",
            "application/dicom, image/png; q=0.5",
            "application/octet-stream, text/html",
            "video/mp4, multipart/related; type=application/dicom",
        ):
            e = self.assertRaises(BadRequest, self.choose, header)
            self.assertEqual(http_status(e), 400)
        # Not mixed when the rendered type is excluded.
        self.assertDefault(f"{DICOM_MULTIPART}, image/jpeg; q=0")

    def test_single_part(self) -> None:
        choice = self.choose("application/dicom", single_instance=True)
        self.assertFalse(choice.multipart)
        self.assertEqual(choice.syntaxes, ((EXPLICIT_VR_LE, 1.0),))
        self.assertEqual(choice.media_type, "application/dicom")
        choice = self.choose("application/dicom; transfer-syntax=*", single_instance=True)
        self.assertTrue(choice.any)
        self.assertFalse(choice.multipart)
        # Preference by q; on a tie the default multipart form.
        choice = self.choose(f"application/dicom; q=0.5, {DICOM_MULTIPART}", single_instance=True)
        self.assertTrue(choice.multipart)
        choice = self.choose(f"application/dicom, {DICOM_MULTIPART}; q=0.5", single_instance=True)
        self.assertFalse(choice.multipart)
        choice = self.choose(f"application/dicom, {DICOM_MULTIPART}", single_instance=True)
        self.assertTrue(choice.multipart)
        # */* means the default media type, multipart.
        self.assertTrue(self.choose("*/*", single_instance=True).multipart)

    def test_accept_parameter_first(self) -> None:
        choice = self.choose("application/json", f"{DICOM_MULTIPART}; transfer-syntax=*")
        self.assertTrue(choice.any)
        choice = self.choose(f"{DICOM_MULTIPART}; transfer-syntax=*", DICOM_MULTIPART)
        self.assertFalse(choice.any)
        # Nothing acceptable in the parameter: the header decides.
        choice = self.choose(f"{DICOM_MULTIPART}; transfer-syntax=*", "image/jpeg")
        self.assertTrue(choice.any)
        self.assertRaises(NotAcceptable, self.choose, "application/json", "image/jpeg")
        self.assertRaises(BadRequest, self.choose, None, "application/dicom, image/jpeg")
        # An empty parameter is no parameter.
        self.assertDefault(None, "")

    def test_part_transfer_syntax(self) -> None:
        self.patch(negotiation, "can_decompress", lambda ts: ts in (JPEG_BASELINE, RLE))
        star = self.choose(f"{DICOM_MULTIPART}; transfer-syntax=*")
        jpeg_only = self.choose(f"{DICOM_MULTIPART}; transfer-syntax={JPEG_BASELINE}")
        prefer_explicit = self.choose(
            f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_LE}; q=0.9, "
            f"{DICOM_MULTIPART}; transfer-syntax=*; q=0.5"
        )
        prefer_stored = self.choose(
            f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_LE}; q=0.5, "
            f"{DICOM_MULTIPART}; transfer-syntax=*; q=0.9"
        )
        no_default = self.choose(f"{DICOM_MULTIPART}; transfer-syntax=*, {DICOM_MULTIPART}; q=0")
        table = [
            # (choice, stored, expected)
            (DEFAULT_CHOICE, EXPLICIT_VR_LE, EXPLICIT_VR_LE),
            (DEFAULT_CHOICE, IMPLICIT_VR_LE, EXPLICIT_VR_LE),
            (DEFAULT_CHOICE, EXPLICIT_VR_BE, EXPLICIT_VR_LE),
            (DEFAULT_CHOICE, DEFLATED, EXPLICIT_VR_LE),
            (DEFAULT_CHOICE, JPEG_BASELINE, EXPLICIT_VR_LE),  # a decoder exists
            (DEFAULT_CHOICE, JPEG_LOSSLESS, None),  # none does
            (DEFAULT_CHOICE, MPEG2, None),
            (star, EXPLICIT_VR_LE, EXPLICIT_VR_LE),
            (star, IMPLICIT_VR_LE, EXPLICIT_VR_LE),  # never Implicit VR over HTTP
            (star, EXPLICIT_VR_BE, EXPLICIT_VR_LE),
            (star, JPEG_BASELINE, JPEG_BASELINE),  # passed through, no transcoding
            (star, JPEG_LOSSLESS, JPEG_LOSSLESS),
            (star, DEFLATED, DEFLATED),
            (jpeg_only, JPEG_BASELINE, JPEG_BASELINE),
            (jpeg_only, EXPLICIT_VR_LE, None),  # we do not compress
            (jpeg_only, IMPLICIT_VR_LE, None),
            (prefer_explicit, JPEG_BASELINE, EXPLICIT_VR_LE),
            (prefer_explicit, JPEG_LOSSLESS, JPEG_LOSSLESS),  # cannot decompress: the stored one
            (prefer_stored, JPEG_BASELINE, JPEG_BASELINE),
            (prefer_stored, IMPLICIT_VR_LE, EXPLICIT_VR_LE),
            (no_default, IMPLICIT_VR_LE, None),
            (no_default, EXPLICIT_VR_LE, None),
            (no_default, RLE, RLE),
        ]
        for choice, stored, expected in table:
            self.assertEqual(part_transfer_syntax(choice, stored), expected, (choice, stored))


class MetadataAcceptTests(SynchronousTestCase):
    def test_table(self) -> None:
        for header, param, expected in (
            (None, None, "application/dicom+json"),
            ("", None, "application/dicom+json"),
            ("*/*", None, "application/dicom+json"),
            ("application/*", None, "application/dicom+json"),
            ("application/dicom+json", None, "application/dicom+json"),
            ("application/dicom+json; charset=utf-8", None, "application/dicom+json"),
            ("application/json", None, "application/json"),
            ("application/json, application/dicom+json", None, "application/dicom+json"),
            ("application/json, application/dicom+json; q=0.5", None, "application/json"),
            ("application/json; q=0.9, */*; q=0.1", None, "application/json"),
            (BROWSER, None, "application/dicom+json"),
            ("image/jpeg", "application/dicom json", "application/dicom+json"),  # '+' decoded as space
            ("application/json", "application/dicom+json", "application/dicom+json"),
        ):
            self.assertEqual(select_metadata_media(header, param), expected, (header, param))

    def test_not_acceptable(self) -> None:
        for header in (
            'multipart/related; type="application/dicom+xml"',
            DICOM_MULTIPART,
            "application/dicom+json; charset=ISO-8859-1",
            "application/dicom+json; q=0",
            "image/png",
            "garbage",
        ):
            e = self.assertRaises(NotAcceptable, select_metadata_media, header)
            self.assertIn("application/dicom+json", e.message)

    def test_mixed(self) -> None:
        self.assertRaises(BadRequest, select_metadata_media, "application/dicom+json, image/png")


# -- multipart --------------------------------------------------------------------------


def parse_multipart(content_type: str, body: bytes) -> Message:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("ascii")
    return BytesParser().parsebytes(head + body)


class MultipartTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        writer = MultipartWriter()
        explicit = part_content_type("application/dicom", EXPLICIT_VR_LE)
        jpeg = part_content_type("application/dicom", JPEG_BASELINE)
        parts = [
            (explicit, "http://h/studies/1/series/2/instances/3", bytes(range(256)) * 3),
            (jpeg, "http://h/x", b"\r\n--\r\n\r\n\n\r"),
            ("application/dicom", None, b"--" + writer.boundary.encode() + b"X"),  # not a delimiter
            ("application/octet-stream", "http://h/empty", b""),
        ]
        body = b""
        for content_type, location, payload in parts:
            body += writer.part_header(content_type, location, len(payload)) + payload
        body += writer.close()
        self.assertTrue(body.startswith(b"--" + writer.boundary.encode() + b"\r\nContent-Type: "))
        self.assertTrue(body.endswith(b"\r\n--" + writer.boundary.encode() + b"--\r\n"))

        message = parse_multipart(writer.content_type(), body)
        self.assertTrue(message.is_multipart())
        self.assertEqual(message.get_content_type(), "multipart/related")
        self.assertEqual(message.get_param("type"), "application/dicom")
        self.assertEqual(message.get_boundary(), writer.boundary)
        self.assertEqual(message.defects, [])
        got = message.get_payload()
        self.assertEqual(len(got), len(parts))
        for part, (content_type, location, payload) in zip(got, parts, strict=True):
            self.assertEqual(part["Content-Type"], content_type)
            self.assertEqual(part["Content-Location"], location)
            self.assertEqual(part["Content-Length"], str(len(payload)))
            self.assertEqual(part.get_payload(decode=True), payload)
            self.assertEqual(part.defects, [])

    def test_content_type(self) -> None:
        writer = MultipartWriter("abc")
        self.assertEqual(writer.content_type(), 'multipart/related; type="application/dicom"; boundary=abc')
        self.assertEqual(
            writer.content_type("application/dicom", EXPLICIT_VR_LE),
            f'multipart/related; type="application/dicom"; boundary=abc; transfer-syntax={EXPLICIT_VR_LE}',
        )
        # A boundary with RFC 2045 tspecials is quoted, and still parses back.
        writer = MultipartWriter("a b:c?=d")
        self.assertIn('boundary="a b:c?=d"', writer.content_type())
        body = writer.part_header("application/dicom") + b"x" + writer.close()
        message = parse_multipart(writer.content_type(), body)
        self.assertEqual([p.get_payload(decode=True) for p in message.get_payload()], [b"x"])

    def test_random_boundary(self) -> None:
        a, b = MultipartWriter(), MultipartWriter()
        self.assertNotEqual(a.boundary, b.boundary)
        self.assertTrue(1 <= len(a.boundary) <= 70)
        self.assertRegex(a.boundary, r"\A[0-9a-f]+\Z")

    def test_framing_details(self) -> None:
        writer = MultipartWriter("B")
        self.assertEqual(
            writer.part_header("application/dicom"), b"--B\r\nContent-Type: application/dicom\r\n\r\n"
        )
        self.assertEqual(
            writer.part_header("application/dicom", "http://h/i", 5),
            b"\r\n--B\r\nContent-Type: application/dicom\r\n"
            b"Content-Location: http://h/i\r\nContent-Length: 5\r\n\r\n",
        )
        self.assertEqual(writer.close(), b"\r\n--B--\r\n")
        self.assertRaises(ValueError, writer.close)
        self.assertRaises(ValueError, writer.part_header, "application/dicom")
        self.assertEqual(MultipartWriter("B").close(), b"--B--\r\n")

    def test_invalid(self) -> None:
        for boundary in ("", "x" * 71, "trailing ", "at@sign", 'quo"te', "new\nline"):
            self.assertRaises(ValueError, MultipartWriter, boundary)
        MultipartWriter("x" * 70)
        writer = MultipartWriter()
        self.assertRaises(ValueError, writer.part_header, "application/dicom", "http://h/\r\nX-Evil: 1")
        self.assertRaises(ValueError, writer.part_header, "application/dicom\r\n", None)
        self.assertRaises(ValueError, writer.part_header, "application/dicom", "http://h/é")
        self.assertRaises(ValueError, writer.part_header, "application/dicom", None, -1)


# -- Part 10 ----------------------------------------------------------------------------


def pydicom_meta(sop_class: str, sop_instance: str, ts: str, aet: str | None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if aet is not None:
        meta.SourceApplicationEntityTitle = aet
    fp = DicomBytesIO()
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


class FileMetaTests(SynchronousTestCase):
    cases = (
        (CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE, None),  # odd-length UIDs
        (CT_IMAGE_STORAGE, "1.2.3.4.56", JPEG_BASELINE, "PACS"),  # even-length
        ("1.2.840.10008.5.1.4.1.1.4", "1." + "2" * 62, RLE, "ODDAE"),  # 64 characters
        ("1.2.840.10008.5.1.4.1.1.7", "2.25.1", DEFLATED, "SIXTEEN_CHARS_AE"),
    )

    def test_matches_pydicom(self) -> None:
        for sop_class, sop_instance, ts, aet in self.cases:
            ours = file_meta(sop_class, sop_instance, ts, aet)
            self.assertEqual(ours[:132], bytes(128) + b"DICM")
            self.assertEqual(ours[132:], pydicom_meta(sop_class, sop_instance, ts, aet), sop_instance)
            self.assertEqual(len(ours) % 2, 0)

    def test_padded_input(self) -> None:
        """UIDs from a C-STORE command may still carry their NUL padding."""
        self.assertEqual(
            file_meta(CT_IMAGE_STORAGE + "\x00", "1.2.3.4.5\x00", EXPLICIT_VR_LE + "\x00", " PACS "),
            file_meta(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE, "PACS"),
        )
        blank_aet = file_meta(CT_IMAGE_STORAGE, "1.2.3", EXPLICIT_VR_LE, "  ")
        self.assertEqual(blank_aet, file_meta(CT_IMAGE_STORAGE, "1.2.3", EXPLICIT_VR_LE))

    def test_dcmread(self) -> None:
        data, ts = split_file("CT_small.dcm")
        original = read_file("CT_small.dcm")
        meta = file_meta(original.SOPClassUID, original.SOPInstanceUID, ts, "ORTHANC")
        ds = dcmread(BytesIO(meta + data))
        self.assertEqual(ds.preamble, bytes(128))
        self.assertEqual(ds.file_meta.FileMetaInformationVersion, b"\x00\x01")
        self.assertEqual(ds.file_meta.MediaStorageSOPClassUID, original.SOPClassUID)
        self.assertEqual(ds.file_meta.MediaStorageSOPInstanceUID, original.SOPInstanceUID)
        self.assertEqual(ds.file_meta.TransferSyntaxUID, EXPLICIT_VR_LE)
        self.assertEqual(ds.file_meta.ImplementationClassUID, IMPLEMENTATION_CLASS_UID)
        self.assertEqual(ds.file_meta.ImplementationVersionName, IMPLEMENTATION_VERSION_NAME)
        self.assertEqual(ds.file_meta.SourceApplicationEntityTitle, "ORTHANC")
        group_length = ds.file_meta.FileMetaInformationGroupLength
        self.assertEqual(group_length, len(meta) - 132 - 12)
        assert_same_elements(self, original, ds)
        self.assertEqual(ds.PixelData, original.PixelData)

    def test_invalid(self) -> None:
        for args in (
            ("", "1.2.3", EXPLICIT_VR_LE),
            (CT_IMAGE_STORAGE, "\x00", EXPLICIT_VR_LE),
            (CT_IMAGE_STORAGE, "1.2.é", EXPLICIT_VR_LE),
            (CT_IMAGE_STORAGE, "1." + "2" * 63, EXPLICIT_VR_LE),
        ):
            self.assertRaises(ValueError, file_meta, *args)
        self.assertRaises(ValueError, file_meta, CT_IMAGE_STORAGE, "1.2", EXPLICIT_VR_LE, "SEVENTEEN_CHARS_A")
        self.assertRaises(ValueError, file_meta, CT_IMAGE_STORAGE, "1.2", EXPLICIT_VR_LE, "A\\B")


class ToExplicitLETests(SynchronousTestCase):
    def check_converted(self, name: str) -> Dataset:
        data, ts = split_file(name)
        converted = read_explicit_le(to_explicit_le(data, ts))
        original = read_file(name)
        assert_same_elements(self, original, converted)
        reference = read_file("MR_small.dcm")  # the same image in Explicit VR LE
        self.assertEqual(converted.PixelData, reference.PixelData)
        self.assertEqual(converted["PixelData"].VR, "OW")
        return converted

    def test_implicit(self) -> None:
        self.check_converted("MR_small_implicit.dcm")

    def test_big_endian(self) -> None:
        self.check_converted("MR_small_bigendian.dcm")

    def test_explicit_passes_through(self) -> None:
        data, ts = split_file("CT_small.dcm")
        self.assertIs(to_explicit_le(data, ts), data)

    def test_deflated(self) -> None:
        data, ts = split_file("image_dfl.dcm")
        self.assertEqual(ts, DEFLATED)
        converted = read_explicit_le(to_explicit_le(data, ts))
        original = read_file("image_dfl.dcm")
        assert_same_elements(self, original, converted)
        self.assertEqual(converted.PixelData, original.PixelData)

    def synthetic(self) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Jörg"
        ds.PatientID = "ODD"
        ds.BitsAllocated = 16
        ds.PixelRepresentation = 1
        ds.SmallestImagePixelValue = -5  # 'US or SS'
        ds.add_new(0x00090010, "LO", "ACME 1.0")  # private creator
        ds.add_new(0x00091001, "DS", "1.5")  # a private element no dictionary knows
        item = Dataset()
        item.CodeMeaning = "Grüße"
        item.ReferencedFrameNumber = [1, 2]
        item.add_new(0x00189087, "FD", 1.5)  # Diffusion b-value
        item.add_new(0x00209165, "AT", [0x00100020, 0x7FE00010])
        ds.ReferencedImageSequence = DicomSequence([item, Dataset()])
        ds.Rows = 2
        ds.Columns = 2
        ds.PixelData = b"\x01\x02\x03\x04\x05\x06\x07\x08"
        return ds

    def test_synthetic_implicit(self) -> None:
        ds = self.synthetic()
        ds.add_new(0x00603020, "UL", list(range(20000)))  # Histogram Data: 80000 bytes in a UL
        data = encode(ds, implicit=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "VR lookup failed", no "changed to UN"
            out = to_explicit_le(data, IMPLICIT_VR_LE)
        converted = read_explicit_le(out)
        self.assertEqual(converted["SmallestImagePixelValue"].VR, "SS")
        self.assertEqual(converted.SmallestImagePixelValue, -5)
        self.assertEqual(converted[0x00090010].VR, "LO")
        self.assertEqual(converted[0x00091001].VR, "UN")  # unknown private: UN, bytes kept
        self.assertEqual(converted[0x00091001].value, b"1.5 ")
        self.assertEqual(converted[0x00603020].VR, "UN")  # > 65534 bytes in a 16-bit-length VR
        self.assertEqual(converted[0x00603020].value, b"".join(i.to_bytes(4, "little") for i in range(20000)))
        self.assertEqual(converted.PatientName, "Müller^Jörg")
        self.assertIn("Müller^Jörg".encode(), out)  # text bytes as they were
        item = converted.ReferencedImageSequence[0]
        self.assertEqual(item.CodeMeaning, "Grüße")
        self.assertEqual(item[0x00189087].value, 1.5)
        self.assertEqual(item[0x00209165].value, [0x00100020, 0x7FE00010])
        self.assertEqual(len(converted.ReferencedImageSequence[1]), 0)
        self.assertEqual(converted["PixelData"].VR, "OW")
        self.assertEqual(converted.PixelData, ds.PixelData)

    def test_synthetic_big_endian(self) -> None:
        ds = self.synthetic()
        ds.add_new(0x00603020, "UL", list(range(100)))
        ds["PixelData"].VR = "OW"
        ds.add_new(0x00091002, "OF", b"\x3f\x80\x00\x00")  # explicit VR keeps private VRs
        data = encode(ds, little=False)
        converted = read_explicit_le(to_explicit_le(data, EXPLICIT_VR_BE))
        original = read_dataset(BytesIO(data), False, False)
        assert_same_elements(self, original, converted, big_endian=True)
        # Pixel data words swapped: the same numbers in little endian.
        self.assertEqual(converted.PixelData, b"\x02\x01\x04\x03\x06\x05\x08\x07")
        self.assertEqual(converted[0x00091002].value, b"\x00\x00\x80\x3f")

    def test_errors(self) -> None:
        data, _ = split_file("MR_small_implicit.dcm")
        self.assertRaises(DataSetError, to_explicit_le, data[:-3], IMPLICIT_VR_LE)
        self.assertRaises(
            DataSetError, to_explicit_le, b"\x08\x00\x20\x00\x05\x00\x00\x00abc", EXPLICIT_VR_BE
        )
        self.assertRaises(DataSetError, to_explicit_le, b"not deflate", DEFLATED)
        e = self.assertRaises(CannotTranscode, to_explicit_le, data, MPEG2)
        self.assertEqual(http_status(e), 406)
        self.assertIn(MPEG2, e.message)
        self.assertRaises(CannotTranscode, to_explicit_le, data, "1.2.3.4")

    def test_decompress(self) -> None:
        data, ts = split_file("MR_small_RLE.dcm")
        self.assertEqual(ts, RLE)
        if not can_decompress(RLE):  # pydicom's RLE decoder needs numpy (optional)
            self.assertRaises(CannotTranscode, to_explicit_le, data, ts)
            return
        converted = read_explicit_le(to_explicit_le(data, ts))
        original = read_file("MR_small_RLE.dcm")
        self.assertEqual(converted.SOPInstanceUID, original.SOPInstanceUID)
        self.assertFalse(converted["PixelData"].is_undefined_length)
        reference = read_file("MR_small.dcm")
        self.assertEqual(converted.PixelData, reference.PixelData)

    def test_decompress_failure(self) -> None:
        ds = read_explicit_le(split_file("MR_small_RLE.dcm")[0])
        ds.PixelData = encapsulate([b"\x00\x01garbage!"])
        ds["PixelData"].is_undefined_length = True
        self.assertRaises(CannotTranscode, decompress_to_explicit_le, encode(ds), RLE)

    def test_no_decoder(self) -> None:
        self.patch(transcode, "can_decompress", lambda ts: False)
        data, ts = split_file("MR_small_RLE.dcm")
        e = self.assertRaises(CannotTranscode, to_explicit_le, data, ts)
        self.assertIn("no pixel data decoder", e.message)


# -- metadata ---------------------------------------------------------------------------

BASE = "http://gw/aets/PACS/studies/1/series/2/instances/3/bulkdata"


def metadata(data: bytes, ts: str = EXPLICIT_VR_LE, **kw: Any) -> dict[str, Any]:
    encoded = instance_metadata_json(data, ts, BASE, **kw)
    self_check = json.loads(encoded)
    assert isinstance(self_check, dict)
    return self_check


class MetadataTests(SynchronousTestCase):
    def test_ct_small(self) -> None:
        data, ts = split_file("CT_small.dcm")
        got = metadata(data, ts)
        expected = json.loads(dataset_json(read_file("CT_small.dcm")))
        del expected["FFFCFFFC"]  # Data Set Trailing Padding: left out
        self.assertEqual(got["7FE00010"], {"vr": "OW", "BulkDataURI": f"{BASE}/7FE00010"})
        # A private OB over the threshold is bulk data too.
        self.assertEqual(got["00431029"], {"vr": "OB", "BulkDataURI": f"{BASE}/00431029"})
        self.assertEqual(sorted(got), sorted(expected))
        for key in expected:
            if key not in ("7FE00010", "00431029"):
                self.assertEqual(got[key], expected[key], key)
        # With a high threshold only the pixel data is a BulkDataURI.
        got = metadata(data, ts, threshold=1 << 20)
        self.assertEqual(got["00431029"], expected["00431029"])
        self.assertIn("BulkDataURI", got["7FE00010"])

    def test_same_for_every_encoding(self) -> None:
        names = ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm")
        results = [metadata(*split_file(name)) for name in names]
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], results[2])
        self.assertEqual(results[0]["7FE00010"], {"vr": "OW", "BulkDataURI": f"{BASE}/7FE00010"})

    def test_encapsulated_and_deflated(self) -> None:
        got = metadata(*split_file("SC_rgb_jpeg_dcmtk.dcm"))
        self.assertEqual(got["7FE00010"], {"vr": "OB", "BulkDataURI": f"{BASE}/7FE00010"})
        got = metadata(*split_file("image_dfl.dcm"))
        self.assertEqual(got["7FE00010"]["BulkDataURI"], f"{BASE}/7FE00010")
        self.assertEqual(got["00100010"], json.loads(dataset_json(read_file("image_dfl.dcm")))["00100010"])

    def test_nested_paths(self) -> None:
        got = metadata(encode(bulk_paths_dataset()))
        self.assertEqual(got["00100010"], {"vr": "PN", "Value": [{"Alphabetic": "Doe^J"}]})
        self.assertEqual(got["00091010"], {"vr": "OB", "InlineBinary": "AQI="})
        items = got["00400275"]["Value"]
        self.assertEqual(items[0]["00400009"], {"vr": "OB", "BulkDataURI": f"{BASE}/00400275/0/00400009"})
        self.assertEqual(items[0]["00401001"], {"vr": "SH", "Value": ["RP1"]})
        icon = items[1]["00880200"]["Value"][0]
        self.assertEqual(
            icon["7FE00010"], {"vr": "OW", "BulkDataURI": f"{BASE}/00400275/1/00880200/0/7FE00010"}
        )
        self.assertEqual(icon["00280010"], {"vr": "US", "Value": [1]})
        self.assertEqual(items[1]["00700022"], {"vr": "FL", "BulkDataURI": f"{BASE}/00400275/1/00700022"})
        self.assertEqual(got["00283010"], {"vr": "SQ"})
        self.assertEqual(got["00603020"], {"vr": "UL", "Value": [1] * 256})
        self.assertNotIn("00020010", got)
        self.assertEqual(list(got), sorted(got))

    def test_nested_implicit(self) -> None:
        ds = bulk_paths_dataset()
        del ds[0x00400275][0][0x00400009]  # SH by the dictionary: not binary in implicit VR
        explicit = metadata(encode(ds))
        implicit = metadata(encode(ds, implicit=True), IMPLICIT_VR_LE)
        # Implicit VR: the unknown private OB reads as UN, the rest is identical.
        self.assertEqual(implicit.pop("00091010"), {"vr": "UN", "InlineBinary": "AQI="})
        explicit.pop("00091010")
        self.assertEqual(implicit, explicit)

    def test_threshold(self) -> None:
        ds = Dataset()
        ds.add_new(0x00603020, "UL", [1] * 256)
        ds.add_new(0x00091010, "OB", b"\x00" * 12)
        got = metadata(encode(ds), threshold=10)
        self.assertEqual(got["00603020"], {"vr": "UL", "BulkDataURI": f"{BASE}/00603020"})
        self.assertEqual(got["00091010"], {"vr": "OB", "BulkDataURI": f"{BASE}/00091010"})
        # A trailing slash on the base is not doubled.
        encoded = instance_metadata_json(encode(ds), EXPLICIT_VR_LE, BASE + "/", threshold=10)
        self.assertIn(f'"{BASE}/00603020"'.encode(), encoded)

    def test_garbage(self) -> None:
        truncated = b"\x08\x00\x20\x00DA\x10\x00abc"
        self.assertRaises(DataSetError, instance_metadata_json, truncated, EXPLICIT_VR_LE, BASE)
        data, ts = split_file("MR_small_implicit.dcm")
        self.assertRaises(DataSetError, instance_metadata_json, data[:-3], ts, BASE)

    def test_ambiguous(self) -> None:
        ds = Dataset()
        ds.BitsAllocated = 16
        ds.PixelRepresentation = 1
        ds.SmallestImagePixelValue = -1
        lut = Dataset()
        lut.add_new(0x00283006, "OW", b"\x01\x00" * 1000)  # LUT Data, no LUT Descriptor
        ds.VOILUTSequence = DicomSequence([lut])
        ds.PixelData = b"\x00\x00"
        got = metadata(encode(ds, implicit=True), IMPLICIT_VR_LE)
        self.assertEqual(got["00280106"], {"vr": "SS", "Value": [-1]})
        self.assertEqual(got["00283010"]["Value"][0]["00283006"]["vr"], "OW")
        self.assertEqual(got["7FE00010"]["vr"], "OW")
        converted = read_explicit_le(to_explicit_le(encode(ds, implicit=True), IMPLICIT_VR_LE))
        self.assertEqual(converted.VOILUTSequence[0][0x00283006].VR, "OW")
        self.assertEqual(converted.VOILUTSequence[0][0x00283006].value, b"\x01\x00" * 1000)
        self.assertEqual(converted["SmallestImagePixelValue"].VR, "SS")

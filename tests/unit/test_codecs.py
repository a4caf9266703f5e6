"""Every transfer syntax pydicom can decode decodes on a plain install (dicomrst.common.codecs):
pydicom's own test files, and frames encoded here for the syntaxes it ships none of."""

from __future__ import annotations

import os
import warnings
from typing import Any

import imagecodecs
import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common import codecs
from dicomrst.common.transcode import can_decompress, decompress_to_explicit_le, parse_dataset

TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")

#: Every compressed syntax pydicom 3 has a decoder for.
DECODABLE = (
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
    uid.DeflatedExplicitVRLittleEndian,
)


def read(name: str) -> Dataset:
    return pydicom.dcmread(os.path.join(TEST_FILES, name))


def decode(ds: Dataset, plugin: str = "") -> Any:
    # Here, not only in AvailabilityTests: with trial -j, a worker may run these tests
    # without having run that one (or anything else that installs the plugin) first.
    codecs.install()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the test files' quirks
        return pixel_array(ds, decoding_plugin=plugin)


def ct_like(rows: int = 64, columns: int = 48) -> Any:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:rows, 0:columns]
    image = (
        1000
        + 800 * (((x - columns / 2) / 20) ** 2 + ((y - rows / 2) / 25) ** 2 < 1)
        + rng.normal(0, 20, (rows, columns))
    )
    return image.clip(0, 4095).astype(np.uint16)


def encapsulated(pixels: Any, syntax: str, frame: bytes, bits_stored: int = 12) -> Dataset:
    ds = read("CT_small.dcm")
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


class AvailabilityTests(SynchronousTestCase):
    def test_every_syntax_has_a_decoder(self) -> None:
        codecs.install()
        codecs.install()  # idempotent
        self.assertEqual([ts for ts in DECODABLE if not can_decompress(ts)], [])


class PydicomTestFileTests(SynchronousTestCase):
    """Lossless files equal their uncompressed twins; lossy ones equal Pillow's decoding
    where Pillow decodes them."""

    def test_lossless_equal_the_uncompressed(self) -> None:
        reference = read("MR_small.dcm").pixel_array
        for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
            np.testing.assert_array_equal(decode(read(name)), reference, err_msg=name)
        rgb = read("SC_rgb_rle.dcm").pixel_array
        for name in ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm"):  # JPEG lossless SV1, J2K
            np.testing.assert_array_equal(decode(read(name), "imagecodecs"), rgb, err_msg=name)

    def test_lossy_match_pillow(self) -> None:
        for name in (
            "SC_rgb_dcmtk_+eb+cy+np.dcm",  # YBR_FULL_422
            "SC_jpeg_no_color_transform.dcm",  # RGB without a colour transform
            "examples_ybr_color.dcm",  # 30 frames
            "JPEG2000.dcm",
            "693_J2KI.dcm",
            "J2K_pixelrep_mismatch.dcm",  # signed data coded unsigned
        ):
            ds = read(name)
            np.testing.assert_array_equal(decode(ds, "imagecodecs"), decode(ds, "pillow"), err_msg=name)

    def test_what_pillow_cannot(self) -> None:
        # 12-bit JPEG extended and JPEG-LS: only the imagecodecs plugin decodes them.
        arr = decode(read("JPGExtended.dcm"))
        self.assertEqual((arr.shape, arr.dtype.itemsize), ((1024, 256), 2))
        self.assertLessEqual(int(arr.max()), 4095)
        arr = decode(read("SC_rgb_jls_lossy_line.dcm"))
        self.assertLessEqual(np.abs(arr.astype(int) - read("SC_rgb_rle.dcm").pixel_array).max(), 2)  # NEAR=2


class EncodedHereTests(SynchronousTestCase):
    """Syntaxes pydicom ships no test file for, encoded losslessly by imagecodecs."""

    def test_lossless_round_trips(self) -> None:
        pixels = ct_like()
        frames = {
            uid.JPEGLossless: imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=6, bitspersample=12),
            uid.JPEGLosslessSV1: imagecodecs.jpeg8_encode(
                pixels, lossless=True, predictor=1, bitspersample=12
            ),
            uid.JPEG2000Lossless: imagecodecs.jpeg2k_encode(
                pixels, level=0, reversible=True, codecformat="J2K"
            ),
            uid.HTJ2KLossless: imagecodecs.htj2k_encode(pixels, reversible=True),
            uid.JPEGLSLossless: imagecodecs.jpegls_encode(pixels),
        }
        for syntax, frame in frames.items():
            got = decode(encapsulated(pixels, syntax, frame))
            np.testing.assert_array_equal(got, pixels, err_msg=syntax.name)

    def test_lossy_htj2k_and_jpeg_12_bit(self) -> None:
        pixels = ct_like()
        frames = {
            uid.HTJ2K: imagecodecs.htj2k_encode(pixels, reversible=False),
            uid.JPEGExtended12Bit: imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=12),
        }
        for syntax, frame in frames.items():
            got = decode(encapsulated(pixels, syntax, frame)).astype(int)
            self.assertLess(np.abs(got - pixels).mean(), 20, syntax.name)

    def test_decompress_to_explicit_le(self) -> None:
        # The WADO-RS path: a JPEG-LS data set becomes Explicit VR LE with the same pixels.
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        pixels = ct_like()
        ds = encapsulated(pixels, uid.JPEGLSLossless, imagecodecs.jpegls_encode(pixels))
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
        explicit = parse_dataset(decompress_to_explicit_le(out.getvalue(), uid.JPEGLSLossless), False, True)
        got = np.frombuffer(explicit.PixelData, dtype="<u2").reshape(pixels.shape)
        np.testing.assert_array_equal(got, pixels)

# -*- test-case-name: tests.unit.test_codecs -*-
"""Pixel data decoders: imagecodecs, plugged into pydicom's decoders.

pydicom decodes RLE (with numpy) and deflate itself; for the JPEG family it needs a
plugin, and the ones it ships support (pylibjpeg and its plugins, GDCM, pyjpegls) are not
all installable here, and pylibjpeg-libjpeg is GPL-3.0, which an MIT project must not
require.  imagecodecs (BSD-3-Clause; it bundles libjpeg-turbo, OpenJPEG and CharLS, all
BSD-style) decodes every JPEG syntax DICOM uses, so `install` adds it to pydicom's
decoders as one more plugin, after pydicom's own (Pillow is then still preferred where it
applies, as pydicom orders them).  `install` is idempotent; `dicomrst.common.transcode`
calls it before asking pydicom whether a syntax can be decoded.

Each ``_decode_frame`` returns the frame as pydicom's plugins must: raw samples (no
colour transform except JPEG 2000's multiple component transform, reported as RGB),
colour-by-pixel, in a container sized by the codestream's precision (``bits_allocated``
set accordingly, as pydicom's pylibjpeg plugin does).
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from pydicom import uid
from pydicom.pixels.common import PhotometricInterpretation as PI
from pydicom.pixels.decoders.base import DecodeRunner


@cache
def _imagecodecs() -> Any:
    """imagecodecs, imported on first use (a process that never decodes a compressed
    frame need not hold it), or None if missing."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a dependency; without it these syntaxes are 406
        return None
    return imagecodecs

LABEL = "imagecodecs"

_JPEG = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
_JPEG_LS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)
_J2K = (uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)
SYNTAXES: tuple[str, ...] = _JPEG + _JPEG_LS + _J2K

#: What pydicom reports as missing when the plugin cannot load (its plugin contract).
DECODER_DEPENDENCIES = {syntax: ("numpy", "imagecodecs>=2026.3.6") for syntax in SYNTAXES}

_lock = threading.Lock()
_installed = False


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: the codec for `transfer_syntax` loaded."""
    imagecodecs = _imagecodecs()
    if imagecodecs is None:
        return False
    if transfer_syntax in _JPEG:
        return bool(imagecodecs.JPEG8.available)
    if transfer_syntax in _JPEG_LS:
        return bool(imagecodecs.JPEGLS.available)
    if transfer_syntax in _J2K:
        return bool(imagecodecs.JPEG2K.available)
    return False


def install() -> None:
    """Add the plugin to pydicom's decoder of each syntax it serves (once per process).

    pydicom's ``add_plugin`` is not thread-safe, and decoding runs in threads: the lock
    makes the first caller install and the others wait for it."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        from pydicom.pixels.decoders.base import get_decoder

        for syntax in SYNTAXES:
            decoder = get_decoder(syntax)
            if LABEL not in decoder.available_plugins and LABEL not in decoder.missing_dependencies:
                decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
        _installed = True


def _set_container(runner: DecodeRunner, precision: int) -> None:
    if 0 < precision <= 8:
        runner.set_option("bits_allocated", 8)
    elif precision <= 16:
        runner.set_option("bits_allocated", 16)
    else:
        runner.set_option("bits_allocated", 32)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's codestream → its raw samples (pydicom's decoder plugin contract)."""
    syntax = runner.transfer_syntax
    imagecodecs = _imagecodecs()
    arr: Any
    if syntax in _JPEG:
        arr = _decode_jpeg(src, runner)
    elif syntax in _JPEG_LS:
        arr = imagecodecs.jpegls_decode(src)
        _set_container(runner, runner.get_option("jls_precision", runner.bits_stored))
    elif syntax in _J2K:
        arr = imagecodecs.jpeg2k_decode(src)
        # OpenJPEG applies the inverse multiple component transform.
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            runner.set_option("photometric_interpretation", PI.RGB)
        _set_container(runner, runner.get_option("j2k_precision", runner.bits_stored))
    else:
        raise NotImplementedError(f"imagecodecs plugin: no decoder for {syntax}")
    if runner.samples_per_pixel > 1:
        # Every codec here returns (rows, columns, samples): colour-by-pixel.
        runner.set_option("planar_configuration", 0)
    itemsize = runner.bits_allocated // 8
    if arr.dtype.itemsize != itemsize:
        # e.g. a 12-bit JPEG stored with Bits Allocated 16 comes back as uint16 already;
        # anything else is converted to the container pydicom will read.
        arr = arr.astype(f"{'i' if arr.dtype.kind == 'i' else 'u'}{itemsize}")
    return bytes(arr.tobytes())


def _decode_jpeg(src: bytes, runner: DecodeRunner) -> Any:
    if runner.samples_per_pixel == 3:
        # Raw samples, as pydicom expects: no YCbCr → RGB here (pydicom converts
        # YBR_FULL/YBR_FULL_422 itself when asked for RGB).  The runner's Photometric
        # Interpretation has been conformed to the codestream (APP markers, component
        # IDs) by pydicom.
        space = "RGB" if runner.photometric_interpretation == PI.RGB else "YCBCR"
        arr = _imagecodecs().jpeg8_decode(src, colorspace=space, outcolorspace=space)
    else:
        arr = _imagecodecs().jpeg8_decode(src)
    _set_container(runner, 8 if arr.dtype.itemsize == 1 else 16)
    return arr

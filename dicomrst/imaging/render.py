# -*- test-case-name: tests.unit.test_render -*-
"""A frame of pixel data rendered to an 8-bit JPEG, PNG or GIF (WADO-RS rendered and
thumbnail resources, PS3.18 §8.3.5).

Pure functions, no reactor: run them in `dicomrst.common.cpu.CpuWorkers`.  The steps
follow the grayscale pipeline of PS3.3 C.11 (Modality LUT, VOI LUT, Presentation LUT),
then the spatial ones of the viewport (§8.3.5.1.3: crop, flip, scale):

1. `decode_frame`: one frame of a data set (any syntax pydicom decodes with the plugins
   `dicomrst.common.codecs` installs), with the Photometric Interpretation it came out in.
2. `to_display`, monochrome: Modality LUT (Rescale Slope/Intercept, or a Modality LUT
   Sequence), then the VOI window — the one asked for, else the object's first Window
   Center/Width with its VOI LUT Function, else the frame's own value range — with the
   LINEAR, LINEAR_EXACT and SIGMOID functions of PS3.3 C.11.2.1.2/C.11.2.1.3 to 0..255,
   rounded half up; MONOCHROME1 is then inverted (its minimum is white).  Enhanced
   multi-frame objects: Rescale and window of the frame's functional groups.
   Colour: RGB as is (and YBR_ICT/YBR_RCT, which every JPEG 2000 decoder returns as RGB),
   YBR_FULL/YBR_FULL_422 converted to RGB, PALETTE COLOR through its palette; more than 8
   bits scaled to 8.  A window does not apply to colour (PS3.3 C.11.2 is grayscale only).
3. `apply_viewport`: crop to the region, flip for a negative sw/sh, then scale keeping
   the aspect ratio to the largest size that fits vw × vh.
4. `encode`: JPEG (baseline, 8 bits, `quality`), PNG or GIF with Pillow.

No annotation is ever drawn: rendered images and thumbnails carry no patient data
beyond what the pixels themselves hold.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, convert_color_space
from pydicom.pixels.utils import as_pixel_options

from dicomrst.common.codecs import install as install_decoders
from dicomrst.common.transcode import CannotTranscode
from dicomrst.errors import NotAcceptable, NotFound, UpstreamError
from dicomrst.imaging.params import GIF, JPEG, PNG, RenderOptions, Viewport, Window

#: Thumbnails without a viewport fit in this box (the server chooses, §8.3.5.2).
THUMBNAIL_SIZE = 128

_RGB_LIKE = frozenset(("RGB", "YBR_ICT", "YBR_RCT"))
_YBR = frozenset(("YBR_FULL", "YBR_FULL_422"))
_MONOCHROME = frozenset(("MONOCHROME1", "MONOCHROME2"))


class RenderFailed(UpstreamError):
    """The object's pixel data cannot be decoded or rendered (its data is broken: 502)."""


@attrs.frozen
class DecodedFrame:
    """One decoded frame: (rows, columns) or (rows, columns, samples), and the Photometric
    Interpretation of those values (pydicom turns YBR_FULL/422 into RGB as it decodes)."""

    pixels: Any  # numpy.ndarray
    photometric: str


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def representative_frame(frames: int) -> int:
    """The 0-based frame a thumbnail shows: the middle one.  The first frames of a cine
    or dynamic series are often the least telling (before contrast arrives, the start of
    a sweep), and of a multi-frame volume the middle slice shows the most anatomy."""
    return (max(1, frames) - 1) // 2


def decode_frame(ds: Dataset, index: int = 0) -> DecodedFrame:
    """Frame `index` (0-based) of `ds`, whose ``file_meta`` names its transfer syntax.

    `CannotTranscode` (406) when no decoder here handles the syntax, `RenderFailed` (502)
    when decoding fails, `NotFound` for a frame past Number of Frames, `NotAcceptable`
    for an object without pixel data (nothing to render as an image).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NotAcceptable("the object has no pixel data: it cannot be rendered as an image")
    install_decoders()
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise RenderFailed("the object's transfer syntax is unknown")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise CannotTranscode(f"no pixel data decoder for transfer syntax {syntax} here") from None
    if not decoder.is_available:
        raise CannotTranscode(f"no pixel data decoder for transfer syntax {syntax} here")
    frames = number_of_frames(ds)
    if not 0 <= index < frames:
        raise NotFound(f"no frame {index + 1}: the object has {frames} frame(s)")
    try:
        arr, changes = decoder.as_array(ds, index=index, validate=True, **as_pixel_options(ds))
    except Exception as e:  # decoders raise RuntimeError, ValueError, ...
        raise RenderFailed(f"cannot decode frame {index + 1} ({syntax}): {e}") from None
    photometric = str(changes.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    return DecodedFrame(arr, photometric)


# -- grayscale -----------------------------------------------------------------------------


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The item of functional group `sequence` for frame `index` (per-frame, then shared)."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > i:
            inner = items[i].get(sequence)
            if inner:
                return inner[0]  # type: ignore[no-any-return]
    return None


def _first(value: Any) -> float | None:
    """The first value of a DS/IS element's value (VM 1-n), None when there is none."""
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def modality_values(pixels: Any, ds: Dataset, index: int = 0) -> Any:
    """The frame through the Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept (of the
    frame's Pixel Value Transformation when the object has functional groups), or the
    Modality LUT Sequence; float64."""
    source = _frame_item(ds, index, "PixelValueTransformationSequence") or ds
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in source:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    slope = _first(source.get("RescaleSlope"))
    intercept = _first(source.get("RescaleIntercept"))
    out = pixels.astype(np.float64)
    if slope is not None and slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def default_window(ds: Dataset, values: Any, index: int = 0) -> Window:
    """The object's first Window Center/Width with its VOI LUT Function (of the frame's
    Frame VOI LUT when it has functional groups); without one (or an unusable one), the
    LINEAR window that spans the frame's own value range (PS3.3 C.11.2.1.2.1 note: centre
    (x1 + x2 + 1) / 2, width x2 - x1 + 1)."""
    source = _frame_item(ds, index, "FrameVOILUTSequence") or ds
    center = _first(source.get("WindowCenter"))
    width = _first(source.get("WindowWidth"))
    function = str(source.get("VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if center is not None and width is not None and (width >= 1 or (function != "LINEAR" and width > 0)):
        return Window(center, width, function)
    low, high = float(np.min(values)), float(np.max(values))
    return Window((low + high + 1) / 2, high - low + 1, "LINEAR")


def apply_window(values: Any, window: Window, ymin: float = 0.0, ymax: float = 255.0) -> Any:
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID),
    as real numbers from `ymin` to `ymax`."""
    c, w = window.center, window.width
    x = np.asarray(values, dtype=np.float64)
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp() → inf far below the centre: y = ymin
            return (ymax - ymin) / (1.0 + np.exp(-4.0 * (x - c) / w)) + ymin
    if window.function == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * (ymax - ymin) + ymin
        y[x <= c - w / 2] = ymin
        y[x > c + w / 2] = ymax
        return y
    if w == 1:  # a threshold (C.11.2.1.2.1 note 5): the formula below would divide by 0
        return np.where(x <= c - 0.5, ymin, ymax)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    y[x <= c - 0.5 - (w - 1) / 2] = ymin
    y[x > c - 0.5 + (w - 1) / 2] = ymax
    return y


def _to_uint8(y: Any) -> Any:
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


#: Integer frames whose values span at most this many go through a lookup table.
_LUT_LIMIT = 1 << 20


def _grayscale(pixels: Any, ds: Dataset, window: Window | None, index: int, inverse: bool) -> Any:
    """Modality LUT, VOI and inversion to 8 bits.  Integer data goes through a lookup
    table of its value range, computed with the same arithmetic (a few thousand values
    instead of a quarter million per 512x512 frame); the rest value by value."""
    use_lut = pixels.dtype.kind in "iu" and pixels.size > 0 and "ModalityLUTSequence" not in ds
    low = high = 0
    if use_lut:
        low, high = int(pixels.min()), int(pixels.max())
        use_lut = high - low < _LUT_LIMIT
    if not use_lut:
        values = modality_values(pixels, ds, index)
        chosen = window if window is not None else default_window(ds, values, index)
        out = _to_uint8(apply_window(values, chosen))
        return 255 - out if inverse else out
    # Linear rescale: the range's extremes are the frame's, so the default window (its
    # value range) is the same as over the frame itself.
    values = modality_values(np.arange(low, high + 1, dtype=np.int64), ds, index)
    chosen = window if window is not None else default_window(ds, values, index)
    lut = _to_uint8(apply_window(values, chosen))
    if inverse:
        lut = 255 - lut
    offsets = pixels.astype(np.int32) - low if low else pixels
    return lut[offsets]


# -- colour --------------------------------------------------------------------------------


def _scale_to_8_bits(arr: Any, bits: int) -> Any:
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    top = float((1 << bits) - 1)
    return _to_uint8(arr.astype(np.float64) * (255.0 / top))


def to_display(frame: DecodedFrame, ds: Dataset, window: Window | None = None, index: int = 0) -> Any:
    """The frame as 8-bit display values: (rows, columns) grayscale or (rows, columns, 3)
    RGB (see the module's docstring for the steps)."""
    pixels, photometric = frame.pixels, frame.photometric
    if photometric in _MONOCHROME or (pixels.ndim == 2 and photometric not in ("PALETTE COLOR",)):
        return _grayscale(pixels, ds, window, index, inverse=photometric == "MONOCHROME1")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return _scale_to_8_bits(rgb, 16 if rgb.dtype.itemsize > 1 else 8)
    if photometric in _YBR:
        pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
    elif photometric not in _RGB_LIKE:
        raise CannotTranscode(f"cannot render Photometric Interpretation {photometric!r}")
    bits = int(ds.get("BitsStored") or 8 * pixels.dtype.itemsize)
    return _scale_to_8_bits(pixels, min(bits, 8 * pixels.dtype.itemsize))


# -- viewport and encoding ---------------------------------------------------------------


def fitted_size(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """`width` × `height` scaled, keeping its aspect ratio, to the largest size that fits
    `box_width` × `box_height` (at least one pixel each way)."""
    scale = min(box_width / width, box_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def apply_viewport(display: Any, viewport: Viewport | None) -> Image.Image:
    """The display values as a Pillow image, cropped, flipped and scaled as the viewport
    says (§8.3.5.1.3); unscaled without one."""
    if viewport is not None:
        rows, columns = display.shape[:2]
        left, top, right, bottom, flip_h, flip_v = viewport.region(columns, rows)
        display = display[top:bottom, left:right]
        if flip_h:
            display = display[:, ::-1]
        if flip_v:
            display = display[::-1]
    image = Image.fromarray(np.ascontiguousarray(display))
    if viewport is not None:
        size = fitted_size(image.width, image.height, viewport.width, viewport.height)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def encode(image: Image.Image, media_type: str = JPEG, quality: int = 90) -> bytes:
    """`image` as a JPEG (baseline, `quality`), PNG or GIF file."""
    out = io.BytesIO()
    if media_type == JPEG:
        image.save(out, "JPEG", quality=quality)
    elif media_type == PNG:
        # Level 3: most of level 6's size at a fraction of its time (it runs per request).
        image.save(out, "PNG", compress_level=3)
    elif media_type == GIF:
        image.save(out, "GIF")
    else:
        raise NotAcceptable(f"cannot render to {media_type}")
    return out.getvalue()


def render(frame: DecodedFrame, ds: Dataset, options: RenderOptions, index: int = 0) -> bytes:
    """Frame `index` of `ds` (decoded: `frame`) rendered as `options` ask."""
    display = to_display(frame, ds, options.window, index)
    return encode(apply_viewport(display, options.viewport), options.media_type, options.quality)


def render_dataset(ds: Dataset, options: RenderOptions, index: int = 0) -> bytes:
    """`decode_frame` then `render`: one call for a thread."""
    return render(decode_frame(ds, index), ds, options, index)


def render_animation(
    ds: Dataset, options: RenderOptions, frames: list[int] | None = None, frame_time: float | None = None
) -> bytes:
    """Frames `frames` (0-based; default all) of `ds` as one animated GIF, the multi-frame
    rendering PS3.18 allows (T8.7.4-1: ``image/gif`` for multi-frame, no default).  Each
    frame gets the window of `options` or its own default; `frame_time` (ms) defaults to
    the object's Frame Time, else 100."""
    indices = frames if frames is not None else list(range(number_of_frames(ds)))
    if not indices:
        raise RenderFailed("no frame to render")
    images = []
    for index in indices:
        display = to_display(decode_frame(ds, index), ds, options.window, index)
        images.append(apply_viewport(display, options.viewport))
    duration = frame_time if frame_time is not None else _first(ds.get("FrameTime")) or 100.0
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=round(duration), loop=0)
    return out.getvalue()


def thumbnail(
    ds: Dataset, viewport: Viewport | None = None, media_type: str = JPEG, quality: int = 80
) -> bytes:
    """The object's thumbnail: its representative (middle) frame with the object's own
    window, scaled to fit `viewport` (vw, vh only) or `THUMBNAIL_SIZE` square; never
    larger than the frame itself without a viewport.  No annotation."""
    index = representative_frame(number_of_frames(ds))
    frame = decode_frame(ds, index)
    display = to_display(frame, ds, None, index)
    if viewport is None:
        rows, columns = display.shape[:2]
        box = min(THUMBNAIL_SIZE, max(rows, columns))
        viewport = Viewport(box, box)
    return encode(apply_viewport(display, viewport), media_type, quality)

"""Rendered and thumbnail images (dicomrst.imaging): query parameters, media types, and
the pixels, decoded with Pillow and compared with a reference written from PS3.3's
pseudo-code one pixel at a time."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.errors import BadRequest, NotAcceptable
from dicomrst.imaging import params, render
from dicomrst.imaging.params import RenderOptions, Viewport, Window
from tests.support.rendering import reference_gray, reference_voi

TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def gray_dataset(
    pixels: Any,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    center: Any = None,
    width: Any = None,
    function: str | None = None,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if function is not None:
        ds.VOILUTFunction = function
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def rgb_dataset(rgb: Any, photometric: str = "RGB") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.astype(np.uint8).tobytes()
    return ds


def decoded(data: bytes) -> Any:
    return np.asarray(Image.open(io.BytesIO(data)))


def png(**kwargs: Any) -> RenderOptions:
    return RenderOptions(media_type=params.PNG, **kwargs)


def ct_slice(rows: int = 24, columns: int = 32) -> Any:
    # Stored values over the whole 12-bit range and beyond a window's edges.
    return (np.arange(rows * columns, dtype=np.int32).reshape(rows, columns) * 7 % 4096).astype(np.int16)


class WindowTests(SynchronousTestCase):
    def check(self, ds: Dataset, options: RenderOptions, want: Any) -> None:
        got = decoded(render.render_dataset(ds, options))
        self.assertEqual(got.shape, want.shape)
        np.testing.assert_array_equal(got, want)

    def test_window_parameter_each_function(self) -> None:
        stored = ct_slice()
        ds = gray_dataset(stored, slope=1.0, intercept=-1024.0, center=40, width=400)
        for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            for center, width in ((40.0, 400.0), (300.5, 1.0 if function == "LINEAR" else 0.5), (-500, 1500)):
                window = Window(center, width, function)
                want = reference_gray(stored, 1.0, -1024.0, window, monochrome1=False)
                self.check(ds, png(window=window), want)

    def test_value_by_value_path_agrees(self) -> None:
        # Integer frames go through a lookup table of their range; float frames and
        # ranges too wide for a table value by value.  Both are the reference.
        stored = ct_slice()
        ds = gray_dataset(stored, slope=1.0, intercept=-1024.0)
        for window in (Window(40, 400, "LINEAR"), Window(-100, 700, "SIGMOID")):
            want = reference_gray(stored, 1.0, -1024.0, window, monochrome1=True)
            frame = render.DecodedFrame(stored.astype(np.float32), "MONOCHROME1")
            np.testing.assert_array_equal(decoded(render.render(frame, ds, png(window=window))), want)
        wide = (ct_slice().astype(np.int64) * 1000).astype(np.int32)  # spans ~4e6 values
        window = Window(1e6, 3e6, "LINEAR_EXACT")
        frame = render.DecodedFrame(wide, "MONOCHROME2")
        want = reference_gray(wide, 1.0, 0.0, window, monochrome1=False)
        got = decoded(render.render(frame, gray_dataset(stored), png(window=window)))
        np.testing.assert_array_equal(got, want)

    def test_linear_and_linear_exact_differ_by_the_half_pixel(self) -> None:
        # The reason LINEAR_EXACT exists: at c=2048, w=4096 LINEAR maps x=2047.5 to
        # mid-grey, LINEAR_EXACT maps x=2048 there.
        values = np.array([[2047.5, 2048.0]])
        linear = render.apply_window(values, Window(2048, 4096, "LINEAR"))
        exact = render.apply_window(values, Window(2048, 4096, "LINEAR_EXACT"))
        self.assertAlmostEqual(linear[0, 0], 127.5)
        self.assertAlmostEqual(exact[0, 1], 127.5)
        self.assertNotAlmostEqual(linear[0, 1], exact[0, 1])

    def test_default_window_is_the_objects_first(self) -> None:
        stored = ct_slice()
        ds = gray_dataset(stored, slope=2.0, intercept=-2048.0, center=[100, 40], width=[800, 400])
        want = reference_gray(stored, 2.0, -2048.0, Window(100, 800, "LINEAR"), monochrome1=False)
        self.check(ds, png(), want)

    def test_default_window_uses_the_objects_function(self) -> None:
        stored = ct_slice()
        ds = gray_dataset(stored, slope=1.0, intercept=0.0, center=2000, width=1000, function="SIGMOID")
        want = reference_gray(stored, 1.0, 0.0, Window(2000, 1000, "SIGMOID"), monochrome1=False)
        self.check(ds, png(), want)

    def test_without_a_window_the_pixel_range(self) -> None:
        stored = (ct_slice() % 1000 + 24).astype(np.uint16)
        ds = gray_dataset(stored, slope=0.5, intercept=10.0)
        low, high = float(stored.min()) * 0.5 + 10, float(stored.max()) * 0.5 + 10
        window = Window((low + high + 1) / 2, high - low + 1, "LINEAR")
        want = reference_gray(stored, 0.5, 10.0, window, monochrome1=False)
        self.check(ds, png(), want)
        got = decoded(render.render_dataset(ds, png()))
        self.assertEqual((got.min(), got.max()), (0, 255))  # the range spans the output

    def test_monochrome1_is_inverted(self) -> None:
        stored = ct_slice().astype(np.uint16)
        ds = gray_dataset(stored, photometric="MONOCHROME1", center=2048, width=2048)
        want = reference_gray(stored, 1.0, 0.0, Window(2048, 2048, "LINEAR"), monochrome1=True)
        self.check(ds, png(), want)
        # The window's low end is white.
        got = decoded(render.render_dataset(ds, png()))
        self.assertEqual(got[0, 0], 255)

    def test_per_frame_functional_groups(self) -> None:
        stored = np.stack([ct_slice(), ct_slice()[::-1]])
        ds = gray_dataset(stored)
        shared = Dataset()
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = 1, -1024
        shared.PixelValueTransformationSequence = [transform]
        ds.SharedFunctionalGroupsSequence = [shared]
        frames = []
        for center in (40, 400):
            item, voi = Dataset(), Dataset()
            voi.WindowCenter, voi.WindowWidth = center, 350
            item.FrameVOILUTSequence = [voi]
            frames.append(item)
        ds.PerFrameFunctionalGroupsSequence = frames
        want = reference_gray(stored[1], 1.0, -1024.0, Window(400, 350, "LINEAR"), monochrome1=False)
        got = decoded(render.render_dataset(ds, png(), index=1))
        np.testing.assert_array_equal(got, want)

    def test_jpeg_is_the_size_asked_and_close(self) -> None:
        stored = ct_slice(64, 64)
        ds = gray_dataset(stored, center=2048, width=4096)
        want = reference_gray(stored, 1.0, 0.0, Window(2048, 4096, "LINEAR"), monochrome1=False)
        data = render.render_dataset(ds, RenderOptions(quality=95))
        image = Image.open(io.BytesIO(data))
        self.assertEqual((image.format, image.mode, image.size), ("JPEG", "L", (64, 64)))
        self.assertLess(np.abs(np.asarray(image).astype(int) - want).mean(), 8)


class ColourTests(SynchronousTestCase):
    def gradient(self) -> Any:
        rows, columns = 16, 20
        y, x = np.mgrid[0:rows, 0:columns]
        return np.stack([x * 12, y * 15, (x + y) * 6], axis=-1).astype(np.uint8)

    def test_rgb_as_is(self) -> None:
        rgb = self.gradient()
        got = decoded(render.render_dataset(rgb_dataset(rgb), png(window=Window(0, 1, "LINEAR"))))
        np.testing.assert_array_equal(got, rgb)  # a window does not apply to colour

    def test_ybr_full_is_converted(self) -> None:
        rgb = self.gradient()
        ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
        got = decoded(render.render_dataset(rgb_dataset(ybr, "YBR_FULL"), png()))
        self.assertLessEqual(np.abs(got.astype(int) - rgb).max(), 2)  # two 8-bit roundings
        raw = render.DecodedFrame(ybr, "YBR_FULL_422")  # as a frame decoded raw
        got = decoded(render.render(raw, rgb_dataset(ybr, "YBR_FULL_422"), png()))
        self.assertLessEqual(np.abs(got.astype(int) - rgb).max(), 2)

    def test_palette(self) -> None:
        ds = pydicom.dcmread(os.path.join(TEST_FILES, "examples_palette.dcm"))
        got = decoded(render.render_dataset(ds, png()))
        index = ds.pixel_array
        lut_bits = ds.RedPaletteColorLookupTableDescriptor[2]
        for channel, name in enumerate(("Red", "Green", "Blue")):
            first = ds[f"{name}PaletteColorLookupTableDescriptor"].value[1]
            data = np.frombuffer(ds[f"{name}PaletteColorLookupTableData"].value, dtype="<u2")
            entries = np.clip(index.astype(int) - first, 0, len(data) - 1)
            want = data[entries].astype(np.float64)
            if lut_bits == 16:
                want = np.floor(want * 255 / 65535 + 0.5)
            np.testing.assert_array_equal(got[..., channel], want.astype(np.uint8))

    def test_compressed_colour(self) -> None:
        ds = pydicom.dcmread(os.path.join(TEST_FILES, "SC_rgb_jpeg_gdcm.dcm"))  # JPEG lossless
        reference = pydicom.dcmread(os.path.join(TEST_FILES, "SC_rgb_rle.dcm")).pixel_array
        np.testing.assert_array_equal(decoded(render.render_dataset(ds, png())), reference)


class ViewportTests(SynchronousTestCase):
    def image(self) -> Any:
        y, x = np.mgrid[0:30, 0:40]
        return (x * 6 + y).astype(np.uint8)

    def test_crop(self) -> None:
        display = self.image()
        got = np.asarray(render.apply_viewport(display, Viewport(10, 20, 5, 3, 10, 20)))
        np.testing.assert_array_equal(got, display[3:23, 5:15])

    def test_negative_width_and_height_flip(self) -> None:
        display = self.image()
        got = np.asarray(render.apply_viewport(display, Viewport(10, 20, 5, 3, -10, 20)))
        np.testing.assert_array_equal(got, display[3:23, 5:15][:, ::-1])
        got = np.asarray(render.apply_viewport(display, Viewport(10, 20, 5, 3, 10, -20)))
        np.testing.assert_array_equal(got, display[3:23, 5:15][::-1])
        # Absolute values name the corner: -5 is column 5.
        got = np.asarray(render.apply_viewport(display, Viewport(10, 20, -5, -3, -10, -20)))
        np.testing.assert_array_equal(got, display[3:23, 5:15][::-1, ::-1])

    def test_defaults_to_the_edges(self) -> None:
        display = self.image()
        got = np.asarray(render.apply_viewport(display, Viewport(35, 27, 5, 3)))
        np.testing.assert_array_equal(got, display[3:, 5:])
        got = np.asarray(render.apply_viewport(display, Viewport(40, 25, None, None, None, 25)))
        np.testing.assert_array_equal(got, display[:25, :])

    def test_scale_keeps_the_aspect_ratio_and_fits(self) -> None:
        display = self.image()  # 40 x 30
        for box, size in (
            ((80, 80), (80, 60)),
            ((20, 300), (20, 15)),
            ((400, 45), (60, 45)),
            ((1, 1), (1, 1)),
        ):
            image = render.apply_viewport(display, Viewport(*box))
            self.assertEqual(image.size, size)
        # Cropped first, then scaled: a 10 x 20 region into 100 x 100 is 50 x 100.
        self.assertEqual(render.apply_viewport(display, Viewport(100, 100, 0, 0, 10, 20)).size, (50, 100))

    def test_no_viewport_no_scaling(self) -> None:
        ds = gray_dataset(ct_slice(24, 32))
        self.assertEqual(Image.open(io.BytesIO(render.render_dataset(ds, RenderOptions()))).size, (32, 24))

    def test_region_outside_the_image(self) -> None:
        self.assertRaises(BadRequest, render.apply_viewport, self.image(), Viewport(10, 10, 40, 0))

    def test_through_render(self) -> None:
        stored = ct_slice(24, 32)
        ds = gray_dataset(stored, center=2048, width=4096)
        options = params.parse_rendered_query({"viewport": "16,24,8,0,-16,24"}, params.PNG)
        want = reference_gray(stored, 1.0, 0.0, Window(2048, 4096, "LINEAR"), False)[0:24, 8:24][:, ::-1]
        np.testing.assert_array_equal(decoded(render.render_dataset(ds, options)), want)


class ThumbnailTests(SynchronousTestCase):
    def test_middle_frame_scaled(self) -> None:
        frames = np.stack(
            [np.full((40, 60), value, dtype=np.uint16) for value in (0, 1000, 2000, 3000, 4000)]
        )
        ds = gray_dataset(frames, center=2048, width=4096)
        image = Image.open(io.BytesIO(render.thumbnail(ds)))
        self.assertEqual(image.format, "JPEG")
        self.assertEqual(image.size, (60, 40))  # never enlarged
        middle = reference_gray(frames[2], 1.0, 0.0, Window(2048, 4096, "LINEAR"), False)
        self.assertLessEqual(abs(int(np.asarray(image).mean()) - int(middle.mean())), 1)
        self.assertEqual(render.representative_frame(5), 2)
        self.assertEqual(render.representative_frame(4), 1)
        self.assertEqual(render.representative_frame(1), 0)

    def test_default_and_asked_size(self) -> None:
        ds = gray_dataset(ct_slice(256, 512))
        self.assertEqual(Image.open(io.BytesIO(render.thumbnail(ds))).size, (128, 64))
        self.assertEqual(Image.open(io.BytesIO(render.thumbnail(ds, Viewport(64, 64)))).size, (64, 32))


class AnimationTests(SynchronousTestCase):
    def test_every_frame_in_order(self) -> None:
        frames = np.stack([np.full((10, 12), value, dtype=np.uint16) for value in (0, 2048, 4095)])
        ds = gray_dataset(frames, center=2048, width=4096)
        ds.FrameTime = 40
        image = Image.open(io.BytesIO(render.render_animation(ds, RenderOptions(media_type=params.GIF))))
        self.assertEqual((image.format, image.n_frames, image.size), ("GIF", 3, (12, 10)))
        levels = []
        for i in range(3):
            image.seek(i)
            levels.append(int(np.asarray(image.convert("L"))[0, 0]))
            self.assertEqual(image.info["duration"], 40)
        want = [reference_voi(v, 2048, 4096, "LINEAR") for v in (0, 2048, 4095)]
        for got, expected in zip(levels, want, strict=True):
            self.assertLessEqual(abs(got - expected), 1)


class QueryTests(SynchronousTestCase):
    def test_window(self) -> None:
        options = params.parse_rendered_query({"window": "40,400,linear"})
        self.assertEqual(options.window, Window(40.0, 400.0, "LINEAR"))
        self.assertEqual(params.parse_window("-0.5,1e3,linear-exact"), Window(-0.5, 1000.0, "LINEAR_EXACT"))
        self.assertEqual(params.parse_window("10,0.5,sigmoid"), Window(10.0, 0.5, "SIGMOID"))
        bad_windows = ("40,400", "40,400,LINEAR", "40,400,gamma", "a,400,linear", "40,0.5,linear")
        for bad in (*bad_windows, "40,0,sigmoid", "40,400,linear,x", ""):
            self.assertRaises(BadRequest, params.parse_rendered_query, {"window": bad})

    def test_viewport(self) -> None:
        self.assertEqual(params.parse_viewport("512,256"), Viewport(512, 256))
        self.assertEqual(
            params.parse_viewport("512,512,,,256,-256"), Viewport(512, 512, None, None, 256, -256)
        )
        self.assertEqual(params.parse_viewport("10,20,1.5,2"), Viewport(10, 20, 1.5, 2.0))
        self.assertEqual(params.parse_viewport("10,20,,,,"), Viewport(10, 20))
        for bad in (
            "512",
            "0,10",
            "-1,10",
            "1.5,10",
            "10,10,",
            "10,10,1,2,3,4,5",
            "10,10,a",
            "10,10,0,0,0,5",
        ):
            self.assertRaises(BadRequest, params.parse_viewport, bad)

    def test_thumbnail_takes_vw_vh_only_and_ignores_the_rest(self) -> None:
        options = params.parse_rendered_query(
            {"viewport": "64,64", "window": "junk", "quality": "junk", "annotation": ""}, thumbnail=True
        )
        self.assertEqual((options.viewport, options.window, options.quality), (Viewport(64, 64), None, 90))
        self.assertRaises(
            BadRequest, params.parse_rendered_query, {"viewport": "64,64,0,0,10,10"}, thumbnail=True
        )

    def test_quality(self) -> None:
        self.assertEqual(params.parse_rendered_query({"quality": "100"}).quality, 100)
        self.assertEqual(params.parse_rendered_query({}).quality, params.DEFAULT_QUALITY)
        for bad in ("0", "101", "", "9.5", "high"):
            self.assertRaises(BadRequest, params.parse_rendered_query, {"quality": bad})

    def test_annotation_is_ignored_with_a_warning(self) -> None:
        options = params.parse_rendered_query({"annotation": "patient,technique"})
        self.assertEqual(options.unsupported_annotations, ("patient", "technique"))
        self.assertEqual(
            options.warning("http://gw/aets/PACS"),
            "299 http://gw/aets/PACS: The following annotation values are not supported: patient,technique",
        )
        self.assertIsNone(params.parse_rendered_query({}).warning("x"))
        for bad in ("", "patient,", "1x", "pat ient"):
            self.assertRaises(BadRequest, params.parse_rendered_query, {"annotation": bad})

    def test_unsupported_parameters_are_ignored(self) -> None:
        self.assertEqual(params.parse_rendered_query({"iccprofile": "srgb", "charset": "x"}), RenderOptions())


class MediaTypeTests(SynchronousTestCase):
    def test_selection(self) -> None:
        select = params.select_rendered_media
        self.assertEqual(select(None), "image/jpeg")
        self.assertEqual(select("*/*"), "image/jpeg")
        self.assertEqual(select("image/*"), "image/jpeg")
        self.assertEqual(select("image/png"), "image/png")
        self.assertEqual(select("image/png, image/jpeg;q=0.5"), "image/png")
        self.assertEqual(select("image/jpeg;q=0.2, image/*;q=0.9"), "image/png")
        self.assertEqual(select("image/gif"), "image/gif")
        self.assertEqual(select("image/jpeg", "image/png"), "image/png")  # accept= first
        self.assertEqual(select("image/png", "image/webp"), "image/png")  # then the header
        self.assertRaises(NotAcceptable, select, "image/webp")
        self.assertRaises(NotAcceptable, select, "image/jpeg;q=0")
        self.assertRaises(NotAcceptable, select, "image/jpeg", allowed=(params.GIF,))
        self.assertRaises(BadRequest, select, 'image/jpeg, multipart/related; type="application/dicom"')


class EncodingTests(SynchronousTestCase):
    def test_formats(self) -> None:
        image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
        for media, name in ((params.JPEG, "JPEG"), (params.PNG, "PNG"), (params.GIF, "GIF")):
            self.assertEqual(Image.open(io.BytesIO(render.encode(image, media))).format, name)
        small = render.encode(image, params.JPEG, quality=5)
        large = render.encode(image, params.JPEG, quality=100)
        self.assertLess(len(small), len(large))
        self.assertRaises(NotAcceptable, render.encode, image, "image/webp")

    def test_frame_past_the_end(self) -> None:
        from dicomrst.errors import NotFound

        ds = gray_dataset(np.stack([ct_slice(), ct_slice()]))
        self.assertRaises(NotFound, render.render_dataset, ds, RenderOptions(), index=2)
        render.render_dataset(ds, RenderOptions(), index=1)

    def test_no_pixel_data(self) -> None:
        ds = gray_dataset(ct_slice())
        del ds.PixelData
        self.assertRaises(NotAcceptable, render.render_dataset, ds, RenderOptions())

"""WADO-RS rendered and thumbnail resources through the app (dicomrst.web.rendered,
dicomrst.wado.rendered).

The app runs on a `Clock`; its instance cache is a real one in the test's temporary
directory, fed by a `FakeBackend` whose retrieves the tests answer with pydicom's bundled
files; its `CpuWorkers` run on a pool that calls at once on the test's thread
(`InlinePool`) or only when the test says (`HeldPool`).  Images are decoded with Pillow and
compared with the per-value reference of the render tests.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dicomrst.cache import InstanceCache
from dicomrst.common.cpu import CpuWorkers
from dicomrst.imaging.params import Window
from dicomrst.imaging.render import THUMBNAIL_SIZE
from dicomrst.wado.rendered import FileHandoff
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import make_site
from tests.support.datasets import encode
from tests.support.fakes import FakeBackend, RetrieveCall
from tests.support.http import ROOT, AppRequests, Connection
from tests.support.rendering import reference_gray
from tests.support.threads import HeldPool, InlinePool, ThreadsReactor

TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
STUDY = "1.2.826.0.1.3680043.10.7"
SERIES = f"{STUDY}.1"
OTHER_SERIES = f"{STUDY}.2"
SERIES_PATH = f"/aets/PACS/studies/{STUDY}/series/{SERIES}"


class Item:
    """A bundled test file as a PACS sends it, with this test's UIDs."""

    def __init__(
        self,
        name: str,
        n: int,
        series: str = SERIES,
        series_number: int = 1,
        edit: Callable[[Dataset], Any] | None = None,
    ) -> None:
        ds = pydicom.dcmread(os.path.join(TEST_FILES, name))
        ds.StudyInstanceUID = STUDY
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = f"{series}.{n}"
        ds.InstanceNumber = n
        ds.SeriesNumber = series_number
        if edit is not None:
            edit(ds)
        self.ds = ds
        self.sop = str(ds.SOPInstanceUID)
        self.sop_class = str(ds.SOPClassUID)
        self.syntax = str(ds.file_meta.TransferSyntaxUID)
        self.data = encode(ds, implicit=self.syntax == ImplicitVRLittleEndian)
        ds.file_meta.TransferSyntaxUID = self.syntax  # encode() left it empty

    @property
    def path(self) -> str:
        return f"/aets/PACS/studies/{STUDY}/series/{self.ds.SeriesInstanceUID}/instances/{self.sop}"


def deliver(call: RetrieveCall, *items: Item, finish: bool = True) -> None:
    for item in items:
        consumer = call.sink.begin(item.sop_class, item.sop, item.syntax)
        half = len(item.data) // 2
        consumer.dataReceived(item.data[:half])
        consumer.dataReceived(item.data[half:])
        consumer.dataFinished()
    if finish:
        call.deferred.callback(len(items))


def image_of(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def parts_of(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    match = re.fullmatch(r'multipart/related; type="([^"]+)"; boundary=(\S+)', content_type)
    assert match is not None, content_type
    delimiter = b"--" + match.group(2).encode("ascii")
    chunks = body.split(b"\r\n" + delimiter)
    assert chunks[0].startswith(delimiter + b"\r\n"), body[:80]
    chunks[0] = chunks[0][len(delimiter) :]
    assert chunks[-1] == b"--\r\n", chunks[-1][:80]
    parts = []
    for chunk in chunks[:-1]:
        head, _, payload = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("ascii").split("\r\n"))
        assert int(headers["Content-Length"]) == len(payload)
        parts.append((headers, payload))
    return parts


def open_files() -> int:
    """This process's open file descriptors (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


class RenderedTestCase(AppRequests):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = FakeBackend("PACS")
        # One retrieve per miss (the series); see test_cache.InstanceFirstTests.
        self.cache = InstanceCache(self.clock, self.mktemp(), instance_first=False)
        self.cache.start()
        self.addCleanup(self.cache.stop)
        self.pool: Any = InlinePool()
        self.cpu = CpuWorkers(ThreadsReactor(self.pool), limit=1, max_waiting=1)  # type: ignore[arg-type]
        self.app = GatewayApp({"PACS": self.backend}, self.clock, cache=self.cache, cpu=self.cpu)  # type: ignore[arg-type]
        self.stub = StubTreq(self.app.resource())

    def get(self, path: str, *items: Item, **kwargs: Any) -> tuple[Any, bytes]:
        """GET `path`, answering the retrieve it starts (if any) with `items`."""
        d = self.start(path, **kwargs)
        if self.backend.retrieves and not self.backend.retrieves[-1].deferred.called:
            deliver(self.backend.retrieves[-1], *items)
        return self.finish(d)

    def rendered(self, item: Item, suffix: str = "/rendered", **kwargs: Any) -> tuple[Any, bytes]:
        return self.get(item.path + suffix, item, **kwargs)


class InstanceTests(RenderedTestCase):
    def test_ct_default_is_a_jpeg_of_the_window_of_its_pixel_range(self) -> None:
        ct = Item("CT_small.dcm", 1)
        response, body = self.rendered(ct)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(header(response, b"content-type"), "image/jpeg")
        image = image_of(body)
        self.assertEqual((image.format, image.mode, image.size), ("JPEG", "L", (128, 128)))
        # CT_small has no Window Center/Width: the default is its values' range.
        stored = ct.ds.pixel_array
        values = stored * float(ct.ds.RescaleSlope) + float(ct.ds.RescaleIntercept)
        low, high = float(values.min()), float(values.max())
        window = Window((low + high + 1) / 2, high - low + 1)
        want = reference_gray(stored, float(ct.ds.RescaleSlope), float(ct.ds.RescaleIntercept), window, False)
        self.assertLess(np.abs(np.asarray(image).astype(int) - want).mean(), 3)
        self.assertIsNone(header(response, b"warning"))

    def test_window_parameter_as_png_is_exact(self) -> None:
        ct = Item("CT_small.dcm", 1)
        response, body = self.rendered(
            ct, "/rendered?window=40,400,linear", headers={"Accept": ["image/png"]}
        )
        self.assertEqual(header(response, b"content-type"), "image/png")
        want = reference_gray(
            ct.ds.pixel_array,
            float(ct.ds.RescaleSlope),
            float(ct.ds.RescaleIntercept),
            Window(40, 400, "LINEAR"),
            False,
        )
        np.testing.assert_array_equal(np.asarray(image_of(body)), want)

    def test_monochrome1_is_inverted(self) -> None:
        def monochrome1(ds: Dataset) -> None:
            ds.PhotometricInterpretation = "MONOCHROME1"

        plain, inverted = Item("CT_small.dcm", 1), Item("CT_small.dcm", 2, edit=monochrome1)
        query = "/rendered?window=40,400,linear&accept=image/png"
        first = np.asarray(image_of(self.rendered(plain, query)[1])).astype(int)
        second = np.asarray(image_of(self.rendered(inverted, query)[1])).astype(int)
        np.testing.assert_array_equal(second, 255 - first)

    def test_viewport_scales_and_crops(self) -> None:
        ct = Item("CT_small.dcm", 1)
        _response, body = self.rendered(ct, "/rendered?viewport=64,32&accept=image/png")
        self.assertEqual(image_of(body).size, (32, 32))  # square image fitted into 64 x 32
        whole = np.asarray(image_of(self.rendered(ct, "/rendered?accept=image/png")[1]))
        self.assertEqual(self.cache.hits, 1)  # the second came from the cache
        _, body = self.rendered(ct, "/rendered?viewport=20,10,30,40,20,10&accept=image/png")
        np.testing.assert_array_equal(np.asarray(image_of(body)), whole[40:50, 30:50])

    def test_rgb_and_palette_colour(self) -> None:
        rgb = Item("examples_rgb_color.dcm", 1)
        _, body = self.rendered(rgb, "/rendered?accept=image/png")
        image = image_of(body)
        self.assertEqual((image.mode, image.size), ("RGB", (320, 240)))
        np.testing.assert_array_equal(np.asarray(image), rgb.ds.pixel_array)
        palette = Item("examples_palette.dcm", 2)
        _response, body = self.rendered(palette, "/rendered?accept=image/png")
        image = image_of(body)
        self.assertEqual((image.mode, image.size), ("RGB", (800, 350)))
        # A palette entry is 16 bits: as 8 bits, its top byte (rounded).
        want = pydicom.pixels.apply_color_lut(palette.ds.pixel_array, palette.ds)
        diff = np.abs(np.asarray(image).astype(int) - want.astype(int) / 257.0)
        self.assertLessEqual(diff.max(), 0.5 + 1e-9)

    def test_compressed_rle(self) -> None:
        rle = Item("SC_rgb_rle.dcm", 1)
        response, body = self.rendered(rle, "/rendered?accept=image/png")
        self.assertEqual(response.code, 200, body)
        np.testing.assert_array_equal(np.asarray(image_of(body)), rle.ds.pixel_array)

    def test_gif(self) -> None:
        ct = Item("CT_small.dcm", 1)
        response, body = self.rendered(ct, headers={"Accept": ["image/gif"]})
        self.assertEqual(header(response, b"content-type"), "image/gif")
        self.assertEqual(image_of(body).format, "GIF")

    def test_multipart_image_ranges_count_as_their_type(self) -> None:
        ct = Item("CT_small.dcm", 1)
        response, _body = self.rendered(ct, headers={"Accept": ['multipart/related; type="image/png"']})
        self.assertEqual(header(response, b"content-type"), "image/png")

    def test_annotation_is_not_drawn_and_warned(self) -> None:
        ct = Item("CT_small.dcm", 1)
        plain = self.rendered(ct, "/rendered?accept=image/png")[1]
        response, body = self.rendered(ct, "/rendered?annotation=patient,technique&accept=image/png")
        self.assertEqual(
            header(response, b"warning"),
            f"299 {ROOT}/aets/PACS: The following annotation values are not supported: patient,technique",
        )
        self.assertEqual(body, plain)

    def test_multi_frame_instance_is_its_first_frame_or_an_animated_gif(self) -> None:
        dose = Item("rtdose.dcm", 1)
        _, body = self.rendered(dose, "/rendered?accept=image/png")
        self.assertEqual(image_of(body).size, (10, 10))
        frame_one = self.rendered(dose, "/frames/1/rendered?accept=image/png")[1]
        self.assertEqual(body, frame_one)
        _response, body = self.rendered(dose, "/rendered?accept=image/gif")
        gif = Image.open(io.BytesIO(body))
        self.assertEqual(gif.n_frames, 15)


class FramesTests(RenderedTestCase):
    def test_one_frame_is_one_image(self) -> None:
        dose = Item("rtdose.dcm", 1)
        response, body = self.rendered(dose, "/frames/7/rendered?accept=image/png")
        self.assertEqual(header(response, b"content-type"), "image/png")
        # A frame of its own window (the frame's value range; RT Dose has no window).
        stored = dose.ds.pixel_array[6]
        low, high = float(stored.min()), float(stored.max())
        window = Window((low + high + 1) / 2, high - low + 1)
        want = reference_gray(stored, 1.0, 0.0, window, False)
        np.testing.assert_array_equal(np.asarray(image_of(body)), want)

    def test_several_frames_are_a_multipart_in_the_order_asked(self) -> None:
        dose = Item("rtdose.dcm", 1)
        response, body = self.rendered(dose, "/frames/3,1,15/rendered?accept=image/png")
        content_type = header(response, b"content-type")
        assert content_type is not None
        self.assertTrue(content_type.startswith('multipart/related; type="image/png"'), content_type)
        parts = parts_of(content_type, body)
        self.assertEqual(
            [h["Content-Location"] for h, _ in parts],
            [f"{ROOT}{dose.path}/frames/{n}/rendered" for n in (3, 1, 15)],
        )
        for (headers, payload), n in zip(parts, (3, 1, 15), strict=True):
            self.assertEqual(headers["Content-Type"], "image/png")
            single = self.rendered(dose, f"/frames/{n}/rendered?accept=image/png")[1]
            self.assertEqual(payload, single)

    def test_a_frame_past_the_last_is_404_and_a_bad_list_400(self) -> None:
        dose = Item("rtdose.dcm", 1)
        response, body = self.rendered(dose, "/frames/16/rendered")
        self.assertEqual(response.code, 404, body)
        response, body = self.get(dose.path + "/frames/0/rendered")
        self.assertEqual(response.code, 400, body)
        response, body = self.get(dose.path + "/frames/1,x/rendered")
        self.assertEqual(response.code, 400, body)


class SeriesAndStudyTests(RenderedTestCase):
    def series(self) -> list[Item]:
        def no_pixels(ds: Dataset) -> None:
            del ds.PixelData
            del ds.Rows
            del ds.Columns

        def window(n: int) -> Callable[[Dataset], None]:
            def edit(ds: Dataset) -> None:
                # Each its own window: their images differ.
                ds.WindowCenter, ds.WindowWidth = 40 * n, 400

            return edit

        return [
            Item("CT_small.dcm", 3, edit=window(3)),
            Item("CT_small.dcm", 1, edit=window(1)),
            Item("CT_small.dcm", 2, edit=window(2)),
            Item("CT_small.dcm", 4, edit=no_pixels),
        ]

    def test_series_is_a_multipart_of_its_images_by_instance_number(self) -> None:
        items = self.series()
        response, body = self.get(SERIES_PATH + "/rendered?viewport=32,32", *items)
        self.assertEqual(response.code, 200, body)
        content_type = header(response, b"content-type")
        assert content_type is not None
        parts = parts_of(content_type, body)
        base = f"{ROOT}/aets/PACS/studies/{STUDY}/series/{SERIES}/instances"
        self.assertEqual(
            [h["Content-Location"] for h, _ in parts], [f"{base}/{SERIES}.{n}/rendered" for n in (1, 2, 3)]
        )
        for headers, payload in parts:
            self.assertEqual(headers["Content-Type"], "image/jpeg")
            self.assertEqual(image_of(payload).size, (32, 32))
        call = self.backend.retrieves[0]
        self.assertEqual((call.study, call.series, call.instance), (STUDY, SERIES, None))
        # The retrieve filled the cache on the way: the instance is served from it.
        self.rendered(items[1])
        self.assertEqual((len(self.backend.retrieves), self.cache.hits), (1, 1))

    def test_study_orders_by_series_number(self) -> None:
        items = [
            Item("CT_small.dcm", 1, series=OTHER_SERIES, series_number=2),
            Item("examples_rgb_color.dcm", 5, series_number=1),
        ]
        response, body = self.get(f"/aets/PACS/studies/{STUDY}/rendered?accept=image/png", *items)
        content_type = header(response, b"content-type")
        assert content_type is not None
        parts = parts_of(content_type, body)
        self.assertEqual([image_of(p).mode for _, p in parts], ["RGB", "L"])
        self.assertEqual(self.backend.retrieves[0].series, None)

    def test_nothing_to_render_is_406_and_nothing_at_all_404(self) -> None:
        response, body = self.get(SERIES_PATH + "/rendered", self.series()[3])
        self.assertEqual(response.code, 406, body)
        # (Another series: this one is now answered from the cache.)
        response, body = self.get(f"/aets/PACS/studies/{STUDY}/series/{OTHER_SERIES}/rendered")
        self.assertEqual(response.code, 404, body)

    def test_series_thumbnail_is_its_middle_image(self) -> None:
        items = [*self.series(), Item("examples_rgb_color.dcm", 0)]
        # Images 0 (RGB), 1, 2, 3 (CT): the middle one of four is number 1.
        response, body = self.get(SERIES_PATH + "/thumbnail", *items)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(header(response, b"content-type"), "image/jpeg")
        image = image_of(body)
        self.assertEqual((image.mode, image.size), ("L", (128, 128)))
        thumbnails = [self.get(item.path + "/thumbnail")[1] for item in items[:3]]
        self.assertEqual([body == t for t in thumbnails], [False, True, False])

    def test_study_thumbnail_is_from_its_first_series(self) -> None:
        items = [
            Item("CT_small.dcm", 1, series=OTHER_SERIES, series_number=2),
            Item("examples_rgb_color.dcm", 5, series_number=1),
        ]
        _response, body = self.get(f"/aets/PACS/studies/{STUDY}/thumbnail?viewport=64,64", *items)
        image = image_of(body)
        self.assertEqual((image.mode, image.size), ("RGB", (64, 48)))


class ThumbnailTests(RenderedTestCase):
    def test_default_size_and_viewport(self) -> None:
        rgb = Item("examples_rgb_color.dcm", 1)
        image = image_of(self.rendered(rgb, "/thumbnail")[1])
        self.assertEqual(image.size, (THUMBNAIL_SIZE, THUMBNAIL_SIZE * 240 // 320))
        image = image_of(self.rendered(rgb, "/thumbnail?viewport=40,40&accept=image/png")[1])
        self.assertEqual((image.format, image.size), ("PNG", (40, 30)))

    def test_multi_frame_thumbnail_is_the_middle_frame(self) -> None:
        dose = Item("rtdose.dcm", 1)
        thumb = self.rendered(dose, "/thumbnail?accept=image/png")[1]
        frame = self.rendered(dose, "/frames/8/thumbnail?accept=image/png")[1]
        self.assertEqual(thumb, frame)
        other = self.rendered(dose, "/frames/1/thumbnail?accept=image/png")[1]
        self.assertNotEqual(thumb, other)

    def test_a_thumbnail_takes_vw_vh_only(self) -> None:
        ct = Item("CT_small.dcm", 1)
        response, body = self.get(ct.path + "/thumbnail?viewport=10,10,0,0,5,5")
        self.assertEqual(response.code, 400, body)
        self.assertEqual(self.backend.retrieves, [])  # checked before anything moves


class ErrorTests(RenderedTestCase):
    def test_bad_parameters_are_400_before_any_retrieve(self) -> None:
        ct = Item("CT_small.dcm", 1)
        for query in (
            "window=40,400",
            "viewport=0,10",
            "quality=101",
            "annotation=",
            "accept=image/png,application/dicom",
        ):
            response, body = self.get(ct.path + "/rendered?" + query)
            self.assertEqual(response.code, 400, (query, body))
        response, body = self.get(f"/aets/PACS/studies/{STUDY}/series/not-a-uid/rendered")
        self.assertEqual(response.code, 400, body)
        self.assertEqual(self.backend.retrieves, [])

    def test_nothing_acceptable_is_406(self) -> None:
        ct = Item("CT_small.dcm", 1)
        for accept in ("image/jp2", "garbage", 'multipart/related; type="image/jp2"'):
            response, body = self.get(ct.path + "/rendered", headers={"Accept": [accept]})
            self.assertEqual(response.code, 406, (accept, body))
            self.assertEqual(header(response, b"content-type"), "application/json")

    def test_unknown_aet_and_instance_are_404(self) -> None:
        response, body = self.get(f"/aets/NOPE/studies/{STUDY}/rendered")
        self.assertEqual(response.code, 404, body)
        ct = Item("CT_small.dcm", 1)
        other = Item("CT_small.dcm", 2)
        # The series came without the instance asked for.
        response, body = self.get(ct.path + "/rendered", other)
        self.assertEqual(response.code, 404, body)

    def test_no_pixel_data_is_406(self) -> None:
        def no_pixels(ds: Dataset) -> None:
            del ds.PixelData

        response, body = self.rendered(Item("CT_small.dcm", 1, edit=no_pixels))
        self.assertEqual(response.code, 406, body)

    def test_broken_pixel_data_is_502(self) -> None:
        def short(ds: Dataset) -> None:
            ds.PixelData = ds.PixelData[:100]

        response, body = self.rendered(Item("CT_small.dcm", 1, edit=short))
        self.assertEqual(response.code, 502, body)


class CpuLineTests(RenderedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.pool = HeldPool()
        self.cpu.reactor = ThreadsReactor(self.pool)  # type: ignore[assignment]

    def test_rendering_runs_in_the_pool_and_a_full_line_is_503(self) -> None:
        ct = Item("CT_small.dcm", 1)
        running = self.start(ct.path + "/rendered")
        deliver(self.backend.retrieves[0], ct)
        self.assertEqual(len(self.pool.calls), 1)  # in the pool, not on the reactor
        self.assertNoResult(running)
        waiting = self.start(ct.path + "/rendered")  # the one place in line
        response, body = self.fetch(ct.path + "/rendered")
        self.assertEqual(response.code, 503, body)
        self.assertEqual(header(response, b"retry-after"), "1")
        self.pool.run_next()
        self.assertEqual(self.finish(running)[0].code, 200)
        self.pool.run_next()
        self.assertEqual(self.finish(waiting)[0].code, 200)

    def test_a_client_that_leaves_takes_its_render_out_of_the_line(self) -> None:
        ct = Item("CT_small.dcm", 1)
        running = self.start(ct.path + "/rendered")
        deliver(self.backend.retrieves[0], ct)
        leaving = Connection(make_site(self.app.resource(), self.clock, request_timeout=30.0))
        leaving.send("GET", ct.path + "/rendered")
        self.assertEqual(self.cpu.waiting, 1)
        leaving.lose()
        self.assertEqual(self.cpu.waiting, 0)
        self.pool.run_next()
        self.assertEqual(self.finish(running)[0].code, 200)
        self.assertEqual(self.pool.calls, [])  # the one that left never ran

    def test_a_series_under_way_keeps_its_place_in_a_full_line(self) -> None:
        items = [Item("CT_small.dcm", 1), Item("CT_small.dcm", 2), Item("CT_small.dcm", 3)]
        series = self.start(SERIES_PATH + "/rendered")
        deliver(self.backend.retrieves[0], *items)  # fills the cache on the way
        self.assertEqual(self.cpu.running, 1)  # reading the instances' heads
        other = self.start(items[0].path + "/rendered")
        self.assertEqual(self.cpu.waiting, 1)
        response, body = self.fetch(items[1].path + "/rendered")
        self.assertEqual(response.code, 503, body)
        runs = 0
        while self.pool.calls:
            self.pool.run_next()
            runs += 1
            # Whoever asks while the series is under way finds the line full; the
            # series never does.
            if self.cpu.waiting:
                self.assertEqual(self.fetch(items[2].path + "/rendered")[0].code, 503)
        self.assertEqual(runs, 5)  # heads, three images, the other request
        response, body = self.finish(series)
        content_type = header(response, b"content-type")
        assert content_type is not None
        self.assertEqual(len(parts_of(content_type, body)), 3)
        self.assertEqual(self.finish(other)[0].code, 200)


class LeavingTests(RenderedTestCase):
    def test_a_client_that_leaves_a_series_stops_its_retrieve(self) -> None:
        conn = Connection(make_site(self.app.resource(), self.clock, request_timeout=30.0))
        conn.send("GET", SERIES_PATH + "/rendered")
        call = self.backend.retrieves[0]
        first, second = Item("CT_small.dcm", 1), Item("CT_small.dcm", 2)
        deliver(call, first, finish=False)
        conn.lose()
        self.assertTrue(call.cancelled)
        # What still arrives is refused, and nothing was rendered.
        with self.assertRaises(ConnectionError):
            call.sink.begin(second.sop_class, second.sop, second.syntax)
        self.assertEqual(self.pool.calls, 0)

    def test_a_file_being_read_is_closed_by_its_reader(self) -> None:
        handoff = FileHandoff(io.BytesIO(b"DICM"))
        with handoff.borrow() as f:
            handoff.drop()  # the client left while a worker reads the file
            self.assertFalse(f.closed)
            self.assertEqual(f.read(), b"DICM")
        self.assertTrue(f.closed)
        with self.assertRaises(CancelledError), handoff.borrow():
            pass  # a worker whose turn comes after the drop gets nothing

    def test_a_series_left_while_its_heads_are_read(self) -> None:
        self.pool = HeldPool()
        self.cpu.reactor = ThreadsReactor(self.pool)  # type: ignore[assignment]
        items = [Item("CT_small.dcm", 1), Item("CT_small.dcm", 2)]
        conn = Connection(make_site(self.app.resource(), self.clock, request_timeout=30.0))
        before = open_files()
        conn.send("GET", SERIES_PATH + "/rendered")
        deliver(self.backend.retrieves[0], *items)
        self.assertEqual(len(self.pool.calls), 1)  # reading the heads
        # The request holds one open file per instance (the cache's entries are closed
        # once stored).
        self.assertEqual(open_files(), before + len(items))
        conn.lose()
        # The thread's turn comes after the request gave the files up: it reads nothing.
        outcome = self.pool.run_next()
        self.assertIsInstance(outcome, Failure)
        outcome.trap(CancelledError)
        self.assertEqual((self.cpu.running, self.cpu.waiting, self.pool.calls), (0, 0, []))
        self.assertNotIn(b"200 OK", conn.transport.value())
        self.assertEqual(open_files(), before)

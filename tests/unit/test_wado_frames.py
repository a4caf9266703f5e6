"""WADO-RS frames, pixel data and bulk data through the app (dicomrst.web.frames).

The app runs on a `Clock` with StubTreq; its instance cache is a real one in the test's
temporary directory, fed by `FakeBackend` retrieves the tests drive with pydicom's bundled
files, byte for byte as a PACS sends them; CPU work runs at once on the test's thread.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import attrs
import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.cache import InstanceCache
from dicomrst.common.cpu import CpuWorkers
from dicomrst.common.part10 import read_file_meta
from dicomrst.common.uids import EXPLICIT_VR_LE
from dicomrst.errors import NotAcceptable
from dicomrst.imaging.elements import open_instance
from dicomrst.imaging.media import NATIVE_MEDIA, PartMedia
from dicomrst.wado.frames import Accepted, FrameIndexes, PartChoice, choose_output, select_part_media
from dicomrst.wado.metadata import instance_metadata_json
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import make_site
from tests.support.fakes import FakeBackend
from tests.support.frames import ANY, OCTET, expected_frames, parse_parts
from tests.support.http import CLIENT, ROOT, AppRequests
from tests.support.imaging import testdata
from tests.support.threads import ThreadsReactor

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
NATIVE = f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}"
J2K = "1.2.840.10008.1.2.4.91"


class Original:
    """A bundled file as the PACS sends it: UIDs, syntax, data set bytes."""

    def __init__(self, name: str) -> None:
        with open(get_testdata_file(name), "rb") as f:  # type: ignore[arg-type]
            self.raw = f.read()
        self.ds = dcmread(io.BytesIO(self.raw))
        meta = read_file_meta(self.raw, final=True, trust_group_length=False)
        assert meta is not None
        self.dataset = self.raw[meta.dataset_offset :]
        self.study = str(self.ds.StudyInstanceUID)
        self.series = str(self.ds.SeriesInstanceUID)
        self.sop = str(self.ds.SOPInstanceUID)
        self.syntax = str(self.ds.file_meta.TransferSyntaxUID)

    def url(self, tail: str, aet: str = "PACS") -> str:
        return f"/aets/{aet}/studies/{self.study}/series/{self.series}/instances/{self.sop}/{tail}"


class FramesTestCase(AppRequests):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = FakeBackend("PACS")
        # One retrieve per miss (the series), which `deliver` answers; the instance fetched
        # ahead of its series is test_cache.InstanceFirstTests'.
        self.cache = InstanceCache(
            self.clock, self.mktemp(), max_size=100_000_000, ttl=300.0, instance_first=False
        )
        self.cache.start()
        self.addCleanup(self.cache.stop)
        self.app = app = GatewayApp({"PACS": self.pacs}, self.clock, cache=self.cache)
        cpu = CpuWorkers(ThreadsReactor(), limit=1)  # type: ignore[arg-type]
        app.context = attrs.evolve(app.context, cpu=cpu)
        self.stub = StubTreq(app.resource())

    def deliver(self, *originals: Original, end: bool = True) -> None:
        """Answer the retrieve the request started with `originals` (and end it)."""
        self.assertTrue(self.pacs.retrieves, "no retrieve was started")
        call = self.pacs.retrieves[-1]
        for original in originals:
            consumer = call.sink.begin(str(original.ds.SOPClassUID), original.sop, original.syntax)
            data = original.dataset
            for start in range(0, len(data), 10_000):
                consumer.dataReceived(data[start : start + 10_000])
            consumer.dataFinished()
        if end:
            call.deferred.callback(len(originals))

    def get(
        self, original: Original, tail: str, accept: str | None = OCTET, **kwargs: Any
    ) -> tuple[Any, bytes]:
        headers = kwargs.pop("headers", {})
        if accept is not None:
            headers["Accept"] = accept
        d = self.start(original.url(tail), headers=headers, **kwargs)
        if self.pacs.retrieves and not self.pacs.retrieves[-1].deferred.called:
            self.deliver(original)
        return self.finish(d)

    def parts(self, response: Any, body: bytes) -> list[Any]:
        self.assertEqual(response.code, 200, body[:300])
        content_type = response.headers.getRawHeaders(b"Content-Type")[0].decode()
        return parse_parts(content_type, body)


class FramesTests(FramesTestCase):
    def check_frames(self, name: str, frames: str, accept: str = OCTET) -> list[Any]:
        original = Original(name)
        response, body = self.get(original, f"frames/{frames}", accept)
        parts = self.parts(response, body)
        want = expected_frames(original.ds)
        numbers = [int(n) for n in frames.split(",")]
        self.assertEqual([p.body for p in parts], [want[n - 1] for n in numbers])
        base = ROOT + original.url("frames/")
        self.assertEqual([p.headers["Content-Location"] for p in parts], [f"{base}{n}" for n in numbers])
        return parts

    def test_ct_native_frame(self) -> None:
        parts = self.check_frames("CT_small.dcm", "1")
        self.assertEqual(parts[0].headers["Content-Type"], NATIVE)

    def test_multi_frame_in_the_order_asked(self) -> None:
        self.check_frames("rtdose.dcm", "15,1,7,2")

    def test_odd_length_rgb(self) -> None:
        self.check_frames("SC_rgb_small_odd.dcm", "1")

    def test_big_endian_goes_out_little_endian(self) -> None:
        self.check_frames("MR_small_bigendian.dcm", "1")

    def test_rle_as_stored_with_any_syntax(self) -> None:
        parts = self.check_frames("MR_small_RLE.dcm", "1", ANY)
        self.assertEqual(parts[0].headers["Content-Type"], f"image/dicom-rle; transfer-syntax={RLE}")

    def test_jpeg2000_as_stored_with_any_syntax(self) -> None:
        original = Original("JPEG2000.dcm")
        parts = self.check_frames("JPEG2000.dcm", "1", ANY)
        self.assertEqual(parts[0].headers["Content-Type"], f"image/jp2; transfer-syntax={original.syntax}")

    def test_multi_frame_rle_as_stored(self) -> None:
        self.check_frames("SC_rgb_rle_2frame.dcm", "2,1", ANY)

    def test_compressed_type_with_and_without_transfer_syntax(self) -> None:
        original = Original("SC_rgb_jpeg_dcmtk.dcm")
        self.assertEqual(original.syntax, JPEG_BASELINE)
        for accept in (
            'multipart/related; type="image/jpeg"',
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}',
        ):
            self.pacs.retrieves.clear()
            response, body = self.get(original, "frames/1", accept)
            parts = self.parts(response, body)
            self.assertEqual([p.body for p in parts], expected_frames(original.ds)[:1])
            self.assertEqual(
                response.headers.getRawHeaders(b"Content-Type")[0].decode().split(";")[1].strip(),
                'type="image/jpeg"',
            )

    def test_compressed_frames_decoded_for_octet_stream(self) -> None:
        for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
            original = Original(name)
            response, body = self.get(original, "frames/1", OCTET)
            parts = self.parts(response, body)
            self.assertEqual(parts[0].headers["Content-Type"], NATIVE)
            arr = original.ds.pixel_array
            self.assertEqual(parts[0].body, arr.astype(arr.dtype.newbyteorder("<")).tobytes(), name)

    def test_decoded_rgb_is_pixel_interleaved(self) -> None:
        original = Original("SC_rgb_rle_2frame.dcm")
        response, body = self.get(original, "frames/2", OCTET)
        parts = self.parts(response, body)
        arr = original.ds.pixel_array[1]
        self.assertEqual(arr.shape[-1], 3)
        self.assertEqual(parts[0].body, np.ascontiguousarray(arr).tobytes())

    def test_wildcard_and_no_accept(self) -> None:
        ct = Original("CT_small.dcm")
        for accept in ("*/*", None, "multipart/related"):
            response, body = self.get(ct, "frames/1", accept)
            self.assertEqual([p.body for p in self.parts(response, body)], expected_frames(ct.ds)[:1])
        rle = Original("MR_small_RLE.dcm")
        response, body = self.get(rle, "frames/1", "*/*")
        parts = self.parts(response, body)
        self.assertEqual(parts[0].headers["Content-Type"], f"image/dicom-rle; transfer-syntax={RLE}")

    def test_typed_wildcards(self) -> None:
        rle = Original("MR_small_RLE.dcm")
        for accept in ('multipart/related; type="*/*"', 'multipart/related; type="image/*"'):
            response, body = self.get(rle, "frames/1", accept)
            parts = self.parts(response, body)
            self.assertEqual(parts[0].headers["Content-Type"], f"image/dicom-rle; transfer-syntax={RLE}")
            self.assertEqual(parts[0].body, expected_frames(rle.ds)[0])
        ct = Original("CT_small.dcm")
        response, body = self.get(ct, "frames/1", 'multipart/related; type="*/*"')
        self.assertEqual(self.parts(response, body)[0].headers["Content-Type"], NATIVE)
        response, body = self.get(ct, "frames/1", 'multipart/related; type="image/*"')
        self.assertEqual(response.code, 406, body)  # uncompressed frames are not an image type

    def test_malformed_frame_lists_are_400(self) -> None:
        ct = Original("CT_small.dcm")
        for frames in ("0", "1,1", "a", "1,,2", "-1"):
            response, body = self.fetch(ct.url(f"frames/{frames}"), headers={"Accept": OCTET})
            self.assertEqual(response.code, 400, (frames, body))
        self.assertEqual(self.pacs.retrieves, [])

    def test_malformed_uid_is_400(self) -> None:
        response, _ = self.fetch("/aets/PACS/studies/1.2/series/x.y/instances/1.3/frames/1")
        self.assertEqual(response.code, 400)

    def test_frame_past_number_of_frames_is_404(self) -> None:
        response, body = self.get(Original("rtdose.dcm"), "frames/16")
        self.assertEqual(response.code, 404, body)
        self.assertIn(b"15 frames", body)

    def test_unknown_instance_is_404(self) -> None:
        ct = Original("CT_small.dcm")
        d = self.start(ct.url("frames/1").replace(ct.sop, ct.sop + ".9"), headers={"Accept": OCTET})
        self.deliver(ct)
        response, _ = self.finish(d)
        self.assertEqual(response.code, 404)

    def test_unknown_aet_is_404(self) -> None:
        response, _ = self.fetch(Original("CT_small.dcm").url("frames/1", aet="NOPE"))
        self.assertEqual(response.code, 404)

    def test_406_names_what_was_asked_and_what_it_is(self) -> None:
        original = Original("SC_rgb_jpeg_dcmtk.dcm")
        response, body = self.get(original, "frames/1", 'multipart/related; type="image/jp2"')
        self.assertEqual(response.code, 406, body)
        self.assertIn(b"image/jp2", body)
        self.assertIn(JPEG_BASELINE.encode(), body)
        response, body = self.fetch(original.url("frames/1"), headers={"Accept": "application/dicom"})
        self.assertEqual(response.code, 406)

    def test_one_retrieve_serves_every_frame(self) -> None:
        original = Original("rtdose.dcm")
        for n in range(1, 16):
            response, body = self.get(original, f"frames/{n}")
            self.assertEqual(self.parts(response, body)[0].body, expected_frames(original.ds)[n - 1])
        self.assertEqual(len(self.pacs.retrieves), 1)
        self.assertEqual(self.pacs.retrieves[0].series, original.series)

    def test_head(self) -> None:
        original = Original("CT_small.dcm")
        response, body = self.get(original, "frames/1", method="HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertIn(b'type="application/octet-stream"', response.headers.getRawHeaders(b"Content-Type")[0])

    def test_a_large_request_is_sent_in_batches(self) -> None:
        # 15 frames of rtdose are well under one batch: shrink it to see several.
        from dicomrst.wado import frames as service

        self.patch(service, "BATCH", 1000)
        batches: list[int] = []
        batch = service.PartReader.batch

        def counted(reader: service.PartReader, budget: int | None = None) -> list[bytes]:
            pieces = batch(reader, budget)
            batches.append(sum(len(p) for p in pieces))
            return pieces

        self.patch(service.PartReader, "batch", counted)
        self.check_frames("rtdose.dcm", ",".join(str(n) for n in range(1, 16)))
        # 15 frames of 400 bytes: batches of about 1000 bytes (two or three frames with
        # their part headers), never the whole body.
        frame = len(expected_frames(Original("rtdose.dcm").ds)[0])
        self.assertGreater(len(batches), 5)
        self.assertLess(max(batches), 1000 + frame + 300)


class BypassTests(FramesTestCase):
    def test_an_aet_that_is_not_cached_retrieves_the_instance_alone(self) -> None:
        self.cache.stop()
        self.cache = InstanceCache(self.clock, self.mktemp(), max_size=100_000_000, bypass=("PACS",))
        self.cache.start()
        self.addCleanup(self.cache.stop)
        self.app.context = attrs.evolve(self.app.context, cache=self.cache)
        self.stub = StubTreq(self.app.resource())
        original = Original("rtdose.dcm")
        for n in (2, 5):
            response, body = self.get(original, f"frames/{n}")
            self.assertEqual(self.parts(response, body)[0].body, expected_frames(original.ds)[n - 1])
        self.assertEqual([c.instance for c in self.pacs.retrieves], [original.sop, original.sop])


class PixelDataTests(FramesTestCase):
    def test_instance_pixeldata_is_one_part_per_frame(self) -> None:
        original = Original("rtdose.dcm")
        response, body = self.get(original, "pixeldata")
        parts = self.parts(response, body)
        self.assertEqual([p.body for p in parts], expected_frames(original.ds))
        base = ROOT + original.url("frames/")
        self.assertEqual([p.headers["Content-Location"] for p in parts], [f"{base}{n}" for n in range(1, 16)])

    def test_compressed_pixeldata_as_stored(self) -> None:
        original = Original("SC_rgb_rle_2frame.dcm")
        response, body = self.get(original, "pixeldata", ANY)
        self.assertEqual([p.body for p in self.parts(response, body)], expected_frames(original.ds))


class StudyPixelDataTests(FramesTestCase):
    def test_series_and_study_pixeldata(self) -> None:
        ct, dose, rle = Original("CT_small.dcm"), Original("rtdose.dcm"), Original("SC_rgb_rle_2frame.dcm")
        for level in (f"/aets/PACS/studies/{ct.study}", f"/aets/PACS/studies/{ct.study}/series/{ct.series}"):
            d = self.start(level + "/pixeldata", headers={"Accept": ANY})
            call = self.pacs.retrieves[-1]
            self.assertEqual((call.study, call.instance), (ct.study, None))
            self.deliver(ct, dose, rle)
            response, body = self.finish(d)
            parts = self.parts(response, body)
            want = expected_frames(ct.ds) + expected_frames(dose.ds) + expected_frames(rle.ds)
            self.assertEqual([p.body for p in parts], want)
            series = ct.series if "/series/" in level else None
            study = f"{ROOT}/aets/PACS/studies/{ct.study}"
            locations = [
                f"{study}/series/{series or o.series}/instances/{o.sop}/frames/{n}"
                for o in (ct, dose, rle)
                for n in range(1, len(expected_frames(o.ds)) + 1)
            ]
            self.assertEqual([p.headers["Content-Location"] for p in parts], locations)
            self.assertEqual(parts[-1].headers["Content-Type"], f"image/dicom-rle; transfer-syntax={RLE}")
        # The cache filled on the way: frames of these instances need no retrieve.
        retrieves = len(self.pacs.retrieves)
        response, body = self.get(dose, "frames/3")
        self.assertEqual(self.parts(response, body)[0].body, expected_frames(dose.ds)[2])
        self.assertEqual(len(self.pacs.retrieves), retrieves)

    def test_nothing_retrieved_is_404(self) -> None:
        d = self.start("/aets/PACS/studies/1.2.3/pixeldata", headers={"Accept": OCTET})
        self.pacs.retrieves[-1].deferred.callback(0)
        response, _ = self.finish(d)
        self.assertEqual(response.code, 404)

    def test_refused_accept_before_anything_went_out_is_406(self) -> None:
        rle = Original("MR_small_RLE.dcm")
        d = self.start(
            "/aets/PACS/studies/1.2.3/pixeldata", headers={"Accept": 'multipart/related; type="image/jpeg"'}
        )
        self.deliver(rle, end=False)
        response, body = self.finish(d)
        self.assertEqual(response.code, 406, body)
        self.assertTrue(self.pacs.retrieves[-1].cancelled)  # the rest is not moved for nothing


class BulkDataTests(FramesTestCase):
    def test_pixel_data_value_multipart_by_default(self) -> None:
        original = Original("CT_small.dcm")
        response, body = self.get(original, "bulkdata/7FE00010")
        parts = self.parts(response, body)
        self.assertEqual([p.body for p in parts], [original.ds.PixelData])
        self.assertEqual(parts[0].headers["Content-Location"], ROOT + original.url("bulkdata/7FE00010"))

    def test_single_part_and_ranges(self) -> None:
        original = Original("CT_small.dcm")
        value = original.ds.PixelData
        response, body = self.get(original, "bulkdata/7FE00010", "application/octet-stream")
        self.assertEqual((response.code, body), (200, value))
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/octet-stream"])
        self.assertEqual(response.headers.getRawHeaders(b"Accept-Ranges"), [b"bytes"])
        for header, want, content_range in (
            ("bytes=0-99", value[:100], f"bytes 0-99/{len(value)}"),
            ("bytes=100-", value[100:], f"bytes 100-{len(value) - 1}/{len(value)}"),
            ("bytes=-10", value[-10:], f"bytes {len(value) - 10}-{len(value) - 1}/{len(value)}"),
        ):
            response, body = self.get(
                original, "bulkdata/7FE00010", "application/octet-stream", headers={"Range": header}
            )
            self.assertEqual((response.code, body), (206, want), header)
            self.assertEqual(response.headers.getRawHeaders(b"Content-Range"), [content_range.encode()])
        past = {"Range": f"bytes={len(value)}-"}
        response, body = self.get(original, "bulkdata/7FE00010", "application/octet-stream", headers=past)
        self.assertEqual(response.code, 416, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Range"), [f"bytes */{len(value)}".encode()])

    def test_big_endian_value_is_swapped(self) -> None:
        original = Original("MR_small_bigendian.dcm")
        response, body = self.get(original, "bulkdata/7FE00010", "application/octet-stream")
        self.assertEqual(response.code, 200)
        arr = original.ds.pixel_array
        self.assertEqual(body, arr.astype(arr.dtype.newbyteorder("<")).tobytes())

    def test_every_bulk_data_uri_of_the_metadata_resolves(self) -> None:
        # Threshold 0: every binary and numeric value becomes a BulkDataURI, nested ones
        # (the ECG's Waveform Data in its Waveform Sequence items) too.
        nested = 0
        for name in ("waveform_ecg.dcm", "CT_small.dcm", "rtdose.dcm"):
            original = Original(name)
            base = ROOT + original.url("bulkdata")
            metadata = instance_metadata_json(original.dataset, original.syntax, base, threshold=0)
            uris = re.findall(r'"BulkDataURI":"([^"]+)"', metadata.decode())
            self.assertTrue(uris, name)
            for uri in uris:
                path = uri[len(base) + 1 :]
                nested += "/" in path
                response, body = self.get(original, f"bulkdata/{path}", "application/octet-stream")
                self.assertEqual((response.code, body), (200, raw_value(original.raw, path)), (name, path))
                response, body = self.get(original, f"bulkdata/{path}")
                parts = self.parts(response, body)
                self.assertEqual([p.body for p in parts], [raw_value(original.raw, path)])
                self.assertEqual(parts[0].headers["Content-Location"], uri)
        self.assertGreater(nested, 4)
        self.assertEqual(len(self.pacs.retrieves), 3)  # one per instance: then the cache

    def test_unknown_path_is_404(self) -> None:
        original = Original("CT_small.dcm")
        for path in ("00091234", "nonsense", "00081140/7/00081150"):
            response, body = self.get(original, f"bulkdata/{path}")
            self.assertEqual(response.code, 404, (path, body))

    def test_compressed_pixel_data_is_one_part_per_frame(self) -> None:
        original = Original("SC_rgb_rle_2frame.dcm")
        response, body = self.get(original, "bulkdata/7FE00010", ANY)
        self.assertEqual([p.body for p in self.parts(response, body)], expected_frames(original.ds))


def raw_value(raw: bytes, path: str) -> bytes:
    """The stored bytes of the (little-endian) value at a BulkDataURI `path`."""
    ds: Dataset = dcmread(io.BytesIO(raw))
    steps = path.split("/")
    for n in range(0, len(steps) - 1, 2):
        ds = ds[int(steps[n], 16)].value[int(steps[n + 1])]
    value = ds.get_item(int(steps[-1], 16)).value
    assert isinstance(value, bytes)
    return value


class NegotiationTests(AppRequests):
    def test_octet_stream_any_is_as_stored(self) -> None:
        choice = select_part_media(ANY, None)
        jpeg = PartMedia("image/jpeg", JPEG_BASELINE)
        self.assertEqual(choose_output(choice, JPEG_BASELINE, jpeg).media, jpeg)

    def test_q_values_pick(self) -> None:
        choice = select_part_media(f"{OCTET}; q=0.9, {ANY}; q=0.1", None)
        jpeg = PartMedia("image/jpeg", JPEG_BASELINE)
        out = choose_output(choice, JPEG_BASELINE, jpeg, decodable=True)
        self.assertEqual((out.media, out.decode), (NATIVE_MEDIA, True))

    def test_accept_param_first(self) -> None:
        choice = select_part_media("*/*", 'multipart/related; type="image/jpeg"')
        self.assertEqual(choice.accepted, (Accepted("image/jpeg", None, 1.0),))

    def test_undecodable_is_406_unless_stored_is_accepted(self) -> None:
        mpeg = "1.2.840.10008.1.2.4.101"
        video = PartMedia("video/mpeg", mpeg)
        error = self.assertRaises(
            NotAcceptable, choose_output, select_part_media(OCTET, None), mpeg, video, decodable=False
        )
        self.assertIn("cannot be decoded here", error.message)
        self.assertIn(mpeg, error.message)
        out = choose_output(select_part_media(f"{OCTET}, {ANY}; q=0.5", None), mpeg, video, decodable=False)
        self.assertEqual((out.media, out.decode), (video, False))

    def test_single_part_only_where_allowed(self) -> None:
        self.assertRaises(NotAcceptable, select_part_media, "application/octet-stream", None)
        choice = select_part_media("application/octet-stream", None, single_part=True)
        self.assertIsInstance(choice, PartChoice)


class SlowClient(StringTransport):
    """A connection whose send buffer fills at `limit` unread bytes: it then pauses its
    producer (the HTTP channel, which pauses the response's), as a socket's does."""

    limit = 2000

    def __init__(self) -> None:
        super().__init__(peerAddress=CLIENT)
        self.read_up_to = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        self._check()

    def _check(self) -> None:
        if len(self.value()) - self.read_up_to > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def read(self) -> None:
        """The client takes everything sent so far."""
        self.read_up_to = len(self.value())
        if self.producer is not None:
            self.producer.resumeProducing()


class PacingTests(FramesTestCase):
    """The body goes out a batch at a time, each read once the transport took the last."""

    def setUp(self) -> None:
        super().setUp()
        from dicomrst.wado import frames as service

        self.patch(service, "BATCH", 1000)
        self.batches: list[int] = []
        batch = service.PartReader.batch

        def counted(reader: service.PartReader, budget: int | None = None) -> list[bytes]:
            self.batches.append(1)
            return batch(reader, budget)

        self.patch(service.PartReader, "batch", counted)
        self.original = Original("rtdose.dcm")  # 15 frames of 400 bytes
        site = make_site(self.app.resource(), self.clock, request_timeout=600)
        self.transport = SlowClient()
        self.protocol = site.buildProtocol(CLIENT)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)
        path = self.original.url("frames/" + ",".join(str(n) for n in range(1, 16)))
        self.protocol.dataReceived(f"GET {path} HTTP/1.1\r\nHost: gateway.example\r\n\r\n".encode())
        self.deliver(self.original)

    def test_a_full_send_buffer_holds_the_next_batch(self) -> None:
        held = len(self.batches)
        self.assertLess(held, 5)  # of the 7 the body takes
        sent = len(self.transport.value())
        self.assertEqual(len(self.batches), held)
        while not self.transport.value().endswith(b"\r\n0\r\n\r\n"):
            self.transport.read()
            self.assertGreater(len(self.transport.value()), sent, "nothing more after a read")
            sent = len(self.transport.value())
        self.assertGreater(len(self.batches), held)
        head, _, chunked = self.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        body = dechunk(chunked)
        content_type = next(
            line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.startswith(b"Content-Type")
        )
        parts = parse_parts(content_type.decode(), body)
        self.assertEqual([p.body for p in parts], expected_frames(self.original.ds))

    def test_a_client_that_leaves_stops_the_reading(self) -> None:
        held = len(self.batches)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.transport.read()
        self.assertEqual(len(self.batches), held)  # nothing more read for nobody


def dechunk(data: bytes) -> bytes:
    out = []
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        data = rest[size + 2 :]


class FrameIndexesTests(SynchronousTestCase):
    """The frame index of a file is walked once, and again when the file is another."""

    def test_remembered_by_file_identity(self) -> None:
        memo = FrameIndexes(size=2)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(testdata("rtdose.dcm"))
        with open(path, "rb") as f:
            first = memo.index(f, open_instance(f))
        with open(path, "rb") as f:
            self.assertIs(memo.index(f, open_instance(f)), first)
        # Replaced by another file under the same name (as a new cache entry is): walked again.
        os.rename(path, path + ".old")
        with open(path, "wb") as f:
            f.write(testdata("CT_small.dcm"))
        with open(path, "rb") as f:
            other = memo.index(f, open_instance(f))
        self.assertIsNot(other, first)
        self.assertEqual((first.number_of_frames, other.number_of_frames), (15, 1))

    def test_not_a_file_is_walked_each_time(self) -> None:
        memo = FrameIndexes()
        data = testdata("CT_small.dcm")
        one, two = io.BytesIO(data), io.BytesIO(data)
        self.assertIsNot(memo.index(one, open_instance(one)), memo.index(two, open_instance(two)))
        self.assertEqual(len(memo._indexes), 0)

    def test_bounded(self) -> None:
        memo = FrameIndexes(size=1)
        for name in ("rtdose.dcm", "CT_small.dcm"):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(testdata(name))
            with open(path, "rb") as f:
                memo.index(f, open_instance(f))
        self.assertEqual(len(memo._indexes), 1)

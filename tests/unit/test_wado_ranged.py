"""Frames read by byte range (`dicomrst.wado.ranged`): the planning of reads, and the
bodies it yields compared with the whole-object path (`prepare_frames` on the same
bytes), against an in-memory object store that counts what it served."""

from __future__ import annotations

import io
import re
from typing import Any

import attrs
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from dicomrst.backends.interfaces import IRangedReads
from dicomrst.backends.values import ObjectChanged, ObjectRange
from dicomrst.common.cpu import CpuWorkers
from dicomrst.errors import NotFound
from dicomrst.imaging.bulkdata import parse_bulk_path
from dicomrst.imaging.extent import Extent, Span, read_extent
from dicomrst.imaging.framelist import FrameNotFound
from dicomrst.wado.frames import prepare_bulk, prepare_frames, select_part_media
from dicomrst.wado.ranged import (
    HEAD_BYTES,
    RangedBody,
    RangedFrames,
    assemble_read,
    index_head,
    plan_reads,
)
from tests.support.imaging import image, part10, testdata
from tests.support.threads import ThreadsReactor

ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NATIVE_ONLY = 'multipart/related; type="application/octet-stream"'
BOUNDARY = re.compile(rb"boundary=([^;\s]+)")


def native(
    rows: int, columns: int, frames: int, bits: int = 16, syntax: str = ExplicitVRLittleEndian
) -> bytes:
    ds = image(rows, columns, frames, bits=bits)
    size = rows * columns * frames * bits // 8
    ds.PixelData = bytes((n * 7 + n // 251) % 256 for n in range(size))
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    return part10(ds, syntax)


@implementer(IRangedReads)
@attrs.define
class MemoryObjects:
    """One object per SOP Instance UID, read by range; counts reads and bytes."""

    objects: dict[str, bytes]
    version: str = '"v1"'
    reads: list[tuple[int, int]] = attrs.Factory(list)
    served: int = 0

    def read_range(
        self, study: str, series: str, sop: str, start: int, stop: int, *, version: str | None = None
    ) -> Deferred[ObjectRange]:
        if sop not in self.objects:
            return fail(NotFound(sop))
        if version is not None and version != self.version:
            return fail(ObjectChanged(sop))
        data = self.objects[sop]
        self.reads.append((start, stop))
        got = data[start:stop]
        self.served += len(got)
        return succeed(ObjectRange(got, start, len(data), self.version))


def body_of(prepared_first: list[bytes], rest: list[bytes]) -> bytes:
    return b"".join(prepared_first + rest)


def parts(body: bytes, content_type: str) -> list[bytes]:
    """The part bodies of a multipart body (headers dropped)."""
    match = BOUNDARY.search(content_type.encode())
    assert match is not None
    boundary = b"--" + match.group(1).strip(b'"')
    pieces = body.split(b"\r\n" + boundary)
    first = pieces[0]
    assert first.startswith(boundary), first[:80]
    out = []
    for piece in [first[len(boundary) :], *pieces[1:]]:
        if piece.startswith(b"--"):
            break
        out.append(piece.split(b"\r\n\r\n", 1)[1])
    return out


class PlanReadsTests(SynchronousTestCase):
    def test_consecutive_frames_are_one_read_within_the_budget(self) -> None:
        frames = [Extent.of(Span(1000 + n * 100, 100)) for n in range(10)]
        reads = plan_reads([b"h1", frames[0], b"h2", frames[1], b"h3", frames[2], b"end"], budget=1000)
        self.assertEqual(len(reads), 1)
        self.assertEqual(reads[0].span, Span(1000, 300))
        literals = [c.literal for c in reads[0].chunks if c.extent is None]
        self.assertEqual(literals, [b"h1", b"h2", b"h3", b"end"])
        reads = plan_reads(frames, budget=350)
        self.assertEqual(
            [r.span for r in reads], [Span(1000, 300), Span(1300, 300), Span(1600, 300), Span(1900, 100)]
        )

    def test_frames_in_reverse_order_still_share_a_read(self) -> None:
        frames = [Extent.of(Span(1000 + n * 100, 100)) for n in range(3)]
        reads = plan_reads(list(reversed(frames)), budget=1000)
        self.assertEqual([r.span for r in reads], [Span(1000, 300)])
        self.assertEqual([c.extent for c in reads[0].chunks], list(reversed(frames)))

    def test_far_apart_frames_are_separate_reads(self) -> None:
        near, far = Extent.of(Span(0, 100)), Extent.of(Span(10_000, 100))
        self.assertEqual(len(plan_reads([near, far], budget=1 << 20, gap=1000)), 2)
        self.assertEqual(len(plan_reads([near, far], budget=1 << 20, gap=10_000)), 1)

    def test_a_large_frame_is_sliced_to_the_budget(self) -> None:
        frame = Extent.of(Span(64, 1000), swap=2)
        reads = plan_reads([frame], budget=300)
        self.assertEqual(len(reads), 4)
        self.assertTrue(all(r.span is not None and r.span.length <= 300 for r in reads))
        data = bytes(n % 256 for n in range(2000))
        out = b"".join(piece for r in reads for piece in assemble_read(r, data[r.span.offset : r.span.end]))  # type: ignore[union-attr]
        self.assertEqual(out, read_extent(io.BytesIO(data), frame))

    def test_literals_only(self) -> None:
        [read] = plan_reads([b"a", b"b"])
        self.assertIsNone(read.span)
        self.assertEqual(assemble_read(read, b""), [b"a", b"b"])


class IndexHeadTests(SynchronousTestCase):
    def test_native_from_the_head_only(self) -> None:
        data = native(256, 256, 20)
        index = index_head(data[:HEAD_BYTES], len(data))
        assert index is not None
        self.assertEqual(index.number_of_frames, 20)
        self.assertEqual(index.frame(20).spans[0].end, len(data))

    def test_head_that_does_not_reach_the_pixel_data(self) -> None:
        ds = image(8, 8, 1)
        ds.ImageComments = "x" * 9000
        ds.PixelData = b"\x00" * 64
        data = part10(ds, ExplicitVRLittleEndian)
        self.assertIsNone(index_head(data[:4096], len(data)))

    def test_deflated_is_never_located_from_a_head(self) -> None:
        ds = image(8, 8, 2)
        ds.PixelData = b"\x01" * 128
        data = part10(ds, DeflatedExplicitVRLittleEndian)
        self.assertIsNone(index_head(data, len(data)))

    def test_encapsulated_with_extended_offset_table(self) -> None:
        frames = [bytes([n]) * (5000 + n) for n in range(30)]
        ds = image(8, 8, 30)
        value, offsets, lengths = encapsulate_extended(frames)
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = value, offsets, lengths
        ds["PixelData"].VR = "OB"
        data = part10(ds, "1.2.840.10008.1.2.4.50")
        self.assertGreater(len(data), 3 * 4096)
        index = index_head(data[:4096], len(data))
        assert index is not None
        self.assertEqual(index.rule, "extended offset table")

    def test_encapsulated_without_table_past_the_head(self) -> None:
        frames = [bytes([n]) * 5000 for n in range(30)]
        ds = image(8, 8, 30)
        ds.PixelData = encapsulate(frames, has_bot=False)
        ds["PixelData"].VR = "OB"
        data = part10(ds, "1.2.840.10008.1.2.4.50")
        self.assertIsNone(index_head(data[:4096], len(data)))


class RangedFramesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cpu = CpuWorkers(ThreadsReactor(), limit=1)  # type: ignore[arg-type]
        self.ranged = RangedFrames(heads=2, budget=1 << 20, min_size=0)

    def prepare(
        self, store: MemoryObjects, sop: str, numbers: list[int] | None, accept: str = ANY
    ) -> RangedBody | None:
        choice = select_part_media(accept, None)
        d = Deferred.fromCoroutine(
            self.ranged.prepare(
                self.cpu, store, "S3", ("1.2", "1.3", sop), numbers, choice, "http://x/frames"
            )
        )
        result: RangedBody | None = self.successResultOf(d)
        return result

    def drain(self, body: RangedBody) -> bytes:
        rest: list[bytes] = []
        while not body.done:
            rest += self.successResultOf(Deferred.fromCoroutine(body.next()))
        return body_of(body.first, rest)

    def whole(self, data: bytes, numbers: list[int] | None, accept: str = ANY) -> list[bytes]:
        prepared = prepare_frames(
            io.BytesIO(data), numbers, select_part_media(accept, None), "http://x/frames"
        )
        body = list(prepared.first)
        while not prepared.reader.done:
            body += prepared.reader.batch()
        return parts(b"".join(body), prepared.content_type())

    def assertSameFrames(self, data: bytes, numbers: list[int] | None, accept: str = ANY) -> MemoryObjects:
        sop = f"1.4.{len(self.ranged.heads)}.{self.ranged.head_reads}"  # a new object each time
        store = MemoryObjects({sop: data})
        body = self.prepare(store, sop, numbers, accept)
        assert body is not None
        self.assertEqual(parts(self.drain(body), body.content_type), self.whole(data, numbers, accept))
        return store

    def test_native_frames_identical_and_only_their_bytes_read(self) -> None:
        data = native(512, 512, 40)  # 20 MB
        store = self.assertSameFrames(data, [7])
        self.assertEqual(
            store.reads, [(0, HEAD_BYTES), (store.reads[1][0], store.reads[1][0] + 512 * 512 * 2)]
        )
        self.assertLess(store.served, HEAD_BYTES + 512 * 512 * 2 + 1)
        # The head is remembered: the next frame is one read.
        store.reads.clear()
        body = self.prepare(store, next(iter(store.objects)), [40, 39])
        assert body is not None
        self.drain(body)
        self.assertEqual(len(store.reads), 1)

    def test_a_small_object_is_one_read(self) -> None:
        data = native(64, 64, 4)
        self.assertLess(len(data), HEAD_BYTES)
        store = self.assertSameFrames(data, [2, 4])
        self.assertEqual(store.reads, [(0, HEAD_BYTES)])

    def test_objects_below_the_minimum_size_take_the_whole_path(self) -> None:
        self.ranged.min_size = 2 << 20
        store = MemoryObjects({"small": native(512, 512, 3), "large": native(512, 512, 5)})
        self.assertIsNone(self.prepare(store, "small", [1]))
        self.assertIsNone(self.prepare(store, "small", [2]))  # remembered: no second head read
        self.assertEqual(store.reads, [(0, HEAD_BYTES)])
        self.assertIsNotNone(self.prepare(store, "large", [1]))
        choice = select_part_media("application/octet-stream", None, single_part=True)
        d = Deferred.fromCoroutine(
            self.ranged.prepare_bulk(
                self.cpu,
                store,
                "S3",
                ("1.2", "1.3", "small"),
                parse_bulk_path("7FE00010"),
                choice,
                "x",
                "y",
                None,
            )
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(store.reads), 3)  # the large one's head and frame only

    def test_many_frames_in_budget_sized_reads(self) -> None:
        data = native(256, 256, 50)
        store = self.assertSameFrames(data, None)
        self.assertTrue(all(stop - start <= 1 << 20 for start, stop in store.reads[1:]))
        self.assertEqual(sum(stop - start for start, stop in store.reads[1:]), 256 * 256 * 2 * 50)

    def test_big_endian_and_rtdose(self) -> None:
        self.assertSameFrames(native(64, 64, 5, syntax=ExplicitVRBigEndian), [5, 1, 3])
        self.assertSameFrames(testdata("rtdose.dcm"), [1, 5, 3])

    def test_extended_offset_table_passed_through(self) -> None:
        frames = [bytes([n]) * (5000 + n) + b"\xff\xd9" for n in range(30)]
        ds = image(8, 8, 30)
        value, offsets, lengths = encapsulate_extended(frames)
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = value, offsets, lengths
        ds["PixelData"].VR = "OB"
        data = part10(ds, "1.2.840.10008.1.2.4.50")
        self.assertSameFrames(data, [30, 2])

    def test_fallbacks(self) -> None:
        frames = [bytes([n]) * 5000 for n in range(30)]
        ds = image(8, 8, 30)
        ds.PixelData = encapsulate(frames, has_bot=False)
        ds["PixelData"].VR = "OB"
        store = MemoryObjects({"1.4": part10(ds, "1.2.840.10008.1.2.4.50")})
        self.assertIsNone(self.prepare(store, "1.4", [1]))  # fragments past the head
        # Decoding needs the whole data set.
        small = b"".join(bytes([n]) * 64 for n in range(2))
        ds = image(8, 8, 2)
        ds.PixelData = encapsulate([small[:64], small[64:]])
        ds["PixelData"].VR = "OB"
        store.objects["1.5"] = part10(ds, "1.2.840.10008.1.2.5")
        self.assertIsNone(self.prepare(store, "1.5", [1], NATIVE_ONLY))
        # The object changed since its head was read: forgotten, whole-object path.
        store.objects["1.6"] = native(32, 32, 4)
        self.assertIsNotNone(self.prepare(store, "1.6", [1]))
        store.version = '"v2"'
        self.assertIsNone(self.prepare(store, "1.6", [1]))
        self.assertNotIn(("S3", "1.6"), self.ranged.heads)

    def test_deleted_object_is_404_and_its_head_forgotten(self) -> None:
        store = MemoryObjects({"1.4": native(256, 256, 4)})
        self.assertIsNotNone(self.prepare(store, "1.4", [1]))
        del store.objects["1.4"]
        choice = select_part_media(ANY, None)
        d = Deferred.fromCoroutine(
            self.ranged.prepare(self.cpu, store, "S3", ("1.2", "1.3", "1.4"), [2], choice, "x")
        )
        self.failureResultOf(d, NotFound)
        self.assertNotIn(("S3", "1.4"), self.ranged.heads)

    def test_frame_past_the_object_is_404_before_any_frame_read(self) -> None:
        store = MemoryObjects({"1.4": native(32, 32, 4)})
        choice = select_part_media(ANY, None)
        d = Deferred.fromCoroutine(
            self.ranged.prepare(self.cpu, store, "S3", ("1.2", "1.3", "1.4"), [5], choice, "x")
        )
        self.failureResultOf(d, FrameNotFound)
        self.assertEqual(len(store.reads), 1)

    def test_heads_are_bounded(self) -> None:
        store = MemoryObjects({sop: native(8, 8, 2) for sop in ("1", "2", "3")})
        for sop in ("1", "2", "3"):
            self.prepare(store, sop, [1])
        self.assertEqual(list(self.ranged.heads), [("S3", "2"), ("S3", "3")])


class RangedBulkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cpu = CpuWorkers(ThreadsReactor(), limit=1)  # type: ignore[arg-type]
        self.ranged = RangedFrames(budget=1 << 16, min_size=0)

    def both(self, data: bytes, path: str, accept: str, range_header: str | None = None) -> tuple[Any, Any]:
        """(ranged body, whole-object `Prepared`) of the value at `path`, drained: their
        bodies replace `first`."""
        store = MemoryObjects({"1.4": data})
        choice = select_part_media(accept, None, single_part=True)
        bulk = parse_bulk_path(path)
        d = Deferred.fromCoroutine(
            self.ranged.prepare_bulk(
                self.cpu, store, "S3", ("1.2", "1.3", "1.4"), bulk, choice, "x/b", "x/f", range_header
            )
        )
        body = self.successResultOf(d)
        whole = prepare_bulk(io.BytesIO(data), bulk, choice, "x/b", "x/f", range_header)
        if body is not None:
            rest: list[bytes] = []
            while not body.done:
                rest += self.successResultOf(Deferred.fromCoroutine(body.next()))
            body.first = [b"".join(body.first + rest)]
        pieces = list(whole.first)
        while not whole.reader.done:
            pieces += whole.reader.batch()
        return body, (whole, b"".join(pieces), store)

    def test_pixel_data_value_with_a_range(self) -> None:
        data = native(256, 256, 10)
        body, (whole, expected, store) = self.both(
            data, "7FE00010", "application/octet-stream", "bytes=1000-299999"
        )
        self.assertEqual(body.first, [expected])
        self.assertEqual((body.length, body.byte_range), (whole.length, whole.byte_range))
        self.assertEqual(body.content_type, whole.content_type())
        self.assertEqual(sum(stop - start for start, stop in store.reads[1:]), 299_000)

    def test_pixel_data_value_multipart(self) -> None:
        data = native(64, 64, 3)
        body, (whole, expected, _store) = self.both(data, "7FE00010", NATIVE_ONLY)
        self.assertEqual(parts(body.first[0], body.content_type), parts(expected, whole.content_type()))
        self.assertIsNone(body.length)

    def test_value_past_the_head_takes_the_whole_path(self) -> None:
        ds = image(512, 512, 1, bits=16)
        ds.PixelData = b"\x00" * (512 * 512 * 2)
        ds.add_new(0x7FE10010, "OB", b"\x01" * 100)  # a private value after the pixel data
        data = part10(ds, ExplicitVRLittleEndian)
        body, _ = self.both(data, "7FE10010", "application/octet-stream")
        self.assertIsNone(body)


class CoalescedHeadTests(SynchronousTestCase):
    def test_concurrent_calls_read_the_head_once(self) -> None:
        cpu = CpuWorkers(ThreadsReactor(), limit=1)  # type: ignore[arg-type]
        ranged = RangedFrames()
        data = native(64, 64, 4)
        pending: list[Deferred[ObjectRange]] = []

        @implementer(IRangedReads)
        class Slow:
            def read_range(self, *args: Any, **kwargs: Any) -> Deferred[ObjectRange]:
                d: Deferred[ObjectRange] = Deferred()
                pending.append(d)
                return d

        first = Deferred.fromCoroutine(ranged.head(cpu, Slow(), "S3", "1", "2", "3"))
        second = Deferred.fromCoroutine(ranged.head(cpu, Slow(), "S3", "1", "2", "3"))
        self.assertEqual(len(pending), 1)
        pending[0].callback(ObjectRange(data[:HEAD_BYTES], 0, len(data), '"v"'))
        self.assertIs(self.successResultOf(first)[0], self.successResultOf(second)[0])
        # The reader's client leaves: the other caller reads the head itself.
        ranged.forget("S3", "3")
        first = Deferred.fromCoroutine(ranged.head(cpu, Slow(), "S3", "1", "2", "3"))
        second = Deferred.fromCoroutine(ranged.head(cpu, Slow(), "S3", "1", "2", "3"))
        first.cancel()
        self.failureResultOf(first)
        self.assertEqual(len(pending), 3)
        pending[2].callback(ObjectRange(data[:HEAD_BYTES], 0, len(data), '"v"'))
        self.assertEqual(self.successResultOf(second)[0].size, len(data))

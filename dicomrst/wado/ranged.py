# -*- test-case-name: tests.unit.test_wado_ranged -*-
"""Frames of an instance read by byte range from its stored object (a backend that
provides `IRangedReads`: S3), without the whole object and without the instance cache.

On a cache miss the web layer asks `RangedFrames.prepare` first.  It reads the object's
head (`HEAD_BYTES`, one ranged read), indexes its frames from the head alone
(`open_instance(..., size=...)` + `index_frames`: native frames always, encapsulated
ones when the Extended Offset Table or the fragment headers lie in the head), then plans
the body: each frame's `Extent` cut into slices of at most `READ_BUDGET` bytes, and
neighbouring slices merged into one read (`plan_reads`), so consecutive frames of a
multi-frame object come in one GET and no request holds more than about `READ_BUDGET`
bytes.  Reads carry the head's version (S3: ``If-Match`` on its ETag), so a frame never
mixes two versions of an object.

`prepare` answers None, and the caller takes the whole-object path (the cache's series
retrieve), for an object under `MIN_SIZE` (ranged reads pay off for large objects, whose
first frame would otherwise wait for the whole object; a series of small ones comes
faster through the cache's one retrieve), and when ranged reads cannot serve the
request: the head does not locate the
frames (pixel data or its fragment headers past the head, a deflated data set, a
malformed object: the whole-object path reports it properly), the frames must be
decoded, the store refused ranges, or the object changed since its head was read.

What a head showed is remembered per (AET, SOP Instance UID) in a small LRU
(`HEADS` entries, a `FrameIndex` and the object's size and version each: a few hundred
bytes for native frames, 16 bytes per frame with an offset table), so a viewer's call per
frame of a multi-frame object costs one GET each after the first.  The head's bytes are
not kept.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from dicomrst.backends.interfaces import IRangedReads
from dicomrst.backends.values import ObjectChanged, RangesRefused
from dicomrst.common.cpu import CpuWorkers
from dicomrst.common.tags import PIXEL_DATA_TAGS
from dicomrst.errors import NotFound
from dicomrst.imaging.bulkdata import BulkPath, BulkValue, locate_bulk
from dicomrst.imaging.byterange import ByteRange, parse_range
from dicomrst.imaging.elements import open_instance
from dicomrst.imaging.extent import Extent, Span, StoredObjectError
from dicomrst.imaging.frames import FrameIndex, index_frames
from dicomrst.imaging.media import NATIVE_MEDIA, frame_media
from dicomrst.logs import logger
from dicomrst.wado.frames import Output, PartChoice, choose_output, multipart_only, plan_frames
from dicomrst.wado.multipart import MultipartWriter

log = logger("dicomrst.wado")

#: Bytes of an object read to locate its frames (as the S3 metadata path reads).
HEAD_BYTES = 64 << 10
#: The most one ranged read brings (and one response holds at a time).
READ_BUDGET = 4 << 20
#: Unwanted bytes between two slices that are still read in one request rather than two
#: (a round trip to S3 costs more than this at any usable bandwidth).
MAX_GAP = 256 << 10
#: Objects whose head is remembered.
HEADS = 128
#: Objects smaller than this take the whole-object path (the cache's series retrieve):
#: waiting for the whole object costs little, and a series of them comes faster through
#: one concurrent retrieve than through two GETs per instance (measured against moto: 100
#: single-frame CTs, 6 requests at a time, 1.2-1.4 s by range, 0.75 s by the cache).
MIN_SIZE = 4 << 20


# -- planning (pure) -------------------------------------------------------------------------


@attrs.frozen
class Chunk:
    """A piece of the body: `literal` bytes (a part header, the close delimiter) or the
    bytes of `extent`, read from the object."""

    literal: bytes = b""
    extent: Extent | None = None


@attrs.frozen
class Read:
    """One ranged read: `span` of the object (None: nothing to read) and the body pieces
    made from it, in body order."""

    span: Span | None
    chunks: tuple[Chunk, ...]


def split_extent(extent: Extent, budget: int) -> list[Extent]:
    """`extent` in slices of at most `budget` bytes out (a bit-packed frame stays whole)."""
    if extent.bits is not None or extent.size <= budget:
        return [extent]
    return [extent.slice(start, min(start + budget, extent.size)) for start in range(0, extent.size, budget)]


def plan_reads(pieces: Sequence[bytes | Extent], budget: int = READ_BUDGET, gap: int = MAX_GAP) -> list[Read]:
    """The reads that produce `pieces` (literals and extents, in body order): extents
    sliced to `budget`, and a slice joined to the read before it when the read then spans
    at most `budget` bytes of which at most `gap` are not wanted."""
    reads: list[Read] = []
    chunks: list[Chunk] = []
    lo = hi = wanted = 0
    reading = False

    def flush() -> None:
        if chunks:
            reads.append(Read(Span(lo, hi - lo) if reading else None, tuple(chunks)))

    for piece in pieces:
        if isinstance(piece, bytes):
            chunks.append(Chunk(literal=piece))
            continue
        for extent in split_extent(piece, budget):
            if not extent.spans:
                chunks.append(Chunk(extent=extent))
                continue
            first = min(span.offset for span in extent.spans)
            last = max(span.end for span in extent.spans)
            if reading:
                new_lo, new_hi = min(lo, first), max(hi, last)
                if new_hi - new_lo <= budget and new_hi - new_lo - wanted - extent.stored_length <= gap:
                    lo, hi, wanted = new_lo, new_hi, wanted + extent.stored_length
                    chunks.append(Chunk(extent=extent))
                    continue
                flush()
                chunks = []
            lo, hi, wanted, reading = first, last, extent.stored_length, True
            chunks.append(Chunk(extent=extent))
    flush()
    return reads


def assemble_read(read: Read, data: bytes) -> list[bytes]:
    """The body pieces of `read`, from `data` (the object's bytes from ``read.span``'s
    offset); `StoredObjectError` when `data` ends before a frame does."""
    base = read.span.offset if read.span is not None else 0
    out = []
    for chunk in read.chunks:
        if chunk.extent is None:
            out.append(chunk.literal)
            continue
        stored = b"".join(data[span.offset - base : span.end - base] for span in chunk.extent.spans)
        out.append(chunk.extent.assemble(stored))
    return out


def index_head(data: bytes, size: int) -> FrameIndex | None:
    """The frames of an object of `size` bytes located from its first bytes `data`, or
    None when those do not locate them (or say something is wrong: the whole object
    will tell what)."""
    try:
        with open_instance(io.BytesIO(data), size=size) as stored:
            if not stored.addressable:  # inflated: offsets are not the object's
                return None
            return index_frames(stored)
    except (StoredObjectError, NotFound):
        return None


def locate_in_head(data: bytes, size: int, path: BulkPath) -> tuple[str, BulkValue] | None:
    """(transfer syntax, the value at `path`) of an object of `size` bytes, located from
    its first bytes `data`, or None as `index_head`."""
    try:
        with open_instance(io.BytesIO(data), size=size) as stored:
            if not stored.addressable:
                return None
            return stored.transfer_syntax, locate_bulk(stored, path)
    except (StoredObjectError, NotFound):
        return None


# -- serving ----------------------------------------------------------------------------------


@attrs.frozen
class ObjectHead:
    """What an object's head showed: its `size`, `version`, and frames (None: not
    locatable from the head)."""

    size: int
    version: str | None
    index: FrameIndex | None


class RangedBody:
    """A response read range by range: `content_type`, then `first` (the first read's
    pieces, read before any header is sent), then `next()` until `done`.  `length` and
    `byte_range` as `Prepared`'s (a single-part value)."""

    def __init__(
        self,
        backend: IRangedReads,
        where: tuple[str, str, str],
        version: str | None,
        reads: list[Read],
        content_type: str,
        cpu: CpuWorkers,
        length: int | None = None,
        byte_range: ByteRange | None = None,
        preloaded: bytes = b"",
    ) -> None:
        self.backend = backend
        self.preloaded = preloaded
        self.length = length
        self.byte_range = byte_range
        self.where = where
        self.version = version
        self.content_type = content_type
        self.cpu = cpu
        self.first: list[bytes] = []
        self.bytes_read = 0
        self._reads: Iterator[Read] = iter(reads)
        self._left = len(reads)

    @property
    def done(self) -> bool:
        return self._left == 0

    async def next(self) -> list[bytes]:
        """The pieces of the next read."""
        read = next(self._reads)
        self._left -= 1
        data = b""
        if read.span is not None and read.span.end <= len(self.preloaded):
            data = self.preloaded[read.span.offset : read.span.end]  # a small object: all in its head
        elif read.span is not None:
            study, series, sop = self.where
            got = await self.backend.read_range(
                study, series, sop, read.span.offset, read.span.end, version=self.version
            )
            data = got.data
            self.bytes_read += len(data)
        if all(chunk.extent is None or chunk.extent.direct for chunk in read.chunks):
            return assemble_read(read, data)  # slicing only
        pieces: list[bytes] = await self.cpu.run(assemble_read, read, data)  # byte swapping
        return pieces


class RangedFrames:
    """Frames by ranged reads for every backend that provides `IRangedReads`; one per
    gateway (it holds the LRU of heads).  Blocking work (walking a head, byte swapping)
    runs in the `cpu` each call is given: the gateway's one line of CPU work."""

    def __init__(self, heads: int = HEADS, budget: int = READ_BUDGET, min_size: int = MIN_SIZE) -> None:
        self.min_size = min_size
        self.max_heads = heads
        self.budget = budget
        self.heads: OrderedDict[tuple[str, str], ObjectHead] = OrderedDict()
        self.head_reads = 0
        self._reading: dict[tuple[str, str], list[Deferred[ObjectHead | None]]] = {}

    def forget(self, aet: str, sop: str) -> None:
        self.heads.pop((aet, sop), None)

    async def head(
        self, cpu: CpuWorkers, backend: IRangedReads, aet: str, study: str, series: str, sop: str
    ) -> tuple[ObjectHead, bytes]:
        """What the head of `sop`'s object shows (remembered, or read now: once for
        concurrent calls, as a viewer asks for several frames of one object at once), and
        the head's bytes when this call read them (else b"")."""
        key = (aet, sop)
        known = self.heads.get(key)
        if known is not None:
            self.heads.move_to_end(key)
            return known, b""
        waiting = self._reading.get(key)
        if waiting is not None:
            mine: Deferred[ObjectHead | None] = Deferred()
            waiting.append(mine)
            found = await mine
            if found is None:  # the reader's client left: read it for ours
                return await self.head(cpu, backend, aet, study, series, sop)
            return found, b""
        self._reading[key] = []
        try:
            got = await backend.read_range(study, series, sop, 0, HEAD_BYTES)
            self.head_reads += 1
            index = await cpu.run(index_head, got.data, got.size)
        except CancelledError:
            for d in self._reading.pop(key, []):
                d.callback(None)
            raise
        except BaseException:
            failure = Failure()
            for d in self._reading.pop(key, []):
                d.errback(failure)
            raise
        known = ObjectHead(got.size, got.version, index)
        self.heads[key] = known
        while len(self.heads) > self.max_heads:
            self.heads.popitem(last=False)
        for d in self._reading.pop(key, []):
            d.callback(known)
        return known, got.data

    async def prepare(
        self,
        cpu: CpuWorkers,
        backend: IRangedReads,
        aet: str,
        where: tuple[str, str, str],
        numbers: Sequence[int] | None,
        choice: PartChoice,
        location: str,
    ) -> RangedBody | None:
        """The body of frames `numbers` (None: all) of instance ``where`` = (study,
        series, sop), its first read done; None when ranged reads cannot serve it (see
        the module).  Raises what the frames path raises before anything is sent
        (`FrameNotFound`, `FramesNotSeparable`, `NotAcceptable`, `NotFound`...)."""
        study, series, sop = where
        try:
            head, preloaded = await self.head(cpu, backend, aet, study, series, sop)
        except RangesRefused:
            return None
        index = head.index
        if index is None or head.size < self.min_size:
            return None
        output: Output = choose_output(multipart_only(choice), index.transfer_syntax, index.media)
        if output.decode:
            return None  # decoding needs the whole data set
        wanted = range(1, index.number_of_frames + 1) if numbers is None else numbers
        try:
            parts = plan_frames(index, wanted, output, location)
        except StoredObjectError:
            return None  # the whole object shows where (or whether) the frame is
        writer = MultipartWriter()
        pieces: list[bytes | Extent] = []
        for part in parts:
            assert part.extent is not None
            pieces.append(writer.part_header(output.media.content_type, part.location))
            pieces.append(part.extent)
        pieces.append(writer.close())
        content_type = writer.content_type(output.media.media_type, output.media.transfer_syntax)
        reads = plan_reads(pieces, self.budget)
        body = RangedBody(backend, where, head.version, reads, content_type, cpu, preloaded=preloaded)
        return await self._start(aet, sop, body)

    async def _start(self, aet: str, sop: str, body: RangedBody) -> RangedBody | None:
        """`body` with its first read done, or None when that read shows ranged reads
        cannot serve it."""
        try:
            body.first = await body.next()
        except (ObjectChanged, RangesRefused, StoredObjectError) as e:
            log.info("ranged read of {sop} at {aet} not possible: {why}", sop=sop, aet=aet, why=str(e))
            self.forget(aet, sop)
            return None
        except NotFound:
            self.forget(aet, sop)  # deleted since its head was read: 404, and no stale head
            raise
        return body

    async def prepare_bulk(
        self,
        cpu: CpuWorkers,
        backend: IRangedReads,
        aet: str,
        where: tuple[str, str, str],
        path: BulkPath,
        choice: PartChoice,
        location: str,
        frames_location: str,
        range_header: str | None,
    ) -> RangedBody | None:
        """The value at `path` as `prepare_bulk` of `dicomrst.wado.frames` serves it,
        read by range; None when ranged reads cannot serve it.  The head is read each
        time (only frames' heads are remembered): a value is asked for once per viewer,
        a frame many times."""
        study, series, sop = where
        known = self.heads.get((aet, sop))
        if known is not None and known.size < self.min_size:
            return None
        try:
            got = await backend.read_range(study, series, sop, 0, HEAD_BYTES)
        except RangesRefused:
            return None
        self.head_reads += 1
        if got.size < self.min_size:
            return None
        located = await cpu.run(locate_in_head, got.data, got.size, path)
        if located is None:
            return None
        syntax, value = located
        if value.encapsulated and not path.steps and path.tag in PIXEL_DATA_TAGS:
            return await self.prepare(cpu, backend, aet, where, None, choice, frames_location)
        media = frame_media(syntax, True) if value.encapsulated else NATIVE_MEDIA
        output = choose_output(choice, syntax, media, decodable=False)
        extent = value.extent
        if output.multipart:
            writer = MultipartWriter()
            pieces: list[bytes | Extent] = [
                writer.part_header(output.media.content_type, location),
                extent,
                writer.close(),
            ]
            content_type = writer.content_type(output.media.media_type, output.media.transfer_syntax)
            reads = plan_reads(pieces, self.budget)
            body = RangedBody(backend, where, got.version, reads, content_type, cpu, preloaded=got.data)
        else:
            byte_range = parse_range(range_header, extent.size)
            if byte_range is not None:
                extent = extent.slice(byte_range.start, byte_range.stop)
            reads = plan_reads([extent], self.budget)
            media_type = output.media.media_type
            body = RangedBody(
                backend, where, got.version, reads, media_type, cpu, extent.size, byte_range, got.data
            )
        return await self._start(aet, sop, body)

# -*- test-case-name: tests.unit.test_wado_frames -*-
"""Frames, pixel data and bulk data of one stored instance, as response parts (PS3.18
§10.4.1.1.3-§10.4.1.1.5, §8.7.3.3).

Pure, reactor-free: `select_part_media` reads the Accept, `choose_output` decides how an
object's frames (or a value) go out, `plan_frames` / `plan_value` list the parts, and
`PartReader` produces the bytes of the body piece by piece from the stored file, in
batches of about `BATCH` bytes, so the web layer runs each batch in a worker thread
(`dicomrst.common.cpu.CpuWorkers`) and never holds a whole many-frame body.

Accept, as implemented (ranges from the ``accept=`` parameter first, then the header;
no header counts as ``*/*``):

* ``multipart/related; type="application/octet-stream"`` without ``transfer-syntax`` or
  with Explicit VR Little Endian: uncompressed, little endian (PS3.18 T8.7.3-4); native
  frames as they are stored (big endian swapped), compressed ones decoded here.
* ``...; type="application/octet-stream"; transfer-syntax=*`` (what OHIF sends): each
  frame as stored, compressed or not, each part labelled with its real media type and
  syntax (``image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50``): Cornerstone's loader
  picks its decoder by the part's ``transfer-syntax``.
* ``multipart/related; type="image/jpeg"`` (or another media type of Table 8.7.3-5,
  old aliases too) with ``transfer-syntax=`` the stored syntax or ``*``: as stored.
  Without the parameter, any syntax of that media type is accepted (PS3.18 says the
  media type's default syntax, but dicomweb-client sends the bare type for
  ``media_types=("image/jpeg",)``, and a strict reading would refuse JPEG baseline data
  to it).  Compressed data in another syntax is not transcoded (406).
  ``type="image/*"``: any image media type, as stored.
* ``*/*``, ``multipart/*``, untyped ``multipart/related`` and ``multipart/related;
  type="*/*"`` (dicomweb-client's default for frames): octet-stream for
  uncompressed data; compressed data as stored, in its media type (a wildcard takes any
  type, and decoding costs a core per frame for a client that named no preference;
  Microsoft's DICOM server made the same change, its #3252).
* Single-part ``application/octet-stream``: only where the caller allows it (a bulk data
  value, `single_part`); ignored elsewhere.  Anything else is ignored; nothing left:
  `NotAcceptable` (406) naming what was asked and what the object is.

Higher q wins; on a tie the stored form (no decoding).
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import attrs

from dicomrst.common.accept import MediaRange, sources
from dicomrst.common.tags import PIXEL_DATA_TAGS
from dicomrst.common.transcode import CannotTranscode, can_decompress
from dicomrst.common.uids import EXPLICIT_VR_LE
from dicomrst.errors import NotAcceptable
from dicomrst.imaging.bulkdata import BulkPath, locate_bulk
from dicomrst.imaging.byterange import ByteRange, parse_range
from dicomrst.imaging.elements import StoredInstance, open_instance
from dicomrst.imaging.extent import Extent, iter_extent
from dicomrst.imaging.frames import FrameIndex, index_frames
from dicomrst.imaging.media import (
    COMPRESSED_MEDIA,
    MEDIA_ALIASES,
    NATIVE_MEDIA,
    OCTET_STREAM,
    PartMedia,
    frame_media,
)
from dicomrst.wado.multipart import MultipartWriter

#: Bytes a `PartReader` batch gathers before handing them on (at least one piece; a frame
#: larger than this is read in `CHUNK`-sized pieces, a decoded one whole).
BATCH = 4 << 20
CHUNK = 1 << 20

_MEDIA_TYPES = frozenset(COMPRESSED_MEDIA.values()) | {OCTET_STREAM}
_MEDIA_BY_LOWER = {m.lower(): m for m in _MEDIA_TYPES}


@attrs.frozen
class Accepted:
    """One acceptable form: `media` type; `syntax` a UID, ``*`` or None (any syntax of
    the media type); `wildcard`: it came from ``*/*`` and the like; `multipart`."""

    media: str
    syntax: str | None
    q: float
    wildcard: bool = False
    multipart: bool = True

    def matches(self, part: PartMedia) -> bool:
        if self.wildcard or (self.media == OCTET_STREAM and self.syntax == "*"):
            return True  # */* takes any type; octet-stream with transfer-syntax=* as stored
        if self.media.endswith("/*"):
            return part.media_type.lower().startswith(self.media[:-1])
        if self.media != part.media_type:
            return False
        return self.syntax in (None, "*", part.transfer_syntax)


@attrs.frozen
class PartChoice:
    """What the Accept allows, and what the request asked for (for a 406's message)."""

    accepted: tuple[Accepted, ...]
    asked: str


def _part_type(rng: MediaRange) -> tuple[str | None, bool]:
    """The part media type a range names (None: not one for bulk data) and whether it is a
    wildcard range."""
    if rng.media in ("*/*", "multipart/*"):
        return OCTET_STREAM, True
    if rng.media == "multipart/related":
        part = rng.params.get("type")
        if part is None:
            return OCTET_STREAM, True
        if part == "*/*":
            return OCTET_STREAM, True  # dicomweb-client's default for frames
        if part.endswith("/*") and any(m.startswith(part[:-1]) for m in _MEDIA_BY_LOWER):
            return part, False  # image/*: any image media type, as stored
        part = MEDIA_ALIASES.get(part, part)
        return _MEDIA_BY_LOWER.get(part), False
    return None, False


def select_part_media(
    accept_header: str | None, accept_param: str | None, *, single_part: bool = False
) -> PartChoice:
    """The acceptable forms of frame, pixel data or bulk data parts, from the first Accept
    source that has any (see the module).  `single_part`: a bare ``application/octet-stream``
    body is possible.  `NotAcceptable` when none is."""
    asked = accept_param if accept_param and accept_param.strip() else accept_header
    shown = "no Accept" if asked is None or not asked.strip() else repr(asked[:200])
    for ranges in sources(accept_header, accept_param):
        found: list[Accepted] = []
        for rng in ranges:
            if rng.q <= 0:
                continue
            if rng.media == OCTET_STREAM:
                if single_part and rng.params.get("transfer-syntax", EXPLICIT_VR_LE) == EXPLICIT_VR_LE:
                    found.append(Accepted(OCTET_STREAM, EXPLICIT_VR_LE, rng.q, multipart=False))
                continue
            media, wildcard = _part_type(rng)
            if media is None:
                continue
            syntax = rng.params.get("transfer-syntax")
            if media == OCTET_STREAM:
                syntax = EXPLICIT_VR_LE if wildcard else (syntax or EXPLICIT_VR_LE)
                if syntax not in (EXPLICIT_VR_LE, "*"):
                    continue  # a compressed syntax is not octet-stream: ignored (§8.7.7)
            found.append(Accepted(media, syntax, rng.q, wildcard))
        if found:
            return PartChoice(tuple(found), shown)
    raise NotAcceptable(
        f"{shown} asks for nothing bulk data or frames are available as: "
        'multipart/related; type="application/octet-stream" (uncompressed, the default; '
        "transfer-syntax=* for frames as stored) or a compressed media type of PS3.18 "
        "Table 8.7.3-5 (image/jpeg, image/jls, image/jp2, image/dicom-rle, ...)"
    )


@attrs.frozen
class Output:
    """How the parts go out: `media` (their Content-Type), `decode` (compressed frames
    decoded to native bytes here), `multipart` (False: one bare body)."""

    media: PartMedia
    decode: bool = False
    multipart: bool = True


def _best(choice: PartChoice, media: PartMedia, *, wildcards: bool = True) -> Accepted | None:
    best: Accepted | None = None
    for accepted in choice.accepted:
        if not wildcards and accepted.wildcard:
            continue
        if accepted.matches(media) and (best is None or accepted.q > best.q):
            best = accepted
    return best


def choose_output(
    choice: PartChoice, stored_syntax: str, media: PartMedia | None, *, decodable: bool | None = None
) -> Output:
    """The `Output` for data stored in `stored_syntax` whose as-stored form is `media`
    (None: a syntax without a media type), or `NotAcceptable` naming both sides.

    `decodable`: frames may be decoded (None: pydicom has a decoder for the syntax).
    """
    if media == NATIVE_MEDIA:
        found = _best(choice, NATIVE_MEDIA)
        if found is not None:
            return Output(NATIVE_MEDIA, multipart=found.multipart)
        raise _refused(choice, "uncompressed (application/octet-stream)", stored_syntax)
    if decodable is None:
        decodable = can_decompress(stored_syntax)
    stored = _best(choice, media) if media is not None else None
    decoded = _best(choice, NATIVE_MEDIA) if decodable else None
    if media is not None and stored is not None and (decoded is None or stored.q >= decoded.q):
        return Output(media)
    if decoded is not None:
        return Output(NATIVE_MEDIA, decode=True, multipart=decoded.multipart)
    what = f"compressed ({media.content_type})" if media is not None else "compressed"
    why = "" if decodable else "; it cannot be decoded here"
    raise _refused(choice, what + why, stored_syntax)


def _refused(choice: PartChoice, what: str, stored_syntax: str) -> CannotTranscode:
    return CannotTranscode(
        f"{choice.asked} cannot be served: the data is stored {what} in transfer syntax "
        f'{stored_syntax}; ask for multipart/related; type="application/octet-stream"; '
        "transfer-syntax=* to get it as stored"
    )


# -- the parts -----------------------------------------------------------------------------


@attrs.frozen
class Part:
    """One part: its `extent` in the stored file, or (`extent` None) frame `index` (from
    0) decoded; its Content-Location."""

    location: str
    extent: Extent | None
    index: int = 0


def plan_frames(index: FrameIndex, numbers: Sequence[int], output: Output, location: str) -> list[Part]:
    """One part per frame of `numbers`, in their order, located at ``{location}/{n}``
    (`FrameNotFound` past Number of Frames before anything is read)."""
    extents = index.frames(numbers)
    if output.decode:
        return [Part(f"{location}/{n}", None, n - 1) for n in numbers]
    return [Part(f"{location}/{n}", extent) for n, extent in zip(numbers, extents, strict=True)]


def native_bytes(pixels: Any, ds: Any) -> bytes:
    """A decoded frame as uncompressed octets: little endian, Bits Allocated per sample,
    samples interleaved (Planar Configuration 0, the order pydicom returns them in)."""
    import numpy as np  # decoding is the rarer path: numpy loads with the first decoded frame

    bits = int(ds.get("BitsAllocated") or pixels.dtype.itemsize * 8)
    if bits % 8:
        raise CannotTranscode(f"decoded frames of Bits Allocated {bits} cannot be sent uncompressed")
    kind = pixels.dtype.kind if pixels.dtype.kind in "iuf" else "u"
    return bytes(np.ascontiguousarray(pixels, dtype=np.dtype(f"<{kind}{bits // 8}")).tobytes())


class PartReader:
    """The body of a response, piece by piece, read from `source` (a stored instance's
    seekable file; `dataset` opens it as a pydicom data set when a frame is decoded).

    Not thread-safe: `batch` is called from one thread at a time (the web layer awaits
    each before the next).  `writer` None: one bare body of the single part.
    """

    def __init__(
        self,
        source: BinaryIO,
        parts: Sequence[Part],
        media: PartMedia,
        writer: MultipartWriter | None,
        dataset: Callable[[], Any] | None = None,
        closers: Sequence[Callable[[], object]] = (),
        *,
        close_body: bool = True,
    ) -> None:
        self.source = source
        self.parts = parts
        self.media = media
        self.writer = writer
        self._dataset = dataset
        self._ds: Any = None
        self._pieces = self._generate()
        self._closers = list(closers)
        self._close_body = close_body
        self._lock = threading.Lock()
        self._running = False
        self._closing = False
        self.done = False

    def close_also(self, close: Callable[[], object]) -> None:
        """Call `close` too when the reader closes (before any batch runs)."""
        self._closers.append(close)

    def close(self) -> None:
        """Close the files read from: now, or when the batch running in a thread ends
        (a request cancelled meanwhile must not close them under it)."""
        with self._lock:
            self._closing = True
            if self._running:
                return
        self._close_files()

    def _close_files(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            close()

    def _decoded(self, index: int) -> bytes:
        from dicomrst.imaging.render import decode_frame  # numpy, Pillow: loaded when first needed

        if self._ds is None:
            if self._dataset is None:
                raise CannotTranscode("no data set to decode the frame from")
            self._ds = self._dataset()
        return native_bytes(decode_frame(self._ds, index).pixels, self._ds)

    def _generate(self) -> Iterator[tuple[bool, bytes]]:
        """(is part data, bytes) in body order."""
        for part in self.parts:
            if self.writer is not None:
                yield False, self.writer.part_header(self.media.content_type, part.location)
            if part.extent is None:
                yield True, self._decoded(part.index)
            else:
                for piece in iter_extent(self.source, part.extent, CHUNK):
                    yield True, piece
        if self.writer is not None and self._close_body:
            yield False, self.writer.close()

    def batch(self, budget: int | None = None) -> list[bytes]:
        """The next pieces, about `budget` bytes (the first frame's data at least, so
        the first batch raises what the first frame raises); `done` after the last."""
        if budget is None:
            budget = BATCH
        with self._lock:
            if self._closing:
                raise ValueError("the reader is closed")
            self._running = True
        try:
            pieces: list[bytes] = []
            size = 0
            data_seen = False
            for data, piece in self._pieces:
                pieces.append(piece)
                size += len(piece)
                data_seen = data_seen or data
                if size >= budget and data_seen:
                    return pieces
            self.done = True
            return pieces
        finally:
            with self._lock:
                self._running = False
                closing = self._closing
            if closing:
                self._close_files()


# -- preparing a response, in a worker thread --------------------------------------------------


@attrs.frozen
class Prepared:
    """A response ready to stream: its `reader` (the first `first` pieces already read),
    `output`, and `byte_range` / `length` for a single-part value (None: all of it)."""

    reader: PartReader
    output: Output
    first: list[bytes]
    length: int | None = None
    byte_range: ByteRange | None = None

    def content_type(self) -> str:
        if self.reader.writer is None:
            return self.output.media.media_type
        media = self.output.media
        return self.reader.writer.content_type(media.media_type, media.transfer_syntax)


def _dataset_of(source: BinaryIO) -> Callable[[], Any]:
    def load() -> Any:
        from pydicom import dcmread

        source.seek(0)
        return dcmread(source, force=True)

    return load


class FrameIndexes:
    """The frame index of recently served files, by file identity (device, inode,
    modification time, size): a viewer asks for each frame of a cached instance in a
    request of its own, and walking the head again for each (about 0.4 ms of a CT
    slice's 260 elements, in the CPU line, holding the GIL) was a third of a warm frame's
    cost.  A file replaced (a new cache entry under the same name) has another identity.
    Bounded; shared by the CPU worker threads, hence the lock."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._indexes: OrderedDict[tuple[int, int, int, int], FrameIndex] = OrderedDict()
        self._lock = threading.Lock()

    def index(self, source: BinaryIO, stored: StoredInstance) -> FrameIndex:
        try:
            st = os.fstat(source.fileno())
        except (AttributeError, OSError, io.UnsupportedOperation):
            return index_frames(stored)  # not a file (a head in memory, a spool)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            found = self._indexes.get(key)
            if found is not None:
                self._indexes.move_to_end(key)
                return found
        index = index_frames(stored)
        with self._lock:
            self._indexes[key] = index
            while len(self._indexes) > self.size:
                self._indexes.popitem(last=False)
        return index


#: The gateway's one memo (a pure function's results; nothing here waits or does I/O).
FRAME_INDEXES = FrameIndexes()


def prepare_frames(
    source: BinaryIO,
    numbers: Sequence[int] | None,
    choice: PartChoice,
    location: str,
    *,
    first: bool = True,
    writer: MultipartWriter | None = None,
    close_body: bool = True,
) -> Prepared:
    """Frames `numbers` (None: all, as ``.../pixeldata``) of the Part-10 instance in
    `source`, one part each at ``{location}/{n}``; the first batch read unless `first`
    is False (HEAD).  `writer`: the body's, when it holds more instances (then
    `close_body` False but for the last).  Raises before anything is sent: `NoPixelData`, `FrameNotFound`,
    `FramesNotSeparable`, `NotAcceptable`, `StoredObjectError`, and what reading or
    decoding the first frame raises.  Blocking: run it in a worker thread."""
    stored = open_instance(source)
    try:
        index = FRAME_INDEXES.index(source, stored)
        if numbers is None:
            numbers = range(1, index.number_of_frames + 1)
        output = choose_output(multipart_only(choice), index.transfer_syntax, index.media)
        parts = plan_frames(index, numbers, output, location)
        reader = PartReader(
            stored.source,
            parts,
            output.media,
            writer if writer is not None else MultipartWriter(),
            _dataset_of(source),
            (stored.close,),
            close_body=close_body,
        )
        return Prepared(reader, output, reader.batch() if first else [])
    except BaseException:
        stored.close()
        raise


def multipart_only(choice: PartChoice) -> PartChoice:
    """`choice` without single-part forms (many parts, or one of several frames);
    `NotAcceptable` when nothing is left."""
    accepted = tuple(a for a in choice.accepted if a.multipart)
    if not accepted:
        raise NotAcceptable(
            f"{choice.asked}: pixel data of many frames (or several frames) needs "
            'multipart/related; type="application/octet-stream" or a compressed media type'
        )
    return PartChoice(accepted, choice.asked)


def prepare_bulk(
    source: BinaryIO,
    path: BulkPath,
    choice: PartChoice,
    location: str,
    frames_location: str,
    range_header: str | None,
    *,
    first: bool = True,
) -> Prepared:
    """The value at `path` of the instance in `source` (a BulkDataURI at `location`).
    Top-level encapsulated pixel data goes out as ``.../pixeldata`` does, one part per
    frame located under `frames_location`; any other value as one part, or one bare body
    (with `range_header` honoured) when the Accept prefers it.  Blocking."""
    stored = open_instance(source)
    try:
        value = locate_bulk(stored, path)
        if value.encapsulated and not path.steps and path.tag in PIXEL_DATA_TAGS:
            stored.close()
            return prepare_frames(source, None, choice, frames_location, first=first)
        media = frame_media(stored.transfer_syntax, True) if value.encapsulated else NATIVE_MEDIA
        output = choose_output(choice, stored.transfer_syntax, media, decodable=False)
        extent = value.extent
        if output.multipart:
            part, writer = Part(location, extent), MultipartWriter()
            reader = PartReader(stored.source, (part,), output.media, writer, closers=(stored.close,))
            return Prepared(reader, output, reader.batch() if first else [])
        byte_range = parse_range(range_header, extent.size)
        if byte_range is not None:
            extent = extent.slice(byte_range.start, byte_range.stop)
        part = Part(location, extent)
        reader = PartReader(stored.source, (part,), output.media, None, closers=(stored.close,))
        return Prepared(reader, output, reader.batch() if first else [], extent.size, byte_range)
    except BaseException:
        stored.close()
        raise

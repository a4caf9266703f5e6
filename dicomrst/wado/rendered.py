# -*- test-case-name: tests.unit.test_rendered_web -*-
"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3–4, §8.3.5): which
instances and frames are rendered, and the blocking work of rendering them.

What each resource returns (the choices PS3.18 leaves to us, and why):

* Instance ``/rendered``: its first frame, as one image.  A multi-frame object asked for as
  ``image/gif`` is one animated GIF of every frame (T8.7.4-1: GIF is the multi-frame type).
* Frames ``/frames/{list}/rendered``: one frame, one image; several, a
  ``multipart/related`` of one image per frame in the order asked (``image/gif`` too).
* Study and series ``/rendered``: a ``multipart/related`` of the rendered instances, one
  part per instance that has pixel data (as the instance resource renders it), ordered by
  Series Number, Instance Number, then UID; each part's Content-Location is that
  instance's rendered URL.  Instances without pixel data (SR, presentation states, ...)
  are left out; none left is a 406.
* Thumbnails: the instance's representative frame (`render.representative_frame`, the
  middle one), or the first frame of a frame list; of a series, the thumbnail of its
  middle image by Instance Number (the slice a radiologist scrolls to first in a volume,
  and of a short series as good as any); of a study, that of its first series by Series
  Number that holds images.  No annotation, ever.

The functions here block (they read files and decode pixels): callers run them in
`dicomrst.common.cpu.CpuWorkers`.  Each takes its file through a `FileHandoff`, so the
file is closed exactly once whether the work ran, failed or was taken out of the line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import attrs
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from dicomrst.cache import CachedInstance
from dicomrst.cache.sinks import EntryConsumer, PrivateWriter
from dicomrst.common.interfaces import IInstanceSink
from dicomrst.imaging.framelist import check_frame_numbers
from dicomrst.imaging.params import GIF, JPEG, RenderOptions, Viewport
from dicomrst.imaging.render import (
    THUMBNAIL_SIZE,
    RenderFailed,
    apply_viewport,
    decode_frame,
    encode,
    number_of_frames,
    render_animation,
    render_dataset,
    representative_frame,
    to_display,
)

#: A thumbnail's JPEG quality (the parameter is not one thumbnails take, §8.3.5).
THUMBNAIL_QUALITY = 80


class FileHandoff:
    """A file shared by the request that owns it and the worker threads that read it.

    Workers `borrow` it; the request calls `drop` when it is done with it (answered, or
    its client left): the file is closed then, or, if a worker is reading it at that
    moment (a running thread cannot be stopped), when that worker is done.  A borrow
    after the drop is a `CancelledError`.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._borrowed = False
        self._dropped = False

    @contextmanager
    def borrow(self) -> Iterator[BinaryIO]:
        with self._lock:
            if self._dropped:
                raise CancelledError("the request went away before its turn")
            self._borrowed = True
        try:
            self.file.seek(0)
            yield self.file
        finally:
            with self._lock:
                self._borrowed = False
                close = self._dropped
            if close:
                self.file.close()

    def drop(self) -> None:
        with self._lock:
            if self._dropped:
                return
            self._dropped = True
            if self._borrowed:
                return  # the borrower closes it
        self.file.close()


def read_instance(handoff: FileHandoff) -> Dataset:
    """The whole data set of a Part-10 file."""
    with handoff.borrow() as f:
        try:
            return dcmread(f)
        except (InvalidDicomError, ValueError, EOFError, OSError) as e:
            raise RenderFailed(f"cannot read the stored instance: {e}") from None


def render_instance(
    handoff: FileHandoff, options: RenderOptions, frames: Sequence[int] | None = None
) -> list[bytes]:
    """The instance rendered as `options` ask: one image per 1-based frame number of
    `frames` (`FrameNotFound` past Number of Frames), or with None the instance resource's
    one image (see the module docstring)."""
    ds = read_instance(handoff)
    count = number_of_frames(ds)
    if frames is None:
        if count > 1 and options.media_type == GIF:
            return [render_animation(ds, options)]
        return [render_dataset(ds, options, 0)]
    check_frame_numbers(tuple(frames), count)
    return [render_dataset(ds, options, n - 1) for n in frames]


def render_thumbnail(
    handoff: FileHandoff, viewport: Viewport | None, media_type: str = JPEG, frame: int | None = None
) -> bytes:
    """The instance's thumbnail: 1-based `frame`, else its representative frame, fitted
    into `viewport` (vw, vh) or `THUMBNAIL_SIZE` square, never enlarged without one."""
    ds = read_instance(handoff)
    count = number_of_frames(ds)
    if frame is None:
        index = representative_frame(count)
    else:
        check_frame_numbers((frame,), count)
        index = frame - 1
    display = to_display(decode_frame(ds, index), ds, None, index)
    if viewport is None:
        rows, columns = display.shape[:2]
        box = min(THUMBNAIL_SIZE, max(rows, columns))
        viewport = Viewport(box, box)
    return encode(apply_viewport(display, viewport), media_type, THUMBNAIL_QUALITY)


# -- series and studies ----------------------------------------------------------------------


@attrs.frozen
class Member:
    """One instance of a retrieved study or series, and where it sorts."""

    sop: str
    handoff: FileHandoff
    series_number: float
    series_uid: str
    instance_number: float
    image: bool  # has Rows and Columns: something to render

    def order(self) -> tuple[float, str, float, str]:
        return (self.series_number, self.series_uid, self.instance_number, self.sop)


_MISSING = float("inf")  # no number: after those that have one


def _number(value: object) -> float:
    try:
        return float(str(value)) if value not in (None, "") else _MISSING
    except ValueError:
        return _MISSING


def describe(sop: str, handoff: FileHandoff) -> Member:
    """Where the instance sorts and whether it is an image (reads its file; blocks)."""
    with handoff.borrow() as f:
        try:
            # The head only: the pixel data may be hundreds of megabytes.
            ds = dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, ValueError, EOFError, OSError) as e:
            raise RenderFailed(f"cannot read stored instance {sop}: {e}") from None
    # Rows and Columns are what every image IOD has and no other does.
    image = "Rows" in ds and "Columns" in ds
    return Member(
        sop,
        handoff,
        _number(ds.get("SeriesNumber")),
        str(ds.get("SeriesInstanceUID", "")),
        _number(ds.get("InstanceNumber")),
        image,
    )


def describe_all(instances: Sequence[tuple[str, FileHandoff]]) -> list[Member]:
    """`describe` of each (SOP Instance UID, file), in rendering order (blocks)."""
    return sorted((describe(sop, handoff) for sop, handoff in instances), key=Member.order)


def representative(members: Sequence[Member]) -> Member | None:
    """The instance a study's or series' thumbnail shows (see the module docstring):
    `members` in `describe_all`'s order."""
    images = [m for m in members if m.image]
    if not images:
        return None
    first_series = images[0].series_uid
    series = [m for m in images if m.series_uid == first_series]
    return series[(len(series) - 1) // 2]


@implementer(IInstanceSink)
class CollectSink:
    """Takes every instance of a study or series retrieve into its own anonymous
    temporary file (a `PrivateWriter`), for rendering once the retrieve is over.

    Its own files rather than the cache's entries: the cache may be off for the AET, or
    evict an entry before its turn comes; with the cache on, `InstanceCache.retrieve`
    fills the cache from the same stream on the way.
    """

    wants_bulk_data = True
    started = False  # nothing is sent before the retrieve ends: a retry may start over

    def __init__(self, directory: str, aet: str) -> None:
        self.directory = directory
        self.aet = aet
        self.gone = False
        self._writers: dict[str, PrivateWriter] = {}

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> EntryConsumer:
        if self.gone:
            raise ConnectionError("the request went away")
        previous = self._writers.pop(sop_instance_uid, None)
        if previous is not None:  # sent again (a retry): the new copy replaces it
            previous.discard()
        writer = PrivateWriter(self.directory, self.aet, sop_class_uid, sop_instance_uid, transfer_syntax)
        self._writers[sop_instance_uid] = writer
        return EntryConsumer(writer, None)

    def take_instances(self) -> list[CachedInstance]:
        """The instances that arrived whole, their files now the caller's to close; the
        files of any others are closed."""
        taken = []
        for writer in self._writers.values():
            if writer.complete:
                taken.append(writer.instance)
            else:
                writer.discard()
        self._writers.clear()
        return taken

    @property
    def failed(self) -> list[str]:
        """Why instances that arrived could not be kept."""
        return [w.error for w in self._writers.values() if w.error is not None]

    def attach(self, producer: IPushProducer | None) -> None:
        pass  # written to local disk as it comes: nothing to pause for

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        self.gone = True
        self.close()

    def close(self) -> None:
        """Close the files not taken (`take_instances`)."""
        for writer in self._writers.values():
            writer.discard()

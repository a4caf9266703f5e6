# -*- test-case-name: tests.unit.test_local -*-
"""The LOCAL archive's files: blocking work, run in threads by the backend.

Objects are ``{root}/{study}/{series}/{sop}.dcm`` Part-10 files, S3's layout.  A new
object is written under a temporary name (``.{sop}.dcm.{token}{n}.tmp``: hidden, and
not ending in ``.dcm``, so no listing ever serves it), fsynced, then given its final
name with a hard link (`place`; a link, unlike a rename, never replaces an object
stored meanwhile under the same SOP Instance UID) and the directory fsynced: once that
fsync has ended, a crash loses neither the file nor its name.  Where the filesystem has no hard
links, a rename after an existence check does the same within one process.

Temporary files a crash left behind are removed at start (`remove_leftovers`); those of
the running backend carry its `token` and are spared.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
from typing import BinaryIO

import attrs

from dicomrst.index.interfaces import IndexRecord
from dicomrst.index.records import NotIndexable, record_from_stream

#: UIDs as path components: digits and dots, no empty component (so never ``.`` or
#: ``..``), as STOW-RS checks them; at most 64 characters.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_LEFTOVER = re.compile(r"\..+\.dcm\.[0-9a-f]+-[0-9]+\.tmp")
SUFFIX = ".dcm"
#: Bytes copied or compared at a time.
COPY_CHUNK = 1 << 20
#: Links fail with these where a filesystem has no hard links: fall back to a rename.
_NO_LINKS = frozenset((errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS))


class InvalidObject(Exception):
    """What is to be stored is not an object the archive can keep; the message says why."""


def safe_uid(value: str | None) -> bool:
    return bool(value) and len(value or "") <= 64 and _UID.fullmatch(value or "") is not None


def new_token() -> str:
    """What marks the temporary files of one running backend."""
    return secrets.token_hex(6)


def object_key(study: str, series: str, sop: str) -> str:
    """The object's key, relative to the root: S3's layout."""
    return f"{study}/{series}/{sop}{SUFFIX}"


def stamp_of(st: os.stat_result) -> str:
    """What changes when a file does (the index's `IndexRecord.stamp`)."""
    return f"{st.st_mtime_ns}:{st.st_size}"


def prepare_root(root: str) -> None:
    """Create the archive directory if needed (mode 0700: the files hold patient data);
    OSError if it cannot be created or is not a writable directory."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    check_root(root)


def check_root(root: str) -> None:
    """The directory is there and writable (C-ECHO, ``GET /aets/{aet}``); OSError if not."""
    if not os.path.exists(root):
        raise FileNotFoundError(errno.ENOENT, "no such directory", root)
    if not os.path.isdir(root):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", root)
    if not os.access(root, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not writable", root)


def remove_leftovers(root: str, token: str) -> int:
    """Delete the temporary files of earlier runs anywhere under `root` (not those of
    `token`, the running backend's); return how many."""
    removed = 0
    mine = f".{token}-"
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if _LEFTOVER.fullmatch(name) and mine not in name:
                try:
                    os.unlink(os.path.join(directory, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def list_objects(root: str, study: str, series: str | None) -> list[tuple[str, str]]:
    """(series, path) of every object of a study or one series, in key order (series
    UID, then SOP Instance UID, as S3 lists them).  Hidden and temporary files, and
    anything that is not ``{uid}.dcm``, are left out."""
    found: list[tuple[str, str, str]] = []
    study_dir = os.path.join(root, study)
    if series is None:
        try:
            names = [e.name for e in os.scandir(study_dir) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        series_list = [s for s in names if safe_uid(s)]
    else:
        series_list = [series]
    for se in series_list:
        directory = os.path.join(study_dir, se)
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = entry.name
            if name.endswith(SUFFIX) and safe_uid(name[: -len(SUFFIX)]) and entry.is_file():
                found.append((f"{se}/{name}", se, entry.path))
    found.sort()
    return [(se, path) for _key, se, path in found]


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(root: str, *parts: str) -> str:
    """``root/parts...``, creating what is missing; each new directory's entry is made
    durable (its parent fsynced)."""
    path = root
    for part in parts:
        parent, path = path, os.path.join(path, part)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        fsync_directory(parent)
    return path


class TemporaryObject:
    """A file being written under a temporary name in `directory`; `finish` makes its
    content durable."""

    _numbers = itertools.count(1)  # next() on it is atomic: writers start in threads too

    def __init__(self, directory: str, sop: str, token: str) -> None:
        number = next(TemporaryObject._numbers)
        self.path = os.path.join(directory, f".{sop}{SUFFIX}.{token}-{number}.tmp")
        self.file: BinaryIO = open(self.path, "xb")  # closed in finish/discard
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        """Blocking: flush and fsync the content, close the file."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self.file.close()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def copy_into(temporary: TemporaryObject, source: BinaryIO) -> None:
    """Blocking: all of `source` into `temporary`, a chunk at a time."""
    with source:
        while data := source.read(COPY_CHUNK):
            temporary.write(data)


def read_upload_record(source: BinaryIO, size: int, aet: str) -> IndexRecord:
    """Blocking: `read_head_record` of an object not yet written (`source`, `size` bytes)."""
    with source:
        try:
            return record_from_stream(aet, source, size)[0]
        except NotIndexable as e:
            raise InvalidObject(f"not a readable DICOM data set: {e}") from None


def read_record(path: str, aet: str) -> IndexRecord:
    """Blocking: `read_head_record` without the count."""
    return read_head_record(path, aet)[0]


def read_head_record(path: str, aet: str, *, raw: bool = False) -> tuple[IndexRecord, int]:
    """Blocking: the index record of the Part-10 file at `path`, read from its head up to
    its pixel data (`record_from_stream`, as the reconcile scans read objects), with an
    empty ``key`` and ``stamp`` for the caller to fill, and the bytes read; `InvalidObject`
    when it is not an object the index can read (it would be stored and never found).
    `raw`: the record's row made from the bytes, as the reconcile scans make it."""
    with open(path, "rb") as f:
        try:
            return record_from_stream(aet, f, os.fstat(f.fileno()).st_size, raw=raw)
        except NotIndexable as e:
            raise InvalidObject(f"not a readable DICOM data set: {e}") from None


def same_content(a: str, b: str) -> bool:
    """Blocking: whether two files hold the same bytes."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(COPY_CHUNK), fb.read(COPY_CHUNK)
            if x != y:
                return False
            if not x:
                return True


@attrs.frozen
class Placed:
    """What `place` did: stored (`stored`), or found an object already there (the same
    content: `stored` too, nothing written; different: not stored)."""

    stored: bool
    existed: bool
    stat: os.stat_result | None  # of the object under its final name, when stored


def place(temporary_path: str, target: str) -> Placed:
    """Blocking: give the (fsynced) temporary file its final name `target`, unless an
    object is there already.  The temporary file is gone afterwards in every case.  The
    name is durable only once its directory has been fsynced after this returns
    (`fsync_directory`, or `dicomrst.backends.local.syncs.DirectorySyncs` for many)."""
    try:
        try:
            os.link(temporary_path, target)
        except FileExistsError:
            return _existing(temporary_path, target)
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            if os.path.exists(target):
                return _existing(temporary_path, target)
            os.rename(temporary_path, target)
        return Placed(True, False, os.stat(target))
    finally:
        try:
            os.unlink(temporary_path)
        except FileNotFoundError:
            pass


def _existing(temporary_path: str, target: str) -> Placed:
    if same_content(temporary_path, target):
        return Placed(True, True, os.stat(target))
    return Placed(False, True, None)


def read_at(path: str, start: int, stop: int) -> tuple[bytes, os.stat_result]:
    """Blocking: bytes ``[start, stop)`` of a file (fewer at its end) and its stat, from
    one descriptor (so the two belong to the same file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        return os.pread(fd, max(0, stop - start), start), st
    finally:
        os.close(fd)

# -*- test-case-name: tests.unit.test_cache -*-
"""The cache's files: one Part-10 file per instance, by AET and SOP Instance UID.

An entry is written under a temporary name (`EntryWriter`) as its data set streams in
and renamed to its final name only once the data set is complete, so no reader ever sees
part of one; a writer that fails or is discarded leaves nothing behind.  `EntryStore`
indexes the entries it renamed: least recently used first, for eviction once the bytes
on disk (entries plus writers in progress) pass ``max_size``, and by age, so that none is
served once it is ``ttl`` seconds old (expired ones are removed on a timer).

Blocking file I/O runs on the reactor, deliberately: a streamed fragment (one PDU's PDV,
or an S3 read) is appended to a file in the page cache, which costs about as much as the
copy into the HTTP transport next to it, and less than handing it to a thread would; no
fsync (a cache lost in a crash is only a cache).  Writing in the caller's turn also keeps
backpressure exact: nothing is queued, so a paused HTTP client still pauses the source.
The price is that ``server.cache.path`` must be on a local disk (or tmpfs): a slow
network filesystem there would stall the reactor.

Readers get an open file (`CachedInstance`): eviction and expiry unlink entries freely,
and on POSIX an unlinked file stays readable through the descriptors already open, so
nothing needs pinning.  Disk space of such files is freed when their last reader closes
them (not counted in ``max_size`` meanwhile).

The directory is ours alone: `EntryStore.start` creates it (mode 0700: the files hold
patient data), or takes an existing one only if it is empty or marked as a dicomrst cache,
locks it (a second gateway on the same path would delete the first one's entries) and
empties it; `stop` deletes the entries.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from dicomrst.logs import logger

log = logger("dicomrst.cache")

#: (AE title, SOP Instance UID): what an entry is found by; never shared across AETs.
Key = tuple[str, str]

#: The file marking a directory as a dicomrst cache (and holding its lock).
MARKER = ".dicomrst-cache"
_MARKER_TEXT = b"dicomrst instance cache: everything in this directory is deleted when dicomrst starts\n"
#: Buffer of each writer's file: PDUs of 16 KiB (pynetdicom's default) make 4 writes one syscall.
WRITE_BUFFER = 64 * 1024


class CacheDirectoryError(Exception):
    """``server.cache.path`` cannot be used; the message says why."""


@attrs.define(eq=False)
class CachedInstance:
    """One instance as a Part-10 file open for reading, positioned at its start.

    `file` is the reader's own descriptor: close it (`close`, or use ``with``) when done.
    The data set starts at `dataset_offset` and is in `transfer_syntax`, the syntax it
    arrived in.  `path` is where the entry was (None for a private copy, see
    `InstanceCache.instance`); it may be gone by now, which does not matter to `file`.
    """

    file: BinaryIO
    aet: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    size: int
    path: str | None = None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> CachedInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.define(eq=False)
class Entry:
    """A complete entry on disk."""

    key: Key
    path: str
    size: int
    expires_at: float  # on the store's clock: not served from then on
    sop_class_uid: str
    transfer_syntax: str
    dataset_offset: int

    def open(self) -> CachedInstance:
        """Open it for one reader (OSError if the file is gone)."""
        f = open(self.path, "rb")  # the reader closes it
        return CachedInstance(
            f,
            self.key[0],
            self.sop_class_uid,
            self.key[1],
            self.transfer_syntax,
            self.dataset_offset,
            self.size,
            self.path,
        )


def entry_name(key: Key) -> str:
    """The file name of an entry: a hash, since UIDs from a PACS are not checked and an
    AE title may hold characters a file name should not ('/' cannot, '..' can)."""
    aet, sop = key
    digest = hashlib.sha256(f"{aet}\\{sop}".encode("utf-8", "surrogateescape")).hexdigest()
    return digest[:40] + ".dcm"


class EntryWriter:
    """One entry being written: its header (preamble and file meta, `EntryStore.writer`
    writes it), then the data set's fragments (`write`), then `commit` (renamed into
    place) or `discard`."""

    def __init__(
        self, store: EntryStore, key: Key, sop_class_uid: str, transfer_syntax: str, header: bytes
    ) -> None:
        self.store = store
        self.key = key
        self.sop_class_uid = sop_class_uid
        self.transfer_syntax = transfer_syntax
        self.dataset_offset = len(header)
        self.final_path = os.path.join(store.directory, entry_name(key))
        store.serial += 1
        self.path = f"{self.final_path}.{store.serial}.part"
        # "x": a name no one else uses; raises OSError (the caller caches nothing then).
        self.file: BinaryIO = open(self.path, "xb", buffering=WRITE_BUFFER)
        self.written = 0
        self.ended = False

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            self.file.write(data)
        except OSError as e:
            self.discard(f"cannot write: {e.strerror or e}")
            return
        self.written += len(data)
        self.store.grew(self, len(data))

    def commit(self) -> Entry | None:
        """The data set is complete: rename it into place (the entry, or None if this
        writer was discarded or the rename failed)."""
        if self.ended:
            return None
        self.ended = True
        try:
            self.file.close()  # flushes: may fail (ENOSPC)
            os.replace(self.path, self.final_path)
        except OSError as e:
            self._remove()
            self.store.ended(self)
            log.warn("cache: cannot store {sop}: {why}", sop=self.key[1], why=e.strerror or str(e))
            return None
        return self.store.stored(self)

    def discard(self, why: str | None = None) -> None:
        """Drop it: the data set failed, or it cannot be kept (`why`, logged)."""
        if self.ended:
            return
        self.ended = True
        try:
            self.file.close()
        except OSError:
            pass
        self._remove()
        self.store.ended(self)
        if why is not None:
            log.info(
                "cache: not keeping {sop} ({n} bytes so far): {why}", sop=self.key[1], n=self.written, why=why
            )

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class EntryStore:
    """The entries of one cache directory, bounded by `max_size` bytes and `ttl` seconds.

    `on_stored(entry)` is called for every entry renamed into place, before anything is
    evicted to make room for it (whoever waits for it opens it there), and also for an
    entry too large to keep, which is removed right after.  `wanted(key)`: someone waits
    for that instance, so its writer is not dropped when in-flight writes alone pass
    `max_size` (the bound is then exceeded by that instance while it is written).
    """

    def __init__(
        self,
        clock: IReactorTime,
        directory: str,
        max_size: int,
        ttl: float,
        on_stored: Callable[[Entry], None] = lambda entry: None,
        wanted: Callable[[Key], bool] = lambda key: False,
    ) -> None:
        self.clock = clock
        self.directory = os.path.abspath(directory)
        self.max_size = max_size
        self.ttl = ttl
        self.on_stored = on_stored
        self.wanted = wanted
        self.serial = 0
        self.committed = 0  # bytes of the entries
        self.inflight = 0  # bytes of the writers in progress
        self.evictions = 0
        self._entries: OrderedDict[Key, Entry] = OrderedDict()  # least recently used first
        self._by_age: dict[Key, None] = {}  # oldest first
        self._writers: dict[Key, EntryWriter] = {}
        self._timer: IDelayedCall | None = None
        self._lock: int | None = None

    # -- the directory -------------------------------------------------------------------

    def start(self) -> None:
        """Create (or take over and empty) the directory, and lock it; `CacheDirectoryError`
        if it cannot be ours."""
        self._lock = claim_directory(self.directory)

    def stop(self) -> None:
        """Forget and delete every entry, drop writers in progress, unlock."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for writer in list(self._writers.values()):
            writer.discard()
        for key in list(self._entries):
            self._remove(key)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- reading -------------------------------------------------------------------------

    def __contains__(self, key: Key) -> bool:
        """A fresh entry exists for `key`."""
        entry = self._entries.get(key)
        return entry is not None and not self._expired(entry, self.clock.seconds())

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key) -> CachedInstance | None:
        """The entry for `key` open for reading (it becomes the most recently used), or None
        (no entry, or it expired)."""
        self._sweep()
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            found = entry.open()
        except OSError:
            self._remove(key)  # deleted behind our back
            return None
        self._entries.move_to_end(key)
        return found

    # -- writing -------------------------------------------------------------------------

    def writer(self, key: Key, sop_class_uid: str, transfer_syntax: str, header: bytes) -> EntryWriter | None:
        """A writer for a new entry, or None: a fresh entry or another writer for `key`
        exists (that one will do), or the file cannot be created."""
        if key in self._writers or key in self:
            return None
        try:
            writer = EntryWriter(self, key, sop_class_uid, transfer_syntax, header)
        except OSError as e:
            log.warn(
                "cache: cannot create an entry in {dir}: {why}", dir=self.directory, why=e.strerror or str(e)
            )
            return None
        self._writers[key] = writer
        writer.write(header)
        return None if writer.ended else writer  # ended: no room even for the header

    def grew(self, writer: EntryWriter, n: int) -> None:
        self.inflight += n
        if self.inflight > self.max_size and not self.wanted(writer.key):
            # Writes in flight alone pass the bound (evicting every entry would not make
            # room), and nobody waits for this one.
            writer.discard(f"writes in progress exceed server.cache.max-size ({self.max_size} bytes)")
            return
        self._make_room()

    def ended(self, writer: EntryWriter) -> None:
        """`writer` was discarded (or failed to commit)."""
        self.inflight -= writer.written
        if self._writers.get(writer.key) is writer:
            del self._writers[writer.key]

    def stored(self, writer: EntryWriter) -> Entry:
        """`writer`'s file was renamed into place: index it, tell `on_stored`, make room."""
        self.inflight -= writer.written
        key = writer.key
        if self._writers.get(key) is writer:
            del self._writers[key]
        old = self._entries.pop(key, None)
        if old is not None:  # its file was replaced by the rename
            self.committed -= old.size
            del self._by_age[key]
        entry = Entry(
            key,
            writer.final_path,
            writer.written,
            self.clock.seconds() + self.ttl,
            writer.sop_class_uid,
            writer.transfer_syntax,
            writer.dataset_offset,
        )
        if entry.size > self.max_size:
            self.on_stored(entry)
            _unlink(entry.path)
            log.info(
                "cache: {sop} ({n} bytes) is larger than server.cache.max-size; not kept",
                sop=key[1],
                n=entry.size,
            )
            return entry
        self._entries[key] = entry
        self._by_age[key] = None
        self.committed += entry.size
        self.on_stored(entry)
        self._make_room()
        self._arm_expiry()
        return entry

    # -- bounds --------------------------------------------------------------------------

    def _make_room(self) -> None:
        while self.committed + self.inflight > self.max_size and self._entries:
            self.evictions += 1
            self._remove(next(iter(self._entries)))

    def _expired(self, entry: Entry, now: float) -> bool:
        # The same sum the timer is set for, so the timer always finds it expired.
        return now >= entry.expires_at

    def _sweep(self) -> None:
        now = self.clock.seconds()
        while self._by_age:
            key = next(iter(self._by_age))
            if not self._expired(self._entries[key], now):
                break
            self._remove(key)

    def _arm_expiry(self) -> None:
        """A timer for when the oldest entry expires, so expired entries leave the disk
        even when nobody asks for them."""
        if not self._by_age:
            return
        due = self._entries[next(iter(self._by_age))].expires_at
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._sweep()
        self._arm_expiry()

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key)
        del self._by_age[key]
        self.committed -= entry.size
        _unlink(entry.path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("cache: cannot remove {path}: {why}", path=path, why=e.strerror or str(e))


def claim_directory(directory: str) -> int:
    """Make `directory` a dicomrst cache that this process alone uses, and empty it.

    Created with mode 0700 if missing.  An existing one must be a real directory (not a
    symlink, which in a shared temporary directory another user could plant) owned by us,
    and either empty or marked with `MARKER`: anything else might be someone's files,
    which emptying it would delete.  Returns the descriptor holding the lock (an exclusive
    ``flock`` on the marker), to keep open while the cache is in use.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as e:
        raise CacheDirectoryError(f"cannot create {directory!r}: {e.strerror or e}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirectoryError(f"{directory!r} is not a directory (a symbolic link is not accepted)")
    if info.st_uid != os.geteuid():
        raise CacheDirectoryError(f"{directory!r} belongs to another user")
    marker = os.path.join(directory, MARKER)
    try:
        names = os.listdir(directory)
        if names and MARKER not in names:
            raise CacheDirectoryError(
                f"{directory!r} is not empty and is not a dicomrst cache (no {MARKER} file): "
                "name a new or empty directory, its contents are deleted at every start"
            )
        os.chmod(directory, 0o700)
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise CacheDirectoryError(f"cannot use {directory!r}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise CacheDirectoryError(
                f"{directory!r} is in use by another dicomrst process: give each its own path"
            ) from None
        raise CacheDirectoryError(f"cannot lock {marker!r}: {e.strerror or e}") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, _MARKER_TEXT)
        for name in names:
            if name == MARKER:
                continue
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    except OSError as e:
        os.close(fd)
        raise CacheDirectoryError(f"cannot empty {directory!r}: {e.strerror or e}") from None
    return fd

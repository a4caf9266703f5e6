# -*- test-case-name: tests.unit.test_local_reconcile -*-
"""The reconcile scan of a LOCAL AET: what is in its directory against what its index holds.

Files copied in, replaced or deleted behind the gateway's back (by hand, by rsync, by a
restore) are found by walking the directory (`walk`: ``{study}/{series}/{sop}.dcm``,
each file's ``mtime:size`` stamp) and comparing with the index's stamps: a file whose key
is new or whose stamp changed has its head read (up to its Pixel Data, as the store
reads what it writes: `dicomrst.backends.local.files.read_record`) and is indexed; a key
the directory no longer has is removed from the index.  Unchanged files cost one
``stat`` each.

Temporary files (hidden names: a store in progress, or a crash's leftover) are never
looked at.  A file that is not DICOM, or whose head does not parse, is logged once and
skipped until its stamp changes; so is one whose UIDs are not the ones its path names
(the backend serves files by that path, so it could be found and never retrieved):
counted (`ScanReport.misplaced`) and named, a few, in one line at the scan's end.  A
file that vanishes or changes while read is left for the next scan.  Files outside the
layout are counted (`ScanReport.strays`) and never indexed; a scan that finds new ones
logs one line with their number and one of them.

Heads are read `READERS` files at a time, each made into its record from its bytes
(pydicom only where that declines), and the records go to the index in batches
(`dicomrst.index.scans.Writes`), many per transaction.
"""

from __future__ import annotations

import os

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.python.failure import Failure

from dicomrst.backends.local.files import (
    SUFFIX,
    InvalidObject,
    object_key,
    read_head_record,
    safe_uid,
    stamp_of,
)
from dicomrst.backends.local.threads import Threads
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.index.scans import ScanBook, ScanReport, Writes
from dicomrst.logs import logger

log = logger("dicomrst.index")

#: Files read at once: the reads overlap their waits for the disk (the parse holds the GIL).
READERS = 4


class Misplaced(Exception):
    """A file whose UIDs put it at another key (the argument)."""


@attrs.frozen
class Found:
    """One object file the walk found."""

    key: str  # ``{study}/{series}/{sop}.dcm``, relative to the root
    stamp: str
    size: int


def walk(root: str) -> tuple[list[Found], list[str]]:
    """Blocking: every object file under `root` in the archive's layout, in key order,
    and the keys of other regular files found there (not hidden ones), for the log;
    OSError when `root` cannot be listed."""
    found: list[Found] = []
    strays: list[str] = []

    def entries(path: str) -> list[os.DirEntry[str]]:
        try:
            return [e for e in os.scandir(path) if not e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []  # removed while walked

    # The root itself must be there: a directory gone (an unmounted disk) fails the scan
    # (OSError) rather than removing every record of the AET.
    studies = [e for e in os.scandir(root) if not e.name.startswith(".")]
    for study in studies:
        if not study.is_dir(follow_symlinks=False):
            strays.append(study.name)
            continue
        for series in entries(study.path):
            if not series.is_dir(follow_symlinks=False):
                strays.append(f"{study.name}/{series.name}")
                continue
            for entry in entries(series.path):
                key = f"{study.name}/{series.name}/{entry.name}"
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                name = entry.name
                if (
                    name.endswith(SUFFIX)
                    and safe_uid(name[: -len(SUFFIX)])
                    and safe_uid(study.name)
                    and safe_uid(series.name)
                ):
                    found.append(Found(key, stamp_of(st), st.st_size))
                else:
                    strays.append(key)
    found.sort(key=lambda f: f.key)
    strays.sort()
    return found, strays


def read_found(root: str, aet: str, found: Found) -> tuple[IndexRecord, int] | None:
    """Blocking: the record of a found file and the bytes read for it, or None when it
    changed or vanished since the walk (`InvalidObject` when it is not one the archive
    can serve, `Misplaced` when its UIDs put it elsewhere)."""
    path = os.path.join(root, *found.key.split("/"))
    try:
        record, read = read_head_record(path, aet, raw=True)
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stamp_of(st) != found.stamp:
        return None  # written to while read: the next scan reads the new content
    expected = object_key(record.study, record.series, record.sop_instance)
    if expected != found.key:
        raise Misplaced(expected)
    return attrs.evolve(record, key=found.key, stamp=found.stamp, size=found.size), read


class LocalReconciler:
    """Reconciles the index records of one LOCAL AET with its directory (`scan`)."""

    def __init__(self, root: str, index: IIndex, aet: str, threads: Threads) -> None:
        self.root = os.path.abspath(root)
        self.index = index
        self.aet = aet
        self.threads = threads
        # Files found unreadable (logged) are read again only once changed.
        self.book = ScanBook(index, aet, "file")
        self._strays: set[str] = set()

    def scan(self) -> Deferred[ScanReport]:
        return Deferred.fromCoroutine(self._scan())

    async def _scan(self) -> ScanReport:
        report = ScanReport()
        started = self.threads.reactor.seconds()
        # The index first, then the directory: a file stored meanwhile is then found on
        # disk (and read once more), never taken for one deleted.
        known = await self.index.stamps(self.aet)
        found, strays = await self.threads.run(walk, self.root)
        report.listed = len(found)
        report.strays = len(strays)
        new_strays = [key for key in strays if key not in self._strays]
        self._strays = set(strays)
        if new_strays:
            log.warn(
                "index: {n} file(s) in {root} are not {{study}}/{{series}}/{{sop}}.dcm and are not "
                "served nor indexed, e.g. {first}",
                n=len(strays),
                root=self.root,
                first=new_strays[0],
            )
        self.book.begin({f.key for f in found})
        writes = self.book.writes(report)
        semaphore = DeferredSemaphore(READERS)
        reads = [
            semaphore.run(self._index_file, item, item.key in known, report, writes)
            for item in found
            if not self.book.unchanged(item.key, item.stamp, known)
        ]
        results = await DeferredList(reads, consumeErrors=True)
        await writes.done()
        for _, outcome in results:
            if isinstance(outcome, Failure):
                outcome.raiseException()
        return await self.book.end(known, report, self.threads.reactor.seconds() - started)

    def _index_file(self, item: Found, known: bool, report: ScanReport, writes: Writes) -> Deferred[None]:
        return Deferred.fromCoroutine(self._read_and_add(item, known, report, writes))

    async def _read_and_add(self, item: Found, known: bool, report: ScanReport, writes: Writes) -> None:
        try:
            found_record = await self.threads.run(read_found, self.root, self.aet, item)
        except Misplaced as e:
            await self.book.misplaced(item.key, item.stamp, known, str(e), report)
            return
        except InvalidObject as e:
            await self.book.not_indexable(item.key, item.stamp, known, str(e), report)
            return
        except OSError as e:
            # Unreadable now (permissions, I/O): not fatal to the scan; the next one retries.
            report.left += 1
            log.warn(
                "index: cannot read {key} of {aet}: {why}",
                key=item.key,
                aet=self.aet,
                why=e.strerror or str(e),
            )
            return
        if found_record is None:
            report.left += 1
            return
        record, read = found_record
        report.bytes_read += read
        await writes.add(record, item.key, item.stamp, known)

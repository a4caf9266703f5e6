# -*- test-case-name: tests.integration.test_index_s3 -*-
"""The reconcile scan of an S3 AET: what is in its bucket against what its index holds.

Objects put, replaced or deleted behind the gateway's back (with another tool, by
another gateway without the shared index) are found by listing the bucket
(ListObjectsV2, which gives each object's ETag) and comparing with the index's stamps:
an object whose key is new or whose ETag changed has its head read (ranged GETs from
byte 0, `SCAN_HEAD_BYTES` first, then more only while its Pixel Data has not begun) and is
indexed; a key the bucket no longer has is removed from the index.  Unchanged objects
cost nothing but their line of the listing.

Only objects in the archive's layout are indexed: a key that is not
``{prefix}{study}/{series}/{sop}.dcm`` is not read at all, and an object whose head names
other UIDs than its key is not indexed either.  WADO-RS finds an object by that path
(a GET of its key, or a listing under its study or series), so either would be an
instance a search finds and a retrieve then cannot.  They are counted (`ScanReport.strays`,
`ScanReport.misplaced`): a scan that finds keys outside the layout not seen before logs one
line with their number and a few of them, and so does one that finds misplaced objects
(which are read once, then skipped until their ETag changes).

An object that is not DICOM, or whose head does not parse, is logged once and skipped,
and not read again until its ETag changes; so is an object that holds the same instance
(SOP Instance UID) as another key (the index keeps one record per instance).  An object
that vanishes or changes between the listing and its read is left for the next scan.
Any other S3 error fails the scan (it is retried at the next one).

Heads are read `concurrency` at a time; each is made into its record in the reactor's
thread pool, from its bytes (`record_from_head` with ``raw``: pydicom only where that
declines); the records go to the index as they come, which commits them many per
transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from dicomrst.backends.s3.client import ListedObject, S3Client
from dicomrst.backends.s3.retrieve import read_object_range
from dicomrst.backends.values import ObjectChanged
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.errors import NotFound
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.index.records import NotIndexable, record_from_head
from dicomrst.index.scans import EXAMPLES, ScanBook, ScanReport, Writes
from dicomrst.logs import logger

T = TypeVar("T")

SUFFIX = ".dcm"

log = logger("dicomrst.index")

#: Bytes of an object a scan reads first: most data sets end within a few KiB, and the
#: scan of a bucket of 512 KiB CT slices then reads about 3% of it.
SCAN_HEAD_BYTES = 16 << 10

#: How much more of an object each further read takes, when its head is longer.
GROWTH = 4


def in_layout(key: str, prefix: str) -> bool:
    """Whether `key` has the shape ``{prefix}{study}/{series}/{sop}.dcm``."""
    parts = key[len(prefix) :].split("/")
    return len(parts) == 3 and all(parts) and parts[2].endswith(SUFFIX) and len(parts[2]) > len(SUFFIX)


class S3Reconciler:
    """Reconciles the index records of one S3 AET with its bucket (`scan`).

    :param parse: runs a function off the reactor (the head parse is CPU work); the
        reactor's thread pool by default.
    """

    def __init__(
        self,
        client: S3Client,
        index: IIndex,
        aet: str,
        prefix: str,
        reactor: IGatewayReactor,
        *,
        concurrency: int = 32,
        head_bytes: int = SCAN_HEAD_BYTES,
        parse: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
    ) -> None:
        self.client = client
        self.index = index
        self.aet = aet
        self.prefix = prefix
        self.reactor = reactor
        self.concurrency = concurrency
        self.head_bytes = head_bytes
        self._parse = parse or (lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f))
        # Objects found unreadable, or holding an instance another listed key holds too,
        # are logged and read once (until their ETag changes).
        self.book = ScanBook(index, aet, "s3 object")
        self._strays: set[str] = set()

    def scan(self) -> Deferred[ScanReport]:
        return Deferred.fromCoroutine(self._scan())

    async def _scan(self) -> ScanReport:
        report = ScanReport()
        started = self.reactor.seconds()
        # The index first, then the bucket: an object stored through the gateway between
        # the two is then listed (and read once more), never taken for one deleted.
        known = await self.index.stamps(self.aet)
        listed = []
        strays = []
        for item in await self.client.list_objects(self.prefix):
            if item.key.endswith("/"):
                continue  # a "directory" some tools create: no object
            if in_layout(item.key, self.prefix):
                listed.append(item)
            else:
                strays.append(item.key)
        report.listed = len(listed)
        report.strays = len(strays)
        self._log_strays(strays)
        self.book.begin({item.key for item in listed})
        to_read = [item for item in listed if not self.book.unchanged(item.key, item.etag, known)]
        writes = self.book.writes(report)
        semaphore = DeferredSemaphore(self.concurrency)
        reads = [
            semaphore.run(self._index_object, item, item.key in known, report, writes) for item in to_read
        ]
        results = await DeferredList(reads, consumeErrors=True)
        await writes.done()
        for _, outcome in results:
            if isinstance(outcome, Failure):
                outcome.raiseException()  # the first S3 failure fails the scan
        return await self.book.end(known, report, self.reactor.seconds() - started)

    def _log_strays(self, strays: list[str]) -> None:
        new = [key for key in strays if key not in self._strays]
        self._strays = set(strays)
        if new:
            log.warn(
                "index: {n} object(s) of {aet} under {prefix!r} are not {{study}}/{{series}}/{{sop}}.dcm: "
                "not indexed (WADO-RS could not retrieve them by their UIDs), e.g. {examples}",
                n=len(strays),
                aet=self.aet,
                prefix=self.prefix,
                examples=", ".join(new[:EXAMPLES]),
            )

    def _index_object(
        self, item: ListedObject, known: bool, report: ScanReport, writes: Writes
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._read_and_add(item, known, report, writes))

    async def _read_and_add(
        self, item: ListedObject, known: bool, report: ScanReport, writes: Writes
    ) -> None:
        try:
            record = await self._record(item, report)
        except (NotFound, ObjectChanged):
            report.left += 1
            return
        except NotIndexable as e:
            await self.book.not_indexable(item.key, item.etag, known, str(e), report)
            return
        expected = f"{self.prefix}{record.study}/{record.series}/{record.sop_instance}{SUFFIX}"
        if expected != item.key:
            await self.book.misplaced(item.key, item.etag, known, expected, report)
            return
        # Returns at once (the index commits the records of many reads together), unless
        # the index is far behind.
        await writes.add(record, item.key, item.etag, known)

    async def _record(self, item: ListedObject, report: ScanReport) -> IndexRecord:
        if item.size == 0:
            raise NotIndexable("an empty object")
        data = b""
        want = min(self.head_bytes, item.size)
        while True:
            part = await read_object_range(self.client, item.key, len(data), want, item.etag)
            data += part.data
            report.bytes_read += len(part.data)
            complete = len(data) >= item.size or not part.data
            head = data

            def parse(head: bytes = head, complete: bool = complete) -> IndexRecord | None:
                return record_from_head(
                    self.aet, item.key, item.etag, item.size, head, complete=complete, raw=True
                )

            record: IndexRecord | None = await self._parse(parse)
            if record is not None:
                return record
            if complete:
                raise NotIndexable("the object ends before its data set does")
            want = min(item.size, len(data) * GROWTH)

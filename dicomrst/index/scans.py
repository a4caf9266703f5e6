# -*- test-case-name: tests.unit.test_index -*-
"""Reconcile scans run at start and every ``index.scan-interval``, one at a time.

`ScanBook` holds what both reconcile scans (the S3 one, LOCAL's directory walk) do with
what they found: index the records (`Writes`: in batches, many per transaction, while the
scan reads on), skip what is not indexable, remove what went away, log the end.
`PeriodicScans` is a Twisted service around any scan: started, it runs one at once and
then one every interval after the previous ended (a slow scan never overlaps the next);
`scan_now` runs one on demand, or joins the one running.  A failed scan is logged and
retried at the next interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from dicomrst.errors import DicomrstError
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.logs import logger

log = logger("dicomrst.index")

#: Keys named in a scan's log line about objects outside the layout or misplaced, at most.
EXAMPLES = 3

#: Records a scan hands the index at once (the index commits up to its own batch size,
#: 256 for `SqlIndex`, per transaction).
WRITE_BATCH = 256
#: Batches on their way to the index before the scan's reads wait for the oldest.
WRITES_AHEAD = 4


@attrs.define
class ScanReport:
    """What one scan found and did."""

    listed: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unreadable: int = 0  # found not indexable (logged) in this scan
    strays: int = 0  # not in the archive's layout: not read, not indexed
    misplaced: int = 0  # in the layout, but its UIDs put it at another key: not indexed
    duplicates: int = 0  # holding an instance another key holds too (logged)
    left: int = 0  # vanished or changed while read: for the next scan
    bytes_read: int = 0
    seconds: float = 0.0


@attrs.define
class ScanBook:
    """One AET's scan bookkeeping, shared by the S3 and LOCAL scans.

    :ivar what: what the store holds, for log lines (``"s3 object"``, ``"file"``).
    :ivar skipped: key → stamp of what was found not indexable or a duplicate: not read
        again until its stamp changes.
    :ivar present: the keys the current scan found (set by `begin`).
    """

    index: IIndex
    aet: str
    what: str
    skipped: dict[str, str] = attrs.Factory(dict)
    present: set[str] = attrs.Factory(set)
    misplaced_examples: list[str] = attrs.Factory(list)

    def begin(self, present: set[str]) -> None:
        self.present = present
        self.misplaced_examples = []
        self.skipped = {k: v for k, v in self.skipped.items() if k in present}

    def unchanged(self, key: str, stamp: str, known: dict[str, str]) -> bool:
        """Nothing to read: indexed with this stamp, or skipped with it."""
        return known.get(key) == stamp or self.skipped.get(key) == stamp

    async def not_indexable(self, key: str, stamp: str, known: bool, why: str, report: ScanReport) -> None:
        self.skipped[key] = stamp
        report.unreadable += 1
        log.warn(
            "index: skipping {what} {key} of {aet}: {why}", what=self.what, key=key, aet=self.aet, why=why
        )
        if known:  # it was an object and is not any more
            await self.index.remove_key(self.aet, key)

    async def misplaced(self, key: str, stamp: str, known: bool, expected: str, report: ScanReport) -> None:
        """An object whose UIDs put it at `expected`, not `key`: WADO-RS, which finds an
        object by its UIDs, could not retrieve it, so it is not indexed; not read again
        until its stamp changes.  Counted, and named (a few) in one line at the end."""
        self.skipped[key] = stamp
        report.misplaced += 1
        if len(self.misplaced_examples) < EXAMPLES:
            self.misplaced_examples.append(f"{key} (its UIDs say {expected})")
        if known:
            await self.index.remove_key(self.aet, key)

    def writes(self, report: ScanReport) -> Writes:
        """Where this scan's records go (`Writes.add`), to be waited for (`Writes.done`)."""
        return Writes(self, report)

    async def add_many(self, found: list[Found], report: ScanReport) -> None:
        """Index the records found (record, key, stamp, whether the key was indexed)."""
        # Two keys holding one instance in a batch: the later goes in a batch of its own,
        # after the first, so it learns which key it replaces (as one after the other would).
        seen: Counter[str] = Counter()
        rounds: list[list[Found]] = []
        for entry in found:
            n = seen[entry[0].sop_instance]
            seen[entry[0].sop_instance] += 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(entry)
        for entries in rounds:
            replaced_keys = await self.index.add_many([entry[0] for entry in entries])
            for (record, key, stamp, known), replaced in zip(entries, replaced_keys, strict=True):
                self._added(record, key, stamp, known, replaced, report)

    def _added(
        self, record: IndexRecord, key: str, stamp: str, known: bool, replaced: str | None, report: ScanReport
    ) -> None:
        if replaced is not None and replaced != key and replaced in self.present:
            # One instance under two keys: the index keeps one; reading the other at
            # every scan would only swap them.
            self.skipped[key] = stamp
            report.duplicates += 1
            log.warn(
                "index: {what} {key} of {aet} holds instance {sop}, which {other} holds too; "
                "{key} is indexed, {other} is not",
                what=self.what,
                key=key,
                aet=self.aet,
                sop=record.sop_instance,
                other=replaced,
            )
        if known:
            report.changed += 1
        else:
            report.added += 1

    async def end(self, known: dict[str, str], report: ScanReport, seconds: float) -> ScanReport:
        """Remove the records of keys not found, log the scan's line."""
        # Queued at once: the index removes them many per transaction.
        removals = [self.index.remove_key(self.aet, key) for key in sorted(set(known) - self.present)]
        if removals:
            try:
                removed: list[bool] = await gatherResults(removals, consumeErrors=True)
            except FirstError as e:
                e.subFailure.raiseException()
            report.removed += sum(removed)
        report.seconds = seconds
        if report.misplaced:
            log.warn(
                "index: {n} {what}(s) of {aet} are not where their UIDs put them: not indexed "
                "(WADO-RS could not retrieve them by their UIDs), e.g. {examples}",
                n=report.misplaced,
                what=self.what,
                aet=self.aet,
                examples=", ".join(self.misplaced_examples),
            )
        log.info(
            "index: scanned {aet}: {listed} {what}s, {added} added, {changed} changed, {removed} removed, "
            "{unreadable} unreadable, {strays} outside the layout, {misplaced} misplaced, {bytes} bytes read "
            "in {seconds:.1f} s",
            aet=self.aet,
            listed=report.listed,
            what="object" if self.what == "s3 object" else self.what,
            added=report.added,
            changed=report.changed,
            removed=report.removed,
            unreadable=report.unreadable,
            strays=report.strays,
            misplaced=report.misplaced,
            bytes=report.bytes_read,
            seconds=report.seconds,
        )
        return report


#: What a scan found for one key: its record, key, stamp, and whether the key was indexed.
Found = tuple[IndexRecord, str, str, bool]


class Writes:
    """One scan's records on their way to the index: `add`ed as the reads make them, sent
    `WRITE_BATCH` at a time, one batch after the other, without the reads waiting for
    them; `done` once all are committed.  The reads wait only when `WRITES_AHEAD` batches
    are queued (the index is slower than the store)."""

    def __init__(self, book: ScanBook, report: ScanReport, batch: int = WRITE_BATCH) -> None:
        self.book = book
        self.report = report
        self.batch = batch
        self._found: list[Found] = []
        self._queued: list[Deferred[None]] = []  # one per batch sent and not committed yet
        self._failure: Failure | None = None

    async def add(self, record: IndexRecord, key: str, stamp: str, known: bool) -> None:
        self._found.append((record, key, stamp, known))
        if len(self._found) >= self.batch:
            self._send()
            if len(self._queued) > WRITES_AHEAD:
                await _settled(self._queued[0])

    def _send(self) -> None:
        found, self._found = self._found, []
        if not found:
            return
        previous = self._queued[-1] if self._queued else None

        async def write() -> None:
            if previous is not None:
                await _settled(previous)
            if self._failure is None:  # after a failed batch, the scan fails: write no more
                await self.book.add_many(found, self.report)

        def ended(result: object) -> None:
            self._queued.remove(sent)
            if isinstance(result, Failure) and self._failure is None:
                self._failure = result

        sent = Deferred.fromCoroutine(write())
        self._queued.append(sent)
        sent.addBoth(ended)

    async def done(self) -> None:
        """Send what is left and wait for every batch; fail as the first failed batch did."""
        self._send()
        while self._queued:
            await _settled(self._queued[-1])
        if self._failure is not None:
            self._failure.raiseException()


def _settled(d: Deferred[Any]) -> Deferred[None]:
    """Fires when `d` has (with None), leaving its result to its own callbacks."""
    settled: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        settled.callback(None)
        return result

    d.addBoth(fire)
    return settled


class PeriodicScans(Service):
    """Runs `scan` at start, then every `interval` seconds (0: only at start and when asked)."""

    def __init__(
        self, name: str, scan: Callable[[], Deferred[Any]], interval: float, clock: IReactorTime
    ) -> None:
        self.name = name
        self._scan = scan
        self.interval = interval
        self.clock = clock
        self._running: Deferred[Any] | None = None
        self._waiters: list[Deferred[Any]] = []
        self._next: IDelayedCall | None = None
        self.scans = 0
        self.failures = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._scheduled()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiters.append(done)
        done.addErrback(lambda _: None)  # logged already
        return done.addCallback(lambda _: None)

    def scan_now(self) -> Deferred[Any]:
        """Run a scan now (or join the one running); fire with its result, or fail as it does."""
        joined: Deferred[Any] = Deferred()
        self._waiters.append(joined)
        if self._running is None:
            if self._next is not None and self._next.active():
                self._next.cancel()
            self._next = None
            self._running = self._scan()
            self._running.addBoth(self._ended)
        return joined

    def _scheduled(self) -> None:
        self._next = None
        self.scan_now().addErrback(lambda _: None)  # logged in _ended

    def _ended(self, result: Any) -> None:
        self._running = None
        self.scans += 1
        if isinstance(result, Failure):
            self.failures += 1
            if result.check(DicomrstError, OSError):
                # The store or the database said no (S3 refused, a bucket missing, the
                # index down): the operator needs what it said, not a traceback.
                log.warn(
                    "index: scan of {name} failed; retried at the next interval: {why}",
                    name=self.name,
                    why=result.getErrorMessage(),
                )
            else:
                what = "index: scan of {name} failed; retried at the next interval"
                log.failure(what, result, name=self.name)
        if self.running and self.interval > 0:
            self._next = self.clock.callLater(self.interval, self._scheduled)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)  # a Failure errbacks the waiter

# -*- test-case-name: tests.unit.test_index -*-
"""Reconcile scans run at start and every ``index.scan-interval``, one at a time.

`ScanBook` holds what both reconcile scans (the S3 one, LOCAL's directory walk) do with
what they found: index a record, skip what is not indexable, remove what went away, log
the end.  `PeriodicScans` is a Twisted service around any scan: started, it runs one at
once and then one every interval after the previous ended (a slow scan never overlaps
the next); `scan_now` runs one on demand, or joins the one running.  A failed scan is
logged and retried at the next interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from dicomrst.errors import DicomrstError
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.logs import logger

log = logger("dicomrst.index")


@attrs.define
class ScanReport:
    """What one scan found and did."""

    listed: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unreadable: int = 0  # found not indexable (logged) in this scan
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

    def begin(self, present: set[str]) -> None:
        self.present = present
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

    async def add(self, record: IndexRecord, key: str, stamp: str, known: bool, report: ScanReport) -> None:
        replaced = await self.index.add(record)
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
        for key in sorted(set(known) - self.present):
            if await self.index.remove_key(self.aet, key):
                report.removed += 1
        report.seconds = seconds
        log.info(
            "index: scanned {aet}: {listed} {what}s, {added} added, {changed} changed, {removed} removed, "
            "{unreadable} unreadable, {bytes} bytes read in {seconds:.1f} s",
            aet=self.aet,
            listed=report.listed,
            what="object" if self.what == "s3 object" else self.what,
            added=report.added,
            changed=report.changed,
            removed=report.removed,
            unreadable=report.unreadable,
            bytes=report.bytes_read,
            seconds=report.seconds,
        )
        return report


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

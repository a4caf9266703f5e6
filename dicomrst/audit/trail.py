# -*- test-case-name: tests.unit.test_audit -*-
"""The audit trail: records in, through a bounded queue, out to a writer.

Recording never waits: `AuditTrail.record` formats the record and queues it, or, with the
queue full (a collector down or slow for longer than the queue covers), drops it and
counts it (`AuditTrail.dropped`, the hook for ``dicomrst_audit_dropped_total``).  A burst
of drops is logged twice: when it starts, and with its count once a record is queued
again.  The writer (`IAuditWriter`: a syslog collector over TCP or TLS, or a file) takes
records from the queue as fast as its destination accepts them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface

from dicomrst.audit.formats import XML, Source, encode
from dicomrst.audit.record import AuditRecord
from dicomrst.logs import logger

log = logger("dicomrst.audit")

DEFAULT_QUEUE_SIZE = 10_000


class IAuditWriter(Interface):
    """Where queued records go; it takes them from `AuditQueue` itself."""

    description: str = Attribute("The destination, for log lines: tcp:host:port, a file path.")

    def wake() -> None:
        """The queue has records: write them when the destination can take them."""

    def start() -> None:
        """Begin (connect, open the file)."""

    def stop() -> object:
        """End; may return a Deferred that fires once what could be written was."""


class AuditQueue:
    """Encoded records waiting for the writer, at most `size` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: bytes) -> bool:
        """Queue `item`; False (and not queued) when full."""
        if len(self._items) >= self.size:
            return False
        self._items.append(item)
        return True

    def take(self) -> bytes | None:
        """The oldest item, None when empty."""
        return self._items.popleft() if self._items else None

    def put_back(self, item: bytes) -> None:
        """Return `item` to the front (a write that could not be made)."""
        self._items.appendleft(item)


class AuditTrail:
    """The audit trail the services record into (``telemetry.audit``).

    :param writer_factory: makes the writer for the trail's queue (it is given the queue).
    :param clock: times the records (POSIX seconds).
    :param source: the syslog header fields and the audit source.
    :param fmt: ``xml`` (the DICOM audit message) or ``json``.
    :param queue_size: records held for the writer before new ones are dropped.
    :ivar dropped: records dropped so far because the queue was full.
    """

    def __init__(
        self,
        writer_factory: Callable[[AuditQueue], IAuditWriter],
        clock: IReactorTime,
        source: Source,
        fmt: str = XML,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.clock = clock
        self.source = source
        self.format = fmt
        self.queue = AuditQueue(queue_size)
        self.writer = writer_factory(self.queue)
        self.dropped = 0
        self._burst = 0  # dropped since the last record that was queued

    def now(self) -> float:
        return self.clock.seconds()

    def record(self, record: AuditRecord) -> bool:
        """Queue `record` for the writer; False when it was dropped (the queue is full)."""
        if len(self.queue) >= self.queue.size:
            self._drop()
            return False
        try:
            encoded = encode(record, self.source, self.format)
        except Exception:
            log.failure("audit: cannot encode a {service} record", service=record.service.value)
            self._drop()
            return False
        self.queue.put(encoded)
        if self._burst:
            log.warn(
                "audit: {count} record(s) dropped while the queue was full ({total} in all); "
                "queueing again for {destination}",
                count=self._burst,
                total=self.dropped,
                destination=self.writer.description,
            )
            self._burst = 0
        self.writer.wake()
        return True

    def _drop(self) -> None:
        self.dropped += 1
        self._burst += 1
        if self._burst == 1:
            log.warn(
                "audit: queue full ({size} records waiting for {destination}): dropping records",
                size=self.queue.size,
                destination=self.writer.description,
            )

    def start(self) -> None:
        self.writer.start()

    def stop(self) -> object:
        if self._burst:
            log.warn("audit: {count} record(s) dropped at the end", count=self._burst)
            self._burst = 0
        return self.writer.stop()

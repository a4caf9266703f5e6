# -*- test-case-name: tests.unit.test_audit -*-
"""The audit trail as a service of the gateway: started first and stopped last, so the
records of the last requests (which the HTTP service lets finish as it stops) are
written before the writer goes; and how a ``telemetry.audit`` endpoint becomes a writer."""

from __future__ import annotations

import os
import socket

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from dicomrst.audit.formats import Source
from dicomrst.audit.trail import AuditQueue, AuditTrail, IAuditWriter
from dicomrst.audit.writers import FileWriter, StreamWriter
from dicomrst.common.reactor import IGatewayReactor

FILE_PREFIX = "file:"


class AuditService(Service):
    """Runs `trail` (and the one thread its file writer appends in, if it has one)."""

    def __init__(self, trail: AuditTrail, pool: ThreadPool | None = None) -> None:
        self.trail = trail
        self.pool = pool

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self.pool is not None:
            self.pool.start()
        self.trail.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        d: Deferred[object] = maybeDeferred(self.trail.stop)
        d.addBoth(self._stop_pool)
        return d.addCallback(lambda _: None)

    def _stop_pool(self, result: object) -> object:
        if self.pool is not None:
            self.pool.stop()
        return result


def make_trail(
    reactor: IGatewayReactor,
    endpoint: str,
    fmt: str = "xml",
    queue_size: int = 10_000,
    app_name: str = "dicomrst",
    hostname: str | None = None,
    site_id: str | None = None,
) -> tuple[AuditTrail, AuditService]:
    """The trail for a ``telemetry.audit`` endpoint (``file:PATH`` or a client endpoint
    string); `ValueError` for an endpoint Twisted cannot parse."""
    source = Source(hostname or socket.gethostname() or "-", app_name, str(os.getpid()), site_id)
    pool: ThreadPool | None = None
    if endpoint.startswith(FILE_PREFIX):
        path = endpoint[len(FILE_PREFIX) :].strip()
        pool = ThreadPool(1, 1, name="dicomrst-audit")
        thread_pool = pool

        def run(f: object, *args: object) -> Deferred[object]:
            return deferToThreadPool(reactor, thread_pool, f, *args)  # type: ignore[arg-type]  # any callable

        def writer(queue: AuditQueue) -> IAuditWriter:
            return FileWriter(queue, path, reactor, run)
    else:
        client = clientFromString(reactor, endpoint)

        def writer(queue: AuditQueue) -> IAuditWriter:
            return StreamWriter(queue, client, reactor, endpoint)

    trail = AuditTrail(writer, reactor, source, fmt, queue_size)
    return trail, AuditService(trail, pool)

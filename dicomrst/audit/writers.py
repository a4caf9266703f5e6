# -*- test-case-name: tests.unit.test_audit -*-
"""The audit trail's destinations: a syslog collector over a stream (TCP, or TLS as RFC
5425 has it: any Twisted client endpoint string), or a file.

* **Stream.**  A `ClientService` keeps one connection up, reconnecting with backoff; each
  message goes out octet-counted (RFC 6587 §3.4.1).  The connection is a push producer's
  consumer: while its send buffer is over the high-water mark (a slow or stuck collector)
  the writer stops taking records, so they wait in the bounded queue, and beyond it are
  dropped and counted, never held without bound.  Syslog over TCP has no acknowledgement:
  what was written to a connection that then breaks may be lost with it.
* **File.**  One message a line, appended in a thread of its own (a slow disk must not
  stop the reactor), a batch at a time; created readable by its owner only; reopened on
  SIGHUP as the log file is, so logrotate can move it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.audit.formats import octet_counted
from dicomrst.audit.trail import AuditQueue, IAuditWriter
from dicomrst.logs import logger

log = logger("dicomrst.audit")

#: Messages appended to the file in one write.
FILE_BATCH = 512
#: Seconds before a failed file write is tried again.
FILE_RETRY = 5.0

#: Runs a blocking function off the reactor: (function, args) -> its result, later.
RunInThread = Callable[..., "Deferred[Any]"]


@implementer(IPushProducer)
class _SyslogSender(Protocol):
    """One connection to the collector: writes while the transport takes more."""

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer
        self.paused = False
        self.registered = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]  # ITransport lacks it; TCP has it
        self.registered = True
        self.writer.connected(self)

    def dataReceived(self, data: bytes) -> None:
        pass  # a collector says nothing (RFC 6587, RFC 5425)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008  # Twisted's own default
        self.writer.disconnected(self, reason)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.writer.wake()

    def stopProducing(self) -> None:
        self.paused = True


class _SenderFactory(Factory):
    noisy = False

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer

    def buildProtocol(self, addr: object) -> _SyslogSender:
        return _SyslogSender(self.writer)


@implementer(IAuditWriter)
class StreamWriter:
    """Records to a syslog collector over `endpoint` (see the module).

    :param description: the endpoint string, for log lines.
    :param retry: seconds to wait before reconnect attempt n (ClientService's backoff
        from 1 s to 60 s by default).
    """

    def __init__(
        self,
        queue: AuditQueue,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        description: str,
        retry: Callable[[int], float] | None = None,
    ) -> None:
        self.queue = queue
        self.description = description
        self.sent = 0
        self._sender: _SyslogSender | None = None
        self._service = ClientService(
            endpoint,
            _SenderFactory(self),
            retryPolicy=retry or backoffPolicy(maxDelay=60.0),
            clock=clock,
        )
        self._lost_logged = False

    @property
    def is_connected(self) -> bool:
        return self._sender is not None

    def start(self) -> None:
        self._service.startService()

    def connected(self, sender: _SyslogSender) -> None:
        self._sender = sender
        log.info("audit: connected to {destination}", destination=self.description)
        self._lost_logged = False
        self.wake()

    def disconnected(self, sender: _SyslogSender, reason: Failure) -> None:
        if self._sender is sender:
            self._sender = None
            log.warn(
                "audit: connection to {destination} lost ({why}); reconnecting, records wait in the queue",
                destination=self.description,
                why=reason.getErrorMessage(),
            )

    def wake(self) -> None:
        sender = self._sender
        if sender is None or sender.transport is None:
            return
        while not sender.paused:
            item = self.queue.take()
            if item is None:
                return
            sender.transport.write(octet_counted(item))
            self.sent += 1

    def stop(self) -> Deferred[None]:
        """Hand what is queued to the connection (its buffer flushes as it closes), then
        stop; without a connection what is queued is lost, and said so."""
        sender = self._sender
        if sender is not None and sender.transport is not None:
            while (item := self.queue.take()) is not None:
                sender.transport.write(octet_counted(item))
                self.sent += 1
            # TLS holds its close (close_notify) while a producer is registered: the
            # stop would wait for ever.
            if sender.registered:
                sender.registered = False
                sender.transport.unregisterProducer()  # type: ignore[attr-defined]  # ITransport lacks it; TCP has it
        elif len(self.queue):
            log.warn(
                "audit: stopping with {count} record(s) not sent to {destination}",
                count=len(self.queue),
                destination=self.description,
            )
        return self._service.stopService()


@implementer(IAuditWriter)
class FileWriter:
    """Records appended to `path`, one message a line (see the module).

    :param run: runs the blocking writes off the reactor (a one-thread pool of the
        writer's own in the gateway; synchronous in tests).
    """

    def __init__(self, queue: AuditQueue, path: str, clock: IReactorTime, run: RunInThread) -> None:
        self.queue = queue
        self.path = path
        self.description = path
        self._clock = clock
        self._run = run
        self._file: Any = None  # touched only by the writing thread (and stop, after it)
        self._busy: Deferred[None] | None = None
        self._reopen = False
        self._retry: IDelayedCall | None = None
        self._failing = False
        self._stopped = False
        self.written = 0

    def start(self) -> None:
        self.wake()

    def reopen(self) -> str:
        """SIGHUP: reopen the file at the next write (now, when idle)."""
        self._reopen = True
        self.wake(force=True)
        return f"reopening audit file {self.path}"

    def wake(self, force: bool = False) -> None:
        if self._busy is not None or self._retry is not None or self._stopped:
            return
        batch: list[bytes] = []
        while len(batch) < FILE_BATCH and (item := self.queue.take()) is not None:
            batch.append(item)
        if not batch and not force:
            return
        reopen, self._reopen = self._reopen, False
        data = b"".join(item + b"\n" for item in batch)
        d = self._busy = self._run(self._append, data, reopen)
        d.addCallbacks(self._written, self._failed, callbackArgs=(len(batch),), errbackArgs=(batch, reopen))

    def _append(self, data: bytes, reopen: bool) -> None:
        # In the writer's thread.
        if reopen and self._file is not None:
            self._file.close()
            self._file = None
        if self._file is None:
            # Owner only when created: the records hold patient data.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "ab")
        if data:
            self._file.write(data)
            self._file.flush()

    def _written(self, _: None, count: int) -> None:
        self._busy = None
        self.written += count
        if self._failing:
            self._failing = False
            log.info("audit: writing to {path} again", path=self.path)
        self.wake()

    def _failed(self, failure: Failure, batch: list[bytes], reopen: bool) -> None:
        self._busy = None
        for item in reversed(batch):
            self.queue.put_back(item)
        self._reopen = True  # a fresh handle may help (the disk back, the directory recreated)
        if not self._failing:
            self._failing = True
            log.error(
                "audit: cannot write to {path}: {why}; records wait in the queue, retrying every {retry} s",
                path=self.path,
                why=failure.getErrorMessage(),
                retry=FILE_RETRY,
            )
        if not self._stopped:
            self._retry = self._clock.callLater(FILE_RETRY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.wake()

    def stop(self) -> Deferred[None]:
        """Write what is queued, then close the file."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stopped = True  # no new batch: the last one takes what is left
        busy = self._busy if self._busy is not None else succeed(None)

        def final(_: object) -> Deferred[None]:
            data = b"".join(item + b"\n" for item in iter(self.queue.take, None))
            return self._run(self._close, data)

        d: Deferred[None] = busy.addBoth(final)
        return d

    def _close(self, data: bytes) -> None:
        try:
            if data:
                self._append(data, False)
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

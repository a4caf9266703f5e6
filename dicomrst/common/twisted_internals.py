# -*- test-case-name: tests.unit.test_twisted_internals -*-
"""Every place the gateway relies on a private or undocumented part of Twisted.

Each function below wraps one such item, says why it is needed, and degrades to the
public behaviour when the item is missing, so a Twisted upgrade that removes one makes
the gateway slower or less precise, never broken.  tests.unit.test_twisted_internals
exercises every item on real Twisted objects, so an upgrade that removes or changes
one fails a test that names it.

Items (Twisted 24.3 to 26.10):

1. ``HTTPChannel._command``, ``._path``, ``._version``: the request line, kept by the
   channel until the body is in.  A STOW-RS body is routed and parsed as it arrives, so
   it is needed at ``Request.gotLength``, before ``requestReceived`` sets it on the request.
2. ``Request._disconnected``: whether the connection under a request is gone.  Twisted
   has no public way to ask before writing (``notifyFinish`` only tells once).
3. ``Request.notifications``: the ``notifyFinish`` Deferreds.  A request deadline fails
   them so Klein cancels the handler before the 504 is written.
4. ``transport.doWrite()``: hand a TCP transport's buffered bytes to the kernel now.  A
   C-STORE-RSP is on the critical path of every C-MOVE/C-GET sub-operation; the next
   reactor turn would send it after the HTTP response's writes.  And an aborted HTTP
   response's bytes must reach the client before the reset, which drops what is
   buffered; over TLS that also needs ``BufferingTLSTransport._aggregator.flush()``: the
   small writes TLS gathers for the reactor's next turn, encrypted into the TCP transport.
5. ``transport.bufferSize``: how much a TCP transport buffers before pausing its producer
   (64 KiB).  A multipart response raises it to 1 MiB so a fragment of 128 KiB does not
   pause the PACS for every PDU.
6. Pausing the TCP transport under an ``HTTPChannel`` while a request body arrives: the
   channel pauses and resumes that transport itself (its send buffer is full, a pipelined
   request waits), with no public way to share it.  `BodyReading` is the one owner of our
   pause: it resumes only when no holder wants the body paused and the channel is not
   waiting for its transport (``HTTPChannel._waitingForTransport``).  What it cannot
   prevent: the channel resuming the transport itself when its send buffer drains while
   a body is paused; the upload then parses a part more than it asked for, which its
   spool bounds.
7. ``FileDescriptor.disconnecting`` on the reactor's writers: at shutdown, whether a
   closing connection still has bytes to write.
8. ``StreamServerEndpointService._raiseSynchronously``: raise a listen error from
   ``startService`` (as twistd's own ``--listen`` services do), so "address in use" stops
   startup with one line rather than leaving a gateway that answers nothing.
9. ``HTTPChannel.site``: the `Site` that built the channel (``Site.buildProtocol`` sets it;
   ``server.Request.process`` reads it).  A request needs its site from its first byte
   (deadlines, limits, the in-flight count), before ``process`` sets ``Request.site``.
10. ``HTTPChannel.persistent``: whether the connection carries another request after this
    response.  A 413 that leaves the body unread, and a graceful stop, must close it.
11. ``HTTPChannel._respondToBadRequestAndDisconnect``: how the channel answers what it
    cannot parse (a malformed request line or header field, a bad Content-Length, a
    malformed chunked body): a bare ``400`` with no body, no log line and no request
    lifecycle.  `BadRequestHook` routes it to ``badRequest``, so the gateway answers with
    its JSON error and logs the request like any other.  Without the item: Twisted's
    bare 400 (still an answer).
12. ``HTTPChannel.requests``: the requests the channel has made and not yet finished;
    the last is the one whose head or body is being read.  The channel's head deadline
    and its 400/414/431 answers need that request.  Without the item: no request is
    found, and those cases close the connection with Twisted's bare 400 or nothing.
13. ``FileDescriptor.SEND_LIMIT``: the most a TCP transport hands to one ``send`` per turn
    of the reactor (128 KiB, a class attribute read from the instance).  A multipart
    response raises it to 1 MiB so a held CT slice goes out in one turn, not four.
    Without the item: 128 KiB per turn.
14. ``FileDescriptor.writeSomeData`` and its write buffer (``dataBuffer``, ``offset``,
    ``_tempDataLen``): send bytes on a TCP transport whose buffer is empty now, rather than
    buffer them and register the socket for writing (an ``epoll_ctl``) for ``doWrite`` to
    send and unregister it (another): two system calls and Twisted's write bookkeeping per
    response or request, on every QIDO search's path twice.  Without the item:
    ``transport.write``, as before.
"""

from __future__ import annotations

from typing import cast

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, ITransport
from twisted.web.http import HTTPChannel, Request


def request_line(channel: HTTPChannel) -> tuple[bytes, bytes, bytes] | None:
    """Item 1: (method, URI, version) of the request whose headers just arrived, or None
    if this Twisted keeps them elsewhere."""
    try:
        command, path, version = channel._command, channel._path, channel._version
    except AttributeError:
        return None
    if isinstance(command, bytes) and isinstance(path, bytes) and isinstance(version, bytes):
        return command, path, version
    return None


def request_disconnected(request: Request) -> bool:
    """Item 2: the connection under `request` is gone."""
    try:
        return bool(request._disconnected)
    except AttributeError:
        return False


def fail_finish_waiters(request: Request, reason: BaseException) -> None:
    """Item 3: errback the Deferreds `request.notifyFinish()` handed out (Klein cancels the
    handler on that), as a lost connection would."""
    try:
        waiting, request.notifications = request.notifications, []
    except AttributeError:
        return
    for d in waiting:
        d.errback(reason)


def flush_now(transport: ITransport | None) -> None:
    """Item 4: write what `transport` buffered to the socket now, if it is a connected TCP
    transport that can; an error is left for the reactor's next turn to find."""
    try:
        # A transport without them, or None, raises AttributeError: hence the ignores.
        ready = transport.connected and not transport.disconnecting  # type: ignore[union-attr]  # TCP's, not ITransport's
        do_write = transport.doWrite  # type: ignore[union-attr]  # FileDescriptor's (TCP), not ITransport's
    except AttributeError:
        return  # not a TCP transport (a test double, TLS): it writes on its own schedule
    if ready and _buffered(transport):
        do_write()  # (with nothing buffered, it would cost a send that takes nothing)


def _buffered(transport: object) -> int | None:
    """Item 14: the bytes a TCP transport (a FileDescriptor) holds unsent; None for another."""
    try:
        unsent: int = transport._tempDataLen + len(transport.dataBuffer) - transport.offset  # type: ignore[attr-defined]  # FileDescriptor's
    except (AttributeError, TypeError):
        return None
    return unsent


def write_now(transport: ITransport | None, data: bytes) -> None:
    """Item 14: ``transport.write(data)``, sending what the kernel takes of it now when
    `transport` is a connected TCP transport with nothing buffered (the usual case for a
    response or a request on a connection that keeps up); the rest, and everything on any
    other transport (TLS, a test double) or state (closing, data already waiting, an
    error), goes through ``transport.write`` as before.  At most the transport's send
    limit goes out here, as in one turn of the reactor."""
    # A FileDescriptor itself: Twisted's TLS wrapper answers for the TCP transport under it
    # (attribute lookups fall through to it), whose socket must not see the plaintext; nor
    # may a TCP connection that started TLS itself.
    if isinstance(transport, FileDescriptor) and data and not getattr(transport, "TLS", False):
        try:
            ready = (
                transport.connected
                and not transport.disconnecting
                and not transport._writeDisconnected
                and _buffered(transport) == 0
            )
            send = transport.writeSomeData
        except AttributeError:
            ready = False
        if ready:
            # An int (bytes taken; 0 when the kernel's buffer is full) or the connection's
            # loss as an exception, which transport.write's turn will find and report.
            sent = send(data)
            if isinstance(sent, int) and sent > 0:
                if sent >= len(data):
                    return
                data = data[sent:]
    transport.write(data)  # type: ignore[union-attr]  # None: AttributeError, as HTTPChannel.write's


def flush_tls_writes(transport: ITransport | None) -> None:
    """Item 4: hand the writes a TLS transport gathered for the reactor's next turn to TLS
    now (its ``loseConnection`` does so; ``abortConnection`` drops them), so they are in
    the TCP transport under it for `flush_now`.  Nothing for any other transport."""
    try:
        # Only BufferingTLSTransport has it, hence the ignore.
        flush = transport._aggregator.flush  # type: ignore[union-attr]  # BufferingTLSTransport's
    except AttributeError:
        return
    flush()


def _swap(transport: ITransport | None, attribute: str, size: int) -> int | None:
    """Set FileDescriptor's (TCP's) `attribute` on `transport`, not an ITransport one:
    its previous value, or None if the transport (or None) has no such setting."""
    previous = getattr(transport, attribute, None)
    if previous is None:
        return None
    setattr(transport, attribute, size)
    return int(previous)


def set_write_buffer(transport: ITransport | None, size: int) -> int | None:
    """Item 5: let `transport` buffer up to `size` bytes before it pauses its producer;
    the previous size (None if the transport has no such setting)."""
    return _swap(transport, "bufferSize", size)


def set_send_limit(transport: ITransport | None, size: int) -> int | None:
    """Item 13: let `transport` send up to `size` bytes per turn of the reactor; the
    previous limit (None if the transport has no such setting)."""
    return _swap(transport, "SEND_LIMIT", size)


def closing_connections_pending(reactor: IReactorFDSet) -> bool:
    """Item 7: some connection the reactor writes to is closing with bytes still to send."""
    return any(writer.disconnecting for writer in reactor.getWriters() if hasattr(writer, "disconnecting"))


def site_of(channel: HTTPChannel) -> object:
    """Item 9: the site `channel` serves (None when no Site built it)."""
    try:
        return channel.site  # type: ignore[attr-defined]  # set by Site.buildProtocol, undeclared
    except AttributeError:
        return None


def close_after_response(channel: HTTPChannel) -> None:
    """Item 10: close `channel` once the current response is out."""
    channel.persistent = False


def current_request(channel: HTTPChannel) -> Request | None:
    """Item 12: the last request `channel` made and has not finished (None if none)."""
    try:
        requests = channel.requests
    except AttributeError:
        return None
    if not isinstance(requests, list) or not requests:
        return None
    last = requests[-1]
    return last if isinstance(last, Request) else None


class BadRequestHook(HTTPChannel):
    """Item 11: an `HTTPChannel` whose answer to input it cannot parse is `badRequest`
    (by default Twisted's own bare 400 and close)."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.badRequest()

    def badRequest(self) -> None:
        HTTPChannel._respondToBadRequestAndDisconnect(self)


def raise_listen_errors(service: StreamServerEndpointService) -> None:
    """Item 8: a listen error known at once is raised from `service`'s startService."""
    service._raiseSynchronously = True


@attrs.define(eq=False)
class BodyReading:
    """Item 6: the one owner of pausing a request body's transport.

    Holders (an upload whose instances are behind, a body rejected as too large) `hold`
    and `release` the pause; the transport reads again only when none holds it and the
    channel itself is not waiting for its transport to drain.
    """

    channel: HTTPChannel
    _holders: set[object] = attrs.field(factory=set)

    @property
    def paused(self) -> bool:
        return bool(self._holders)

    def hold(self, holder: object) -> None:
        if holder in self._holders:
            return
        self._holders.add(holder)
        transport = self.channel.transport
        if len(self._holders) == 1 and transport is not None:
            _producer(transport).pauseProducing()

    def release(self, holder: object) -> None:
        if holder not in self._holders:
            return
        self._holders.discard(holder)
        if self._holders or self.channel.transport is None:
            return
        try:
            if self.channel._waitingForTransport:
                return  # the channel resumes it when its send buffer drains
        except AttributeError:
            pass
        _producer(self.channel.transport).resumeProducing()


def _producer(transport: ITransport) -> IPushProducer:
    """An HTTPChannel's transport (TCP, or TLS over it) as what it also is: the push
    producer of the request bytes.  ITransport does not say so."""
    return cast(IPushProducer, transport)

"""Every private or undocumented part of Twisted the gateway relies on, exercised on real
Twisted objects (dicomrst.common.twisted_internals lists them and says why each is needed).

A Twisted upgrade that removes or changes one fails the test named for it, with a message
that names the item: the gateway itself would only degrade (slower, or less precise).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, RaisingMemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel, Request
from zope.interface import implementer

from dicomrst.common import twisted_internals as internals
from dicomrst.common.listening import ListeningService
from tests.support.fakes import KernelTransport


def changed(item: str, what: str) -> str:
    return f"Twisted internal changed: {item}: {what} (see dicomrst/common/twisted_internals.py)"


class _LineRecorder(Request):
    seen: list[Any] = []

    def gotLength(self, length: int | None) -> None:
        _LineRecorder.seen.append(internals.request_line(self.channel))
        super().gotLength(length)


def channel_for(factory: type[Request] = Request) -> tuple[HTTPChannel, StringTransport]:
    channel = HTTPChannel()
    channel.requestFactory = factory
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class RequestLineTests(SynchronousTestCase):
    ITEM = "HTTPChannel._command/_path/_version"

    def test_the_request_line_is_known_when_the_headers_are_in(self) -> None:
        _LineRecorder.seen = []
        channel, _ = channel_for(_LineRecorder)
        channel.dataReceived(b"POST /aets/PACS/studies?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(
            _LineRecorder.seen,
            [(b"POST", b"/aets/PACS/studies?x=1", b"HTTP/1.1")],
            changed(self.ITEM, "the request line is not on the channel at Request.gotLength"),
        )


class DisconnectedTests(SynchronousTestCase):
    ITEM = "Request._disconnected"

    def test_a_lost_connection_is_seen_on_the_request(self) -> None:
        channel, _ = channel_for()
        request = Request(channel)
        self.assertFalse(internals.request_disconnected(request), changed(self.ITEM, "set before the loss"))
        request.connectionLost(Failure(ConnectionError("gone")))
        self.assertTrue(
            internals.request_disconnected(request), changed(self.ITEM, "not set by connectionLost")
        )


class FinishWaitersTests(SynchronousTestCase):
    ITEM = "Request.notifications"

    def test_notify_finish_waiters_fail_with_the_reason(self) -> None:
        channel, _ = channel_for()
        request = Request(channel)
        waiting = request.notifyFinish()
        internals.fail_finish_waiters(request, TimeoutError("deadline"))
        failure = self.failureResultOf(waiting)
        self.assertTrue(
            failure.check(TimeoutError), changed(self.ITEM, "notifyFinish's Deferreds are elsewhere")
        )
        self.assertEqual(request.notifications, [], changed(self.ITEM, "not a list of Deferreds"))


class FlushNowTests(SynchronousTestCase):
    ITEM = "FileDescriptor.doWrite"

    def test_buffered_bytes_reach_the_kernel_at_once(self) -> None:
        transport = KernelTransport()
        transport.write(b"C-STORE-RSP")
        self.assertEqual(transport.sent, [])  # buffered until the reactor's next turn
        internals.flush_now(transport)
        self.assertEqual(transport.sent, [b"C-STORE-RSP"], changed(self.ITEM, "no longer writes the buffer"))

    def test_a_closing_transport_is_left_alone(self) -> None:
        transport = KernelTransport()
        transport.write(b"late")
        transport.disconnecting = True
        internals.flush_now(transport)
        self.assertEqual(transport.sent, [])

    def test_nothing_buffered_costs_no_send(self) -> None:
        transport = KernelTransport()
        internals.flush_now(transport)
        self.assertEqual(transport.sent, [])

    def test_a_transport_without_a_kernel_is_left_alone(self) -> None:
        internals.flush_now(StringTransport())  # a test double, TLS: it writes on its own schedule
        internals.flush_now(None)

    def test_tcp_connections_have_it(self) -> None:
        from twisted.internet.tcp import Connection

        self.assertTrue(callable(getattr(Connection, "doWrite", None)), changed(self.ITEM, "gone from tcp"))


class _Refusing(KernelTransport):
    """A kernel that takes `take` bytes of the next send (0: its buffer is full), or
    reports the connection lost."""

    def __init__(self, take: int | None) -> None:
        super().__init__()
        self.take = take

    def writeSomeData(self, data: bytes) -> int | Exception:  # type: ignore[override]  # Twisted's may return the loss
        if self.take is None:
            return ConnectionLost()
        taken = bytes(data[: self.take])
        self.sent.append(taken)
        return len(taken)


class WriteNowTests(SynchronousTestCase):
    ITEM = "FileDescriptor.writeSomeData and its write buffer"

    def writing(self, transport: FileDescriptor) -> bool:
        return transport in transport.reactor.getWriters()  # type: ignore[attr-defined]  # a MemoryReactor

    def test_an_idle_transport_sends_at_once_without_registering_for_writing(self) -> None:
        transport = KernelTransport()
        internals.write_now(transport, b"HTTP/1.1 200 OK")
        self.assertEqual(transport.sent, [b"HTTP/1.1 200 OK"], changed(self.ITEM, "not sent"))
        self.assertFalse(self.writing(transport), changed(self.ITEM, "registered for writing"))
        self.assertEqual(internals._buffered(transport), 0, changed(self.ITEM, "the buffer is elsewhere"))

    def test_bytes_already_waiting_go_first(self) -> None:
        transport = KernelTransport()
        transport.write(b"first")
        self.assertEqual(internals._buffered(transport), 5, changed(self.ITEM, "the buffer is elsewhere"))
        internals.write_now(transport, b"second")
        self.assertEqual(transport.sent, [])
        transport.doWrite()
        self.assertEqual(transport.sent, [b"firstsecond"])
        self.assertFalse(self.writing(transport))

    def test_what_the_kernel_does_not_take_is_buffered(self) -> None:
        transport = _Refusing(take=4)
        internals.write_now(transport, b"C-FIND-RQ")
        self.assertEqual(transport.sent, [b"C-FI"])
        self.assertTrue(self.writing(transport))
        transport.take = 100
        transport.doWrite()
        self.assertEqual(transport.sent, [b"C-FI", b"ND-RQ"])
        self.assertFalse(self.writing(transport))

    def test_a_full_kernel_buffer_leaves_it_all_to_the_reactor(self) -> None:
        transport = _Refusing(take=0)
        internals.write_now(transport, b"C-FIND-RQ")
        self.assertEqual(internals._buffered(transport), 9)
        self.assertTrue(self.writing(transport))

    def test_a_lost_connection_is_found_by_the_reactor_s_write(self) -> None:
        transport = _Refusing(take=None)
        internals.write_now(transport, b"C-FIND-RQ")
        self.assertEqual(internals._buffered(transport), 9)
        self.assertIsInstance(transport.doWrite(), ConnectionLost)

    def test_a_closing_transport_buffers(self) -> None:
        transport = KernelTransport()
        transport.disconnecting = True
        internals.write_now(transport, b"late")
        self.assertEqual(transport.sent, [])
        self.assertEqual(internals._buffered(transport), 4)

    def test_a_transport_without_a_kernel_writes_as_usual(self) -> None:
        transport = StringTransport()
        internals.write_now(transport, b"x")
        self.assertEqual(transport.value(), b"x")

    def test_tls_writes_go_through_tls(self) -> None:
        """Twisted's TLS wrapper passes attribute lookups to the TCP transport under it:
        its socket must not get the plaintext."""
        from twisted.internet.protocol import Protocol
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(
            CertificateOptions(), False, Factory.forProtocol(Protocol), MemoryReactorClock()
        )
        tls = factory.buildProtocol(None)
        tcp = KernelTransport()
        tls.makeConnection(tcp)
        self.assertEqual(internals._buffered(tls), internals._buffered(tcp))  # what the item says
        internals.write_now(tls, b"plaintext")
        internals.flush_tls_writes(tls)
        tcp.doWrite()
        self.assertNotIn(b"plaintext", b"".join(tcp.sent))

    def test_tcp_connections_have_it(self) -> None:
        from twisted.internet.tcp import Connection

        socket = _Socket()
        transport = Connection(socket, None, MemoryReactor())
        transport.connected = True
        self.assertIsInstance(transport, FileDescriptor, changed(self.ITEM, "tcp is no FileDescriptor"))
        self.assertEqual(internals._buffered(transport), 0, changed(self.ITEM, "the buffer is elsewhere"))
        internals.write_now(transport, b"x" * 10)
        self.assertEqual(socket.sends, [10], changed(self.ITEM, "not sent"))
        self.assertFalse(self.writing(transport), changed(self.ITEM, "registered for writing"))


class FlushTlsWritesTests(SynchronousTestCase):
    """What it is for (an abort over HTTPS) is tested in tests.unit.test_web (a real
    handshake): here, that the gathered writes are where the item says."""

    ITEM = "BufferingTLSTransport._aggregator"

    def test_tls_transports_gather_small_writes_in_it(self) -> None:
        from twisted.internet.protocol import Protocol
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory

        clock = MemoryReactorClock()
        factory = TLSMemoryBIOFactory(CertificateOptions(), True, Factory.forProtocol(Protocol), clock)
        tls = factory.buildProtocol(None)
        tls.makeConnection(StringTransport())
        aggregator = getattr(tls, "_aggregator", None)
        self.assertTrue(callable(getattr(aggregator, "flush", None)), changed(self.ITEM, "gone"))
        tls.write(b"small")
        self.assertEqual(getattr(aggregator, "_buffer", None), [b"small"], changed(self.ITEM, "not gathered"))
        internals.flush_tls_writes(tls)
        self.assertEqual(getattr(aggregator, "_buffer", None), [], changed(self.ITEM, "not flushed"))

    def test_other_transports_are_left_alone(self) -> None:
        internals.flush_tls_writes(StringTransport())
        internals.flush_tls_writes(None)


class WriteBufferTests(SynchronousTestCase):
    ITEM = "FileDescriptor.bufferSize"

    def test_a_larger_buffer_pauses_the_producer_later(self) -> None:
        transport = KernelTransport()
        producer = Producer()
        transport.registerProducer(producer, True)
        default = internals.set_write_buffer(transport, 1000)
        self.assertEqual(default, 2**16, changed(self.ITEM, "the default is no longer 64 KiB"))
        transport.write(b"x" * 900)
        self.assertEqual(producer.events, [], changed(self.ITEM, "the producer paused below the size set"))
        transport.write(b"x" * 200)
        self.assertEqual(producer.events, ["pause"], changed(self.ITEM, "no pause beyond the size set"))


class _Socket:
    """What a tcp.Connection calls on its socket to send; records each send's size."""

    def __init__(self) -> None:
        self.sends: list[int] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def send(self, data: memoryview) -> int:
        self.sends.append(len(data))
        return len(data)


class SendLimitTests(SynchronousTestCase):
    ITEM = "FileDescriptor.SEND_LIMIT"

    def test_a_larger_limit_sends_more_per_turn(self) -> None:
        from twisted.internet.tcp import Connection

        socket = _Socket()
        transport = Connection(socket, None, MemoryReactor())
        transport.connected = True
        default = internals.set_send_limit(transport, 1 << 20)
        self.assertEqual(default, 128 * 1024, changed(self.ITEM, "the default is no longer 128 KiB"))
        transport.write(b"x" * 600_000)
        transport.doWrite()
        self.assertEqual(socket.sends, [600_000], changed(self.ITEM, "a turn sends less than the limit set"))
        internals.set_send_limit(transport, default)
        transport.write(b"x" * 600_000)
        transport.doWrite()
        self.assertEqual(socket.sends[1:], [default], changed(self.ITEM, "the restored limit is not kept"))

    def test_a_transport_without_it_is_left_alone(self) -> None:
        self.assertIsNone(internals.set_send_limit(StringTransport(), 1 << 20))
        self.assertIsNone(internals.set_send_limit(None, 1 << 20))


class BodyReadingTests(SynchronousTestCase):
    ITEM = "HTTPChannel._waitingForTransport"

    def test_the_channel_waiting_for_its_transport_keeps_the_body_paused(self) -> None:
        channel, transport = channel_for()
        reading = internals.BodyReading(channel)
        reading.hold("upload")
        self.assertEqual(transport.producerState, "paused")
        channel.pauseProducing()  # the channel's own send buffer is full
        self.assertTrue(channel._waitingForTransport, changed(self.ITEM, "not set by pauseProducing"))
        reading.release("upload")
        self.assertEqual(transport.producerState, "paused", changed(self.ITEM, "we resumed over the channel"))
        channel.resumeProducing()
        self.assertFalse(channel._waitingForTransport, changed(self.ITEM, "not cleared by resumeProducing"))
        self.assertEqual(transport.producerState, "producing")

    def test_one_holder_does_not_resume_over_another(self) -> None:
        channel, transport = channel_for()
        reading = internals.BodyReading(channel)
        reading.hold("a")
        reading.hold("b")
        reading.release("a")
        self.assertEqual(transport.producerState, "paused")
        reading.release("b")
        self.assertEqual(transport.producerState, "producing")


class ClosingConnectionsTests(SynchronousTestCase):
    ITEM = "FileDescriptor.disconnecting"

    def test_a_closing_writer_is_seen(self) -> None:
        reactor = MemoryReactor()
        writer = FileDescriptor(reactor)
        self.assertFalse(writer.disconnecting, changed(self.ITEM, "missing or set on a new transport"))
        reactor.getWriters = lambda: [writer]  # type: ignore[method-assign]
        self.assertFalse(internals.closing_connections_pending(reactor))
        writer.disconnecting = True
        self.assertTrue(internals.closing_connections_pending(reactor))


class ChannelSiteTests(SynchronousTestCase):
    ITEM = "HTTPChannel.site"

    def test_the_channel_knows_the_site_that_built_it(self) -> None:
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        site = Site(Resource())
        channel = site.buildProtocol(None)
        self.assertIs(
            internals.site_of(channel), site, changed(self.ITEM, "Site.buildProtocol no longer sets it")
        )
        self.assertIsNone(internals.site_of(HTTPChannel()))


class PersistentTests(SynchronousTestCase):
    ITEM = "HTTPChannel.persistent"

    def test_a_closed_channel_ends_the_connection_after_the_response(self) -> None:
        channel, transport = channel_for()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        [request] = channel.requests
        internals.close_after_response(channel)
        request.write(b"x")
        request.finish()
        self.assertTrue(transport.disconnecting, changed(self.ITEM, "the connection stayed open"))


class ListenErrorTests(SynchronousTestCase):
    ITEM = "StreamServerEndpointService._raiseSynchronously"

    def test_a_listen_error_is_raised_from_start(self) -> None:
        in_use = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        reactor = RaisingMemoryReactor(listenException=in_use)
        service = ListeningService(reactor, "tcp:8080", Factory(), "test")
        try:
            service.startService()
        except CannotListenError:
            pass
        else:
            self.fail(changed(self.ITEM, "the listen error was not raised from startService"))
        self.failureResultOf(service.whenListening, CannotListenError)

    def test_a_good_listen_reports_its_port(self) -> None:
        reactor = MemoryReactorClock()
        service = ListeningService(reactor, "tcp:8080:interface=127.0.0.1", Factory(), "test")
        service.startService()
        port = self.successResultOf(service.whenListening)
        self.assertIs(port, service.port)
        stopped: Deferred[None] = service.stopService()
        self.successResultOf(stopped)


class _Recording(internals.BadRequestHook):
    def __init__(self) -> None:
        super().__init__()
        self.bad = 0

    def badRequest(self) -> None:
        self.bad += 1
        self.transport.loseConnection()


class BadRequestHookTests(SynchronousTestCase):
    ITEM = "HTTPChannel._respondToBadRequestAndDisconnect"

    def test_what_the_channel_cannot_parse_reaches_the_hook(self) -> None:
        for head in (
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",  # a header field
            b"GET /\x01 HTTP/1.1\r\n\r\n",  # the request line
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a chunk size
        ):
            channel = _Recording()
            channel.requestFactory = Request
            transport = StringTransport()
            channel.makeConnection(transport)
            channel.dataReceived(head)
            self.assertEqual(channel.bad, 1, changed(self.ITEM, f"not called for {head!r}"))
            self.assertEqual(transport.value(), b"", changed(self.ITEM, "Twisted answered by itself"))

    def test_by_default_twisted_answers(self) -> None:
        channel = internals.BadRequestHook()
        channel.requestFactory = Request
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), changed(self.ITEM, "no 400"))


class CurrentRequestTests(SynchronousTestCase):
    ITEM = "HTTPChannel.requests"

    def test_the_request_being_read_is_the_last(self) -> None:
        channel, _ = channel_for()
        self.assertIsNone(internals.current_request(channel))
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\n")
        request = internals.current_request(channel)
        self.assertIsInstance(request, Request, changed(self.ITEM, "no request after the request line"))
        channel.dataReceived(b"Content-Length: 2\r\n\r\nab")
        kept = changed(self.ITEM, "not kept while handled")
        self.assertIs(internals.current_request(channel), request, kept)
        assert request is not None
        request.finish()
        self.assertIsNone(internals.current_request(channel), changed(self.ITEM, "kept after it finished"))
        self.assertIsNone(internals.current_request(HTTPChannel()))

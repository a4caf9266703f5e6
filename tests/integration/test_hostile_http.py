"""Hostile and careless HTTP clients against the gateway as a process, on its real port.

The unit tests (tests.unit.test_web) drive the site on a memory transport; these send
the same bytes through a real socket to ``twistd dicomrst``, so the configuration key, the
site's protocol and the reactor's TCP transport are the real ones: an oversized request
line (414), an oversized header block (431), a head trickled past
``server.http.header-timeout`` (408), a non-ASCII Host (400), and the log lines they leave.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.gateway import INTEGRATION_TIMEOUT, Gateway, eventually, reactor, start_gateway

HEADER_TIMEOUT_MS = 1000


class RawClient(Protocol):
    """Writes what it is told; `closed` fires with every byte the server sent."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.received)


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return int(status_line.split(" ")[1]), headers, json.loads(body) if body else None


class HostileHeadTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    async def gateway(self) -> Gateway:
        return await start_gateway(self, http={"header-timeout": HEADER_TIMEOUT_MS})

    async def connect(self, gateway: Gateway) -> RawClient:
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, peers.LOCALHOST, gateway.http_port), client)
        return client

    async def send(self, gateway: Gateway, data: bytes) -> bytes:
        client = await self.connect(gateway)
        assert client.transport is not None
        client.transport.write(data)
        return await client.closed

    async def test_each_head_it_will_not_take_is_answered_and_logged(self) -> None:
        gateway = await self.gateway()

        # A request line over 16 KiB, with an escape sequence in its target.
        status, headers, body = answer(
            await self.send(gateway, b"GET /\x1b[2J" + b"a" * 17_000 + b" HTTP/1.1\r\n")
        )
        self.assertEqual((status, headers["connection"]), (414, "close"))
        self.assertIn("request line longer than 16384 bytes", body["error"])

        # Header fields over 16 KiB in all.
        headers_block = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(40))
        status, _, body = answer(
            await self.send(gateway, b"GET / HTTP/1.1\r\nHost: gw\r\n" + headers_block + b"\r\n")
        )
        self.assertEqual(status, 431, body)

        # A Host that is not one.
        status, _, body = answer(
            await self.send(gateway, b"GET /aets HTTP/1.1\r\nHost: h\xc3\xa9llo\r\n\r\n")
        )
        self.assertEqual(status, 400)
        self.assertIn("invalid Host header", body["error"])

        lines = gateway.log_lines(r"\[dicomrst\.web#(info|warn)\] GET ")
        self.assertEqual(len([line for line in lines if " 414 " in line]), 1, gateway.log_tail())
        [line_414] = [line for line in lines if " 414 " in line]
        self.assertIn("GET /\\x1b[2Jaaaa", line_414)  # escaped, not a raw ESC
        self.assertNotIn("\x1b", gateway.log())
        self.assertEqual(len([line for line in lines if " 431 " in line]), 1, gateway.log_tail())
        self.assertEqual(len([line for line in lines if " 400 " in line]), 1, gateway.log_tail())

    async def test_a_trickled_head_is_a_408(self) -> None:
        gateway = await self.gateway()
        client = await self.connect(gateway)
        assert client.transport is not None
        transport = client.transport
        trickle = b"GET /aets HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 10_000

        sent = 0

        def one_byte() -> None:
            nonlocal sent
            if sent < len(trickle):
                transport.write(trickle[sent : sent + 1])
                sent += 1

        loop = task.LoopingCall(one_byte)
        loop.clock = reactor
        loop.start(0.05)
        try:
            raw = await client.closed
        finally:
            loop.stop()
        status, headers, body = answer(raw)
        self.assertEqual((status, headers["connection"]), (408, "close"))
        self.assertEqual(body, {"error": f"request headers not received within {HEADER_TIMEOUT_MS} ms"})
        self.assertLess(sent, len(trickle))  # cut off, not finished
        line = r"GET /aets 408 .* timeout request_id=\w+$"
        logged = await eventually(lambda: bool(gateway.log_lines(line)))
        self.assertTrue(logged, gateway.log_tail())

    async def test_a_connection_that_sends_nothing_is_closed(self) -> None:
        gateway = await self.gateway()
        client = await self.connect(gateway)
        self.assertEqual(await client.closed, b"")

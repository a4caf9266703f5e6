"""In-memory HTTP for the web layer's unit tests: a client connection held in memory.

`Connection` builds one HTTP/1.1 connection to a site (``GatewaySite``) on a
`StringTransport` from the client address `CLIENT`, sends a request line and reads back what
the site wrote; nothing touches a socket.  `AppRequests` is a test case that sends requests to
an app's resource through `StubTreq`.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.web.site import GatewaySite

CLIENT = IPv4Address("TCP", "192.0.2.7", 50123)
ROOT = "http://gateway.example"


class Connection:
    """One client connection to a site, held in memory."""

    def __init__(self, site: GatewaySite, client: IPv4Address = CLIENT) -> None:
        self.transport = StringTransport(peerAddress=client)
        self.protocol = site.buildProtocol(client)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(self, method: str = "GET", path: str = "/slow") -> None:
        self.protocol.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: gateway.example\r\n\r\n".encode())

    def lose(self, reason: BaseException | None = None) -> None:
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    def head_and_body(self) -> tuple[bytes, bytes]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        return head, body


class AppRequests(SynchronousTestCase):
    """Requests through `treq.testing.StubTreq` to the app in ``self.stub`` (set by setUp),
    at `ROOT` unless the path is a whole URL."""

    stub: StubTreq

    def start(self, path: str, method: str = "GET", **kwargs: Any) -> Deferred[Any]:
        url = path if "://" in path else ROOT + path
        d = self.stub.request(method, url, **kwargs)
        self.stub.flush()
        return d

    def finish(self, d: Deferred[Any]) -> tuple[Any, bytes]:
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def fetch(self, path: str, method: str = "GET", **kwargs: Any) -> tuple[Any, bytes]:
        return self.finish(self.start(path, method, **kwargs))

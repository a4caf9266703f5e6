"""TLS: the certificate files (`server_tls`, `client_tls`) and associations over TLS in
memory (`associate(tls=...)` against a `DimseServerFactory` behind the listener's TLS
layer, joined by iosim on a MemoryReactorClock: real handshakes, no sockets), and the
``tls`` keys reaching the listeners and pools (`dicomrst.tap.build`)."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim

from dicomrst.common.tls import TLSFileError, client_tls, server_tls
from dicomrst.config import parse_config
from dicomrst.dimse.client import associate
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.echo import c_echo
from dicomrst.dimse.server import DimseServerFactory
from dicomrst.tap import BackendsService, DimseListenerService, build
from dicomrst.ul.errors import TLSFailed
from dicomrst.web.service import HTTPService
from tests.support.tls import Authority, Issued
from tests.support.ul import ARTIM, ULTestCase, verification_request


class Authorities:
    """Two CAs; ours issued the server's and a client's certificate, the other one an
    intruder's."""

    def __init__(self, directory: str) -> None:
        self.ours = Authority.create(os.path.join(directory, "ours"))
        self.other = Authority.create(os.path.join(directory, "other"), "Other CA")
        self.server = self.ours.issue("scp", server=True)
        self.elsewhere = self.ours.issue("elsewhere", server=True, hosts=("pacs.example.org",))
        self.client = self.ours.issue("scu", client=True)
        self.intruder = self.other.issue("intruder", client=True)


class FileTests(ULTestCase):
    """What cannot be used is a TLSFileError naming the file's key (cert, key or ca)."""

    def setUp(self) -> None:
        super().setUp()
        self.pki = Authorities(self.mktemp())

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertFileError(self, field: str, fragment: str, make: Any, *args: Any) -> None:
        error = self.assertRaises(TLSFileError, make, *args)
        self.assertEqual(error.field, field, str(error))
        self.assertIn(fragment, error.message)

    def test_usable_files(self) -> None:
        server = self.pki.server
        self.assertTrue(IOpenSSLContextFactory.providedBy(server_tls(server.cert, server.key)))
        server_tls(server.cert, server.key, self.pki.ours.ca, True)
        client_tls("127.0.0.1", self.pki.ours.ca)
        client_tls("127.0.0.1", self.pki.ours.ca, self.pki.client.cert, self.pki.client.key)
        client_tls("127.0.0.1", self.pki.ours.ca, self.pki.client.cert, self.pki.client.key, False)

    def test_missing_files(self) -> None:
        server, missing = self.pki.server, self.mktemp()
        self.assertFileError("cert", "cannot read", server_tls, missing, server.key)
        self.assertFileError("key", "cannot read", server_tls, server.cert, missing)
        self.assertFileError("ca", "cannot read", server_tls, server.cert, server.key, missing)
        self.assertFileError("ca", "cannot read", client_tls, "127.0.0.1", missing)
        self.assertFileError(
            "cert", "cannot read", client_tls, "127.0.0.1", self.pki.ours.ca, missing, server.key
        )

    def test_files_that_are_not_what_they_should_be(self) -> None:
        server, junk = self.pki.server, self.write(b"not PEM\n")
        self.assertFileError("cert", "no PEM certificate", server_tls, junk, server.key)
        self.assertFileError("cert", "no PEM certificate", server_tls, server.key, server.key)
        self.assertFileError("key", "no PEM private key", server_tls, server.cert, junk)
        self.assertFileError("ca", "no PEM certificate", server_tls, server.cert, server.key, junk)
        self.assertFileError("ca", "no PEM certificate", client_tls, "127.0.0.1", junk)

    def test_a_key_of_another_certificate(self) -> None:
        self.assertFileError(
            "key",
            "is not the private key of the certificate",
            server_tls,
            self.pki.server.cert,
            self.pki.client.key,
        )
        self.assertFileError(
            "key",
            "is not the private key",
            client_tls,
            "h",
            self.pki.ours.ca,
            self.pki.client.cert,
            self.pki.server.key,
        )

    def test_an_encrypted_key(self) -> None:
        key = serialization.load_pem_private_key(open(self.pki.server.key, "rb").read(), None)
        encrypted = self.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        self.assertFileError("key", "encrypted", server_tls, self.pki.server.cert, encrypted)

    def test_the_chain_after_the_certificate_and_a_bundle_of_authorities(self) -> None:
        # A certificate file holding the chain, and a CA file holding several: all are read.
        with open(self.pki.server.cert, "rb") as f, open(self.pki.ours.ca, "rb") as g:
            cert, ca = f.read(), g.read()
        with open(self.pki.other.ca, "rb") as f:
            other = f.read()
        chained = self.write(cert + ca)
        bundle = self.write(other + ca)
        server_tls(chained, self.pki.server.key, bundle, True)
        client_tls("127.0.0.1", bundle)


class AssociationTests(ULTestCase):
    """`associate(tls=...)` against a listener behind `server_tls`, in memory."""

    def setUp(self) -> None:
        super().setUp()
        self.pki = Authorities(self.mktemp())

    def run_association(
        self,
        client: Any,
        server: Issued | None = None,
        ca: str | None = "ours",
        require: bool = True,
        host: str = "127.0.0.1",
    ) -> tuple[Deferred[DimseConnection], DimseServerFactory, iosim.IOPump, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        scp = DimseServerFactory("SCP", reactor, artim_timeout=ARTIM)
        server = server or self.pki.server
        listener_ca = self.pki.ours.ca if ca == "ours" else None
        wrapped = TLSMemoryBIOFactory(
            server_tls(server.cert, server.key, listener_ca, require), False, scp, reactor
        )
        d = Deferred.fromCoroutine(
            associate(reactor, host, 104, verification_request(), timeout=5, tls=client)
        )
        _, port, factory, _, _ = reactor.tcpClients[-1]
        ours = factory.buildProtocol(IPv4Address("TCP", host, port))
        theirs = wrapped.buildProtocol(IPv4Address("TCP", "192.0.2.2", 40000))
        pump = iosim.connect(
            theirs,
            iosim.FakeTransport(theirs, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.2", 40000)),
            ours,
            iosim.FakeTransport(
                ours,
                isServer=False,
                hostAddress=IPv4Address("TCP", "192.0.2.2", 40000),
                peerAddress=IPv4Address("TCP", host, port),
            ),
            clock=reactor,
        )
        for _ in range(10):  # the TLS layers send what they gathered on the next reactor turn
            pump.flush()
            reactor.advance(0)
        return d, scp, pump, reactor

    def settle(self, pump: iosim.IOPump, reactor: MemoryReactorClock) -> None:
        for _ in range(10):
            pump.flush()
            reactor.advance(0)

    def acceptor_outcomes(self) -> list[str]:
        return [e["outcome"] for e in self.events if e.get("role") == "acceptor" and "outcome" in e]

    def test_a_client_certificate_of_the_ca_is_let_in(self) -> None:
        tls = client_tls("127.0.0.1", self.pki.ours.ca, self.pki.client.cert, self.pki.client.key)
        d, scp, pump, reactor = self.run_association(tls)
        connection = self.successResultOf(d)
        echoed = Deferred.fromCoroutine(c_echo(connection, aet="SCP", timeout=5))
        self.settle(pump, reactor)
        self.successResultOf(echoed)
        released = connection.release()
        self.settle(pump, reactor)
        self.successResultOf(released)
        self.assertEqual(scp.open, set())
        self.assertEqual(self.acceptor_outcomes(), ["released"])
        self.assertNoTraceback()

    def test_a_server_certificate_of_another_ca_is_refused(self) -> None:
        tls = client_tls("127.0.0.1", self.pki.other.ca, self.pki.client.cert, self.pki.client.key)
        d, scp, _, _ = self.run_association(tls)
        error = self.failureResultOf(d, TLSFailed).value
        self.assertEqual(str(error), "TLS with SCP@127.0.0.1:104 failed: certificate verify failed")
        self.assertEqual(scp.open, set())
        [outcome] = self.acceptor_outcomes()
        self.assertTrue(outcome.startswith("TLS failed: "), outcome)

    def test_without_a_client_certificate_the_handshake_fails(self) -> None:
        d, scp, _, _ = self.run_association(client_tls("127.0.0.1", self.pki.ours.ca))
        error = self.failureResultOf(d, TLSFailed).value
        self.assertIn("certificate required", str(error))
        self.assertEqual(scp.open, set())
        self.assertEqual(len(self.acceptor_outcomes()), 1)
        self.assertIn("peer did not return a certificate", self.acceptor_outcomes()[0])

    def test_a_client_certificate_of_another_ca_is_refused(self) -> None:
        tls = client_tls("127.0.0.1", self.pki.ours.ca, self.pki.intruder.cert, self.pki.intruder.key)
        d, _, _, _ = self.run_association(tls)
        self.assertIn("unknown ca", str(self.failureResultOf(d, TLSFailed).value))
        self.assertEqual(self.acceptor_outcomes(), ["TLS failed: certificate verify failed"])

    def test_a_listener_that_does_not_require_one(self) -> None:
        # ca given, require-client-cert false: a client without a certificate is let in,
        # one with a certificate another CA issued is not.
        d, _, _, _ = self.run_association(client_tls("127.0.0.1", self.pki.ours.ca), require=False)
        self.successResultOf(d)
        tls = client_tls("127.0.0.1", self.pki.ours.ca, self.pki.intruder.cert, self.pki.intruder.key)
        d, _, _, _ = self.run_association(tls, require=False)
        self.failureResultOf(d, TLSFailed)
        d, _, _, _ = self.run_association(client_tls("127.0.0.1", self.pki.ours.ca), ca=None, require=False)
        self.successResultOf(d)

    def test_a_handshake_that_stalls_is_dropped_by_the_artim_timer(self) -> None:
        # The UL's ARTIM timer starts when TCP connects, so a client that opens a
        # connection and never finishes its handshake holds it no longer than that.
        reactor = MemoryReactorClock()
        scp = DimseServerFactory("SCP", reactor, artim_timeout=ARTIM)
        tls = server_tls(self.pki.server.cert, self.pki.server.key, self.pki.ours.ca, True)
        theirs = TLSMemoryBIOFactory(tls, False, scp, reactor).buildProtocol(
            IPv4Address("TCP", "192.0.2.2", 1)
        )
        transport = iosim.FakeTransport(theirs, isServer=True)
        theirs.makeConnection(transport)
        theirs.dataReceived(b"\x16\x03\x01\x02\x00")  # the head of a ClientHello, no more
        self.assertEqual(len(scp.open), 1)
        reactor.advance(ARTIM - 0.01)
        self.assertFalse(transport.disconnecting)
        reactor.advance(0.01)
        self.assertTrue(transport.disconnecting)
        theirs.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(scp.open, set())
        self.assertEqual(self.acceptor_outcomes(), ["ARTIM expired in Sta2"])

    def test_the_host_name_is_checked_unless_told_not_to(self) -> None:
        # The server's certificate names pacs.example.org only.
        ca, elsewhere = self.pki.ours.ca, self.pki.elsewhere
        d, _, _, _ = self.run_association(
            client_tls("127.0.0.1", ca), server=elsewhere, ca=None, require=False
        )
        error = self.failureResultOf(d, TLSFailed).value
        self.assertIn("does not name the host", str(error))
        tls = client_tls("127.0.0.1", ca, check_hostname=False)
        d, _, _, _ = self.run_association(tls, server=elsewhere, ca=None, require=False)
        self.successResultOf(d)
        # Without the host check the chain is still checked.
        tls = client_tls("127.0.0.1", self.pki.other.ca, check_hostname=False)
        d, _, _, _ = self.run_association(tls, server=elsewhere, ca=None, require=False)
        self.assertIn("certificate verify failed", str(self.failureResultOf(d, TLSFailed).value))


class BuildTests(ULTestCase):
    """The ``tls`` keys reach the listeners and the pools; unusable files stop startup
    with one line naming the key."""

    def setUp(self) -> None:
        super().setUp()
        self.pki = Authorities(self.mktemp())
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def build(self, data: dict[str, Any]) -> Any:
        return build(parse_config(data, lambda host: None, {}), MemoryReactorClock())

    def config(self, **tls: Any) -> dict[str, Any]:
        server = {"cert": self.pki.server.cert, "key": self.pki.server.key, **tls.get("server", {})}
        return {
            "server": {"http": {"tls": server}, "dimse": [{"aet": "IN", "tls": server}]},
            "aets": [
                {
                    "aet": "PACS",
                    "host": "127.0.0.1",
                    "port": 104,
                    "tls": {"ca": self.pki.ours.ca, **tls.get("pacs", {})},
                }
            ],
        }

    def test_the_keys_reach_the_services(self) -> None:
        top = self.build(self.config(server={"ca": self.pki.ours.ca}))
        [http] = [s for s in top if isinstance(s, HTTPService)]
        [dimse] = [s for s in top if isinstance(s, DimseListenerService)]
        for service in (http, dimse):
            self.assertTrue(IOpenSSLContextFactory.providedBy(service.tls))
            self.assertTrue(service.tls.requireCertificate)
        [backends] = [s for s in top if isinstance(s, BackendsService)]
        self.assertIsNotNone(backends.backends["PACS"].pool.tls)
        self.assertEqual(self.stderr.getvalue(), "")

    def test_without_tls_nothing_changes(self) -> None:
        top = self.build({"aets": [{"aet": "PACS", "host": "127.0.0.1", "port": 104}]})
        [http] = [s for s in top if isinstance(s, HTTPService)]
        self.assertIsNone(http.tls)

    def assertStops(self, data: dict[str, Any], line: str) -> None:
        self.assertRaises(SystemExit, self.build, data)
        self.assertEqual(self.stderr.getvalue(), f"dicomrst: config error: {line}\n")

    def test_a_missing_server_certificate_stops_startup(self) -> None:
        missing = self.mktemp()
        self.assertStops(
            self.config(server={"cert": missing}),
            f"server.dimse[0].tls.cert: cannot read {missing!r}: No such file or directory",
        )

    def test_a_wrong_key_stops_startup(self) -> None:
        data = self.config()
        data["server"]["http"]["tls"] = {"cert": self.pki.server.cert, "key": self.pki.client.key}
        data["server"]["dimse"] = []
        self.assertStops(
            data,
            f"server.http.tls.key: {self.pki.client.key!r} is not the private key of the certificate in "
            f"{self.pki.server.cert!r}",
        )

    def test_an_unreadable_pacs_ca_stops_startup(self) -> None:
        missing = self.mktemp()
        self.assertStops(
            self.config(pacs={"ca": missing}),
            f"aets[0].tls.ca: cannot read {missing!r}: No such file or directory",
        )

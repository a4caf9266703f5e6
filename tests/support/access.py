"""A gateway app behind its access gate, in memory, for the tests of what the gate lets
through (`GuardedApp`) and of what the audit trail records of it."""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.auth.authenticator import Authenticator
from dicomrst.auth.basic import BasicAuthenticator, UsersFile
from dicomrst.auth.oidc import BearerAuthenticator, FileKeys, KeySet, OidcSettings
from dicomrst.auth.principal import AccessList, AccessPolicy, AetAccess
from dicomrst.web.access import AccessGate
from dicomrst.web.app import GatewayApp
from dicomrst.web.responses import CorsPolicy
from tests.support.auth import AUDIENCE, ISSUER, NOW, ManualChecks, Signer, at_once, jwks, users_file
from tests.support.fakes import FakeBackend

ROOT = "http://gateway.example"
UID = "1.2.826.0.1.3680043.8.498.7"
BOUNDARY = b"access-boundary"
STOW_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY


class GuardedApp(SynchronousTestCase):
    """Two AETs: PACS readable by alice and the radiology role, writable by alice only;
    ARCHIVE open to every authenticated caller."""

    anonymous: bool | None = None
    cors: CorsPolicy | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.pacs = FakeBackend("PACS")
        self.pacs.echo_ms = 1.0
        self.archive = FakeBackend("ARCHIVE")
        self.checks = ManualChecks()
        path = users_file(self.mktemp(), {"alice": "wonderland", "bob": "builder"})
        self.basic = BasicAuthenticator(UsersFile(path, self.clock), self.checker(), self.clock, "gw")
        self.signer = Signer("EC")
        jwks_path = self.mktemp()
        with open(jwks_path, "wb") as f:
            f.write(jwks(self.signer.jwk()))
        settings = OidcSettings(ISSUER, AUDIENCE, roles_claim="realm_access.roles", realm="gw")
        self.bearer = BearerAuthenticator(settings, KeySet(FileKeys(jwks_path), self.clock), self.clock)
        policy = AccessPolicy(
            {
                "PACS": AetAccess(
                    read=AccessList.parse(["alice", "role:radiology"]), write=AccessList.parse(["alice"])
                )
            }
        )
        self.gate = AccessGate(Authenticator(self.basic, self.bearer, self.anonymous), policy)
        self.app = GatewayApp(
            {"PACS": self.pacs, "ARCHIVE": self.archive}, self.clock, access=self.gate, cors=self.cors
        )
        self.stub = StubTreq(self.app.resource())
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def checker(self) -> Any:
        return at_once

    def fetch(
        self, path: str, method: str = "GET", auth: bytes | None = None, **kwargs: Any
    ) -> tuple[Any, bytes]:
        headers = dict(kwargs.pop("headers", {}))
        if auth is not None:
            headers[b"Authorization"] = [auth]
        d = self.stub.request(method, ROOT + path, headers=headers, **kwargs)
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def touched(self) -> bool:
        return any(
            (b.finds, b.retrieves, b.received, b.echoes) != ([], [], [], [])
            for b in (self.pacs, self.archive)
        )

"""Tests for dicomrst.auth: Basic against a users file, bearer JWTs against a JWKS, the
authenticator that picks between them, access lists, and their configuration keys.

In memory: a `Clock`, bcrypt checks answered by hand or at once (cost 4), JWKS documents
from a file or through `StubTreq`.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from dicomrst.auth.authenticator import Authenticator
from dicomrst.auth.basic import CACHE_TTL, BasicAuthenticator, UsersFile, parse_users
from dicomrst.auth.oidc import (
    MIN_REFRESH,
    BearerAuthenticator,
    FileKeys,
    KeySet,
    OidcSettings,
    UrlKeys,
    claim_at,
)
from dicomrst.auth.principal import ANONYMOUS, READ, WRITE, AccessList, AccessPolicy, AetAccess, Principal
from dicomrst.config import ConfigError, config_warnings, parse_config
from dicomrst.errors import ServiceUnavailable, Unauthorized
from tests.support.auth import (
    AUDIENCE,
    ISSUER,
    NOW,
    ManualChecks,
    Signer,
    at_once,
    basic,
    bcrypt_2y,
    claims,
    jwks,
    users_file,
)


class UsersFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = users_file(self.mktemp(), {"alice": "wonderland", "bob": "builder"})

    def test_reads_htpasswd_bcrypt_lines(self) -> None:
        users = UsersFile(self.path, self.clock)
        stored = users.lookup("alice")
        assert stored is not None
        self.assertTrue(stored.startswith(b"$2y$04$"))
        self.assertIsNone(users.lookup("carol"))

    def test_lines_that_are_not_bcrypt_entries_are_skipped(self) -> None:
        text = (
            b"# comment\n\nplain:secret\nmd5:$apr1$abc$defghijklmnopqrstuvwx\nnohash\n:$2y$04$x\n"
            + b"ok:"
            + bcrypt_2y("pw").encode()
            + b"\n"
        )
        self.assertEqual(list(parse_users(text, "f")), ["ok"])

    def test_a_changed_file_is_read_again_within_a_second(self) -> None:
        users = UsersFile(self.path, self.clock)
        users_file(self.path, {"carol": "x"})
        os.utime(self.path, ns=(1, 1))  # a different stamp even within one mtime tick
        self.assertIsNotNone(users.lookup("alice"))  # not stat'ed again yet
        self.clock.advance(1)
        self.assertIsNone(users.lookup("alice"))
        self.assertIsNotNone(users.lookup("carol"))

    def test_a_file_that_went_admits_nobody_until_it_is_back(self) -> None:
        users = UsersFile(self.path, self.clock)
        os.rename(self.path, self.path + ".away")
        self.clock.advance(1)
        self.assertIsNone(users.lookup("alice"))
        os.rename(self.path + ".away", self.path)
        self.clock.advance(1)
        self.assertIsNotNone(users.lookup("alice"))

    def test_an_unreadable_file_at_start_raises(self) -> None:
        self.assertRaises(OSError, UsersFile, self.mktemp(), self.clock)


class BasicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = users_file(self.mktemp(), {"alice": "wonderland", "bob": "builder", "ünï": "cöde"})
        self.checks = ManualChecks()
        self.auth = BasicAuthenticator(UsersFile(self.path, self.clock), self.checks, self.clock, "gw")

    def authenticate(self, name: str, password: str) -> Deferred[Principal]:
        return self.auth.authenticate(basic(name, password)[len(b"Basic ") :])

    def refused(self, d: Deferred[Principal]) -> Unauthorized:
        error = self.failureResultOf(d, Unauthorized).value
        assert isinstance(error, Unauthorized)
        self.assertEqual(error.challenges, ('Basic realm="gw", charset="UTF-8"',))
        return error

    def test_good_password_in_a_thread_then_remembered(self) -> None:
        d = self.authenticate("alice", "wonderland")
        self.assertNoResult(d)  # bcrypt is not run on the reactor
        self.checks.run_all()
        self.assertEqual(self.successResultOf(d), Principal("alice", method="basic"))
        again = self.authenticate("alice", "wonderland")
        self.assertEqual(self.successResultOf(again).name, "alice")  # no second bcrypt
        self.assertEqual(self.checks.calls, [])

    def test_remembered_only_for_a_while(self) -> None:
        d = self.authenticate("alice", "wonderland")
        self.checks.run_all()
        self.successResultOf(d)
        self.clock.advance(CACHE_TTL + 1)
        again = self.authenticate("alice", "wonderland")
        self.assertNoResult(again)
        self.checks.run_all()
        self.successResultOf(again)

    def test_checks_of_the_same_credentials_in_flight_are_shared(self) -> None:
        first, second = self.authenticate("alice", "wonderland"), self.authenticate("alice", "wonderland")
        self.assertEqual(len(self.checks.calls), 1)
        self.checks.run_all()
        self.assertEqual(
            (self.successResultOf(first).name, self.successResultOf(second).name), ("alice", "alice")
        )

    def test_bad_password(self) -> None:
        d = self.authenticate("alice", "wrong")
        self.checks.run_all()
        self.assertEqual(self.refused(d).message, "invalid user name or password")
        retry = self.authenticate("alice", "wrong")
        self.assertEqual(len(self.checks.calls), 1)  # failures are not remembered
        self.checks.run_all()
        self.refused(retry)

    def test_unknown_user_costs_a_bcrypt_all_the_same(self) -> None:
        d = self.authenticate("mallory", "wonderland")
        self.assertEqual(len(self.checks.calls), 1)
        self.checks.run_all()
        self.assertEqual(self.refused(d).message, "invalid user name or password")

    def test_a_user_removed_from_the_file_is_forgotten_at_once(self) -> None:
        d = self.authenticate("alice", "wonderland")
        self.checks.run_all()
        self.successResultOf(d)
        users_file(self.path, {"bob": "builder"})
        os.utime(self.path, ns=(2, 2))
        self.clock.advance(1)
        d = self.authenticate("alice", "wonderland")
        self.checks.run_all()
        self.refused(d)

    def test_a_changed_password_is_picked_up(self) -> None:
        d = self.authenticate("alice", "wonderland")
        self.checks.run_all()
        self.successResultOf(d)
        users_file(self.path, {"alice": "looking-glass"})
        os.utime(self.path, ns=(3, 3))
        self.clock.advance(1)
        old, new = self.authenticate("alice", "wonderland"), self.authenticate("alice", "looking-glass")
        self.checks.run_all()
        self.refused(old)
        self.assertEqual(self.successResultOf(new).name, "alice")

    def test_utf8_names_and_passwords(self) -> None:
        d = self.authenticate("ünï", "cöde")
        self.checks.run_all()
        self.assertEqual(self.successResultOf(d).name, "ünï")

    def test_malformed_credentials(self) -> None:
        for credentials in (
            b"not base64!",
            b"",
            b"YWxpY2U=",
            b"OndvbmRlcmxhbmQ=",
            b"/w==",
            b"YWxpY2U6d29uZGVybGFuZA",
        ):
            error = self.refused(self.auth.authenticate(credentials))
            self.assertIn("malformed", error.message, credentials)
        self.assertEqual(self.checks.calls, [])

    def test_password_longer_than_bcrypt_reads(self) -> None:
        # htpasswd hashes the first 72 bytes (bcrypt 5 refuses more): so does the check.
        long = "p" * 100
        users_file(self.path, {"alice": long[:72]})
        os.utime(self.path, ns=(4, 4))
        self.clock.advance(1)
        d = self.authenticate("alice", long)
        self.checks.run_all()
        self.assertEqual(self.successResultOf(d).name, "alice")


class TokenTests(SynchronousTestCase):
    """Bearer tokens signed in the test with generated RSA and EC keys."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.rsa = Signer("RSA", kid="rsa-1")
        self.ec = Signer("EC", kid="ec-1")
        self.jwks_path = self.mktemp()
        self.publish(self.rsa.jwk(), self.ec.jwk())
        self.keys = KeySet(FileKeys(self.jwks_path), self.clock)
        settings = OidcSettings(ISSUER, AUDIENCE, roles_claim="realm_access.roles", realm="gw")
        self.auth = BearerAuthenticator(settings, self.keys, self.clock)

    def publish(self, *keys: dict[str, Any]) -> None:
        with open(self.jwks_path, "wb") as f:
            f.write(jwks(*keys))

    def verify(self, token: str) -> Deferred[Principal]:
        return self.auth.authenticate(token.encode())

    def refused(self, token: str, why: str) -> None:
        error = self.failureResultOf(self.verify(token), Unauthorized).value
        assert isinstance(error, Unauthorized)
        self.assertEqual(error.message, f"invalid bearer token: {why}")
        [challenge] = error.challenges
        realm = self.auth.settings.realm
        self.assertEqual(
            challenge, f'Bearer realm="{realm}", error="invalid_token", error_description="{why}"'
        )

    def test_rsa_and_ec_tokens_are_taken(self) -> None:
        for signer in (self.rsa, self.ec):
            principal = self.successResultOf(self.verify(signer.token()))
            self.assertEqual(principal, Principal("alice", frozenset({"radiology"}), "oidc"))

    def test_leeway_of_a_minute(self) -> None:
        self.successResultOf(self.verify(self.rsa.token(claims(exp=NOW - 59, nbf=NOW + 59))))

    def test_expired(self) -> None:
        self.refused(self.rsa.token(claims(exp=NOW - 61)), "token expired")

    def test_not_yet_valid(self) -> None:
        self.refused(self.ec.token(claims(nbf=NOW + 61)), "token not yet valid")

    def test_no_expiry(self) -> None:
        self.refused(self.rsa.token(claims(exp=None)), "no exp claim")

    def test_wrong_audience(self) -> None:
        self.refused(self.rsa.token(claims(aud="another-app")), "wrong audience")
        self.successResultOf(self.verify(self.rsa.token(claims(aud=["another-app", AUDIENCE]))))

    def test_wrong_issuer(self) -> None:
        self.refused(self.rsa.token(claims(iss="https://evil.example")), "wrong issuer")

    def test_wrong_key(self) -> None:
        impostor = Signer("RSA", kid="rsa-1")  # claims the published kid, signs with its own key
        self.refused(impostor.token(), "bad signature")
        self.refused(Signer("EC", kid="ec-1").token(), "bad signature")

    def test_alg_none(self) -> None:
        self.refused(self.rsa.alg_none(), "signature algorithm none not accepted")

    def test_hs256_with_the_public_key_as_secret(self) -> None:
        self.refused(self.rsa.hs256_with_public_key(), "signature algorithm HS256 not accepted")

    def test_tampered_payload(self) -> None:
        self.refused(self.rsa.tampered(sub="admin"), "bad signature")
        self.refused(self.ec.tampered(realm_access={"roles": ["admin"]}), "bad signature")

    def test_algorithm_that_does_not_fit_the_key(self) -> None:
        # An RS256 header on a token with the EC key's kid: no key of that kid fits RS256.
        token = self.rsa.token(kid="ec-1")
        self.refused(token, "no key of the issuer matches the token")

    def test_malformed_tokens(self) -> None:
        for token in ("", "abc", "a.b", "a.b.c", "x" * 20000 + ".a.b"):
            error = self.failureResultOf(self.verify(token), Unauthorized).value
            self.assertIn("invalid bearer token", str(error))

    def test_no_user_claim(self) -> None:
        self.refused(self.rsa.token(claims(sub=None)), "no sub claim")

    def test_unknown_kid_fetches_the_keys_again_rate_limited(self) -> None:
        self.successResultOf(self.verify(self.rsa.token()))
        rotated = Signer("RSA", kid="rsa-2")
        self.publish(self.rsa.jwk(), rotated.jwk())
        self.successResultOf(self.verify(rotated.token()))  # fetched again at once
        newer = Signer("EC", kid="ec-2")
        self.publish(rotated.jwk(), newer.jwk())
        self.refused(newer.token(), "no key of the issuer matches the token")  # within MIN_REFRESH
        self.clock.advance(MIN_REFRESH)
        self.successResultOf(self.verify(newer.token()))

    def test_a_token_without_kid_tries_the_keys_of_its_type(self) -> None:
        anonymous_key = Signer("RSA", kid=None)
        self.publish(self.rsa.jwk(), anonymous_key.jwk(), self.ec.jwk())
        self.keys = KeySet(FileKeys(self.jwks_path), self.clock)
        self.auth = BearerAuthenticator(OidcSettings(ISSUER, AUDIENCE), self.keys, self.clock)
        self.successResultOf(self.verify(anonymous_key.token()))

    def test_keys_for_encryption_or_another_alg_are_not_used(self) -> None:
        self.publish(self.rsa.jwk(use="enc"), self.ec.jwk(alg="ES384"))
        self.keys = KeySet(FileKeys(self.jwks_path), self.clock)
        self.auth = BearerAuthenticator(OidcSettings(ISSUER, AUDIENCE), self.keys, self.clock)
        for signer in (self.rsa, self.ec):
            self.refused(signer.token(), "no key of the issuer matches the token")

    def test_no_keys_at_all_is_503(self) -> None:
        self.keys = KeySet(FileKeys(self.mktemp()), self.clock)
        self.auth = BearerAuthenticator(OidcSettings(ISSUER, AUDIENCE), self.keys, self.clock)
        self.failureResultOf(self.verify(self.rsa.token()), ServiceUnavailable)

    def test_roles_claim_is_a_dotted_path(self) -> None:
        token_claims = {"realm_access": {"roles": ["a", "b", 3]}, "scope": "x", "nested": {"one": "r"}}
        self.assertEqual(claim_at(token_claims, "realm_access.roles"), ["a", "b", 3])
        self.assertIsNone(claim_at(token_claims, "scope.x"))
        settings = OidcSettings(ISSUER, AUDIENCE, roles_claim="nested.one")
        auth = BearerAuthenticator(settings, self.keys, self.clock)
        principal = self.successResultOf(
            auth.authenticate(self.rsa.token(claims(nested={"one": "r"})).encode())
        )
        self.assertEqual(principal.roles, frozenset({"r"}))


class JwksResource(Resource):
    isLeaf = True

    def __init__(self, document: bytes) -> None:
        super().__init__()
        self.document = document
        self.requests = 0
        self.status = 200

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        return self.document


class UrlKeysTests(SynchronousTestCase):
    """``jwks-url``: the keys fetched with treq (here a StubTreq over a JWKS resource)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.signer = Signer("EC", kid="ec-1")
        self.resource = JwksResource(jwks(self.signer.jwk()))
        stub = StubTreq(self.resource)
        source = UrlKeys("https://idp.example/certs", stub, self.clock)  # type: ignore[arg-type]  # StubTreq quacks like HTTPClient
        self.auth = BearerAuthenticator(
            OidcSettings(ISSUER, AUDIENCE), KeySet(source, self.clock), self.clock
        )
        self.stub = stub

    def test_fetched_once_for_many_tokens(self) -> None:
        for _ in range(3):
            d = self.auth.authenticate(self.signer.token().encode())
            self.stub.flush()
            self.assertEqual(self.successResultOf(d).name, "alice")
        self.assertEqual(self.resource.requests, 1)

    def test_a_failed_fetch_keeps_the_keys_there_were(self) -> None:
        d = self.auth.authenticate(self.signer.token().encode())
        self.stub.flush()
        self.successResultOf(d)
        self.resource.status = 500
        self.clock.advance(3600)  # stale: fetched again, and that fails
        d = self.auth.authenticate(self.signer.token(claims(exp=NOW + 7200)).encode())
        self.stub.flush()
        self.assertEqual(self.successResultOf(d).name, "alice")
        self.assertEqual(self.resource.requests, 2)

    def test_an_error_status_with_no_keys_is_503(self) -> None:
        self.resource.status = 404
        d = self.auth.authenticate(self.signer.token().encode())
        self.stub.flush()
        self.failureResultOf(d, ServiceUnavailable)


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        path = users_file(self.mktemp(), {"alice": "wonderland"})
        self.basic = BasicAuthenticator(UsersFile(path, self.clock), at_once, self.clock, "gw")
        self.signer = Signer("RSA")
        jwks_path = self.mktemp()
        with open(jwks_path, "wb") as f:
            f.write(jwks(self.signer.jwk()))
        keys = KeySet(FileKeys(jwks_path), self.clock)
        self.bearer = BearerAuthenticator(OidcSettings(ISSUER, AUDIENCE, realm="gw"), keys, self.clock)

    def test_without_methods_everyone_is_anonymous_and_the_header_is_ignored(self) -> None:
        auth = Authenticator.open()
        for header in (None, b"Basic garbage", b"Bearer x.y.z"):
            self.assertIs(self.successResultOf(auth.authenticate(header)), ANONYMOUS)

    def test_anonymous_defaults_to_false_once_a_method_is_configured(self) -> None:
        auth = Authenticator(self.basic, self.bearer)
        error = self.failureResultOf(auth.authenticate(None), Unauthorized).value
        assert isinstance(error, Unauthorized)
        self.assertEqual(error.challenges, ('Basic realm="gw", charset="UTF-8"', 'Bearer realm="gw"'))

    def test_anonymous_allowed_still_checks_given_credentials(self) -> None:
        auth = Authenticator(self.basic, self.bearer, anonymous=True)
        self.assertIs(self.successResultOf(auth.authenticate(None)), ANONYMOUS)
        self.failureResultOf(auth.authenticate(basic("alice", "nope")), Unauthorized)

    def test_both_methods(self) -> None:
        auth = Authenticator(self.basic, self.bearer)
        self.assertEqual(
            self.successResultOf(auth.authenticate(basic("alice", "wonderland"))).method, "basic"
        )
        token = b"bearer " + self.signer.token().encode()  # the scheme is case-insensitive
        self.assertEqual(self.successResultOf(auth.authenticate(token)).method, "oidc")

    def test_a_refused_token_names_every_scheme(self) -> None:
        auth = Authenticator(self.basic, self.bearer)
        error = self.failureResultOf(auth.authenticate(b"Bearer " + self.signer.alg_none().encode())).value
        assert isinstance(error, Unauthorized)
        self.assertEqual(len(error.challenges), 2)
        self.assertIn('error="invalid_token"', error.challenges[0])
        self.assertTrue(error.challenges[1].startswith("Basic "))

    def test_unsupported_or_unconfigured_scheme(self) -> None:
        auth = Authenticator(self.basic)
        for header in (b"Digest username=alice", b"Bearer x.y.z", b"Basic"):
            failure = self.failureResultOf(auth.authenticate(header), Unauthorized)
            self.assertIsInstance(failure, Failure)


class PolicyTests(SynchronousTestCase):
    def test_lists_of_names_and_roles(self) -> None:
        policy = AccessPolicy(
            {
                "PACS": AetAccess(
                    read=AccessList.parse(["alice", "role:radiology"]), write=AccessList.parse([])
                ),
                "OPEN": AetAccess(),
            }
        )
        alice, bob = Principal("alice", method="basic"), Principal("bob", frozenset({"radiology"}), "oidc")
        carol = Principal("carol", frozenset({"admin"}), "oidc")
        self.assertTrue(policy.allows(alice, "PACS", READ))
        self.assertTrue(policy.allows(bob, "PACS", READ))
        self.assertFalse(policy.allows(carol, "PACS", READ))
        self.assertFalse(policy.allows(ANONYMOUS, "PACS", READ))
        self.assertFalse(policy.allows(alice, "PACS", WRITE))  # an empty list: nobody
        for principal in (alice, carol, ANONYMOUS):
            self.assertTrue(policy.allows(principal, "OPEN", WRITE))
            self.assertTrue(policy.allows(principal, "UNLISTED", READ))

    def test_a_role_is_not_a_user_name(self) -> None:
        policy = AccessPolicy({"PACS": AetAccess(read=AccessList.parse(["role:admin"]))})
        self.assertFalse(policy.allows(Principal("admin", method="basic"), "PACS", READ))


def resolve(host: str) -> object:
    return None


class AuthConfigTests(SynchronousTestCase):
    def parse(self, data: object) -> Any:
        return parse_config(data, resolve, {})

    def assertConfigError(self, data: object, path: str, fragment: str) -> None:
        error = self.assertRaises(ConfigError, self.parse, data)
        self.assertEqual(error.path, path, str(error))
        self.assertIn(fragment, error.message)

    def test_defaults_keep_the_gateway_open(self) -> None:
        config = self.parse(None)
        self.assertFalse(config.server.auth.configured)
        self.assertTrue(config.server.auth.anonymous_allowed)
        self.assertIsNone(config.server.http.cors.allowed_origins)

    def test_a_method_turns_anonymous_off_unless_asked(self) -> None:
        auth = {"basic": {"users-file": "/etc/dicomrst/users"}}
        self.assertFalse(self.parse({"server": {"auth": auth}}).server.auth.anonymous_allowed)
        config = self.parse({"server": {"auth": {**auth, "anonymous": True}}})
        self.assertTrue(config.server.auth.anonymous_allowed)

    def test_oidc_keys(self) -> None:
        oidc = {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks-url": "https://idp.example/certs",
            "roles-claim": "realm_access.roles",
        }
        parsed = self.parse({"server": {"auth": {"oidc": oidc}}}).server.auth.oidc
        self.assertEqual((parsed.roles_claim, parsed.username_claim), ("realm_access.roles", "sub"))
        self.assertConfigError(
            {"server": {"auth": {"oidc": {**oidc, "jwks-file": "/k"}}}},
            "server.auth.oidc",
            "exactly one of jwks-url and jwks-file",
        )
        self.assertConfigError(
            {"server": {"auth": {"oidc": {"issuer": ISSUER, "jwks-file": "/k"}}}},
            "server.auth.oidc.audience",
            "missing",
        )
        self.assertConfigError(
            {"server": {"auth": {"oidc": {**oidc, "roles-claim": "a..b"}}}},
            "server.auth.oidc.roles-claim",
            "dotted path",
        )

    def test_mistakes_that_would_open_or_close_everything(self) -> None:
        self.assertConfigError(
            {"server": {"auth": {"basic": None}}}, "server.auth.basic", "expected a mapping"
        )
        self.assertConfigError({"server": {"auth": {"anonymous": False}}}, "server.auth.anonymous", "no one")

    def test_access_lists(self) -> None:
        aet = {"aet": "PACS", "host": "pacs", "port": 104}
        config = self.parse(
            {"aets": [{**aet, "access": {"read": ["alice", "role:radiology"], "write": None}}]}
        )
        self.assertEqual(config.aets[0].access.read, ("alice", "role:radiology"))
        self.assertEqual(config.aets[0].access.write, ())  # written but empty: nobody
        self.assertIsNone(self.parse({"aets": [{**aet, "access": {}}]}).aets[0].access.read)
        self.assertConfigError(
            {"aets": [{**aet, "access": {"read": ["role:"]}}]}, "aets[0].access.read[0]", "role"
        )
        self.assertConfigError(
            {"aets": [{**aet, "access": {"delete": []}}]}, "aets[0].access.delete", "unknown key"
        )
        warnings = config_warnings(self.parse({"aets": [{**aet, "access": {"read": ["alice"]}}]}))
        self.assertTrue(any("aets[0].access" in w for w in warnings), warnings)

    def test_allowed_origins(self) -> None:
        def origins(value: object) -> object:
            return self.parse(
                {"server": {"http": {"cors": {"allowed-origins": value}}}}
            ).server.http.cors.allowed_origins

        self.assertIsNone(origins("*"))
        self.assertIsNone(origins(["*"]))
        self.assertEqual(
            origins(["https://Viewer.example", "http://localhost:3000"]),
            ("https://viewer.example", "http://localhost:3000"),
        )
        for bad in (
            ["https://viewer.example/path"],
            ["viewer.example"],
            ["null"],
            ["*", "https://a.example"],
        ):
            self.assertRaises(ConfigError, origins, bad)

    def test_realm(self) -> None:
        self.assertEqual(
            self.parse({"server": {"auth": {"realm": "PACS gateway"}}}).server.auth.realm, "PACS gateway"
        )
        self.assertConfigError({"server": {"auth": {"realm": 'a"b'}}}, "server.auth.realm", "quotes")


class JsonSafetyTests(SynchronousTestCase):
    def test_error_descriptions_need_no_escaping(self) -> None:
        # RFC 6750 §3: error_description is printable ASCII without '"' or '\\'.
        clock = Clock()
        auth = BearerAuthenticator(
            OidcSettings(ISSUER, AUDIENCE), KeySet(FileKeys("/nonexistent"), clock), clock
        )
        header = json.dumps({"alg": 'RS256"\\', "kid": "x"}).encode()
        token = base64.urlsafe_b64encode(header).rstrip(b"=") + b".e30.c2ln"
        error = self.failureResultOf(auth.authenticate(token), Unauthorized).value
        assert isinstance(error, Unauthorized)
        self.assertNotIn("\\", error.challenges[0])
        self.assertEqual(error.challenges[0].count('"'), 6)

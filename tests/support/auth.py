"""Credentials for the authentication tests: users files and signed tokens.

`users_file` writes an ``htpasswd -B`` style file (``$2y$`` hashes at bcrypt's cheapest
cost, so tests stay fast); `basic` is an ``Authorization`` value.  `Signer` holds an RSA
or EC key generated for the test and signs JWTs with it (`token`), publishes it
(`jwk`, `jwks`), and forges the tokens a gateway must refuse (`alg_none`,
`hs256_with_public_key`, `tampered`).  `ManualChecks` and `at_once` stand in for the CPU
workers that run bcrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import bcrypt
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from twisted.internet.defer import Deferred, succeed

from dicomrst.auth.basic import check_password

ISSUER = "https://idp.example/realms/test"
AUDIENCE = "dicomrst"
#: The test clock's "now" for tokens (seconds since the epoch).
NOW = 1_800_000_000


def bcrypt_2y(password: str, rounds: int = 4) -> str:
    """A hash as ``htpasswd -B`` writes it (``$2y$``; same algorithm as ``$2b$``)."""
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")
    return "$2y$" + hashed[4:]


def users_file(path: str, users: Mapping[str, str], rounds: int = 4) -> str:
    """Write ``name:hash`` lines for `users` (name → password) to `path`; returns `path`."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("# written by the tests\n")
        for name, password in users.items():
            f.write(f"{name}:{bcrypt_2y(password, rounds)}\n")
    return path


def basic(name: str, password: str) -> bytes:
    """An ``Authorization: Basic`` value."""
    return b"Basic " + base64.b64encode(f"{name}:{password}".encode())


def bearer(token: str) -> bytes:
    return b"Bearer " + token.encode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims at `NOW` for `ISSUER` and `AUDIENCE`; `None` values are left out."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "realm_access": {"roles": ["radiology"]},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


class Signer:
    """A key pair of the test's own and the tokens it signs."""

    def __init__(self, kind: str = "RSA", kid: str | None = "test-key") -> None:
        self.key: RSAKey | ECKey = (
            RSAKey.generate_key(2048, private=True)
            if kind == "RSA"
            else ECKey.generate_key("P-256", private=True)
        )
        self.alg = "RS256" if kind == "RSA" else "ES256"
        self.kid = kid

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public: dict[str, Any] = dict(self.key.as_dict(private=False))
        public.pop("kid", None)
        if self.kid is not None:
            public["kid"] = self.kid
        public.update(extra)
        return public

    def token(self, payload: Mapping[str, Any] | None = None, **header: Any) -> str:
        protected: dict[str, Any] = {"alg": self.alg, "typ": "JWT"}
        if self.kid is not None:
            protected["kid"] = self.kid
        protected.update({k: v for k, v in header.items()})
        protected = {k: v for k, v in protected.items() if v is not None}
        body = json.dumps(claims() if payload is None else dict(payload)).encode()
        return jws.serialize_compact(protected, body, self.key, algorithms=[protected["alg"]])

    def alg_none(self, payload: Mapping[str, Any] | None = None) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": self.kid}
        body = json.dumps(claims() if payload is None else dict(payload)).encode()
        return f"{_b64(json.dumps(header).encode())}.{_b64(body)}."

    def hs256_with_public_key(self, payload: Mapping[str, Any] | None = None) -> str:
        """The classic confusion: HMAC-SHA256 keyed with the public key's PEM."""
        public = self.key.get_op_key("verify")
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": self.kid}
        body = json.dumps(claims() if payload is None else dict(payload)).encode()
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(body)}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def tampered(self, **changes: Any) -> str:
        """A valid token whose payload is then changed (the signature kept)."""
        head, _, signature = self.token().split(".")
        body = json.dumps(claims(**changes)).encode()
        return f"{head}.{_b64(body)}.{signature}"


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


class ManualChecks:
    """Stands in for the CPU workers: each bcrypt check waits until the test runs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, Deferred[bool]]] = []

    def __call__(self, password: bytes, stored: bytes) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.calls.append((password, stored, d))
        return d

    def run_all(self) -> None:
        calls, self.calls = self.calls, []
        for password, stored, d in calls:
            d.callback(check_password(password, stored))


def at_once(password: bytes, stored: bytes) -> Deferred[bool]:
    """A bcrypt check run at once, on the test's thread."""
    return succeed(check_password(password, stored))

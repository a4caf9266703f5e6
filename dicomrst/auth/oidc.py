# -*- test-case-name: tests.unit.test_auth -*-
"""Bearer tokens (RFC 6750): JWTs an OpenID Connect provider signed, checked against its
published keys (JWKS).

What a token must be to be taken:

* a JWS in compact form whose ``alg`` is an asymmetric one of `ALGORITHMS` (RSA PKCS#1,
  RSA-PSS, ECDSA): ``none`` and the HMAC ones are refused before any key is looked at,
  so a token "signed" with the public key as an HMAC secret gets nowhere;
* signed by a key of the JWKS whose ``kid`` it names (or, without ``kid``, by one of the
  keys of the right type), whose type and curve fit the algorithm (joserfc checks this),
  whose ``use`` (if given) is ``sig`` and whose ``alg`` (if given) is the token's;
* with ``iss`` equal to ``issuer``, ``aud`` equal to (or a list holding) ``audience``,
  an ``exp`` not past and an ``nbf`` (if any) not ahead, each with `LEEWAY` seconds for
  clocks that disagree, on the injected clock.

Keys come from ``jwks-url`` (fetched with treq on the reactor, never blocking) or
``jwks-file``.  They are fetched at the first token, again after `MAX_AGE`, and at once
when a token names a ``kid`` the set does not hold (a provider rotating its keys), at
most once every `MIN_REFRESH` seconds so tokens with made-up ``kid``\\ s cannot make the
gateway hammer the provider.  A failed fetch keeps the keys there were.

Signature checks take well under a millisecond (RS256 and ES256 verification are
cheap, unlike signing), so they run on the reactor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import treq
from joserfc import jwk, jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from dicomrst.auth.principal import Principal
from dicomrst.errors import ServiceUnavailable, Unauthorized
from dicomrst.logs import logger

log = logger("dicomrst.auth")

#: Signature algorithms a token may use: asymmetric only.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
#: Seconds of clock skew allowed on ``exp`` and ``nbf``.
LEEWAY = 60.0
#: Seconds after which the keys are fetched again (at the next token).
MAX_AGE = 3600.0
#: Seconds between two fetches caused by an unknown ``kid``.
MIN_REFRESH = 30.0
#: Largest JWKS document taken (bytes).
MAX_JWKS_SIZE = 1024 * 1024
#: Longest token taken (bytes): a JWT in a header; larger ones are not parsed.
MAX_TOKEN = 16 * 1024


class KeySource(Protocol):
    """Where the JWKS document comes from."""

    @property
    def description(self) -> str:
        """For log lines: the URL or the file name."""

    def fetch(self) -> Deferred[bytes]:
        """The JWKS document; fails with an exception saying why not."""


@attrs.frozen
class FileKeys:
    """``jwks-file``: read again at every refresh (a small local file)."""

    path: str

    @property
    def description(self) -> str:
        return self.path

    def fetch(self) -> Deferred[bytes]:
        try:
            with open(self.path, "rb") as f:
                return succeed(f.read(MAX_JWKS_SIZE + 1))
        except OSError as e:
            failed: Deferred[bytes] = Deferred()
            failed.errback(Failure(e))
            return failed


class KeySetError(Exception):
    """A JWKS could not be fetched or read."""


class UrlKeys:
    """``jwks-url``: fetched with treq (``https`` URLs are checked against the system's
    trusted CAs by treq's Agent), within `timeout` seconds."""

    def __init__(self, url: str, http: HTTPClient, clock: IReactorTime, timeout: float = 10.0) -> None:
        self.url = url
        self.description = url
        self._http = http
        self._clock = clock
        self._timeout = timeout

    async def _get(self) -> IResponse:
        accept = Headers({b"Accept": [b"application/json"]})
        response: IResponse = await self._http.get(self.url, headers=accept)
        return response

    def fetch(self) -> Deferred[bytes]:
        d: Deferred[IResponse] = Deferred.fromCoroutine(self._get())
        d.addTimeout(self._timeout, self._clock)

        def read(response: IResponse) -> Deferred[bytes]:
            if response.code != 200:
                raise KeySetError(f"HTTP {response.code}")
            if response.length is not UNKNOWN_LENGTH and response.length > MAX_JWKS_SIZE:
                raise KeySetError(f"JWKS larger than {MAX_JWKS_SIZE} bytes")
            body: Deferred[bytes] = treq.content(response)
            return body

        return d.addCallback(read)


def parse_jwks(document: bytes) -> dict[str | None, list[RSAKey | ECKey]]:
    """The signing keys of a JWKS document, by ``kid`` (None for keys without one).  Keys
    that cannot sign a token we take (``oct``, ``OKP``, ``use: enc``, broken ones) are
    left out; a document with none left is an error."""
    if len(document) > MAX_JWKS_SIZE:
        raise KeySetError(f"JWKS larger than {MAX_JWKS_SIZE} bytes")
    try:
        data = json.loads(document)
    except ValueError as e:
        raise KeySetError(f"JWKS is not JSON: {e}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeySetError('JWKS has no "keys" list')
    keys: dict[str | None, list[RSAKey | ECKey]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwk.import_key(entry)
        except (JoseError, ValueError, TypeError):
            log.warn("JWKS key {kid} cannot be read; ignored", kid=entry.get("kid"))
            continue
        if isinstance(key, (RSAKey, ECKey)) and not key.is_private:
            kid = entry.get("kid")
            keys.setdefault(kid if isinstance(kid, str) else None, []).append(key)
    if not keys:
        raise KeySetError("JWKS holds no RSA or EC signing key")
    return keys


def _fits(key: RSAKey | ECKey, alg: str, entry_alg: object) -> bool:
    if entry_alg is not None and entry_alg != alg:
        return False
    return isinstance(key, RSAKey) if alg[:2] in ("RS", "PS") else isinstance(key, ECKey)


class KeySet:
    """The provider's keys, fetched and refreshed (see the module's docstring)."""

    def __init__(self, source: KeySource, clock: IReactorTime) -> None:
        self.source = source
        self._clock = clock
        self._keys: dict[str | None, list[RSAKey | ECKey]] = {}
        self._fetched_at: float | None = None  # the last fetch that worked
        self._tried_at: float | None = None  # the last fetch, whatever came of it
        self._unknown_kid_at: float | None = None  # the last fetch an unknown kid caused
        self._fetching: list[Deferred[None]] | None = None

    def keys(self, kid: str | None, alg: str) -> Deferred[list[RSAKey | ECKey]]:
        """The keys that may have signed a token with `kid` and `alg` (maybe none)."""
        now = self._clock.seconds()
        stale = self._fetched_at is None or now - self._fetched_at >= MAX_AGE
        if stale and (self._tried_at is None or now - self._tried_at >= MIN_REFRESH):
            return self._refresh().addCallback(lambda _: self._match(kid, alg))
        found = self._match(kid, alg)
        if found or kid is None or kid in self._keys:
            return succeed(found)
        # An unknown kid: the provider may have rotated its keys.
        if self._unknown_kid_at is not None and now - self._unknown_kid_at < MIN_REFRESH:
            return succeed([])
        self._unknown_kid_at = now
        return self._refresh().addCallback(lambda _: self._match(kid, alg))

    def _match(self, kid: str | None, alg: str) -> list[RSAKey | ECKey]:
        if kid is not None:
            candidates = self._keys.get(kid, [])
        else:
            candidates = [k for keys in self._keys.values() for k in keys]
        return [k for k in candidates if _fits(k, alg, k.get("alg"))]

    def _refresh(self) -> Deferred[None]:
        mine: Deferred[None] = Deferred()
        if self._fetching is not None:
            self._fetching.append(mine)
            return mine
        waiters = self._fetching = [mine]
        self._tried_at = self._clock.seconds()

        def got(document: bytes) -> None:
            self._keys = parse_jwks(document)
            self._fetched_at = self._clock.seconds()
            log.info("JWKS from {source}: {count} signing key(s)", source=self.source.description,
                     count=sum(len(k) for k in self._keys.values()))

        def failed(failure: Failure) -> None:
            log.warn("JWKS from {source} could not be fetched: {error}; keeping {count} key(s)",
                     source=self.source.description, error=failure.getErrorMessage(),
                     count=sum(len(k) for k in self._keys.values()))

        def settle(_: object) -> None:
            self._fetching = None
            for waiter in waiters:
                waiter.callback(None)

        d = self.source.fetch()
        d.addCallback(got)
        d.addErrback(failed)
        d.addBoth(settle)
        return mine

    @property
    def loaded(self) -> bool:
        return self._fetched_at is not None


def claim_at(claims: Mapping[str, Any], path: str) -> object:
    """The value at a dotted path (``realm_access.roles``), None where it is missing."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@attrs.frozen
class OidcSettings:
    issuer: str
    audience: str
    roles_claim: str = "roles"
    username_claim: str = "sub"
    realm: str = "dicomrst"


class BearerAuthenticator:
    """Checks ``Authorization: Bearer`` JWTs (see the module's docstring)."""

    def __init__(self, settings: OidcSettings, keys: KeySet, clock: IReactorTime) -> None:
        self.settings = settings
        self.keys = keys
        self._clock = clock
        self.challenge = f'Bearer realm="{settings.realm}"'

    def _invalid(self, why: str) -> Unauthorized:
        # RFC 6750 §3: error_description is a quoted string of printable ASCII without
        # quotes or backslashes; `why` is ours, so it is.
        return Unauthorized(
            f"invalid bearer token: {why}",
            (f'{self.challenge}, error="invalid_token", error_description="{why}"',),
        )

    def authenticate(self, token: bytes) -> Deferred[Principal]:
        """The principal a valid `token` names; `Unauthorized` otherwise."""
        try:
            header, obj = self._parse(token)
        except Unauthorized as e:
            return _failed(e)
        alg = header["alg"]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return _failed(self._invalid("kid is not a string"))
        found = self.keys.keys(kid, alg)
        return found.addCallback(self._verify, token, alg, obj.payload)

    def _parse(self, token: bytes) -> tuple[dict[str, Any], jws.CompactSignature]:
        token = token.strip()
        if not token or len(token) > MAX_TOKEN or token.count(b".") != 2:
            raise self._invalid("not a JWT in compact form")
        try:
            obj = jws.extract_compact(token)
            header = obj.headers()
        except (JoseError, ValueError, TypeError):
            raise self._invalid("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            shown = alg if isinstance(alg, str) and alg.isalnum() and len(alg) <= 16 else "?"
            raise self._invalid(f"signature algorithm {shown} not accepted")
        return header, obj

    def _verify(self, keys: list[RSAKey | ECKey], token: bytes, alg: str, payload: bytes) -> Principal:
        if not keys:
            if not self.keys.loaded:
                raise ServiceUnavailable(
                    f"the identity provider's keys could not be fetched from {self.keys.source.description}",
                    retry_after=int(MIN_REFRESH),
                )
            raise self._invalid("no key of the issuer matches the token")
        for key in keys:
            try:
                jws.deserialize_compact(token, key, algorithms=[alg])
                break
            except JoseError:
                continue
        else:
            raise self._invalid("bad signature")
        try:
            claims = json.loads(payload)
        except ValueError:
            raise self._invalid("claims are not JSON") from None
        if not isinstance(claims, dict):
            raise self._invalid("claims are not a JSON object")
        self._check_claims(claims)
        name = claims.get(self.settings.username_claim)
        if not isinstance(name, str) or not name:
            raise self._invalid(f"no {self.settings.username_claim} claim")
        return Principal(name, _roles(claim_at(claims, self.settings.roles_claim)), method="oidc")

    def _check_claims(self, claims: dict[str, Any]) -> None:
        settings = self.settings
        if claims.get("iss") != settings.issuer:
            raise self._invalid("wrong issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if settings.audience not in audiences:
            raise self._invalid("wrong audience")
        now = self._clock.seconds()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise self._invalid("no exp claim")
        if now > exp + LEEWAY:
            raise self._invalid("token expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
                raise self._invalid("nbf is not a number")
            if now + LEEWAY < nbf:
                raise self._invalid("token not yet valid")


def _roles(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _failed(error: Exception) -> Deferred[Principal]:
    d: Deferred[Principal] = Deferred()
    d.errback(Failure(error))
    return d

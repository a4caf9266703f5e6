# -*- test-case-name: tests.unit.test_tls -*-
"""TLS for the HTTP and DIMSE listeners and for associations to a PACS.

The certificate files are read once, at startup (`server_tls`, `client_tls`); a file that
is missing, unreadable or not what it should be raises `TLSFileError` naming which one,
so the configuration check can name its key.  Every context speaks TLS 1.2 or later, as
the BCP 195 profiles of DICOM PS3.15 Annex B require; the cipher suites are Twisted's
defaults (ECDHE with AES-GCM or ChaCha20, nothing weaker).

Twisted's ``ssl:`` endpoint strings cannot ask for a client certificate, so a listener
with a ``tls`` block wraps its (plain) endpoint in `TLSServerEndpoint` instead.
"""

from __future__ import annotations

from typing import TypeAlias, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: What `client_tls` makes: a connection creator that also checks the host name, or a
#: context factory that checks only the chain.
ClientTLS: TypeAlias = "IOpenSSLClientConnectionCreator | IOpenSSLContextFactory"

#: PS3.15 B.12/B.13 (BCP 195, RFC 8996): never TLS 1.0 or 1.1.
MINIMUM_VERSION = TLSVersion.TLSv1_2


_UsableKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
_USABLE_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


class TLSFileError(ValueError):
    """A certificate or key file cannot be used; `field` is ``cert``, ``key`` or ``ca``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@attrs.frozen
class _Identity:
    """A certificate (with the chain that follows it in its file) and its private key."""

    key: crypto.PKey
    certificate: crypto.X509
    chain: tuple[crypto.X509, ...]


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(field, f"cannot read {path!r}: {e.strerror or e}") from None


def _certificates(path: str, field: str) -> list[x509.Certificate]:
    data = _read(path, field)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise TLSFileError(field, f"{path!r} holds no PEM certificate")
    return found


def _private_key(path: str) -> _UsableKey:
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError("key", f"{path!r} is encrypted; give the key unencrypted") from None
    except ValueError:
        raise TLSFileError("key", f"{path!r} holds no PEM private key") from None
    if not isinstance(key, _USABLE_KEYS):
        raise TLSFileError("key", f"{path!r}: a {type(key).__name__} cannot sign for TLS here")
    return key


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]  # every public key type has it
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _identity(cert: str, key: str) -> _Identity:
    certificates = _certificates(cert, "cert")
    private = _private_key(key)
    if _public_bytes(private.public_key()) != _public_bytes(certificates[0].public_key()):
        raise TLSFileError("key", f"{key!r} is not the private key of the certificate in {cert!r}")
    return _Identity(
        crypto.PKey.from_cryptography_key(private),
        crypto.X509.from_cryptography(certificates[0]),
        tuple(crypto.X509.from_cryptography(c) for c in certificates[1:]),
    )


def _authorities(ca: str) -> list[Certificate]:
    return [Certificate(crypto.X509.from_cryptography(c)) for c in _certificates(ca, "ca")]


def server_tls(
    cert: str, key: str, ca: str | None = None, require_client_cert: bool = False
) -> IOpenSSLContextFactory:
    """A listener's TLS: present `cert` (a PEM file: the certificate, then any intermediate
    certificates) with `key`; with `ca` (PEM, one or more certificates), ask each client
    for a certificate and verify it against those, and with `require_client_cert` end the
    handshake of a client that has none.  Raises `TLSFileError`."""
    identity = _identity(cert, key)
    factory = CertificateOptions(
        privateKey=identity.key,
        certificate=identity.certificate,
        extraCertChain=list(identity.chain),
        # trustRoot would always require a certificate; caCerts lets it be optional.
        verify=ca is not None,
        caCerts=[c.original for c in _authorities(ca)] if ca is not None else None,
        requireCertificate=require_client_cert,
        raiseMinimumTo=MINIMUM_VERSION,
    )
    _check(factory)
    return factory


def client_tls(
    host: str, ca: str, cert: str | None = None, key: str | None = None, check_hostname: bool = True
) -> ClientTLS:
    """TLS towards `host`: its certificate must chain to one of `ca` (PEM) and, with
    `check_hostname`, name `host` (a DNS name or an IP address); `cert` and `key`, when
    given, are presented as our client certificate.  Raises `TLSFileError`."""
    authorities = trustRootFromCertificates(_authorities(ca))
    identity = _identity(cert, key) if cert is not None and key is not None else None
    if check_hostname:
        client = None
        if identity is not None:
            client = PrivateCertificate.fromCertificateAndKeyPair(
                Certificate(identity.certificate), KeyPair(identity.key)
            )
        options: dict[str, object] = {"raiseMinimumTo": MINIMUM_VERSION}
        if identity is not None and identity.chain:
            options["extraCertChain"] = list(identity.chain)
        return optionsForClientTLS(
            host, trustRoot=authorities, clientCertificate=client, extraCertificateOptions=options
        )
    # Only the chain: for PACS whose certificate names no host we could check.
    factory = CertificateOptions(
        privateKey=identity.key if identity is not None else None,
        certificate=identity.certificate if identity is not None else None,
        extraCertChain=list(identity.chain) if identity is not None else None,
        trustRoot=authorities,
        raiseMinimumTo=MINIMUM_VERSION,
    )
    _check(factory)
    return factory


def _check(factory: CertificateOptions) -> None:
    # The context is built lazily, at the first connection; build it now so a key that
    # OpenSSL refuses (say, too short for its security level) stops startup instead.
    try:
        factory.getContext()
    except SSL.Error as e:
        raise TLSFileError("cert", f"OpenSSL refuses the certificate or key: {describe_error(e)}") from None


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """`endpoint` with TLS on every connection it accepts (what ``ssl:`` does for TCP,
    here for any endpoint, ``systemd:`` included, and with client certificates)."""

    def __init__(
        self, endpoint: IStreamServerEndpoint, tls: IOpenSSLContextFactory, clock: IReactorTime
    ) -> None:
        self._endpoint = endpoint
        self._tls = tls
        # Twisted's TLS layer gathers small writes until the next reactor turn, on this clock.
        self._clock = clock

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._endpoint.listen(TLSMemoryBIOFactory(self._tls, False, factory, self._clock))


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """`endpoint` with TLS (`client_tls`) over the connection; Twisted's `wrapClientTLS`
    without its global reactor."""

    def __init__(self, endpoint: IStreamClientEndpoint, tls: ClientTLS, clock: IReactorTime) -> None:
        self._endpoint = endpoint
        self._tls = tls
        self._clock = clock

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        wrapping = TLSMemoryBIOFactory(self._tls, True, factory, self._clock)
        return self._endpoint.connect(wrapping).addCallback(_inner)


def _inner(protocol: IProtocol) -> IProtocol:
    """The protocol a TLS layer carries (what the caller of `connect` built)."""
    return cast(TLSMemoryBIOProtocol, protocol).wrappedProtocol


def describe_error(error: BaseException) -> str:
    """OpenSSL's reasons (``certificate verify failed``), or the error's text."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(entry[-1]) for entry in error.args[0] if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(reasons)
    return str(error) or type(error).__name__


def tls_failure(reason: Failure | None) -> str | None:
    """Why the TLS handshake failed, when that is why a connection ended; else None."""
    if reason is None:
        return None
    if reason.check(SSL.Error) and reason.value is not None:
        return describe_error(reason.value)
    if reason.check(VerificationError):
        return "the certificate does not name the host connected to"
    return None

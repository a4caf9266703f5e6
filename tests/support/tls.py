"""Test certificate authorities: a CA, server certificates for 127.0.0.1 and localhost,
client certificates, written as PEM files into a temp directory (`Authority.issue`)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from functools import cache

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from dicomrst.common.tls import client_tls


@cache
def _key(slot: str) -> rsa.RSAPrivateKey:
    # RSA (2048) for DCMTK 3.6.7's default profile; one key per role, made once per run:
    # generating one costs tens of milliseconds.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@attrs.frozen
class Issued:
    """PEM files: ``cert`` (the certificate), ``key`` (its unencrypted private key)."""

    cert: str
    key: str


@attrs.define
class Authority:
    """A self-signed CA whose files live in `directory`; ``ca`` is its certificate's file."""

    name: str
    directory: str
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey
    ca: str

    @classmethod
    def create(cls, directory: str, name: str = "Test CA") -> Authority:
        os.makedirs(directory, exist_ok=True)
        key = _key(f"ca:{name}")
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = os.path.join(directory, "ca.pem")
        with open(ca, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(name, directory, certificate, key, ca)

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        client: bool = False,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ) -> Issued:
        """A certificate for `common_name`; a server one names `hosts` (addresses as IP
        SANs, names as DNS SANs)."""
        key = _key(f"{self.name}:{common_name}")
        now = datetime.datetime.now(datetime.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = os.path.join(self.directory, common_name.replace(" ", "_"))
        with open(stem + ".crt", "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
        with open(stem + ".key", "wb") as f:
            f.write(_pem_key(key))
        return Issued(stem + ".crt", stem + ".key")


@implementer(IPolicyForHTTPS)
class ClientPolicy:
    """An HTTPS client's TLS (for treq's `Agent`): trust `ca`, present `client` if given."""

    def __init__(self, ca: str, client: Issued | None = None) -> None:
        self.ca = ca
        self.client = client

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        cert, key = (self.client.cert, self.client.key) if self.client is not None else (None, None)
        return client_tls(hostname.decode("ascii"), self.ca, cert, key)  # type: ignore[return-value]

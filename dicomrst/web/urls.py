# -*- test-case-name: tests.unit.test_web_ops -*-
"""Where the gateway is, as its clients see it: the start of every URL it writes
(RetrieveURL, BulkDataURI, Content-Location, Location).

In order:

1. ``server.http.public-url``, when set: the operator said so (Orthanc's PublicRoot).
2. When the peer is one of ``server.http.trusted-proxies``: what the proxy says, the
   ``Forwarded`` header (RFC 7239: its last element, the one the proxy next to us added)
   first, then ``X-Forwarded-Proto``, ``-Host``, ``-Port`` and ``-Prefix``; each part the
   proxy leaves out comes from the request itself.
3. The request: the connection's scheme and the Host header.

A peer not in the list may send any of those headers: they are ignored, since anyone can
write them and they end up in every URL the gateway answers with.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.iweb import IRequest

from dicomrst.common.addresses import address_host, format_address
from dicomrst.errors import BadRequest
from dicomrst.web.requests import HOST_PATTERN, request_host

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7239 §4: forwarded-pair = token "=" value, value = token / quoted-string.
_PAIR = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s"]*)\s*')
# A prefix is a URL path of unreserved and sub-delim characters; no '?', '#', '%' or spaces.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*){1,32}")
_PORT = re.compile(r"[0-9]{1,5}")
# What a forwarded client address may hold (an IP address or an obfuscated identifier).
_FORWARDED_FOR = re.compile(r"[^0-9A-Za-z._:%-]")


def _last(values: list[bytes] | None) -> str | None:
    """The last comma-separated entry of a header's last field: what the nearest proxy
    added (a chain of proxies appends)."""
    if not values:
        return None
    entry = values[-1].decode("latin-1").rsplit(",", 1)[-1].strip()
    return entry or None


def forwarded_pairs(values: list[bytes] | None) -> dict[str, str]:
    """The parameters of the last element of ``Forwarded`` (lower-case names, values
    unquoted); empty when there is none or it does not parse."""
    if not values:
        return {}
    text = b",".join(values).decode("latin-1")
    # Split on commas outside quoted strings: the elements.
    elements: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append("".join(current))
            current = []
            continue
        current.append(char)
    elements.append("".join(current))
    last = elements[-1].strip()
    pairs: dict[str, str] = {}
    for piece in last.split(";") if last else []:
        match = _PAIR.fullmatch(piece)
        if match is None:
            return {}
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs[name] = value
    return pairs


@attrs.frozen
class PublicUrls:
    """``server.http.public-url`` and ``server.http.trusted-proxies``.

    :ivar public_url: the URL of the base path as clients reach it, without a trailing
        slash (None: from the request).
    :ivar trusted: the proxies (addresses and networks) whose forwarding headers count.
    """

    public_url: str | None = None
    trusted: tuple[_Network, ...] = ()

    @classmethod
    def from_config(cls, public_url: str | None, trusted_proxies: Iterable[str]) -> PublicUrls:
        return cls(public_url, tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies))

    def trusts(self, request: IRequest) -> bool:
        """The peer of `request` is one of the trusted proxies."""
        if not self.trusted:
            return False
        peer = request.getClientAddress()
        if not isinstance(peer, IPv4Address | IPv6Address):
            return False
        try:
            address = ipaddress.ip_address(peer.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def client_host(self, request: IRequest) -> str:
        """The client's address: the peer's, or when the peer is a trusted proxy the one it
        forwarded (``Forwarded: for=``, else the last ``X-Forwarded-For`` entry: the address
        the proxy next to us saw).  Not checked beyond its form: for log and audit lines."""
        peer = request.getClientAddress()
        host = address_host(peer) or str(peer)
        if not self.trusts(request):
            return host
        headers = request.requestHeaders
        forwarded = forwarded_pairs(headers.getRawHeaders(b"forwarded")).get("for")
        if forwarded is None:
            forwarded = _last(headers.getRawHeaders(b"x-forwarded-for"))
        if not forwarded:
            return host
        # RFC 7239 §6: "[2001:db8::1]:4711", "192.0.2.1:80", "_hidden", "unknown".
        if forwarded.startswith("["):
            forwarded = forwarded[1:].split("]", 1)[0]
        elif forwarded.count(":") == 1:
            forwarded = forwarded.split(":", 1)[0]
        return _FORWARDED_FOR.sub("_", forwarded)[:64] or host

    def base_url(self, request: IRequest, base_path: str) -> str:
        """``{scheme}://{host}{prefix}{base-path}``, no trailing slash (see the module)."""
        if self.public_url is not None:
            return self.public_url
        base = "/" + base_path.strip("/") if base_path.strip("/") else ""
        scheme = "https" if request.isSecure() else "http"
        # BadRequest for a Host that is not one: it would end up in every URL we send.
        host = request_host(request) or format_address(request.getHost())  # HTTP/1.0 without Host
        prefix = ""
        if self.trusts(request):
            headers = request.requestHeaders
            forwarded = forwarded_pairs(headers.getRawHeaders(b"forwarded"))
            proto = forwarded.get("proto") or _last(headers.getRawHeaders(b"x-forwarded-proto"))
            if proto is not None:
                if proto.lower() not in ("http", "https"):
                    raise BadRequest(f"forwarded protocol {proto[:16]!r} is neither http nor https")
                scheme = proto.lower()
            forwarded_host = forwarded.get("host") or _last(headers.getRawHeaders(b"x-forwarded-host"))
            if forwarded_host is not None:
                if not HOST_PATTERN.fullmatch(forwarded_host):
                    raise BadRequest(f"invalid forwarded host {forwarded_host[:64]!r}")
                host = forwarded_host
            port = _last(headers.getRawHeaders(b"x-forwarded-port"))
            if port is not None and "host" not in forwarded:
                if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
                    raise BadRequest(f"invalid X-Forwarded-Port {port[:16]!r}")
                host = _with_port(host, int(port), scheme)
            forwarded_prefix = _last(headers.getRawHeaders(b"x-forwarded-prefix"))
            if forwarded_prefix is not None and forwarded_prefix != "/":
                if not _PREFIX.fullmatch(forwarded_prefix):
                    raise BadRequest(f"invalid X-Forwarded-Prefix {forwarded_prefix[:64]!r}")
                prefix = forwarded_prefix.rstrip("/")
        return f"{scheme}://{host}{prefix}{base}"


def _with_port(host: str, port: int, scheme: str) -> str:
    """`host` with its port replaced by `port` (left out when it is the scheme's default)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or (host.startswith("[") and "]:" in host) else host
    default = 443 if scheme == "https" else 80
    return name if port == default else f"{name}:{port}"

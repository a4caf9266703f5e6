"""Network addresses: as text for log lines and URLs, and matched against the nodes a
configuration names."""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def format_address(address: IAddress | None) -> str:
    """``host:port`` (an IPv6 host in brackets); any other address as its text."""
    if isinstance(address, IPv4Address | IPv6Address):
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{host}:{address.port}"
    return str(address) if address is not None else "-"


def address_host(address: IAddress | None) -> str:
    """The IP address of a TCP peer, "" for any other kind of address."""
    return address.host if isinstance(address, IPv4Address | IPv6Address) else ""


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # no IPv6 scope
    # A listener on "::" sees IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network | None:
    """`text` as an address (a network of one) or a network in CIDR notation; None if neither."""
    try:
        return ipaddress.ip_network(_address(text))
    except ValueError:
        pass
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def host_networks(host: str) -> tuple[Network, ...]:
    """The networks `host` stands for: itself if it is an address or a CIDR network, else
    every address it resolves to (blocking: call it before the reactor runs).  Raises
    OSError when the name does not resolve."""
    network = parse_network(host)
    if network is not None:
        return (network,)
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    found = {ipaddress.ip_network(_address(str(info[4][0]))) for info in infos}
    return tuple(sorted(found, key=lambda n: (n.version, n)))


def in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether the IP address `host` lies in one of `networks` ("" and non-addresses never do)."""
    try:
        address = _address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)

"""Network addresses as text, for log lines and URLs."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress


def format_address(address: IAddress | None) -> str:
    """``host:port`` (an IPv6 host in brackets); any other address as its text."""
    if isinstance(address, IPv4Address | IPv6Address):
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{host}:{address.port}"
    return str(address) if address is not None else "-"

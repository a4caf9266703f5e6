# -*- test-case-name: tests.unit.test_dimse -*-
"""Opening associations to a PACS from the reactor."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, ConnectingCancelledError, TimeoutError
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory

from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.tls import ClientTLS, TLSClientEndpoint
from dicomrst.dimse.connection import DimseConnection, RequestHandler
from dicomrst.ul.errors import AssociationTimeout, ConnectFailed
from dicomrst.ul.negotiation import AssociationRequest
from dicomrst.ul.protocol import ULProtocol


async def associate(
    reactor: IGatewayReactor,
    host: str,
    port: int,
    request: AssociationRequest,
    *,
    timeout: float,
    handlers: Mapping[int, RequestHandler] | None = None,
    metrics: Metrics | None = None,
    tls: ClientTLS | None = None,
) -> DimseConnection:
    """Connect and negotiate; return the DIMSE connection once established.

    `timeout` bounds the TCP connect and, separately, the TLS handshake and the wait for
    A-ASSOCIATE-AC (the protocol's ARTIM timer, started once connected: the request
    waits in the TLS layer until the handshake is done).  `metrics` counts its bytes and
    operations (None: metrics are off).  `tls` (`dicomrst.common.tls.client_tls`): DICOM
    TLS.  Failures are `dicomrst.ul.errors` types (a failed handshake `TLSFailed`).
    """
    connection = DimseConnection(reactor, handlers, metrics)
    protocol = ULProtocol(reactor, connection, request=request, artim_timeout=timeout, metrics=metrics)
    endpoint: IStreamClientEndpoint
    if isIPAddress(host):
        # HostnameEndpoint's happy-eyeballs delay costs 300 ms on every refused connect.
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls is not None:
        endpoint = TLSClientEndpoint(endpoint, tls, reactor)
    where = f"{request.called_aet}@{host}:{port}"
    try:
        await endpoint.connect(_QuietFactory(protocol))
    except (ConnectError, ConnectingCancelledError, TimeoutError) as e:
        if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower():
            raise AssociationTimeout(f"cannot connect to {where}: timed out after {timeout:g} s") from e
        raise ConnectFailed(f"cannot connect to {where}: {_reason(e)}") from e
    try:
        await protocol.whenEstablished
    except CancelledError:
        # Cancelled after connecting: whatever state the association is in, it must
        # not outlive the caller who gave up on it.  (A *failed* setup is not aborted
        # here: the protocol fails whenEstablished from inside its own actions, and
        # those close or abort the association themselves right after.)
        protocol.abort("association setup abandoned")
        raise
    return connection


def _reason(e: BaseException) -> str:
    # Twisted's text reads "Connection was refused by other side: 111: Connection refused."
    return str(e).rstrip(". ").rsplit(": ", 1)[-1] or type(e).__name__


class _QuietFactory(Factory):
    """connectProtocol's factory logs two lines per connection; the UL logs one."""

    noisy = False

    def __init__(self, protocol: ULProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> ULProtocol:
        return self._protocol

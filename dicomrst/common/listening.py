# -*- test-case-name: tests.unit.test_web -*-
"""A listening socket as a service: Twisted's `StreamServerEndpointService` on an
endpoint string (``tcp:...``, ``ssl:...``, ``systemd:...``), optionally with TLS over it
(client certificates included, which ``ssl:`` cannot ask for), which also tells the port
it got and raises a listen error from ``startService``."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLContextFactory,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.common.addresses import format_address
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.tls import TLSServerEndpoint
from dicomrst.common.twisted_internals import raise_listen_errors
from dicomrst.logs import logger

log = logger("dicomrst")


@implementer(IStreamServerEndpoint)
class _Reporting:
    """An endpoint that tells its service how listening went."""

    def __init__(self, endpoint: IStreamServerEndpoint, service: ListeningService) -> None:
        self._endpoint = endpoint
        self._service = service

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._endpoint.listen(factory).addBoth(self._service.listened)


class ListeningService(StreamServerEndpointService):
    """Listen with `factory` on the endpoint `description` while running; with `tls`
    (`dicomrst.common.tls.server_tls`), every connection speaks TLS.

    :ivar port: the `IListeningPort` once listening, else None.
    :ivar whenListening: fires with `port`, or errbacks with the listen error (e.g.
        `CannotListenError`, also raised from `startService` when known at once).
    """

    def __init__(
        self,
        reactor: IGatewayReactor,
        description: str,
        factory: IProtocolFactory,
        what: str,
        log: Logger = log,
        tls: IOpenSSLContextFactory | None = None,
    ) -> None:
        plain = serverFromString(reactor, description)
        endpoint = _Reporting(plain if tls is None else TLSServerEndpoint(plain, tls, reactor), self)
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        raise_listen_errors(self)
        self.description = description
        self.what = what
        self.log = log
        self.tls = tls
        self.port: IListeningPort | None = None
        self.whenListening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        try:
            super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        except Exception:
            self.running = False
            raise

    def listened(self, result: IListeningPort | Failure) -> IListeningPort | Failure:
        if isinstance(result, Failure):
            self.whenListening.errback(result)
            return result
        self.port = result
        self.log.info(
            "{what} listening on {address}{tls}",
            what=self.what,
            address=format_address(result.getHost()),
            tls=" (TLS)" if self.tls is not None else "",
        )
        self.whenListening.callback(result)
        return result

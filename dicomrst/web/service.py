# -*- test-case-name: tests.unit.test_web -*-
"""The HTTP listener as a service, with a graceful stop.

Add it to the gateway's service after the backends: it then stops first, so no request
is still using an association when the backends release theirs.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.python.failure import Failure

from dicomrst.common.listening import ListeningService
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.logs import logger
from dicomrst.web.site import SHUTDOWN, GatewaySite

log = logger("dicomrst.web")


class HTTPService(ListeningService):
    """Listen on an endpoint string with a `GatewaySite`; drain it on stop.

    :param endpoint_description: e.g. ``"tcp:8080:interface=127.0.0.1"``,
        ``"systemd:domain=INET:name=http"``.
    :param site: from `dicomrst.web.site.make_site`.
    :param graceful: on stop, wait for in-flight requests (up to `grace_period`
        seconds) instead of aborting them at once.
    :param tls: HTTPS over that endpoint (`dicomrst.common.tls.server_tls`).
    """

    def __init__(
        self,
        endpoint_description: str,
        site: GatewaySite,
        reactor: IGatewayReactor,
        graceful: bool,
        grace_period: float,
        tls: IOpenSSLContextFactory | None = None,
    ) -> None:
        super().__init__(reactor, endpoint_description, site, "HTTP", log, tls)
        self.site = site
        self.graceful = graceful
        self.grace_period = grace_period
        self._reactor = reactor

    def stopService(self) -> Deferred[None]:
        """Stop listening, then drain (or abort) in-flight requests.

        The returned Deferred fires once the port is closed and every in-flight
        request has finished, or `grace_period` has passed and the rest were
        aborted.
        """
        self.site.drain()
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return stopped.addCallback(lambda _: self._finish_inflight())

    def _finish_inflight(self) -> Deferred[None] | None:
        site = self.site
        if not self.graceful:
            aborted = site.abort_inflight(SHUTDOWN)
            if aborted:
                log.info("HTTP stopped; aborted {count} in-flight requests", count=aborted)
            return None
        idle = site.when_idle()
        if idle.called:
            return idle
        log.info(
            "HTTP stopped listening; waiting up to {grace_period} s for {count} in-flight requests",
            grace_period=self.grace_period,
            count=site.inflight,
        )
        idle.addTimeout(self.grace_period, self._reactor)

        def give_up(failure: Failure) -> None:
            failure.trap(DeferredTimeoutError)
            aborted = site.abort_inflight(SHUTDOWN)
            log.warn(
                "Grace period of {grace_period} s over; aborted {count} in-flight requests",
                grace_period=self.grace_period,
                count=aborted,
            )

        return idle.addErrback(give_up)

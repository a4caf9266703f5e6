# -*- test-case-name: tests.test_web -*-
"""The HTTP listener as a Service, with a graceful stop.

Add it to the MultiService after the backends: it then stops first, so no request
is still using an association when the backends release theirs.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.python.failure import Failure

from dicomrst.logs import logger
from dicomrst.web.site import SHUTDOWN, GatewaySite, format_address

log = logger("dicomrst.web")


class HTTPService(Service):
    """Listen on an endpoint string with a `GatewaySite`; drain it on stop.

    :param endpoint_description: e.g. ``"tcp:8080:interface=127.0.0.1"``,
        ``"systemd:domain=INET:name=http"``.
    :param site: from `dicomrst.web.site.make_site`.
    :param reactor: provides the endpoint's reactor interfaces and `IReactorTime`.
    :param graceful: on stop, wait for in-flight requests (up to `grace_period`
        seconds) instead of aborting them at once.
    :ivar port: the `IListeningPort` once listening, else None.
    :ivar whenListening: the listen Deferred (set by `startService`): fires with
        `port`, or errbacks with the listen error (e.g. `CannotListenError`).
    """

    def __init__(
        self,
        endpoint_description: str,
        site: GatewaySite,
        reactor: Any,
        graceful: bool,
        grace_period: float,
    ) -> None:
        self.endpoint_description = endpoint_description
        self.site = site
        self.graceful = graceful
        self.grace_period = grace_period
        self._reactor = reactor
        self.port: IListeningPort | None = None
        self.whenListening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        """Start listening; raise the listen error if it is known at once.

        Every stock endpoint (tcp, unix, systemd, ssl) listens synchronously, so
        "address in use" stops twistd at startup rather than leaving a gateway
        that answers nothing.
        """
        super().startService()
        endpoint = serverFromString(self._reactor, self.endpoint_description)
        self.whenListening = endpoint.listen(self.site).addCallback(self._listening)
        failed_now: list[Failure] = []

        def note(failure: Failure) -> Failure:
            failed_now.append(failure)
            return failure

        self.whenListening.addErrback(note)
        if failed_now:
            self.running = False
            failed_now[0].raiseException()
        # A later failure still errbacks whenListening; say so in the log too.
        self.whenListening.addErrback(self._listen_failed)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        log.info("HTTP listening on {address}", address=format_address(port.getHost()))
        if not self.running:
            # Stopped while the endpoint was still setting up.
            port.stopListening()
        return port

    def _listen_failed(self, failure: Failure) -> Failure:
        log.failure("HTTP listen on {endpoint} failed", failure, endpoint=self.endpoint_description)
        return failure

    def stopService(self) -> Deferred[None]:
        """Stop listening, then drain (or abort) in-flight requests.

        The returned Deferred fires once the port is closed and every in-flight
        request has finished, or `grace_period` has passed and the rest were
        aborted.
        """
        super().stopService()
        self.site.drain()
        port = self.port
        stopped: Deferred[Any] = maybeDeferred(port.stopListening) if port is not None else succeed(None)
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
        clock: IReactorTime = self._reactor
        idle.addTimeout(self.grace_period, clock)

        def give_up(failure: Failure) -> None:
            failure.trap(DeferredTimeoutError)
            aborted = site.abort_inflight(SHUTDOWN)
            log.warn(
                "Grace period of {grace_period} s over; aborted {count} in-flight requests",
                grace_period=self.grace_period,
                count=aborted,
            )

        return idle.addErrback(give_up)

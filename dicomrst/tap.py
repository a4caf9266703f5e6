# -*- test-case-name: tests.test_e2e -*-
"""``twistd dicomrst``: command-line options and the service tree.

The reactor is imported inside `makeService` only: importing it at module level
would install the default reactor before twistd has read ``--reactor``.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.python import usage
from twisted.python.failure import Failure

import dicomrst
from dicomrst.backends.interfaces import IBackend
from dicomrst.config import Config, ConfigError, load_config
from dicomrst.logs import logger

log = logger("dicomrst")


def _die(message: str) -> NoReturn:
    # One line, no traceback: the operator needs to know which key to fix.
    sys.stderr.write(f"dicomrst: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "dicomrst answers QIDO-RS, WADO-RS and STOW-RS over HTTP by talking DIMSE to PACS "
        "(and reading S3). It reads a DICOM-RST style YAML config; without --config it runs "
        "on DICOM-RST's defaults (HTTP on 0.0.0.0:8080, a C-STORE/C-ECHO listener "
        "DICOM-RST on 0.0.0.0:7001, no AETs). Config errors stop startup with one line "
        "naming the key."
    )
    optParameters = [
        ["config", "c", None, "YAML config file with DICOM-RST's keys (times in milliseconds)."],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            _die(f"config error: {e}")


class BackendsService(Service):
    """Owns the backends; stopping it releases their associations."""

    def __init__(self, backends: dict[str, IBackend]) -> None:
        self.backends = backends

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([maybeDeferred(b.stop) for b in self.backends.values()], consumeErrors=True)


class DimseListenerService(Service):
    """One ``server.dimse[]`` listener; aborts its open associations when stopped."""

    def __init__(self, endpoint_description: str, factory: Any, reactor: Any) -> None:
        self.endpoint_description = endpoint_description
        self.factory = factory
        self._reactor = reactor
        self.port: IListeningPort | None = None
        self.whenListening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        from twisted.internet.endpoints import serverFromString

        super().startService()
        endpoint = serverFromString(self._reactor, self.endpoint_description)
        self.whenListening = endpoint.listen(self.factory)
        failures: list[Failure] = []

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            log.info(
                "DIMSE listener {aet} on {address}", aet=self.factory.aet, address=_address(port.getHost())
            )
            return port

        self.whenListening.addCallbacks(listening, lambda f: failures.append(f) or f)
        if failures:
            failures[0].raiseException()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        self.factory.abort_all()
        return maybeDeferred(port.stopListening) if port is not None else None


def _address(address: Any) -> str:
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)


#: At stop, how long to wait for connections that are closing to write out what they were given.
FLUSH_TIMEOUT = 5.0


class GatewayService(MultiService):
    """The whole gateway.  Children stop in reverse order: HTTP, DIMSE listeners, backends."""

    def __init__(self, reactor: Any = None) -> None:
        super().__init__()
        self._reactor = reactor

    def stopService(self) -> Deferred[Any]:
        # One child after another, last added first, each waited for: MultiService would
        # stop them all at once, and the pool would abort the associations of requests
        # the HTTP service is still letting finish.
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {child} failed", child=child)
        # The graceful HTTP stop fires as soon as the last response is *finished*, i.e.
        # handed to its transport; twistd's shutdown then drops every connection at once
        # (reactor.disconnectAll), bytes still in the write buffers included.  Let the
        # closing connections flush first.
        if self._reactor is not None:
            await _flushed(self._reactor, FLUSH_TIMEOUT)

    def startService(self) -> None:
        try:
            super().startService()
        except Exception as e:
            # The error is reported here, once; the listen Deferreds carry it too.
            for child in self:
                listening = getattr(child, "whenListening", None)
                if listening is not None:
                    listening.addErrback(lambda _: None)
            _die(f"cannot listen: {e}")


async def _flushed(reactor: Any, bound: float) -> None:
    """Return once no closing connection has unwritten data (or after `bound` s)."""
    from twisted.internet.task import deferLater

    get_writers = getattr(reactor, "getWriters", None)
    if get_writers is None:
        return
    deadline = reactor.seconds() + bound
    while any(getattr(w, "disconnecting", False) for w in get_writers()) and reactor.seconds() < deadline:
        await deferLater(reactor, 0.01, lambda: None)


def build(config: Config, reactor: Any) -> GatewayService:
    from twisted.internet.endpoints import serverFromString

    from dicomrst.backends.dimse import DimseBackend
    from dicomrst.dimse.contexts import receivable_syntaxes
    from dicomrst.dimse.moves import MoveReceiver, MoveRegistry
    from dicomrst.dimse.server import listener_factory
    from dicomrst.web.app import GatewayApp
    from dicomrst.web.service import HTTPService
    from dicomrst.web.site import make_site

    top = GatewayService(reactor)
    backends: dict[str, IBackend] = {}
    # The C-MOVEs in flight, shared by the backends that start them and the listeners
    # their sub-operations arrive on.
    moves = MoveRegistry(config.server.aet)
    listeners = {listener.aet: listener for listener in config.server.dimse}
    for i, aet in enumerate(config.aets):
        if aet.backend == "DIMSE":
            receiver = None
            if aet.wado_rs.retrieve == "move":
                if aet.wado_rs.receivers:
                    # DICOM-RST too moves to the first receiver only.
                    listener = listeners[aet.wado_rs.receivers[0]]
                    receiver = MoveReceiver(
                        moves, listener.aet, receivable_syntaxes(listener.uncompressed)
                    )
                else:
                    # retrieve: move is the default, so a config without receivers (most
                    # that only search) keeps working; DICOM-RST answers 500 here.
                    log.warn(
                        "{aet}: wado-rs.retrieve is 'move' but aets[{i}].wado-rs.receivers names no "
                        "listener to move to; WADO-RS retrieves from {aet} use C-GET",
                        aet=aet.aet,
                        i=i,
                    )
            backends[aet.aet] = DimseBackend(aet, config.server.aet, reactor, receiver)
        else:
            # Imported only when a bucket is configured: botocore alone adds ~25 MB of
            # resident memory to every gateway that never talks to S3.
            from dicomrst.backends.s3 import S3Backend

            backends[aet.aet] = S3Backend(aet, reactor)
    BackendsService(backends).setServiceParent(top)

    for i, listener in enumerate(config.server.dimse):
        description = listener.endpoint_description()
        _check_endpoint(serverFromString, reactor, description, f"server.dimse[{i}].endpoint")
        factory = listener_factory(listener.aet, reactor, moves, uncompressed=listener.uncompressed)
        DimseListenerService(description, factory, reactor).setServiceParent(top)

    http = config.server.http
    description = http.endpoint_description()
    _check_endpoint(serverFromString, reactor, description, "server.http.endpoint")
    app = GatewayApp(backends, reactor, base_path=http.base_path, echo_timeout=http.request_timeout_s)
    site = make_site(
        app.resource(), reactor, request_timeout=http.request_timeout_s, max_upload_size=http.max_upload_size
    )
    grace = http.request_timeout_s
    HTTPService(description, site, reactor, http.graceful_shutdown, grace).setServiceParent(top)
    return top


def _check_endpoint(parse: Any, reactor: Any, description: str, key: str) -> None:
    try:
        parse(reactor, description)
    except Exception as e:
        _die(f"config error: {key}: invalid endpoint {description!r}: {e}")


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from dicomrst.logs import set_level

    config: Config = options["loaded"]
    set_level(config.telemetry.level)
    log.info(
        "dicomrst {version} starting: {n} AET(s), config {path}",
        version=dicomrst.__version__,
        n=len(config.aets),
        path=options["config"] or "(built-in defaults)",
    )
    return build(config, reactor)

# -*- test-case-name: tests.integration.test_e2e -*-
"""``twistd dicomrst``: command-line options and the service tree.

The reactor is imported inside `makeService` only, and the web app (Klein installs the
default reactor when imported) inside `build`: importing either at module level would
install the default reactor before twistd has read ``--reactor``.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorFromThreads
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure

import dicomrst
from dicomrst.auth.authenticator import Authenticator
from dicomrst.auth.principal import AccessList, AccessPolicy, AetAccess
from dicomrst.backends.intake import SpoolingIntake
from dicomrst.backends.interfaces import IBackend, IInstanceIntake
from dicomrst.backends.local import LocalArchiveError, LocalBackend
from dicomrst.cache import CacheDirectoryError, InstanceCache
from dicomrst.common.cpu import CpuWorkers, IThreadsReactor
from dicomrst.common.listening import ListeningService
from dicomrst.common.metrics import Metrics, PoolState
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.tls import ClientTLS, TLSFileError, client_tls, server_tls
from dicomrst.common.twisted_internals import closing_connections_pending
from dicomrst.config import (
    AetConfig,
    ClientTlsConfig,
    Config,
    ConfigError,
    ServerTlsConfig,
    config_warnings,
    first_run_config,
    load_config,
)
from dicomrst.daemon import HangupService, Reloader, log_output
from dicomrst.dimse.contexts import receivable_syntaxes
from dicomrst.dimse.move_registry import MoveReceiver, MoveRegistry
from dicomrst.dimse.server import DimseServerFactory, listener_factory
from dicomrst.index.database import IndexStartFailed, SqlIndex
from dicomrst.index.factory import open_index
from dicomrst.index.interfaces import IIndex
from dicomrst.index.scans import PeriodicScans, ScanReport
from dicomrst.logs import OutputLog, logger, set_format, set_level

if TYPE_CHECKING:
    from dicomrst.audit.trail import AuditTrail
    from dicomrst.dimse.pool import AssociationPool
    from dicomrst.web.access import AccessGate

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
        "(and reading S3 or a local directory). It reads a DICOM-RST style YAML config; "
        "without --config it serves a local archive: the AET LOCAL in ./dicomrst-data, "
        "HTTP on 127.0.0.1:8080 and a C-STORE listener DICOMRST on 127.0.0.1:11112 into it. "
        "DICOM_RST_* environment variables override either. Config errors stop startup "
        "with one line naming the key."
    )
    optParameters = [
        ["config", "c", None, "YAML config file with DICOM-RST's keys (times in milliseconds)."],
    ]

    def opt_version(self) -> NoReturn:
        """Display dicomrst's version and exit."""
        print(f"dicomrst {dicomrst.__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            if self["config"] is None:
                self["loaded"] = first_run_config()
            else:
                self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            _die(f"config error: {e}")


class BackendsService(Service):
    """Owns the backends; starting it readies the LOCAL directories (a directory that
    cannot be used stops the gateway), stopping it releases their associations."""

    def __init__(self, backends: dict[str, IBackend], paths: dict[str, str] | None = None) -> None:
        self.backends = backends
        self.paths = paths or {}  # LOCAL AET -> its config key, for messages

    def startService(self) -> None:
        for aet, backend in self.backends.items():
            if isinstance(backend, LocalBackend):
                try:
                    started = backend.start()
                except LocalArchiveError as e:
                    _die(f"config error: {self.paths.get(aet, aet)}: {e}")
                started.addErrback(_cleanup_failed, aet)
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return DeferredList([maybeDeferred(b.stop) for b in self.backends.values()], consumeErrors=True)


def _cleanup_failed(reason: Failure, aet: str) -> None:
    log.failure("{aet}: removing the temporary files of an earlier run failed", reason, aet=aet)


class IndexService(Service):
    """Owns the index: opens it (creating or migrating its schema) when started, before
    the reactor runs and so before anything is served (an index that cannot be opened
    stops the gateway with one line naming ``index.url``); closes it when stopped, after
    everything that uses it."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def startService(self) -> None:
        try:
            self.index.start_blocking()
        except IndexStartFailed as e:
            _die(f"config error: {e}")
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return self.index.stop()


def needs_index(config: Config) -> bool:
    """Whether `config` has an AET the index serves (LOCAL, S3): a DIMSE-only gateway
    neither opens nor creates one."""
    return any(aet.backend in ("LOCAL", "S3") for aet in config.aets)


def open_configured_index(config: Config, reactor: IGatewayReactor) -> SqlIndex | None:
    """The index of ``index.url`` when `config` needs one (not started); `ConfigError`
    when its driver is missing."""
    if not needs_index(config):
        return None
    index = open_index(config.index, reactor)
    assert isinstance(index, SqlIndex)
    return index


def archive_backend(
    aet: AetConfig, reactor: IGatewayReactor, index: IIndex | None, metrics: Metrics | None = None
) -> IBackend:
    """The backend of a LOCAL or S3 AET, searching and recording in `index`; `metrics`
    counts an S3 AET's bytes."""
    if aet.backend == "LOCAL":
        assert aet.path is not None
        return LocalBackend(aet.aet, aet.path, reactor, index=index)
    # Imported only when a bucket is configured: botocore alone adds ~25 MB of
    # resident memory to every gateway that never talks to S3.
    from dicomrst.backends.s3 import S3Backend

    return S3Backend(aet, reactor, index=index, metrics=metrics)


def scan_of(backend: IBackend) -> Callable[[], Deferred[ScanReport]]:
    """The reconcile scan of a LOCAL or S3 backend that has an index."""
    if isinstance(backend, LocalBackend):
        return backend.reconciler().scan
    from dicomrst.backends.s3 import S3Backend  # only when a bucket is configured

    assert isinstance(backend, S3Backend)
    return backend.reconciler().scan


class CacheService(Service):
    """Owns the instance cache: claims and empties its directory at start; at stop, cancels
    its retrieves (before the backends stop) and deletes its entries."""

    def __init__(self, cache: InstanceCache) -> None:
        self.cache = cache

    def startService(self) -> None:
        try:
            self.cache.start()
        except CacheDirectoryError as e:
            _die(f"config error: server.cache.path: {e}")
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.cache.stop()


def make_cache(config: Config, reactor: IGatewayReactor) -> InstanceCache:
    """The instance cache of ``server.cache`` (``aets[].cache: false`` bypasses it)."""
    settings = config.server.cache
    return InstanceCache(
        reactor,
        settings.directory(),
        max_size=settings.max_size,
        ttl=settings.ttl_s,
        bypass=[aet.aet for aet in config.aets if not aet.cache],
    )


class DimseListenerService(ListeningService):
    """One ``server.dimse[]`` listener; aborts its open associations when stopped."""

    def __init__(
        self,
        reactor: IGatewayReactor,
        description: str,
        factory: DimseServerFactory,
        tls: IOpenSSLContextFactory | None = None,
    ) -> None:
        super().__init__(reactor, description, factory, f"DIMSE listener {factory.aet}", tls=tls)
        self.listener = factory

    def stopService(self) -> Deferred[None]:
        self.listener.abort_all()
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return stopped


#: At stop, how long to wait for connections that are closing to write out what they were given.
FLUSH_TIMEOUT = 5.0
#: Image conversions (rendered, decoded frames) that may wait for a thread before more
#: are answered 503: enough for a viewer's burst of a few hundred, while each waiting one
#: holds an open file and a request, not without bound.
CPU_MAX_WAITING = 256


class GatewayService(MultiService):
    """The whole gateway.  Children stop in reverse order: HTTP, DIMSE listeners, the
    cache, backends."""

    def __init__(self, reactor: IGatewayReactor | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._reactor = reactor
        #: What SIGHUP re-reads (`dicomrst.daemon`).
        self.reloaders: list[Reloader] = []
        #: The log output twistd is to use (`dicomrst.logs.make_output`), None: its own.
        self.log_output: OutputLog | None = None
        #: The audit trail (``telemetry.audit``), None: off.  Its ``dropped`` (records
        #: dropped with the queue full) is what ``dicomrst_audit_dropped_total`` counts.
        self.audit: AuditTrail | None = None

    def setServiceParent(self, parent: Any) -> None:
        # twistd's application: the log observer it finds there is the one it starts.
        if self.log_output is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_output)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def stopService(self) -> Deferred[None]:
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

    def privilegedStartService(self) -> None:
        # twistd calls this first: the listening services listen here (as root, when
        # started as root, before dropping privileges).
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        except Exception as e:
            self._cannot_listen(e)

    def startService(self) -> None:
        try:
            super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        except Exception as e:
            self._cannot_listen(e)

    def _cannot_listen(self, error: Exception) -> NoReturn:
        # The error is reported here, once; the listen Deferreds carry it too.
        for child in self:
            if isinstance(child, ListeningService):
                child.whenListening.addErrback(lambda _: None)
        _die(f"cannot listen: {error}")


async def _flushed(reactor: IGatewayReactor, bound: float) -> None:
    """Return once no closing connection has unwritten data (or after `bound` s)."""
    deadline = reactor.seconds() + bound
    while closing_connections_pending(reactor) and reactor.seconds() < deadline:
        await deferLater(reactor, 0.01, lambda: None)


#: bcrypt checks of Basic credentials that may wait for a thread before more are answered
#: 503: a flood of wrong passwords queues there, not in the image line.
AUTH_MAX_WAITING = 64


def make_access(
    config: Config, reactor: IGatewayReactor, reloaders: list[Reloader] | None = None
) -> AccessGate:
    """``server.auth`` and ``aets[].access`` as the web layer's `AccessGate`; the users
    file's reload joins `reloaders` (SIGHUP)."""
    from dicomrst.web.access import AccessGate

    auth = config.server.auth
    basic = bearer = None
    if auth.basic is not None:
        # Here and below, not at the top: only a configuration with Basic (or OIDC)
        # authentication needs bcrypt (or treq and the JOSE library).
        from dicomrst.auth.basic import BasicAuthenticator, UsersFile, check_password

        try:
            users = UsersFile(auth.basic.users_file, reactor)
        except OSError as e:
            _die(f"config error: server.auth.basic.users-file: cannot read {auth.basic.users_file!r}: "
                 f"{e.strerror or e}")
        if reloaders is not None:
            reloaders.append(users.reload)
        # Its own bounded line in the reactor's thread pool, apart from the images'.
        workers = CpuWorkers(
            cast(IThreadsReactor, reactor), max_waiting=AUTH_MAX_WAITING, what="password checks"
        )

        def check(password: bytes, stored: bytes) -> Deferred[bool]:
            return workers.run(check_password, password, stored)

        basic = BasicAuthenticator(users, check, reactor, auth.realm)
    if auth.oidc is not None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        from dicomrst.auth.oidc import BearerAuthenticator, FileKeys, KeySet, KeySource, OidcSettings, UrlKeys

        oidc = auth.oidc
        source: KeySource
        if oidc.jwks_url is not None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            source = UrlKeys(oidc.jwks_url, HTTPClient(Agent(reactor, pool=pool)), reactor)
        else:
            assert oidc.jwks_file is not None  # parse_config asks for exactly one
            source = FileKeys(oidc.jwks_file)
        settings = OidcSettings(oidc.issuer, oidc.audience, oidc.roles_claim, oidc.username_claim, auth.realm)
        bearer = BearerAuthenticator(settings, KeySet(source, reactor), reactor)
    policy = AccessPolicy({
        aet.aet: AetAccess(
            None if aet.access.read is None else AccessList.parse(aet.access.read),
            None if aet.access.write is None else AccessList.parse(aet.access.write),
        )
        for aet in config.aets
        if aet.access is not None
    })
    authenticator = Authenticator(basic, bearer, auth.anonymous)
    log.info(
        "HTTP authentication: {methods}; anonymous requests {anonymous}; access lists on {n} AET(s)",
        methods=", ".join(m for m, on in (("basic", basic), ("oidc", bearer)) if on is not None) or "none",
        anonymous="admitted" if authenticator.anonymous else "refused (401)",
        n=len(policy.aets),
    )
    return AccessGate(authenticator, policy)


def build(config: Config, reactor: IGatewayReactor, index: SqlIndex | None = None) -> GatewayService:
    """The gateway's services for `config`, in the order they start (and the reverse of
    the order they stop): the metrics listener (``telemetry.metrics.endpoint``; last to
    stop, so a graceful stop can be watched), the index, the backends, the reconcile
    scans, the cache, the DIMSE listeners, HTTP.

    `index`: what LOCAL and S3 AETs search and record their instances in, scanned at
    start and every ``index.scan-interval`` (None: no search on them, 501)."""
    from dicomrst.web.app import GatewayApp
    from dicomrst.web.audit import WebAudit
    from dicomrst.web.responses import CorsPolicy
    from dicomrst.web.service import HTTPService
    from dicomrst.web.site import make_site
    from dicomrst.web.urls import PublicUrls

    top = GatewayService(reactor)
    # First: it stops last, once the requests the HTTP service lets finish are recorded.
    trail = make_audit(config, reactor, top)
    metrics = metrics_service(config, reactor, top)
    if metrics is not None and trail is not None:
        audit = trail
        metrics.state.watch_audit(lambda: audit.dropped)
    if index is not None:
        IndexService(index).setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    backends: dict[str, IBackend] = {}
    pools: list[AssociationPool] = []  # the DIMSE AETs', for the metrics
    # The C-MOVEs in flight, shared by the backends that start them and the listeners
    # their sub-operations arrive on.
    moves = MoveRegistry(config.server.aet)
    listeners = {listener.aet: listener for listener in config.server.dimse}
    local_paths: dict[str, str] = {}
    for i, aet in enumerate(config.aets):
        if aet.backend == "DIMSE":
            # The DIMSE client side: imported when a PACS is configured.
            from dicomrst.backends.pacs import DimseBackend

            receiver = None
            if aet.wado_rs.retrieve == "move":
                if aet.wado_rs.receivers:
                    # DICOM-RST too moves to the first receiver only.
                    listener = listeners[aet.wado_rs.receivers[0]]
                    receiver = MoveReceiver(moves, listener.aet, receivable_syntaxes(listener.uncompressed))
                else:
                    # retrieve: move is the default, so a config without receivers (most
                    # that only search) keeps working; DICOM-RST answers 500 here.
                    log.warn(
                        "{aet}: wado-rs.retrieve is 'move' but aets[{i}].wado-rs.receivers names no "
                        "listener to move to; WADO-RS retrieves from {aet} use C-GET",
                        aet=aet.aet,
                        i=i,
                    )
            tls = pacs_tls(aet.tls, aet.host, f"aets[{i}].tls")
            pacs = DimseBackend(aet, config.server.aet, reactor, receiver, metrics, tls)
            backends[aet.aet] = pacs
            pools.append(pacs.pool)
        else:
            backends[aet.aet] = archive_backend(aet, reactor, index, metrics)
            if aet.backend == "LOCAL":
                local_paths[aet.aet] = f"aets[{i}].path"
    BackendsService(backends, local_paths).setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    if index is not None:
        # After the backends (a LOCAL directory exists once they started), stopped before
        # them and the index.
        for aet in config.aets:
            if aet.backend in ("LOCAL", "S3"):
                scan = scan_of(backends[aet.aet])
                scans = PeriodicScans(aet.aet, scan, config.index.scan_interval_s, reactor)
                scans.setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    # After the backends: it stops before them, so its retrieves are cancelled while the
    # associations they run on still exist.
    cache = make_cache(config, reactor)
    if metrics is not None:
        watch(metrics, pools, cache)
    CacheService(cache).setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    for i, listener in enumerate(config.server.dimse):
        description = listener.endpoint_description()
        _check_endpoint(reactor, description, f"server.dimse[{i}].endpoint")
        store_to = None
        if listener.store_to is not None:
            archive = backends[listener.store_to]
            intake = archive if IInstanceIntake.providedBy(archive) else SpoolingIntake(archive, reactor)
            receive: Callable[[str, str, str, str], Any] = cast(IInstanceIntake, intake).receive
            if trail is not None:
                from dicomrst.audit.dimse import audited_receive  # the audit trail's, when configured

                receive = audited_receive(trail, listener.aet, listener.store_to, receive)
            store_to = (listener.store_to, receive)
        factory = listener_factory(
            listener.aet,
            reactor,
            moves,
            uncompressed=listener.uncompressed,
            idle_timeout=listener.idle_timeout_s,
            store_to=store_to,
            allowed_callers=frozenset(listener.allowed_callers),
            metrics=metrics,
        )
        tls = listening_tls(listener.tls, f"server.dimse[{i}].tls")
        listening = DimseListenerService(reactor, description, factory, tls)
        listening.setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    http = config.server.http
    description = http.endpoint_description()
    _check_endpoint(reactor, description, "server.http.endpoint")
    # IGatewayReactor has the thread pool CpuWorkers asks for (Twisted's reactors do).
    cpu = CpuWorkers(cast(IThreadsReactor, reactor), max_waiting=CPU_MAX_WAITING)
    cors = CorsPolicy.allowing(http.cors.allowed_origins)
    urls = PublicUrls.from_config(http.public_url, http.trusted_proxies)
    app = GatewayApp(
        backends,
        reactor,
        base_path=http.base_path,
        echo_timeout=http.request_timeout_s,
        cache=cache,
        cpu=cpu,
        access=make_access(config, reactor, top.reloaders),
        cors=cors,
        urls=urls,
        metrics=metrics,
        audit=WebAudit(trail, urls),
    )
    site = make_site(
        app.resource(),
        reactor,
        request_timeout=http.request_timeout_s,
        max_upload_size=http.max_upload_size,
        header_timeout=http.header_timeout_s,
        cors=cors,
        metrics=metrics,
    )
    grace = http.request_timeout_s
    tls = listening_tls(http.tls, "server.http.tls")
    serving = HTTPService(description, site, reactor, http.graceful_shutdown, grace, tls)
    serving.setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    return top


def metrics_service(config: Config, reactor: IGatewayReactor, top: GatewayService) -> Metrics | None:
    """``telemetry.metrics``: the gateway's `Metrics` and their listener (a child of
    `top`), or None when no endpoint is configured (nothing is counted then)."""
    description = config.telemetry.metrics.endpoint
    if description is None:
        return None
    from dicomrst.web.metrics import metrics_site

    _check_endpoint(reactor, description, "telemetry.metrics.endpoint")
    metrics = Metrics()
    site = metrics_site(metrics.registry, reactor)
    listening = ListeningService(reactor, description, site, "Prometheus metrics")
    listening.setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    return metrics


def watch(metrics: Metrics, pools: Sequence[AssociationPool], cache: InstanceCache) -> None:
    """What the metrics read at scrape time: the pools of the DIMSE AETs, the cache."""

    def pool_states() -> list[PoolState]:
        return [(pool.aet, pool.stats(), pool.size) for pool in pools]

    if pools:
        metrics.state.watch_pools(pool_states)
    metrics.state.watch_cache(cache)


def make_audit(config: Config, reactor: IGatewayReactor, top: GatewayService) -> AuditTrail | None:
    """The audit trail of ``telemetry.audit`` (None: off), its service added to `top`; a
    file's reopen joins the reloaders (SIGHUP)."""
    settings = config.telemetry.audit
    if settings is None:
        return None
    from dicomrst.audit.service import make_trail
    from dicomrst.audit.writers import FileWriter

    try:
        trail, service = make_trail(
            reactor,
            settings.endpoint,
            settings.format,
            settings.queue_size,
            settings.app_name,
            settings.hostname,
            settings.site_id,
        )
    except Exception as e:
        _die(f"config error: telemetry.audit.endpoint: invalid endpoint {settings.endpoint!r}: {e}")
    if isinstance(trail.writer, FileWriter):
        top.reloaders.append(trail.writer.reopen)
    service.setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    top.audit = trail
    log.info(
        "audit trail ({body}) to {destination}, up to {size} records queued",
        body=settings.format,
        destination=settings.endpoint,
        size=settings.queue_size,
    )
    return trail


def first_run_lines(config: Config) -> list[str]:
    """What a first run (no ``--config``) tells its user: where things are, what to use."""
    http = config.server.http
    base = http.base_path.rstrip("/")
    host = "[" + http.interface + "]" if ":" in http.interface else http.interface
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    root = f"http://{host}:{http.port}{base}"
    lines = ["no --config: serving a local archive (DICOM_RST_* variables override its keys)"]
    for aet in config.aets:
        if aet.backend == "LOCAL" and aet.path is not None:
            lines.append(f"{aet.aet}: files in {os.path.abspath(aet.path)}")
            lines.append(f"DICOMweb (QIDO-RS, WADO-RS, STOW-RS): {root}/aets/{aet.aet}")
    for listener in config.server.dimse:
        if listener.store_to is not None:
            lines.append(
                f"C-STORE into {listener.store_to}: AE title {listener.aet} at "
                f"{listener.interface}:{listener.port}"
            )
    return lines


def listening_tls(tls: ServerTlsConfig | None, key: str) -> IOpenSSLContextFactory | None:
    """A listener's ``tls`` block made ready; its files are read now, and one that cannot
    be used stops startup naming its key."""
    if tls is None:
        return None
    try:
        return server_tls(tls.cert, tls.key, tls.ca, tls.client_cert_required)
    except TLSFileError as e:
        _die(f"config error: {key}.{e.field}: {e.message}")


def pacs_tls(tls: ClientTlsConfig | None, host: str | None, key: str) -> ClientTLS | None:
    """``aets[].tls`` made ready, as `listening_tls`."""
    if tls is None:
        return None
    assert host is not None  # a DIMSE AET
    try:
        return client_tls(host, tls.ca, tls.cert, tls.key, tls.check_hostname)
    except TLSFileError as e:
        _die(f"config error: {key}.{e.field}: {e.message}")


def _check_endpoint(reactor: IGatewayReactor, description: str, key: str) -> None:
    try:
        serverFromString(reactor, description)
    except Exception as e:
        _die(f"config error: {key}: invalid endpoint {description!r}: {e}")


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config: Config = options["loaded"]
    set_level(config.telemetry.level)
    output = log_output(options.parent, config.telemetry.format == "json")
    if output is not None:
        set_format(config.telemetry.format)
    log.info(
        "dicomrst {version} starting: {n} AET(s), config {path}",
        version=dicomrst.__version__,
        n=len(config.aets),
        path=options["config"] or "(none: a first run, see below)",
    )
    # Not a "warning" field: Twisted's legacy observers take that for a Python warning.
    for problem in config_warnings(config):
        log.warn("config: {problem}", problem=problem)
    if options["config"] is None:
        for line in first_run_lines(config):
            log.info("{line}", line=line)
    if output is None and config.telemetry.format == "json":
        log.warn("telemetry.format is json, but twistd's own log observer is in use (--syslog, --logger)")
    # The installed reactor (twistd's --reactor, else the default): Twisted's reactors
    # provide every interface IGatewayReactor combines, but none declares IGatewayReactor
    # itself, and the module's static type is a narrower conglomerate.
    gateway_reactor = cast(IGatewayReactor, reactor)
    try:
        index = open_configured_index(config, gateway_reactor)
    except ConfigError as e:
        _die(f"config error: {e}")
    top = build(config, gateway_reactor, index)
    top.log_output = output
    hangup = HangupService(cast(IReactorFromThreads, reactor), output, top.reloaders)
    hangup.setServiceParent(top)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    reactor.callWhenRunning(settle_heap)
    return top


def settle_heap() -> None:
    """Leave what start-up built (modules, pydicom's dictionaries, the config) out of the
    cyclic garbage collector's scans: each full collection walked all of it, ~0.1 s every
    few hundred requests under load (~0.2 ms a QIDO-RS search, a seventh of its CPU time).
    Objects made later are collected as before."""
    gc.collect()
    gc.freeze()

"""The service tree's shutdown order, the HTTP and cache keys reaching their services, and
WADO's up-front 406 (no retrieve started)."""

from __future__ import annotations

import os
from typing import Any

from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.auth.principal import AccessList
from dicomrst.cache import InstanceCache
from dicomrst.cache.store import MARKER
from dicomrst.config import parse_config
from dicomrst.logs import set_level
from dicomrst.tap import CPU_MAX_WAITING, CacheService, GatewayService, Options, build, makeService
from dicomrst.wado.sinks import MultipartSink
from dicomrst.web.app import GatewayApp
from dicomrst.web.service import HTTPService
from tests.support.auth import Signer, jwks, users_file
from tests.support.datasets import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, encode, instance
from tests.support.fakes import FakeBackend
from tests.support.threads import InlinePool


class Recorder(Service):
    def __init__(self, name: str, log: list[str], stopped: Deferred[None] | None = None) -> None:
        self.name = name
        self.log = log
        self.stopped = stopped

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append(f"stop {self.name}")
        return self.stopped if self.stopped is not None else succeed(None)


class ShutdownOrderTests(SynchronousTestCase):
    def test_children_stop_one_after_another_last_added_first(self) -> None:
        """The backends (added first) are not stopped while HTTP (added last) still drains:
        they would abort the associations of the requests being let finish."""
        log: list[str] = []
        http_drained: Deferred[None] = Deferred()
        top = GatewayService()
        Recorder("backends", log).setServiceParent(top)
        Recorder("dimse", log).setServiceParent(top)
        Recorder("http", log, http_drained).setServiceParent(top)
        top.startService()
        stopping = top.stopService()
        self.assertEqual(log, ["stop http"])
        self.assertNoResult(stopping)
        http_drained.callback(None)
        self.assertEqual(log, ["stop http", "stop dimse", "stop backends"])
        self.successResultOf(stopping)


class UpFrontNotAcceptableTests(SynchronousTestCase):
    def test_unproducible_transfer_syntax_is_406_without_a_retrieve(self) -> None:
        backend = FakeBackend("PACS")
        stub = StubTreq(GatewayApp({"PACS": backend}, Clock()).resource())
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        response = self.successResultOf(
            stub.get("http://gw/aets/PACS/studies/1.2.3", headers={"Accept": accept})
        )
        self.assertEqual(response.code, 406)
        self.assertEqual(backend.retrieves, [])

    def test_default_accept_starts_the_retrieve(self) -> None:
        backend = FakeBackend("PACS")
        stub = StubTreq(GatewayApp({"PACS": backend}, Clock()).resource())
        stub.get(
            "http://gw/aets/PACS/studies/1.2.3",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        self.assertEqual(len(backend.retrieves), 1)


class CachedResponseTests(SynchronousTestCase):
    def test_a_series_response_fills_the_cache(self) -> None:
        """WADO-RS responses retrieve through the cache (metadata too: the same `send`):
        what they stream is kept, and frames of that series then need no retrieve."""
        backend = FakeBackend("PACS")
        clock = Clock()
        cache = InstanceCache(clock, self.mktemp(), max_size=10**7, ttl=300)
        cache.start()
        self.addCleanup(cache.stop)
        stub = StubTreq(GatewayApp({"PACS": backend}, clock, cache=cache).resource())
        for path in ("/series/1.2.3.4", ""):
            pending = stub.get(f"http://gw/aets/PACS/studies/1.2.3{path}")
            call = backend.retrieves[-1]
            ds = instance("1.2.3", "1.2.3.4")
            ds.SOPInstanceUID = sop = f"1.2.3.4.{len(backend.retrieves)}"
            part = call.sink.begin(CT_IMAGE_STORAGE, sop, EXPLICIT_VR_LE)
            part.dataReceived(encode(ds))
            part.dataFinished()
            call.deferred.callback(1)
            stub.flush()
            response = self.successResultOf(pending)
            self.assertEqual(response.code, 200)
            self.assertIn(sop.encode("ascii"), self.successResultOf(response.content()))
            found = self.successResultOf(cache.instance(backend, "1.2.3", "1.2.3.4", sop))
            found.close()
        self.assertEqual(len(backend.retrieves), 2)
        self.assertEqual(cache.hits, 2)


class LateStoreTests(SynchronousTestCase):
    def test_instances_arriving_after_the_handler_gave_up_are_refused(self) -> None:
        sink = MultipartSink(object(), Clock(), None, "http://gw/aets/PACS", "1.2.3", None)  # type: ignore[arg-type]
        sink.abandon()
        self.assertRaises(
            ConnectionError, sink.begin, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"
        )


class SiteSettingsTests(SynchronousTestCase):
    def test_the_http_keys_reach_the_site(self) -> None:
        config = parse_config(
            {"server": {"http": {"header-timeout": 5000, "request-timeout": 30000, "max-upload-size": 1000}}}
        )
        [http] = [s for s in build(config, MemoryReactorClock()) if isinstance(s, HTTPService)]
        site = http.site
        self.assertEqual((site.headerTimeout, site.requestTimeout, site.maxUploadSize), (5.0, 30.0, 1000))

    def test_the_image_line_is_bounded(self) -> None:
        # Without a bound the waiting renders of a burst could pile up (each holding an
        # open file); with one the excess is a 503.
        [http] = [s for s in build(parse_config({}), MemoryReactorClock()) if isinstance(s, HTTPService)]
        cpu = http.site.resource._app.context.cpu
        self.assertEqual(cpu.max_waiting, CPU_MAX_WAITING)


class AuthSettingsTests(SynchronousTestCase):
    """server.auth, aets[].access and server.http.cors reach the app and the site."""

    def build(self, data: dict[str, object]) -> Any:
        config = parse_config(data, lambda host: None, {})
        [http] = [s for s in build(config, MemoryReactorClock()) if isinstance(s, HTTPService)]
        return http.site

    def test_the_keys_reach_the_gate_and_the_site(self) -> None:
        users = users_file(self.mktemp(), {"alice": "x"})
        jwks_path = self.mktemp()
        with open(jwks_path, "wb") as f:
            f.write(jwks(Signer("EC").jwk()))
        site = self.build(
            {
                "server": {
                    "http": {"cors": {"allowed-origins": ["https://viewer.example"]}},
                    "auth": {
                        "basic": {"users-file": users},
                        "oidc": {"issuer": "https://idp", "audience": "gw", "jwks-file": jwks_path},
                        "realm": "hospital",
                    },
                },
                "aets": [{"aet": "PACS", "host": "pacs", "port": 104, "access": {"read": ["role:r"]}}],
            }
        )
        gate = site.resource._app.context.access
        authenticator = gate.authenticator
        self.assertEqual((authenticator.configured, authenticator.anonymous), (True, False))
        self.assertEqual(
            authenticator.challenges, ('Basic realm="hospital", charset="UTF-8"', 'Bearer realm="hospital"')
        )
        self.assertEqual(gate.policy.aets["PACS"].read, AccessList(frozenset(), frozenset({"r"})))
        self.assertIsNone(gate.policy.aets["PACS"].write)
        self.assertEqual(site.cors.origins, frozenset({"https://viewer.example"}))
        self.assertIs(site.resource._app.cors, site.cors)

    def test_without_auth_everyone_is_let_in(self) -> None:
        gate = self.build({}).resource._app.context.access
        self.assertEqual((gate.authenticator.configured, gate.authenticator.anonymous), (False, True))

    def test_an_unreadable_users_file_stops_startup(self) -> None:
        missing = self.mktemp()
        self.assertRaises(SystemExit, self.build, {"server": {"auth": {"basic": {"users-file": missing}}}})


class CacheSettingsTests(SynchronousTestCase):
    def test_the_cache_keys_reach_the_cache_and_the_routes(self) -> None:
        directory = self.mktemp()
        config = parse_config(
            {
                "server": {"cache": {"path": directory, "max-size": 1234, "ttl": 5000}},
                "aets": [
                    {"aet": "KEPT", "host": "127.0.0.1", "port": 104},
                    {"aet": "NOT", "host": "127.0.0.1", "port": 104, "cache": False},
                ],
            }
        )
        services = list(build(config, MemoryReactorClock()))
        [service] = [s for s in services if isinstance(s, CacheService)]
        [http] = [s for s in services if isinstance(s, HTTPService)]
        # Between the backends and the listeners: it stops before the backends.
        self.assertEqual(services.index(service), 1)
        cache = service.cache
        # A relative path is resolved when the service tree is built, from where twistd started.
        self.assertEqual(
            (cache.directory, cache.store.max_size, cache.store.ttl), (os.path.abspath(directory), 1234, 5.0)
        )
        self.assertEqual((cache.caches("KEPT"), cache.caches("NOT")), (True, False))
        self.assertIs(http.site.resource._app.context.cache, cache)
        # Nothing on disk until the service starts; emptied and locked then.
        self.assertFalse(os.path.exists(directory))
        service.startService()
        self.assertEqual(os.listdir(directory), [MARKER])
        service.stopService()


class StartupWarningTests(SynchronousTestCase):
    def test_config_warnings_are_logged_at_start(self) -> None:
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        options = Options()
        options["config"] = "dicom-rst.yaml"
        options["loaded"] = parse_config({"server": {"http": {"request-timeout": 60}}})
        self.addCleanup(set_level, "INFO")
        makeService(options)
        warnings = [formatEvent(e) for e in logs if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].startswith("config: server.http.request-timeout is 60 ms"), warnings)


class _ThreadsReactor(MemoryReactorClock):
    """Thread work runs at once, on the test's thread."""

    def getThreadPool(self) -> InlinePool:
        return InlinePool()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ArchiveWiringTests(SynchronousTestCase):
    """``backend: LOCAL`` becomes a LocalBackend whose directory is made when the service
    tree starts, and a listener with ``store-to`` a Storage SCP into it, or into an S3 AET
    through a spooling intake; ``allowed-callers`` reaches its policy."""

    def build(self, root: str) -> list[Service]:
        config = parse_config(
            {
                "server": {
                    "cache": {"path": self.mktemp()},
                    "dimse": [
                        {"aet": "IN", "store-to": "ARCHIVE", "allowed-callers": ["CT1"]},
                        {"aet": "IN3", "store-to": "BUCKET"},
                        {"aet": "MOVES"},
                    ],
                },
                "aets": [
                    {"aet": "ARCHIVE", "backend": "LOCAL", "path": root},
                    {"aet": "BUCKET", "backend": "S3", "endpoint": "http://127.0.0.1:9", "bucket": "b"},
                ],
            }
        )
        return list(build(config, _ThreadsReactor()))

    def test_local_backend_and_store_to_listeners(self) -> None:
        from dicomrst.backends.intake import SpoolingIntake
        from dicomrst.backends.local import LocalBackend
        from dicomrst.dimse import commands
        from dicomrst.dimse.move_destination import MoveStoreSCP
        from dicomrst.dimse.storage_scp import ArchiveStoreSCP
        from dicomrst.tap import BackendsService, DimseListenerService

        root = self.mktemp()
        services = self.build(root)
        [backends] = [s for s in services if isinstance(s, BackendsService)]
        archive = backends.backends["ARCHIVE"]
        self.assertIsInstance(archive, LocalBackend)
        listeners = {s.listener.aet: s.listener for s in services if isinstance(s, DimseListenerService)}
        into_local = listeners["IN"].handlers[commands.C_STORE_RQ]
        into_s3 = listeners["IN3"].handlers[commands.C_STORE_RQ]
        self.assertIsInstance(into_local, ArchiveStoreSCP)
        self.assertEqual(into_local.open_instance, archive.receive)
        self.assertIsInstance(into_s3, ArchiveStoreSCP)
        self.assertIsInstance(into_s3.open_instance.__self__, SpoolingIntake)
        self.assertIsInstance(listeners["MOVES"].handlers[commands.C_STORE_RQ], MoveStoreSCP)
        self.assertEqual(listeners["IN"].policy.allowed_callers, frozenset({"CT1"}))
        self.assertEqual(listeners["MOVES"].policy.allowed_callers, frozenset())
        self.assertFalse(os.path.exists(root))
        backends.startService()
        self.assertTrue(os.path.isdir(root))
        backends.stopService()


class IndexWiringTests(SynchronousTestCase):
    """The index is opened only for LOCAL and S3 AETs, first in the tree (so it stops last),
    shared by their backends, with one periodic scan per such AET after the backends."""

    def test_a_dimse_only_gateway_opens_no_index(self) -> None:
        from dicomrst.tap import IndexService, open_configured_index

        config = parse_config({"aets": [{"aet": "PACS", "host": "127.0.0.1", "port": 104}]})
        self.assertIsNone(open_configured_index(config, _ThreadsReactor()))
        options = Options()
        options["config"] = "dicom-rst.yaml"
        options["loaded"] = config
        top = makeService(options)
        self.assertEqual([s for s in top if isinstance(s, IndexService)], [])

    def test_index_first_then_backends_then_one_scan_per_archive(self) -> None:
        from dicomrst.backends.local import LocalBackend
        from dicomrst.backends.s3 import S3Backend
        from dicomrst.index.scans import PeriodicScans
        from dicomrst.tap import BackendsService, IndexService, open_configured_index

        directory = self.mktemp()
        config = parse_config(
            {
                "server": {"cache": {"path": self.mktemp()}},
                "index": {"url": f"sqlite:{directory}/index.sqlite", "scan-interval": 5000},
                "aets": [
                    {"aet": "PACS", "host": "127.0.0.1", "port": 104},
                    {"aet": "ARCHIVE", "backend": "LOCAL", "path": self.mktemp()},
                    {"aet": "BUCKET", "backend": "S3", "endpoint": "http://127.0.0.1:9", "bucket": "b"},
                ],
            }
        )
        reactor = _ThreadsReactor()
        index = open_configured_index(config, reactor)
        assert index is not None
        services = list(build(config, reactor, index))
        self.assertIsInstance(services[0], IndexService)
        self.assertIsInstance(services[1], BackendsService)
        scans = [s for s in services if isinstance(s, PeriodicScans)]
        self.assertEqual([(s.name, s.interval) for s in scans], [("ARCHIVE", 5.0), ("BUCKET", 5.0)])
        self.assertEqual(services.index(scans[0]), 2)
        backends = services[1].backends
        self.assertIsInstance(backends["ARCHIVE"], LocalBackend)
        self.assertIsInstance(backends["BUCKET"], S3Backend)
        self.assertIs(backends["ARCHIVE"].index, index)
        self.assertIs(backends["BUCKET"].index, index)
        self.assertFalse(os.path.exists(directory))  # opened when started, not before


_IMPORTED_AFTER_BUILD = """
import sys
from dicomrst.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options)
print(" ".join(sorted(m for m in {names} if m in sys.modules)))
"""


# As twistd does it: the plugin's `options` first (it defers what pydicom only probes),
# then its makeService; then which deferred libraries have run, before and after a
# rendered frame (numpy's first use).
_DEFERRED_AFTER_BUILD = """
import sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted import plugins
from dicomrst.common.lazyimports import GATEWAY_DEFERRED, is_deferred
maker = next(p for p in getPlugins(IServiceMaker, plugins) if p.tapname == "dicomrst")
options = maker.options()
options.parseOptions(sys.argv[1:])
maker.makeService(options)
def executed():
    return ",".join(m for m in GATEWAY_DEFERRED if m in sys.modules and not is_deferred(sys.modules[m]))
print("built:", executed())
from pydicom import examples
from dicomrst.imaging.params import RenderOptions
from dicomrst.imaging.render import render_dataset
png = render_dataset(examples.ct, RenderOptions(media_type="image/png"))
print("rendered:", png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", executed())
"""


class FootprintTests(SynchronousTestCase):
    """Issue 15 item 4: what only some configurations use is imported only by them."""

    OPTIONAL = (
        "joserfc",
        "imagecodecs",
        "prometheus_client",
        "psycopg",
        "botocore",
        "treq",  # OIDC's key fetcher (and S3's client)
        # The DIMSE client side, the audit trail's writers, Basic authentication.
        "dicomrst.backends.pacs",
        "dicomrst.dimse.pool",
        "dicomrst.audit.service",
        "dicomrst.auth.basic",
    )

    def imported(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        script = _IMPORTED_AFTER_BUILD.format(names=repr(self.OPTIONAL))
        return self.run_script(script, *argv, env=env).split()

    def run_script(self, script: str, *argv: str, env: dict[str, str] | None = None) -> str:
        import subprocess
        import sys

        directory = self.mktemp()
        os.makedirs(directory)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        done = subprocess.run(
            [sys.executable, "-c", script, *argv],
            cwd=directory,
            env={**os.environ, "PYTHONPATH": root, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout

    def test_the_default_configuration_imports_none_of_the_optional_libraries(self) -> None:
        self.assertEqual(self.imported(), [])

    def test_configured_features_import_theirs(self) -> None:
        """The check above can see a library: metrics configured bring theirs in."""
        found = self.imported(env={"DICOM_RST_TELEMETRY_METRICS_ENDPOINT": "tcp:0:interface=127.0.0.1"})
        self.assertEqual(found, ["prometheus_client"])

    def test_the_gateway_defers_what_pydicom_only_probes_until_pixels_need_it(self) -> None:
        """Through the plugin, as twistd: numpy and requests are imported but not run by
        the default configuration; a frame rendered afterwards runs numpy (requests
        stays: only pydicom's data downloader uses it)."""
        out = self.run_script(_DEFERRED_AFTER_BUILD)
        self.assertEqual(out.splitlines(), ["built: ", "rendered: True numpy"])

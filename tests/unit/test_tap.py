"""The service tree's shutdown order, the HTTP keys reaching the site, and WADO's up-front
406 (no retrieve started)."""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.config import parse_config
from dicomrst.logs import set_level
from dicomrst.tap import GatewayService, Options, build, makeService
from dicomrst.wado.sinks import MultipartSink
from dicomrst.web.app import GatewayApp
from dicomrst.web.service import HTTPService
from tests.support.fakes import FakeBackend


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

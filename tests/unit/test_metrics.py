"""Prometheus metrics (dicomrst.common.metrics, dicomrst.web.metrics): each family moved by
the code path it counts, in memory: HTTP requests through the site, DIMSE operations and
bytes through the pool's in-memory PACS, the pools' and the cache's state at scrape time,
STOW-RS outcomes, S3 bytes through the client's endpoints, the ``/metrics`` resource and
its wiring in ``build``.

Every test has a registry of its own (`Metrics()`), so the counts start at zero.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from dicomrst.auth.authenticator import Authenticator
from dicomrst.auth.principal import AccessList, AccessPolicy, AetAccess
from dicomrst.backends.s3.client import _Endpoints
from dicomrst.common.listening import ListeningService
from dicomrst.common.metrics import Metrics
from dicomrst.config import parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.move_registry import MoveRegistry
from dicomrst.dimse.server import listener_factory
from dicomrst.tap import build
from dicomrst.web.access import AccessGate
from dicomrst.web.app import GatewayApp
from dicomrst.web.metrics import MetricsResource
from dicomrst.web.site import GatewaySite, make_site
from tests.support.cache import CacheTestCase, Item, send
from tests.support.fakes import FakeBackend
from tests.support.http import Connection
from tests.support.pool import CALLED, PoolTestCase, match
from tests.support.stow import multipart_body, part10_bytes
from tests.support.ul import associate_rq, verification_request

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
BOUNDARY = b"metrics-boundary"
STOW_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when it does not exist (yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def study(n: int) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = f"{STUDY}.{n}"
    ds.PatientID = f"P{n}"
    return ds


# -- HTTP -------------------------------------------------------------------------------------


class HttpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(process=False)
        self.pacs = FakeBackend("PACS")

    def site(self, access: AccessGate | None = None) -> GatewaySite:
        app = GatewayApp({"PACS": self.pacs}, self.clock, access=access, metrics=self.metrics)
        return make_site(app.resource(), self.clock, request_timeout=30.0, metrics=self.metrics)

    def requests(self, route: str, method: str = "GET", status: str = "200") -> float:
        return value(self.metrics, "dicomrst_http_requests_total", route=route, method=method, status=status)

    def test_a_request_counts_by_route_template_with_its_duration_and_bytes(self) -> None:
        self.pacs.hold = True
        conn = Connection(self.site())
        conn.send("GET", "/aets/PACS/studies?PatientID=P1")
        [call] = self.pacs.finds
        self.clock.advance(0.25)
        call.send(study(1))
        call.finish()
        _, body = conn.head_and_body()
        self.assertEqual(len(json.loads(body)), 1)
        self.assertEqual(self.requests("/aets/<aet>/studies"), 1)
        labels = {"route": "/aets/<aet>/studies", "method": "GET"}
        self.assertEqual(value(self.metrics, "dicomrst_http_request_duration_seconds_count", **labels), 1)
        self.assertEqual(value(self.metrics, "dicomrst_http_request_duration_seconds_sum", **labels), 0.25)
        self.assertEqual(
            value(self.metrics, "dicomrst_http_request_duration_seconds_bucket", le="0.25", **labels), 1
        )
        self.assertEqual(
            value(self.metrics, "dicomrst_http_request_duration_seconds_bucket", le="0.1", **labels), 0
        )
        self.assertEqual(value(self.metrics, "dicomrst_sent_bytes_total", service="http"), len(body))
        # Another study: the same label set, not a new one per URL.
        conn2 = Connection(self.site())
        conn2.send("GET", "/aets/PACS/studies/1.2.3/series")
        self.pacs.finds[-1].finish()
        self.assertEqual(self.requests("/aets/<aet>/studies/<study>/series"), 1)
        samples = self.metrics.registry.collect()
        urls = [s for f in samples for s in f.samples if "1.2.3" in str(s.labels)]
        self.assertEqual(urls, [])

    def test_no_route_is_unmatched_and_an_unusual_method_is_other(self) -> None:
        site = self.site()
        Connection(site).send("GET", "/nothing/here")
        Connection(site).send("BREW", "/aets/PACS/studies")
        Connection(site).send("MAKE", "/aets/PACS/studies")
        self.assertEqual(self.requests("unmatched", status="404"), 1)
        self.assertEqual(self.requests("unmatched", method="other", status="405"), 2)
        # What a client chooses does not grow what is kept.
        self.assertEqual(len(self.metrics._http_children), 2)

    def test_a_request_refused_by_the_access_check_is_labelled_with_its_route(self) -> None:
        policy = AccessPolicy({"PACS": AetAccess(AccessList.parse(["alice"]), None)})
        site = self.site(AccessGate(Authenticator.open(), policy))
        Connection(site).send("GET", "/aets/PACS/studies")
        self.assertEqual(self.requests("/aets/<aet>/studies", status="403"), 1)
        self.assertEqual(self.pacs.finds, [])

    def test_a_request_lost_before_its_status_is_status_0(self) -> None:
        self.pacs.hold = True
        conn = Connection(self.site())
        conn.send("GET", "/aets/PACS/studies")
        conn.lose()
        self.assertEqual(self.requests("/aets/<aet>/studies", status="0"), 1)

    def test_without_metrics_nothing_is_counted(self) -> None:
        app = GatewayApp({"PACS": self.pacs}, self.clock)
        site = make_site(app.resource(), self.clock, request_timeout=30.0)
        conn = Connection(site)
        conn.send("GET", "/")
        head, _ = conn.head_and_body()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIsNone(app.context.metrics)
        self.assertEqual(self.requests("/"), 0)


# -- STOW-RS ----------------------------------------------------------------------------------


class StowTests(SynchronousTestCase):
    def test_instances_count_by_outcome_and_the_body_in_bytes(self) -> None:
        clock = Clock()
        metrics = Metrics(process=False)
        pacs = FakeBackend("PACS")
        app = GatewayApp({"PACS": pacs}, clock, stow_spool_dir=self.mktemp(), metrics=metrics)
        site = make_site(app.resource(), clock, request_timeout=60, metrics=metrics)
        sops = [f"{SERIES}.{n}" for n in range(4)]
        pacs.statuses = {sops[1]: 0xB007, sops[2]: 0xA700}
        parts = [([("Content-Type", "application/dicom")], part10_bytes(study=STUDY, series=SERIES, sop=s))
                 for s in sops]
        parts.append(([("Content-Type", "application/dicom")], b"not DICOM"))
        body = multipart_body(parts, BOUNDARY)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 50123))
        protocol = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50123))
        assert protocol is not None
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"POST /aets/PACS/studies HTTP/1.1\r\nHost: gateway.example\r\nContent-Type: " + STOW_TYPE
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 202 "), transport.value()[:200])
        self.assertEqual(value(metrics, "dicomrst_stow_instances_total", outcome="stored"), 2)
        self.assertEqual(value(metrics, "dicomrst_stow_instances_total", outcome="warning"), 1)
        self.assertEqual(value(metrics, "dicomrst_stow_instances_total", outcome="failed"), 2)
        self.assertEqual(value(metrics, "dicomrst_received_bytes_total", service="http"), len(body))
        route = {"route": "/aets/<aet>/studies", "method": "POST", "status": "202"}
        self.assertEqual(value(metrics, "dicomrst_http_requests_total", **route), 1)


# -- DIMSE: operations, bytes, the pools --------------------------------------------------------


class DimseTests(PoolTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.metrics = Metrics(process=False)

    def find(self, backend: Any, limit: int | None = None) -> Deferred[None]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        return backend.find(identifier, limit=limit, on_result=lambda ds: None)

    def operations(self, status: str, service: str = "C-FIND") -> float:
        name = "dicomrst_dimse_operations_total"
        return value(self.metrics, name, aet=CALLED, service=service, status=status)

    def test_an_operation_counts_by_aet_service_and_status_class_with_its_duration(self) -> None:
        backend = self.make_backend(metrics=self.metrics)
        d = self.find(backend)
        link = self.connect()
        (request,) = self.scp.requests
        self.reactor.advance(0.5)
        request.pending(match(0))
        request.final()
        self.flush()
        self.successResultOf(d)
        self.assertEqual(self.operations("success"), 1)
        labels = {"aet": CALLED, "service": "C-FIND"}
        self.assertEqual(value(self.metrics, "dicomrst_dimse_operation_duration_seconds_count", **labels), 1)
        self.assertEqual(value(self.metrics, "dicomrst_dimse_operation_duration_seconds_sum", **labels), 0.5)
        # Every byte of the association, both ways (A-ASSOCIATE, P-DATA).
        sent = value(self.metrics, "dicomrst_sent_bytes_total", service="dimse")
        self.assertEqual(sent, len(link.ours.value()))
        self.assertEqual(
            value(self.metrics, "dicomrst_received_bytes_total", service="dimse"), len(link.theirs.value())
        )

    def test_failure_cancel_error_and_abandoned(self) -> None:
        backend = self.make_backend(metrics=self.metrics)
        d = self.find(backend)
        link = self.connect()
        self.scp.requests[0].final(0xA700)
        self.flush()
        self.failureResultOf(d)
        self.assertEqual(self.operations("failure"), 1)
        # Cancelled by us at the limit: the PACS ends it with Cancel.
        d = self.find(backend, limit=1)
        self.flush()
        self.scp.requests[1].pending(match(0))
        self.flush()
        self.scp.requests[1].final(commands.CANCEL)
        self.flush()
        self.successResultOf(d)
        self.assertEqual(self.operations("cancel"), 1)
        # The client left a C-ECHO (no C-CANCEL for it): counted once, not again when the
        # PACS's answer comes.  (A C-FIND it left is cancelled, and counts as the PACS ends it.)
        echo = backend.echo()
        echo.cancel()
        self.failureResultOf(echo)
        self.flush()
        self.assertEqual(self.operations("abandoned", "C-ECHO"), 1)
        self.assertEqual(self.operations("success", "C-ECHO"), 0)
        # The association went before the final response.  (The abandoned echo's was not
        # given back to the pool: this find has a new one.)
        d = self.find(backend)
        link = self.connect() if self.pending_connects() else link
        self.assertEqual(len(self.scp.requests), 3)
        link.acceptor.abort("test")
        self.flush()
        self.failureResultOf(d)
        self.assertEqual(self.operations("error"), 1)
        self.assertEqual(self.operations("success"), 0)

    def test_the_pools_are_read_at_scrape_time(self) -> None:
        backend = self.make_backend(size=3, metrics=self.metrics)
        self.metrics.state.watch_pools(lambda: [(backend.pool.aet, backend.pool.stats(), backend.pool.size)])

        def state(name: str) -> float:
            return value(self.metrics, "dicomrst_dimse_associations", aet=CALLED, state=name)

        d = self.find(backend)
        self.assertEqual(state("opening"), 1)
        self.connect()
        self.assertEqual((state("in_use"), state("idle")), (1, 0))
        self.scp.requests[0].final()
        self.flush()
        self.successResultOf(d)
        self.assertEqual((state("in_use"), state("idle"), state("opening")), (0, 1, 0))
        self.assertEqual(value(self.metrics, "dicomrst_dimse_pool_size", aet=CALLED), 3)

    def test_listener_associations_count_their_bytes(self) -> None:
        factory = listener_factory("GWSCP", self.reactor, MoveRegistry("GW"), metrics=self.metrics)
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 104))
        transport = StringTransport()
        protocol.makeConnection(transport)
        rq = associate_rq(verification_request("SCU", "GWSCP"))
        protocol.dataReceived(rq)
        self.assertEqual(value(self.metrics, "dicomrst_received_bytes_total", service="dimse"), len(rq))
        self.assertGreater(len(transport.value()), 0)  # the A-ASSOCIATE-AC
        sent = value(self.metrics, "dicomrst_sent_bytes_total", service="dimse")
        self.assertEqual(sent, len(transport.value()))
        protocol.abort("test")


# -- the instance cache -----------------------------------------------------------------------


class CacheTests(CacheTestCase):
    def test_hits_and_misses_are_read_at_scrape_time(self) -> None:
        metrics = Metrics(process=False)
        metrics.state.watch_cache(self.cache)
        first = self.ask(0)
        call = self.the_retrieve()
        send(call.sink, Item(0))
        call.deferred.callback(1)
        self.got(first, Item(0))
        self.got(self.ask(0), Item(0))
        self.got(self.ask(0), Item(0))
        self.assertEqual(value(metrics, "dicomrst_cache_misses_total"), 1)
        self.assertEqual(value(metrics, "dicomrst_cache_hits_total"), 2)
        self.assertEqual(value(metrics, "dicomrst_cache_fills_total"), 1)


# -- S3 ---------------------------------------------------------------------------------------


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class S3Tests(SynchronousTestCase):
    def test_the_client_connections_count_their_bytes(self) -> None:
        reactor = MemoryReactorClock()
        metrics = Metrics(process=False)
        endpoint = _Endpoints(reactor, 5.0, metrics).endpointForURI(URI.fromBytes(b"http://192.0.2.5:9000/b/k"))
        inner = _Recorder()
        d = endpoint.connect(Factory.forProtocol(lambda: inner))
        factory = reactor.tcpClients[0][2]
        wrapper = factory.buildProtocol(None)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        # The Agent's pool gets its own protocol, not the wrapper.
        self.assertIs(self.successResultOf(d), inner)
        inner.transport.write(b"GET /b/k HTTP/1.1\r\n\r\n")
        inner.transport.writeSequence([b"ab", b"cd"])
        wrapper.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(inner.received, b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(transport.value(), b"GET /b/k HTTP/1.1\r\n\r\nabcd")
        self.assertEqual(value(metrics, "dicomrst_sent_bytes_total", service="s3"), len(transport.value()))
        self.assertEqual(value(metrics, "dicomrst_received_bytes_total", service="s3"), 17)

    def test_without_metrics_the_endpoint_is_not_wrapped(self) -> None:
        endpoint = _Endpoints(MemoryReactorClock(), 5.0).endpointForURI(URI.fromBytes(b"http://192.0.2.5/"))
        self.assertEqual(type(endpoint).__name__, "TCP4ClientEndpoint")


# -- the audit hook, the process ------------------------------------------------------------------


class OtherFamiliesTests(SynchronousTestCase):
    def test_audit_drops(self) -> None:
        """Read from the audit trail's own count at scrape time."""
        metrics = Metrics(process=False)
        self.assertEqual(value(metrics, "dicomrst_audit_dropped_total"), 0)
        dropped = [3]
        metrics.state.watch_audit(lambda: dropped[0])
        self.assertEqual(value(metrics, "dicomrst_audit_dropped_total"), 3)
        dropped[0] = 5
        self.assertEqual(value(metrics, "dicomrst_audit_dropped_total"), 5)

    def test_process_metrics_on_the_gateways_registry(self) -> None:
        metrics = Metrics()
        self.assertGreater(value(metrics, "process_resident_memory_bytes"), 0)
        self.assertIsNone(Metrics(process=False).registry.get_sample_value("process_resident_memory_bytes"))


# -- /metrics and its listener ----------------------------------------------------------------


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(process=False)
        self.metrics.stow_instances(3, 0, 1)
        self.stub = StubTreq(MetricsResource(self.metrics.registry))

    def get(self, path: str, **headers: str) -> tuple[Any, bytes]:
        d = self.stub.get("http://metrics.example" + path, headers=headers)
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def test_metrics_in_the_prometheus_text_format(self) -> None:
        response, body = self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        stow = {s.labels["outcome"]: s.value for s in families["dicomrst_stow_instances"].samples
                if s.name.endswith("_total")}
        self.assertEqual(stow, {"stored": 3.0, "warning": 0.0, "failed": 1.0})
        self.assertIn("dicomrst_dimse_associations", families)

    def test_openmetrics_when_asked(self) -> None:
        response, body = self.get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
        self.assertIn("application/openmetrics-text", response.headers.getRawHeaders("content-type")[0])
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_anything_else_is_404(self) -> None:
        self.assertEqual(self.get("/")[0].code, 404)
        self.assertEqual(self.get("/metrics/more")[0].code, 404)


class WiringTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        services = list(build(parse_config({}), MemoryReactorClock()))
        self.assertEqual([s for s in services if getattr(s, "what", "") == "Prometheus metrics"], [])
        [http] = [s for s in services if getattr(s, "site", None) is not None]
        self.assertIsNone(http.site.metrics)

    def test_endpoint_given_the_listener_is_first_and_everything_counts(self) -> None:
        config = parse_config(
            {
                "telemetry": {"metrics": {"endpoint": "tcp:0:interface=127.0.0.1"}},
                "aets": [{"aet": "PACS", "host": "192.0.2.1", "port": 104}],
            },
            resolve=lambda host: None,
        )
        services = list(build(config, MemoryReactorClock()))
        listening = services[0]
        self.assertIsInstance(listening, ListeningService)
        assert isinstance(listening, ListeningService)
        self.assertEqual(listening.what, "Prometheus metrics")
        self.assertEqual(listening.description, "tcp:0:interface=127.0.0.1")
        [http] = [s for s in services if getattr(s, "site", None) is not None]
        metrics = http.site.metrics
        self.assertIsInstance(metrics, Metrics)
        self.assertIs(http.site.resource._app.context.metrics, metrics)
        [backends] = [s for s in services if hasattr(s, "backends")]
        self.assertIs(backends.backends["PACS"].pool.metrics, metrics)
        self.assertEqual(value(metrics, "dicomrst_dimse_pool_size", aet="PACS"), 16)

    def test_an_invalid_endpoint_is_a_config_error(self) -> None:
        config = parse_config({"telemetry": {"metrics": {"endpoint": "nonsense:1"}}})
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, build, config, MemoryReactorClock())
        self.assertEqual(error.code, 1)
        self.assertIn("telemetry.metrics.endpoint: invalid endpoint 'nonsense:1'", stderr.getvalue())

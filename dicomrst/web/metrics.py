# -*- test-case-name: tests.unit.test_metrics -*-
"""``/metrics`` on a listener of its own (``telemetry.metrics.endpoint``).

The client library's ``prometheus_client.twisted.MetricsResource`` is not used: it
imports the global reactor when imported and renders in the reactor's thread pool, where
the scrape-time collectors (`dicomrst.common.metrics.StateCollector`) would read the pools
and caches while the reactor changes them.  Rendering here, on the reactor, costs a few
milliseconds a scrape.

Apart from the DICOMweb listener: no authentication, CORS or base path applies to it,
and a scrape never queues behind (or counts in) the gateway's own requests.  Bind it
where only the monitoring can reach it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

#: Seconds an idle scrape connection is kept.
IDLE_TIMEOUT = 60.0


class MetricsResource(Resource):
    """``GET /metrics``: the registry in the text format the scraper asks for (Prometheus
    text, or OpenMetrics when its ``Accept`` prefers it)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        if request.path not in (b"/metrics", b"/metrics/"):
            request.setResponseCode(http.NOT_FOUND)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"not found: the metrics are at /metrics\n"
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encode, content_type = choose_encoder(accept)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return encode(self.registry)


class MetricsSite(Site):
    """A `Site` that writes no access line per scrape."""

    noisy = False
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        pass


def metrics_site(registry: CollectorRegistry, clock: IReactorTime) -> MetricsSite:
    """What the metrics listener serves."""
    return MetricsSite(  # type: ignore[no-untyped-call]  # unannotated in Twisted
        MetricsResource(registry), timeout=IDLE_TIMEOUT, reactor=clock
    )

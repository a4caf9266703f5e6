# -*- test-case-name: tests.unit.test_metrics -*-
"""Prometheus metrics (``telemetry.metrics``): what the gateway counts, and the state it
reads at scrape time.

One `Metrics` per gateway, on a `CollectorRegistry` of its own (never the client
library's global one: two gateways in one test process count apart), handed to whatever
counts (the site, the web context, the pools and DIMSE connections, STOW uploads).
Where metrics are off, those hold None and skip the call: the hot paths pay one ``is
None`` test.  With metrics on, an event costs a dictionary lookup of its labels' child
and one increment (and one histogram observation for durations); nothing is formatted
until a scrape.

State that already exists elsewhere is not mirrored into gauges on every change: the
association pools and the instance caches are read when ``/metrics`` is scraped
(`StateCollector`), on the reactor, so what is read is consistent.

Labels are kept to small, bounded sets: a route's template (never its URL), an HTTP
method outside the usual ones is ``other``, a DIMSE status is its class, AE titles are
the configured ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # The client library is imported when a `Metrics` is made (metrics configured): a
    # gateway without them does not hold it.
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

#: Seconds: from a cached frame (milliseconds) to a study retrieved from a slow PACS.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

#: Methods labelled as they are; any other is ``other`` (clients choose the method).
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))

#: The route label of a request no route took (404, 405, a preflight, a head refused
#: before it was routed).
UNMATCHED = "unmatched"

# DIMSE status classes (PS3.7 C): the label of a final response's status, and of an
# operation that ended without one.
SUCCESS = "success"
WARNING = "warning"
FAILURE = "failure"
CANCEL = "cancel"
#: The association ended (aborted, lost, timed out) before the final response.
ERROR = "error"
#: Our caller went away (the HTTP client left) before the final response.
ABANDONED = "abandoned"


def status_class(status: int) -> str:
    """The class of a final DIMSE status: success, warning, cancel or failure."""
    if status == 0x0000:
        return SUCCESS
    if status == 0xFE00:
        return CANCEL
    if status in (0x0001, 0x0107, 0x0116) or status >> 12 == 0xB:
        return WARNING
    return FAILURE


#: What a pool reports at scrape time: its AE title, its associations by state
#: (``AssociationPool.stats``), and its size.
PoolState = tuple[str, Mapping[str, int], int]


class CacheState(Protocol):
    """What an instance cache reports at scrape time (read off `InstanceCache`)."""

    hits: int
    misses: int
    fills: int
    replays: int


class Metrics:
    """The gateway's metrics on `registry` (a new one if left out).

    :param process: also collect the process's own (CPU, memory, open files: the
        client library's `ProcessCollector`).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._http_requests = Counter(
            "dicomrst_http_requests",
            "HTTP requests answered (or lost), by route template, method and status (0: no status "
            "was sent)",
            ["route", "method", "status"],
            registry=r,
        )
        self._http_duration = Histogram(
            "dicomrst_http_request_duration_seconds",
            "Time from an HTTP request line to its response finished (or the connection lost)",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._dimse_operations = Counter(
            "dicomrst_dimse_operations",
            "DIMSE operations this gateway requested, by the AE title asked, service and outcome "
            "(the final status's class; error: the association ended first; abandoned: the "
            "client left)",
            ["aet", "service", "status"],
            registry=r,
        )
        self._dimse_duration = Histogram(
            "dicomrst_dimse_operation_duration_seconds",
            "Time from a DIMSE request sent to its final response (or its end without one)",
            ["aet", "service"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        received = Counter(
            "dicomrst_received_bytes",
            "Bytes received: dimse (every association, PDUs whole), http (request bodies), s3 "
            "(responses of the S3 endpoints, headers included, inside TLS)",
            ["service"],
            registry=r,
        )
        sent = Counter(
            "dicomrst_sent_bytes",
            "Bytes sent: dimse (every association, PDUs whole), http (response bodies), s3 "
            "(requests to the S3 endpoints, headers included, inside TLS)",
            ["service"],
            registry=r,
        )
        # Bound once: counted on every PDU and read.
        self.dimse_received = received.labels("dimse").inc
        self.dimse_sent = sent.labels("dimse").inc
        self.http_received = received.labels("http").inc
        self.http_sent = sent.labels("http").inc
        self.s3_received = received.labels("s3").inc
        self.s3_sent = sent.labels("s3").inc
        stow = Counter(
            "dicomrst_stow_instances",
            "STOW-RS instances by outcome: stored, warning (stored with a warning), failed",
            ["outcome"],
            registry=r,
        )
        self._stow_stored = stow.labels("stored").inc
        self._stow_warning = stow.labels("warning").inc
        self._stow_failed = stow.labels("failed").inc
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._dimse_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self.state = StateCollector()
        r.register(self.state)
        if process:
            ProcessCollector(registry=r)

    def http_request(self, route: str | None, method: bytes, status: int, seconds: float) -> None:
        """One HTTP request over: `route` its template (None: no route took it), `status`
        0 when no status line was sent."""
        name = method.decode("ascii", "replace")
        if name not in HTTP_METHODS:
            name = "other"  # before the lookup: the children kept stay as few as the labels
        key = (route or UNMATCHED, name, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self._http_requests.labels(key[0], name, str(status)),
                self._http_duration.labels(key[0], name),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def dimse_operation(self, aet: str, service: str, outcome: str, seconds: float) -> None:
        """One DIMSE operation we requested ended: `service` ``C-FIND``, ``C-GET``...,
        `outcome` a status class (`status_class`) or `ERROR` / `ABANDONED`."""
        key = (aet, service, outcome)
        children = self._dimse_children.get(key)
        if children is None:
            children = (
                self._dimse_operations.labels(aet, service, outcome),
                self._dimse_duration.labels(aet, service),
            )
            self._dimse_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def stow_instances(self, stored: int, warning: int, failed: int) -> None:
        """The instances of one STOW-RS request, settled: `stored` without a warning."""
        if stored:
            self._stow_stored(stored)
        if warning:
            self._stow_warning(warning)
        if failed:
            self._stow_failed(failed)


class StateCollector:
    """What is read at scrape time: the association pools, the instance caches.

    Sources are added once, while the gateway is built (`watch_pools`, `watch_cache`).
    """

    def __init__(self) -> None:
        self._pools: list[Callable[[], Iterable[PoolState]]] = []
        self._caches: list[CacheState] = []
        self._audit_dropped: list[Callable[[], int]] = []

    def watch_pools(self, source: Callable[[], Iterable[PoolState]]) -> None:
        self._pools.append(source)

    def watch_cache(self, cache: CacheState) -> None:
        self._caches.append(cache)

    def watch_audit(self, dropped: Callable[[], int]) -> None:
        """The audit trail's count of records dropped with its queue full."""
        self._audit_dropped.append(dropped)

    def describe(self) -> Iterable[Metric]:
        # Named up front, so the registry refuses a clash when this is registered.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        associations = GaugeMetricFamily(
            "dicomrst_dimse_associations",
            "Associations of each AET's pool: idle, in_use (lent to an operation), opening, "
            "releasing (their sum is what is open)",
            labels=["aet", "state"],
        )
        size = GaugeMetricFamily(
            "dicomrst_dimse_pool_size", "Associations each AET's pool may hold at once", labels=["aet"]
        )
        for source in self._pools:
            for aet, stats, limit in source():
                for state, n in stats.items():
                    associations.add_metric([aet, "in_use" if state == "busy" else state], n)
                size.add_metric([aet], limit)
        yield associations
        yield size
        hits = misses = fills = replays = 0
        for cache in self._caches:
            hits += cache.hits
            misses += cache.misses
            fills += cache.fills
            replays += cache.replays
        yield CounterMetricFamily(
            "dicomrst_cache_hits", "Instances (frames, bulk data, rendered) answered from the cache", hits
        )
        yield CounterMetricFamily(
            "dicomrst_cache_misses",
            "Instances (frames, bulk data, rendered) the cache did not hold: retrieved, or waited for",
            misses,
        )
        yield CounterMetricFamily(
            "dicomrst_cache_fills", "Series retrieves the cache started itself (after a miss)", fills
        )
        yield CounterMetricFamily(
            "dicomrst_cache_replays",
            "Series responses answered from the cache instead of a retrieve",
            replays,
        )
        yield CounterMetricFamily(
            "dicomrst_audit_dropped",
            "Audit records dropped (the audit trail's queue was full: its collector down or slow)",
            sum(source() for source in self._audit_dropped),
        )

"""Prometheus metrics (`prometheus-client`, text format), on fedd's own registry.

Counters that move per request are updated in `FeddSite.log`; everything that is state (endpoint
health, cache figures, events outbox) is read when Prometheus scrapes, by a collector.

With `[server] workers`, one /metrics for the host (as prometheus-client's multiprocess mode): each
worker's snapshot (`Metrics.snapshot`, written every second by fedd.workers.shared) holds its request
counters and every family its collectors give; a scrape adds the others' to its own. Counters and
histograms are summed over the workers, live and ended; a gauge combines as `GAUGE_MODES` declares (fedd.web.metricsum).
The worker that answers a scrape collects its own figures once, writes them to its file
(`PeerCounters.share_counters`), then adds the others' to the very same figures: a summed counter
never goes back from one scrape to the next, whichever workers answer them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fedd.web.metricsum import (  # the workers' adding up; these names stay importable from here
    GAUGE_MODES,
    REDIRECT_BUCKETS,
    SUMMED_TYPES,
    Totals,
    add_families,
    add_snapshots,
    families_of,
    metrics_of,
    snapshot_of,
)

__all__ = [
    "GAUGE_MODES",
    "REDIRECT_BUCKETS",
    "SUMMED_TYPES",
    "Metrics",
    "PeerCounters",
    "StateCollector",
    "TlsCounter",
    "Totals",
    "add_families",
    "add_snapshots",
    "families_of",
    "metrics_of",
    "snapshot_of",
]

STATE_VALUE = {"offline": 0.0, "online": 1.0, "unknown": -1.0}


class PeerCounters(Protocol):
    """The per-request counters of the other workers of this host (`fedd.workers.shared.CounterFiles`)."""

    @property
    def unwritten_since(self) -> float | None:
        """When this worker's writes of its own counters started failing (None: they do not)."""

    def others(self) -> list[dict[str, Any]]: ...

    def share_counters(self, counters: dict[str, Any]) -> None:
        """Write this worker's own `counters` (`Metrics.snapshot`) for the others, before a scrape
        reports them: no later read at any worker reports less (a Prometheus counter must not go back)."""


class Metrics:
    """Per-request figures kept in plain ints (an increment, no lock: everything runs in the reactor
    thread) and turned into Prometheus families when scraped. With `peers` (`[server] workers`), a
    scrape adds the other workers' counters to this one's: one /metrics for the host."""

    def __init__(self, peers: PeerCounters | None = None) -> None:
        self.peers = peers
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests: dict[tuple[bytes, int], int] = {}
        self._redirects = [0] * (len(REDIRECT_BUCKETS) + 1)  # per bucket (not cumulative); the last is +Inf
        self._redirect_sum = 0.0
        self._state: list[Collector] = []
        self.registry.register(_Scrape(self))

    def request(self, method: bytes, status: int, seconds: float | None) -> None:
        key = (method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        if status == 302 and seconds is not None:
            self._redirects[bisect_left(REDIRECT_BUCKETS, seconds)] += 1
            self._redirect_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """This process's counters and state families as JSON data (what another worker adds up)."""
        return {**self._requests_snapshot(), "families": self.families()}

    def _requests_snapshot(self) -> dict[str, Any]:
        return snapshot_of((self._requests, self._redirects, self._redirect_sum))

    def totals(self) -> Totals:
        """(requests, redirect buckets, redirect seconds) of this process plus its peers."""
        own = self._requests_snapshot()
        return add_snapshots([own, *self.peers.others()] if self.peers is not None else [own])

    def families(self) -> dict[str, Any]:
        """The families of this process's state collectors, as JSON data (`families_of`)."""
        return families_of(family for collector in self._state for family in collector.collect())

    def add_state(self, collector: Collector) -> None:
        self._state.append(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """A scrape's families: this process's collectors run once, and with `peers` the numbers
        they gave are both written to this worker's counters file and added to the others' (the
        file holds exactly what this scrape answers; its status numbers stay those last written)."""
        own = self.snapshot()
        peers = self.peers
        others = []
        if peers is not None:
            peers.share_counters(own)
            others = peers.others()
        yield from _request_families(add_snapshots([own, *others]))
        if peers is None:
            yield from metrics_of(own["families"])
        else:
            theirs = [f for snap in others if isinstance(f := snap.get("families"), dict)]
            yield from metrics_of(add_families(own["families"], theirs))
            yield from _counters_file(peers.unwritten_since)


class _Scrape(Collector):
    """The registry's one collector: `Metrics.collect`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Any]:
        return iter(())  # families are only known when collected

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()


def _counters_file(since: float | None) -> Iterator[Metric]:
    """Whether the answering worker could write its counters file for this scrape (not in the file:
    a worker that cannot write it cannot tell the others either)."""
    yield GaugeMetricFamily(
        "fedd_counters_file_unwritten",
        "1 while the answering worker cannot write its counters file (summed counters may go back)",
        value=0.0 if since is None else 1.0,
    )
    if since is not None:
        yield GaugeMetricFamily(
            "fedd_counters_file_unwritten_since_seconds",
            "When the answering worker's counters file writes started failing (Unix time)",
            value=since,
        )


def _request_families(totals: Totals) -> Iterator[Metric]:
    """The request counters and redirect times (`add_snapshots`' sum) as families."""
    counts, redirects, redirect_sum = totals
    requests = CounterMetricFamily("fedd_requests", "HTTP requests answered", labels=["method", "status"])
    merged: dict[tuple[str, str], int] = {}
    for (method, status), n in counts.items():
        key = (method.decode("latin-1") if method in _METHODS else "OTHER", str(status))
        merged[key] = merged.get(key, 0) + n
    for labels, n in merged.items():
        requests.add_metric(list(labels), float(n))
    yield requests
    cumulative, buckets = 0, []
    for bound, n in zip((*REDIRECT_BUCKETS, float("inf")), redirects, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
    yield HistogramMetricFamily(
        "fedd_redirect_seconds",
        "Time from request to redirect (GET answered with 302)",
        buckets=buckets,
        sum_value=float(redirect_sum),  # correctly rounded: grows with every worker's sum
    )


_METHODS = {b"GET", b"HEAD", b"PROPFIND", b"OPTIONS", b"PUT", b"DELETE", b"MKCOL", b"MOVE", b"COPY"}


class StateCollector(Collector):
    """Endpoint health, locate cache and events figures, read at scrape time."""

    def __init__(
        self,
        federation: Any,
        events: Any = None,
        site: Any = None,
        *,
        space: Any = None,
        tls: TlsCounter | None = None,
        leader: bool = True,
    ) -> None:
        """`leader`: this process probes the endpoints (one process, or worker 0); another worker
        holds worker 0's probe results, so it counts its own passive failures only (the host's sum
        counts each failed probe once)."""
        self.federation = federation
        self.leader = leader
        self.events = events
        self.site = site
        self.space = space
        self.tls = tls

    def collect(self) -> Iterator[Any]:
        fed = self.federation
        state = GaugeMetricFamily("fedd_endpoint_up", "1 online, 0 offline, -1 no data yet", labels=["endpoint"])
        latency = GaugeMetricFamily("fedd_endpoint_latency_seconds", "Smoothed answer time", labels=["endpoint"])
        errors = CounterMetricFamily(
            "fedd_endpoint_errors", "Failed probes and client-side failures", labels=["endpoint"]
        )
        for eid, health in fed.health.states.items():
            state.add_metric([eid], STATE_VALUE.get(health.state, -1.0))
            if health.latency_ms is not None:
                latency.add_metric([eid], health.latency_ms / 1000.0)
            errors.add_metric([eid], float((health.failures if self.leader else 0) + health.passive_failures))
        yield state
        yield latency
        yield errors
        local = fed.locator.local
        cache = CounterMetricFamily("fedd_locate_cache_lookups", "In-process locate cache lookups", labels=["result"])
        cache.add_metric(["hit"], float(local.hits))
        cache.add_metric(["miss"], float(local.misses))
        yield cache
        yield CounterMetricFamily(
            "fedd_locate_fanouts", "Locates that asked the endpoints", value=float(fed.locator.fanouts)
        )
        yield GaugeMetricFamily(
            "fedd_locate_cache_entries", "Entries in the in-process locate cache", value=float(len(local))
        )
        if self.events is not None:
            ev = self.events
            yield GaugeMetricFamily("fedd_events_outbox_depth", "Events waiting in the outbox", value=float(ev.depth))
            yield GaugeMetricFamily(
                "fedd_events_connected", "1 when the event sink is connected", value=1.0 if ev.sink.connected else 0.0
            )
            for name, value, text in (
                ("sent", ev.sent, "Events delivered"),
                ("dropped", ev.dropped, "Events dropped by the shedding policy"),
                ("failed_publishes", ev.failed, "Failed publish attempts"),
            ):
                yield CounterMetricFamily(f"fedd_events_{name}", text, value=float(value))
        space = self.space
        if space is not None:
            families = {
                "free": GaugeMetricFamily("fedd_endpoint_space_free_bytes", "Free bytes", labels=["endpoint"]),
                "used": GaugeMetricFamily("fedd_endpoint_space_used_bytes", "Used bytes", labels=["endpoint"]),
                "total": GaugeMetricFamily("fedd_endpoint_space_total_bytes", "Capacity or quota", labels=["endpoint"]),
                "age": GaugeMetricFamily(
                    "fedd_endpoint_space_age_seconds", "Age of the last good space measurement", labels=["endpoint"]
                ),
                "stale": GaugeMetricFamily(
                    "fedd_endpoint_space_stale", "1 when the space measurement is stale or missing", labels=["endpoint"]
                ),
            }
            for eid, m in space.to_json().items():
                for key in ("free", "used", "total", "age"):
                    if m[key] is not None:
                        families[key].add_metric([eid], float(m[key]))
                families["stale"].add_metric([eid], 1.0 if m["stale"] else 0.0)
            yield from families.values()
        tls = self.tls
        if tls is not None:
            handshakes = CounterMetricFamily("fedd_tls_handshakes", "Server TLS handshakes", labels=["result"])
            handshakes.add_metric(["ok"], float(tls.done))
            handshakes.add_metric(["failed"], float(tls.failed))
            yield handshakes
        if self.site is not None:
            yield GaugeMetricFamily(
                "fedd_open_connections", "Client connections open now", value=float(self.site.open_connections)
            )
            yield CounterMetricFamily(
                "fedd_hot_answers",
                "Requests answered by the lean front from a cached redirect plan",
                value=float(self.site.hot_answers),
            )


class TlsCounter:
    """Counts server TLS handshakes from OpenSSL's info callback: completed, and failed (a fatal alert
    sent by fedd, e.g. a refused client certificate or a client speaking something else)."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0

    def callback(self, conn: Any, where: int, ret: int) -> None:
        from OpenSSL import SSL

        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self.done += 1
        elif where & SSL.SSL_CB_WRITE_ALERT and (ret >> 8) == 2:  # level 2 = fatal
            self.failed += 1

    def install(self, tls: Any) -> None:
        """Hook into a CertificateOptions (its cached context) or a GridContextFactory (every rebuild)."""
        if hasattr(tls, "info_callback"):
            tls.info_callback = self.callback
            tls.getContext().set_info_callback(self.callback)
        else:
            tls.getContext().set_info_callback(self.callback)

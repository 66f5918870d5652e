"""Building the `replicate` service from a configuration (called by fedd.service.build_service)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.python import usage

from fedd.config import Config
from fedd.federation import Federation
from fedd.replicate.counting import ReadCounter
from fedd.replicate.records import Records
from fedd.replicate.service import ReplicationService
from fedd.state.store import StateStore
from fedd.tpc.engine import TpcEngine
from fedd.workers.shared import HostShare
from fedd.writes import Writer


def build_replication(
    config: Config,
    *,
    reactor: Any,
    federation: Federation,
    writer: Writer,
    tpc: TpcEngine,
    state: StateStore | None,
    space: Any,
    emit: Any,
    share: HostShare | None = None,
) -> ReplicationService | None:
    """The `replicate` service, or None without `[replicate] enabled`. Its counts and records are
    in the `[state] database` (shared by workers and hosts), which it therefore needs. `share`:
    with `[server] workers`, only its leader decides and copies (fedd.replicate.service)."""
    rc = config.replicate
    if not rc.enabled:
        return None
    if state is None:
        raise usage.UsageError("[replicate] enabled = yes needs [state] database (where reads and copies are kept)")
    known = {ep.id: ep for ep in config.endpoints}
    for eid in rc.targets:
        if eid not in known:
            raise usage.UsageError(f"[replicate] target {eid!r}: no such endpoint")
        if not known[eid].write:
            raise usage.UsageError(f"[replicate] target {eid!r}: the endpoint is not writable (write = yes)")
    return ReplicationService(
        config,
        reactor=reactor,
        federation=federation,
        writer=writer,
        tpc=tpc,
        records=Records(state),
        counter=ReadCounter(),
        space=space,
        emit=emit,
        share=share,
    )


class ReplicationCollector(Collector):
    """fedd_replica_* metrics, read at scrape time from the service's last round."""

    def __init__(self, service: ReplicationService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        s = self.service
        now = s.reactor.seconds()
        status = s.to_json()
        hot = GaugeMetricFamily("fedd_replicate_hot_files", "Files over the read threshold in a region")
        hot.add_metric([], len(status["hot"]))
        running = GaugeMetricFamily("fedd_replicate_copies_running", "Replication copies running on this process")
        running.add_metric([], len(s.copying))
        done = CounterMetricFamily("fedd_replicate_copies", "Replication copies ended", labels=["outcome"])
        done.add_metric(["created"], s.counts.copied)
        done.add_metric(["failed"], s.counts.failed)
        done.add_metric(["evicted"], s.counts.evicted)
        used = GaugeMetricFamily("fedd_replicate_bytes", "Bytes of fedd's copies per endpoint", labels=["endpoint"])
        for eid, size in sorted(status["bytes_per_endpoint"].items()):
            used.add_metric([eid], size)
        budget = GaugeMetricFamily("fedd_replicate_budget_left_bytes", "Bytes left in this hour's copy budget")
        budget.add_metric([], s.budget_left(now))
        reads = CounterMetricFamily("fedd_replicate_reads", "Redirects counted for popularity")
        reads.add_metric([], s.counter.total)
        yield from (hot, running, done, used, budget, reads)

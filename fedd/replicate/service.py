"""The `replicate` service: every `[replicate] interval`, the read counts of this process go to the
shared window, the hot files are decided on (fedd.replicate.policy), copies start with fedd's own
third-party-copy engine, and cold copies or copies on an endpoint short of space are evicted.

A copy starts with a claim in the state database (only one host copies a file to an endpoint), then
runs in fedd.replicate.copier. Evictions run after the copies are started, never of a copy running.

With `[server] workers`, every worker counts its reads into the shared window and follows the
`replicas` table (forgetting the paths copied or evicted since its last round), but only the leader
(worker 0, as it alone probes health) decides, copies and evicts: a host copies a file once, with
one `[replicate] copies` and `budget` for the host. The leader publishes its hot files and decisions
(`replication.json` in the run directory) so that every worker's status shows the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger

from fedd.config import Config
from fedd.config.schema import ReplicateConfig
from fedd.errors import describe
from fedd.federation import Federation, Replica
from fedd.namespace import normalise_path
from fedd.periodic import Periodic
from fedd.replicate import policy
from fedd.replicate.copier import Copier
from fedd.replicate.counting import ReadCounter, aggregate, bucket_of, first_bucket, hot, region_location
from fedd.replicate.records import DONE, EVICTED, FAILED, Record, Records
from fedd.select.place import place
from fedd.select.rank import distance_km
from fedd.tpc.engine import TpcEngine
from fedd.twtypes import Service
from fedd.workers.shared import HostShare
from fedd.writes import Writer

log = Logger(namespace="fedd.replicate")
MAX_HOT = 200  # hot (region, path) pairs decided on per round
RECENT = 100  # decisions kept for the status
SHARED = "replication"  # the leader's hot files and decisions for the other workers (replication.json)
STOP_WAIT = 10.0  # seconds a stop waits for cancelled copies to record their end


@dataclass
class Counters:
    copied: int = 0
    failed: int = 0
    evicted: int = 0
    bytes_copied: int = 0
    decisions: int = 0


class ReplicationService(Service):
    name = "replicate"

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any,
        federation: Federation,
        writer: Writer,
        tpc: TpcEngine,
        records: Records,
        counter: ReadCounter,
        space: Any = None,
        emit: Any = None,
        share: HostShare | None = None,
    ) -> None:
        self.config = config.replicate
        self.share = share  # [server] workers: only the leader decides, copies and evicts
        self.decides = share is None or share.leader
        self.reactor = reactor
        self.fed = federation
        self.writer = writer
        self.tpc = tpc
        self.records = records
        self.counter = counter
        self.space = space
        self.emit = emit or (lambda kind, payload: None)
        self.counts = Counters()
        self.copier = Copier(
            reactor=reactor,
            federation=federation,
            writer=writer,
            tpc=tpc,
            records=records,
            emit=self.emit,
            counts=self.counts,
            settings=lambda: self.config,
        )
        self.copying: dict[tuple[str, str], Deferred[None]] = {}
        self.known: list[Record] = []
        self.hot: list[tuple[str, str, int]] = []
        self.recent: list[dict[str, Any]] = []  # decisions of the last round (every one in dry_run)
        self._paths: dict[bytes, str | None] = {}
        self._measured_at_eviction: dict[str, float | None] = {}
        self._loop: Periodic | None = None
        self._busy = False
        self._done_seen: set[tuple[str, str]] = set()
        self._published: dict[str, Any] = {}

    def reconfigure(self, new: Config) -> list[str]:
        old = self.config
        self.config = replace(new.replicate, enabled=old.enabled)  # on or off: a restart (FixedAtStart)
        if self._loop is not None:
            self._loop.retime(self.config.interval, "[replicate] interval")
        return []

    # --- lifecycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = Periodic(self.reactor, self.tick, "replication round").start(self.config.interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for job in list(self.tpc.active):
            if job.request.client == "fedd":
                job.cancel("fedd is shutting down")
        # a copy ends at once when cancelled; only its record may wait for the state database
        done: Deferred[Any] = DeferredList(list(self.copying.values()), consumeErrors=True)
        done.addTimeout(STOP_WAIT, self.reactor)
        return done.addBoth(lambda _: None)

    def tick(self) -> Deferred[None] | None:
        if self._busy or not self.config.enabled:
            return None
        self._busy = True
        d = ensureDeferred(self._round())
        d.addErrback(self._round_failed)
        d.addBoth(self._idle)
        return d

    def _round_failed(self, failure: Any) -> None:
        if self.records.state.down_since is not None:
            return  # the state database is unreachable: said once by the state service
        log.warn("replication round failed: {reason}", reason=describe(failure.value))

    def _idle(self, _: object) -> None:
        self._busy = False

    # --- one round ------------------------------------------------------------------------------

    def _path_of(self, raw: bytes) -> str | None:
        if raw in self._paths:
            return self._paths[raw]
        try:
            path: str | None = normalise_path(raw.partition(b"?")[0])
        except Exception:  # a path the web front would refuse: never counted
            path = None
        if len(self._paths) > 100_000:
            self._paths.clear()
        self._paths[raw] = path
        return path

    async def _round(self) -> None:
        config = self.config
        now = self.reactor.seconds()
        agg = aggregate(self.counter.take(), self.fed.geo.locate, self._path_of)
        first = first_bucket(now, config.window)
        if agg.counts:
            self.records.add_counts(agg.counts, bucket_of(now, config.window), first, now).addErrback(lambda _: None)
        if agg.read_on:
            self.records.touch(agg.read_on, now).addErrback(lambda _: None)
        if not self.decides:  # another worker decides: this one counts, follows the records and its decisions
            self.known = await self.records.all()
            self._forget_changed()
            self._follow()
            return
        totals = await self.records.totals(first)
        self.known = await self.records.all()
        self._forget_changed()
        await self._reclaim(now)
        self.hot = hot(totals, config.threshold)
        use = policy.usage(self.known, now)
        recent = []
        for region, path, reads in self.hot[:MAX_HOT]:
            try:
                decision, replicas = await self.decide(region, path, reads, use, now)
            except Exception as exc:  # one file's locate must not stop the others' decisions
                log.warn("replication: deciding on {path} failed: {reason}", path=path, reason=describe(exc))
                continue
            tpc_limit = self.fed.config.tpc.max_concurrent
            if decision.copy and len(self.tpc.active) >= tpc_limit:  # user COPYs first
                decision = replace(
                    decision, copy=False, reason=f"waiting: {tpc_limit} copies running ([tpc] max_concurrent)"
                )
            recent.append(decision.to_json())
            self.counts.decisions += 1
            if config.dry_run:
                log.info(
                    "dry run: {path} read {reads} times from {region}: {action} {target} ({reason})",
                    path=path,
                    reads=reads,
                    region=region,
                    action="would copy to" if decision.copy else "no copy",
                    target=decision.target or "-",
                    reason=decision.reason,
                )
                continue
            if not decision.copy:
                continue
            source = self._source(replicas, decision.target)
            if not await self.records.claim(path, decision.target, source.endpoint, decision.size, region, now):
                continue
            use = replace(use, running=use.running + 1, last_hour=use.last_hour + decision.size)
            self.known.append(
                Record(
                    path,
                    decision.target,
                    source.endpoint,
                    "copying",
                    decision.size,
                    "",
                    region,
                    self.records.host,
                    "",
                    now,
                    now,
                )
            )
            key = (path, decision.target)
            d = ensureDeferred(self.copier.copy(decision, source, now))
            self.copying[key] = d
            d.addBoth(self._copied, key)
        self.recent = recent[-RECENT:]
        if self.share is not None:
            published = {"hot": self.hot[:MAX_HOT], "decisions": self.recent}
            if published != self._published:
                self.share.publish(SHARED, published)
                self._published = published
        if not config.dry_run:
            for record, reason in policy.evictions(config, self.known, self._free(), now):
                if (record.path, record.endpoint) not in self.copying:
                    if await self.copier.evict(record, reason):
                        self._evicted(record, reason)

    def _follow(self) -> None:
        """The leader's hot files and decisions of its last round, when they changed."""
        shared = self.share.read(SHARED) if self.share is not None else None
        if isinstance(shared, dict):
            self.hot = [(str(r), str(p), int(n)) for r, p, n in shared.get("hot", [])]
            self.recent = list(shared.get("decisions", []))

    def _forget_changed(self) -> None:
        """Copies made or evicted since the last round, by any host: the locate caches of this
        process forget their paths, so its next redirect sees them (without waiting for the TTL)."""
        done = {(r.path, r.endpoint) for r in self.known if r.state == DONE}
        for path in sorted({path for path, _ in done ^ self._done_seen}):
            self.fed.forget(path)
        self._done_seen = done

    async def _reclaim(self, now: float) -> None:
        """A claim left by a copy that cannot be running any more (its host stopped), or a failure
        whose cool-down is over, is removed so the file can be decided on again."""
        limit = self.fed.config.tpc.timeout + 2 * self.config.interval
        keep = []
        for r in self.known:
            stale = r.state == "copying" and now - r.created > limit and (r.path, r.endpoint) not in self.copying
            expired = r.state in (FAILED, EVICTED) and now - r.created >= self.config.cooldown
            if stale or expired:
                await self.records.forget(r.path, r.endpoint)
            else:
                keep.append(r)
        self.known = keep

    async def decide(
        self, region: str, path: str, reads: int, use: policy.Usage, now: float
    ) -> tuple[policy.Decision, list[Replica]]:
        """The decision for `path` read `reads` times from `region`, and the replicas it saw."""
        where = region_location(region)
        targets = list(self.fed.locator.targets(path))
        result = await self.fed.locator.locate(path, targets, wait_all=True)
        replicas = self.fed.replicas(result, targets)
        holders = {r.endpoint: self.fed.locations.get(r.endpoint) for r in replicas}
        size = replicas[0].stat.size if replicas else None
        ids = sorted(self.writer.writable(path))
        if self.config.targets:
            ids = [eid for eid in ids if eid in self.config.targets]
        placement = place(self.writer.candidates(ids), where, path, size or 0, fuzz_km=self.fed.fuzz_km)
        decision = policy.decide(
            self.config,
            path=path,
            region=region,
            reads=reads,
            where=where,
            size=size,
            holders=holders,
            placement=placement,
            target_location=self.fed.locations.get(placement.order[0]) if placement.order else None,
            records=self.known,
            use=use,
            now=now,
            fuzz_km=self.fed.fuzz_km,
        )
        return decision, replicas

    def _source(self, replicas: list[Replica], target: str) -> Replica:
        """The replica nearest to the target (HTTP ones only), else the first."""
        to = self.fed.locations.get(target)
        usable = [r for r in replicas if r.url.startswith(("http://", "https://"))] or replicas

        def km(r: Replica) -> float:
            at = self.fed.locations.get(r.endpoint)
            return distance_km(at[0], at[1], to[0], to[1]) if at is not None and to is not None else float("inf")

        return sorted(usable, key=lambda r: (km(r), r.priority))[0]

    def _copied(self, _: object, key: tuple[str, str]) -> None:
        self.copying.pop(key, None)

    def _evicted(self, record: Record, reason: str) -> None:
        if self.space is not None and "reserve" in reason:
            m = self.space.measurements.get(record.endpoint)
            self._measured_at_eviction[record.endpoint] = m.measured if m is not None else None
        self.known = [r for r in self.known if (r.path, r.endpoint) != (record.path, record.endpoint)]
        self.known.append(replace(record, state=EVICTED, created=self.reactor.seconds()))

    def _free(self) -> dict[str, int | None]:
        """Measured free space of each target endpoint; an endpoint whose copies were evicted for the
        reserve counts again only after a newer measurement (the freed bytes are not measured yet)."""
        out: dict[str, int | None] = {}
        if self.space is None:
            return out
        for eid in self.fed.endpoints:
            m = self.space.measurements.get(eid)
            measured = m.measured if m is not None else None
            if eid in self._measured_at_eviction and self._measured_at_eviction[eid] == measured:
                continue
            out[eid] = self.space.free(eid)
        return out

    # --- status -----------------------------------------------------------------------------------

    def budget_left(self, now: float) -> int:
        return max(0, self.config.budget - policy.usage(self.known, now).last_hour)

    def to_json(self) -> dict[str, Any]:
        now = self.reactor.seconds()
        use = policy.usage(self.known, now)
        cfg: ReplicateConfig = self.config
        return {
            "enabled": cfg.enabled,
            "dry_run": cfg.dry_run,
            "hot": [{"region": r, "path": p, "reads": n} for r, p, n in self.hot[:50]],
            "decisions": self.recent,
            "running": sorted(f"{p} -> {e}" for p, e in self.copying),
            "copied": self.counts.copied,
            "failed": self.counts.failed,
            "evicted": self.counts.evicted,
            "bytes_copied": self.counts.bytes_copied,
            "bytes_per_endpoint": use.per_endpoint,
            "budget_per_hour": cfg.budget,
            "budget_left": max(0, cfg.budget - use.last_hour),
            "replicas": [r.to_json() for r in self.known],
            "reads_counted": self.counter.total,
            "reads_dropped": self.counter.dropped,
        }

    async def explain(self, path: str) -> dict[str, Any]:
        """Why `path` is (not) copied: its reads per region in the window and the decision for each."""
        now = self.reactor.seconds()
        totals = await self.records.totals(first_bucket(now, self.config.window))
        use = policy.usage(self.known, now)
        regions = sorted(((region, n) for (region, p), n in totals.items() if p == path), key=lambda x: -x[1])
        out = []
        for region, reads in regions:
            if reads < self.config.threshold:
                out.append(
                    {
                        "region": region,
                        "reads": reads,
                        "action": "none",
                        "reason": f"{reads} reads in the window, under the threshold ({self.config.threshold})",
                    }
                )
                continue
            decision, _ = await self.decide(region, path, reads, use, now)
            out.append(decision.to_json())
        return {
            "path": path,
            "enabled": self.config.enabled,
            "dry_run": self.config.dry_run,
            "window": self.config.window,
            "threshold": self.config.threshold,
            "regions": out,
            "replicas": [r.to_json() for r in await self.records.all() if r.path == path],
        }

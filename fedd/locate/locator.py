"""Find the replicas of a path: in-process LRU, then memcached, then all endpoints in parallel.

- Concurrent requests for the same path share one fan-out (a thousand jobs opening the same file
  cost one HEAD per endpoint, not a thousand).
- Each waiter passes its own ranking; it is answered as soon as its best-ranked endpoint confirmed
  the file, or every better one said no. Slower endpoints keep answering in the background and
  complete the cached answer.
- The fan-out has a wait budget: endpoints silent past it count as failed for this answer.
- Endpoints that map the path but are offline or in a read downtime are not asked; they count as
  failed for this answer ("offline", "in a read downtime"), so "not found" is never concluded
  while an endpoint that may hold the file could not be asked.
- Who is at fault decides who pays: an endpoint fault (refused, reset, TLS, timeout, 5xx) fails
  the endpoint for this answer and asks the poller for an early probe; a refusal tied to the path
  (`PathRefused`: 4xx, ENOTDIR, ENAMETOOLONG) is that endpoint's "no". Neither changes its health.
- Answers are cached with separate TTLs for found / not found; answers with failures are kept
  only briefly, and "not found" with failures is not cached at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedd.config import LocateConfig
from fedd.endpoints.base import Endpoint, Stat
from fedd.errors import EndpointError, PathRefused, describe
from fedd.health.service import HealthRegistry
from fedd.locate.cache import LocalCache, LocateResult, cache_key
from fedd.locate.invalidate import InvalidationLog
from fedd.locate.memcache import Memcached
from fedd.namespace import Namespace
from fedd.workers.stamps import WriteStamps

log = Logger(namespace="fedd.locate")


@dataclass
class _Waiter:
    order: list[str]
    wait_all: bool
    deferred: Deferred[LocateResult]


def decided(result: LocateResult, order: list[str], wait_all: bool) -> bool:
    """Can a client with this ranking be answered now? Pure."""
    if result.complete:
        return True
    if wait_all:
        return False
    for eid in order:
        stat = result.found.get(eid)
        if stat is not None:
            return True
        if eid in result.pending:
            return False
    return not any(eid in result.pending for eid in order)


class _Query:
    def __init__(
        self,
        locator: Locator,
        path: str,
        targets: dict[str, str],
        fresh: bool = False,
        unreachable: dict[str, str] | None = None,
        via: tuple[str, ...] = (),
    ) -> None:
        self.locator = locator
        self.fresh = fresh  # ask the endpoints themselves, not memcached
        self.path = path
        self.targets = targets  # endpoint id -> endpoint path
        self.via = via  # the fedd instances the request came through (loop protection)
        self.result = LocateResult(path, pending=set(targets), at=locator.clock.seconds())
        self.result.failed.update(unreachable or {})
        self.waiters: list[_Waiter] = []
        self.requests: dict[str, Deferred[Any]] = {}
        self.timer: IDelayedCall | None = None

    def watch(self, order: list[str], wait_all: bool) -> Deferred[LocateResult]:
        d: Deferred[LocateResult] = Deferred()
        waiter = _Waiter(order, wait_all, d)
        if decided(self.result, order, wait_all):
            d.callback(self.result.snapshot())
        else:
            self.waiters.append(waiter)
        return d

    def start(self) -> None:
        if not self.targets:
            self.finish()
            return
        self.timer = self.locator.clock.callLater(self.locator.config.wait_budget, self.expire)
        memcached = self.locator.memcached
        if memcached is None or self.fresh:
            self.fan_out(set(self.targets))
            return
        d = memcached.get(cache_key(self.path))
        d.addTimeout(self.locator.config.memcached_timeout, self.locator.clock)
        d.addErrback(lambda _: None)
        d.addCallback(self.shared_answer)

    def shared_answer(self, data: bytes | None) -> None:
        if self.result.complete:
            return
        shared = LocateResult.from_bytes(self.path, data, set(self.targets)) if data else None
        if shared is None:
            self.fan_out(set(self.targets))
            return
        self.result.found.update(shared.found)
        self.result.missing |= shared.missing
        self.result.pending = set(shared.pending)
        self.result.source = "memcached"
        self.result.at = shared.at
        self.update()
        self.fan_out(set(shared.pending))

    def fan_out(self, endpoint_ids: set[str]) -> None:
        for eid in sorted(endpoint_ids):
            self.ask(eid)
        if self.result.complete:
            self.finish()

    def ask(self, eid: str) -> None:
        endpoint = self.locator.endpoints[eid]
        started = self.locator.clock.seconds()
        try:
            d = endpoint.stat(self.targets[eid], via=self.via)
        except Exception as exc:  # an endpoint bug must not break the whole request
            d = Deferred()
            d.errback(EndpointError(eid, f"{type(exc).__name__}: {exc}"))
        self.requests[eid] = d
        d.addCallbacks(self.answered, self.failed, callbackArgs=(eid, started), errbackArgs=(eid,))

    def answered(self, stat: Stat | None, eid: str, started: float) -> None:
        if eid not in self.result.pending:
            return
        self.locator.health.observed(eid, (self.locator.clock.seconds() - started) * 1000.0)
        self.result.pending.discard(eid)
        if stat is None:
            self.result.missing.add(eid)
        else:
            self.result.found[eid] = stat
        self.update()

    def failed(self, failure: Failure, eid: str) -> None:
        if eid not in self.result.pending:
            return
        reason = describe(failure)
        self.result.pending.discard(eid)
        if failure.check(PathRefused):
            # the endpoint's "no" for this path (the request's fault): not a fault of the endpoint
            log.debug("{endpoint} refused {path}: {reason}", endpoint=eid, path=self.path, reason=reason)
            self.result.missing.add(eid)
            self.locator.health.refused(eid)
            if isinstance(failure.value, PathRefused) and failure.value.suspect:
                self.locator.health.suspect(eid)
            self.update()
            return
        if not failure.check(EndpointError):
            log.failure("unexpected error from endpoint {endpoint}", failure, endpoint=eid)
        self.locator.health.passive_failure(eid, reason)
        self.result.failed[eid] = reason
        self.update()

    def expire(self) -> None:
        self.timer = None
        budget = self.locator.config.wait_budget
        for eid in sorted(self.result.pending):
            self.result.failed[eid] = f"no answer within the wait budget ({budget:g}s)"
            self.locator.health.passive_failure(eid, self.result.failed[eid])
        self.result.pending.clear()
        for eid, d in self.requests.items():
            if eid in self.result.failed:
                d.cancel()
        self.update()

    def update(self) -> None:
        if self.result.complete:
            self.finish()
            return
        still: list[_Waiter] = []
        for waiter in self.waiters:
            if decided(self.result, waiter.order, waiter.wait_all):
                waiter.deferred.callback(self.result.snapshot())
            else:
                still.append(waiter)
        self.waiters = still

    def finish(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.locator.finished(self)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.deferred.callback(self.result.snapshot())


class Locator:
    def __init__(
        self,
        *,
        clock: IReactorTime,
        namespace: Namespace,
        endpoints: Mapping[str, Endpoint],
        health: HealthRegistry,
        config: LocateConfig,
        memcached: Memcached | None = None,
        cache: LocalCache | None = None,
        invalidations: InvalidationLog | None = None,
        readable: Callable[[str], bool] | None = None,
        stamps: WriteStamps | None = None,
    ) -> None:
        self.clock = clock
        self.stamps = stamps  # [server] workers: the host's write times (fedd.workers.stamps)
        self.namespace = namespace
        self.endpoints = endpoints
        self.health = health
        self.config = config
        self.memcached = memcached
        self.local = cache if cache is not None else LocalCache(config.lru_entries)
        self._readable = readable or (lambda eid: endpoints[eid].config.read)
        self._inflight: dict[str, _Query] = {}
        self.fanouts = 0
        self.invalidations = invalidations  # when memcached is shared by several processes

    @property
    def generation(self) -> int:
        """Grows whenever cached answers are dropped early, so derived caches know to drop theirs."""
        return self.local.generation

    def reconfigure(self, config: LocateConfig, namespace: Namespace, membership_changed: bool) -> None:
        """A reload: new timings and mappings. When endpoints came or went, or their mappings changed, a
        cached "not found" may be wrong now: those answers are dropped."""
        self.config, self.namespace = config, namespace
        if membership_changed:
            dropped = self.local.drop_negative()
            log.info("reload: dropped {n} cached 'not found' answers (the endpoints changed)", n=dropped)

    def cached(self, path: str) -> LocateResult | None:
        """The hot path: a synchronous look into the in-process cache. With workers, a cached answer
        is not used when another worker wrote (or deleted, moved) the path after its lookup started."""
        hit = self.local.get(path, self.clock.seconds())
        if hit is not None and self.stamps is not None and self.stamps.since(path) >= hit.at:
            self.local.drop(path)
            return None
        return hit

    def targets(self, path: str) -> dict[str, str]:
        """The endpoints that may hold `path` and can be asked now (readable, usable)."""
        return {
            t.endpoint: t.path
            for t in self.namespace.targets(path)
            if t.endpoint in self.endpoints and self._readable(t.endpoint) and self.health.usable(t.endpoint)
        }

    def unreachable(self, path: str) -> dict[str, str]:
        """Readable endpoints that map `path` but cannot be asked now, with the reason."""
        out: dict[str, str] = {}
        for t in self.namespace.targets(path):
            eid = t.endpoint
            if eid in self.endpoints and self._readable(eid) and not self.health.usable(eid):
                out[eid] = "in a read downtime" if eid in self.health.read_blocked else "offline"
        return out

    def locate(
        self,
        path: str,
        order: list[str],
        *,
        wait_all: bool = False,
        fresh: bool = False,
        via: tuple[str, ...] = (),
    ) -> Deferred[LocateResult]:
        """The replicas of `path`. `fresh`: ask the endpoints now, whatever the caches or a query
        already under way know (before a write decides on what exists). `via`: the fedd instances
        the client's request came through, passed on to endpoints that are fedd instances."""
        if not fresh:
            hit = self.cached(path)
            if hit is not None:
                return succeed(hit)
            query = self._inflight.get(path)
            if query is not None:
                return query.watch(order, wait_all)
        self.fanouts += 1
        query = _Query(self, path, self.targets(path), fresh, self.unreachable(path), via)
        self._inflight[path] = query  # later lookups share the newest query
        d = query.watch(order, wait_all)
        query.start()
        return d

    def finished(self, query: _Query) -> None:
        if self._inflight.get(query.path) is query:
            del self._inflight[query.path]
        result = query.result
        if result.failed:
            ttl = self.config.negative_ttl if result.found else 0.0
        else:
            ttl = self.config.positive_ttl if result.found else self.config.negative_ttl
        if ttl <= 0:
            return
        # With other hosts sharing memcached, a "not found" is kept there only: a write through
        # another host deletes it there at once (`forget`), while this process's LRU would only
        # hear of it at the next invalidation poll and answer a stale 404 until then.
        if result.found or self.invalidations is None:
            self.local.put(query.path, result, self.clock.seconds() + ttl)
        if self.memcached is not None and not result.failed and result.source == "endpoints":
            self.memcached.set(cache_key(query.path), result.to_bytes(), ttl)

    def forget(self, path: str) -> None:
        """Drop a path from both cache tiers (after a write or delete), and tell the other processes."""
        self.local.drop(path)
        if self.stamps is not None:
            self.stamps.stamp(path, self.clock.seconds())
        if self.memcached is not None:
            self.memcached.delete(cache_key(path))
        if self.invalidations is not None:
            self.invalidations.publish(path)

    def to_json(self) -> dict[str, Any]:
        return {
            "local_entries": len(self.local),
            "local_hits": self.local.hits,
            "local_misses": self.local.misses,
            "fanouts": self.fanouts,
            "inflight": len(self._inflight),
            "memcached": self.memcached.to_json() if self.memcached is not None else None,
            "invalidations": self.invalidations.to_json() if self.invalidations is not None else None,
        }

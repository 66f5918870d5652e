"""The federation: endpoints + namespace + health + locate + ranking, without any HTTP.

`fedd.web` asks this object questions ("where should this client read this path?", "what is in this
directory?") and turns the answers into responses.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedd.config import Config, EndpointConfig
from fedd.endpoints.base import Endpoint, Entry, Stat, Valve
from fedd.errors import NoReplicaAvailable, NotFound, describe
from fedd.fleet import FleetChanges
from fedd.health.service import HealthRegistry
from fedd.listings import Listing, Listings
from fedd.locate.cache import LocateResult
from fedd.locate.locator import Locator
from fedd.namespace import Namespace, Target
from fedd.select.geo import GeoLocator
from fedd.select.rank import Candidate, rank

log = Logger(namespace="fedd.federation")
LOAD_HALF_LIFE = 10.0  # seconds
MAX_HOPS = 8  # fedd instances a request may pass through (Via) before it is refused as a loop
MAX_RETRY_AFTER = 300  # seconds: the longest Retry-After fedd gives


def new_instance_id() -> str:
    """This process's name in `Via` headers: unique among the fedd instances that may federate it."""
    return "fedd-" + uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Replica:
    endpoint: str
    url: str
    stat: Stat
    priority: int


class Federation:
    def __init__(
        self,
        config: Config,
        *,
        clock: IReactorTime,
        endpoints: Mapping[str, Endpoint],
        health: HealthRegistry,
        locator: Locator,
        geo: GeoLocator,
        namespace: Namespace,
        instance: str = "",
    ) -> None:
        self.config = config
        self.instance = instance or new_instance_id()
        self.clock = clock
        self.endpoints = endpoints
        self.health = health
        self.locator = locator
        self.geo = geo
        self.namespace = namespace
        self.locations = {ep.id: self._location(ep) for ep in config.endpoints}
        self._weights = {ep.id: ep.weight for ep in config.endpoints}
        self._load: dict[str, float] = {eid: 0.0 for eid in endpoints}
        self._load_at = clock.seconds()
        self._order_cache: dict[tuple[str, tuple[float, float] | None], tuple[int, float, list[str]]] = {}
        self.listings = Listings(
            clock=clock, endpoints=endpoints, health=health, namespace=namespace, not_answering=self._not_answering
        )

    def reconfigure(self, new: Config, changes: FleetChanges) -> list[str]:
        """A reloaded configuration, after the fleet swapped the endpoint objects (`changes`): new
        mappings, weights and locate timings; new and changed endpoints are located again. What is
        read once at start (`[geo]`, memcached, the LRU size) keeps its running value."""
        old = self.config
        locate = replace(new.locate, memcached=old.locate.memcached, lru_entries=old.locate.lru_entries)
        self.config = replace(new, geo=old.geo, locate=locate)
        self.namespace = Namespace((ep.id, fed, epath) for ep in new.endpoints for fed, epath in ep.mappings)
        self.listings.reconfigure(self.namespace)
        self.locator.reconfigure(locate, self.namespace, changes.membership)
        self._weights = {ep.id: ep.weight for ep in new.endpoints}
        for ep in new.endpoints:
            if ep.id in changes.placed:
                self.locations[ep.id] = self._location(ep)
                self._load.setdefault(ep.id, 0.0)
        for eid in changes.removed:
            self.locations.pop(eid, None)
            self._load.pop(eid, None)
        self._order_cache.clear()
        return []

    def _location(self, ep: EndpointConfig) -> tuple[float, float] | None:
        if ep.lat is not None and ep.lon is not None:
            return (ep.lat, ep.lon)
        return self._locate_host(ep.url)

    def _locate_host(self, url: str) -> tuple[float, float] | None:
        host = urlsplit(url).hostname if url else None
        if not host:
            return None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: resolved without blocking by locate_endpoint_hosts() at start
        return self.geo.locate(host)

    async def locate_endpoint_hosts(self, resolver: Any, timeout: float = 10.0) -> None:
        """Place endpoints that have neither lat/lon nor an IP address by resolving their host name."""
        for ep in self.config.endpoints:
            host = urlsplit(ep.url).hostname if ep.url else None
            if not host or self.locations.get(ep.id) is not None or ep.lat is not None:
                continue
            try:
                d = resolver.resolve(host)
                d.addTimeout(timeout, self.clock)
                address = await d
            except Exception as exc:
                log.warn(
                    "cannot resolve {host} of endpoint {endpoint} for its location: {reason}",
                    host=host,
                    endpoint=ep.id,
                    reason=describe(exc),
                )
                continue
            self.locations[ep.id] = self.geo.locate(address)
            self._order_cache.clear()
            log.info(
                "endpoint {endpoint} ({host} = {address}) placed at {where}",
                endpoint=ep.id,
                host=host,
                address=address,
                where=self.locations[ep.id],
            )

    def generation(self) -> tuple[int, int]:
        """Changes whenever a cached redirect may no longer be right (health change, cache forget)."""
        return (self.health.version, self.locator.generation)

    # --- ranking ------------------------------------------------------------------------------

    # --- what writers and the web front ask (one hop, not through the collaborators) ---------------

    def mapped(self, path: str) -> list[Target]:
        """Every endpoint the namespace maps `path` to, with the endpoint's own path."""
        return self.namespace.targets(path)

    def online(self, endpoint_id: str) -> bool:
        return self.health.states[endpoint_id].usable

    def passive_failure(self, endpoint_id: str, reason: str) -> None:
        """A fault seen while serving a client: counted, and the poller probes the endpoint early."""
        self.health.passive_failure(endpoint_id, reason)

    def forget(self, path: str) -> None:
        """`path` changed (written, deleted, moved): drop what every cache knows of it."""
        self.locator.forget(path)

    def client_location(self, client_ip: str) -> tuple[float, float] | None:
        return self.geo.locate(client_ip)

    @property
    def fuzz_km(self) -> float:
        return self.config.geo.fuzz_km

    def locate_now(self, path: str) -> Deferred[LocateResult]:
        """Where `path` is, asked of every readable mapped endpoint afresh (before a write decides on
        what exists), waiting for all of them."""
        order = list(self.locator.targets(path))
        if not order:
            return succeed(LocateResult(path, pending=set(), at=self.clock.seconds()))
        return self.locator.locate(path, order, wait_all=True, fresh=True)

    def _decay_load(self, now: float) -> None:
        elapsed = now - self._load_at
        if elapsed >= 1.0:
            factor = 0.5 ** (elapsed / LOAD_HALF_LIFE)
            for eid in self._load:
                self._load[eid] *= factor
            self._load_at = now

    def note_redirect(self, endpoint: str) -> None:
        self._load[endpoint] = self._load.get(endpoint, 0.0) + 1.0

    def candidates(self, endpoint_ids: list[str]) -> list[Candidate]:
        total = sum(self._load.get(e, 0.0) for e in endpoint_ids) or 1.0
        out = []
        for eid in endpoint_ids:
            health = self.health.states[eid]
            loc = self.locations.get(eid)
            out.append(
                Candidate(
                    endpoint=eid,
                    lat=loc[0] if loc else None,
                    lon=loc[1] if loc else None,
                    state=health.state,
                    latency_ms=health.latency_ms,
                    load=self._load.get(eid, 0.0) / total if len(endpoint_ids) > 1 else 0.0,
                    weight=self._weights.get(eid, 1.0),
                )
            )
        return out

    def order(self, path: str, client_ip: str) -> list[str]:
        """Endpoint ids that may hold `path`, best first for this client. Cached for one second."""
        now = self.clock.seconds()
        where = self.geo.locate(client_ip)
        key = (path, where)
        hit = self._order_cache.get(key)
        if hit is not None and hit[0] == self.health.version and now - hit[1] < 1.0:
            return hit[2]
        self._decay_load(now)
        targets = list(self.locator.targets(path))
        ordered = rank(
            self.candidates(targets),
            where,
            path,
            fuzz_km=self.config.geo.fuzz_km,
            latency_tolerance_ms=self.config.geo.latency_tolerance_ms,
        )
        if any(self.health.failing(eid) for eid in ordered):
            # an endpoint whose last probe failed goes last (still usable for a file only it holds)
            ordered = sorted(ordered, key=self.health.failing)
        if len(self._order_cache) > 100_000:
            self._order_cache.clear()
        self._order_cache[key] = (self.health.version, now, ordered)
        return ordered

    def replicas(self, result: LocateResult, order: list[str], method: str = "GET") -> list[Replica]:
        """The files of a locate answer as redirect targets, best first; offline ones never."""
        now = self.clock.seconds()
        files = result.files()
        out: list[Replica] = []
        for eid in order:
            stat = files.get(eid)
            if stat is None or not self.health.usable(eid):
                continue
            target_path = self.locator.targets(result.path).get(eid)
            if target_path is None:
                continue
            out.append(Replica(eid, self.endpoints[eid].url_for(target_path, now, method), stat, len(out) + 1))
        return out

    async def find(
        self, path: str, client_ip: str, *, wait_all: bool = False, method: str = "GET", via: tuple[str, ...] = ()
    ) -> list[Replica]:
        """Replicas of a file, best first; NotFound / NoReplicaAvailable when there is none."""
        order = self.order(path, client_ip)
        result = await self.locator.locate(path, order, wait_all=wait_all, via=via)
        replicas = self.replicas(result, order, method)
        if replicas:
            return replicas
        self.no_replica(result)
        raise AssertionError("unreachable")

    def unavailable(self, result: LocateResult) -> dict[str, str]:
        """Endpoints that may hold `result.path` but did not say "no": they failed to answer, or map
        the path and are offline or in a read downtime now (also when they held a cached replica)."""
        out = dict(result.failed)
        for eid, reason in self.locator.unreachable(result.path).items():
            stat = result.found.get(eid)
            if eid not in result.missing and not (stat is not None and stat.is_dir):
                out.setdefault(eid, reason)
        return out

    def _not_answering(self, what: str, failed: dict[str, str]) -> NoReplicaAvailable:
        """The 503 for endpoints that may hold the answer and could not give it (with Retry-After)."""
        names = ", ".join(f"{eid} ({why})" for eid, why in sorted(failed.items()))
        return NoReplicaAvailable(
            f"{what}; not answering: {names}", retry_after=self.retry_after(), unreachable=tuple(sorted(failed))
        )

    def retry_after(self) -> int:
        """Seconds until an unreachable endpoint may be back: the next health check."""
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self.health.config.interval)))

    def no_replica(self, result: LocateResult) -> None:
        """Raise the answer for a path with no usable replica: 404 only when every endpoint that maps
        the path said no; 503 + Retry-After when any of them could not be asked or did not answer
        (to Rucio and FTS a 404 means "file lost")."""
        missing = self.unavailable(result)
        exc: NotFound | NoReplicaAvailable
        if missing:
            exc = self._not_answering(f"{result.path}: no replica available now", missing)
        else:
            exc = NotFound(f"{result.path}: no such file")
        exc.not_collections = self.not_collections(result)
        raise exc

    def not_collections(self, result: LocateResult) -> frozenset[str]:
        """Endpoints whose answer already says `result.path` is no collection there: kinds whose stat
        tells collections (WebDAV, local) that said "no" or found a file. Listing them again would
        cost a request each (and, between fedd instances, multiply a loop)."""
        said = set(result.missing) | {eid for eid, st in result.found.items() if not st.is_dir}
        return frozenset(eid for eid in said if eid in self.endpoints and self.endpoints[eid].collections_by_stat)

    # --- listings (fedd.listings) -----------------------------------------------------------------

    def listable(self, path: str) -> dict[str, str]:
        return self.listings.listable(path)

    def unlistable(self, path: str) -> dict[str, str]:
        return self.listings.unlistable(path)

    async def listdir(self, path: str, via: tuple[str, ...] = (), skip: frozenset[str] = frozenset()) -> Listing | None:
        return await self.listings.listdir(path, via, skip)

    async def stream_listing(
        self,
        path: str,
        on_start: Callable[[], None],
        on_entries: Callable[[list[Entry]], None],
        via: tuple[str, ...] = (),
        skip: frozenset[str] = frozenset(),
        valve: Valve | None = None,
    ) -> dict[str, str] | None:
        return await self.listings.stream_listing(path, on_start, on_entries, via, skip, valve)

    async def lookup(self, path: str, client_ip: str, via: tuple[str, ...] = ()) -> tuple[list[Replica], LocateResult]:
        """Every endpoint's stat of `path` (all of them, not the first): the file replicas, best first,
        and the answer they came from. PROPFIND asks this first, then lists only the endpoints that
        may hold a collection by that name (`not_collections`): a WebDAV or local endpoint that said
        "no" or found a file is not asked again, so a PROPFIND of a file costs one request per
        endpoint, and a loop of fedd instances one request per instance."""
        order = self.order(path, client_ip)
        result = await self.locator.locate(path, order, wait_all=True, via=via)
        return self.replicas(result, order), result

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoints": {
                ep.id: {
                    "kind": ep.kind,
                    "url": ep.url or None,
                    "map": [list(m) for m in ep.mappings],
                    "location": self.locations.get(ep.id),
                    "read": ep.read,
                    "list": ep.list,
                    "write": ep.write,
                    "weight": ep.weight,
                    "health": self.health.states[ep.id].to_json(),
                }
                for ep in self.config.endpoints
            },
            "locate": self.locator.to_json(),
            "instance": self.instance,
        }

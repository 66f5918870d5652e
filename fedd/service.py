"""Build fedd from a `Config`: every component constructed once, in dependency order, with its
collaborators passed in; `build_service` returns them as one typed `Fedd` whose `service` is the
`MultiService` twistd runs (named children `web`, `health`, `events`, `space`, ...)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from fedd.auth.service import AuthService
from fedd.auth.tls import GridContextFactory
from fedd.builders import GeoCloser, Placer, build_auth, build_events, build_gocdb, build_state, emit_transitions
from fedd.checksums.claims import JobClaims
from fedd.checksums.service import ChecksumService
from fedd.config import Config, EndpointConfig
from fedd.confirm.metrics import ConfirmCollector
from fedd.confirm.service import ConfirmService, build_confirm
from fedd.endpoints import Endpoint, make_endpoint
from fedd.events.service import EventsService
from fedd.federation import Federation, new_instance_id
from fedd.fleet import EndpointFactory, EndpointFleet
from fedd.health.service import HealthRegistry, HealthService
from fedd.locate.cache import LocalCache
from fedd.locate.invalidate import InvalidationLog
from fedd.locate.locator import Locator
from fedd.locate.memcache import Memcached
from fedd.namespace import Namespace
from fedd.reload import FixedAtStart, Reloader, ReloadStatus
from fedd.replicate.build import ReplicationCollector, build_replication
from fedd.replicate.service import ReplicationService
from fedd.select.geo import GeoLocator
from fedd.space.downtime import DowntimeBook
from fedd.space.gocdb import GocdbService
from fedd.space.service import SpaceService
from fedd.state.store import StateStore
from fedd.state.tables import SharedChecksums, SharedDowntimes, SharedReservations
from fedd.tpc.engine import TpcEngine
from fedd.twtypes import MultiService
from fedd.web.accesslog import AccessLog
from fedd.web.lifecycle import DrainFirst, Listener, WebService
from fedd.web.listen import listen_endpoint, server_tls
from fedd.web.metrics import Metrics, StateCollector, TlsCounter
from fedd.web.resource import FeddResource
from fedd.web.site import FeddSite, PublicBase
from fedd.workers import WorkerRole
from fedd.workers.applied import AppliedMarks
from fedd.workers.shared import CounterFiles, CountersWriter, HostShare, WorkersStatus
from fedd.workers.sockets import AdoptedEndpoint
from fedd.workers.stamps import STAMPS_FILE, WriteStamps
from fedd.writes import Writer

log = Logger(namespace="fedd")


@dataclass(frozen=True)
class Fedd:
    """Everything `build_service` made. `service` is what twistd runs; the rest is for the reload,
    the status page and in-process tests."""

    service: MultiService
    config: Config
    fleet: EndpointFleet
    federation: Federation
    health: HealthService
    events: EventsService
    auth: AuthService | None
    space: SpaceService
    downtimes: DowntimeBook
    gocdb: GocdbService
    writer: Writer
    tpc: TpcEngine
    checksums: ChecksumService
    confirm: ConfirmService
    state: StateStore | None
    metrics: Metrics
    resource: FeddResource
    site: FeddSite
    reloader: Reloader
    replication: ReplicationService | None = None


def endpoint_factory(reactor: Any, instance: str) -> EndpointFactory:
    """The real endpoint kinds (fedd.endpoints.make_endpoint), marking this instance in `Via`."""

    def make(ep: EndpointConfig, config: Config) -> Endpoint:
        return make_endpoint(ep, reactor=reactor, presign_reuse=config.locate.presign_reuse, instance=instance)

    return make


def build_service(
    config: Config,
    *,
    reactor: Any,
    config_path: str | None = None,
    make_endpoint: Callable[[Any, str], EndpointFactory] | None = None,
    worker: WorkerRole | None = None,
) -> Fedd:
    """Construct fedd for `config`. Problems the configuration could not rule out (unreadable TLS or
    GeoIP files, a port description Twisted refuses) raise `usage.UsageError` here, before start.
    `make_endpoint(reactor, instance)` gives the endpoint factory (tests put in-memory endpoints in).
    `worker`: one of `[server] workers` processes (fedd.workers): it listens on the sockets its
    supervisor passed, and shares counters, probe and space results with the other workers."""
    tls = server_tls(config) if any(d.startswith("ssl:") for d in config.server.listen) else None
    if worker is None:
        listeners = [listen_endpoint(reactor, d, config, tls) for d in config.server.listen]  # fail fast
    else:
        listeners = [
            AdoptedEndpoint(reactor, worker.fd(i), tls if d.startswith("ssl:") else None)
            for i, d in enumerate(config.server.listen)
        ]
    shared = HostShare(worker.run_dir, leader=worker.leader) if worker is not None else None
    top = DrainFirst()  # on shutdown: drain the web front first, then stop the rest
    instance = worker.instance if worker is not None and worker.instance else new_instance_id()
    fleet = EndpointFleet(config, (make_endpoint or endpoint_factory)(reactor, instance), reactor)
    fleet.setServiceParent(top)
    endpoints = fleet.endpoints
    namespace = Namespace((ep.id, fed, epath) for ep in config.endpoints for fed, epath in ep.mappings)
    try:
        geo = GeoLocator(config.geo.database, config.geo.sites, config.geo.cache_entries)
    except (OSError, ValueError) as exc:
        raise usage.UsageError(f"[geo] database {config.geo.database!r}: {exc}") from None
    registry = HealthRegistry(list(endpoints), config.health, reactor)
    state = build_state(config, reactor, instance, worker)
    if state is not None:
        state.setServiceParent(top)
    memcached = invalidations = None
    cache = LocalCache(config.locate.lru_entries)
    if config.locate.memcached:
        memcached = Memcached(reactor, config.locate.memcached, config.locate.memcached_timeout)
        memcached.setServiceParent(top)
        invalidations = InvalidationLog(memcached, cache, reactor)
        invalidations.setServiceParent(top)
    locator = Locator(
        clock=reactor,
        namespace=namespace,
        endpoints=endpoints,
        health=registry,
        config=config.locate,
        memcached=memcached,
        cache=cache,
        invalidations=invalidations,
        # workers: a "not found" one of them cached is dropped when another wrote the path
        stamps=WriteStamps(worker.run_dir / STAMPS_FILE) if worker is not None and worker.count > 1 else None,
    )
    federation = Federation(
        config,
        clock=reactor,
        endpoints=endpoints,
        health=registry,
        locator=locator,
        geo=geo,
        namespace=namespace,
        instance=instance,
    )
    GeoCloser(geo).setServiceParent(top)
    Placer(federation, reactor).setServiceParent(top)
    health = HealthService(registry, endpoints, reactor, shared=shared)
    health.setServiceParent(top)
    events = build_events(config, reactor, worker)
    events.setServiceParent(top)
    registry.listeners.append(emit_transitions(events, registry))
    auth = build_auth(config, reactor, tls if isinstance(tls, GridContextFactory) else None)
    if auth is not None:
        auth.setServiceParent(top)
    # with memcached, the space service's own sharing (adopt + lock) already measures once per interval
    space = SpaceService(
        config,
        endpoints,
        reactor,
        memcached=memcached,
        emit=events.emit,
        shared=shared if memcached is None else None,
        reservations=SharedReservations(state) if state is not None else None,
    )
    space.setServiceParent(top)
    path_set = bool(config.health.downtime_file)
    downtimes = DowntimeBook(
        {ep.id: ep.downtimes for ep in config.endpoints},
        reactor,
        path=config.health.downtime_file,
        on_change=registry.block_reads,
        # the workers' implicit state leaves run-time downtimes to [health] downtime_file when set
        shared=SharedDowntimes(state) if state is not None and not (state.implicit and path_set) else None,
        marks=AppliedMarks(worker.run_dir, worker.index, reactor) if worker is not None else None,
        settle_timeout=3 * config.state.poll_interval + 1.0,
    )
    downtimes.setServiceParent(top)
    gocdb = build_gocdb(config, reactor, downtimes, shared)  # worker 0 reads GOCDB, the others follow
    gocdb.setServiceParent(top)
    writer = Writer(federation, config.write, space=space, downtimes=downtimes)
    tpc = TpcEngine(federation, writer, reactor=reactor, events=events)
    checksums = ChecksumService(
        config.checksums,
        federation=federation,
        reactor=reactor,
        emit=events.emit,
        store=SharedChecksums(state) if state is not None and not state.implicit else None,
        claims=JobClaims(worker.run_dir / "checksum-claims") if worker is not None and worker.count > 1 else None,
    )
    checksums.setServiceParent(top)
    replication = build_replication(
        config,
        reactor=reactor,
        federation=federation,
        writer=writer,
        tpc=tpc,
        space=space,
        state=state if state is not None and not state.implicit else None,  # its records outlive restarts
        emit=events.emit,
        share=shared,  # with workers, worker 0 alone decides and copies
    )
    if replication is not None:
        replication.setServiceParent(top)
    confirm = build_confirm(
        config, reactor, federation=federation, emit=events.emit, checksums=checksums, worker=worker
    )
    confirm.setServiceParent(top)

    def own_counters() -> dict[str, Any]:
        """This worker's metric families and request counters, for the others to add up (written
        every second and before each read that reports them, with its status numbers:
        fedd.workers.shared)."""
        return metrics.snapshot()

    def own_status() -> dict[str, Any]:
        return resource.status(peers=False)

    counters = None
    if worker is not None:
        counters = CounterFiles(worker.run_dir, os.getpid(), own_counters, own_status, clock=reactor)
    metrics = Metrics(peers=counters)
    reload_status = ReloadStatus(config_path, worker.run_dir if worker is not None else None)
    resource = FeddResource(
        federation,
        head_redirect=config.server.head_redirect,
        events=events,
        auth=auth,
        writer=writer,
        tpc=tpc,
        checksums=checksums,
        space=space,
        downtimes=downtimes,
        gocdb=gocdb,
        metrics=metrics,
        metrics_path=config.server.metrics_path.encode(),
        srr_path=config.space.srr_path.encode(),
        reload_status=reload_status,
        state=state,
        workers=WorkersStatus(worker.run_dir, worker.index, worker.count, counters) if worker is not None else None,
        replication=replication,
        confirm=confirm,
        started=worker.started if worker is not None else None,  # the host's, as in its hosts row
    )
    if counters is not None:
        counters_writer = CountersWriter(counters, reactor)
        counters_writer.setServiceParent(top)
        tpc.on_end = counters_writer.soon  # the others' status sees a copy end at once, not up to 1 s late
    access = None
    if config.server.access_log_file:
        access = AccessLog(config.server.access_log_file, reactor)
        try:
            access.open()
        except OSError as exc:
            raise usage.UsageError(f"cannot open access_log_file {config.server.access_log_file}: {exc}") from None
        access.setServiceParent(top)
    site = FeddSite(
        resource,
        max_body=config.server.max_body_bytes,
        access_log=config.server.access_log,
        metrics=metrics,
        clock=reactor,
        proxy_agents=config.write.proxy_user_agents,
        proxy_max=config.write.proxy_max_bytes,
        header_timeout=config.server.header_timeout,
        idle_timeout=config.server.idle_timeout,
        max_connections_per_client=config.server.max_connections_per_client,
        public=PublicBase(config.server.public_url, config.server.allowed_hosts),
        access_file=access,
    )
    site.noisy = False
    counter = None
    if tls is not None:
        counter = TlsCounter()
        counter.install(tls)
    leader = worker is None or worker.leader
    metrics.add_state(StateCollector(federation, events, site, space=space, tls=counter, leader=leader))
    if replication is not None:
        metrics.add_state(ReplicationCollector(replication))
    metrics.add_state(ConfirmCollector(confirm))
    web = WebService(site, clock=reactor, drain_timeout=config.server.drain_timeout, notice=config.server.drain_notice)
    for description, endpoint in zip(config.server.listen, listeners, strict=True):
        Listener(endpoint, site, description).setServiceParent(web)  # a port in use stops start-up, loudly
    web.setServiceParent(top)
    # a reload hands the new configuration to each of these, in this order (the fleet first: the
    # others key their state by the endpoint ids it holds)
    reloader = Reloader(
        config_path,
        [
            FixedAtStart(config).reconfigure,
            fleet.reconfigure,
            lambda new: federation.reconfigure(new, fleet.changes),
            registry.reconfigure,
            health.reconfigure,
            space.reconfigure,
            writer.reconfigure,
            checksums.reconfigure,
            confirm.reconfigure,
            downtimes.reconfigure,
            gocdb.reconfigure,
            *([auth.reconfigure] if auth is not None else []),
            *([replication.reconfigure] if replication is not None else []),
            resource.reconfigure,
        ],
        reload_status,
        marks=AppliedMarks(worker.run_dir, worker.index, reactor) if worker is not None else None,
    )
    return Fedd(
        service=top,
        config=config,
        fleet=fleet,
        federation=federation,
        health=health,
        events=events,
        auth=auth,
        space=space,
        downtimes=downtimes,
        gocdb=gocdb,
        writer=writer,
        tpc=tpc,
        checksums=checksums,
        confirm=confirm,
        state=state,
        metrics=metrics,
        resource=resource,
        site=site,
        reloader=reloader,
        replication=replication,
    )

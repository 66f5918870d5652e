"""The parts `fedd.service.build_service` assembles that take more than a constructor call: the
event feed with its broker client, authorisation, GOCDB, the shared state store, and two small
services (GeoIP reader closer, endpoint host placer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python import usage

from fedd.auth.rules import RulesError
from fedd.auth.service import AuthService
from fedd.auth.tls import GridContextFactory
from fedd.auth.tokens import TokenVerifier
from fedd.config import Config
from fedd.endpoints import HttpClient
from fedd.events.outbox import Outbox
from fedd.events.service import EventsService
from fedd.events.sinks import AmqpSink, SpoolSink
from fedd.events.stomp import StompSink, parse_brokers, stomp_tls
from fedd.federation import Federation
from fedd.health.service import HealthRegistry
from fedd.health.state import Transition
from fedd.select.geo import GeoLocator
from fedd.space.downtime import DowntimeBook
from fedd.space.gocdb import Fetcher, GocdbService
from fedd.state.database import open_database
from fedd.state.presence import HostPresence
from fedd.state.store import HostIdentity, StateStore
from fedd.twtypes import Service
from fedd.workers import WorkerRole

log = Logger(namespace="fedd")


def build_events(config: Config, reactor: Any, worker: WorkerRole | None = None) -> EventsService:
    """The `events` service; with a broker, its reconnecting AMQP or STOMP client is a child service.
    A worker of `[server] workers` has an outbox of its own (`WorkerRole.own_files`); the spool is the host's."""
    ev = config.events if worker is None else worker.own_files(config.events)
    if not ev.broker:
        return EventsService(ev, clock=reactor, outbox=None, sink=SpoolSink(reactor, ev.spool, ev.spool_max_bytes))
    outbox = Outbox(reactor, ev.outbox, ev.outbox_max_events, ev.shed)
    sink: AmqpSink | StompSink
    if ev.broker.startswith("stomp"):  # stomp:// or stomp+ssl://, several for fail-over
        sink = StompSink(
            reactor,
            parse_brokers(ev.broker, ev.login, ev.passcode),
            ev.destination,
            routing_prefix=ev.routing_prefix,
            timeout=ev.timeout,
            heartbeat=ev.heartbeat,
            receipts=ev.receipts,
            bundle=ev.bundle,
            tls_options=stomp_tls(ev.ca_file, ev.tls_certificate, ev.tls_private_key),
        )
    else:
        sink = AmqpSink(reactor, ev.broker, ev.exchange, timeout=ev.timeout, bundle=ev.bundle)
    events = EventsService(ev, clock=reactor, outbox=outbox, sink=sink, direct=True)
    sink.service.setName("broker")
    sink.service.setServiceParent(events)
    return events


def build_auth(config: Config, reactor: Any, tls: GridContextFactory | None = None) -> AuthService | None:
    """The `auth` service, or None when the configuration has no [auth] (everything is allowed)."""
    if config.auth is None:
        return None
    verifier = None
    if config.issuers:
        http = HttpClient(reactor, endpoint="jwks", timeout=10.0, max_body=1 << 20)

        async def fetch(url: str) -> bytes:
            response = await http.request("GET", url)
            if response.code != 200:
                raise ValueError(f"HTTP {response.code} from {url}")
            return response.body

        try:
            verifier = TokenVerifier(
                list(config.issuers),
                list(config.auth.token_audience),
                clock=reactor,
                fetch=lambda url: ensureDeferred(fetch(url)),
                min_refresh=config.auth.jwks_min_refresh,
            )
        except (OSError, ValueError) as exc:
            raise usage.UsageError(f"cannot read an issuer's jwks_file: {exc}") from None
    try:
        return AuthService(
            clock=reactor,
            access_file=config.auth.access_file,
            gridmap_file=config.auth.gridmap_file,
            verifier=verifier,
            reload_interval=config.auth.reload_interval,
            tls=tls,
            vomsdir=config.auth.vomsdir,
            limited_proxies=config.auth.limited_proxies,
            ca_reload_interval=config.auth.ca_reload_interval,
        )
    except RulesError as exc:
        raise usage.UsageError("authorisation files have errors:\n  " + "\n  ".join(exc.errors)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise usage.UsageError(f"cannot read the authorisation files: {exc}") from None


def build_gocdb(config: Config, reactor: Any, book: DowntimeBook, shared: Any = None) -> GocdbService:
    """The `gocdb` service (idle without [gocdb] url); it reads settings and endpoints from the
    running configuration, so a reload applies at its next refresh."""
    from twisted.internet.threads import deferToThreadPool

    from fedd.endpoints import tls_policy

    if config.gocdb.ca_file:
        try:
            tls_policy(True, config.gocdb.ca_file)
        except (OSError, ValueError) as exc:
            raise usage.UsageError(f"[gocdb] ca_file {config.gocdb.ca_file}: {exc}") from None

    def to_thread(work: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return GocdbService(
        book, clock=reactor, config=config, fetch=Fetcher(reactor, to_thread), to_thread=to_thread, shared=shared
    )


IMPLICIT_POLL = 0.25  # seconds: the implicit state's poll (at most [state] poll_interval)
HOST_STATE_FILE = "host-state.sqlite"  # in the run directory: the workers' implicit state database


def build_state(config: Config, reactor: Any, instance: str, worker: WorkerRole | None = None) -> StateStore | None:
    """The `state` service on `[state] database`, or None without one (state stays per host:
    `[checksums] database` and `[health] downtime_file`).

    Without `[state] database`, the workers of `[server] workers` > 1 share an implicit SQLite
    state in their run directory (`host-state.sqlite`, WAL, `BEGIN IMMEDIATE`), which carries what
    one worker learns at run time to the others within `[state] poll_interval`: run-time downtimes
    (unless `[health] downtime_file` keeps them) and upload reservations. It lives as long as the
    run directory, as a single fedd's memory does; checksums stay in `[checksums] database`, a file
    the workers already share and that outlives restarts."""
    import socket

    from fedd import __version__

    st = config.state
    implicit = not st.database and worker is not None and worker.count > 1
    if not st.database and not implicit:
        return None
    url = str(worker.run_dir / HOST_STATE_FILE) if implicit and worker is not None else st.database
    try:
        database = open_database(url, reactor, st.timeout)
    except Exception as exc:  # psycopg missing, a URL psycopg refuses
        raise usage.UsageError(f"[state] database: {exc}") from None
    host = st.host_name or socket.gethostname()
    identity = HostIdentity(
        host=host,
        instance=instance,
        version=__version__,
        listen=" ".join(config.server.listen),
        member=host if worker is None else f"{host}/worker-{worker.index}",
    )
    queue_file = "" if implicit else st.queue_file if worker is None else worker.own_path(st.queue_file)
    return StateStore(
        database,
        clock=reactor,
        identity=identity,
        queue=st.queue,
        # the workers' own file: a look at one row costs ~0.1 ms, so a change reaches them sooner
        poll_interval=min(st.poll_interval, IMPLICIT_POLL) if implicit else st.poll_interval,
        heartbeat_interval=st.heartbeat_interval,
        timeout=st.timeout,
        queue_file=queue_file,
        implicit=implicit,
        presence=HostPresence(worker.run_dir) if worker is not None else None,
        started=worker.started if worker is not None else None,  # the host's, not this worker's
    )


class GeoCloser(Service):
    """Closes the GeoIP reader on shutdown (the endpoint fleet closes its connection pools)."""

    name = "geo"

    def __init__(self, geo: GeoLocator) -> None:
        self.geo = geo

    def stopService(self) -> Any:
        super().stopService()
        self.geo.close()


class Placer(Service):
    """At start, looks up endpoint host names (without blocking) so GeoIP can place them."""

    name = "placer"

    def __init__(self, federation: Federation, reactor: Any) -> None:
        self.federation = federation
        self.reactor = reactor

    def startService(self) -> None:
        from twisted.internet.defer import ensureDeferred

        super().startService()
        if self.federation.geo.database or self.federation.config.geo.sites:
            ensureDeferred(self.federation.locate_endpoint_hosts(self.reactor)).addErrback(
                lambda f: log.failure("placing endpoints failed", f)
            )


def emit_transitions(events: EventsService, registry: HealthRegistry) -> Callable[[Transition], None]:
    def emit(t: Transition) -> None:
        events.emit(
            f"endpoint-{t.new}" if t.new in ("online", "offline") else "endpoint-online",
            {
                "endpoint": t.endpoint,
                "previous": t.old,
                "state": t.new,
                "reason": t.reason,
                "latency_ms": registry.states[t.endpoint].latency_ms,
            },
        )

    return emit

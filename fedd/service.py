"""Build fedd's `MultiService` from a `Config`: named children `web`, `health`, `memcached`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.application.service import MultiService, Service
from twisted.internet import ssl
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.logger import Logger
from twisted.python import usage

from fedd.auth.rules import RulesError
from fedd.auth.service import AuthService
from fedd.auth.tls import GridContextFactory
from fedd.auth.tokens import TokenVerifier
from fedd.checksums.service import ChecksumService
from fedd.config import Config
from fedd.endpoints import Endpoint, HttpClient, close_endpoint, make_endpoint
from fedd.events.outbox import Outbox
from fedd.events.service import EventsService
from fedd.events.sinks import AmqpSink, SpoolSink
from fedd.events.stomp import StompSink, parse_brokers, stomp_tls
from fedd.federation import Federation, new_instance_id
from fedd.health.service import HealthRegistry, HealthService
from fedd.locate.invalidate import InvalidationLog
from fedd.locate.locator import Locator
from fedd.locate.memcache import Memcached
from fedd.namespace import Namespace
from fedd.select.geo import GeoLocator
from fedd.space.downtime import DowntimeBook
from fedd.space.gocdb import Fetcher, GocdbService
from fedd.space.service import SpaceService
from fedd.tpc.engine import TpcEngine
from fedd.web.accesslog import AccessLog
from fedd.web.lifecycle import DrainFirst, Listener, WebService
from fedd.web.metrics import Metrics, StateCollector, TlsCounter
from fedd.web.resource import FeddResource
from fedd.web.site import FeddSite, PublicBase
from fedd.writes import Writer

log = Logger(namespace="fedd")


def tls_options(config: Config) -> ssl.CertificateOptions:
    """Server TLS context from the configured PEM files (errors name the file)."""
    server = config.server
    if not server.tls_certificate or not server.tls_private_key:
        raise usage.UsageError("an ssl: listener needs tls_certificate and tls_private_key in [server]")
    try:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, Path(server.tls_certificate).read_bytes())
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, Path(server.tls_private_key).read_bytes())
        chain: list[Any] = []
        if server.tls_chain:
            pem = Path(server.tls_chain).read_bytes()
            for block in pem.split(b"-----END CERTIFICATE-----"):
                if b"BEGIN CERTIFICATE" in block:
                    chain.append(crypto.load_certificate(crypto.FILETYPE_PEM, block + b"-----END CERTIFICATE-----\n"))
    except (OSError, crypto.Error) as exc:
        raise usage.UsageError(f"cannot load the TLS certificate or key: {exc}") from None
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=cert,
        extraCertChain=chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def server_tls(config: Config) -> Any:
    """The TLS context for ssl: listeners: grid client-certificate verification when [auth] ca_dir is set."""
    auth = config.auth
    if auth is None or not auth.ca_dir:
        return tls_options(config)
    if not config.server.tls_certificate or not config.server.tls_private_key:
        raise usage.UsageError("an ssl: listener needs tls_certificate and tls_private_key in [server]")
    try:
        return GridContextFactory(
            certificate=config.server.tls_certificate,
            private_key=config.server.tls_private_key,
            chain=config.server.tls_chain,
            ca_dir=auth.ca_dir,
            require=auth.client_certificates == "required",
            crl=auth.crl,
            verify_depth=auth.verify_depth,
        )
    except (OSError, SSL.Error, crypto.Error) as exc:
        raise usage.UsageError(f"cannot set up TLS with client certificates: {exc}") from None


def listen_endpoint(reactor: Any, description: str, config: Config, tls: Any = None) -> Any:
    """`tcp:...` strings go to Twisted; `ssl:PORT[:interface=ADDR]` uses the configured certificate."""
    if description.startswith("ssl:") and "privateKey=" not in description:
        parts = description.split(":")
        kwargs: dict[str, str] = {}
        for part in parts[2:]:
            key, _, value = part.partition("=")
            if key not in ("interface", "backlog"):
                raise usage.UsageError(f"listen {description!r}: unknown option {key!r}")
            kwargs[key] = value
        try:
            port = int(parts[1])
        except (IndexError, ValueError):
            raise usage.UsageError(f"listen {description!r}: expected ssl:PORT[:interface=ADDR]") from None
        return SSL4ServerEndpoint(
            reactor,
            port,
            tls if tls is not None else tls_options(config),
            interface=kwargs.get("interface", ""),
            backlog=int(kwargs.get("backlog", "128")),
        )
    try:
        return serverFromString(reactor, description)
    except IndexError:
        raise usage.UsageError(f"listen {description!r}: no such inherited socket (not started by systemd?)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise usage.UsageError(f"listen {description!r}: {exc}") from None


class _Closer(Service):
    """Closes endpoint connection pools and the GeoIP reader on shutdown."""

    name = "closer"

    def __init__(self, endpoints: dict[str, Endpoint], geo: GeoLocator) -> None:
        self.endpoints = endpoints
        self.geo = geo

    async def _close(self) -> None:
        for endpoint in self.endpoints.values():
            await close_endpoint(endpoint)
        self.geo.close()

    def stopService(self) -> Any:
        from twisted.internet.defer import ensureDeferred

        super().stopService()
        return ensureDeferred(self._close())


def build_events(config: Config, reactor: Any) -> EventsService:
    """The `events` service; with a broker, its reconnecting AMQP or STOMP client is a child service."""
    ev = config.events
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
            tls_options=stomp_tls(ev.ca_file, ev.tls_certificate, ev.tls_private_key),
        )
    else:
        sink = AmqpSink(reactor, ev.broker, ev.exchange, timeout=ev.timeout)
    events = EventsService(ev, clock=reactor, outbox=outbox, sink=sink)
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


def build_gocdb(config: Config, reactor: Any, book: DowntimeBook, federation: Federation) -> GocdbService:
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
        book, clock=reactor, config=lambda: federation.config, fetch=Fetcher(reactor, to_thread), to_thread=to_thread
    )


class _Placer(Service):
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


def build_service(config: Config, *, reactor: Any) -> MultiService:
    tls = server_tls(config) if any(d.startswith("ssl:") for d in config.server.listen) else None
    listeners = [listen_endpoint(reactor, d, config, tls) for d in config.server.listen]  # fail fast
    auth_tls = tls if isinstance(tls, GridContextFactory) else None
    top = DrainFirst()  # on shutdown: drain the web front first, then stop the rest
    instance = new_instance_id()
    endpoints: dict[str, Endpoint] = {
        ep.id: make_endpoint(ep, reactor=reactor, presign_reuse=config.locate.presign_reuse, instance=instance)
        for ep in config.endpoints
    }
    namespace = Namespace((ep.id, fed, epath) for ep in config.endpoints for fed, epath in ep.mappings)
    try:
        geo = GeoLocator(config.geo.database, config.geo.sites, config.geo.cache_entries)
    except (OSError, ValueError) as exc:
        raise usage.UsageError(f"[geo] database {config.geo.database!r}: {exc}") from None
    registry = HealthRegistry(list(endpoints), config.health, reactor)
    memcached = None
    if config.locate.memcached:
        memcached = Memcached(reactor, config.locate.memcached, config.locate.memcached_timeout)
        memcached.setServiceParent(top)
    locator = Locator(
        clock=reactor,
        namespace=namespace,
        endpoints=endpoints,
        health=registry,
        config=config.locate,
        memcached=memcached,
    )
    if memcached is not None:
        locator.invalidations = InvalidationLog(memcached, locator, reactor)
        locator.invalidations.setServiceParent(top)
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
    _Closer(endpoints, geo).setServiceParent(top)
    _Placer(federation, reactor).setServiceParent(top)
    HealthService(registry, endpoints, reactor).setServiceParent(top)

    events = build_events(config, reactor)
    events.setServiceParent(top)
    registry.listeners.append(
        lambda t: events.emit(
            f"endpoint-{t.new}" if t.new in ("online", "offline") else "endpoint-online",
            {
                "endpoint": t.endpoint,
                "previous": t.old,
                "state": t.new,
                "reason": t.reason,
                "latency_ms": registry.states[t.endpoint].latency_ms,
            },
        )
    )
    auth = build_auth(config, reactor, auth_tls)
    if auth is not None:
        auth.setServiceParent(top)
    resource = FeddResource(federation, head_redirect=config.server.head_redirect, events=events, auth=auth)
    space = SpaceService(config, endpoints, reactor, memcached=memcached, emit=events.emit)
    space.setServiceParent(top)
    downtimes = DowntimeBook(
        {ep.id: ep.downtimes for ep in config.endpoints},
        reactor,
        path=config.health.downtime_file,
        on_change=registry.block_reads,
    )
    downtimes.setServiceParent(top)
    gocdb = build_gocdb(config, reactor, downtimes, federation)
    gocdb.setServiceParent(top)
    resource.gocdb = gocdb
    resource.writer = Writer(federation, config.write, space=space, downtimes=downtimes)
    resource.space = space
    resource.downtimes = downtimes
    resource.tpc = TpcEngine(federation, resource.writer, reactor=reactor, events=events)
    checksums = ChecksumService(config.checksums, federation=federation, reactor=reactor, emit=events.emit)
    checksums.setServiceParent(top)
    resource.checksums = checksums
    resource.srr_path = config.space.srr_path.encode()
    metrics = Metrics()
    resource.metrics = metrics
    resource.metrics_path = config.server.metrics_path.encode()
    site = FeddSite(
        resource,
        max_body=config.server.max_body_bytes,
        access_log=config.server.access_log,
        metrics=metrics,
        clock=reactor,
        proxy_agents=config.write.proxy_user_agents,
        proxy_max=config.write.proxy_max_bytes,
        header_timeout=config.server.header_timeout,
        max_connections_per_client=config.server.max_connections_per_client,
        public=PublicBase(config.server.public_url, config.server.allowed_hosts),
    )
    collector = StateCollector(federation, events, site)
    collector.space = space  # type: ignore[attr-defined]
    if tls is not None:
        counter = TlsCounter()
        counter.install(tls)
        collector.tls = counter  # type: ignore[attr-defined]
    metrics.add_state(collector)
    if config.server.access_log_file:
        access = AccessLog(config.server.access_log_file, reactor)
        try:
            access._open()
        except OSError as exc:
            raise usage.UsageError(f"cannot open access_log_file {config.server.access_log_file}: {exc}") from None
        access.setServiceParent(top)
        site.access_file = access
    site.noisy = False
    web = WebService(site, clock=reactor, drain_timeout=config.server.drain_timeout)
    for description, endpoint in zip(config.server.listen, listeners, strict=True):
        Listener(endpoint, site, description).setServiceParent(web)  # a port in use stops start-up, loudly
    web.setServiceParent(top)
    top.federation = federation  # type: ignore[attr-defined]
    top.events = events  # type: ignore[attr-defined]
    top.site = site  # type: ignore[attr-defined]
    top.resource = resource  # type: ignore[attr-defined]
    top.auth = auth  # type: ignore[attr-defined]
    top.space = space  # type: ignore[attr-defined]
    top.downtimes = downtimes  # type: ignore[attr-defined]
    return top

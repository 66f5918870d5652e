"""What a configuration holds: frozen dataclasses, one per section, and each key declared once.

A key is a dataclass field whose default is its default and whose metadata (set by `key`,
fedd.config.keys) says how its text is parsed; `SECTIONS`, the table the reader checks keys
against, is built from the fields, so a key is named in one place only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedd.config import values as v
from fedd.config.keys import Key, declare, key, keys_of, secret_keys
from fedd.config.values import Downtime, SiteRange
from fedd.events.model import EVENT_TYPES

__all__ = ["NAMED_SECTIONS", "READER_KEYS", "SECTIONS", "SECTION_TYPES", "STOMP_KEYS", "Key", "secret_keys"]


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = key(v.listen, ("tcp:8080:interface=127.0.0.1",), repeat=True)
    tls_certificate: str = key(v.text, "", file=True)
    tls_private_key: str = key(v.text, "", file=True)
    tls_chain: str = key(v.text, "", file=True)
    access_log: bool = key(v.boolean, False)
    max_body_bytes: int = key(v.positive_int, 1 << 20)
    head_redirect: bool = key(v.boolean, False)
    metrics_path: str = key(v.fed_path, "/metrics")
    access_log_file: str = key(v.text, "")  # relative to the working directory, as the docs say
    drain_timeout: float = key(v.nonneg_float, 10.0)  # seconds open requests may finish in after SIGTERM
    drain_notice: float = key(v.nonneg_float, 0.0)  # seconds of health 503 (still listening) before that
    header_timeout: float = key(v.nonneg_float, 30.0)  # seconds from a request head's first byte to its end
    idle_timeout: float = key(v.nonneg_float, 60.0)  # seconds without a byte from the client: body, keep-alive
    max_connections_per_client: int = key(v.nonneg_int, 0)  # per client address; 0 = no limit
    public_url: str = key(v.public_url, "")  # scheme://host[:port] of absolute URLs fedd builds; empty: Host
    allowed_hosts: tuple[str, ...] = key(v.host_names, ())  # Host values used as sent in absolute URLs
    workers: int = key(v.workers, 0)  # worker processes sharing the listeners; 0 (`auto`): one per core


@dataclass(frozen=True)
class LocateConfig:
    wait_budget: float = key(v.positive_float, 2.0)
    positive_ttl: float = key(v.nonneg_float, 300.0)
    negative_ttl: float = key(v.nonneg_float, 30.0)
    lru_entries: int = key(v.positive_int, 100_000)
    memcached: tuple[str, ...] = key(v.hostport, (), repeat=True)
    memcached_timeout: float = key(v.positive_float, 0.25)
    presign_reuse: float = key(v.fraction, 0.5)


@dataclass(frozen=True)
class GeoConfig:
    database: str = key(v.text, "", file=True)
    fuzz_km: float = key(v.nonneg_float, 200.0)
    latency_tolerance_ms: float = key(v.nonneg_float, 20.0)
    sites: tuple[SiteRange, ...] = key(v.site, (), name="site", repeat=True)
    cache_entries: int = key(v.positive_int, 65536)


@dataclass(frozen=True)
class HealthConfig:
    interval: float = key(v.positive_float, 30.0)
    timeout: float = key(v.positive_float, 5.0)
    failures_to_offline: int = key(v.positive_int, 3)
    successes_to_online: int = key(v.positive_int, 2)
    downtime_file: str = key(v.text, "", file=True)


@dataclass(frozen=True)
class EventsConfig:
    broker: str = key(v.broker, "", hidden=True)  # may hold a password
    exchange: str = key(v.name, "fedd")
    routing_prefix: str = key(v.prefix, "fedd")
    outbox: str = key(v.text, "fedd-outbox.sqlite")
    outbox_max_events: int = key(v.positive_int, 100_000)
    shed: str = key(v.shed, "drop-oldest")
    spool: str = key(v.text, "fedd-events.jsonl")
    spool_max_bytes: int = key(v.positive_int, 100 << 20)
    types: tuple[str, ...] = key(v.types, EVENT_TYPES)
    get_redirect_sample: float = key(v.sample, 1.0)
    flush_interval: float = key(v.positive_float, 0.05)
    idle_interval: float = key(v.positive_float, 1.0)
    timeout: float = key(v.positive_float, 10.0)
    drop_report_interval: float = key(v.positive_float, 60.0)
    # events per broker message (1: one envelope per message, as Hermes; more: a JSON array): docs/events.md
    bundle: int = key(v.in_range(int, low=1, high=10_000, what="a number from 1 to 10000", name="bundle"), 1)
    # STOMP (broker = stomp://... or stomp+ssl://..., several for fail-over): docs/events.md
    destination: str = key(v.destination, "/topic/fedd.events")
    login: str = key(v.text, "", secret=True)
    passcode: str = key(v.text, "", secret=True)
    heartbeat: float = key(v.nonneg_float, 10.0)
    receipts: str = key(v.choice("each", "batch"), "each")
    ca_file: str = key(v.text, "", file=True)
    tls_certificate: str = key(v.text, "", file=True)
    tls_private_key: str = key(v.text, "", file=True)


# the [events] keys that only apply to a STOMP broker
STOMP_KEYS = (
    "destination",
    "login",
    "passcode",
    "heartbeat",
    "receipts",
    "ca_file",
    "tls_certificate",
    "tls_private_key",
)


@dataclass(frozen=True)
class AuthConfig:
    access_file: str = key(v.text, "", file=True)
    gridmap_file: str = key(v.text, "", file=True)
    reload_interval: float = key(v.positive_float, 60.0)
    token_audience: tuple[str, ...] = key(v.text, (), repeat=True)
    jwks_min_refresh: float = key(v.nonneg_float, 60.0)
    ca_dir: str = key(v.text, "", file=True)
    vomsdir: str = key(v.text, "", file=True)
    client_certificates: str = key(v.choice("optional", "required"), "optional")
    crl: str = key(v.choice("hard", "soft"), "hard")
    ca_reload_interval: float = key(v.positive_float, 3600.0)
    limited_proxies: str = key(v.choice("allow", "read-only", "deny"), "read-only")
    verify_depth: int = key(v.nonneg_int, 10)


@dataclass(frozen=True)
class WriteConfig:
    allow_overwrite: bool = key(v.boolean, False)
    redirect_code: int = key(v.redirect_code, 307)
    presign_expiry: int = key(v.positive_int, 3600)
    proxy_user_agents: tuple[str, ...] = key(v.agent, ("rclone/",), name="proxy_user_agent", repeat=True)
    proxy_max_bytes: int = key(v.size, 0)  # 0: no limit but the endpoint's (carried uploads are streamed)


@dataclass(frozen=True)
class SpaceConfig:
    interval: float = key(v.positive_float, 300.0)
    timeout: float = key(v.positive_float, 600.0)
    stale_after: float = key(v.nonneg_float, 0.0)  # 0: three intervals
    srr_path: str = key(v.fed_path, "/.well-known/fedd/srr.json")
    srr_file: str = key(v.text, "", file=True)
    name: str = key(v.text, "fedd")
    max_list_objects: int = key(v.positive_int, 50_000_000)

    @property
    def stale_seconds(self) -> float:
        return self.stale_after or 3 * self.interval


@dataclass(frozen=True)
class TpcConfig:
    """HTTP third-party copy (COPY with Source:/Destination:); see docs/operations.md."""

    enabled: bool = key(v.boolean, True)
    allow_hosts: tuple[str, ...] = key(v.allow_host, ("*",), repeat=True)  # given patterns replace the default
    max_concurrent: int = key(v.positive_int, 20)
    timeout: float = key(v.positive_float, 3600.0)  # a whole copy
    idle_timeout: float = key(v.positive_float, 60.0)  # no byte moved
    connect_timeout: float = key(v.positive_float, 30.0)  # resolving, connecting and each answer's headers
    marker_interval: float = key(v.positive_float, 5.0)
    redirect: bool = key(v.boolean, True)  # COPY to an endpoint with tpc = yes: 307 to it
    verify_tls: bool = key(v.boolean, True)
    ca_file: str = key(v.text, "", file=True)


@dataclass(frozen=True)
class ChecksumsConfig:
    """Checksums for Want-Digest/Want-Repr-Digest; see docs/configuration.md."""

    workers: int = key(v.nonneg_int, 2)  # objects hashed at the same time; 0: never compute, answer what is known
    max_file_bytes: int = key(v.size, 100 * 10**9)  # larger files are not computed
    database: str = key(v.text, "fedd-checksums.sqlite", file=True)
    wait: float = key(v.nonneg_float, 0.0)  # seconds a HEAD waits when the client does not say (Prefer: wait=N)
    max_wait: float = key(v.nonneg_float, 60.0)  # the longest a client may ask to wait
    queue: int = key(v.positive_int, 1000)  # computations waiting for a worker; more are answered without Digest
    store_s3_metadata: bool = key(v.boolean, True)  # on writable S3 endpoints, keep values in x-amz-meta-*


@dataclass(frozen=True)
class StateConfig:
    """Durable state shared by several hosts (checksums, run-time downtimes, ...); see docs/operations.md."""

    database: str = key(v.state_database, "", hidden=True)  # "": per host as before; a path, sqlite:PATH, postgresql://
    host_name: str = key(v.text, "")  # this host's name in the shared state and the status; "": the machine's name
    poll_interval: float = key(v.positive_float, 1.0)  # seconds between looks at what other hosts changed
    heartbeat_interval: float = key(v.positive_float, 5.0)
    queue: int = key(v.positive_int, 10_000)  # writes kept while the database is unreachable
    timeout: float = key(v.positive_float, 5.0)  # connecting and each statement
    queue_file: str = key(v.text, "fedd-state-queue.jsonl")  # writes queued at a stop; written after the next start


@dataclass(frozen=True)
class ReplicateConfig:
    """Popularity-driven replication (fedd.replicate); see docs/configuration.md."""

    enabled: bool = key(v.boolean, False)
    dry_run: bool = key(v.boolean, False)  # decide, log and report, copy nothing
    paths: tuple[str, ...] = key(v.fed_path, ("/",), name="path", repeat=True)  # prefixes that may be copied
    threshold: int = key(v.positive_int, 20)  # reads from one region within `window` that make a file hot
    window: float = key(v.positive_float, 3600.0)
    interval: float = key(v.positive_float, 10.0)  # seconds between decisions (and flushes of the counts)
    min_size: int = key(v.size, 0)
    max_size: int = key(v.size, 100 * 10**9)
    targets: tuple[str, ...] = key(v.text, (), name="target", repeat=True)  # endpoint ids; none: every writable
    target_quota: int = key(v.size, 0)  # bytes of copies per endpoint; 0: no limit but the endpoint's space
    reserve: int = key(v.size, 0)  # free bytes under which an endpoint's copies are evicted
    budget: int = key(v.size, 10**12)  # bytes copied per hour, over all targets
    copies: int = key(v.positive_int, 2)  # copies at once
    cooldown: float = key(v.nonneg_float, 3600.0)  # seconds before a copied, failed or evicted file is tried again
    cold_after: float = key(v.positive_float, 7 * 86400.0)  # unread for this long: a copy is evicted


@dataclass(frozen=True)
class GocdbConfig:
    """Downtimes read from GOCDB's programmatic interface (`get_downtime`); see docs/configuration.md."""

    urls: tuple[str, ...] = key(v.gocdb_url, (), name="url", repeat=True)  # http(s) PI queries or file:/// copies
    interval: float = key(v.positive_float, 300.0)
    timeout: float = key(v.positive_float, 30.0)
    max_bytes: int = key(v.positive_size, 16 << 20)  # one document (page)
    max_pages: int = key(v.positive_int, 20)
    ca_file: str = key(v.text, "", file=True)
    service_types: tuple[str, ...] = key(v.service_types, ())  # lower case; empty: every service type
    outage: str = key(v.choice("all", "read", "write"), "all")  # scope an OUTAGE becomes
    warning: str = key(v.choice("none", "write", "read", "all"), "none")  # none: shown, not applied


@dataclass(frozen=True)
class ConfirmConfig:
    """Confirmed uploads: after a 307 for a PUT, fedd checks that the object landed; docs/configuration.md."""

    enabled: bool = key(v.boolean, True)
    deadline: float = key(v.positive_float, 3600.0)  # seconds from the redirect; later: put-failed
    poll_initial: float = key(v.positive_float, 1.0)  # first look at the target, then backoff
    poll_factor: float = key(v.in_range(float, low=1.0, high=10.0, what="a number from 1 to 10"), 2.0)
    poll_max: float = key(v.positive_float, 60.0)  # longest wait between two looks
    max_pending: int = key(v.positive_int, 100_000)  # more uploads at once are not confirmed (counted)
    max_polls: int = key(v.positive_int, 20)  # looks at targets running at once
    checksum_wait: float = key(v.nonneg_float, 0.0)  # >0: compute adler32, wait this long; 0: only known values
    broker: str = key(v.broker, "", hidden=True)  # AMQP broker RGW pushes to; "": [events] broker
    notifies: tuple[v.RgwNotify, ...] = key(v.rgw_notify, (), name="notify", repeat=True)
    pending_file: str = key(v.text, "fedd-pending.sqlite")  # pending uploads kept across restarts; "": memory only


@dataclass(frozen=True)
class IssuerSettings:
    id: str
    issuer: str = key(v.text, "")
    jwks_url: str = key(v.url, "")
    jwks_file: str = key(v.text, "", file=True)
    base_path: str = key(v.fed_path, "/")


@dataclass(frozen=True)
class EndpointConfig:
    """One `[endpoint ID]`; which keys each kind takes is declared in `fedd.config.endpoints`."""

    id: str
    kind: str = field(metadata=declare(v.kind))
    url: str = key(v.url, "")
    path: str = key(v.text, "", file=True)
    bucket: str = key(v.text, "")
    region: str = key(v.text, "us-east-1")
    access_key: str = key(v.text, "", secret=True)
    secret_key: str = key(v.text, "", secret=True)
    presign_expiry: int = key(v.positive_int, 3600)
    mappings: tuple[tuple[str, str], ...] = key(v.mapping, (), name="map", repeat=True)  # none given: / /
    lat: float | None = key(v.lat, None)
    lon: float | None = key(v.lon, None)
    read: bool = key(v.boolean, True)
    list: bool = key(v.boolean, True)
    write: bool = key(v.boolean, False)
    timeout: float = key(v.positive_float, 5.0)
    weight: float = key(v.positive_float, 1.0)
    health_path: str = key(v.text, "")
    verify_tls: bool = key(v.boolean, True)
    ca_file: str = key(v.text, "", file=True)
    account: str = key(v.text, "")
    container: str = key(v.text, "")
    account_key: str = key(v.text, "", secret=True)
    min_free: int = key(v.size, 0)
    quota: int | None = key(v.size, None)
    space_source: str = key(v.choice(*v.SPACE_SOURCES), "auto")
    share: str = key(v.text, "")
    vos: tuple[str, ...] = key(v.text, (), name="vo", repeat=True)
    downtimes: tuple[Downtime, ...] = key(v.downtime, (), name="downtime", repeat=True)
    source: str = ""  # file:line of the section (not a key)
    tpc: bool = key(v.boolean, False)  # the storage does HTTP-TPC itself (dCache, StoRM, XRootD): COPY goes there
    # GOCDB service host names; empty: the URL's host; ("none",): none
    gocdb_hostnames: tuple[str, ...] = key(v.gocdb_hostname, (), name="gocdb_hostname", repeat=True)

    @property
    def share_name(self) -> str:
        return self.share or self.id


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    locate: LocateConfig = LocateConfig()
    geo: GeoConfig = GeoConfig()
    health: HealthConfig = HealthConfig()
    events: EventsConfig = EventsConfig()
    write: WriteConfig = WriteConfig()
    space: SpaceConfig = SpaceConfig()
    checksums: ChecksumsConfig = ChecksumsConfig()
    tpc: TpcConfig = TpcConfig()
    gocdb: GocdbConfig = GocdbConfig()
    state: StateConfig = StateConfig()
    replicate: ReplicateConfig = ReplicateConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    auth: AuthConfig | None = None
    issuers: tuple[IssuerSettings, ...] = ()
    endpoints: tuple[EndpointConfig, ...] = ()
    files: tuple[str, ...] = ()

    def endpoint(self, endpoint_id: str) -> EndpointConfig:
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        raise KeyError(endpoint_id)


# section name -> its dataclass; [issuer ID] and [endpoint ID] are named, the others merge across files
SECTION_TYPES: Mapping[str, type] = {
    "server": ServerConfig,
    "locate": LocateConfig,
    "geo": GeoConfig,
    "health": HealthConfig,
    "events": EventsConfig,
    "auth": AuthConfig,
    "write": WriteConfig,
    "space": SpaceConfig,
    "tpc": TpcConfig,
    "gocdb": GocdbConfig,
    "state": StateConfig,
    "replicate": ReplicateConfig,
    "confirm": ConfirmConfig,
    "checksums": ChecksumsConfig,
    "issuer": IssuerSettings,
    "endpoint": EndpointConfig,
}
NAMED_SECTIONS = ("endpoint", "issuer")
# keys the reader handles itself, in the sections named
READER_KEYS = {"server": ("include",)}


SECTIONS: Mapping[str, Mapping[str, Key]] = {name: keys_of(cls) for name, cls in SECTION_TYPES.items()}

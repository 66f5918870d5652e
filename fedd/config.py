"""Configuration: text in, frozen values out.

The format is INI-like and line-oriented so that every error can name its file and line::

    [server]
    listen = tcp:8080:interface=127.0.0.1
    include = /etc/fedd/conf.d/*.conf

    [endpoint cern-s3]
    kind = s3
    url = https://s3.cern.ch
    bucket = atlas
    map = /atlas /rucio/atlas

`parse_config` collects *all* errors and raises one `ConfigError`; nothing here does network I/O.
Unknown sections and keys are errors. Keys marked repeatable may appear several times.
"""

from __future__ import annotations

import base64
import glob
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedd.events.model import EVENT_TYPES

ENDPOINT_KINDS = ("s3", "dav", "local", "azure")
SPACE_SOURCES = ("auto", "rfc4331", "listing", "ceph-admin", "none")
DOWNTIME_SCOPES = ("write", "read", "all")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(Exception):
    """Every problem found in a configuration, one per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class SiteRange:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    lat: float
    lon: float


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_chain: str = ""
    access_log: bool = False
    max_body_bytes: int = 1 << 20
    head_redirect: bool = False
    metrics_path: str = "/metrics"
    access_log_file: str = ""
    drain_timeout: float = 10.0  # seconds open requests may finish in after SIGTERM
    header_timeout: float = 30.0  # seconds from the first byte of a request head to its end; 0 = off
    max_connections_per_client: int = 0  # open connections per client address; 0 = no limit
    public_url: str = ""  # scheme://host[:port] of absolute URLs fedd builds; empty = from Host
    allowed_hosts: tuple[str, ...] = ()  # Host values used as sent in absolute URLs


@dataclass(frozen=True)
class LocateConfig:
    wait_budget: float = 2.0
    positive_ttl: float = 300.0
    negative_ttl: float = 30.0
    lru_entries: int = 100_000
    memcached: tuple[str, ...] = ()
    memcached_timeout: float = 0.25
    presign_reuse: float = 0.5


@dataclass(frozen=True)
class GeoConfig:
    database: str = ""
    fuzz_km: float = 200.0
    latency_tolerance_ms: float = 20.0
    sites: tuple[SiteRange, ...] = ()
    cache_entries: int = 65536


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 30.0
    timeout: float = 5.0
    failures_to_offline: int = 3
    successes_to_online: int = 2
    downtime_file: str = ""


@dataclass(frozen=True)
class EventsConfig:
    broker: str = field(default="", repr=False)  # may hold a password
    exchange: str = "fedd"
    routing_prefix: str = "fedd"
    outbox: str = "fedd-outbox.sqlite"
    outbox_max_events: int = 100_000
    shed: str = "drop-oldest"
    spool: str = "fedd-events.jsonl"
    spool_max_bytes: int = 100 << 20
    types: tuple[str, ...] = EVENT_TYPES
    get_redirect_sample: float = 1.0
    flush_interval: float = 0.05
    idle_interval: float = 1.0
    timeout: float = 10.0
    drop_report_interval: float = 60.0
    # STOMP (broker = stomp://... or stomp+ssl://..., several for fail-over): docs/events.md
    destination: str = "/topic/fedd.events"
    login: str = field(default="", repr=False)
    passcode: str = field(default="", repr=False)
    heartbeat: float = 10.0
    receipts: str = "each"
    ca_file: str = ""
    tls_certificate: str = ""
    tls_private_key: str = ""


@dataclass(frozen=True)
class AuthConfig:
    access_file: str = ""
    gridmap_file: str = ""
    reload_interval: float = 60.0
    token_audience: tuple[str, ...] = ()
    jwks_min_refresh: float = 60.0
    ca_dir: str = ""
    vomsdir: str = ""
    client_certificates: str = "optional"
    crl: str = "hard"
    ca_reload_interval: float = 3600.0
    limited_proxies: str = "read-only"
    verify_depth: int = 10


@dataclass(frozen=True)
class WriteConfig:
    allow_overwrite: bool = False
    redirect_code: int = 307
    presign_expiry: int = 3600
    proxy_user_agents: tuple[str, ...] = ("rclone/",)
    proxy_max_bytes: int = 0  # 0: no limit but the endpoint's (carried uploads are streamed)


@dataclass(frozen=True)
class SpaceConfig:
    interval: float = 300.0
    timeout: float = 600.0
    stale_after: float = 0.0  # 0: three intervals
    srr_path: str = "/.well-known/fedd/srr.json"
    srr_file: str = ""
    name: str = "fedd"
    max_list_objects: int = 50_000_000

    @property
    def stale_seconds(self) -> float:
        return self.stale_after or 3 * self.interval


@dataclass(frozen=True)
class TpcConfig:
    """HTTP third-party copy (COPY with Source:/Destination:); see docs/operations.md."""

    enabled: bool = True
    allow_hosts: tuple[str, ...] = ("*",)  # given patterns replace the default
    max_concurrent: int = 20
    timeout: float = 3600.0  # a whole copy
    idle_timeout: float = 60.0  # no byte moved
    connect_timeout: float = 30.0  # resolving, connecting and each answer's headers
    marker_interval: float = 5.0
    redirect: bool = True  # COPY to an endpoint with tpc = yes: 307 to it
    verify_tls: bool = True
    ca_file: str = ""


@dataclass(frozen=True)
class ChecksumsConfig:
    """Checksums for Want-Digest/Want-Repr-Digest; see docs/configuration.md."""

    workers: int = 2  # objects hashed at the same time; 0: never compute, answer what is known
    max_file_bytes: int = 100 * 10**9  # larger files are not computed
    database: str = "fedd-checksums.sqlite"
    wait: float = 0.0  # seconds a HEAD waits for a computation when the client does not say (Prefer: wait=N)
    max_wait: float = 60.0  # the longest a client may ask to wait
    queue: int = 1000  # computations waiting for a worker; more are refused (answered without Digest)
    store_s3_metadata: bool = True  # on writable S3 endpoints, keep computed values in x-amz-meta-*


@dataclass(frozen=True)
class GocdbConfig:
    """Downtimes read from GOCDB's programmatic interface (`get_downtime`); see docs/configuration.md."""

    urls: tuple[str, ...] = ()  # http(s):// PI queries or file:/// copies; none: GOCDB is not read
    interval: float = 300.0
    timeout: float = 30.0
    max_bytes: int = 16 << 20  # one document (page)
    max_pages: int = 20
    ca_file: str = ""
    service_types: tuple[str, ...] = ()  # lower case; empty: every service type
    outage: str = "all"  # scope an OUTAGE becomes
    warning: str = "none"  # scope a WARNING becomes; none: shown, not applied


@dataclass(frozen=True)
class Downtime:
    """A planned downtime of one endpoint: no writes (scope write), no reads (read), or neither (all)."""

    start: float
    end: float
    scope: str = "all"
    reason: str = ""

    def blocks(self, what: str, now: float) -> bool:
        return self.start <= now < self.end and self.scope in (what, "all")

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "scope": self.scope, "reason": self.reason}


@dataclass(frozen=True)
class IssuerSettings:
    id: str
    issuer: str = ""
    jwks_url: str = ""
    jwks_file: str = ""
    base_path: str = "/"


@dataclass(frozen=True)
class EndpointConfig:
    id: str
    kind: str
    url: str = ""
    path: str = ""
    bucket: str = ""
    region: str = "us-east-1"
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    presign_expiry: int = 3600
    mappings: tuple[tuple[str, str], ...] = ()
    lat: float | None = None
    lon: float | None = None
    read: bool = True
    list: bool = True
    write: bool = False
    timeout: float = 5.0
    weight: float = 1.0
    health_path: str = ""
    verify_tls: bool = True
    ca_file: str = ""
    account: str = ""
    container: str = ""
    account_key: str = field(default="", repr=False)
    min_free: int = 0
    quota: int | None = None
    space_source: str = "auto"
    share: str = ""
    vos: tuple[str, ...] = ()
    downtimes: tuple[Downtime, ...] = ()
    source: str = ""
    tpc: bool = False  # the storage does HTTP-TPC itself (dCache, StoRM, XRootD): COPY is redirected to it
    gocdb_hostnames: tuple[str, ...] = ()  # GOCDB service host names; empty: the URL's host; ("none",): none

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
    auth: AuthConfig | None = None
    issuers: tuple[IssuerSettings, ...] = ()
    endpoints: tuple[EndpointConfig, ...] = ()
    files: tuple[str, ...] = ()

    def endpoint(self, endpoint_id: str) -> EndpointConfig:
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        raise KeyError(endpoint_id)


# --- value parsers: each takes the raw text and returns a value or raises ValueError ---------


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes/no, got {text!r}")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _lat(text: str) -> float:
    value = float(text)
    if not -90 <= value <= 90:
        raise ValueError(f"latitude out of range: {text!r}")
    return value


def _lon(text: str) -> float:
    value = float(text)
    if not -180 <= value <= 180:
        raise ValueError(f"longitude out of range: {text!r}")
    return value


def _text(text: str) -> str:
    return text


def _fed_path(text: str) -> str:
    if not text.startswith("/") or "//" in text or any(s in (".", "..") for s in text.split("/")):
        raise ValueError(f"expected an absolute normalised path, got {text!r}")
    return "/" + text.strip("/") if text != "/" else "/"


def _mapping(text: str) -> tuple[str, str]:
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected '<federation prefix> <endpoint prefix>', got {text!r}")
    return (_fed_path(parts[0]), _fed_path(parts[1]))


def _usable_url(text: str) -> bool:
    """No control characters, and urlsplit finds a host and reads the port (an unclosed '[' or a port
    out of range would raise ValueError later, when the endpoint or broker is built)."""
    if any(c < " " or c == "\x7f" for c in text):
        return False
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    return port != 0 and bool(parts.hostname)  # `http://user@` has no host


def _url(text: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", text) or not _usable_url(text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


_HOST_PORT = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"


def _public_url(text: str) -> str:
    if not re.fullmatch(rf"https?://{_HOST_PORT}/?", text):
        raise ValueError(f"expected http(s)://host[:port] with no path, got {text!r}")
    return text.rstrip("/").lower()


def _host_names(text: str) -> tuple[str, ...]:
    names = tuple(text.replace(",", " ").split())
    bad = [n for n in names if not re.fullmatch(_HOST_PORT, n)]
    if bad or not names:
        raise ValueError(f"expected host names (host or host:port), got {' '.join(bad) or 'nothing'!r}")
    return tuple(n.lower() for n in names)


def _kind(text: str) -> str:
    if text not in ENDPOINT_KINDS:
        raise ValueError(f"unknown endpoint kind {text!r} (known: {', '.join(ENDPOINT_KINDS)})")
    return text


def _hostport(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return text


def _listen(text: str) -> str:
    kind = text.split(":", 1)[0]
    if kind not in ("tcp", "ssl", "tcp6", "unix", "systemd"):
        raise ValueError(f"expected a tcp:/ssl:/tcp6:/unix:/systemd: listen string, got {text!r}")
    return text


def _site(text: str) -> SiteRange:
    parts = text.split()
    if len(parts) != 3:
        raise ValueError(f"expected '<network> <lat> <lon>', got {text!r}")
    return SiteRange(ipaddress.ip_network(parts[0], strict=False), _lat(parts[1]), _lon(parts[2]))


def _broker(text: str) -> str:
    if text.startswith("stomp"):  # several, for fail-over (Hermes' broker list)
        urls = text.replace(",", " ").split()
        bad = [u for u in urls if not (re.match(r"^stomp(\+ssl)?://[^/\s]+(/[^/\s]*)?$", u) and _usable_url(u))]
        if bad:
            raise ValueError(f"expected stomp://host:port or stomp+ssl://host:port URLs, got {bad[0]!r}")
        return ", ".join(urls)
    if text and not (re.match(r"^amqps?://[^/\s]+(/\S*)?$", text) and _usable_url(text)):
        raise ValueError(
            "expected amqp://user:password@host:port/vhost, stomp://host:port[, stomp://...] "
            "(or empty for the spool file)"
        )
    return text


def _destination(text: str) -> str:
    if not text or any(c < " " or c == "\x7f" for c in text) or len(text) > 255:
        raise ValueError(f"expected a STOMP destination such as /topic/fedd.events, got {text!r}")
    return text


def _name(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.:-]{1,255}$", text):
        raise ValueError(f"expected an AMQP name (letters, digits, '_.:-'), got {text!r}")
    return text


def _prefix(text: str) -> str:
    return _name(text) if text else text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _shed(text: str) -> str:
    if text not in ("drop-oldest", "drop-newest"):
        raise ValueError(f"expected drop-oldest or drop-newest, got {text!r}")
    return text


def _types(text: str) -> tuple[str, ...]:
    names = tuple(text.replace(",", " ").split())
    if names == ("all",):
        return EVENT_TYPES
    if names in (("none",), ()):
        return ()
    unknown = [n for n in names if n not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)}, all)")
    return names


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "p": 10**15,
    "pb": 10**15,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
}


def _size(text: str) -> int:
    """A byte count: `1000000`, `500G`, `1.5TB` (powers of 1000), `2TiB` (powers of 1024)."""
    match = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 1000000, 500G, 1.5TB or 2TiB, got {text!r}")
    # exact decimal arithmetic: a float loses bytes past 2**53 and makes 1.001G 1000999999
    value = Fraction(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value >= 1 << 63:
        raise ValueError(f"size too large: {text!r}")
    return int(value)


def _when(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time such as 2026-12-01T08:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _downtime(text: str) -> Downtime:
    parts = text.split(None, 3)
    if len(parts) < 2:
        raise ValueError(f"expected '<start> <end> [write|read|all] [reason]', got {text!r}")
    start, end = _when(parts[0]), _when(parts[1])
    if end <= start:
        raise ValueError(f"downtime ends before it starts: {text!r}")
    scope = parts[2] if len(parts) > 2 else "all"
    if scope not in DOWNTIME_SCOPES:
        raise ValueError(f"downtime scope must be one of {', '.join(DOWNTIME_SCOPES)}, got {scope!r}")
    return Downtime(start, end, scope, parts[3] if len(parts) > 3 else "")


def _gocdb_url(text: str) -> str:
    if text.startswith("file://"):
        path = text[len("file://") :]
        if not path.startswith("/") or any(c < " " or c == "\x7f" for c in path):
            raise ValueError(f"expected file:///absolute/path, got {text!r}")
        return text
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", text) or not _usable_url(text):
        raise ValueError(f"expected an http(s):// URL of GOCDB's get_downtime or a file:/// path, got {text!r}")
    return text


def _positive_size(text: str) -> int:
    value = _size(text)
    if value <= 0:
        raise ValueError(f"expected a size above 0, got {text!r}")
    return value


def _gocdb_hostname(text: str) -> str:
    name = text.lower().rstrip(".")
    if name != "none" and not re.fullmatch(r"[a-z0-9](?:[a-z0-9.\-]{0,251}[a-z0-9])?", name):
        raise ValueError(f"expected a host name as GOCDB lists it (or none), got {text!r}")
    return name


def _service_types(text: str) -> tuple[str, ...]:
    names = tuple(n.lower() for n in text.replace(",", " ").split())
    if not names or any(not re.fullmatch(r"[a-z0-9][a-z0-9._\-]{0,99}", n) for n in names):
        raise ValueError(f"expected GOCDB service types such as 'webdav SRM xrootd', got {text!r}")
    return names


def _agent(text: str) -> str:
    if text == "none":
        return ""
    if not re.match(r"^[\x21-\x7e][\x20-\x7e]{0,99}$", text):
        raise ValueError(f"expected the start of a User-Agent header (printable ASCII), got {text!r}")
    return text


def _redirect_code(text: str) -> int:
    if text not in ("302", "307"):
        raise ValueError(f"expected 302 or 307, got {text!r}")
    return int(text)


def _allow_host(text: str) -> str:
    from fedd.tpc.guard import parse_host_pattern

    return parse_host_pattern(text).text


def _sample(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"expected a fraction in [0, 1], got {text!r}")
    return value


@dataclass(frozen=True)
class _Key:
    parse: Callable[[str], Any]
    attr: str = ""
    repeat: bool = False


_SECTIONS: dict[str, dict[str, _Key]] = {
    "server": {
        "listen": _Key(_listen, repeat=True),
        "tls_certificate": _Key(_text),
        "tls_private_key": _Key(_text),
        "tls_chain": _Key(_text),
        "access_log": _Key(_bool),
        "max_body_bytes": _Key(_positive_int),
        "head_redirect": _Key(_bool),
        "metrics_path": _Key(_fed_path),
        "access_log_file": _Key(_text),
        "drain_timeout": _Key(_nonneg_float),
        "header_timeout": _Key(_nonneg_float),
        "max_connections_per_client": _Key(_nonneg_int),
        "public_url": _Key(_public_url),
        "allowed_hosts": _Key(_host_names),
    },
    "locate": {
        "wait_budget": _Key(_positive_float),
        "positive_ttl": _Key(_nonneg_float),
        "negative_ttl": _Key(_nonneg_float),
        "lru_entries": _Key(_positive_int),
        "memcached": _Key(_hostport, repeat=True),
        "memcached_timeout": _Key(_positive_float),
        "presign_reuse": _Key(_fraction),
    },
    "geo": {
        "database": _Key(_text),
        "fuzz_km": _Key(_nonneg_float),
        "latency_tolerance_ms": _Key(_nonneg_float),
        "site": _Key(_site, attr="sites", repeat=True),
        "cache_entries": _Key(_positive_int),
    },
    "health": {
        "interval": _Key(_positive_float),
        "timeout": _Key(_positive_float),
        "failures_to_offline": _Key(_positive_int),
        "successes_to_online": _Key(_positive_int),
        "downtime_file": _Key(_text),
    },
    "events": {
        "broker": _Key(_broker),
        "exchange": _Key(_name),
        "routing_prefix": _Key(_prefix),
        "outbox": _Key(_text),
        "outbox_max_events": _Key(_positive_int),
        "shed": _Key(_shed),
        "spool": _Key(_text),
        "spool_max_bytes": _Key(_positive_int),
        "types": _Key(_types),
        "get_redirect_sample": _Key(_sample),
        "flush_interval": _Key(_positive_float),
        "idle_interval": _Key(_positive_float),
        "timeout": _Key(_positive_float),
        "drop_report_interval": _Key(_positive_float),
        "destination": _Key(_destination),
        "login": _Key(_text),
        "login_file": _Key(_text),
        "login_env": _Key(_text),
        "passcode": _Key(_text),
        "passcode_file": _Key(_text),
        "passcode_env": _Key(_text),
        "heartbeat": _Key(_nonneg_float),
        "receipts": _Key(_choice("each", "batch")),
        "ca_file": _Key(_text),
        "tls_certificate": _Key(_text),
        "tls_private_key": _Key(_text),
    },
    "auth": {
        "access_file": _Key(_text),
        "gridmap_file": _Key(_text),
        "reload_interval": _Key(_positive_float),
        "token_audience": _Key(_text, repeat=True),
        "jwks_min_refresh": _Key(_nonneg_float),
        "ca_dir": _Key(_text),
        "vomsdir": _Key(_text),
        "client_certificates": _Key(_choice("optional", "required")),
        "crl": _Key(_choice("hard", "soft")),
        "ca_reload_interval": _Key(_positive_float),
        "limited_proxies": _Key(_choice("allow", "read-only", "deny")),
        "verify_depth": _Key(_nonneg_int),
    },
    "write": {
        "allow_overwrite": _Key(_bool),
        "redirect_code": _Key(_redirect_code),
        "presign_expiry": _Key(_positive_int),
        "proxy_user_agent": _Key(_agent, attr="proxy_user_agents", repeat=True),
        "proxy_max_bytes": _Key(_size),
    },
    "space": {
        "interval": _Key(_positive_float),
        "timeout": _Key(_positive_float),
        "stale_after": _Key(_nonneg_float),
        "srr_path": _Key(_fed_path),
        "srr_file": _Key(_text),
        "name": _Key(_text),
        "max_list_objects": _Key(_positive_int),
    },
    "tpc": {
        "enabled": _Key(_bool),
        "allow_hosts": _Key(_allow_host, repeat=True),
        "max_concurrent": _Key(_positive_int),
        "timeout": _Key(_positive_float),
        "idle_timeout": _Key(_positive_float),
        "connect_timeout": _Key(_positive_float),
        "marker_interval": _Key(_positive_float),
        "redirect": _Key(_bool),
        "verify_tls": _Key(_bool),
        "ca_file": _Key(_text),
    },
    "gocdb": {
        "url": _Key(_gocdb_url, attr="urls", repeat=True),
        "interval": _Key(_positive_float),
        "timeout": _Key(_positive_float),
        "max_bytes": _Key(_positive_size),
        "max_pages": _Key(_positive_int),
        "ca_file": _Key(_text),
        "service_types": _Key(_service_types),
        "outage": _Key(_choice("all", "read", "write")),
        "warning": _Key(_choice("none", "write", "read", "all")),
    },
    "checksums": {
        "workers": _Key(_nonneg_int),
        "max_file_bytes": _Key(_size),
        "database": _Key(_text),
        "wait": _Key(_nonneg_float),
        "max_wait": _Key(_nonneg_float),
        "queue": _Key(_positive_int),
        "store_s3_metadata": _Key(_bool),
    },
    "issuer": {
        "issuer": _Key(_text),
        "jwks_url": _Key(_url),
        "jwks_file": _Key(_text),
        "base_path": _Key(_fed_path),
    },
    "endpoint": {
        "kind": _Key(_kind),
        "url": _Key(_url),
        "path": _Key(_text),
        "bucket": _Key(_text),
        "region": _Key(_text),
        "access_key": _Key(_text),
        "access_key_file": _Key(_text),
        "access_key_env": _Key(_text),
        "secret_key": _Key(_text),
        "secret_key_file": _Key(_text),
        "secret_key_env": _Key(_text),
        "presign_expiry": _Key(_positive_int),
        "map": _Key(_mapping, attr="mappings", repeat=True),
        "lat": _Key(_lat),
        "lon": _Key(_lon),
        "read": _Key(_bool),
        "list": _Key(_bool),
        "write": _Key(_bool),
        "timeout": _Key(_positive_float),
        "weight": _Key(_positive_float),
        "health_path": _Key(_text),
        "verify_tls": _Key(_bool),
        "ca_file": _Key(_text),
        "account": _Key(_text),
        "container": _Key(_text),
        "account_key": _Key(_text),
        "account_key_file": _Key(_text),
        "account_key_env": _Key(_text),
        "min_free": _Key(_size),
        "quota": _Key(_size),
        "space_source": _Key(_choice(*SPACE_SOURCES)),
        "share": _Key(_text),
        "vo": _Key(_text, attr="vos", repeat=True),
        "downtime": _Key(_downtime, attr="downtimes", repeat=True),
        "tpc": _Key(_bool),
        "gocdb_hostname": _Key(_gocdb_hostname, attr="gocdb_hostnames", repeat=True),
    },
}
_SECRET_SOURCES = ("access_key", "secret_key", "account_key")
_NAMED_SECTIONS = ("endpoint", "issuer")
# values naming files: relative ones are relative to the file they are written in
_FILE_KEYS = frozenset(
    {
        "path",
        "ca_file",
        "access_key_file",
        "secret_key_file",
        "account_key_file",
        "login_file",
        "passcode_file",
        "srr_file",
        "downtime_file",
        "tls_certificate",
        "tls_private_key",
        "tls_chain",
        "database",
        "access_file",
        "gridmap_file",
        "jwks_file",
        "ca_dir",
        "vomsdir",
    }
)


@dataclass
class _Section:
    name: str
    arg: str
    where: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.errors: list[str] = []
        self.sections: list[_Section] = []
        self.files: list[str] = []
        self.environ = environ

    def read_file(self, path: str, where: str) -> None:
        real = os.path.realpath(path)
        if real in self.files:
            self.errors.append(f"{where}: {path} is included twice (include loop?)")
            return
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.errors.append(f"{where}: cannot read {path}: {exc}")
            return
        self.files.append(real)
        self.read_text(text, path)

    def read_text(self, text: str, name: str) -> None:
        current: _Section | None = None
        # lines end at \n only, as in editors: str.splitlines also splits at \x0c, \x85, \u2028, ...
        for number, raw in enumerate(text.split("\n"), 1):
            where = f"{name}:{number}"
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = self._start_section(line, where)
                continue
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                self.errors.append(f"{where}: expected 'key = value' or '[section]', got {line!r}")
                continue
            if current is None:
                self.errors.append(f"{where}: {key!r} outside of any [section]")
                continue
            if current.name == "server" and key == "include":
                self._include(value, name, where)
                continue
            if key in _FILE_KEYS and value and value != "builtin" and not os.path.isabs(value):
                value = os.path.join(os.path.dirname(os.path.abspath(name)), value)
            self._set(current, key, value, where)

    def _start_section(self, line: str, where: str) -> _Section | None:
        if not line.endswith("]"):
            self.errors.append(f"{where}: malformed section header {line!r}")
            return None
        name, _, arg = line[1:-1].strip().partition(" ")
        arg = arg.strip()
        if name not in _SECTIONS:
            self.errors.append(f"{where}: unknown section [{name}] (known: {', '.join(_SECTIONS)})")
            return None
        if name in _NAMED_SECTIONS:
            if not _ID_RE.match(arg):
                self.errors.append(f"{where}: {name} needs an id of letters, digits, '.-_': [{line[1:-1]}]")
                return None
            for other in self.sections:
                if other.name == name and other.arg == arg:
                    self.errors.append(f"{where}: {name} {arg!r} already defined at {other.where}")
                    return None
        elif arg:
            self.errors.append(f"{where}: section [{name}] takes no argument")
            return None
        section = _Section(name, arg, where)
        self.sections.append(section)
        return section

    def _include(self, pattern: str, name: str, where: str) -> None:
        base = os.path.dirname(os.path.abspath(name)) if os.path.exists(name) else os.getcwd()
        full = os.path.join(base, pattern)
        matches = sorted(glob.glob(full))
        if not matches and not glob.has_magic(full):
            self.errors.append(f"{where}: include {pattern!r}: no such file")
        for path in matches:
            self.read_file(path, where)

    def _set(self, section: _Section, key: str, value: str, where: str) -> None:
        schema = _SECTIONS[section.name].get(key)
        if schema is None:
            known = ", ".join(sorted(_SECTIONS[section.name]))
            self.errors.append(f"{where}: unknown key {key!r} in [{section.name}] (known: {known})")
            return
        try:
            parsed = schema.parse(value)
        except ValueError as exc:
            self.errors.append(f"{where}: {key}: {exc}")
            return
        attr = schema.attr or key
        if schema.repeat:
            section.values.setdefault(attr, []).append(parsed)
        elif attr in section.values:
            self.errors.append(f"{where}: {key!r} repeated (first at {section.lines[attr]})")
            return
        else:
            section.values[attr] = parsed
        section.lines.setdefault(attr, where)


def _resolve_secret(
    values: dict[str, Any], name: str, environ: Mapping[str, str], where: str, errors: list[str]
) -> None:
    sources = [k for k in (name, f"{name}_file", f"{name}_env") if k in values]
    if len(sources) > 1:
        errors.append(f"{where}: give only one of {', '.join(sources)}")
        return
    if f"{name}_file" in values:
        path = values.pop(f"{name}_file")
        try:
            values[name] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            errors.append(f"{where}: {name}_file: cannot read {path}: {exc.strerror}")
    elif f"{name}_env" in values:
        var = values.pop(f"{name}_env")
        if var not in environ:
            errors.append(f"{where}: {name}_env: environment variable {var} is not set")
        else:
            values[name] = environ[var]


_KIND_KEYS = {
    "bucket": ("s3",),
    "access_key": ("s3",),
    "secret_key": ("s3",),
    "region": ("s3",),
    "account": ("azure",),
    "container": ("azure",),
    "account_key": ("azure",),
}


def _build_endpoint(section: _Section, environ: Mapping[str, str], errors: list[str]) -> EndpointConfig | None:
    values = dict(section.values)
    where = section.where
    before = len(errors)
    for name in _SECRET_SOURCES:
        _resolve_secret(values, name, environ, where, errors)
    kind = values.get("kind")
    if kind is None:
        errors.append(f"{where}: endpoint {section.arg!r} has no 'kind'")
        return None
    required = {
        "s3": ("url", "bucket", "access_key", "secret_key"),
        "dav": ("url",),
        "local": ("path",),
        "azure": ("url", "account", "container", "account_key"),
    }[kind]
    for key in required:
        if not values.get(key):
            errors.append(f"{where}: endpoint {section.arg!r} (kind {kind}) needs {key!r}")
    if ("lat" in values) != ("lon" in values):
        errors.append(f"{where}: endpoint {section.arg!r}: give both lat and lon, or neither")
    if kind == "local" and values.get("write"):
        errors.append(
            f"{where}: endpoint {section.arg!r}: local endpoints are read-only (write = yes needs s3, dav or azure)"
        )
    if kind == "local" and values.get("path") and not os.path.isdir(values["path"]):
        errors.append(f"{where}: endpoint {section.arg!r}: path {values['path']!r} is not a directory")
    for key, kinds in _KIND_KEYS.items():
        if key in values and kind not in kinds:
            errors.append(f"{where}: endpoint {section.arg!r}: {key!r} only applies to kind {' or '.join(kinds)}")
    if kind == "azure" and values.get("account_key"):
        try:
            base64.b64decode(values["account_key"], validate=True)
        except ValueError:
            errors.append(f"{where}: endpoint {section.arg!r}: account_key is not base64 (copy it from the portal)")
    if "mappings" not in values:
        values["mappings"] = [("/", "/")]
    feds = [m[0] for m in values["mappings"]]
    if len(set(feds)) != len(feds):
        errors.append(f"{where}: endpoint {section.arg!r}: a federation prefix is mapped twice")
    if len(errors) > before:
        return None
    values["mappings"] = tuple(values["mappings"])
    if "none" in values.get("gocdb_hostnames", ()) and len(values["gocdb_hostnames"]) > 1:
        errors.append(f"{where}: endpoint {section.arg!r}: gocdb_hostname = none cannot go with other names")
        return None
    for key in ("vos", "downtimes", "gocdb_hostnames"):
        if key in values:
            values[key] = tuple(values[key])
    return EndpointConfig(id=section.arg, source=where, **values)


_STOMP_KEYS = (
    "destination",
    "login",
    "passcode",
    "heartbeat",
    "receipts",
    "ca_file",
    "tls_certificate",
    "tls_private_key",
)


def _check_events(values: dict[str, Any], reader: _Reader, errors: list[str]) -> None:
    """STOMP credentials from a file or the environment; STOMP keys only with a STOMP broker."""
    lines = {k: v for s in reader.sections if s.name == "events" for k, v in s.lines.items()}
    for name in ("login", "passcode"):
        sources = [k for k in (name, f"{name}_file", f"{name}_env") if k in values]
        _resolve_secret(values, name, reader.environ, lines[sources[0]] if sources else "", errors)
    stomp = values.get("broker", "").startswith("stomp")
    for key in _STOMP_KEYS:
        if key in values and not stomp:
            errors.append(f"{lines[key]}: {key!r} only applies to a stomp:// or stomp+ssl:// broker")
    for key in ("ca_file", "tls_certificate", "tls_private_key"):
        if values.get(key) and not os.path.isfile(values[key]):
            errors.append(f"{lines[key]}: {key}: no such file {values[key]!r}")
    if bool(values.get("tls_certificate")) != bool(values.get("tls_private_key")):
        key = "tls_certificate" if values.get("tls_certificate") else "tls_private_key"
        errors.append(f"{lines[key]}: give both tls_certificate and tls_private_key, or neither")


def parse_config(
    text: str | None = None,
    *,
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Parse a configuration from `path` (or from `text`, named `<string>`); raise ConfigError."""
    reader = _Reader(os.environ if environ is None else environ)
    if path is not None:
        reader.read_file(path, "command line")
    else:
        reader.read_text(text or "", "<string>")
    errors = reader.errors
    groups: dict[str, dict[str, Any]] = {}
    endpoints: list[EndpointConfig] = []
    issuers: list[IssuerSettings] = []
    for section in reader.sections:
        if section.name == "endpoint":
            ep = _build_endpoint(section, reader.environ, errors)
            if ep is not None:
                endpoints.append(ep)
            continue
        if section.name == "issuer":
            if "issuer" not in section.values:
                errors.append(f"{section.where}: issuer {section.arg!r} needs 'issuer' (the tokens' iss claim)")
            elif not (section.values.get("jwks_url") or section.values.get("jwks_file")):
                errors.append(f"{section.where}: issuer {section.arg!r} needs jwks_url or jwks_file")
            else:
                issuers.append(IssuerSettings(id=section.arg, **section.values))
            continue
        merged = groups.setdefault(section.name, {})
        for key, value in section.values.items():
            if key in merged and not isinstance(value, list):
                errors.append(f"{section.lines[key]}: {key!r} already set in another [{section.name}] section")
            elif isinstance(value, list):
                merged[key] = merged.get(key, []) + value
            else:
                merged[key] = value
    for group in groups.values():
        for key, value in list(group.items()):
            if isinstance(value, list):
                group[key] = tuple(value)
    auth_values = groups.get("auth")
    if auth_values is not None and not auth_values.get("access_file"):
        errors.append(f"{path or '<string>'}: [auth] needs access_file")
    if issuers and auth_values is None:
        errors.append(f"{path or '<string>'}: [issuer ...] sections need an [auth] section with access_file")
    gocdb_values = groups.get("gocdb")
    if gocdb_values is not None and not gocdb_values.get("urls"):
        errors.append(f"{path or '<string>'}: [gocdb] needs url (GOCDB's get_downtime query, or file:///...)")
    if "events" in groups:
        _check_events(groups["events"], reader, errors)
    if not endpoints and not errors:
        errors.append(f"{path or '<string>'}: no [endpoint ...] section: nothing to federate")
    if errors:
        raise ConfigError(errors)
    return Config(
        server=ServerConfig(**groups.get("server", {})),
        locate=LocateConfig(**groups.get("locate", {})),
        geo=GeoConfig(**groups.get("geo", {})),
        health=HealthConfig(**groups.get("health", {})),
        events=EventsConfig(**groups.get("events", {})),
        write=WriteConfig(**groups.get("write", {})),
        space=SpaceConfig(**groups.get("space", {})),
        checksums=ChecksumsConfig(**groups.get("checksums", {})),
        tpc=TpcConfig(**groups.get("tpc", {})),
        gocdb=GocdbConfig(**groups.get("gocdb", {})),
        auth=AuthConfig(**auth_values) if auth_values is not None else None,
        issuers=tuple(issuers),
        endpoints=tuple(endpoints),
        files=tuple(reader.files),
    )


def default_config(demo_dir: str, listen: str = "tcp:8080:interface=127.0.0.1") -> Config:
    """The embedded default: one local directory served at /demo, in-process cache only."""
    return Config(
        server=ServerConfig(listen=(listen,)),
        endpoints=(
            EndpointConfig(
                id="local",
                kind="local",
                path=demo_dir,
                mappings=(("/demo", "/"),),
                write=False,
                source="embedded default",
            ),
        ),
    )

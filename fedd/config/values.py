"""Value parsers: each takes the raw text of one `key = value` and returns a value or raises ValueError.

Pure functions, no I/O. Checked numbers come from one factory, `in_range`, so that NaN, the
infinities and out-of-range values are refused the same way everywhere.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fedd.events.model import EVENT_TYPES

ENDPOINT_KINDS = ("s3", "dav", "local", "azure")
SPACE_SOURCES = ("auto", "rfc4331", "listing", "ceph-admin", "none")
DOWNTIME_SCOPES = ("write", "read", "all")
# ids of [endpoint ID] and [issuer ID] sections (also what fedd-import-ugr makes of UGR's names)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class SiteRange:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    lat: float
    lon: float


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


# --- numbers ---------------------------------------------------------------------------------


def in_range(
    convert: Callable[[str], N],
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str,
    message: str = "expected {what}, got {text!r}",
    name: str = "",
) -> Callable[[str], N]:
    """A parser of `convert(text)` that must be finite and within [low, high] (`*_open`: the bound
    itself is excluded; None: unbounded). A refused value raises ValueError(message)."""

    def parse(text: str) -> N:
        value = convert(text)  # int()/float() raise their own ValueError on text that is no number
        inside = not isinstance(value, float) or math.isfinite(value)  # math.isfinite(10**400) overflows
        if low is not None:
            inside = inside and (value > low if low_open else value >= low)
        if high is not None:
            inside = inside and (value < high if high_open else value <= high)
        if not inside:
            raise ValueError(message.format(what=what, text=text))
        return value

    parse.__name__ = parse.__qualname__ = name or f"in_range_{what.replace(' ', '_')}"
    return parse


positive_float = in_range(float, low=0, low_open=True, what="a positive number", name="positive_float")
nonneg_float = in_range(float, low=0, what="a number >= 0", name="nonneg_float")
positive_int = in_range(int, low=0, low_open=True, what="a positive integer", name="positive_int")
nonneg_int = in_range(int, low=0, what="an integer >= 0", name="nonneg_int")
_worker_count = in_range(int, low=1, high=256, what="a number of workers from 1 to 256", name="workers")


def workers(value: str) -> int:
    """`[server] workers`: a count, or `auto` (0: one per core, resolved at start)."""
    return 0 if value.strip() == "auto" else _worker_count(value)


fraction = in_range(float, low=0, high=1, high_open=True, what="a fraction in [0, 1)", name="fraction")
sample = in_range(float, low=0, high=1, what="a fraction in [0, 1]", name="sample")
lat = in_range(float, low=-90, high=90, what="latitude", message="latitude out of range: {text!r}", name="lat")
lon = in_range(float, low=-180, high=180, what="longitude", message="longitude out of range: {text!r}", name="lon")


SIZE_UNITS = {
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


def size(text: str) -> int:
    """A byte count: `1000000`, `500G`, `1.5TB` (powers of 1000), `2TiB` (powers of 1024)."""
    match = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$", text)
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"expected a size such as 1000000, 500G, 1.5TB or 2TiB, got {text!r}")
    # exact decimal arithmetic: a float loses bytes past 2**53 and makes 1.001G 1000999999
    value = Fraction(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if value >= 1 << 63:
        raise ValueError(f"size too large: {text!r}")
    return int(value)


positive_size = in_range(size, low=0, low_open=True, what="a size above 0", name="positive_size")


# --- words and names -------------------------------------------------------------------------


def boolean(text: str) -> bool:
    low = text.lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes/no, got {text!r}")


def text(value: str) -> str:
    return value


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    parse.__name__ = parse.__qualname__ = f"choice({'|'.join(choices)})"
    return parse


def shed(value: str) -> str:
    if value not in ("drop-oldest", "drop-newest"):
        raise ValueError(f"expected drop-oldest or drop-newest, got {value!r}")
    return value


def kind(value: str) -> str:
    if value not in ENDPOINT_KINDS:
        raise ValueError(f"unknown endpoint kind {value!r} (known: {', '.join(ENDPOINT_KINDS)})")
    return value


def redirect_code(value: str) -> int:
    if value not in ("302", "307"):
        raise ValueError(f"expected 302 or 307, got {value!r}")
    return int(value)


def name(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.:-]{1,255}$", value):
        raise ValueError(f"expected an AMQP name (letters, digits, '_.:-'), got {value!r}")
    return value


def prefix(value: str) -> str:
    return name(value) if value else value


def destination(value: str) -> str:
    if not value or any(c < " " or c == "\x7f" for c in value) or len(value) > 255:
        raise ValueError(f"expected a STOMP destination such as /topic/fedd.events, got {value!r}")
    return value


def types(value: str) -> tuple[str, ...]:
    names = tuple(value.replace(",", " ").split())
    if names == ("all",):
        return EVENT_TYPES
    if names in (("none",), ()):
        return ()
    unknown = [n for n in names if n not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)}, all)")
    return names


def agent(value: str) -> str:
    if value == "none":
        return ""
    if not re.match(r"^[\x21-\x7e][\x20-\x7e]{0,99}$", value):
        raise ValueError(f"expected the start of a User-Agent header (printable ASCII), got {value!r}")
    return value


def service_types(value: str) -> tuple[str, ...]:
    names = tuple(n.lower() for n in value.replace(",", " ").split())
    if not names or any(not re.fullmatch(r"[a-z0-9][a-z0-9._\-]{0,99}", n) for n in names):
        raise ValueError(f"expected GOCDB service types such as 'webdav SRM xrootd', got {value!r}")
    return names


# --- paths, hosts and URLs -------------------------------------------------------------------


def fed_path(value: str) -> str:
    if not value.startswith("/") or "//" in value or any(s in (".", "..") for s in value.split("/")):
        raise ValueError(f"expected an absolute normalised path, got {value!r}")
    return "/" + value.strip("/") if value != "/" else "/"


def mapping(value: str) -> tuple[str, str]:
    parts = value.split()
    if len(parts) != 2:
        raise ValueError(f"expected '<federation prefix> <endpoint prefix>', got {value!r}")
    return (fed_path(parts[0]), fed_path(parts[1]))


def usable_url(value: str) -> bool:
    """No control characters, and urlsplit finds a host and reads the port (an unclosed '[' or a port
    out of range would raise ValueError later, when the endpoint or broker is built)."""
    if any(c < " " or c == "\x7f" for c in value):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    return port != 0 and bool(parts.hostname)  # `http://user@` has no host


def url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value) or not usable_url(value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


_HOST_PORT = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"


def public_url(value: str) -> str:
    if not re.fullmatch(rf"https?://{_HOST_PORT}/?", value):
        raise ValueError(f"expected http(s)://host[:port] with no path, got {value!r}")
    return value.rstrip("/").lower()


def host_names(value: str) -> tuple[str, ...]:
    names = tuple(value.replace(",", " ").split())
    bad = [n for n in names if not re.fullmatch(_HOST_PORT, n)]
    if bad or not names:
        raise ValueError(f"expected host names (host or host:port), got {' '.join(bad) or 'nothing'!r}")
    return tuple(n.lower() for n in names)


def hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def listen(value: str) -> str:
    if value.split(":", 1)[0] not in ("tcp", "ssl", "tcp6", "unix", "systemd"):
        raise ValueError(f"expected a tcp:/ssl:/tcp6:/unix:/systemd: listen string, got {value!r}")
    return value


def broker(value: str) -> str:
    if value.startswith("stomp"):  # several, for fail-over (Hermes' broker list)
        urls = value.replace(",", " ").split()
        bad = [u for u in urls if not (re.match(r"^stomp(\+ssl)?://[^/\s]+(/[^/\s]*)?$", u) and usable_url(u))]
        if bad:
            raise ValueError(f"expected stomp://host:port or stomp+ssl://host:port URLs, got {bad[0]!r}")
        return ", ".join(urls)
    if value and not (re.match(r"^amqps?://[^/\s]+(/\S*)?$", value) and usable_url(value)):
        raise ValueError(
            "expected amqp://user:password@host:port/vhost, stomp://host:port[, stomp://...] "
            "(or empty for the spool file)"
        )
    return value


@dataclass(frozen=True)
class RgwNotify:
    """`[confirm] notify`: an S3 endpoint whose bucket notifications RGW pushes to an AMQP exchange."""

    endpoint: str
    exchange: str
    queue: str = ""  # "": a private queue per fedd process (every process sees every notification)


def rgw_notify(value: str) -> RgwNotify:
    parts = value.split()
    if len(parts) not in (2, 3) or not ID_RE.match(parts[0]):
        raise ValueError(f"expected '<endpoint id> <exchange> [queue]', got {value!r}")
    return RgwNotify(parts[0], *(name(p) for p in parts[1:]))


def state_database(value: str) -> str:
    """`[state] database`: postgresql://[user[:password]@]host[:port]/dbname[?...], sqlite:PATH or a path."""
    if value.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(value)
        if not parts.hostname or not parts.path.strip("/") or any(c.isspace() for c in value):
            raise ValueError("expected postgresql://[user[:password]@]host[:port]/database")
        return value
    if "://" in value:
        raise ValueError("expected postgresql://host/database, sqlite:PATH or a file path")
    if re.match(r"\w+\s*=", value):  # not a file to create, whose name (and password) the status would show
        raise ValueError(
            "a libpq keyword string (host=... dbname=...) is not taken: write it as "
            "postgresql://[user@]host[:port]/dbname?sslmode=...&sslrootcert=..."
        )
    return value


def gocdb_url(value: str) -> str:
    if value.startswith("file://"):
        path = value[len("file://") :]
        if not path.startswith("/") or any(c < " " or c == "\x7f" for c in path):
            raise ValueError(f"expected file:///absolute/path, got {value!r}")
        return value
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value) or not usable_url(value):
        raise ValueError(f"expected an http(s):// URL of GOCDB's get_downtime or a file:/// path, got {value!r}")
    return value


def gocdb_hostname(value: str) -> str:
    host = value.lower().rstrip(".")
    if host != "none" and not re.fullmatch(r"[a-z0-9](?:[a-z0-9.\-]{0,251}[a-z0-9])?", host):
        raise ValueError(f"expected a host name as GOCDB lists it (or none), got {value!r}")
    return host


def allow_host(value: str) -> str:
    from fedd.tpc.guard import parse_host_pattern  # fedd.tpc imports this package

    return parse_host_pattern(value).text


# --- composite values ------------------------------------------------------------------------


def site(value: str) -> SiteRange:
    parts = value.split()
    if len(parts) != 3:
        raise ValueError(f"expected '<network> <lat> <lon>', got {value!r}")
    return SiteRange(ipaddress.ip_network(parts[0], strict=False), lat(parts[1]), lon(parts[2]))


def when(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time such as 2026-12-01T08:00Z, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def downtime(value: str) -> Downtime:
    parts = value.split(None, 3)
    if len(parts) < 2:
        raise ValueError(f"expected '<start> <end> [write|read|all] [reason]', got {value!r}")
    start, end = when(parts[0]), when(parts[1])
    if end <= start:
        raise ValueError(f"downtime ends before it starts: {value!r}")
    scope = parts[2] if len(parts) > 2 else "all"
    if scope not in DOWNTIME_SCOPES:
        raise ValueError(f"downtime scope must be one of {', '.join(DOWNTIME_SCOPES)}, got {scope!r}")
    return Downtime(start, end, scope, parts[3] if len(parts) > 3 else "")

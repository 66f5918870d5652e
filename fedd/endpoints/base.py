"""What every endpoint kind offers (the HTTP client they share is fedd.endpoints.http)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache, wraps
from typing import Any, ParamSpec, Protocol, TypeVar
from urllib.parse import quote

from lxml import etree
from twisted.internet.defer import Deferred

from fedd.config import EndpointConfig
from fedd.errors import EndpointError, PathRefused


@dataclass(frozen=True)
class Stat:
    """What an endpoint knows about one name."""

    size: int | None = None
    mtime: float | None = None
    is_dir: bool = False
    etag: str = ""
    checksums: tuple[tuple[str, str], ...] = ()  # (algorithm, lowercase hex) known for it, e.g. adler32
    # (field, raw value) about the content as the storage sent it: ("digest", "adler32=..."),
    # ("x-amz-meta-adler32", ...), ("content-md5", base64), ("etag", ...); parsed by fedd.checksums.reported
    reported: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> list[Any]:
        if self.reported:
            return [self.size, self.mtime, self.is_dir, self.etag, dict(self.checksums), dict(self.reported)]
        if self.checksums:  # a fifth element only when there is something: older entries stay 4 long
            return [self.size, self.mtime, self.is_dir, self.etag, dict(self.checksums)]
        return [self.size, self.mtime, self.is_dir, self.etag]

    @classmethod
    def from_json(cls, data: list[Any]) -> Stat:
        size, mtime, is_dir, etag = data[:4]
        sums = data[4] if len(data) > 4 and isinstance(data[4], dict) else {}
        reported = data[5] if len(data) > 5 and isinstance(data[5], dict) else {}
        return cls(
            size=None if size is None else int(size),
            mtime=None if mtime is None else float(mtime),
            is_dir=bool(is_dir),
            etag=str(etag),
            checksums=tuple(sorted((str(k), str(v)) for k, v in sums.items())),
            reported=tuple(sorted((str(k), str(v)) for k, v in reported.items())),
        )


@dataclass(frozen=True)
class Entry:
    name: str
    stat: Stat


@dataclass(frozen=True)
class Space:
    """How full an endpoint is, as its storage reports it (None: not known)."""

    used: int | None = None  # bytes stored
    total: int | None = None  # capacity in bytes: reported by the storage, or the configured quota
    files: int | None = None  # number of objects, where counted
    source: str = ""  # how it was measured: rfc4331, listing, ceph-admin, statvfs, ...
    available: int | None = None  # free bytes as the storage reports them, when it does

    @property
    def free(self) -> int | None:
        if self.used is not None and self.total is not None:
            computed = max(0, self.total - self.used)
            return computed if self.available is None else min(computed, self.available)
        return self.available


class Endpoint(Protocol):
    """One storage endpoint, as every kind is one: readable and listable, probed, measured. Paths are
    endpoint paths (already mapped), absolute, normalised. What only some kinds do (writes, signed
    URLs, checksums, uploads by fedd) is declared with `fedd.endpoints.interfaces`: ask those."""

    id: str
    config: EndpointConfig
    # a stat also tells collections (WebDAV HEAD, stat(2)): a name it says "no" to, or finds as a
    # file, is no collection there and needs no listing; object stores (S3, Azure) cannot tell
    collections_by_stat: bool

    def stat(self, path: str, via: tuple[str, ...] = ()) -> Deferred[Stat | None]:
        """Stat of a file; None when it does not exist. Fails with EndpointError (the endpoint's
        fault) or PathRefused (the path's: 4xx, ENOTDIR, ENAMETOOLONG). `via`: the fedd instances
        the client's request came through, sent on to endpoints that are fedd instances (loops)."""

    def listdir(self, path: str, via: tuple[str, ...] = ()) -> Deferred[list[Entry] | None]:
        """Children of a collection; None when `path` is not a collection (or refused for its name)."""

    def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> Deferred[bool]:
        """The children of a collection passed to `emit` in batches as they are read (a listing of any
        size in bounded memory); True when `path` is a collection, False when it is not. `valve`:
        reading pauses while it is closed (the client reading the listing is slower)."""

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        """Where to send a client doing `method` (GET, HEAD or PUT) on `path`: an absolute URL, or a fedd path.

        For PUT the URL must let the client upload without further credentials (S3: presigned PUT)."""

    def probe(self) -> Deferred[None]:
        """A cheap request proving the service answers; fails with EndpointError."""

    def space(self, max_objects: int = 50_000_000) -> Deferred[Space]:
        """Measure used and total space (may take long: paged listings, which stop with an EndpointError
        past `max_objects`); fails with EndpointError."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def deferred(method: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, Deferred[_T]]:
    """An `async def` endpoint method that hands its callers a Deferred (the interfaces' contract:
    they add timeouts and callbacks), run at once up to its first wait."""

    @wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return Deferred.fromCoroutine(method(*args, **kwargs))

    return call


# entries handed on at a time by streamed listings: few, so that entries waiting in a batch die young
# (a merged listing of 10,000 entries over three DAV endpoints: garbage collection 6 ms -> 0.3 ms of CPU)
LIST_BATCH = 100


def emit_listing(listing: Deferred[list[Entry] | None], emit: Callable[[list[Entry]], None]) -> Deferred[bool]:
    """`list_stream` for a kind that reads a listing whole (local directories, Azure): in batches."""

    def hand_on(entries: list[Entry] | None) -> bool:
        if entries is None:
            return False
        for start in range(0, len(entries), LIST_BATCH):
            emit(entries[start : start + LIST_BATCH])
        return True

    return listing.addCallback(hand_on)


def refused(endpoint: str, code: int, what: str) -> PathRefused | None:
    """The answer of a request for one path that refuses it for that path (400, 403, 414, ...): the
    request's fault, not the endpoint's. 401/403 may also mean revoked keys: the probe will tell."""
    if 400 <= code < 500 or code == 501 or code == 508:  # 508: a fedd endpoint saw a federation loop
        return PathRefused(endpoint, f"{what}: HTTP {code}", suspect=code in (401, 403))
    return None


def quote_path(path: str) -> str:
    return quote(path, safe="/~!$&'()*+,;=:@-._")


@lru_cache(maxsize=4096)  # listings repeat the same few dates many times
def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_XML_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True
)


def parse_xml(body: bytes, endpoint: str, what: str) -> Any:
    """Parse an endpoint's XML answer with lxml (fast, C); entities unexpanded, DTDs refused."""
    try:
        root = etree.fromstring(body, _XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise EndpointError(endpoint, f"{what}: unreadable XML ({exc.msg})") from None
    if root is None:
        raise EndpointError(endpoint, f"{what}: empty XML answer")
    if root.getroottree().docinfo.internalDTD is not None:
        raise EndpointError(endpoint, f"{what}: unreadable XML (DTDs are refused)")
    return root


def etag_value(header: str | None) -> str:
    """An entity tag as stored in a Stat: without quotes, `W/` kept for weak ones (`W/"x"` -> `W/x`)."""
    text = (header or "").strip()
    if text[:2] in ("W/", "w/"):
        return "W/" + text[2:].strip().strip('"')
    return text.strip('"')


def format_etag(value: str) -> str:
    """The header form of a stored entity tag: `"x"`, or `W/"x"` for a weak one."""
    if value.startswith("W/"):
        return f'W/"{value[2:]}"'
    return f'"{value}"'


def parse_int(value: str | None) -> int | None:
    # ASCII only (str.isdigit takes '²' and '٣'); more than 19 digits is no size (and int() refuses 4300+)
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    return int(value)


class UrlCache:
    """A small LRU of signed URLs, reused for a bounded part of their validity."""

    def __init__(self, entries: int = 50_000) -> None:
        self._entries = entries
        self._data: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def get(self, key: str, now: float) -> str | None:
        hit = self._data.get(key)
        if hit is None or hit[0] <= now:
            return None
        return hit[1]

    def put(self, key: str, url: str, reuse_until: float) -> None:
        self._data[key] = (reuse_until, url)
        if len(self._data) > self._entries:
            self._data.popitem(last=False)


# the HTTP client's names, where callers have always found them
from fedd.endpoints.http import HttpClient, HttpResponse, Valve, pooled_client  # noqa: E402

__all__ = [
    "LIST_BATCH",
    "Endpoint",
    "Entry",
    "HttpClient",
    "HttpResponse",
    "Space",
    "Stat",
    "UrlCache",
    "Valve",
    "deferred",
    "emit_listing",
    "etag_value",
    "format_etag",
    "parse_http_date",
    "parse_int",
    "parse_xml",
    "pooled_client",
    "quote_path",
    "refused",
]

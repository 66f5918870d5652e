"""Downtimes declared in GOCDB, read from its programmatic interface (PI) and applied like fedd's own.

What is read (checked against GOCDB's source, github.com/GOCDB/gocdb: `htdocs/PI/index.php`,
`lib/Gocdb_Services/PI/GetDowntime.php`, `lib/Gocdb_Services/PI/QueryBuilders/Helpers.php`,
`htdocs/PI/xmlschema/get_downtime.xsd`):

- `?method=get_downtime` is a public PI method (no certificate). Its answer is UTF-8 XML with root
  `<results>` and one `<DOWNTIME ID=".." PRIMARY_KEY=".." CLASSIFICATION="SCHEDULED|UNSCHEDULED">`
  per downtime and affected service, holding `SEVERITY` (`OUTAGE` or `WARNING`), `DESCRIPTION`,
  `START_DATE`/`END_DATE` (Unix seconds), `FORMATED_START_DATE`/`FORMATED_END_DATE`
  (`YYYY-MM-DD HH:MM`, rendered in UTC: the PI sets its time zone to UTC), `HOSTNAME`,
  `SERVICE_TYPE`, `ENDPOINT` (host name + service type), `HOSTED_BY` (older schema: `SITENAME`),
  `GOCDB_PORTAL_URL` and `AFFECTED_ENDPOINTS`. A downtime on several services repeats its
  `DOWNTIME` element once per service, with the same `ID`.
- `?method=get_downtime_nested_services` gives one `DOWNTIME` per downtime with its services in
  `<SERVICES><SERVICE>` (`HOSTNAME`, `SERVICE_TYPE`, `HOSTED_BY`, ...). Both forms are read.
- With cursor paging (`next_cursor=0`, or paging on by default on the server) the answer starts
  with `<meta>` holding `<link rel="next" href="...">` (plus `self`, `prev`, `start`), `<count>` and
  `<max_page_size>`; the next link is present whenever the page had rows, so the last page is an
  empty one. fedd follows `next` links on the same scheme and host, up to `[gocdb] max_pages`.
- A refused query is answered with HTTP 200 and a document `<error>...</error>`: an error here.

How a GOCDB downtime becomes fedd's (pure, `to_declared`):

- Each fedd endpoint has GOCDB host names: its `gocdb_hostname` lines, or else the host of its
  `url` (local endpoints have none). A service whose `HOSTNAME` equals one of them (case-insensitive)
  puts that endpoint in the downtime. `[gocdb] service_types`, when given, keeps only those types.
- `OUTAGE` (the service is unavailable; availability reports count only these) becomes scope
  `[gocdb] outage` (default `all`: no reads, no writes). `WARNING` (the service stays available,
  possibly degraded or at risk) becomes `[gocdb] warning`, default `none`: listed, shown on the
  status page, but no request is refused because of it. Sending readers away from a storage that
  GOCDB itself says is up would turn a warning into an outage for every file held only there
  (503s), so applying it is a site's explicit choice (`write` is the careful one).
- Start and end are GOCDB's; the DowntimeBook applies and lifts them on time, like configured ones.
  Downtimes already over are dropped.

Fetching (`GocdbService`): every `[gocdb] interval` each `url` is read (http(s) through fedd's
non-blocking HttpClient with a timeout, a body cap of `max_bytes` and certificate verification
against the system roots or `ca_file`; `file://` in the thread pool, capped the same way), parsed in
the thread pool with lxml (no DTDs, no entities, no network), mapped, and handed to the book as the
whole "gocdb" set. A source that fails (unreachable, HTTP error, malformed or oversized document,
an `<error>` answer) keeps its last good set; the error is logged in one line and shown in the
status with the time of the last fetch, the number of downtimes and the last error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from lxml import etree
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS

from fedd.config import Config, Downtime, EndpointConfig, GocdbConfig
from fedd.errors import EndpointError
from fedd.space.downtime import Declared, DowntimeBook

log = Logger(namespace="fedd.gocdb")

ORIGIN = "gocdb"
SEVERITIES = ("OUTAGE", "WARNING")
MAX_REASON = 300  # characters of a downtime's description kept in its reason
MAX_LISTED = 10  # unmatched host names and skipped-element reasons shown in the status
_EPOCH_RE = re.compile(r"[0-9]{1,12}")


class GocdbError(Exception):
    """A GOCDB answer fedd cannot use; the message says why, in one line."""


@dataclass(frozen=True)
class GocdbDowntime:
    """One downtime of one service, as GOCDB lists it."""

    id: str
    severity: str  # OUTAGE or WARNING
    classification: str  # SCHEDULED or UNSCHEDULED
    start: float
    end: float
    hostname: str  # lower case, no trailing dot
    service_type: str
    site: str = ""
    description: str = ""
    portal_url: str = ""


@dataclass(frozen=True)
class Page:
    downtimes: tuple[GocdbDowntime, ...]
    skipped: tuple[str, ...] = ()  # why DOWNTIME elements were left out
    next_href: str = ""  # <meta><link rel="next" href=..>, as written


# --- parsing (pure) -----------------------------------------------------------------------------


def parse_page(body: bytes) -> Page:
    """One get_downtime (or get_downtime_nested_services) document; GocdbError when unusable.

    Safe on hostile input: a fresh lxml parser per call (this runs in the thread pool, and lxml
    parsers are not to be shared between threads) that loads no DTD, expands no entity, reads
    nothing from the network and refuses huge trees; a document with a DTD is refused outright."""
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True
    )
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise GocdbError(f"malformed XML ({exc.msg})") from None
    if root is None:
        raise GocdbError("empty document")
    if root.getroottree().docinfo.internalDTD is not None:
        raise GocdbError("the document has a DTD (refused)")
    if root.tag == "error":
        raise GocdbError(f"GOCDB answered an error: {_clip(''.join(root.itertext()).strip(), 200)}")
    if root.tag != "results":
        raise GocdbError(f"not a get_downtime answer: the root element is <{_clip(str(root.tag), 60)}>")
    found: dict[tuple[str, str, str], GocdbDowntime] = {}
    skipped: list[str] = []
    for element in root.iterchildren("DOWNTIME"):
        try:
            for downtime in _downtimes_of(element):
                found.setdefault((downtime.id, downtime.hostname, downtime.service_type), downtime)
        except GocdbError as exc:
            skipped.append(str(exc))
    return Page(tuple(found.values()), tuple(skipped), _next_href(root))


def _downtimes_of(element: Any) -> list[GocdbDowntime]:
    ident = (element.get("ID") or "").strip()
    if not ident or len(ident) > 64:
        raise GocdbError("a DOWNTIME without a usable ID attribute")
    severity = _child_text(element, "SEVERITY").upper()
    if severity not in SEVERITIES:
        raise GocdbError(f"downtime {ident}: unknown SEVERITY {_clip(severity, 40)!r}")
    start = _moment(element, "START_DATE", "FORMATED_START_DATE")
    end = _moment(element, "END_DATE", "FORMATED_END_DATE")
    if start is None or end is None:
        raise GocdbError(f"downtime {ident}: no readable START_DATE/END_DATE")
    if end <= start:
        raise GocdbError(f"downtime {ident}: ends before it starts")
    services = element.find("SERVICES")
    if services is not None:
        hosts = [
            (_child_text(s, "HOSTNAME"), _child_text(s, "SERVICE_TYPE"), _child_text(s, "HOSTED_BY"))
            for s in services.iterchildren("SERVICE")
        ]
    else:
        site = _child_text(element, "HOSTED_BY") or _child_text(element, "SITENAME")
        hosts = [(_child_text(element, "HOSTNAME"), _child_text(element, "SERVICE_TYPE"), site)]
    hosts = [(h.lower().rstrip("."), t, s) for h, t, s in hosts if h]
    if not hosts:
        raise GocdbError(f"downtime {ident}: no HOSTNAME")
    portal = _child_text(element, "GOCDB_PORTAL_URL")
    return [
        GocdbDowntime(
            id=ident,
            severity=severity,
            classification=(element.get("CLASSIFICATION") or "").strip().upper(),
            start=start,
            end=end,
            hostname=host,
            service_type=service_type,
            site=site,
            description=_clip(" ".join(_child_text(element, "DESCRIPTION").split()), MAX_REASON),
            # the old PI wrote a placeholder (#GOCDB_BASE_PORTAL_URL#/...): only real web links are kept
            portal_url=portal if re.match(r"^https?://[^\s#]+$", portal) else "",
        )
        for host, service_type, site in hosts
    ]


def _child_text(element: Any, name: str) -> str:
    child = element.find(name)
    if child is None:
        return ""
    return "".join(child.itertext()).strip()


def _moment(element: Any, epoch_name: str, formatted_name: str) -> float | None:
    """Unix seconds from the epoch element, else from the formatted one (UTC)."""
    text = _child_text(element, epoch_name)
    if _EPOCH_RE.fullmatch(text):
        return float(text)
    formatted = _child_text(element, formatted_name)
    try:
        return datetime.strptime(formatted, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _next_href(root: Any) -> str:
    meta = root.find("meta")
    if meta is None:
        return ""
    for link in meta.iterchildren("link"):
        if (link.get("rel") or "").strip() == "next":
            return (link.get("href") or "").strip()
    return ""


def next_page_url(current: str, href: str) -> str:
    """The absolute URL of a `next` link; GocdbError when it leaves the configured server."""
    target = urljoin(current, href)
    here, there = urlsplit(current), urlsplit(target)
    if (there.scheme, there.netloc.lower()) != (here.scheme, here.netloc.lower()):
        raise GocdbError(f"the next page link leads to another server ({_clip(redact(target), 120)})")
    return target


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(url: str) -> str:
    """A URL fit for logs and the status: no user:password@."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# --- mapping (pure) -----------------------------------------------------------------------------


def endpoint_hostnames(endpoint: EndpointConfig) -> tuple[str, ...]:
    """The GOCDB host names of an endpoint: its gocdb_hostname lines, else its URL's host."""
    if endpoint.gocdb_hostnames:
        return () if endpoint.gocdb_hostnames == ("none",) else endpoint.gocdb_hostnames
    try:
        host = urlsplit(endpoint.url).hostname if endpoint.url else None
    except ValueError:
        host = None
    return (host.rstrip("."),) if host else ()


@dataclass(frozen=True)
class Mapped:
    declared: tuple[Declared, ...]
    unmatched_hosts: tuple[str, ...]  # hosts of current downtimes no endpoint answers to (sorted)


def to_declared(
    downtimes: Iterable[GocdbDowntime], endpoints: Sequence[EndpointConfig], settings: GocdbConfig, now: float
) -> Mapped:
    """fedd downtimes (origin "gocdb") for GOCDB's, by host name, service type and severity."""
    by_host: dict[str, list[str]] = {}
    for ep in endpoints:
        for host in endpoint_hostnames(ep):
            by_host.setdefault(host, []).append(ep.id)
    scope = {"OUTAGE": settings.outage, "WARNING": settings.warning}
    declared: dict[str, Declared] = {}
    unmatched: set[str] = set()
    for dt in sorted(downtimes, key=lambda d: (d.start, d.id, d.hostname, d.service_type)):
        if dt.end <= now:
            continue
        if settings.service_types and dt.service_type.lower() not in settings.service_types:
            continue
        endpoint_ids = by_host.get(dt.hostname)
        if not endpoint_ids:
            unmatched.add(dt.hostname)
            continue
        reason = _clip(
            f"GOCDB {dt.severity} {dt.id} ({dt.classification.lower() or 'unclassified'},"
            f" {dt.hostname} {dt.service_type}): {dt.description}".rstrip(": "),
            MAX_REASON + 100,
        )
        for eid in endpoint_ids:
            key = f"{ORIGIN}-{dt.id}-{eid}"  # one per downtime and endpoint (a host may run several types)
            if key not in declared:
                declared[key] = Declared(
                    key, eid, Downtime(dt.start, dt.end, scope[dt.severity], reason), ORIGIN, dt.portal_url
                )
    return Mapped(tuple(declared.values()), tuple(sorted(unmatched)))


# --- fetching and refreshing --------------------------------------------------------------------

Fetch = Callable[[str, GocdbConfig], "Deferred[bytes]"]
ToThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


class Fetcher:
    """Reads one document: http(s) with fedd's HttpClient (timeout, body cap, TLS verified against
    the system roots or `ca_file`), file:// in the thread pool. Fails with GocdbError."""

    def __init__(self, reactor: Any, to_thread: ToThread) -> None:
        self._reactor = reactor
        self._to_thread = to_thread
        self._clients: dict[tuple[float, int, str], Any] = {}

    def __call__(self, url: str, settings: GocdbConfig) -> Deferred[bytes]:
        if url.startswith("file://"):
            path = unquote(urlsplit(url).path)
            return self._to_thread(lambda: read_capped(path, settings.max_bytes))
        return ensureDeferred(self._http(url, settings))

    async def _http(self, url: str, settings: GocdbConfig) -> bytes:
        client = self._client(settings)
        try:
            response = await client.request("GET", url, {"Accept": "application/xml, text/xml"})
        except EndpointError as exc:
            hint = ""
            if exc.reason.startswith("answer larger than"):
                hint = " ([gocdb] max_bytes)"
            elif exc.reason.startswith("connection lost") and url.startswith("https://"):
                # HttpClient reports a refused certificate this way (the TLS alert is in its reasons)
                hint = " (is the server's certificate trusted? see [gocdb] ca_file)"
            raise GocdbError(exc.reason + hint) from None
        if response.code != 200:
            redirect = " (fedd follows no redirects: give the final URL)" if 300 <= response.code < 400 else ""
            raise GocdbError(f"HTTP {response.code}{redirect}")
        return bytes(response.body)

    def _client(self, settings: GocdbConfig) -> Any:
        from fedd.endpoints import HttpClient, tls_policy

        key = (settings.timeout, settings.max_bytes, settings.ca_file)
        if key not in self._clients:
            try:
                policy = tls_policy(True, settings.ca_file, default=BrowserLikePolicyForHTTPS())
            except (OSError, ValueError) as exc:
                raise GocdbError(f"cannot read [gocdb] ca_file {settings.ca_file}: {exc}") from None
            self._clients[key] = HttpClient(
                self._reactor,
                endpoint="gocdb",
                timeout=settings.timeout,
                tls_policy=policy,
                max_body=settings.max_bytes,
                connections_per_host=2,
            )
        return self._clients[key]

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def read_capped(path: str, limit: int) -> bytes:
    """A whole file of at most `limit` bytes (blocking: run it in the thread pool)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise GocdbError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise GocdbError(f"answer larger than {limit} bytes ([gocdb] max_bytes)")
    return data


@dataclass
class SourceState:
    """What one configured URL gave: the last good set and how the last attempts went."""

    url: str
    downtimes: tuple[GocdbDowntime, ...] | None = None  # None: never read successfully
    fetched_at: float | None = None  # last success
    attempted_at: float | None = None
    pages: int = 0
    skipped: tuple[str, ...] = ()
    last_error: str | None = None
    last_error_at: float | None = None
    unmatched_hosts: tuple[str, ...] = field(default=())
    errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "url": redact(self.url),
            "fetched_at": self.fetched_at,
            "attempted_at": self.attempted_at,
            "downtimes": None if self.downtimes is None else len(self.downtimes),
            "pages": self.pages,
            "skipped": len(self.skipped),
            "skipped_reasons": list(self.skipped[:MAX_LISTED]),
            "unmatched_hosts": list(self.unmatched_hosts[:MAX_LISTED]),
            "unmatched_count": len(self.unmatched_hosts),
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "ok": self.last_error is None and self.downtimes is not None,
        }


class GocdbService(Service):
    """Reads `[gocdb] url` every `interval` and keeps the book's "gocdb" set up to date.

    Settings and endpoints are read from `config()` at every refresh, so a reload applies at the
    next one. Each refresh catches its own errors; a source that fails keeps its last good set."""

    name = "gocdb"

    def __init__(
        self,
        book: DowntimeBook,
        *,
        clock: Any,
        config: Callable[[], Config],
        fetch: Fetch,
        to_thread: ToThread,
    ) -> None:
        self.book = book
        self.clock = clock
        self.config = config
        self.fetch = fetch
        self.to_thread = to_thread
        self.sources: dict[str, SourceState] = {}
        self.refreshes = 0
        self.applied = 0
        self.next_refresh: float | None = None
        self._timer: IDelayedCall | None = None
        self._inflight: Deferred[None] | None = None
        self._stopped = False

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        self._tick()

    def stopService(self) -> Any:
        super().stopService()
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inflight = self._inflight
        if inflight is not None and not inflight.called:
            inflight.cancel()  # a fetch may wait for its timeout; nothing of it is needed any more
        closing = ensureDeferred(self._close())
        return closing

    async def _close(self) -> None:
        close = getattr(self.fetch, "close", None)
        if close is not None:
            await close()

    # --- the loop -----------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if not self.running:
            return
        if self._inflight is None:  # never two refreshes at once
            self._inflight = ensureDeferred(self.refresh())
            self._inflight.addErrback(self._failed).addBoth(self._done)
        interval = self.config().gocdb.interval
        self.next_refresh = self.clock.seconds() + interval
        self._timer = self.clock.callLater(interval, self._tick)

    def _failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("GOCDB refresh failed", failure)  # a bug: refresh() catches what it expects

    def _done(self, _: Any) -> None:
        self._inflight = None

    async def refresh(self) -> None:
        """Read every configured source once, then hand the book the whole mapped set."""
        settings = self.config().gocdb
        for url in list(self.sources):
            if url not in settings.urls:
                del self.sources[url]  # no longer configured: its downtimes go too
        for url in settings.urls:
            state = self.sources.setdefault(url, SourceState(url))
            await self._refresh_source(state, settings)
            if self._stopped:
                return  # stopped while reading: the book is left as it is
        self.refreshes += 1
        self.apply()

    async def _refresh_source(self, state: SourceState, settings: GocdbConfig) -> None:
        now = self.clock.seconds()
        state.attempted_at = now
        try:
            found, skipped, pages = await self._read_all_pages(state.url, settings)
        except CancelledError:
            raise
        except (GocdbError, EndpointError) as exc:
            if self._stopped:
                return  # the fetch was cancelled by stopService
            self._record_error(state, exc.reason if isinstance(exc, EndpointError) else str(exc), now)
            return
        except Exception as exc:  # a bug must not end the loop nor drop the last good set
            log.failure("GOCDB {url}: reading failed", url=redact(state.url))
            self._record_error(state, f"{type(exc).__name__}: {exc}", now)
            return
        changed = state.downtimes is None or set(found) != set(state.downtimes)
        if changed or state.last_error is not None:
            log.info(
                "GOCDB {url}: {n} downtime(s) of services in {pages} page(s){skipped}",
                url=redact(state.url),
                n=len(found),
                pages=pages,
                skipped=f", {len(skipped)} element(s) left out: {skipped[0]}" if skipped else "",
            )
        state.downtimes, state.skipped, state.pages = found, skipped, pages
        state.fetched_at, state.last_error, state.last_error_at = self.clock.seconds(), None, None

    def _record_error(self, state: SourceState, reason: str, now: float) -> None:
        state.errors += 1
        state.last_error, state.last_error_at = reason, now
        kept = (
            f"keeping the last good set of {len(state.downtimes)} downtime(s) from {_iso(state.fetched_at)}"
            if state.downtimes is not None and state.fetched_at is not None
            else "no GOCDB downtimes from it yet"
        )
        log.warn("GOCDB {url}: {reason} ({kept})", url=redact(state.url), reason=reason, kept=kept)

    async def _read_all_pages(
        self, url: str, settings: GocdbConfig
    ) -> tuple[tuple[GocdbDowntime, ...], tuple[str, ...], int]:
        found: dict[tuple[str, str, str], GocdbDowntime] = {}
        skipped: list[str] = []
        current = url
        for number in range(1, settings.max_pages + 1):
            body = await self.fetch(current, settings)
            page: Page = await self.to_thread(partial(parse_page, body))
            for dt in page.downtimes:
                found.setdefault((dt.id, dt.hostname, dt.service_type), dt)
            skipped.extend(page.skipped)
            # cursor paging: a page with rows always links to a next one; the last page is empty
            if not page.next_href or not page.downtimes or current.startswith("file://"):
                return tuple(found.values()), tuple(skipped), number
            current = next_page_url(current, page.next_href)
        raise GocdbError(f"more than {settings.max_pages} pages ([gocdb] max_pages)")

    def apply(self) -> None:
        """Map every source's last good set to the current endpoints and hand it to the book."""
        config = self.config()
        now = self.clock.seconds()
        declared: list[Declared] = []
        seen: set[str] = set()
        for state in self.sources.values():
            mapped = to_declared(state.downtimes or (), config.endpoints, config.gocdb, now)
            state.unmatched_hosts = mapped.unmatched_hosts
            for d in mapped.declared:
                if d.id not in seen:  # two queries may list the same downtime
                    seen.add(d.id)
                    declared.append(d)
        self.applied = len(declared)
        self.book.replace_source(ORIGIN, declared)

    def to_json(self) -> dict[str, Any]:
        settings = self.config().gocdb
        return {
            "interval": settings.interval,
            "next_refresh": self.next_refresh,
            "refreshes": self.refreshes,
            "applied": self.applied,
            "outage": settings.outage,
            "warning": settings.warning,
            "sources": [state.to_json() for state in self.sources.values()],
        }


def _iso(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

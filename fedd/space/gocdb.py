"""Downtimes declared in GOCDB, read from its programmatic interface (PI) and applied like fedd's own.

Reading a page: `fedd.space.gocdb_document`; mapping it to fedd's downtimes:
`fedd.space.gocdb_mapping`.

Fetching (`GocdbService`): every `[gocdb] interval` each `url` is read (http(s) through fedd's
non-blocking HttpClient with a timeout, a body cap of `max_bytes` and certificate verification
against the system roots or `ca_file`; `file://` in the thread pool, capped the same way), parsed in
the thread pool with lxml (no DTDs, no entities, no network), mapped, and handed to the book as the
whole "gocdb" set. A source that fails (unreachable, HTTP error, malformed or oversized document,
an `<error>` answer) keeps its last good set; the error is logged in one line and shown in the
status with the time of the last fetch, the number of downtimes and the last error.

With `[server] workers` > 1, worker 0 alone reads GOCDB (one host, one reader: GOCDB sees the
queries of one fedd) and publishes each refresh's sources in the run directory (`gocdb.json`,
fedd.workers.shared.HostShare); the other workers apply it within 0.25 s, as they do its health
and space results, and show the same status. A restarted worker 0 reads again at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS

from fedd.config import Config, GocdbConfig
from fedd.errors import EndpointError
from fedd.space.downtime import Declared, DowntimeBook
from fedd.space.gocdb_document import GocdbDowntime, GocdbError, Page, next_page_url, parse_page, redact
from fedd.space.gocdb_mapping import ORIGIN, Mapped, endpoint_hostnames, to_declared
from fedd.twtypes import Service

__all__ = [  # parsing and mapping live beside this module; importable from here too
    "Fetcher",
    "GocdbDowntime",
    "GocdbError",
    "GocdbService",
    "Mapped",
    "Page",
    "endpoint_hostnames",
    "next_page_url",
    "parse_page",
    "to_declared",
]

log = Logger(namespace="fedd.gocdb")

SHARED_NAME = "gocdb"  # the run-directory file worker 0 publishes its refreshes in
MAX_LISTED = 10  # unmatched host names and skipped-element reasons shown in the status


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

    Settings and endpoints come from the running configuration (`reconfigure` on a reload), read
    at every refresh, so a reload applies at the next one. Each refresh catches its own errors; a
    source that fails keeps its last good set."""

    name = "gocdb"

    def __init__(
        self,
        book: DowntimeBook,
        *,
        clock: Any,
        config: Config,
        fetch: Fetch,
        to_thread: ToThread,
        shared: Any = None,
    ) -> None:
        self.book = book
        self.shared = shared  # fedd.workers.shared.HostShare of a worker: worker 0 reads, the others follow
        self._follow: Any = None
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

    def reconfigure(self, new: Config) -> list[str]:
        self.config = new  # the next refresh reads it
        return []

    @property
    def follower(self) -> bool:
        return self.shared is not None and not self.shared.leader

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        if self.follower:
            self._follow = self.shared.follow(SHARED_NAME, self.adopt, self.clock)
            return
        self._tick()

    def stopService(self) -> Any:
        super().stopService()
        self._stopped = True
        if self._follow is not None and self._follow.running:
            self._follow.stop()
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
        interval = self.config.gocdb.interval
        self.next_refresh = self.clock.seconds() + interval
        self._timer = self.clock.callLater(interval, self._tick)

    def _failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("GOCDB refresh failed", failure)  # a bug: refresh() catches what it expects

    def _done(self, _: Any) -> None:
        self._inflight = None

    async def refresh(self) -> None:
        """Read every configured source once, then hand the book the whole mapped set."""
        settings = self.config.gocdb
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
        if self.shared is not None:
            self.shared.publish(SHARED_NAME, self.published())

    def published(self) -> dict[str, Any]:
        """What worker 0 hands the other workers after a refresh: every source's state."""
        return {
            "refreshes": self.refreshes,
            "next_refresh": self.next_refresh,
            "sources": [
                {
                    **{k: v for k, v in asdict(state).items() if k != "downtimes"},
                    "downtimes": None if state.downtimes is None else [asdict(d) for d in state.downtimes],
                }
                for state in self.sources.values()
            ],
        }

    def adopt(self, data: dict[str, Any]) -> None:
        """A follower: take worker 0's sources (see `published`) and apply them to this worker's book."""
        sources: dict[str, SourceState] = {}
        for item in data["sources"]:
            raw = item["downtimes"]
            sources[item["url"]] = SourceState(
                url=item["url"],
                downtimes=None if raw is None else tuple(GocdbDowntime(**d) for d in raw),
                fetched_at=item["fetched_at"],
                attempted_at=item["attempted_at"],
                pages=item["pages"],
                skipped=tuple(item["skipped"]),
                last_error=item["last_error"],
                last_error_at=item["last_error_at"],
                unmatched_hosts=tuple(item["unmatched_hosts"]),
                errors=item["errors"],
            )
        self.sources = sources
        self.refreshes = int(data["refreshes"])
        self.next_refresh = data["next_refresh"]
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
        config = self.config
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
        settings = self.config.gocdb
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

"""Merged collection listings: every endpoint that may list a path asked in parallel, their
answers merged by name (a collection wins over a file of the same name in `listdir`; in a streamed
listing the first endpoint to name an entry gives its stat, memory holding only the names).

Health rules as everywhere: a path refused by an endpoint is its answer, not its fault; a failure or a
stall is a passive fault (an early probe), and the listing names the endpoints missing from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from fedd.endpoints.base import Endpoint, Entry, Stat, Valve
from fedd.errors import EndpointError, NoReplicaAvailable, PathRefused, describe
from fedd.health.service import HealthRegistry
from fedd.namespace import Namespace


@dataclass(frozen=True)
class Listing:
    """A merged collection listing: `entries` by name, in name order."""

    path: str
    entries: list[Entry]
    failed: dict[str, str]


class Listings:
    def __init__(
        self,
        *,
        clock: IReactorTime,
        endpoints: Mapping[str, Endpoint],
        health: HealthRegistry,
        namespace: Namespace,
        not_answering: Callable[[str, dict[str, str]], NoReplicaAvailable],
    ) -> None:
        self.clock = clock
        self.endpoints = endpoints
        self.health = health
        self.namespace = namespace
        self._not_answering = not_answering  # the 503 (with Retry-After) for endpoints that did not answer

    def reconfigure(self, namespace: Namespace) -> None:
        """A reload's mappings (the endpoint objects are swapped in the shared dict by the fleet)."""
        self.namespace = namespace

    def listable(self, path: str) -> dict[str, str]:
        return {
            t.endpoint: t.path
            for t in self.namespace.targets(path)
            if t.endpoint in self.endpoints
            and self.endpoints[t.endpoint].config.list
            and self.health.usable(t.endpoint)
        }

    def unlistable(self, path: str) -> dict[str, str]:
        """Endpoints that list `path` but cannot be asked now (offline, in a read downtime)."""
        out: dict[str, str] = {}
        for t in self.namespace.targets(path):
            ep = self.endpoints.get(t.endpoint)
            if ep is not None and ep.config.list and not self.health.usable(t.endpoint):
                out[t.endpoint] = "in a read downtime" if t.endpoint in self.health.read_blocked else "offline"
        return out

    async def listdir(self, path: str, via: tuple[str, ...] = (), skip: frozenset[str] = frozenset()) -> Listing | None:
        """Merged listing of a collection, or None when no endpoint has `path` as a collection.
        `failed` names the endpoints missing from it (did not answer, offline, in a downtime).
        `skip`: endpoints known not to hold `path` as a collection (not asked)."""
        targets = {eid: p for eid, p in self.listable(path).items() if eid not in skip}
        ids = sorted(targets)
        results = await DeferredList([self._list_one(eid, targets[eid], via) for eid in ids], consumeErrors=True)
        merged: dict[str, Entry] = {}
        failed: dict[str, str] = self.unlistable(path)
        any_collection = False
        for eid, (ok, value) in zip(ids, results, strict=False):
            if not ok:
                failed[eid] = describe(value)
                continue
            if value is None:
                continue
            any_collection = True
            for entry in value:
                old = merged.get(entry.name)
                if old is None or (entry.stat.is_dir and not old.stat.is_dir):
                    merged[entry.name] = entry
        for name in self.namespace.virtual_children(path):
            any_collection = True
            if name not in merged or not merged[name].stat.is_dir:
                merged[name] = Entry(name, Stat(is_dir=True))
        if path == "/":
            any_collection = True
        if not any_collection:
            if failed:
                raise self._not_answering(f"{path}: cannot be listed now", failed)
            return None
        return Listing(path, [merged[k] for k in sorted(merged)], failed)

    async def stream_listing(
        self,
        path: str,
        on_start: Callable[[], None],
        on_entries: Callable[[list[Entry]], None],
        via: tuple[str, ...] = (),
        skip: frozenset[str] = frozenset(),
        valve: Valve | None = None,
    ) -> dict[str, str] | None:
        """A merged listing handed on as the endpoints answer, for listings of any size: `on_start`
        once the path is known to be a collection (the first endpoint that lists it), then
        `on_entries` with each new batch, names already seen left out (the first endpoint to name
        an entry gives its stat). Returns the endpoints missing from the listing (did not answer,
        offline, in a downtime), or None when no endpoint has `path` as a collection (nothing was
        handed on). Memory: the set of names, not the entries."""
        targets = {eid: p for eid, p in self.listable(path).items() if eid not in skip}
        failed = self.unlistable(path)
        seen: set[str] = set()
        started = False

        def start() -> None:
            nonlocal started
            if not started:
                started = True
                on_start()

        def take(entries: list[Entry]) -> None:
            fresh = [e for e in entries if e.name not in seen]
            seen.update(e.name for e in fresh)
            if not fresh:
                return
            start()
            on_entries(fresh)

        virtual = [Entry(name, Stat(is_dir=True)) for name in sorted(self.namespace.virtual_children(path))]
        if virtual or path == "/":
            start()
            take(virtual)

        async def one(eid: str) -> None:
            began = self.clock.seconds()
            # no total limit (a listing of a million names takes long), but an idle one: the first
            # batch within 4 x the endpoint's timeout, then one at least every 2 x its timeout
            idle = self.endpoints[eid].config.timeout
            watchdog: list[Any] = [None]

            def handed_on(entries: list[Entry]) -> None:
                if watchdog[0] is not None and watchdog[0].active():
                    watchdog[0].reset(idle * 2)
                take(entries)

            d = self.endpoints[eid].list_stream(targets[eid], handed_on, via=via, valve=valve)
            stalled: list[bool] = []

            def stall() -> None:
                stalled.append(True)
                d.cancel()

            watchdog[0] = self.clock.callLater(idle * 4, stall)
            try:
                is_collection = await d
            except PathRefused:
                self.health.refused(eid)
                return
            except Exception as exc:  # an endpoint bug must not break the listing of the others
                if stalled:
                    reason = f"listing stalled: nothing for {idle * 2:g}s"
                elif isinstance(exc, EndpointError):
                    reason = describe(exc)
                else:
                    reason = f"listing failed: {type(exc).__name__}"
                self.health.passive_failure(eid, reason)
                failed[eid] = reason
                return
            finally:
                if watchdog[0] is not None and watchdog[0].active():
                    watchdog[0].cancel()
            self.health.observed(eid, (self.clock.seconds() - began) * 1000.0)
            if is_collection:
                start()

        await DeferredList([ensureDeferred(one(eid)) for eid in sorted(targets)], consumeErrors=True)
        if not started:
            if failed:
                raise self._not_answering(f"{path}: cannot be listed now", failed)
            return None
        return failed

    def _list_one(self, eid: str, path: str, via: tuple[str, ...] = ()) -> Deferred[list[Entry] | None]:
        started = self.clock.seconds()
        d = ensureDeferred(self._call_list(eid, path, via))

        def ok(value: list[Entry] | None) -> list[Entry] | None:
            self.health.observed(eid, (self.clock.seconds() - started) * 1000.0)
            return value

        def bad(failure: Any) -> Any:
            if failure.check(PathRefused):
                self.health.refused(eid)
                return None  # refused for its name: not a collection there, and not the endpoint's fault
            self.health.passive_failure(eid, describe(failure))
            return failure

        d.addCallbacks(ok, bad)
        return d

    async def _call_list(self, eid: str, path: str, via: tuple[str, ...] = ()) -> list[Entry] | None:
        d = self.endpoints[eid].listdir(path, via=via)
        d.addTimeout(self.endpoints[eid].config.timeout * 4, self.clock)
        try:
            return await d
        except (EndpointError, PathRefused):
            raise
        except Exception as exc:
            raise EndpointError(eid, f"listing failed: {type(exc).__name__}") from exc

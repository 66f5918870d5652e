"""The endpoint objects of the running configuration, by id: built at start, swapped on reload,
closed on stop.

One `EndpointFleet` owns the dict that the locator, the health poller, the space reporter and the
writer read (`fleet.endpoints`). A reload (`reconfigure`) keeps the objects of unchanged endpoints
(their connection pools, signed-URL caches and health history), builds new objects for new and
changed ones, and closes the retired objects only after a grace period, so requests already using
them finish. `changes` tells the services reconfigured after it which ids were added, changed or
removed by the last reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedd.config import Config, EndpointConfig
from fedd.endpoints import Endpoint, close_endpoint
from fedd.twtypes import Service

log = Logger(namespace="fedd.reload")
CLOSE_GRACE = 120.0  # seconds a retired endpoint object lives on for requests that still use it

EndpointFactory = Callable[[EndpointConfig, Config], Endpoint]


@dataclass(frozen=True)
class FleetChanges:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    mappings_changed: bool = False

    @property
    def placed(self) -> tuple[str, ...]:
        """Endpoints with a new object (new or changed): located and measured afresh."""
        return self.added + self.changed

    @property
    def membership(self) -> bool:
        """Could a path now be found where it was not before (or the reverse)?"""
        return bool(self.added or self.removed or self.mappings_changed)

    def describe(self) -> str:
        parts = []
        for word, ids in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if ids:
                parts.append(f"{word} {', '.join(sorted(ids))}")
        return "; ".join(parts)


class EndpointFleet(Service):
    name = "endpoints"

    def __init__(self, config: Config, make: EndpointFactory, clock: IReactorTime) -> None:
        self._make = make
        self._clock = clock
        self._configs = {ep.id: ep for ep in config.endpoints}
        self._mappings = [(ep.id, ep.mappings) for ep in config.endpoints]
        self.endpoints: dict[str, Endpoint] = {ep.id: make(ep, config) for ep in config.endpoints}
        self.changes = FleetChanges()
        self._retiring: list[tuple[Any, Endpoint]] = []  # (delayed close, retired object)

    def reconfigure(self, new: Config) -> list[str]:
        after = {ep.id: ep for ep in new.endpoints}
        before = self._configs
        added = tuple(eid for eid in after if eid not in before)
        removed = tuple(eid for eid in before if eid not in after)
        changed = tuple(eid for eid in after if eid in before and after[eid] != before[eid])
        retired = [self.endpoints.pop(eid) for eid in removed + changed]
        for eid in added + changed:
            self.endpoints[eid] = self._make(after[eid], new)
        for endpoint in retired:
            self._retiring.append((self._clock.callLater(CLOSE_GRACE, self._close, endpoint), endpoint))
        mappings = [(ep.id, ep.mappings) for ep in new.endpoints]
        self.changes = FleetChanges(added, changed, removed, mappings != self._mappings)
        self._configs, self._mappings = after, mappings
        if self.changes.describe():
            log.info("reload: endpoints {changes}", changes=self.changes.describe())
        return []

    def _close(self, endpoint: Endpoint) -> Deferred[None]:
        self._retiring = [(call, ep) for call, ep in self._retiring if ep is not endpoint]
        d = ensureDeferred(close_endpoint(endpoint))
        d.addErrback(lambda f: log.failure("closing a retired endpoint failed", f))
        return d

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        retired = []
        for call, endpoint in self._retiring:
            if call.active():
                call.cancel()
                retired.append(endpoint)
        self._retiring = []
        closing = [ensureDeferred(close_endpoint(ep)) for ep in [*self.endpoints.values(), *retired]]
        return DeferredList(closing, consumeErrors=True)

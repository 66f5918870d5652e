"""The `health` service: polls every endpoint on a period and keeps its state with hysteresis."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedd.config import HealthConfig
from fedd.endpoints import Endpoint
from fedd.errors import EndpointError
from fedd.health.state import OFFLINE, EndpointHealth, Transition

log = Logger(namespace="fedd.health")


class HealthRegistry:
    """Per-endpoint health, fed by the poller and by failures seen while serving clients."""

    def __init__(self, endpoint_ids: list[str], config: HealthConfig, clock: IReactorTime) -> None:
        self._clock = clock
        self.config = config
        self.states: dict[str, EndpointHealth] = {
            eid: EndpointHealth(eid, config.failures_to_offline, config.successes_to_online) for eid in endpoint_ids
        }
        self.listeners: list[Callable[[Transition], None]] = []
        self.version = 0  # bumped on every state change, so rankings can be cached per version
        self.read_blocked: frozenset[str] = frozenset()  # endpoints in a planned downtime for reads

    def usable(self, endpoint_id: str) -> bool:
        return self.states[endpoint_id].usable and endpoint_id not in self.read_blocked

    def block_reads(self, endpoint_ids: frozenset[str]) -> None:
        if endpoint_ids != self.read_blocked:
            self.read_blocked = endpoint_ids
            self.version += 1

    def success(self, endpoint_id: str, latency_ms: float | None) -> None:
        self._notify(self.states[endpoint_id].success(latency_ms, self._clock.seconds()))

    def failure(self, endpoint_id: str, reason: str, *, passive: bool = False) -> None:
        self._notify(self.states[endpoint_id].failure(reason, self._clock.seconds(), passive=passive))

    def _notify(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self.version += 1
        level = log.warn if transition.new == OFFLINE else log.info
        level(
            "endpoint {endpoint} {old} -> {new}: {reason}",
            endpoint=transition.endpoint,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
        )
        for listener in self.listeners:
            try:
                listener(transition)
            except Exception:
                log.failure("health listener failed")

    def to_json(self) -> dict[str, Any]:
        return {eid: h.to_json() for eid, h in self.states.items()}


class HealthService(Service):
    name = "health"

    def __init__(self, registry: HealthRegistry, endpoints: Mapping[str, Endpoint], clock: IReactorTime) -> None:
        self.registry = registry
        self.endpoints = endpoints
        self.clock = clock
        self._loop: LoopingCall | None = None
        self._loop_done: Deferred[Any] | None = None
        self._inflight: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.poll_once)
        self._loop.clock = self.clock
        self._loop_done = self._loop.start(self.registry.config.interval, now=True)
        self._loop_done.addErrback(lambda f: log.failure("health loop stopped", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        inflight = self._inflight
        return (inflight if inflight is not None else succeed(None)).addBoth(lambda _: None)

    def poll_once(self) -> Deferred[Any]:
        """Probe every endpoint once, concurrently. Never fails: errors are recorded, not raised."""
        if self._inflight is not None:
            return self._inflight  # previous round still running: do not pile up
        probes = [self._probe(eid, ep) for eid, ep in self.endpoints.items()]
        d: Deferred[Any] = DeferredList(probes, consumeErrors=True)

        def done(result: Any) -> None:
            self._inflight = None

        d.addBoth(done)
        self._inflight = d
        return d

    def _probe(self, eid: str, endpoint: Endpoint) -> Deferred[None]:
        return ensureDeferred(self._probe_one(eid, endpoint))

    async def _probe_one(self, eid: str, endpoint: Endpoint) -> None:
        start = self.clock.seconds()
        try:
            d = endpoint.probe()
            d.addTimeout(self.registry.config.timeout, self.clock)
            await d
        except EndpointError as exc:
            self.registry.failure(eid, exc.reason)
        except (defer.TimeoutError, defer.CancelledError):
            self.registry.failure(eid, f"probe timed out after {self.registry.config.timeout:g}s")
        except Exception as exc:
            log.failure("probe of {endpoint} failed unexpectedly", Failure(), endpoint=eid)
            self.registry.failure(eid, f"{type(exc).__name__}: {exc}")
        else:
            self.registry.success(eid, (self.clock.seconds() - start) * 1000.0)

"""The `health` service: polls every endpoint on a period and keeps its state with hysteresis."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedd.config import Config, HealthConfig
from fedd.endpoints import Endpoint
from fedd.errors import EndpointError
from fedd.health.state import OFFLINE, EndpointHealth, Transition
from fedd.periodic import Periodic
from fedd.twtypes import Service

log = Logger(namespace="fedd.health")


EARLY_PROBE_GAP = 1.0  # seconds between two probes of one endpoint asked for by faults, not the period


class HealthRegistry:
    """Per-endpoint health. Only the poller's probes change a state; faults seen while serving
    clients are counted and ask for an early probe (`suspects` listeners), nothing more."""

    def __init__(self, endpoint_ids: list[str], config: HealthConfig, clock: IReactorTime) -> None:
        self._clock = clock
        self.config = config
        self.states: dict[str, EndpointHealth] = {
            eid: EndpointHealth(eid, config.failures_to_offline, config.successes_to_online) for eid in endpoint_ids
        }
        self.listeners: list[Callable[[Transition], None]] = []
        self.suspects: list[Callable[[str], None]] = []  # told of passive faults: the poller probes early
        self.version = 0  # bumped on every state change, so rankings can be cached per version
        self.read_blocked: frozenset[str] = frozenset()  # endpoints in a planned downtime for reads

    def reconfigure(self, new: Config) -> list[str]:
        """New thresholds; endpoints that came get a fresh state, those that went lose theirs. Cached
        rankings are recomputed (the version moves)."""
        self.config = new.health
        ids = [ep.id for ep in new.endpoints]
        for eid in [eid for eid in self.states if eid not in ids]:
            del self.states[eid]
        for eid in ids:
            state = self.states.get(eid)
            if state is None:
                self.states[eid] = EndpointHealth(eid, new.health.failures_to_offline, new.health.successes_to_online)
            else:
                state.failures_to_offline = new.health.failures_to_offline
                state.successes_to_online = new.health.successes_to_online
        self.version += 1
        return []

    def usable(self, endpoint_id: str) -> bool:
        return self.states[endpoint_id].usable and endpoint_id not in self.read_blocked

    def block_reads(self, endpoint_ids: frozenset[str]) -> None:
        if endpoint_ids != self.read_blocked:
            self.read_blocked = endpoint_ids
            self.version += 1

    def success(self, endpoint_id: str, latency_ms: float | None) -> None:
        """A probe answered."""
        state = self.states[endpoint_id]
        was_failing = state.consecutive_failures > 0
        self._notify(state.success(latency_ms, self._clock.seconds()))
        if was_failing:
            self.version += 1  # no longer failing: ranked as usual again

    def failure(self, endpoint_id: str, reason: str) -> None:
        """A probe failed. The first failure already ranks the endpoint after the others (`failing`),
        before the hysteresis takes it offline: a file with another replica is sent there at once."""
        state = self.states[endpoint_id]
        self._notify(state.failure(reason, self._clock.seconds()))
        if state.consecutive_failures == 1:
            self.version += 1

    def failing(self, endpoint_id: str) -> bool:
        """Its last probe failed (it may still be usable, ranked after the others)."""
        state = self.states.get(endpoint_id)
        return state is not None and state.consecutive_failures > 0

    def observed(self, endpoint_id: str, latency_ms: float) -> None:
        """A client request was answered by the endpoint: latency for the ranking, no state change."""
        state = self.states.get(endpoint_id)
        if state is not None:
            state.observe(latency_ms)

    def passive_failure(self, endpoint_id: str, reason: str) -> None:
        """An endpoint fault (refused, reset, TLS, timeout, 5xx) seen while serving a client: counted,
        and the poller is asked to probe early. The state itself changes only by probes."""
        state = self.states.get(endpoint_id)
        if state is None:
            return
        state.passive_failure(reason, self._clock.seconds())
        self.suspect(endpoint_id)

    def refused(self, endpoint_id: str) -> None:
        """The endpoint refused a request for its path (the request's fault): counted, nothing more."""
        state = self.states.get(endpoint_id)
        if state is not None:
            state.refusals += 1

    def suspect(self, endpoint_id: str) -> None:
        """Ask for an early probe of an endpoint (rate-limited by the poller)."""
        for listener in self.suspects:
            try:
                listener(endpoint_id)
            except Exception:
                log.failure("health suspect listener failed")

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

    def adopt(self, published: Mapping[str, Any]) -> None:
        """Take the probe results another worker of this host published (`to_json` of its registry).
        Its transitions were announced there (log, events): here only the ranking moves."""
        for eid, data in published.items():
            state = self.states.get(eid)
            if state is None or not isinstance(data, dict):
                continue
            before = (state.state, state.consecutive_failures > 0)
            for name in _ADOPTED:
                if name in data:
                    setattr(state, name, data[name])
            if (state.state, state.consecutive_failures > 0) != before:
                self.version += 1


# what a worker takes from the probing worker; passive failures and refusals stay its own counts
_ADOPTED = (
    "state",
    "latency_ms",
    "consecutive_failures",
    "consecutive_successes",
    "last_check",
    "last_change",
    "last_error",
    "last_error_at",
    "checks",
    "failures",
)


class HostShare(Protocol):
    """Results one worker of the host measures for all (`fedd.workers.shared.HostShare`)."""

    leader: bool

    def publish(self, name: str, data: Any) -> None: ...

    def follow(self, name: str, apply: Callable[[Any], None], clock: IReactorTime) -> Periodic: ...


class HealthService(Service):
    """Probes the endpoints. With `shared` (`[server] workers`), only the leading worker probes and
    publishes each result; the others follow what it publishes and never probe themselves."""

    name = "health"

    def __init__(
        self,
        registry: HealthRegistry,
        endpoints: Mapping[str, Endpoint],
        clock: IReactorTime,
        *,
        shared: HostShare | None = None,
    ) -> None:
        self.registry = registry
        self.endpoints = endpoints
        self.clock = clock
        self.shared = shared
        self.following = shared is not None and not shared.leader
        self._loop: Periodic | None = None
        self._inflight: Deferred[Any] | None = None
        self._probing: dict[str, Deferred[None]] = {}  # endpoint id -> its probe under way
        self._last_probe: dict[str, float] = {}  # endpoint id -> when its last probe started
        self._early: dict[str, Any] = {}  # endpoint id -> scheduled early probe (IDelayedCall)
        self._suspects: Periodic | None = None  # the leader's reading of the others' suspects
        registry.suspects.append(self.probe_soon)

    def startService(self) -> None:
        super().startService()
        if self.shared is not None and self.following:
            self._loop = self.shared.follow("health", self.registry.adopt, self.clock)
            return
        self._loop = Periodic(self.clock, self.poll_once, "health round").start(self.registry.config.interval)
        if self.shared is not None:  # the leader: faults the other workers saw ask for early probes
            self._suspects = self.shared.follow("suspects", self._suspected, self.clock)

    def _suspected(self, published: Any) -> None:
        if isinstance(published, dict):
            for eid in published:
                self.probe_soon(eid)

    def reconfigure(self, new: Config) -> list[str]:
        """A reload (after the registry's): a new `[health] interval` restarts the loop, its next
        round one new interval from now."""
        if self.running and not self.following and self._loop is not None:
            self._loop.retime(new.health.interval, "[health] interval")
        return []

    @property
    def interval(self) -> float | None:
        """The period in force (None when not running)."""
        return self._loop.interval if self._loop is not None else None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._cancel_early()
        for loop in (self._loop, self._suspects):
            if loop is not None and loop.running:
                loop.stop()
        inflight = self._inflight
        return (inflight if inflight is not None else succeed(None)).addBoth(lambda _: None)

    def poll_once(self) -> Deferred[Any]:
        """Probe every endpoint once, concurrently. Never fails: errors are recorded, not raised."""
        if self._inflight is not None:
            return self._inflight  # previous round still running: do not pile up
        probes = [self._probe(eid, ep) for eid, ep in self.endpoints.items()]
        d: Deferred[Any] = DeferredList(probes, consumeErrors=True)
        self._inflight = d  # before the callback: a round whose probes all answer at once is done now

        def done(result: Any) -> None:
            if self._inflight is d:
                self._inflight = None

        d.addBoth(done)
        return d

    def _probe(self, eid: str, endpoint: Endpoint) -> Deferred[None]:
        running = self._probing.get(eid)
        if running is not None:
            return running  # an early probe is under way: the poll round shares it
        self._last_probe[eid] = self.clock.seconds()
        d = ensureDeferred(self._probe_one(eid, endpoint))
        self._probing[eid] = d

        def done(_: Any) -> None:
            self._probing.pop(eid, None)
            if self.shared is not None:
                self.shared.publish("health", self.registry.to_json())
            state = self.registry.states.get(eid)
            if self.running and state is not None and state.consecutive_failures and state.state != OFFLINE:
                # failing but not yet offline: the next probes come early, so a dead endpoint is
                # taken out within failures_to_offline x EARLY_PROBE_GAP, not a whole interval
                self.probe_soon(eid)

        d.addBoth(done)
        return d

    def probe_soon(self, eid: str) -> None:
        """Probe one endpoint early (a client saw it fail): at once, or EARLY_PROBE_GAP after its last
        probe; never more than one probe of an endpoint at a time, so faults cannot pile probes up."""
        endpoint = self.endpoints.get(eid)
        if self.following and self.shared is not None and self.running:
            # the leader probes: tell it (at most once per EARLY_PROBE_GAP and endpoint from here)
            now = self.clock.seconds()
            if now - self._last_probe.get(eid, -EARLY_PROBE_GAP) >= EARLY_PROBE_GAP:
                self._last_probe[eid] = now
                self.shared.publish("suspects", {eid: now})
            return
        if not self.running or endpoint is None or eid in self._probing or eid in self._early:
            return
        wait = self._last_probe.get(eid, -EARLY_PROBE_GAP) + EARLY_PROBE_GAP - self.clock.seconds()

        def fire() -> None:
            self._early.pop(eid, None)
            current = self.endpoints.get(eid)
            if self.running and current is not None and eid not in self._probing:
                self._probe(eid, current)

        if wait <= 0:
            self._early[eid] = None  # guards against re-entry while the probe starts
            fire()
        else:
            self._early[eid] = self.clock.callLater(wait, fire)

    def _cancel_early(self) -> None:
        for call in self._early.values():
            if call is not None and call.active():
                call.cancel()
        self._early.clear()

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

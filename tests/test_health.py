"""Health: hysteresis (pure) and the polling service (driven by a Clock)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fedd.config import HealthConfig
from fedd.health.service import EARLY_PROBE_GAP, HealthRegistry, HealthService
from fedd.health.state import OFFLINE, ONLINE, UNKNOWN, EndpointHealth, Transition
from tests.fakes import FakeEndpoint


def test_hysteresis() -> None:
    h = EndpointHealth("e", failures_to_offline=3, successes_to_online=2)
    assert h.state == UNKNOWN and h.usable
    assert h.success(10.0, 1).new == ONLINE  # type: ignore[union-attr]
    assert h.failure("x", 2) is None
    assert h.failure("x", 3) is None
    assert h.success(10.0, 4) is None  # a success resets the failure count
    assert h.failure("x", 5) is None and h.failure("x", 6) is None
    t = h.failure("timeout", 7)
    assert t is not None and t.new == OFFLINE and t.reason == "timeout"
    assert not h.usable
    assert h.success(5.0, 8) is None and h.state == OFFLINE
    t = h.success(5.0, 9)
    assert t is not None and t.new == ONLINE


def test_latency_is_smoothed() -> None:
    h = EndpointHealth("e")
    h.success(100.0, 1)
    h.success(200.0, 2)
    assert h.latency_ms is not None and 100 < h.latency_ms < 200


def test_passive_failures_are_counted_but_never_change_the_state() -> None:
    h = EndpointHealth("e", failures_to_offline=2)
    h.success(5.0, 0)
    for i in range(100):
        h.passive_failure("client saw timeout", i + 1)
    assert h.state == ONLINE and h.passive_failures == 100 and h.checks == 1
    assert h.last_error == "client saw timeout"


def _registry(*eps: FakeEndpoint, interval: float = 30.0) -> tuple[HealthRegistry, HealthService, Clock]:
    clock = Clock()
    endpoints = {e.id: e for e in eps}
    reg = HealthRegistry(list(endpoints), HealthConfig(interval=interval, timeout=3, failures_to_offline=3), clock)
    return reg, HealthService(reg, endpoints, clock), clock


def test_a_passive_fault_asks_for_an_early_probe_and_only_the_probes_take_the_endpoint_offline() -> None:
    ep = FakeEndpoint("e")
    reg, svc, clock = _registry(ep)
    svc.startService()
    assert ep.probes == 1 and reg.states["e"].state == ONLINE
    clock.advance(5)
    reg.passive_failure("e", "connection refused")  # the endpoint answers its probes: it stays online
    assert ep.probes == 2 and reg.states["e"].state == ONLINE
    for _ in range(50):  # a storm of faults costs at most one probe per EARLY_PROBE_GAP
        reg.passive_failure("e", "connection refused")
    assert ep.probes == 2
    clock.advance(EARLY_PROBE_GAP)
    assert ep.probes == 3 and reg.states["e"].state == ONLINE
    ep.probe_ok = False  # now it is really down: the early probes follow each other until it is offline
    reg.passive_failure("e", "connection refused")
    clock.pump([EARLY_PROBE_GAP] * 4)
    assert reg.states["e"].state == OFFLINE
    assert clock.seconds() < 5 + 30  # long before the next poll period
    probes = ep.probes
    clock.pump([EARLY_PROBE_GAP] * 5)  # offline: no more early probes, the poller's period again
    assert ep.probes == probes
    svc.stopService()


def test_suspect_without_a_running_poller_does_nothing() -> None:
    ep = FakeEndpoint("e")
    reg, _svc, clock = _registry(ep)
    reg.passive_failure("e", "reset")
    clock.advance(10)
    assert ep.probes == 0 and reg.states["e"].state == UNKNOWN


class HangingEndpoint(FakeEndpoint):
    def probe(self) -> Deferred[None]:
        self.probes += 1
        return Deferred()


def test_poller_marks_endpoints_and_survives_errors() -> None:
    clock = Clock()
    good, bad = FakeEndpoint("good"), FakeEndpoint("bad", probe_ok=False)
    hang = HangingEndpoint("hang")
    endpoints = {"good": good, "bad": bad, "hang": hang}
    reg = HealthRegistry(list(endpoints), HealthConfig(interval=10, timeout=3, failures_to_offline=2), clock)
    seen: list[str] = []
    reg.listeners.append(lambda t: seen.append(f"{t.endpoint}:{t.new}"))

    def broken(t: Transition) -> None:  # a broken listener must not break the poller
        raise ZeroDivisionError("a listener's bug")

    reg.listeners.append(broken)
    svc = HealthService(reg, endpoints, clock)
    svc.startService()
    assert reg.states["good"].state == ONLINE
    clock.advance(3)  # the hanging probe times out
    clock.advance(7)
    clock.advance(3)
    assert reg.states["bad"].state == OFFLINE
    assert reg.states["hang"].state == OFFLINE
    assert "timed out" in reg.states["hang"].last_error
    assert seen == ["good:online", "bad:offline", "hang:offline"]
    bad.probe_ok = True
    clock.pump([1] * 20)  # step by step: Clock schedules new calls relative to the end of an advance
    assert reg.states["bad"].state == ONLINE
    assert good.probes == 4
    d = svc.stopService()
    clock.advance(3)
    assert d.called

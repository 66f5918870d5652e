"""Endpoint health with hysteresis. Pure: every change takes an explicit `now`.

States: `unknown` (no data yet: usable, so a fresh start serves at once), `online`, `offline`.
N consecutive failed probes take an endpoint offline, M consecutive successful probes bring it back.

Only probes change the state. What is seen while serving clients ("passive") is counted and shown,
and a passive fault asks the poller for an early probe, but it never moves the state itself:
clients choose the paths they ask for, and no path a client chooses may take an endpoint offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNKNOWN = "unknown"
ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True)
class Transition:
    endpoint: str
    old: str
    new: str
    reason: str
    at: float


@dataclass
class EndpointHealth:
    endpoint: str
    failures_to_offline: int = 3
    successes_to_online: int = 2
    state: str = UNKNOWN
    latency_ms: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_check: float | None = None
    last_change: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    checks: int = 0
    failures: int = 0
    passive_failures: int = 0
    refusals: int = 0  # requests the endpoint refused for their path (4xx, ENOTDIR): never a fault
    history: list[Transition] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.state != OFFLINE

    def success(self, latency_ms: float | None, now: float) -> Transition | None:
        self.checks += 1
        self.last_check = now
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if latency_ms is not None:
            self.observe(latency_ms)  # exponentially weighted: one slow answer moves the figure, not owns it
        if self.state == UNKNOWN or (self.state == OFFLINE and self.consecutive_successes >= self.successes_to_online):
            return self._move(ONLINE, "answering", now)
        return None

    def observe(self, latency_ms: float) -> None:
        """A client request answered: its latency counts for ranking; the state does not change."""
        self.latency_ms = latency_ms if self.latency_ms is None else 0.7 * self.latency_ms + 0.3 * latency_ms

    def passive_failure(self, reason: str, now: float) -> None:
        """A fault seen while serving a client: counted and shown, not a state change."""
        self.passive_failures += 1
        self.last_error = reason
        self.last_error_at = now

    def failure(self, reason: str, now: float) -> Transition | None:
        self.checks += 1
        self.last_check = now
        self.failures += 1
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        self.last_error = reason
        self.last_error_at = now
        if self.state != OFFLINE and self.consecutive_failures >= self.failures_to_offline:
            return self._move(OFFLINE, reason, now)
        return None

    def _move(self, new: str, reason: str, now: float) -> Transition:
        transition = Transition(self.endpoint, self.state, new, reason, now)
        self.state = new
        self.last_change = now
        self.history = ([*self.history, transition])[-20:]
        return transition

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "last_check": self.last_check,
            "last_change": self.last_change,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "checks": self.checks,
            "failures": self.failures,
            "passive_failures": self.passive_failures,
            "refusals": self.refusals,
        }

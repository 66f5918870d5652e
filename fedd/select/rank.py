"""Replica ranking: pure and deterministic.

1. Offline endpoints are dropped. (`Federation.order` then puts endpoints whose last probe failed
   after all others: still usable, but never first while another replica is there.)
2. With a client location, endpoints within `fuzz_km` of the nearest one form the first tier; the
   others follow by distance; endpoints without a location come after all located ones.
   Without a client location every endpoint is in the first tier.
3. Inside a tier: online before unknown; then cost = measured latency (ms) + load penalty.
   Endpoints whose cost is within `latency_tolerance_ms` of the tier's best are equals and are
   ordered by weighted rendezvous hashing of (key, endpoint): the same file always goes to the same
   place (cache friendly), different files spread over the equals in proportion to their weights.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fedd.health.state import OFFLINE, ONLINE

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Candidate:
    endpoint: str
    lat: float | None = None
    lon: float | None = None
    state: str = ONLINE
    latency_ms: float | None = None
    load: float = 0.0  # 0 = idle .. 1 = at capacity
    weight: float = 1.0


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class Located(Protocol):
    @property
    def endpoint(self) -> str: ...
    @property
    def lat(self) -> float | None: ...
    @property
    def lon(self) -> float | None: ...


L = TypeVar("L", bound=Located)


def distance_tiers(items: Sequence[L], client: tuple[float, float] | None, fuzz_km: float) -> list[list[L]]:
    """Rule 2 above, for reads and for write placement alike: without a client location one tier;
    else the endpoints within `fuzz_km` of the nearest, then the others one by one by distance, then
    the endpoints without a location."""
    if client is None:
        return [list(items)] if items else []
    located = sorted(
        (
            (distance_km(client[0], client[1], c.lat, c.lon), c)
            for c in items
            if c.lat is not None and c.lon is not None
        ),
        key=lambda dc: (dc[0], dc[1].endpoint),
    )
    tiers: list[list[L]] = []
    if located:
        nearest = located[0][0]
        tiers.append([c for d, c in located if d <= nearest + fuzz_km])
        tiers.extend([c] for d, c in located if d > nearest + fuzz_km)
    unlocated = [c for c in items if c.lat is None or c.lon is None]
    if unlocated:
        tiers.append(unlocated)
    return tiers


def hrw(key: str, endpoint: str, weight: float) -> float:
    """Weighted rendezvous score in (0, inf): larger wins."""
    h = int.from_bytes(hashlib.blake2b(f"{endpoint}\x00{key}".encode(), digest_size=8).digest(), "big")
    u = (h + 0.5) / 18446744073709551616.0
    return -weight / math.log(u)


def _cost(c: Candidate, default_latency: float, load_penalty_ms: float) -> float:
    latency = default_latency if c.latency_ms is None else c.latency_ms
    return latency + max(0.0, c.load) * load_penalty_ms


def _order_tier(tier: list[Candidate], key: str, tolerance_ms: float, load_penalty_ms: float) -> list[Candidate]:
    out: list[Candidate] = []
    for state in (ONLINE, None):
        group = [c for c in tier if (c.state == ONLINE) == (state == ONLINE)]
        if not group:
            continue
        known = [c.latency_ms for c in group if c.latency_ms is not None]
        default = sum(known) / len(known) if known else 0.0
        costs = {c.endpoint: _cost(c, default, load_penalty_ms) for c in group}
        best = min(costs.values())
        equals = [c for c in group if costs[c.endpoint] <= best + tolerance_ms]
        rest = [c for c in group if costs[c.endpoint] > best + tolerance_ms]
        equals.sort(key=lambda c: (-hrw(key, c.endpoint, c.weight), c.endpoint))
        rest.sort(key=lambda c: (costs[c.endpoint], c.endpoint))
        out.extend(equals + rest)
    return out


def rank(
    candidates: Sequence[Candidate],
    client: tuple[float, float] | None,
    key: str,
    *,
    fuzz_km: float = 200.0,
    latency_tolerance_ms: float = 20.0,
    load_penalty_ms: float | None = None,
) -> list[str]:
    """Endpoint ids, best first. `key` (the file path) spreads equal endpoints per file."""
    penalty = latency_tolerance_ms * 2 if load_penalty_ms is None else load_penalty_ms
    usable = [c for c in candidates if c.state != OFFLINE]
    ordered: list[str] = []
    for tier in distance_tiers(usable, client, fuzz_km):
        ordered.extend(c.endpoint for c in _order_tier(tier, key, latency_tolerance_ms, penalty))
    return ordered

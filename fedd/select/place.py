"""Write placement: pure and deterministic. Where does a new file go?

1. Refused, each with its reason: endpoints that are blocked (not writable, in a write downtime),
   offline, over their quota, or whose free space after the upload would fall below their minimum.
2. The rest by tier: online before unknown health; then, with a client location, endpoints within
   `fuzz_km` of the nearest one before farther ones (by distance); endpoints with no location last.
3. Inside a tier, weighted rendezvous hashing of (path, endpoint) with weight = configured weight x
   free bytes: the same path always lands on the same endpoint for the same state (a retried upload
   goes where the first attempt went), and new files spread in proportion to free space, so a burst
   of writes does not all hit the emptiest endpoint. Unknown free space counts as the smallest known
   free space of the candidates (or 1 when nothing is known): measured room is preferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedd.health.state import OFFLINE, ONLINE
from fedd.select.rank import distance_tiers, hrw


@dataclass(frozen=True)
class WriteCandidate:
    endpoint: str
    lat: float | None = None
    lon: float | None = None
    state: str = ONLINE
    weight: float = 1.0
    free: int | None = None  # bytes free on the storage (measured), None = not known
    used: int | None = None  # bytes used (measured)
    quota: int | None = None  # configured quota in bytes
    min_free: int = 0  # keep at least this much free
    blocked: str = ""  # non-empty: why this endpoint takes no writes now (downtime, ...)


@dataclass(frozen=True)
class Placement:
    order: list[str]  # eligible endpoints, best first
    refused: dict[str, str] = field(default_factory=dict)  # endpoint -> why not

    def explain(self) -> str:
        return "; ".join(f"{eid}: {why}" for eid, why in sorted(self.refused.items()))


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def refusal(c: WriteCandidate, size: int) -> str:
    """Why `c` cannot take a file of `size` bytes; "" when it can."""
    if c.blocked:
        return c.blocked
    if c.state == OFFLINE:
        return "offline"
    if c.quota is not None and c.used is not None and c.used + size > c.quota:
        return f"over quota ({human(c.used)} used of {human(c.quota)})"
    if c.free is not None:
        if size > c.free:
            return f"not enough free space ({human(c.free)} free, upload {human(size)})"
        if c.free - size < c.min_free:
            return f"free space {human(c.free)} would fall below the minimum {human(c.min_free)}"
    return ""


def place(
    candidates: Sequence[WriteCandidate],
    client: tuple[float, float] | None,
    path: str,
    size: int = 0,
    *,
    fuzz_km: float = 200.0,
) -> Placement:
    refused: dict[str, str] = {}
    eligible: list[WriteCandidate] = []
    for c in candidates:
        why = refusal(c, size)
        if why:
            refused[c.endpoint] = why
        else:
            eligible.append(c)
    known = [c.free for c in eligible if c.free is not None]
    unknown_free = max(1, min(known)) if known else 1

    def weight(c: WriteCandidate) -> float:
        room = unknown_free if c.free is None else max(1, c.free - size)
        return c.weight * room

    order: list[str] = []
    for online in (True, False):
        group = [c for c in eligible if (c.state == ONLINE) == online]
        for tier in distance_tiers(group, client, fuzz_km):
            tier.sort(key=lambda c: (-hrw(path, c.endpoint, weight(c)), c.endpoint))
            order.extend(c.endpoint for c in tier)
    return Placement(order, refused)

"""Replication decisions: pure, no I/O. For a file hot in a region, in this order:

1. The file must be under a `[replicate] path` prefix, with a known size within min_size..max_size.
2. The target is the first endpoint of the write placement for a client in that region
   (fedd.select.place: writable, in `[replicate] target` when given, not in a write downtime, not
   offline, under its quota and above its min_free, nearest first). None: no copy, and why.
3. No copy when the target holds the file already, or another replica is as near to the region
   (within `[geo] fuzz_km`) as the target: the readers gain nothing.
4. No copy while the file is being copied, was copied or tried within `cooldown`, or the target's
   copies would exceed `target_quota`.
5. Then the shared limits: `copies` at once, `budget` bytes per hour; a file over either waits.

Eviction (`evictions`): copies unread for `cold_after`, then, per endpoint whose measured free space
is under `reserve` (or whose copies exceed `target_quota`), the least recently read copies until
enough is freed. Only recorded copies (fedd.replicate.records) are candidates; the copier keeps one
that turns out to be the only replica left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedd.config.schema import ReplicateConfig
from fedd.replicate.counting import under
from fedd.replicate.records import COPYING, DONE, EVICTED, FAILED, Record
from fedd.select.place import Placement, human
from fedd.select.rank import distance_km

HOUR = 3600.0
Location = tuple[float, float] | None


@dataclass(frozen=True)
class Decision:
    path: str
    region: str
    reads: int
    copy: bool
    target: str = ""
    size: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "region": self.region,
            "reads": self.reads,
            "action": "copy" if self.copy else "none",
            "target": self.target or None,
            "size": self.size,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Usage:
    """What the recorded copies use: bytes per endpoint, bytes started in the last hour, running."""

    per_endpoint: dict[str, int]
    last_hour: int
    running: int


def usage(records: Iterable[Record], now: float) -> Usage:
    per: dict[str, int] = {}
    last_hour = running = 0
    for r in records:
        if r.state in (DONE, COPYING):
            per[r.endpoint] = per.get(r.endpoint, 0) + r.bytes
            if now - r.created < HOUR:
                last_hour += r.bytes
        running += r.state == COPYING
    return Usage(per, last_hour, running)


def _km(a: Location, b: Location) -> float | None:
    if a is None or b is None:
        return None
    return distance_km(a[0], a[1], b[0], b[1])


def decide(
    config: ReplicateConfig,
    *,
    path: str,
    region: str,
    reads: int,
    where: Location,
    size: int | None,
    holders: Mapping[str, Location],
    placement: Placement,
    target_location: Location,
    records: list[Record],
    use: Usage,
    now: float,
    fuzz_km: float,
) -> Decision:
    def no(reason: str, target: str = "") -> Decision:
        return Decision(path, region, reads, False, target, size or 0, reason)

    if not under(path, config.paths):
        return no("not under a [replicate] path")
    if not holders:
        return no("no readable replica")
    if size is None:
        return no("the replicas announce no size")
    if size < config.min_size or size > config.max_size:
        return no(f"{human(size)} is outside [replicate] min_size..max_size")
    if not placement.order:
        return no("no endpoint may receive a copy: " + (placement.explain() or "none is a writable target"))
    target = placement.order[0]
    if target in holders:
        return no(f"the nearest writable endpoint, {target}, holds a replica", target)
    target_km = _km(where, target_location)
    for eid, location in sorted(holders.items()):
        km = _km(where, location)
        if target_km is not None and km is not None and km <= target_km + fuzz_km:
            return no(f"the replica on {eid} is as near to the readers as {target} ({km:.0f} km)", target)
    for r in records:
        if r.path != path:
            continue
        if r.state == COPYING:
            return no(f"being copied to {r.endpoint} (by {r.host})", target)
        if now - r.created < config.cooldown:
            what = {FAILED: "copy failed", EVICTED: "evicted from"}.get(r.state, "copied")
            wait = config.cooldown - (now - r.created)
            on = r.endpoint if r.state == EVICTED else f"to {r.endpoint}"
            return no(f"{what} {on} {now - r.created:.0f}s ago: cooling down for {wait:.0f}s more", target)
    if config.target_quota and use.per_endpoint.get(target, 0) + size > config.target_quota:
        used = human(use.per_endpoint.get(target, 0))
        return no(f"{target} holds {used} of copies: {human(size)} more exceeds target_quota", target)
    if use.running >= config.copies:
        return no(f"waiting: {use.running} copies running (the limit, [replicate] copies)", target)
    if use.last_hour + size > config.budget:
        left = max(0, config.budget - use.last_hour)
        return no(f"waiting: {human(left)} of the hourly budget left, the file is {human(size)}", target)
    return Decision(path, region, reads, True, target, size, f"hot in {region}: {reads} reads in the window")


def evictions(
    config: ReplicateConfig, records: Iterable[Record], free: Mapping[str, int | None], now: float
) -> list[tuple[Record, str]]:
    """Copies to remove now, least recently read first, with the reason."""
    done = sorted((r for r in records if r.state == DONE), key=lambda r: (r.last_read, r.path))
    out: list[tuple[Record, str]] = []
    chosen: set[tuple[str, str]] = set()

    def take(r: Record, reason: str) -> None:
        out.append((r, reason))
        chosen.add((r.path, r.endpoint))

    for r in done:
        if now - r.last_read >= config.cold_after:
            take(r, f"cold: not read for {now - r.last_read:.0f}s ([replicate] cold_after)")
    by_endpoint: dict[str, list[Record]] = {}
    for r in done:
        if (r.path, r.endpoint) not in chosen:
            by_endpoint.setdefault(r.endpoint, []).append(r)
    for eid, rows in sorted(by_endpoint.items()):
        room = free.get(eid)
        short = config.reserve - room if room is not None and config.reserve and room < config.reserve else 0
        over = sum(r.bytes for r in rows) - config.target_quota if config.target_quota else 0
        for r in rows:
            if short <= 0 and over <= 0:
                break
            why = f"free space {human(room or 0)} under the reserve" if short > 0 else "copies over target_quota"
            take(r, why)
            short -= r.bytes
            over -= r.bytes
    return out

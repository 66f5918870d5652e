"""Counting reads: one dict increment per redirect, everything else in the background.

1. The hot path (`ReadCounter.note`, called by `fedd.web.reads.Reads.announce` for every 302, from the
   lean front and from twisted.web alike) adds 1 to `pending[(raw path, client, endpoint)]`: no
   parsing, no GeoIP, no clock.
2. The replication loop takes `pending` (`take`) every `[replicate] interval`, maps each client to
   its region (the location fedd ranks by: site ranges, then GeoIP; cached per address) and each raw
   path to its federation path, and adds the result to the current bucket of a `Window`.
3. The window is `BUCKETS` buckets over `[replicate] window` seconds, kept in the shared `counters`
   table of the `[state] database` (fedd.replicate.records): the reads of every worker and host add
   up, and the totals are the sum of the buckets still inside the window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

BUCKETS = 12  # slices of the window: a read leaves the window at most window / BUCKETS late
NO_REGION = "-"  # a client fedd cannot place: counted, never a reason to copy
MAX_PENDING = 200_000  # distinct (path, client, endpoint) keys kept between two flushes

Pending = dict[tuple[bytes, str, str], int]  # (raw path, client address, endpoint redirected to) -> reads
Counts = dict[tuple[str, str], int]  # (region, federation path) -> reads


class ReadCounter:
    """The hot-path side: `note` is a dict increment."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.pending: Pending = {}
        self.max_pending = max_pending
        self.total = 0
        self.dropped = 0  # reads of new (path, client, endpoint) keys past max_pending in one interval

    def note(self, path: bytes, client: str, endpoint: str) -> None:
        key = (path, client, endpoint)
        pending = self.pending
        n = pending.get(key)
        if n is not None:
            pending[key] = n + 1
        elif len(pending) < self.max_pending:
            pending[key] = 1
        else:
            self.dropped += 1

    def take(self) -> Pending:
        """What was counted since the last call (the counter starts again from empty)."""
        taken, self.pending = self.pending, {}
        self.total += sum(taken.values())
        return taken


def region_name(where: tuple[float, float] | None) -> str:
    """A region as stored and shown: 'lat,lon' of the client's location (site range or GeoIP city)."""
    return NO_REGION if where is None else f"{where[0]:.4f},{where[1]:.4f}"


def region_location(region: str) -> tuple[float, float] | None:
    if region == NO_REGION:
        return None
    lat, _, lon = region.partition(",")
    try:
        return (float(lat), float(lon))
    except ValueError:
        return None


@dataclass(frozen=True)
class Aggregate:
    counts: Counts  # (region, path) -> reads
    read_on: dict[tuple[str, str], int]  # (path, endpoint) -> reads redirected there


def aggregate(
    pending: Pending, locate: Callable[[str], tuple[float, float] | None], path_of: Callable[[bytes], str | None]
) -> Aggregate:
    """Group raw counts by (region, federation path) and by (path, endpoint); unusable paths dropped."""
    counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    read_on: defaultdict[tuple[str, str], int] = defaultdict(int)
    for (raw, client, endpoint), n in pending.items():
        path = path_of(raw)
        if path is None:
            continue
        counts[(region_name(locate(client)), path)] += n
        read_on[(path, endpoint)] += n
    return Aggregate(dict(counts), dict(read_on))


def bucket_of(now: float, window: float) -> int:
    """The number of the bucket `now` falls in (buckets are window / BUCKETS long)."""
    return int(now // (window / BUCKETS))


def first_bucket(now: float, window: float) -> int:
    """The oldest bucket still inside the window that ends at `now`."""
    return bucket_of(now, window) - BUCKETS + 1


def hot(totals: Counts, threshold: int) -> list[tuple[str, str, int]]:
    """(region, path, reads) with at least `threshold` reads from a placed region, most read first."""
    found = [(region, path, n) for (region, path), n in totals.items() if n >= threshold and region != NO_REGION]
    return sorted(found, key=lambda item: (-item[2], item[1], item[0]))


def under(path: str, prefixes: Iterable[str]) -> bool:
    return any(p == "/" or path == p or path.startswith(p + "/") for p in prefixes)

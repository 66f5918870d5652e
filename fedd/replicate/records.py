"""What replication keeps in the `[state] database`: the read counts of the window (table `counters`)
and the replicas fedd made (table `replicas`, migration 2), shared by every worker and host.

- Counts: one row per (bucket, region, path) with name `reads@<bucket>` and key `<region> <path>`,
  added to by an upsert of each host's batch (`add_counts`); `totals` sums the buckets inside the
  window; buckets that left it are deleted by the host that writes the next one.
- Replicas: a copy starts with a claim (`claim`): an insert that only one host can win for (path,
  endpoint), so two hosts never copy the same file to the same place. Then `done`, `failed` (kept for
  the cool-down), `evicted` (kept for the cool-down: an evicted file is not copied straight back), or
  `forget` (a failure or eviction whose cool-down is over, a copy that is no longer fedd's). Only rows in this
  table are evicted: a file fedd did not copy has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from fedd.replicate.counting import Counts
from fedd.state.database import Cursor
from fedd.state.spill import Params, Sql
from fedd.state.store import StateStore

COUNTS = "reads@"
COPYING, DONE, FAILED, EVICTED = "copying", "done", "failed", "evicted"


@dataclass(frozen=True)
class Record:
    path: str
    endpoint: str
    source: str
    state: str
    bytes: int
    adler32: str
    region: str
    host: str
    reason: str
    created: float
    last_read: float

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "endpoint": self.endpoint,
            "source": self.source,
            "state": self.state,
            "bytes": self.bytes,
            "adler32": self.adler32 or None,
            "region": self.region,
            "host": self.host,
            "reason": self.reason or None,
            "created": self.created,
            "last_read": self.last_read,
        }


_COLUMNS = "path, endpoint, source, state, bytes, adler32, region, host, reason, created, last_read"


def _record(row: Any) -> Record:
    p, e, src, st, size, adler, region, host, reason, created, last = row
    return Record(
        str(p),
        str(e),
        str(src),
        str(st),
        int(size),
        str(adler),
        str(region),
        str(host),
        str(reason),
        float(created),
        float(last),
    )


class Records:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.host = state.identity.host

    # --- counts -----------------------------------------------------------------------------------

    def add_counts(self, counts: Counts, bucket: int, first: int, now: float) -> Deferred[None]:
        """Add a batch to bucket `bucket`; drop buckets older than `first` (queued: never lost)."""
        name = f"{COUNTS}{bucket:012d}"
        add = (
            "INSERT INTO counters (name, key, value, updated) VALUES (?, ?, ?, ?) ON CONFLICT (name, key) "
            "DO UPDATE SET value = counters.value + excluded.value, updated = excluded.updated"
        )
        statements: list[tuple[str, Params]] = [
            (add, (name, f"{region} {path}", n, now)) for (region, path), n in counts.items()
        ]
        statements.append(
            ("DELETE FROM counters WHERE name >= ? AND name < ?", (COUNTS, f"{COUNTS}{max(first, 0):012d}"))
        )
        return self.state.write("read counts", Sql(tuple(statements)))

    def totals(self, first: int) -> Deferred[Counts]:
        """Reads per (region, path) in the buckets from `first` on, over every host."""

        def work(cursor: Cursor) -> Counts:
            cursor.execute(
                "SELECT key, SUM(value) FROM counters WHERE name >= ? AND name < ? GROUP BY key",
                (f"{COUNTS}{max(first, 0):012d}", f"{COUNTS}~"),
            )
            out: Counts = {}
            for key, n in cursor.fetchall():
                region, _, path = str(key).partition(" ")
                out[(region, path)] = int(n)
            return out

        return self.state.read(work)

    # --- replicas ---------------------------------------------------------------------------------

    def all(self) -> Deferred[list[Record]]:
        def work(cursor: Cursor) -> list[Record]:
            cursor.execute(f"SELECT {_COLUMNS} FROM replicas ORDER BY endpoint, last_read, path")
            return [_record(row) for row in cursor.fetchall()]

        return self.state.read(work)

    def claim(self, path: str, endpoint: str, source: str, size: int, region: str, now: float) -> Deferred[bool]:
        """True when this host may copy `path` to `endpoint` now: nobody else holds a row for it."""
        host = self.host

        def work(cursor: Cursor) -> bool:
            cursor.execute(
                f"INSERT INTO replicas ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, '', ?, ?, '', ?, ?) "
                "ON CONFLICT (path, endpoint) DO NOTHING",
                (path, endpoint, source, COPYING, size, region, host, now, now),
            )
            cursor.execute(
                "SELECT host, state, created FROM replicas WHERE path = ? AND endpoint = ?", (path, endpoint)
            )
            row = cursor.fetchone()
            return row is not None and str(row[0]) == host and str(row[1]) == COPYING and float(row[2]) == now

        return self.state.read(work)

    def finish(
        self, path: str, endpoint: str, state: str, size: int, adler32: str, reason: str, now: float
    ) -> Deferred[None]:
        update = (
            "UPDATE replicas SET state = ?, bytes = ?, adler32 = ?, reason = ?, created = ?, last_read = ? "
            "WHERE path = ? AND endpoint = ?",
            (state, size, adler32, reason, now, now, path, endpoint),
        )
        return self.state.write(f"replica {state}", Sql((update,)))

    def forget(self, path: str, endpoint: str) -> Deferred[None]:
        delete = ("DELETE FROM replicas WHERE path = ? AND endpoint = ?", (path, endpoint))
        return self.state.write("replica removal", Sql((delete,)))

    def touch(self, read_on: dict[tuple[str, str], int], now: float) -> Deferred[None]:
        """Reads were redirected to these (path, endpoint): their copies, if any, were read now."""

        update = "UPDATE replicas SET last_read = ? WHERE path = ? AND endpoint = ? AND state = ?"
        statements = tuple((update, (now, path, endpoint, DONE)) for path, endpoint in read_on)
        return self.state.write("replica reads", Sql(statements))

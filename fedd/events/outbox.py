"""The durable outbox: an SQLite database in WAL mode, used from one dedicated thread.

Events are appended in batches and removed only after the sink (broker or spool) confirmed them,
so a broker outage or a restart loses nothing. When the outbox holds `max_events`, the shedding
policy decides: `drop-oldest` deletes the oldest events to make room, `drop-newest` refuses the new
ones. Either way the number dropped is returned and counted, never raised.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from fedd.sqlite import SqliteThread

SHED_POLICIES = ("drop-oldest", "drop-newest")
Row = tuple[int, str, bytes]


class Outbox(SqliteThread):
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "routing_key TEXT NOT NULL, body BLOB NOT NULL)"
    )

    def __init__(self, reactor: Any, path: str, max_events: int, shed: str = "drop-oldest") -> None:
        if shed not in SHED_POLICIES:
            raise ValueError(f"unknown shedding policy {shed!r}")
        super().__init__(reactor, path, "fedd-outbox")
        self.max_events = max_events
        self.shed = shed

    def _opened(self) -> int:
        return self._count()

    def _count(self) -> int:
        assert self._db is not None
        row = self._db.execute("SELECT MIN(id), MAX(id) FROM outbox").fetchone()
        return 0 if row[0] is None else int(row[1]) - int(row[0]) + 1  # ids are contiguous: O(1), not a scan

    def add(self, rows: list[tuple[str, bytes]]) -> Deferred[tuple[int, int]]:
        """Append events; fires with (depth after, number dropped by the shedding policy)."""
        return self._run(self._add, rows)

    def _add(self, rows: list[tuple[str, bytes]]) -> tuple[int, int]:
        assert self._db is not None
        depth = self._count()
        room = self.max_events - depth
        dropped = 0
        if len(rows) > room:
            if self.shed == "drop-newest":
                keep = max(room, 0)
                dropped, rows = len(rows) - keep, rows[:keep]
            else:
                truncated = max(0, len(rows) - self.max_events)  # a batch larger than the outbox: newest part
                rows = rows[truncated:]
                evict = min(depth, len(rows) - room)
                self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (evict,))
                dropped = truncated + evict
        if rows:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO outbox (routing_key, body) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        return self._count(), dropped

    def peek(self, limit: int) -> Deferred[list[Row]]:
        return self._run(self._peek, limit)

    def _peek(self, limit: int) -> list[Row]:
        assert self._db is not None
        return [
            (int(i), str(k), bytes(b))
            for i, k, b in self._db.execute("SELECT id, routing_key, body FROM outbox ORDER BY id LIMIT ?", (limit,))
        ]

    def remove(self, up_to: int) -> Deferred[int]:
        """Delete confirmed events (every id up to `up_to`: the sender confirms in order); fires with the depth."""
        return self._run(self._remove, up_to)

    def _remove(self, up_to: int) -> int:
        assert self._db is not None
        self._db.execute("DELETE FROM outbox WHERE id <= ?", (up_to,))
        return self._count()

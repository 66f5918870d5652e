"""The durable outbox: an SQLite database in WAL mode, used from one dedicated thread.

Events are appended in batches and removed only after the sink (broker or spool) confirmed them,
so a broker outage or a restart loses nothing. When the outbox holds `max_events`, the shedding
policy decides: `drop-oldest` deletes the oldest events to make room, `drop-newest` refuses the new
ones. Either way the number dropped is returned and counted, never raised.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

SHED_POLICIES = ("drop-oldest", "drop-newest")
Row = tuple[int, str, bytes]


class Outbox:
    def __init__(self, reactor: Any, path: str, max_events: int, shed: str = "drop-oldest") -> None:
        if shed not in SHED_POLICIES:
            raise ValueError(f"unknown shedding policy {shed!r}")
        self._reactor = reactor
        self.path = path
        self.max_events = max_events
        self.shed = shed
        self._pool = ThreadPool(1, 1, name="fedd-outbox")
        self._db: sqlite3.Connection | None = None

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def open(self) -> Deferred[int]:
        """Open (creating if needed); fires with the number of events waiting from a previous run."""
        self._pool.start()
        return self._run(self._open)

    def _open(self) -> int:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "routing_key TEXT NOT NULL, body BLOB NOT NULL)"
        )
        self._db = db
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

    def close(self) -> Deferred[None]:
        d = self._run(self._close)

        def stop(result: Any) -> Any:
            self._pool.stop()
            return result

        return d.addBoth(stop)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

"""The durable outbox: an SQLite database in WAL mode, used from one dedicated thread.

Events are appended in batches (from the journal, fedd/events/journal.py) and removed only after
the sink (the broker) confirmed them, so a broker outage or a restart loses nothing. When the
outbox holds `max_events`, the shedding policy decides: `drop-oldest` deletes the oldest events to
make room, `drop-newest` refuses the new ones. Either way the number dropped is returned and
counted, never raised.

The `events-dropped` notice lives in a table of its own with one slot: it is never counted against
`max_events`, never shed, and a newer notice replaces an unsent one (the service adds the counts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from fedd.events.journal import read_segments
from fedd.events.model import Event, Journaled, Raw, encode
from fedd.sqlite import SqliteThread

SHED_POLICIES = ("drop-oldest", "drop-newest")
Row = tuple[int, Event]  # (outbox position, event)
Notice = tuple[Event, int]  # (the events-dropped event, the count it carries)


def encode_all(raws: Sequence[Raw | Journaled], prefix: str) -> tuple[list[Event], int]:
    events: list[Event] = []
    for raw in raws:
        try:
            events.append(encode(raw, prefix))
        except (TypeError, ValueError):  # journaled, yet not JSON: counted with the unreadable ones
            pass
    return events, len(raws) - len(events)


class Outbox(SqliteThread):
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "routing_key TEXT NOT NULL, body BLOB NOT NULL, message_id TEXT)"
    )
    NOTICE_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS notice (slot INTEGER PRIMARY KEY CHECK (slot = 1), "
        "message_id TEXT NOT NULL, routing_key TEXT NOT NULL, body BLOB NOT NULL, dropped INTEGER NOT NULL)"
    )

    def __init__(self, reactor: Any, path: str, max_events: int, shed: str = "drop-oldest") -> None:
        if shed not in SHED_POLICIES:
            raise ValueError(f"unknown shedding policy {shed!r}")
        super().__init__(reactor, path, "fedd-outbox")
        self.max_events = max_events
        self.shed = shed
        self.notice: Notice | None = None  # the unsent events-dropped notice found at open

    def _opened(self) -> int:
        assert self._db is not None
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "message_id" not in columns:  # an outbox written before events had ids
            self._db.execute("ALTER TABLE outbox ADD COLUMN message_id TEXT")
        self._db.execute(self.NOTICE_SCHEMA)
        row = self._db.execute("SELECT message_id, routing_key, body, dropped FROM notice").fetchone()
        if row is not None:
            self.notice = ((str(row[0]), str(row[1]), bytes(row[2])), int(row[3]))
        return self._count()

    def _count(self) -> int:
        assert self._db is not None
        row = self._db.execute("SELECT MIN(id), MAX(id) FROM outbox").fetchone()
        return 0 if row[0] is None else int(row[1]) - int(row[0]) + 1  # ids are contiguous: O(1), not a scan

    def add(self, events: list[Event]) -> Deferred[tuple[int, int]]:
        """Append events; fires with (depth after, number dropped by the shedding policy)."""
        return self._run(self._add, events)

    def replay(self, paths: list[str], prefix: str) -> Deferred[tuple[int, int, int, int]]:
        """Store the events of journal segments (read and encoded in this thread); fires with (events,
        unreadable records, depth after, number dropped)."""
        return self._run(self._replay, paths, prefix)

    def _replay(self, paths: list[str], prefix: str) -> tuple[int, int, int, int]:
        raws, bad = read_segments(paths)
        events, unencodable = encode_all(raws, prefix)
        depth, dropped = self._add(events)
        return len(events), bad + unencodable, depth, dropped

    def _add(self, events: list[Event]) -> tuple[int, int]:
        assert self._db is not None
        depth = self._count()
        room = self.max_events - depth
        dropped = 0
        if len(events) > room:
            if self.shed == "drop-newest":
                keep = max(room, 0)
                dropped, events = len(events) - keep, events[:keep]
            else:
                truncated = max(0, len(events) - self.max_events)  # a batch larger than the outbox: newest part
                events = events[truncated:]
                evict = min(depth, len(events) - room)
                self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (evict,))
                dropped = truncated + evict
        if events:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO outbox (message_id, routing_key, body) VALUES (?, ?, ?)", events)
            self._db.execute("COMMIT")
        return self._count(), dropped

    def peek(self, limit: int, after: int = 0) -> Deferred[list[Row]]:
        """The oldest `limit` events past outbox id `after` (the batches already in flight)."""
        return self._run(self._peek, limit, after)

    def _peek(self, limit: int, after: int) -> list[Row]:
        assert self._db is not None
        query = "SELECT id, message_id, routing_key, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?"
        return [
            # an event stored before ids existed gets one from its content: the same on every resend
            (int(i), (str(m) if m else hashlib.sha256(bytes(b)).hexdigest()[:32], str(k), bytes(b)))
            for i, m, k, b in self._db.execute(query, (after, limit))
        ]

    def remove(self, up_to: int) -> Deferred[int]:
        """Delete confirmed events (every id up to `up_to`: the sender confirms in order); fires with the depth."""
        return self._run(self._remove, up_to)

    def _remove(self, up_to: int) -> int:
        assert self._db is not None
        self._db.execute("DELETE FROM outbox WHERE id <= ?", (up_to,))
        return self._count()

    def put_notice(self, notice: Notice) -> Deferred[None]:
        """Keep this events-dropped notice in the slot, replacing an unsent one."""
        return self._run(self._put_notice, notice)

    def _put_notice(self, notice: Notice) -> None:
        assert self._db is not None
        (event_id, key, body), dropped = notice
        self._db.execute(
            "INSERT OR REPLACE INTO notice (slot, message_id, routing_key, body, dropped) VALUES (1, ?, ?, ?, ?)",
            (event_id, key, body, dropped),
        )

    def clear_notice(self, event_id: str) -> Deferred[None]:
        """The broker confirmed the notice `event_id`: empty the slot unless a newer notice took it."""
        return self._run(self._clear_notice, event_id)

    def _clear_notice(self, event_id: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM notice WHERE message_id = ?", (event_id,))

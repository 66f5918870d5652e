"""The hosts sharing one state database, in their own rows: the schema migration they take turns
for, the heartbeat row each keeps in `hosts`, the listing of those seen lately, and the row's
removal when the host stops. The store (fedd.state.store) runs these in its database thread.

- At start a host applies the missing schema migrations (fedd.state.schema) under a lock every host
  takes (PostgreSQL: an advisory lock; SQLite: `BEGIN IMMEDIATE`), so two hosts starting together
  migrate once.
- Every `[state] heartbeat_interval` a host upserts its row (keyed by its name) and reads the rows
  seen within HOSTS_SEEN_FOR intervals: the status lists them. A host that stops removes its row;
  the workers of `[server] workers` share it, and only the last one to stop removes it
  (fedd.state.presence). Its `started` is the host's: with workers, their supervisor's start, which
  every worker carries (a restarted worker's heartbeat does not make the host look restarted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedd.state import schema
from fedd.state.database import Cursor

MIGRATION_LOCK = 0x66656464  # "fedd": the advisory lock id hosts migrate under (PostgreSQL)
HOSTS_SEEN_FOR = 3  # heartbeat intervals after which a silent host is no longer listed


@dataclass(frozen=True)
class HostIdentity:
    host: str  # [state] host_name, or the machine's name
    instance: str
    version: str
    listen: str
    member: str = ""  # who keeps its own rows (reservations): the host, or `host/worker-N` of a worker


def migrate(cursor: Cursor, kind: str) -> int:
    """Bring the schema to the latest version; returns the version found before."""
    if kind == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
    cursor.execute(schema.VERSION_TABLE)
    cursor.execute("SELECT MAX(version) FROM fedd_schema")
    row = cursor.fetchone()
    found = int(row[0]) if row is not None and row[0] is not None else 0
    for version, statements in schema.pending(found):
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("INSERT INTO fedd_schema (version) VALUES (?)", (version,))
    return found


def heartbeat(cursor: Cursor, me: HostIdentity, started: float, now: float, interval: float) -> list[dict[str, Any]]:
    """Upsert this host's row; the hosts seen lately (this one included), by name."""
    cursor.execute(
        "INSERT INTO hosts (host, instance, version, listen, started, seen) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (host) DO UPDATE SET instance = excluded.instance, version = excluded.version, "
        "listen = excluded.listen, started = excluded.started, seen = excluded.seen",
        (me.host, me.instance, me.version, me.listen, started, now),
    )
    cursor.execute(
        "SELECT host, instance, version, listen, started, seen FROM hosts WHERE seen > ? ORDER BY host",
        (now - HOSTS_SEEN_FOR * interval,),
    )
    return [
        {"host": h, "instance": i, "version": v, "listen": lst, "started": s, "seen": t, "self": h == me.host}
        for h, i, v, lst, s, t in cursor.fetchall()
    ]


def forget(cursor: Cursor, me: HostIdentity) -> None:
    """Remove this host's row (its instance's: a newer run of the host keeps its own)."""
    cursor.execute("DELETE FROM hosts WHERE host = ? AND instance = ?", (me.host, me.instance))

"""The shared-state schema, as numbered forward migrations: pure data, no I/O.

Rules:
1. Migration N brings a database at version N-1 to version N; every start applies the missing ones in
   order, in one transaction each, and records the version in `fedd_schema`. Nothing is ever edited
   in place: a change is a new migration, so a host running the older release keeps working while
   another one is upgraded (new columns get defaults; nothing is dropped while a release reads it).
2. One SQL dialect serves SQLite and PostgreSQL: `?` placeholders (turned into `%s` for psycopg),
   `INSERT ... ON CONFLICT ... DO UPDATE` (SQLite >= 3.24), types both accept.
3. The checksum table keeps the layout of the single-host SQLite file (`CREATE TABLE IF NOT EXISTS`),
   so an existing `fedd-checksums.sqlite` named as `[state] database` is upgraded, not emptied.
"""

from __future__ import annotations

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS fedd_schema (version INTEGER NOT NULL)"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: checksums, downtimes and their change counter, hosts, reservations, counters
    (
        "CREATE TABLE IF NOT EXISTS checksums (endpoint TEXT NOT NULL, path TEXT NOT NULL, "
        "size BIGINT NOT NULL, version TEXT NOT NULL, algorithm TEXT NOT NULL, value TEXT NOT NULL, "
        "computed DOUBLE PRECISION NOT NULL, PRIMARY KEY (endpoint, path, size, version, algorithm))",
        "CREATE TABLE downtimes (id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, start_at DOUBLE PRECISION NOT NULL, "
        "end_at DOUBLE PRECISION NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL, "
        "declared_by TEXT NOT NULL, declared_at DOUBLE PRECISION NOT NULL)",
        # one row per watched table: a host re-reads a table when its serial moves (see store.py)
        "CREATE TABLE changes (name TEXT PRIMARY KEY, serial BIGINT NOT NULL)",
        "INSERT INTO changes (name, serial) VALUES ('downtimes', 0)",
        "CREATE TABLE hosts (host TEXT PRIMARY KEY, instance TEXT NOT NULL, version TEXT NOT NULL, "
        "listen TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, seen DOUBLE PRECISION NOT NULL)",
        # bytes of uploads a host redirected to an endpoint since its last space measurement
        "CREATE TABLE reservations (endpoint TEXT NOT NULL, host TEXT NOT NULL, bytes BIGINT NOT NULL, "
        "since DOUBLE PRECISION NOT NULL, PRIMARY KEY (endpoint, host))",
        # later counters (popularity of paths, ...): a name, a key, a value
        "CREATE TABLE counters (name TEXT NOT NULL, key TEXT NOT NULL, value BIGINT NOT NULL, "
        "updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (name, key))",
    ),
    # 2: the replicas fedd made itself ([replicate], fedd.replicate.records); state is copying, done or
    # failed; only rows in this table are ever evicted
    (
        "CREATE TABLE replicas (path TEXT NOT NULL, endpoint TEXT NOT NULL, source TEXT NOT NULL, "
        "state TEXT NOT NULL, bytes BIGINT NOT NULL, adler32 TEXT NOT NULL, region TEXT NOT NULL, "
        "host TEXT NOT NULL, reason TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, "
        "last_read DOUBLE PRECISION NOT NULL, PRIMARY KEY (path, endpoint))",
    ),
)

LATEST = len(MIGRATIONS)


def pending(current: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations a database at version `current` still needs, as (new version, statements)."""
    if current > LATEST:
        raise ValueError(f"the state database has schema version {current}, newer than this fedd ({LATEST})")
    return [(n, MIGRATIONS[n - 1]) for n in range(current + 1, LATEST + 1)]

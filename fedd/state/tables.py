"""What each user of the shared state reads and writes, as small objects over a `StateStore`:
the checksum store (same calls as fedd.checksums.store.ChecksumStore) and the run-time downtimes."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from fedd.checksums.store import UNCOUNTED
from fedd.config import Downtime
from fedd.state.database import Cursor
from fedd.state.spill import Params, Sql
from fedd.state.store import StateStore

Key = tuple[str, str, int, str]  # endpoint, endpoint path, size, version (fedd.checksums.store.Key)


class SharedChecksums:
    """Checksums in the state database. `put` returns once the value is queued: the store writes it
    when the database answers (a computed value is never lost to an outage, see store.py)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.path = state.db.where

    def open(self) -> Deferred[int]:
        """Fires once the state database was tried, with the rows it holds (UNCOUNTED when unreachable:
        the state service says why, and writes what is queued once it answers)."""

        def count(_: object) -> Deferred[int]:
            d = self.state.read(lambda c: _scalar(c, "SELECT COUNT(*) FROM checksums"))
            return d.addErrback(lambda _: UNCOUNTED)

        return self.state.ready().addCallback(count)

    def close(self) -> Deferred[None]:
        return succeed(None)  # the state service closes the database

    def get(self, keys: list[Key]) -> Deferred[dict[Key, dict[str, str]]]:
        def work(cursor: Cursor) -> dict[Key, dict[str, str]]:
            out: dict[Key, dict[str, str]] = {}
            for key in keys:
                cursor.execute(
                    "SELECT algorithm, value FROM checksums WHERE endpoint=? AND path=? AND size=? AND version=?", key
                )
                out[key] = {str(a): str(v) for a, v in cursor.fetchall()}
            return out

        return self.state.read(work)

    def put(self, key: Key, values: dict[str, str], now: float) -> Deferred[None]:
        # older versions of the same replica are of no use any more
        statements: list[tuple[str, Params]] = [
            ("DELETE FROM checksums WHERE endpoint=? AND path=? AND NOT (size=? AND version=?)", key)
        ]
        statements += [
            (
                "INSERT INTO checksums (endpoint, path, size, version, algorithm, value, computed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, path, size, version, algorithm) "
                "DO UPDATE SET value = excluded.value, computed = excluded.computed",
                (*key, algorithm, value, now),
            )
            for algorithm, value in values.items()
        ]
        write = self.state.write("checksum", Sql(tuple(statements)))
        write.addErrback(lambda _: None)  # a drop is counted and logged there
        return succeed(None)


DowntimeRow = tuple[str, str, Downtime]  # id, endpoint, downtime


class SharedDowntimes:
    """Run-time downtimes (declared through the admin API of any host) in the state database."""

    TABLE = "downtimes"

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def watch(self, changed: Callable[[], None]) -> None:
        self.state.watch(self.TABLE, changed)

    @property
    def unreachable(self) -> bool:
        """The database could not be reached (at start, or since): go on without waiting for it."""
        return self.state.down_since is not None

    def load(self, now: float) -> Deferred[list[DowntimeRow]]:
        def work(cursor: Cursor) -> list[DowntimeRow]:
            cursor.execute(
                "SELECT id, endpoint, start_at, end_at, scope, reason FROM downtimes WHERE end_at > ? "
                "ORDER BY declared_at, id",
                (now,),
            )
            return [
                (str(i), str(e), Downtime(float(s), float(end), str(scope), str(reason)))
                for i, e, s, end, scope, reason in cursor.fetchall()
            ]

        return self.state.read(work)

    def load_with_serial(self, now: float) -> Deferred[tuple[int, list[DowntimeRow]]]:
        """As `load`, with the table's change serial read in the same transaction (what the rows
        reflect: fedd.workers.applied marks it)."""

        def work(cursor: Cursor) -> tuple[int, list[DowntimeRow]]:
            serial = _serial(cursor, self.TABLE)
            cursor.execute(
                "SELECT id, endpoint, start_at, end_at, scope, reason FROM downtimes WHERE end_at > ? "
                "ORDER BY declared_at, id",
                (now,),
            )
            return serial, [
                (str(i), str(e), Downtime(float(s), float(end), str(scope), str(reason)))
                for i, e, s, end, scope, reason in cursor.fetchall()
            ]

        return self.state.read(work)

    def serial(self) -> Deferred[int]:
        """The table's change serial now (after a write: at least the one that write made)."""
        return self.state.read(lambda cursor: _serial(cursor, self.TABLE))

    def insert(self, downtime_id: str, endpoint: str, downtime: Downtime, now: float) -> Deferred[None]:
        host = self.state.identity.host
        insert = (
            "INSERT INTO downtimes (id, endpoint, start_at, end_at, scope, reason, declared_by, declared_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (downtime_id, endpoint, downtime.start, downtime.end, downtime.scope, downtime.reason, host, now),
        )
        ended = ("DELETE FROM downtimes WHERE end_at < ?", (now - 86400,))  # ended ones are of no use any more
        return self.state.write("downtime", Sql((insert, ended), (self.TABLE,)))

    def delete(self, downtime_id: str) -> Deferred[None]:
        statement = ("DELETE FROM downtimes WHERE id = ?", (downtime_id,))
        return self.state.write("downtime removal", Sql((statement,), (self.TABLE,)))


class SharedReservations:
    """Bytes of uploads each host redirected to an endpoint since that endpoint's last space
    measurement, so placement on every host counts the others' uploads too (fedd.space.service).

    A host adds to its own row (endpoint, host) once per `[state] poll_interval` (one queued upsert per
    endpoint that got uploads), keyed by the measurement it counts from (`since`: the measured time,
    the same on every host when memcached shares the measurements); a newer measurement restarts the
    row. The others' rows are re-read on the same tick; a row counted from an older measurement than
    this host's is already in that measurement and is not counted. A worker of `[server] workers`
    keeps a row of its own (`host/worker-N`, `HostIdentity.member`), so the workers of one host
    count each other's uploads too."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._pending: dict[tuple[str, float], int] = {}
        self._others: dict[str, list[tuple[int, float]]] = {}  # endpoint -> [(bytes, since)] of other hosts
        self._reading = False
        state.every_tick(self._tick)

    def add(self, endpoint: str, size: int, since: float) -> None:
        key = (endpoint, since)
        self._pending[key] = self._pending.get(key, 0) + size

    def others(self, endpoint: str, since: float | None) -> int:
        """What the other hosts reserved on `endpoint` since the measurement taken at `since`."""
        if since is None:
            return 0
        return sum(size for size, at in self._others.get(endpoint, ()) if at >= since)

    def _tick(self) -> None:
        if self._pending:
            self._write(self._pending)
            self._pending = {}
        if not self._reading:
            self._reading = True
            d = self.state.read(self._read)
            d.addCallbacks(self._got, lambda _: None)  # keep the last known: the outage is said by the store
            d.addBoth(self._done)

    @property
    def _member(self) -> str:
        identity = self.state.identity
        return identity.member or identity.host

    def _write(self, pending: dict[tuple[str, float], int]) -> None:
        host = self._member
        upsert = (
            "INSERT INTO reservations (endpoint, host, bytes, since) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (endpoint, host) DO UPDATE SET bytes = CASE WHEN reservations.since = excluded.since "
            "THEN reservations.bytes + excluded.bytes ELSE excluded.bytes END, since = excluded.since"
        )
        statements = tuple((upsert, (endpoint, host, size, since)) for (endpoint, since), size in pending.items())
        self.state.write("reservations", Sql(statements)).addErrback(lambda _: None)  # a drop is counted there

    def _read(self, cursor: Cursor) -> dict[str, list[tuple[int, float]]]:
        cursor.execute("SELECT endpoint, bytes, since FROM reservations WHERE host <> ?", (self._member,))
        out: dict[str, list[tuple[int, float]]] = {}
        for endpoint, size, since in cursor.fetchall():
            out.setdefault(str(endpoint), []).append((int(size), float(since)))
        return out

    def _got(self, others: dict[str, list[tuple[int, float]]]) -> None:
        self._others = others

    def _done(self, _: object) -> None:
        self._reading = False


def _serial(cursor: Cursor, table: str) -> int:
    cursor.execute("SELECT serial FROM changes WHERE name = ?", (table,))
    row = cursor.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def _scalar(cursor: Cursor, sql: str) -> int:
    cursor.execute(sql)
    row = cursor.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0

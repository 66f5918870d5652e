"""fedd's own checksum database: SQLite in WAL mode, used from one dedicated thread (like the outbox).

A row is keyed by the replica it describes, `(endpoint, endpoint path, size, version)`, where `version`
is the replica's ETag (or its mtime when it has none): a rewritten file has a new key, so an old
checksum is never served for new bytes. Several fedd processes may share the file (SQLite locks it).
With `[state] database` the same rows live in the shared state database instead
(fedd.state.tables.SharedChecksums); `ChecksumDatabase` is what the checksum service needs of either.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from fedd.sqlite import SqliteThread

Key = tuple[str, str, int, str]  # endpoint, endpoint path, size, version
UNCOUNTED = -1  # what `open` gives when the database cannot be read now (the shared one, unreachable)


class ChecksumDatabase(Protocol):
    path: str  # where it is, for logs and the status

    def open(self) -> Deferred[int]: ...  # fires with the rows held, or UNCOUNTED

    def close(self) -> Deferred[None]: ...

    def get(self, keys: list[Key]) -> Deferred[dict[Key, dict[str, str]]]: ...

    def put(self, key: Key, values: dict[str, str], now: float) -> Deferred[None]: ...


class ChecksumStore(SqliteThread):
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS checksums (endpoint TEXT NOT NULL, path TEXT NOT NULL, "
        "size INTEGER NOT NULL, version TEXT NOT NULL, algorithm TEXT NOT NULL, value TEXT NOT NULL, "
        "computed REAL NOT NULL, PRIMARY KEY (endpoint, path, size, version, algorithm))"
    )

    def __init__(self, reactor: Any, path: str) -> None:
        super().__init__(reactor, path, "fedd-checksums")

    def _opened(self) -> int:
        assert self._db is not None
        return int(self._db.execute("SELECT COUNT(*) FROM checksums").fetchone()[0])

    def get(self, keys: list[Key]) -> Deferred[dict[Key, dict[str, str]]]:
        """The known checksums of each key ({} for keys without any)."""
        return self._run(self._get, keys)

    def _get(self, keys: list[Key]) -> dict[Key, dict[str, str]]:
        assert self._db is not None
        out: dict[Key, dict[str, str]] = {}
        for key in keys:
            rows = self._db.execute(
                "SELECT algorithm, value FROM checksums WHERE endpoint=? AND path=? AND size=? AND version=?", key
            ).fetchall()
            out[key] = {str(a): str(v) for a, v in rows}
        return out

    def put(self, key: Key, values: dict[str, str], now: float) -> Deferred[None]:
        return self._run(self._put, key, values, now)

    def _put(self, key: Key, values: dict[str, str], now: float) -> None:
        assert self._db is not None
        self._db.execute("BEGIN")
        # older versions of the same replica are of no use any more
        self._db.execute("DELETE FROM checksums WHERE endpoint=? AND path=? AND NOT (size=? AND version=?)", key)
        self._db.executemany(
            "INSERT OR REPLACE INTO checksums VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(*key, algorithm, value, now) for algorithm, value in values.items()],
        )
        self._db.execute("COMMIT")

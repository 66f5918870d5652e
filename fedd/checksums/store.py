"""fedd's own checksum database: SQLite in WAL mode, used from one dedicated thread (like the outbox).

A row is keyed by the replica it describes, `(endpoint, endpoint path, size, version)`, where `version`
is the replica's ETag (or its mtime when it has none): a rewritten file has a new key, so an old
checksum is never served for new bytes. Several fedd processes may share the file (SQLite locks it).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

Key = tuple[str, str, int, str]  # endpoint, endpoint path, size, version


class ChecksumStore:
    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self.path = path
        self._pool = ThreadPool(1, 1, name="fedd-checksums")
        self._db: sqlite3.Connection | None = None

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def open(self) -> Deferred[int]:
        """Open (creating if needed); fires with the number of checksums held."""
        self._pool.start()
        return self._run(self._open)

    def _open(self) -> int:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS checksums (endpoint TEXT NOT NULL, path TEXT NOT NULL, "
            "size INTEGER NOT NULL, version TEXT NOT NULL, algorithm TEXT NOT NULL, value TEXT NOT NULL, "
            "computed REAL NOT NULL, PRIMARY KEY (endpoint, path, size, version, algorithm))"
        )
        self._db = db
        return int(db.execute("SELECT COUNT(*) FROM checksums").fetchone()[0])

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

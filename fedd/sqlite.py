"""An SQLite database in WAL mode, used from one dedicated thread: the outbox and the checksum store.

Every call runs in the database's own thread and returns a Deferred, so a slow disk never stalls
the reactor, and the connection is only ever touched from that one thread.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class SqliteThread:
    SCHEMA = ""  # the CREATE TABLE IF NOT EXISTS statement of the subclass

    def __init__(self, reactor: Any, path: str, name: str) -> None:
        self._reactor = reactor
        self.path = path
        self._pool = ThreadPool(1, 1, name=name)
        self._db: sqlite3.Connection | None = None

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def open(self) -> Deferred[int]:
        """Open (creating if needed); fires with what `_opened` counts (rows held from a previous run)."""
        self._pool.start()
        return self._run(self._open)

    def _open(self) -> int:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(self.SCHEMA)
        self._db = db
        return self._opened()

    def _opened(self) -> int:
        raise NotImplementedError

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

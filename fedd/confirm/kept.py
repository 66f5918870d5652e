"""Pending uploads kept on disk (`[confirm] pending_file`), so a restarted fedd or worker confirms them.

One SQLite file (WAL) for the host's fedd, used from its own thread (fedd.sqlite): a row per upload
in the pending table, keyed by (worker, endpoint, endpoint path) as the table is by (endpoint,
endpoint path) in each process. A single process is worker 0 of 1. Rows are written in batches
(`apply`: the latest state of each key since the last batch, in one transaction) and deleted once
the outcome is decided, so the file holds what is pending when a process ends, however it ends.

At start, `take` hands a process the rows its previous run left (its worker index), and worker 0
also those of indexes no worker has any more (fedd ran with more workers before), re-owned to it.
A row keeps the redirect's time (`started`): the deadline counts from there, not from the restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from fedd.confirm.pending import Key, Upload
from fedd.sqlite import SqliteThread

Change = tuple[Key, Upload | None]  # the upload now pending under that key, or None: nothing any more


class PendingFile(SqliteThread):
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS pending (worker INTEGER NOT NULL, endpoint TEXT NOT NULL, "
        "endpoint_path TEXT NOT NULL, path TEXT NOT NULL, size INTEGER, started REAL NOT NULL, "
        "overwrite INTEGER NOT NULL, PRIMARY KEY (worker, endpoint, endpoint_path))"
    )

    def __init__(self, reactor: Any, path: str, worker: int = 0, workers: int = 1) -> None:
        super().__init__(reactor, path, "fedd-pending")
        self.worker = worker
        self.workers = workers

    def _opened(self) -> int:
        assert self._db is not None
        row = self._db.execute("SELECT COUNT(*) FROM pending WHERE worker = ?", (self.worker,)).fetchone()
        return int(row[0])

    def take(self) -> Deferred[list[Upload]]:
        """The uploads this process's previous run left pending (worker 0: and those of workers gone)."""
        return self._run(self._take)

    def _take(self) -> list[Upload]:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self.worker == 0:  # rows of workers this fedd no longer has: an upload of the same name here wins
                db.execute("UPDATE OR IGNORE pending SET worker = 0 WHERE worker >= ?", (self.workers,))
                db.execute("DELETE FROM pending WHERE worker >= ?", (self.workers,))
            rows = db.execute(
                "SELECT path, endpoint, endpoint_path, size, started, overwrite FROM pending "
                "WHERE worker = ? ORDER BY started",
                (self.worker,),
            ).fetchall()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return [
            Upload(str(p), str(e), str(ep), None if s is None else int(s), float(t), bool(o))
            for p, e, ep, s, t, o in rows
        ]

    def apply(self, changes: Sequence[Change]) -> Deferred[None]:
        """Write what is pending now under each key (one transaction)."""
        return self._run(self._apply, list(changes))

    def _apply(self, changes: list[Change]) -> None:
        assert self._db is not None
        db = self._db
        puts = [
            (self.worker, u.endpoint, u.endpoint_path, u.path, u.size, u.started, int(u.overwrite))
            for _, u in changes
            if u is not None
        ]
        deletes = [(self.worker, endpoint, endpoint_path) for (endpoint, endpoint_path), u in changes if u is None]
        db.execute("BEGIN IMMEDIATE")
        try:
            if deletes:
                db.executemany("DELETE FROM pending WHERE worker = ? AND endpoint = ? AND endpoint_path = ?", deletes)
            if puts:
                db.executemany(
                    "INSERT OR REPLACE INTO pending (worker, endpoint, endpoint_path, path, size, started, overwrite) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    puts,
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

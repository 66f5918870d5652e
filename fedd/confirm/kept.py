"""Pending uploads kept on disk (`[confirm] pending_file`), so a restarted fedd or worker confirms them.

One SQLite file (WAL) for the host's fedd, used from its own thread (fedd.sqlite): a row per upload
in the pending table, keyed by (worker, endpoint, endpoint path) as the table is by (endpoint,
endpoint path) in each process. A single process is worker 0 of 1. Rows are written in batches
(`apply`: the latest state of each key since the last batch, in one transaction) and deleted once
the outcome is decided, so the file holds what is pending when a process ends, however it ends.
A PUT's answer waits for the commit that holds its row (`written`): the 307 goes out once the upload
is on disk (in the page cache, as the event journal's records are: a kill of fedd loses nothing),
and the PUTs of one batch share that commit. The wait is bounded (`KEEP_WAIT`): a file that fails or
stalls delays no answer longer, and such a redirect is counted (`unkept`) and logged, as an event
the journal cannot take is: the client is answered, the upload confirmed in memory.

At start, `take` hands a process the rows its previous run left (its worker index), and worker 0
also those of indexes no worker has any more (fedd ran with more workers before), re-owned to it;
the service gets them TAKE_OVER_CHUNK at a reactor turn, so a restart with many pending answers
requests meanwhile (100k at once kept the reactor busy 0.5-0.9 s here; 1000 take 3-8 ms).
A row keeps the redirect's time (`started`): the deadline counts from there, not from the restart.

Before taking over FREEZE_OVER uploads or more, the process's objects are frozen (`gc.freeze`): each
Upload is an object the garbage collector tracks, and 100k of them grow the heap enough for a full
collection while they are created, which went through all of fedd's start-up objects too (modules,
configuration, services: 76-105 ms with the reactor stopped, 24 ms once frozen; 40-217 ms measured
in the daemon). What is frozen is never traversed again: cyclic garbage made of it is not freed
(what was in flight then: a one-off, small), anything else is freed as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from fedd.confirm.pending import Key, Upload
from fedd.errors import describe
from fedd.sqlite import SqliteThread

log = Logger(namespace="fedd.confirm")
KEEP_WAIT = 2.0  # seconds a PUT's answer waits at most for its row's commit
TAKE_OVER_CHUNK = 1000  # uploads handed to the service at a reactor turn
LATE_LOG_INTERVAL = 60.0  # seconds between two log lines about answers that did not wait for their commit
FREEZE_OVER = 10_000  # uploads to take over from which the objects already there are frozen first

Change = tuple[Key, Upload | None]  # the upload now pending under that key, or None: nothing any more
TakeOver = Callable[[list[Upload]], tuple[int, int]]  # previous run's uploads -> (taken, over max_pending)


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
        if self.worker == 0:  # rows of workers this fedd no longer has: an upload of the same name here wins
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE OR IGNORE pending SET worker = 0 WHERE worker >= ?", (self.workers,))
                db.execute("DELETE FROM pending WHERE worker >= ?", (self.workers,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        # read outside the write lock (WAL: the other workers' writes go on): no one else writes this
        # index's rows, and this process writes none before it has them
        rows = db.execute(
            "SELECT path, endpoint, endpoint_path, size, started, overwrite FROM pending "
            "WHERE worker = ? ORDER BY started",
            (self.worker,),
        )
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


class KeptUploads:
    """The confirm service's use of its pending file: opening it and handing over what the previous
    run left (`start`), the changes since the last write (`keep`: the latest of each key), written
    one batch at a time at the next reactor turn, and `close` after the last of them. A write that
    fails is logged once until one succeeds again; the service confirms in memory meanwhile."""

    def __init__(self, file: PendingFile, clock: Any) -> None:
        self.file = file
        self.clock = clock
        self.state = "closed"  # opening (reading the previous run's), open, failed (to open), closed
        self.errors = 0
        self._changes: dict[Key, Upload | None] = {}  # not written yet: the latest of each key
        self._writing = False
        self._write_call: Any = None
        self._failing = False  # a write failed and none succeeded since: logged once
        self._waiting: list[Deferred[bool]] = []  # answers waiting for the commit of `_changes`
        self.unkept = 0  # answers sent without their row committed (a write failed, or took over KEEP_WAIT)
        self._late_logged: float | None = None
        self._hand_call: Any = None  # the next chunk of the previous run's uploads
        self.handing_over = 0  # the previous run's uploads not handed over yet

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def keeping(self) -> bool:
        """What is pending now will be there at the next start (as far as the writes tell)."""
        return self.state in ("opening", "open") and not self._failing

    def start(self, take_over: TakeOver) -> None:
        """Open the file, then hand `take_over` the uploads the previous run left pending, a chunk
        at a reactor turn (closed meanwhile: the rest stay in the file, for the next start)."""
        self.state = "opening"
        d = self.file.open()
        d.addCallback(self._take)
        d.addCallbacks(lambda uploads: self._opened(uploads, take_over), self._open_failed)

    def _take(self, held: int) -> Deferred[list[Upload]]:
        """`held`: the rows the previous run left to this process."""
        if held >= FREEZE_OVER and self.state == "opening":
            gc.freeze()  # before the uploads are created (in the file's thread): see the module's docstring
        return self.file.take()

    def _opened(self, uploads: list[Upload], take_over: TakeOver) -> None:
        if self.state != "opening":
            return  # stopped meanwhile: the rows wait for the next start
        self.state = "open"
        self._hand_over(uploads, 0, take_over, 0, 0)
        self._write_soon()

    def _hand_over(self, uploads: list[Upload], start: int, take_over: TakeOver, taken: int, over: int) -> None:
        self._hand_call = None
        if self.state != "open":
            return
        end = min(start + TAKE_OVER_CHUNK, len(uploads))
        now_taken, now_over = take_over(uploads[start:end])
        taken, over = taken + now_taken, over + now_over
        self.handing_over = len(uploads) - end
        if end < len(uploads):  # the reactor answers requests between two chunks
            self._hand_call = self.clock.callLater(0, self._hand_over, uploads, end, take_over, taken, over)
        elif uploads:
            log.info(
                "taking over {n} upload(s) not confirmed before the restart ({file}; {untracked} over max_pending)",
                n=taken,
                file=self.path,
                untracked=over,
            )

    def _open_failed(self, failure: Any) -> None:
        if self.state != "opening":
            return  # stopped meanwhile
        self.state = "failed"
        self._changes.clear()
        self._release(self._take_waiting(), False)
        self.errors += 1
        self._failing = True
        log.warn(
            "[confirm] pending_file {file}: {reason}: uploads are confirmed in memory only, not after a restart",
            file=self.path,
            reason=describe(failure.value),
        )

    def keep(self, key: Key, upload: Upload | None) -> None:
        """`upload` is now pending under `key` (None: nothing is): written at the next turn."""
        if self.state not in ("opening", "open"):
            return
        self._changes[key] = upload
        self._write_soon()

    def written(self) -> Deferred[bool] | None:
        """Called right after `keep`: fires once what it was given is committed (True), or will not be:
        the write failed, the file closed or failed to open, or KEEP_WAIT passed (False). None: the
        file is not kept (none configured for this service, it failed to open, or it is closed)."""
        if self.state not in ("opening", "open"):
            return None
        d: Deferred[bool] = Deferred()
        self._waiting.append(d)
        return d.addTimeout(KEEP_WAIT, self.clock, onTimeoutCancel=self._late)

    def _late(self, result: Any, timeout: float) -> bool:
        self.unkept += 1
        now = self.clock.seconds()
        if self._late_logged is None or now - self._late_logged >= LATE_LOG_INTERVAL:
            self._late_logged = now
            log.warn(
                "[confirm] pending_file {file}: not written within {wait:g}s: PUTs are answered without "
                "waiting for it (their uploads are confirmed after a restart only once written)",
                file=self.path,
                wait=timeout,
            )
        return False

    def _take_waiting(self) -> list[Deferred[bool]]:
        waiting, self._waiting = self._waiting, []
        return waiting

    def _release(self, waiting: list[Deferred[bool]], kept: bool) -> None:
        for d in waiting:
            if not d.called:  # not given up on at KEEP_WAIT (counted then)
                self.unkept += 0 if kept else 1
                d.callback(kept)

    def _write_soon(self) -> None:
        if self.state != "open" or self._writing or not self._changes:
            return
        if self._write_call is None or not self._write_call.active():
            self._write_call = self.clock.callLater(0, self._write)

    def _write(self) -> None:
        self._write_call = None
        if self.state != "open" or not self._changes:
            return
        changes, self._changes = list(self._changes.items()), {}
        waiting = self._take_waiting()
        self._writing = True
        d = self._apply(changes, waiting)

        def next_batch(_: Any) -> None:
            self._writing = False
            self._write_soon()

        d.addCallback(next_batch)

    def _apply(self, changes: list[Change], waiting: list[Deferred[bool]]) -> Deferred[None]:
        """One batch written; then the answers waiting for it go on (told whether it is kept)."""
        d = self.file.apply(changes).addCallbacks(self._written, self._write_failed)
        return d.addCallback(lambda kept: self._release(waiting, kept))

    def _written(self, _: Any) -> bool:
        if self._failing:
            self._failing = False
            log.info("[confirm] pending_file {file}: written again", file=self.path)
        return True

    def _write_failed(self, failure: Any) -> bool:
        """The batch is lost (its uploads are still confirmed here); the next batches are tried."""
        self.errors += 1
        if not self._failing:
            self._failing = True
            log.warn(
                "[confirm] pending_file {file}: writing failed ({reason}): uploads are confirmed in memory, "
                "those not written are not confirmed after a restart",
                file=self.path,
                reason=describe(failure.value),
            )
        return False

    def close(self) -> Deferred[Any] | None:
        """The last changes written, then the file closed (both after what its thread has queued)."""
        for call in (self._write_call, self._hand_call):
            if call is not None and call.active():
                call.cancel()
        self._write_call = self._hand_call = None
        state, self.state = self.state, "closed"
        if state == "closed":
            return None
        waiting = self._take_waiting()
        if state in ("opening", "open") and self._changes:
            self._apply(list(self._changes.items()), waiting)
        else:
            self._release(waiting, False)
        self._changes = {}
        return self.file.close().addErrback(lambda f: log.warn("[confirm] pending_file: {e}", e=describe(f.value)))

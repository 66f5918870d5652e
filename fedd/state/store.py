"""The `state` service: one shared-state database for the whole process, its writes, and what other
hosts changed.

How it behaves, in order:
1. At start it applies the missing schema migrations (fedd.state.hosts.migrate), under a lock every
   host takes, so two hosts starting together migrate once.
2. Writes (`write`) go to a bounded FIFO queue and are written in order by one flusher; a write
   that fails stays at the head and is retried at the next tick. So a database that is down or
   restarting delays writes, it does not lose them: only more than `[state] queue` waiting writes
   drop the oldest (counted in the status). The outage is logged once when it starts and once
   when it ends, and shown in the status while it lasts. Writes still queued when fedd stops are
   saved to `[state] queue_file` and queued again at the next start (fedd.state.spill).
3. Reads (`read`) go straight to the database with a timeout and fail fast when it is down: callers
   keep what they knew (the downtimes applied last, checksums computed or remembered in memory).
   Nothing on the redirect path reads it: downtimes and health are applied from memory.
4. Every tick (`[state] poll_interval`, 1 s) reads one tiny table, `changes`, whose serial a writer
   bumps in the same transaction as its change; a watcher (`watch`) is called when the serial of its
   table moved, and re-reads that table. A change on one host is thus applied by the others within
   one tick plus one query. Polling one row per second per host was chosen over LISTEN/NOTIFY: it
   works the same on SQLite, needs no dedicated connection that must itself be watched and
   re-established after a restart, and a host that was cut off catches up by construction.
5. Every `[state] heartbeat_interval` a host upserts its row in `hosts`, and reads the others' rows:
   the status lists the hosts seen through the shared state. A host that stops removes its row; the
   workers of `[server] workers` share it, and only the last one to stop removes it (fedd.state.hosts,
   fedd.state.presence).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from fedd.periodic import Periodic
from fedd.state import schema, spill
from fedd.state.database import Cursor, StateDatabase, Work
from fedd.state.hosts import HostIdentity, forget, heartbeat, migrate
from fedd.state.presence import HostPresence
from fedd.state.spill import Sql
from fedd.twtypes import Service

log = Logger(namespace="fedd.state")
T = TypeVar("T")
__all__ = ["HostIdentity", "QueueFull", "StateStore", "Unavailable"]


@dataclass
class _Write:
    what: str  # for the log: "downtime", "checksum", ...
    work: Work[Any]
    done: Deferred[None]


class StateStore(Service):
    name = "state"

    def __init__(
        self,
        database: StateDatabase,
        *,
        clock: Any,
        identity: HostIdentity,
        queue: int = 10_000,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 5.0,
        timeout: float = 5.0,
        queue_file: str = "",
        implicit: bool = False,
        presence: HostPresence | None = None,
        started: float | None = None,
    ) -> None:
        """`started`: when the host started, for its heartbeat row (a worker: its supervisor's
        start); None: when this service starts."""
        self.db = database
        self.presence = presence  # a worker: the host's row goes with the last worker (None: with this process)
        self.implicit = implicit  # the workers' own host-local database, not `[state] database`
        self.queue_file = queue_file
        self.clock = clock
        self.identity = identity
        self.queue_max = queue
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.schema_version = 0
        self.migrated = False
        self._first_attempt: Deferred[None] = Deferred()
        self._queue: deque[_Write] = deque()
        self._flushing = False
        self._ticking = False
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._each_tick: list[Callable[[], None]] = []
        self._serials: dict[str, int] = {}
        self._last_heartbeat = float("-inf")
        self._loop: Periodic | None = None
        self.hosts: list[dict[str, Any]] = []
        self._host_started = started
        self.started = 0.0
        self.down_since: float | None = None
        self.last_error = ""
        self.outages = self.failures = self.written = self.dropped = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.started = self._host_started if self._host_started is not None else self.clock.seconds()
        if self.presence is not None:
            self.presence.enter()
        self._queue_saved()
        self._loop = Periodic(self.clock, self._tick, "state poll").start(self.poll_interval, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._queue:
            self._save_queue()
        last = self.presence.leave() if self.presence is not None else True
        d = self._forget_self() if self.migrated and last else succeed(None)
        return d.addBoth(lambda _: self.db.close())

    def _queue_saved(self) -> None:
        """Queue again, ahead of anything new, the writes the last stop saved (see spill.py)."""
        for what, sql in spill.restore(self.queue_file):
            write = _Write(what, sql, Deferred())
            write.done.addErrback(lambda _: None)  # nobody waits for these; a drop is counted
            self._queue.append(write)

    def _save_queue(self) -> None:
        spill.keep(self.queue_file, [(w.what, w.work) for w in self._queue], self.db.where)

    def _forget_self(self) -> Deferred[None]:
        d = self.db.run(lambda c: forget(c, self.identity))
        d.addTimeout(self.timeout, self.clock)
        return d.addErrback(lambda _: None)

    def ready(self) -> Deferred[None]:
        """Fires after the first attempt to reach the database (whether or not it answered): from
        then on writes are queued, and written once it answers."""
        if self._first_attempt.called:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def release(result: object) -> object:
            waiter.callback(None)
            return result

        self._first_attempt.addBoth(release)
        return waiter

    # --- the calls ------------------------------------------------------------------------------

    def write(self, what: str, work: Work[Any]) -> Deferred[None]:
        """Queue a write; fires once it is in the database (or fails if the queue drops it)."""
        done: Deferred[None] = Deferred()
        if len(self._queue) >= self.queue_max:
            old = self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "state write queue full ({n}): dropped the oldest write ({what}); {dropped} dropped so far",
                    n=self.queue_max,
                    what=old.what,
                    dropped=self.dropped,
                )
            old.done.errback(QueueFull(old.what))
        self._queue.append(_Write(what, work, done))
        self._flush()
        return done

    def read(self, work: Work[T]) -> Deferred[T]:
        """A read with the store's timeout. Before the first attempt to reach the database it waits
        for that attempt; it fails at once while the database is known to be down and the schema
        not yet ensured."""
        if not self.migrated:
            if not self._first_attempt.called:
                return self.ready().addCallback(lambda _: self._read_after_start(work))
            return _failed(Unavailable(self.last_error or "not reached yet"))
        d = self.db.run(work)
        d.addTimeout(self.timeout, self.clock)
        return d

    def _read_after_start(self, work: Work[T]) -> Deferred[T]:
        if not self.migrated:
            return _failed(Unavailable(self.last_error or "not reached yet"))
        return self.read(work)

    def watch(self, table: str, changed: Callable[[], None]) -> None:
        """Call `changed` (no arguments) once the database is reached, and whenever another
        host (or this one) bumps the serial of `table` (see `bump`)."""
        self._watchers.setdefault(table, []).append(changed)
        # a watcher that comes after a poll must still get its first read: the next poll calls
        # the watchers of `table` as if its serial had moved (a harmless re-read for earlier ones)
        self._serials.pop(table, None)

    def every_tick(self, work: Callable[[], None]) -> None:
        """Call `work` after each poll that reached the database (every `poll_interval`)."""
        self._each_tick.append(work)

    @staticmethod
    def bump(cursor: Cursor, table: str) -> None:
        """In a write's transaction: tell every host's watcher of `table` to re-read it."""
        Sql((), (table,))(cursor)

    # --- the loop -------------------------------------------------------------------------------

    def _tick(self) -> Deferred[None] | None:
        if self._ticking:
            return None
        self._ticking = True
        d = self._tick_once()
        d.addErrback(lambda f: log.failure("state tick failed", f))

        def done(_: object) -> None:
            self._ticking = False

        d.addBoth(done)
        return None  # the loop does not wait: a slow database must not stretch the interval

    def _tick_once(self) -> Deferred[None]:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self._tick_async())

    async def _tick_async(self) -> None:
        if not self.migrated:
            try:
                migrating = self.db.run(lambda c: migrate(c, self.db.kind))
                migrating.addTimeout(self.timeout * 2, self.clock)
                found = await migrating
            except Exception as exc:
                self._failed(exc)
                self._attempted()
                return
            self.migrated = True
            self.schema_version = schema.LATEST
            if found != schema.LATEST:
                log.info("state database {db}: schema {old} -> {new}", db=self.db.where, old=found, new=schema.LATEST)
            else:
                log.info("state database {db}: schema {v}", db=self.db.where, v=found)
            self._recovered()
            self._attempted()
        self._flush()
        now = self.clock.seconds()
        beat = now - self._last_heartbeat >= self.heartbeat_interval
        try:
            polling = self.db.run(lambda c: self._poll(c, now, beat))
            polling.addTimeout(self.timeout, self.clock)
            serials, hosts = await polling
        except Exception as exc:
            self._failed(exc)
            return
        self._recovered()
        if beat:
            self._last_heartbeat = now
            self.hosts = hosts
        for table, serial in serials.items():
            if self._serials.get(table) != serial:
                self._serials[table] = serial
                for changed in self._watchers.get(table, []):
                    try:
                        changed()
                    except Exception:  # one watcher's bug must not stop the others or the loop
                        log.failure("state watcher of {table} failed", table=table)
        for work in self._each_tick:
            try:
                work()
            except Exception:
                log.failure("state tick work failed")

    def _poll(self, cursor: Cursor, now: float, beat: bool) -> tuple[dict[str, int], list[dict[str, Any]]]:
        cursor.execute("SELECT name, serial FROM changes")
        serials = {str(name): int(serial) for name, serial in cursor.fetchall()}
        hosts = heartbeat(cursor, self.identity, self.started, now, self.heartbeat_interval) if beat else []
        return serials, hosts

    def _flush(self) -> None:
        if self._flushing or not self._queue or not self.migrated:
            return
        self._flushing = True
        from twisted.internet.defer import ensureDeferred

        ensureDeferred(self._flush_async()).addErrback(lambda f: log.failure("state flush failed", f))

    async def _flush_async(self) -> None:
        try:
            while self._queue and self.running:
                head = self._queue[0]
                try:
                    d = self.db.run(head.work)
                    d.addTimeout(self.timeout, self.clock)
                    await d
                except Exception as exc:
                    self._failed(exc)
                    return  # the head stays: retried at the next tick
                if self._queue and self._queue[0] is head:
                    self._queue.popleft()
                self.written += 1
                self._recovered()
                head.done.callback(None)
        finally:
            self._flushing = False

    # --- outages --------------------------------------------------------------------------------

    def _attempted(self) -> None:
        if not self._first_attempt.called:
            self._first_attempt.callback(None)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = _describe(exc)
        self.failures += 1
        if self.down_since is None:
            self.down_since = self.clock.seconds()
            self.outages += 1
            log.warn(
                "state database {db} unreachable: {reason}; reads answer from memory, writes are queued "
                "(at most {n}) and retried every {interval:g}s",
                db=self.db.where,
                reason=self.last_error,
                n=self.queue_max,
                interval=self.poll_interval,
            )

    def _recovered(self) -> None:
        if self.down_since is None:
            return
        log.info(
            "state database {db} reachable again after {seconds:.1f}s; {n} queued write(s) being written",
            db=self.db.where,
            seconds=self.clock.seconds() - self.down_since,
            n=len(self._queue),
        )
        self.down_since = None
        self.last_error = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.db.where,
            "kind": self.db.kind,
            "implicit": self.implicit,
            "schema": self.schema_version,
            "host": self.identity.host,
            "reachable": self.migrated and self.down_since is None,
            "unreachable_since": self.down_since,
            "error": self.last_error or None,
            "outages": self.outages,
            "failed_attempts": self.failures,
            "queued": len(self._queue),
            "queue_max": self.queue_max,
            "written": self.written,
            "dropped": self.dropped,
            "hosts": self.hosts,
        }


class Unavailable(Exception):
    """The state database cannot be read now."""


class QueueFull(Exception):
    """A queued write was dropped to make room (more than `[state] queue` writes waiting)."""


def _failed(exc: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

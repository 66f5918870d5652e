"""The two engines of `[state] database`, behind one small interface: run a function in a thread,
inside one transaction, and get a Deferred.

- `SqliteDatabase`: a file (the embedded single-host default), WAL mode, one dedicated thread that
  alone touches the connection (as fedd.sqlite does for the outbox); `BEGIN IMMEDIATE` so two fedd
  processes of one host take turns instead of failing on a lock upgrade.
- `PostgresDatabase`: `twisted.enterprise.adbapi` over psycopg 3 (Twisted's own way to call a blocking
  DB-API driver from a thread pool); a connection the server dropped (a restart) is replaced at the
  next call (`_Connection`), `connect_timeout` and `statement_timeout` bound every call, so a dead
  server costs a thread a few seconds, never the reactor.

Both take the same SQL: `?` placeholders, rewritten to `%s` for psycopg.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
SQLITE_PREFIX = "sqlite:"


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


Work = Callable[[Cursor], T]


class StateDatabase(Protocol):
    kind: str  # "sqlite" or "postgresql"
    where: str  # for logs and the status: a path, or the URL without its password

    def run(self, work: Work[T]) -> Deferred[T]:
        """`work(cursor)` in a thread, in one transaction (rolled back if it raises)."""
        ...

    def close(self) -> Deferred[None]: ...


def open_database(url: str, reactor: Any, timeout: float) -> StateDatabase:
    """The engine a `[state] database` value names: postgresql://... or postgres://..., else an
    SQLite file (`sqlite:PATH` or a plain path, relative to the working directory)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, reactor, timeout)
    path = url[len(SQLITE_PREFIX) :] if url.startswith(SQLITE_PREFIX) else url
    return SqliteDatabase(path, reactor, timeout)


def redact(url: str) -> str:
    """A database URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, path: str, reactor: Any, timeout: float) -> None:
        self.where = path
        self._reactor = reactor
        self._timeout = timeout
        self._pool = ThreadPool(1, 1, name="fedd-state")
        self._db: sqlite3.Connection | None = None
        self._started = False

    def run(self, work: Work[T]) -> Deferred[T]:
        if not self._started:
            self._pool.start()
            self._started = True
        return deferToThreadPool(self._reactor, self._pool, self._transaction, work)

    def _transaction(self, work: Work[T]) -> T:
        if self._db is None:
            db = sqlite3.connect(self.where, check_same_thread=False, isolation_level=None, timeout=self._timeout)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._db = db
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._db.cursor())
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def close(self) -> Deferred[None]:
        if not self._started:
            return succeed(None)

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def stop(result: Any) -> Any:
            self._pool.stop()
            self._started = False
            return result

        d: Deferred[None] = deferToThreadPool(self._reactor, self._pool, shut)
        return d.addBoth(stop)


class _PgCursor:
    """A psycopg cursor that takes the `?` placeholders of the shared SQL."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), tuple(params))

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    def fetchone(self) -> Any:
        return self._cursor.fetchone()


class _Connection(adbapi.Connection):
    """adbapi's pooled connection, whose failed rollback drops the connection (the next call opens a
    new one) without adbapi's "Rollback failed" traceback per pooled connection: a lost connection is
    what a database restart looks like, and the state service says so once per outage."""

    def rollback(self) -> None:
        # adbapi.Connection's own attributes: the DB-API connection, and its pool. Raising here would
        # only add adbapi's "Rollback failed" traceback: the interaction's own error is raised anyway
        connection = self._connection
        if connection is None:
            return
        try:
            connection.rollback()
        except Exception:
            self._pool.disconnect(connection)


class _Pool(adbapi.ConnectionPool):
    connectionFactory = _Connection


class PostgresDatabase:
    kind = "postgresql"

    def __init__(self, url: str, reactor: Any, timeout: float) -> None:
        self.where = redact(url)
        try:  # adbapi imports it by name: a missing one (or one without libpq) is said here, with the cure
            importlib.import_module("psycopg")
        except ImportError as exc:
            raise RuntimeError(
                f"postgresql:// needs psycopg 3 with libpq: pip install 'fedd[postgresql]' (the RPM has it) ({exc})"
            ) from None
        pool: Any = _Pool  # adbapi is untyped
        self._pool: Any = pool(
            "psycopg",
            url,
            connect_timeout=max(1, round(timeout)),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            cp_min=1,
            cp_max=3,
            cp_reconnect=False,  # _Connection does it
            cp_noisy=False,
            cp_reactor=reactor,
        )

    def run(self, work: Work[T]) -> Deferred[T]:
        d: Deferred[T] = self._pool.runInteraction(lambda cursor: work(_PgCursor(cursor)))
        return d

    def close(self) -> Deferred[None]:
        self._pool.close()  # joins the pool's threads: each call is bounded by the timeouts above
        return succeed(None)

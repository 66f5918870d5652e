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

A PostgreSQL URL is checked before anything starts (`check_postgres`): libpq's own parser, then
what libpq would otherwise say only at each connection attempt, once a second for ever (an
unknown sslmode, a CA, certificate or key file that is not there, `sslrootcert=system` where it
cannot work). A server that does not answer, or whose certificate fails verification, is an
outage instead (fedd.state.store): it may come back by itself.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
SQLITE_PREFIX = "sqlite:"
_SECRET_PARAMETERS = ("password", "sslpassword")  # the key's passphrase is one too
_FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


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
    """A database URL without its passwords: the user info's, and `password=` or `sslpassword=`
    parameters. Works on the text (a URL with several hosts, `h1:5432,h2:5432`, has no one port)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{hosts}" if at and ":" in userinfo else parts.netloc
    query = "&".join(f"{key}=***" if secret else f"{key}{eq}{value}" for key, eq, value, secret in _query(parts.query))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _query(query: str) -> list[tuple[str, str, str, bool]]:
    """The parameters of a URL's query as written: key, "=", value, and whether it is a password."""
    items = [item.partition("=") for item in query.split("&")] if query else []
    return [(key, eq, value, unquote(key) in _SECRET_PARAMETERS) for key, eq, value in items]


def _scrub(text: str, url: str) -> str:
    """`text` (an error about `url`) without the passwords `url` holds, as written or decoded."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    written = [userinfo.partition(":")[2]] if at and ":" in userinfo else []
    written += [value for _, _, value, secret in _query(parts.query) if secret]
    text = text.replace(url, redact(url))
    for password in sorted({p for raw in written for p in (raw, unquote(raw)) if p}, key=len, reverse=True):
        text = text.replace(password, "***")
    return text


def check_postgres(url: str, *, impl: str, environ: Mapping[str, str]) -> None:
    """Raise ValueError (its message without passwords) for what libpq would refuse at every connection
    attempt: a URL or parameter it does not know, an sslmode it does not know, a CA/certificate/key
    file that is not there, and `sslrootcert=system` with psycopg's binary wheel (`impl` "binary"),
    whose own OpenSSL looks for the system's CAs in a directory of the wheel's build machine
    (/usr/lib/psycopg-openssl), so nothing would verify unless SSL_CERT_FILE or SSL_CERT_DIR says
    where they are."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError: libpq's message, which may quote the password
        raise ValueError(_scrub(str(exc).strip(), url)) from None
    mode = str(params.get("sslmode", ""))
    if mode and mode not in _SSLMODES:
        raise ValueError(f"sslmode={mode}: expected one of {', '.join(_SSLMODES)}")
    for name in _FILE_PARAMETERS:
        path = str(params.get(name, ""))
        if not path or (name == "sslrootcert" and path == "system"):
            continue
        if not os.path.exists(path):
            raise ValueError(f"{name}={path}: no such file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{name}={path}: not readable by this user")
    if (
        params.get("sslrootcert") == "system"
        and impl == "binary"
        and not (environ.get("SSL_CERT_FILE") or environ.get("SSL_CERT_DIR"))
    ):
        raise ValueError(
            "sslrootcert=system: the libpq of psycopg's binary wheel does not find this system's CAs: name "
            "the CA file (sslrootcert=/etc/pki/tls/certs/ca-bundle.crt on EL, "
            "/etc/ssl/certs/ca-certificates.crt on Debian), or set SSL_CERT_FILE in fedd's environment"
        )


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
            psycopg = importlib.import_module("psycopg")
        except ImportError as exc:
            raise RuntimeError(
                f"postgresql:// needs psycopg 3 with libpq: pip install 'fedd[postgresql]' (the RPM has it) ({exc})"
            ) from None
        check_postgres(url, impl=psycopg.pq.__impl__, environ=os.environ)
        # the URL's own `options` (an admin's -c settings) are kept; fedd's statement timeout comes
        # last, so every statement stays bounded whatever the URL says
        theirs = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
        options = f"{theirs} -c statement_timeout={int(timeout * 1000)}".strip()
        pool: Any = _Pool  # adbapi is untyped
        self._pool: Any = pool(
            "psycopg",
            url,
            connect_timeout=max(1, round(timeout)),
            options=options,
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

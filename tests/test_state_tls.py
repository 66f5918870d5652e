"""`[state] database` on PostgreSQL over TLS with a verified server, through the libpq that fedd ships
(psycopg's binary wheel), and what an admin sees when it fails.

A private PostgreSQL 15 of this module's own (initdb/pg_ctl as user postgres, a free port on
127.0.0.1) with `ssl = on`, a server certificate for IP 127.0.0.1 and DNS localhost signed by a
scratch CA (openssl), and a pg_hba.conf that takes TCP connections only over TLS, with a password
(scram-sha-256) for user fedd. The machine's own server on 5432 has no TLS: it is what
`sslmode=require` meets when the server was not set up for it. Every DSN here holds the password
`secret`, which must appear in no log line, status or start error.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from zope.interface import provider

from fedd.config import parse_config
from fedd.config.parse import ConfigError
from fedd.service import build_service
from fedd.state import schema
from fedd.state.database import check_postgres, open_database, redact
from fedd.state.store import HostIdentity, StateStore
from fedd.state.tables import SharedChecksums
from tests import pgservers
from tests.daemon import env, start_fedd, twistd_command, wait_for
from tests.reactor import call, the_reactor
from tests.servers import free_port

PASSWORD = "secret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class TlsPostgres:
    workdir: Path
    port: int

    @property
    def ca(self) -> Path:
        return self.workdir / "tls" / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.workdir / "tls" / "other-ca.pem"

    def url(self, database: str, host: str = "127.0.0.1", query: str = "") -> str:
        """fedd's DSN for `database`, verifying the server against the scratch CA unless `query` says otherwise."""
        query = query or f"sslmode=verify-full&sslrootcert={self.ca}"
        return f"postgresql://fedd:{PASSWORD}@{host}:{self.port}/{database}?{query}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """As postgres, through the Unix socket (pg_hba: trusted, no TLS)."""
        where = ("-h", str(self.workdir), "-p", str(self.port), "-U", "postgres", "-d", database)
        out = subprocess.run(
            ["psql", *where, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def new_database(self) -> str:
        name = f"fedd_tls_{secrets.token_hex(4)}"
        self.psql(f"CREATE DATABASE {name} OWNER fedd")
        return name

    def ctl(self, *args: str, check: bool = True) -> None:
        command = [str(pgservers.PG_BIN / "pg_ctl"), "-D", str(self.workdir / "data"), *args]
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=check, capture_output=True, timeout=90)


def _prepare_tls_postgres(workdir: Path) -> TlsPostgres:
    """Certificates, a cluster and its pg_hba.conf in `workdir`."""
    tls = workdir / "tls"
    tls.mkdir()
    for ca in ("ca", "other-ca"):
        _openssl(
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN=fedd test {ca}"),
            cwd=tls,
        )
    _openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key"),
        *("-out", "server.csr", "-subj", "/CN=127.0.0.1"),
        cwd=tls,
    )
    (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"),
        *("-out", "server.crt", "-days", "2", "-extfile", "san.ext"),
        cwd=tls,
    )
    for path in (workdir, tls, tls / "server.key", tls / "server.crt"):
        shutil.chown(path, "postgres")
    workdir.chmod(0o711)  # root reaches the CA files; the socket is in workdir
    (tls / "server.key").chmod(0o600)
    initdb = (str(pgservers.PG_BIN / "initdb"), "-D", str(workdir / "data"), "-A", "trust", "-U", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *initdb, "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # TCP only over TLS; the Unix socket for the test's own psql
    (workdir / "data" / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n"
    )
    return TlsPostgres(workdir, free_port())


@pytest.fixture(scope="module")
def pg() -> Iterator[TlsPostgres]:
    # not under pytest's temporary directory (0700, root's): the server runs as user postgres
    workdir = Path(tempfile.mkdtemp(prefix="fedd-pgtls-"))
    try:
        server = _prepare_tls_postgres(workdir)
        tls = workdir / "tls"
        options = (
            f"-p {server.port} -k {workdir} -c listen_addresses=127.0.0.1 -c ssl=on "
            f"-c ssl_cert_file={tls / 'server.crt'} -c ssl_key_file={tls / 'server.key'}"
        )
        try:
            server.ctl("-o", options, "-l", str(workdir / "log"), "-w", "-t", "60", "start")
            server.psql(f"CREATE ROLE fedd LOGIN PASSWORD '{PASSWORD}'")
            yield server
        finally:
            server.ctl("-m", "fast", "-w", "-t", "60", "stop", check=False)  # a start that failed left nothing
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Events:
    """The log events published while it is in use, formatted."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __enter__(self) -> Events:
        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        self._observer = observe
        globalLogPublisher.addObserver(observe)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observer)

    def lines(self) -> list[str]:
        return [formatEvent(e) or "" for e in self.events]

    def failures(self) -> list[LogEvent]:
        return [e for e in self.events if "log_failure" in e]


def make_store(url: str, host: str = "a") -> StateStore:
    reactor = the_reactor()
    return StateStore(
        open_database(url, reactor, 3.0),
        clock=reactor,
        identity=HostIdentity(host, f"i-{host}", "test", "tcp:0"),
        poll_interval=0.2,
        heartbeat_interval=0.2,
        timeout=3.0,
    )


def ssl_connections(pg: TlsPostgres, database: str) -> list[str]:
    """(ssl, TLS version) of user fedd's server connections to `database`."""
    sql = (
        "SELECT s.ssl || ' ' || coalesce(s.version, '') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        f"WHERE a.usename = 'fedd' AND a.datname = '{database}'"
    )
    return pg.psql(sql).splitlines()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_state_store_works_over_verified_tls(pg: TlsPostgres, host: str) -> None:
    """verify-full against the IP address and the DNS name the certificate names: migrations, a write on
    one host and a read on another, every connection of fedd's TLS (as the server sees it)."""
    database = pg.new_database()
    url = pg.url(database, host)
    with Events() as seen:
        a = make_store(url, "a")
        b = make_store(url, "b")
        call(a.startService)
        call(a.ready)
        call(b.startService)
        call(b.ready)
        try:
            assert a.migrated and b.migrated and a.schema_version == schema.LATEST, a.to_json()
            key = ("dav", "/atlas/f", 10, "etag1")
            call(SharedChecksums(a).put, key, {"adler32": "0badcafe"}, 1.0)
            wait_for(lambda: a.written >= 1, 10, "the checksum write")
            assert call(SharedChecksums(b).get, [key]) == {key: {"adler32": "0badcafe"}}
            connections = ssl_connections(pg, database)
            assert connections and all(c.startswith("true TLSv1.") for c in connections), connections
            status = json.dumps(a.to_json())
            assert a.to_json()["reachable"] is True and PASSWORD not in status, status
        finally:
            call(a.stopService)
            call(b.stopService)
    assert not seen.failures()
    assert any(f"state database {redact(url)}: schema" in line for line in seen.lines()), seen.lines()
    assert not any(PASSWORD in line for line in seen.lines())


def test_twistd_fedd_with_a_verified_tls_database(pg: TlsPostgres, tmp_path: Path) -> None:
    """fedd as sites run it, the DSN of the admin's example: the status shows the state database
    reached (without the password), and the server sees fedd's connections on TLS."""
    database = pg.new_database()
    url = pg.url(database, "localhost")
    port = free_port()
    (tmp_path / "data").mkdir()
    config = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[state]
database = {url}
poll_interval = 0.2
timeout = 3
[endpoint ep]
kind = local
path = {tmp_path / "data"}
"""
    fedd = start_fedd(tmp_path / "fedd", config, port)
    try:
        state = wait_for(
            lambda: fedd.status()["state"], 20, "the state database reached", until=lambda s: s["reachable"]
        )
        assert state["schema"] == schema.LATEST and state["error"] is None, state
        status = fedd.status()
        assert status["fedd"]["shared"]["database"] == redact(url) == state["database"]
        assert PASSWORD not in json.dumps(status)
        connections = ssl_connections(pg, database)
        assert connections and all(c.startswith("true TLSv1.") for c in connections), connections
    finally:
        fedd.stop()
    log = fedd.log_text()
    assert f"state database {redact(url)}: schema" in log, log
    assert "Traceback" not in log and PASSWORD not in log, log


@dataclass(frozen=True)
class Failure:
    name: str
    query: str  # the DSN's parameters ({ca}, {other_ca}: the files)
    host: str  # {port}: the TLS server's
    says: str  # what the status and the log line say


FAILURES = [
    Failure(
        "wrong CA",
        "sslmode=verify-full&sslrootcert={other_ca}",
        "127.0.0.1:{port}",
        "SSL error: certificate verify failed",
    ),
    Failure(
        "another name than the certificate's",  # a DNS alias the certificate does not list
        "sslmode=verify-full&sslrootcert={ca}&hostaddr=127.0.0.1",
        "db.example.org:{port}",
        'server certificate for "127.0.0.1" (and 1 other name) does not match host name "db.example.org"',
    ),
    Failure(
        "sslmode=require to a server without TLS",  # the machine's own server
        "sslmode=require",
        "127.0.0.1:5432",
        "server does not support SSL, but SSL was required",
    ),
    Failure(
        "verify-full without sslrootcert",  # libpq looks for ~/.postgresql/root.crt of fedd's user
        "sslmode=verify-full",
        "127.0.0.1:{port}",
        '/.postgresql/root.crt" does not exist',
    ),
]


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
def test_a_verification_failure_is_an_outage_said_once(
    pg: TlsPostgres, failure: Failure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What may come back by itself (a server certificate renewed, the server's TLS set up) is an
    outage: one warning line with libpq's reason, the status's error, no traceback, no password."""
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)  # libpq's default CA file, instead of ~/.postgresql/root.crt
    if failure.host.endswith(":5432"):
        assert pgservers.query(f"{pgservers.SHARED}/postgres", "SHOW ssl") == [["off"]]
    host = failure.host.format(port=pg.port)
    query = failure.query.format(ca=pg.ca, other_ca=pg.other_ca)
    url = f"postgresql://fedd@{host}/fedd?password={PASSWORD}&{query}"
    with Events() as seen:
        store = make_store(url)
        call(store.startService)
        try:
            call(store.ready)
            wait_for(lambda: store.failures >= 3, 10, "a few attempts")
            status = store.to_json()
        finally:
            call(store.stopService)
    assert status["reachable"] is False and failure.says in status["error"], status
    assert status["error"].startswith("OperationalError: connection failed: connection to server at"), status
    assert status["database"] == redact(url) and "password=***" in status["database"], status
    warnings = [line for line in seen.lines() if "unreachable" in line]
    assert len(warnings) == 1 and failure.says in warnings[0], seen.lines()
    assert warnings[0].startswith(f"state database {redact(url)} unreachable: OperationalError"), warnings
    assert not seen.failures() and not any(PASSWORD in line for line in seen.lines()), seen.lines()


def _start_error(url: str, tmp_path: Path) -> str:
    config = parse_config(
        text=f"""[server]
listen = tcp:0:interface=127.0.0.1
[state]
database = {url}
[endpoint ep]
kind = local
path = {tmp_path}
"""
    )
    with pytest.raises(usage.UsageError) as raised:
        build_service(config, reactor=MemoryReactorClock())  # never started: no port, no thread
    return str(raised.value)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sslmode=verify-full&sslrootcert={missing}", "sslrootcert={missing}: no such file"),
        ("sslmode=verify-full&sslrootcert={ca}&sslcert={missing}", "sslcert={missing}: no such file"),
        ("sslmode=verify_full&sslrootcert={ca}", "sslmode=verify_full: expected one of disable, allow, prefer"),
        ("sslmode=verify-full&sslrootcrt={ca}", 'invalid URI query parameter: "sslrootcrt"'),
        ("sslmode=verify-full&sslrootcert=system", "sslrootcert=system: the libpq of psycopg's binary wheel"),
    ],
)
def test_what_no_connection_attempt_can_cure_stops_the_start(
    pg: TlsPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, says: str
) -> None:
    """A file named in the DSN that is not there, a parameter or sslmode libpq does not know, and
    `sslrootcert=system` where the shipped libpq cannot find the system's CAs: a start error naming
    it (was: an outage retried every second for ever, the file's name only in libpq's reason)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    names = {"missing": str(tmp_path / "db-ca.pem"), "ca": str(pg.ca)}
    message = _start_error(pg.url("fedd", query=query.format(**names)), tmp_path)
    assert message.startswith("[state] database: ") and says.format(**names) in message, message
    assert PASSWORD not in message


def test_a_url_libpq_cannot_parse_is_refused_without_its_password(tmp_path: Path) -> None:
    """libpq's parser quotes the token it stumbles on: the password is replaced before it is shown."""
    message = _start_error(f"postgresql://fedd:{PASSWORD}%zz@127.0.0.1:5432/fedd", tmp_path)
    assert message == '[state] database: invalid percent-encoded token: "***"', message


def test_sslrootcert_system_with_ssl_cert_file(pg: TlsPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslrootcert=system` works with the shipped libpq once SSL_CERT_FILE names the CA bundle."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pg.ca))
    database = pg.new_database()
    store = make_store(pg.url(database, "localhost", "sslmode=verify-full&sslrootcert=system"))
    call(store.startService)
    try:
        call(store.ready)
        assert store.migrated, store.to_json()
    finally:
        call(store.stopService)


def test_twistd_says_a_missing_ca_file_and_exits(pg: TlsPostgres, tmp_path: Path) -> None:
    missing = tmp_path / "db-ca.pem"
    config = tmp_path / "fedd.conf"
    config.write_text(
        f"""[server]
listen = tcp:{free_port()}:interface=127.0.0.1
[state]
database = {pg.url("fedd", query=f"sslmode=verify-full&sslrootcert={missing}")}
[endpoint ep]
kind = local
path = {tmp_path}
"""
    )
    out = subprocess.run(twistd_command("--config", str(config)), capture_output=True, env=env(), timeout=60)
    text = out.stdout.decode() + out.stderr.decode()
    assert out.returncode != 0, text
    assert f"[state] database: sslrootcert={missing}: no such file" in text, text
    assert "Traceback" not in text and PASSWORD not in text, text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://fedd:secret@db:5432/fedd", "postgresql://fedd:***@db:5432/fedd"),
        (
            "postgresql://fedd@db/fedd?password=secret&sslmode=require",
            "postgresql://fedd@db/fedd?password=***&sslmode=require",
        ),
        ("postgresql://fedd@db/fedd?sslkey=k&sslpassword=secret", "postgresql://fedd@db/fedd?sslkey=k&sslpassword=***"),
        ("postgresql://fedd:secret@[::1]:5432/fedd", "postgresql://fedd:***@[::1]:5432/fedd"),
        (
            "postgresql://fedd:secret@db1:5432,db2:5432/fedd?target_session_attrs=read-write",
            "postgresql://fedd:***@db1:5432,db2:5432/fedd?target_session_attrs=read-write",
        ),
        ("postgresql://db/fedd", "postgresql://db/fedd"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_check_postgres_takes_system_roots_from_the_environment() -> None:
    url = "postgresql://db/fedd?sslmode=verify-full&sslrootcert=system"
    check_postgres(url, impl="binary", environ={"SSL_CERT_DIR": "/etc/ssl/certs"})
    check_postgres(url, impl="c", environ={})  # built against the system's libpq and OpenSSL
    with pytest.raises(ValueError, match="sslrootcert=system"):
        check_postgres(url, impl="binary", environ={})


def test_a_libpq_keyword_string_is_refused_without_its_password(tmp_path: Path) -> None:
    """`host=... password=...` is libpq's other form: refused with the URL form to write (was: taken
    as the name of an SQLite file to create, shown with its password in the status and the logs)."""
    with pytest.raises(ConfigError) as raised:
        parse_config(
            text=f"""[state]
database = host=db.site dbname=fedd password={PASSWORD} sslmode=verify-full
[endpoint ep]
kind = local
path = {tmp_path}
"""
        )
    message = str(raised.value)
    assert "<string>:2: database: a libpq keyword string (host=... dbname=...) is not taken" in message, message
    assert "postgresql://" in message and PASSWORD not in message, message

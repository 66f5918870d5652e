"""The shared-state store (fedd.state) against both real engines: an SQLite file and PostgreSQL (a fresh
database on the machine's server). One suite, run against each: migrations, checksums seen by a
second host, downtimes applied by another host's book, writes queued while the database is
unreachable and written once it is back, the bound of that queue."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from twisted.python import usage

from fedd.checksums.known import KnownChecksums
from fedd.checksums.store import UNCOUNTED
from fedd.config import Config, Downtime, EndpointConfig, parse_config
from fedd.endpoints.base import Space
from fedd.service import build_service
from fedd.space.downtime import DowntimeBook
from fedd.space.service import Measurement, SpaceService
from fedd.state import schema
from fedd.state.database import open_database
from fedd.state.store import HostIdentity, QueueFull, StateStore
from fedd.state.tables import SharedChecksums, SharedDowntimes, SharedReservations
from tests import pgservers
from tests.daemon import wait_for
from tests.inprocess import captured_logs
from tests.reactor import call, the_reactor


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "state.sqlite")
        return
    url = pgservers.create_database()
    try:
        yield url
    finally:
        pgservers.drop_database(url)


def make_store(url: str, host: str, **kw: Any) -> StateStore:
    reactor = the_reactor()
    kw.setdefault("poll_interval", 0.2)
    kw.setdefault("heartbeat_interval", 0.2)
    return StateStore(
        open_database(url, reactor, 5.0),
        clock=reactor,
        identity=HostIdentity(host, f"i-{host}", "test", "tcp:0"),
        **kw,
    )


def started(store: StateStore) -> StateStore:
    call(store.startService)
    call(store.ready)
    return store


def test_migrations_once_and_checksums_shared(database_url: str) -> None:
    a = started(make_store(database_url, "a"))
    b = started(make_store(database_url, "b"))
    try:
        assert a.migrated and b.migrated and a.schema_version == schema.LATEST
        sums_a, sums_b = SharedChecksums(a), SharedChecksums(b)
        assert call(sums_a.open) == 0
        key = ("dav", "/atlas/f", 10, "etag1")
        call(sums_a.put, key, {"adler32": "0badcafe", "md5": "x" * 32}, 1.0)
        wait_for(lambda: a.written >= 1, 10, "the checksum write")
        assert call(sums_b.get, [key]) == {key: {"adler32": "0badcafe", "md5": "x" * 32}}
        newer = ("dav", "/atlas/f", 11, "etag2")  # rewritten: the old version's rows go
        call(sums_b.put, newer, {"adler32": "00000001"}, 2.0)
        wait_for(lambda: b.written >= 1, 10, "the second write")
        assert call(sums_a.get, [key, newer]) == {key: {}, newer: {"adler32": "00000001"}}
        # each host sees the other through its heartbeat row
        wait_for(lambda: {h["host"] for h in a.hosts} == {"a", "b"}, 10, "both hosts listed", until=bool)
        count = call(a.read, lambda c: (c.execute("SELECT COUNT(*) FROM fedd_schema"), c.fetchone()[0])[1])
        assert int(count) == schema.LATEST  # two stores started, migrated once
    finally:
        call(a.stopService)
        call(b.stopService)


def test_downtime_declared_on_one_host_applies_on_the_other(database_url: str) -> None:
    reactor = the_reactor()
    a = started(make_store(database_url, "a"))
    b = started(make_store(database_url, "b"))
    book_a = DowntimeBook({}, reactor, shared=SharedDowntimes(a))
    book_b = DowntimeBook({}, reactor, shared=SharedDowntimes(b))
    call(book_a.startService)
    call(book_b.startService)
    try:
        assert book_b.blocks("ep", "read", time.time()) == ""
        now = time.time()
        declared = call(book_a.add, "ep", Downtime(now - 1, now + 600, "all", "disk swap"))
        started_at = time.monotonic()
        wait_for(lambda: book_b.blocks("ep", "read", time.time()), 2.0, "host b to apply the downtime", interval=0.02)
        assert time.monotonic() - started_at < 2.0
        assert "disk swap" in book_b.blocks("ep", "write", time.time())
        # a third book (a restarted host) finds it in the database
        c = started(make_store(database_url, "c"))
        book_c = DowntimeBook({}, reactor, shared=SharedDowntimes(c))
        call(book_c.startService)
        wait_for(lambda: book_c.blocks("ep", "read", time.time()), 5.0, "a restarted host to apply it")
        # removed on b: gone on a too
        assert call(book_b.remove, declared.id)
        wait_for(lambda: book_a.blocks("ep", "read", time.time()) == "", 2.0, "host a to drop it", interval=0.02)
        call(book_c.stopService)
        call(c.stopService)
    finally:
        call(book_a.stopService)
        call(book_b.stopService)
        call(a.stopService)
        call(b.stopService)


def test_writes_wait_for_an_unreachable_database(tmp_path: Path) -> None:
    """An SQLite file in a directory that does not exist yet cannot be opened: the store starts,
    says so once, queues, and writes everything once the directory appears."""
    where = tmp_path / "later" / "state.sqlite"
    store = started(make_store(str(where), "a"))
    try:
        assert not store.migrated and store.down_since is not None and store.outages == 1
        sums = SharedChecksums(store)
        assert call(sums.open) == UNCOUNTED  # not 0: nothing could be counted
        with captured_logs() as events:
            known = KnownChecksums(federation=None, clock=the_reactor(), store=sums)
            call(lambda: sums.open().addCallback(known._opened))
        said = [formatEvent(e) for e in events if e.get("log_namespace") == "fedd.checksums"]
        assert said == [f"checksum database {sums.path}: not reachable yet (see the state service)"], said
        keys = [("dav", f"/f{i}", i, "e") for i in range(5)]
        for key in keys:
            call(sums.put, key, {"adler32": f"{key[2]:08x}"}, 1.0)
        assert store.to_json()["queued"] == 5 and store.to_json()["reachable"] is False
        wait_for(lambda: store.failures >= 3, 5, "a few more failed attempts")
        assert store.outages == 1 and store.written == 0  # one outage, said once
        where.parent.mkdir()
        wait_for(lambda: store.to_json()["queued"] == 0, 10, "the queue to be written")
        assert store.written == 5 and store.down_since is None
        with sqlite3.connect(where) as db:
            assert db.execute("SELECT COUNT(*) FROM checksums").fetchone()[0] == 5
    finally:
        call(store.stopService)


def test_the_queue_is_bounded(tmp_path: Path) -> None:
    store = started(make_store(str(tmp_path / "missing" / "state.sqlite"), "a", queue=2))
    try:
        results: list[Any] = []

        def three() -> None:
            for i in range(3):
                store.write(f"w{i}", lambda c: None).addBoth(results.append)

        call(lambda: the_reactor().callLater(0, three))
        wait_for(lambda: results, 5, "the dropped write to fail")
        assert len(results) == 1 and results[0].check(QueueFull) and store.dropped == 1
        assert store.to_json()["queued"] == 2
    finally:
        call(store.stopService)


def test_an_existing_checksum_file_is_upgraded(tmp_path: Path) -> None:
    """`[state] database` may name the single-host checksum file: its rows are kept."""
    path = tmp_path / "fedd-checksums.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE checksums (endpoint TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, "
            "version TEXT NOT NULL, algorithm TEXT NOT NULL, value TEXT NOT NULL, computed REAL NOT NULL, "
            "PRIMARY KEY (endpoint, path, size, version, algorithm))"
        )
        db.execute("INSERT INTO checksums VALUES ('l', '/f', 1, 'v', 'adler32', '00000001', 1.0)")
    store = started(make_store(str(path), "a"))
    try:
        assert store.migrated
        assert call(SharedChecksums(store).get, [("l", "/f", 1, "v")]) == {("l", "/f", 1, "v"): {"adler32": "00000001"}}
    finally:
        call(store.stopService)


def test_reservations_of_other_hosts_are_counted(database_url: str) -> None:
    a = started(make_store(database_url, "a"))
    b = started(make_store(database_url, "b"))
    try:
        mine, theirs = SharedReservations(a), SharedReservations(b)
        call(lambda: mine.add("ep", 100, 10.0))
        wait_for(lambda: theirs.others("ep", 10.0) == 100, 5, "b to count a's reservation")
        assert theirs.others("ep", 11.0) == 0  # b measured later: a's bytes are in that measurement
        assert theirs.others("other", 10.0) == 0 and mine.others("ep", 10.0) == 0  # not its own
        call(lambda: mine.add("ep", 50, 10.0))
        wait_for(lambda: theirs.others("ep", 10.0) == 150, 5, "the row to grow")
        call(lambda: mine.add("ep", 7, 20.0))  # a new measurement: a's row starts again
        wait_for(lambda: theirs.others("ep", 20.0) == 7, 5, "the row to restart")
        assert theirs.others("ep", 10.0) == 7
    finally:
        call(a.stopService)
        call(b.stopService)


def test_placement_on_one_host_counts_the_uploads_redirected_by_another(database_url: str) -> None:
    """Two hosts' space services, the same measurement of an endpoint (shared through memcached in
    production): a 300-byte upload redirected by a leaves b 300 bytes less to place."""
    a = started(make_store(database_url, "a"))
    b = started(make_store(database_url, "b"))
    try:
        ep = EndpointConfig(id="ep", kind="local", path="/tmp", write=True)
        config = Config(endpoints=(ep,))
        spaces = []
        for store in (a, b):
            space = SpaceService(config, {"ep": None}, the_reactor(), reservations=SharedReservations(store))  # type: ignore[dict-item]
            space.measurements["ep"] = Measurement(space=Space(used=0, total=1000), measured=10.0)
            spaces.append(space)
        on_a, on_b = spaces
        call(lambda: on_a.reserve("ep", 300))
        assert on_a.free("ep") == 700
        wait_for(lambda: on_b.free("ep") == 700, 5, "b to count a's upload")
        assert on_b.to_json()["ep"]["reserved_by_others"] == 300 and on_b.quota(["ep"]) == (700, 300)
    finally:
        call(a.stopService)
        call(b.stopService)


def test_a_schema_newer_than_this_release_is_not_used(tmp_path: Path) -> None:
    """A host of an older release (after a downgrade) leaves a newer database alone and says why."""
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(schema.VERSION_TABLE)
        db.execute("INSERT INTO fedd_schema (version) VALUES (?)", (schema.LATEST + 1,))
    store = started(make_store(str(path), "old"))
    try:
        assert not store.migrated and "newer than this fedd" in store.to_json()["error"]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT MAX(version) FROM fedd_schema").fetchone()[0] == schema.LATEST + 1
            assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'downtimes'").fetchone()[0] == 0
    finally:
        call(store.stopService)


def test_a_watcher_added_after_the_first_poll_still_gets_its_first_read(tmp_path: Path) -> None:
    store = started(make_store(str(tmp_path / "state.sqlite"), "a"))
    try:
        wait_for(lambda: store.failures == 0 and store.hosts, 5, "a poll with a heartbeat")
        called: list[int] = []
        call(lambda: store.watch("downtimes", lambda: called.append(1)))
        wait_for(lambda: called, 2, "the late watcher's first call")
    finally:
        call(store.stopService)


def test_writes_queued_at_a_stop_are_written_after_the_next_start(tmp_path: Path) -> None:
    """The database unreachable until fedd stops: its queued writes are saved to `queue_file` and
    written after the next start; a line that cannot be read is skipped, the others still count."""
    where = tmp_path / "later" / "state.sqlite"
    queue_file = tmp_path / "fedd-state-queue.jsonl"
    first = started(make_store(str(where), "a", queue_file=str(queue_file)))
    keys = [("dav", f"/f{i}", i, "e") for i in range(3)]
    try:
        assert not first.migrated
        for key in keys:
            call(SharedChecksums(first).put, key, {"adler32": f"{key[2]:08x}"}, 1.0)
        now = time.time()
        call(lambda: SharedDowntimes(first).insert("d1", "ep", Downtime(now, now + 600, "all", "swap"), now) and None)
        call(lambda: first.write("a function", lambda c: None).addErrback(lambda _: None) and None)
        assert first.to_json()["queued"] == 5
    finally:
        call(first.stopService)
    saved = queue_file.read_text().splitlines()
    assert len(saved) == 4  # the function cannot be saved (logged as lost)
    queue_file.write_text("\n".join([saved[0], "{not json", *saved[1:]]) + "\n")
    where.parent.mkdir()
    second = started(make_store(str(where), "b", queue_file=str(queue_file)))
    try:
        wait_for(lambda: second.to_json()["queued"] == 0, 10, "the saved writes to be written")
        assert second.written >= 4 and not queue_file.exists()
        assert call(SharedChecksums(second).get, keys) == {k: {"adler32": f"{k[2]:08x}"} for k in keys}
        with sqlite3.connect(where) as db:
            assert db.execute("SELECT id, endpoint, reason FROM downtimes").fetchall() == [("d1", "ep", "swap")]
    finally:
        call(second.stopService)


def test_a_read_right_after_start_waits_for_the_database(database_url: str) -> None:
    """A checksum asked in the first milliseconds after start is answered from the database (it
    used to fail at once, before the first connection, and the checksum was computed again)."""
    key = ("dav", "/atlas/f", 10, "etag1")
    writer = started(make_store(database_url, "a"))
    try:
        call(SharedChecksums(writer).put, key, {"adler32": "0badcafe"}, 1.0)
        wait_for(lambda: writer.written >= 1, 10, "the checksum write")
    finally:
        call(writer.stopService)
    fresh = make_store(database_url, "b")

    def start_and_read() -> Any:
        fresh.startService()
        assert not fresh.migrated  # nothing reached yet
        return SharedChecksums(fresh).get([key])

    try:
        assert call(start_and_read) == {key: {"adler32": "0badcafe"}}
    finally:
        call(fresh.stopService)


def test_postgresql_without_psycopg_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """fedd installed without its `postgresql` extra: a postgresql:// `[state] database` stops the start
    with a configuration error that names what to install (twistd prints it, no traceback)."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    config = parse_config(
        text=f"""[server]
listen = tcp:0:interface=127.0.0.1
[state]
database = postgresql://fedd:secret@127.0.0.1:9/fedd
[endpoint ep]
kind = local
path = {tmp_path}
"""
    )
    with pytest.raises(usage.UsageError) as raised:
        build_service(config, reactor=MemoryReactorClock())  # never started: no port, no thread
    message = str(raised.value)
    assert message.startswith("[state] database: postgresql:// needs psycopg 3"), message
    assert "pip install 'fedd[postgresql]'" in message and "secret" not in message, message


def test_the_urls_own_options_are_kept_beside_fedds_statement_timeout() -> None:
    """`options=-c ...` in a postgresql:// URL (an admin's session settings) reach the server, and
    fedd's statement timeout still bounds every statement (was: fedd's options replaced the URL's)."""
    url = pgservers.create_database()
    try:
        db = open_database(url + "?options=-c%20work_mem%3D7MB%20-c%20statement_timeout%3D0", the_reactor(), 3.0)
        try:

            def settings(cursor: Any) -> tuple[str, str]:
                cursor.execute("SHOW work_mem")
                work_mem = cursor.fetchone()[0]
                cursor.execute("SHOW statement_timeout")
                return work_mem, cursor.fetchone()[0]

            assert call(db.run, settings) == ("7MB", "3s")
        finally:
            call(db.close)
    finally:
        pgservers.drop_database(url)

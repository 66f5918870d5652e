"""The checksums service in process: replicas on a local endpoint and FakeEndpoints, an in-memory
database, worker threads replaced by a pool the test runs, time on a MemoryReactorClock. The same
service against Ceph, Apache and its SQLite database through twistd: test_checksums."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from fedd.checksums.compute import replica_key
from fedd.checksums.digest import Want
from fedd.checksums.service import FAILED_TTL, Answer, ChecksumService
from fedd.checksums.store import Key
from fedd.config import ChecksumsConfig, EndpointConfig
from fedd.endpoints.base import Stat
from fedd.endpoints.local import LocalEndpoint
from fedd.federation import Replica
from tests.fakes import FakeEndpoint
from tests.inprocess import PoolReactor, captured_logs, formats, result

ADLER = Want("digest", ("adler32",))
MD5 = Want("digest", ("md5",))
DATA = b"fedd checksum test data\n" * 1000


class MemoryStore:
    """The ChecksumStore's interface over a dict."""

    path = "memory"

    def __init__(self, broken: bool = False) -> None:
        self.values: dict[Key, dict[str, str]] = {}
        self.asked: list[list[Key]] = []
        self.broken = broken

    def open(self) -> Deferred[int]:
        return fail(OSError("unable to open database file")) if self.broken else succeed(len(self.values))

    def close(self) -> Deferred[None]:
        return succeed(None)

    def get(self, keys: list[Key]) -> Deferred[dict[Key, dict[str, str]]]:
        self.asked.append(keys)
        return succeed({k: self.values[k] for k in keys if k in self.values})

    def put(self, key: Key, values: dict[str, str], now: float) -> Deferred[None]:
        self.values.setdefault(key, {}).update(values)
        return succeed(None)


class Targets:
    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def targets(self, path: str) -> dict[str, str]:
        return {eid: prefix + path.removeprefix("/atlas") for eid, prefix in self.mapping.items()}


class Fed:
    """What the service asks of the federation: endpoints, and each one's path for a federation path."""

    def __init__(self, endpoints: dict[str, Any]) -> None:
        self.endpoints = endpoints
        self.locator = Targets({eid: "" for eid in endpoints})


class Setup:
    def __init__(self, tmp_path: Path, store: MemoryStore | None = None, **settings: Any) -> None:
        self.reactor = PoolReactor(immediate=False)
        self.reactor.advance(1_000_000)
        (tmp_path / "data").mkdir()
        local_config = EndpointConfig(id="disk", kind="local", path=str(tmp_path / "data"), mappings=(("/atlas", "/"),))
        self.disk = LocalEndpoint(local_config, self.reactor)
        self.fake = FakeEndpoint("remote")
        self.fed = Fed({"disk": self.disk, "remote": self.fake})
        self.store = store or MemoryStore()
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self.service = ChecksumService(
            ChecksumsConfig(**settings),
            federation=self.fed,
            reactor=self.reactor,
            emit=lambda kind, payload: self.emitted.append((kind, payload)),
            store=self.store,
        )
        self.service.startService()
        self.root = tmp_path / "data"

    def file(self, name: str, data: bytes = DATA) -> Replica:
        (self.root / name).write_bytes(data)
        st = os.stat(self.root / name)
        stat = Stat(size=len(data), mtime=st.st_mtime, etag=f'"{st.st_ino:x}-{len(data):x}"')
        return Replica("disk", f"http://disk/{name}", stat, 1)

    def answer(self, replicas: list[Replica], wants: list[Want], wait: float | None = 0) -> list[Answer | Failure]:
        return result(self.service.answer("/atlas/" + replicas[0].url.rsplit("/", 1)[1], replicas, wants, wait))


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def only(got: list[Any]) -> Any:
    assert len(got) == 1, got
    assert not isinstance(got[0], Failure), got[0]
    return got[0]


def test_values_the_endpoints_told_are_answered_at_once(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    told = Stat(size=3, etag='"x"', checksums=(("adler32", "0badf00d"),))
    answer = only(s.answer([Replica("remote", "http://remote/f", told, 1)], [ADLER]))
    assert answer.values == {"adler32": "0badf00d"} and answer.job is None
    assert s.store.asked == []  # known: the database is not asked


def test_replicas_that_disagree_are_reported_once(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    one = Replica("disk", "http://disk/f", Stat(size=3, etag='"1"', checksums=(("adler32", "00000001"),)), 1)
    two = Replica("remote", "http://remote/f", Stat(size=3, etag='"2"', checksums=(("adler32", "00000002"),)), 2)
    with captured_logs() as logged:
        for _ in range(3):
            assert s.service.known("/atlas/f", [one, two]) == {"adler32": "00000001"}  # the best-ranked one's
    assert len(formats(logged, "checksum mismatch")) == 1 and s.service.mismatches == 1
    assert s.emitted == [
        (
            "checksum-mismatch",
            {
                "path": "/atlas/f",
                "scope": "atlas",
                "name": "f",
                "algorithm": "adler32",
                "values": {"disk": "00000001", "remote": "00000002"},
                "endpoints": ["disk", "remote"],
            },
        )
    ]


def test_a_value_in_the_database_is_used_and_remembered(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    replica = s.file("f")
    s.store.values[replica_key("disk", "/f", replica.stat)] = {"adler32": "12345678"}
    assert only(s.answer([replica], [ADLER])).values == {"adler32": "12345678"}
    assert only(s.answer([replica], [ADLER])).values == {"adler32": "12345678"}
    assert len(s.store.asked) == 1  # the second answer came from memory
    assert s.reactor.pool.work == []  # nothing computed


def test_a_missing_value_is_computed_once_kept_and_published(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    replica = s.file("f")
    first = only(s.answer([replica], [MD5]))
    assert first.values == {} and first.job is not None and first.retry_after >= 1
    again = only(s.answer([replica], [MD5]))
    assert again.job is first.job  # one computation for every client asking
    assert len(s.reactor.pool.work) == 1
    s.reactor.pool.run()
    expected = {"adler32": adler(DATA), "md5": hashlib.md5(DATA).hexdigest()}  # adler32 always computed along
    assert only(s.answer([replica], [MD5])).values == expected
    assert s.store.values == {replica_key("disk", "/f", replica.stat): expected}
    ((kind, payload),) = s.emitted
    assert kind == "checksum-done" and payload["checksum-adler"] == adler(DATA)
    assert payload["file-size"] == len(DATA) == payload["bytes"] and payload["stored"] == "database"
    status = s.service.to_json()
    assert status["computed"] == 1 and status["bytes_hashed"] == len(DATA) and status["recent"][0]["values"] == expected


def test_a_client_may_wait_for_the_computation(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    replica = s.file("f")
    waiting = s.answer([replica], [ADLER], wait=5)
    assert waiting == []
    s.reactor.pool.run()
    answer = only(waiting)
    assert answer.values == {"adler32": adler(DATA)} and answer.job is None


def test_a_wait_ends_at_its_limit_with_a_retry_after(tmp_path: Path) -> None:
    s = Setup(tmp_path, max_wait=3)
    replica = s.file("f")
    waiting = s.answer([replica], [ADLER], wait=30)  # capped by max_wait
    s.reactor.advance(2.9)
    assert waiting == []
    s.reactor.advance(0.2)
    answer = only(waiting)
    assert answer.values == {} and answer.job is not None and answer.retry_after >= 1


def test_no_workers_means_no_computation(tmp_path: Path) -> None:
    s = Setup(tmp_path, workers=0)
    answer = only(s.answer([s.file("f")], [ADLER]))
    assert answer == Answer({}) and s.reactor.pool.work == []


def test_files_over_the_limit_are_not_computed(tmp_path: Path) -> None:
    s = Setup(tmp_path, max_file_bytes=len(DATA) - 1)
    assert only(s.answer([s.file("f")], [ADLER])).job is None and s.reactor.pool.work == []


def test_a_full_queue_refuses_more_work(tmp_path: Path) -> None:
    s = Setup(tmp_path, workers=1, queue=1)
    running = only(s.answer([s.file("a")], [ADLER]))
    queued = only(s.answer([s.file("b")], [ADLER]))
    refused = only(s.answer([s.file("c")], [ADLER]))
    assert running.job is not None and queued.job is not None and refused.job is None
    assert s.service.refused == 1 and s.service.to_json()["queued"] == 1
    assert queued.retry_after >= running.retry_after
    s.reactor.pool.run()  # a: the worker takes b next
    assert len(s.reactor.pool.work) == 1
    s.reactor.pool.run()
    assert s.service.computed == 2


def test_a_file_that_changed_fails_and_is_not_retried_at_once(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    replica = s.file("f")
    (s.root / "f").write_bytes(DATA + b"more")  # larger than located
    with captured_logs() as logged:
        s.answer([replica], [ADLER])
        s.reactor.pool.run()
    assert s.service.failed == 1 and formats(logged, "failed: {reason}")
    assert "changed" in s.service.to_json()["recent"][0]["error"]
    assert only(s.answer([replica], [ADLER])).job is None  # not again for FAILED_TTL
    s.reactor.advance(FAILED_TTL)
    assert only(s.answer([replica], [ADLER])).job is not None


def test_an_endpoint_that_cannot_be_read_over_http_fails_the_job(tmp_path: Path) -> None:
    s = Setup(tmp_path)

    class NoUrl(FakeEndpoint):
        def url_for(self, path: str, now: float, method: str = "GET") -> str:
            return "azure-internal:" + path

    s.fed.endpoints["remote"] = NoUrl("remote")
    replica = Replica("remote", "http://remote/f", Stat(size=5, etag='"e"'), 1)
    only(s.answer([replica], [ADLER]))
    assert s.service.failed == 1
    assert "cannot read this kind of endpoint" in s.service.to_json()["recent"][0]["error"]


def test_a_database_that_does_not_open_is_reported_and_values_stay_in_memory(tmp_path: Path) -> None:
    s = Setup(tmp_path, store=MemoryStore(broken=True))
    replica = s.file("f")
    s.answer([replica], [ADLER])
    s.reactor.pool.run()
    assert s.service.to_json()["database_error"] and s.store.asked == [] and s.store.values == {}
    assert only(s.answer([replica], [ADLER])).values["adler32"] == adler(DATA)
    assert s.emitted[-1][1]["stored"] == "memory"


@pytest.mark.parametrize(("weak", "strong"), [('W/"x"', '"x"')])
def test_a_weak_etag_names_the_same_replica(weak: str, strong: str) -> None:
    assert replica_key("e", "/f", Stat(size=1, etag=weak)) == replica_key("e", "/f", Stat(size=1, etag=strong))


def test_stopping_cancels_work_and_closes_the_database(tmp_path: Path) -> None:
    s = Setup(tmp_path, workers=1)
    s.answer([s.file("a")], [ADLER])
    s.answer([s.file("b")], [ADLER])
    assert only(result(s.service.stopService())) is None
    assert s.service.to_json()["queued"] == 0


def test_workers_of_one_host_compute_a_replica_once(tmp_path: Path) -> None:
    """[server] workers: the worker that claims the replica computes it; another asked meanwhile
    answers 202 without computing, then the value from the shared database once it is stored."""
    from fedd.checksums.claims import JobClaims

    store = MemoryStore()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Setup(tmp_path / "a", store), Setup(tmp_path / "b", store)
    claims = tmp_path / "claims"
    a.service.claims = JobClaims(claims, pid=os.getpid())
    b.service.claims = JobClaims(claims, pid=os.getppid())  # another live process
    data = b"the same replica\n" * 100
    (tmp_path / "b" / "data" / "f").write_bytes(data)
    replica = a.file("f", data)
    first = only(a.answer([replica], [ADLER]))
    assert first.job is not None and len(a.reactor.pool.work) == 1
    other = only(b.answer([replica], [ADLER]))
    assert other.job is not None and other.values == {} and b.reactor.pool.work == []  # not computed twice
    waiting = b.answer([replica], [ADLER], wait=5)  # a client that waits, on the other worker
    assert waiting == []
    a.reactor.pool.run()  # worker a computes, stores, releases its claim
    assert only(a.answer([replica], [ADLER])).values == {"adler32": adler(data)}
    b.reactor.advance(0.25)
    assert only(waiting).values == {"adler32": adler(data)} and b.reactor.pool.work == []
    assert only(b.answer([replica], [ADLER])).values == {"adler32": adler(data)}
    assert list(claims.glob("*.claim")) == []


def _two_workers(tmp_path: Path, data: bytes) -> tuple[Setup, Setup, Replica, Path]:
    """Two checksum services of one host (one database, one claims directory), each with the replica."""
    from fedd.checksums.claims import JobClaims

    store = MemoryStore()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Setup(tmp_path / "a", store), Setup(tmp_path / "b", store)
    claims = tmp_path / "claims"
    a.service.claims = JobClaims(claims, pid=os.getpid())
    b.service.claims = JobClaims(claims, pid=os.getppid())  # another live process
    (tmp_path / "b" / "data" / "f").write_bytes(data)
    return a, b, a.file("f", data), claims


SHA256 = Want("repr-digest", ("sha256",))


def test_a_wait_on_another_workers_computation_of_other_algorithms_computes_them_here(tmp_path: Path) -> None:
    """Worker a computes MD5 (and adler32) for one client; worker b is asked SHA-256 with a wait
    meanwhile: a's computation ends without it, and b computes it within the same wait (was: 202
    as soon as a released its claim, the client's wait not over)."""
    data = b"other algorithms\n" * 100
    a, b, replica, claims = _two_workers(tmp_path, data)
    assert only(a.answer([replica], [MD5])).job is not None and len(a.reactor.pool.work) == 1
    waiting = b.answer([replica], [SHA256], wait=5)
    b.reactor.advance(0.25)
    assert waiting == [] and b.reactor.pool.work == []  # a computes this replica: b waits
    a.reactor.pool.run()  # a stores md5 and adler32, releases its claim
    b.reactor.advance(0.25)
    assert waiting == [] and len(b.reactor.pool.work) == 1  # b computes SHA-256 itself
    b.reactor.pool.run()
    answer = only(waiting)
    assert answer.job is None and answer.values["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer.values["md5"] == hashlib.md5(data).hexdigest()
    assert list(claims.glob("*.claim")) == []


def test_a_wait_on_another_worker_reads_the_database_again_for_what_it_knew_part_of(tmp_path: Path) -> None:
    """Worker b remembers MD5 and adler32 of a replica (read from the database); a client of b waits
    for SHA-256, which worker a computes: b reads the database again at each look and answers a's
    value without computing it (was: its remembered entry was not read again, 202 once a ended)."""
    data = b"partly known\n" * 100
    a, b, replica, _ = _two_workers(tmp_path, data)
    a.answer([replica], [MD5])
    a.reactor.pool.run()
    assert set(only(b.answer([replica], [MD5])).values) == {"md5", "adler32"}  # b remembers these
    assert only(a.answer([replica], [SHA256])).job is not None  # a claims the SHA-256 computation
    waiting = b.answer([replica], [SHA256], wait=5)
    b.reactor.advance(0.25)
    assert waiting == []
    a.reactor.pool.run()
    b.reactor.advance(0.25)
    answer = only(waiting)
    assert answer.job is None and answer.values["sha256"] == hashlib.sha256(data).hexdigest()
    assert b.reactor.pool.work == []  # not computed twice

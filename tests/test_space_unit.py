"""The quota reporter and the downtime book with a Clock (the same code runs against Ceph, Apache and a
second fedd in test_writes.py and test_space_real.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from fedd.config import Config, Downtime, EndpointConfig, SpaceConfig, parse_config
from fedd.endpoints.base import Space
from fedd.errors import BadRequest, EndpointError
from fedd.space.downtime import DowntimeBook, parse_request
from fedd.space.service import SpaceService
from fedd.workers.applied import AppliedMarks


class FakeEndpoint:
    def __init__(self, eid: str) -> None:
        self.id = eid
        self.config = EndpointConfig(id=eid, kind="dav", url="http://127.0.0.1:9", write=True)
        self.answers: list[Any] = []
        self.calls = 0

    def space(self, max_objects: int = 0) -> Deferred[Space]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return fail(answer)
        if isinstance(answer, Deferred):
            return answer
        return succeed(answer)


class ThreadlessClock(Clock):
    def getThreadPool(self) -> Any:
        raise AssertionError("no srr_file in these tests")


def reporter(interval: float = 10.0, stale_after: float = 25.0) -> tuple[SpaceService, FakeEndpoint, Clock]:
    ep = FakeEndpoint("a")
    clock = ThreadlessClock()
    config = Config(space=SpaceConfig(interval=interval, stale_after=stale_after, timeout=5.0), endpoints=(ep.config,))
    events: list[tuple[str, dict[str, Any]]] = []
    service = SpaceService(config, {"a": ep}, clock, emit=lambda t, p: events.append((t, p)))  # type: ignore[dict-item]
    service.events = events  # type: ignore[attr-defined]
    return service, ep, clock


def test_garbage_keeps_last_good_value_marked_stale() -> None:
    service, ep, clock = reporter()
    ep.answers = [
        Space(used=100, total=1000, source="rfc4331"),
        EndpointError("a", "quota PROPFIND: unreadable XML"),
        Space(used=-5, total=1000),  # absurd: refused like garbage
        EndpointError("a", "HTTP 500"),
    ]
    service.startService()
    state = service.to_json()["a"]
    assert (state["used"], state["free"], state["stale"], state["error"]) == (100, 900, False, None)
    assert service.events[-1][0] == "quota-report"  # type: ignore[attr-defined]
    clock.advance(10)
    state = service.to_json()["a"]
    assert state["used"] == 100 and "unreadable XML" in state["error"] and not state["stale"]
    clock.advance(10)
    assert "unusable measurement" in service.to_json()["a"]["error"]
    clock.advance(10)  # 30 s since the last good value > stale_after
    state = service.to_json()["a"]
    assert state["used"] == 100 and state["stale"] and state["age"] == 30
    srr = service.srr()["storageservice"]["storageshares"][0]
    assert srr["usedsize"] == 100 and srr["totalsize"] == 1000 and srr["stale"] is True
    service.stopService()


def test_reservations_count_until_next_measurement() -> None:
    service, ep, clock = reporter()
    ep.answers = [Space(used=0, total=1000), Space(used=600, total=1000)]
    service.startService()
    service.reserve("a", 300)
    service.reserve("a", 300)
    assert service.free("a") == 400 and service.used("a") == 600
    assert service.quota(["a"]) == (400, 600)
    clock.advance(10)
    assert service.free("a") == 400 and service.to_json()["a"]["reserved"] == 0
    service.stopService()


def test_slow_measurement_is_not_started_twice_and_times_out() -> None:
    service, ep, clock = reporter(interval=2.0)
    ep.answers = [Deferred(), Space(used=1, total=2)]
    service.startService()
    clock.advance(2)
    clock.advance(2)
    assert ep.calls == 1  # still running: no second listing of the same bucket
    clock.advance(1.5)  # past the 5 s timeout
    assert "Cancelled" in (service.to_json()["a"]["error"] or "") or "Timeout" in (
        service.to_json()["a"]["error"] or ""
    )
    clock.advance(2)
    assert ep.calls == 2 and service.to_json()["a"]["used"] == 1
    service.stopService()


def test_space_source_none_is_not_measured() -> None:
    cfg = parse_config(
        "[endpoint a]\nkind = dav\nurl = http://127.0.0.1:9\nspace_source = none\nquota = 2TB\nmin_free = 100G\n"
    )
    ep = cfg.endpoints[0]
    assert (ep.quota, ep.min_free, ep.space_source) == (2 * 10**12, 100 * 10**9, "none")
    fake = FakeEndpoint("a")
    fake.config = ep
    service = SpaceService(cfg, {"a": fake}, ThreadlessClock())  # type: ignore[dict-item]
    service.startService()
    assert fake.calls == 0
    service.stopService()


def test_configured_downtime_starts_and_ends_on_time() -> None:
    clock = Clock()
    clock.advance(1000)
    seen: list[frozenset[str]] = []
    book = DowntimeBook(
        {"a": (Downtime(1100, 1200, "read", "intervention"),), "b": (Downtime(1050, 1300, "write"),)},
        clock,
        on_change=seen.append,
    )
    book.startService()
    assert book.blocks("a", "read", clock.seconds()) == ""
    clock.advance(60)
    assert "planned downtime" in book.blocks("b", "write", clock.seconds())
    assert book.blocks("b", "read", clock.seconds()) == ""
    clock.advance(40.01)  # the book wakes up at the start itself
    assert "intervention" in book.blocks("a", "read", clock.seconds())
    assert seen[-1] == frozenset({"a"})
    clock.advance(100)
    assert seen[-1] == frozenset() and book.blocks("a", "read", clock.seconds()) == ""
    book.stopService()


def test_runtime_downtimes_are_shared_through_the_file(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(5000)
    path = str(tmp_path / "downtimes.json")
    one = DowntimeBook({}, clock, path=path)
    two = DowntimeBook({}, clock, path=path)
    one.startService()
    two.startService()
    declared = one.add("a", Downtime(5000, 6000, "all", "swap"))
    assert json.loads(Path(path).read_text())[0]["endpoint"] == "a"
    clock.advance(2.5)  # the other process notices the file change
    assert "swap" in two.blocks("a", "write", clock.seconds())
    assert one.remove(declared.id) and not one.remove(declared.id)
    clock.advance(2.5)
    assert two.blocks("a", "write", clock.seconds()) == ""
    Path(path).write_text("not json")
    clock.advance(2.5)  # a broken file keeps the previous list
    assert two.to_json() == []
    one.stopService()
    two.stopService()


def test_workers_changing_the_downtime_file_together_lose_no_change(tmp_path: Path) -> None:
    """Two workers (threads here, each with its own book and file descriptors) add and remove
    downtimes in the shared file at the same moments: each change re-reads the file and writes it
    whole, under a lock, so none is undone by the other's write."""
    path = str(tmp_path / "downtimes.json")
    changes = 100
    start = threading.Barrier(2)
    kept: dict[str, set[str]] = {}
    errors: list[BaseException] = []

    def worker(index: int, endpoint: str) -> None:
        clock = Clock()
        book = DowntimeBook({}, clock, path=path, marks=AppliedMarks(tmp_path, index, clock))
        book.startService()
        try:
            start.wait(10)
            ids = [book.add(endpoint, Downtime(0, 1e9, "write", f"n{i}")).id for i in range(changes)]
            for gone in ids[::2]:
                assert book.remove(gone), f"{endpoint}: {gone} vanished before its removal"
            kept[endpoint] = set(ids[1::2])
        except BaseException as exc:
            errors.append(exc)
        finally:
            book.stopService()

    threads = [threading.Thread(target=worker, args=(i, ep)) for i, ep in enumerate("ab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    stored = json.loads(Path(path).read_text())
    assert {d["id"] for d in stored} == kept["a"] | kept["b"]
    assert len(stored) == changes  # half of each worker's, none twice


@pytest.mark.parametrize(
    "body",
    [
        b"[1]",
        b'{"endpoint": "zz", "duration": 60}',
        b'{"endpoint": "a", "scope": "sometimes", "duration": 60}',
        b'{"endpoint": "a"}',
        b'{"endpoint": "a", "duration": "NaN"}',
        b'{"endpoint": "a", "start": 0, "end": 10}',
        b'{"endpoint": "a", "duration": 99999999999}',
    ],
)
def test_bad_downtime_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(body, {"a"}, 1000.0)


def test_config_downtime_syntax() -> None:
    cfg = parse_config(
        "[endpoint a]\nkind = dav\nurl = http://127.0.0.1:9\n"
        "downtime = 2026-12-01T08:00Z 2026-12-01T10:00Z write firmware upgrade\n"
    )
    d = cfg.endpoints[0].downtimes[0]
    assert (d.scope, d.reason, d.end - d.start) == ("write", "firmware upgrade", 7200)
    with pytest.raises(Exception, match="ends before it starts"):
        parse_config("[endpoint a]\nkind = dav\nurl = http://127.0.0.1:9\ndowntime = 2026-12-02 2026-12-01\n")

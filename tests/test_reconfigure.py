"""Each long-lived service's `reconfigure(new)`, in process: what a reload applies, what it says
needs a restart, and the reloader that calls them (tests/test_reload.py does the same through a
real twistd and SIGHUP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher

from fedd.config import Config, parse_config
from fedd.fleet import CLOSE_GRACE
from fedd.health.service import HealthRegistry, HealthService
from fedd.locate.cache import LocateResult
from fedd.reload import FixedAtStart, Reloader, ReloadStatus
from fedd.service import Fedd, build_service
from tests.fakes import FakeEndpoint


def conf(tmp: Path, *, endpoints: str, extra: str = "", checksums: str = "queue = 100") -> Config:
    return parse_config(
        text=f"""[server]
listen = tcp:0:interface=127.0.0.1
[events]
spool = {tmp / "spool"}
[checksums]
database = {tmp / "checksums.sqlite"}
{checksums}
{extra}
{endpoints}"""
    )


def local(tmp: Path, eid: str, *, mapping: str = "/data /", weight: int = 1) -> str:
    (tmp / eid).mkdir(exist_ok=True)
    return f"[endpoint {eid}]\nkind = local\npath = {tmp / eid}\nmap = {mapping}\nweight = {weight}\n"


@pytest.fixture
def clock() -> MemoryReactorClock:
    return MemoryReactorClock()


def build(tmp: Path, clock: MemoryReactorClock, config: Config) -> Fedd:
    return build_service(config, reactor=clock)  # built, never started: no port, no thread


def test_endpoints_added_changed_removed_reach_every_service(tmp_path: Path, clock: MemoryReactorClock) -> None:
    fedd = build(tmp_path, clock, conf(tmp_path, endpoints=local(tmp_path, "a") + local(tmp_path, "b")))
    a, b = fedd.fleet.endpoints["a"], fedd.fleet.endpoints["b"]
    new = conf(tmp_path, endpoints=local(tmp_path, "b", weight=5) + local(tmp_path, "c"))
    for reconfigure in (fedd.fleet.reconfigure, lambda n: fedd.federation.reconfigure(n, fedd.fleet.changes)):
        assert reconfigure(new) == []
    changes = fedd.fleet.changes
    assert (changes.added, changes.changed, changes.removed) == (("c",), ("b",), ("a",))
    assert set(fedd.fleet.endpoints) == {"b", "c"} and fedd.fleet.endpoints["b"] is not b
    assert fedd.federation.endpoints is fedd.fleet.endpoints  # one dict, read by everyone
    registry = fedd.federation.health
    version = registry.version
    registry.reconfigure(new)
    assert set(registry.states) == {"b", "c"} and registry.version > version
    fedd.space.reconfigure(new)
    assert set(fedd.space.measurements) == {"b", "c"}
    assert [t.endpoint for t in fedd.federation.mapped("/data/x")] == ["b", "c"]
    # the retired objects live on for requests under way, and are closed after the grace
    assert a not in fedd.fleet.endpoints.values()
    assert len(fedd.fleet._retiring) == 2
    clock.advance(CLOSE_GRACE + 1)
    assert fedd.fleet._retiring == []


def test_cached_not_found_is_dropped_only_when_the_endpoints_change(tmp_path: Path, clock: MemoryReactorClock) -> None:
    first = conf(tmp_path, endpoints=local(tmp_path, "a"))
    fedd = build(tmp_path, clock, first)
    cache = fedd.federation.locator.local

    def remember_not_found() -> None:
        cache.put("/data/x", LocateResult("/data/x", missing={"a"}), clock.seconds() + 60)

    remember_not_found()
    before = fedd.federation.generation()
    reweighted = conf(tmp_path, endpoints=local(tmp_path, "a", weight=3))
    fedd.fleet.reconfigure(reweighted)
    fedd.federation.reconfigure(reweighted, fedd.fleet.changes)
    assert cache.get("/data/x", clock.seconds()) is not None  # same endpoints, same mappings: kept
    added = conf(tmp_path, endpoints=local(tmp_path, "a", weight=3) + local(tmp_path, "b"))
    fedd.fleet.reconfigure(added)
    fedd.federation.reconfigure(added, fedd.fleet.changes)
    assert cache.get("/data/x", clock.seconds()) is None  # b may hold it
    assert fedd.federation.generation() != before  # redirect plans derived from it are dropped too


def test_health_and_space_loops_restart_on_a_new_interval(tmp_path: Path, clock: MemoryReactorClock) -> None:
    slow = conf(tmp_path, endpoints=local(tmp_path, "a"), extra="[health]\ninterval = 60\n")
    registry = HealthRegistry(["a"], slow.health, clock)
    fake = FakeEndpoint("a")
    health = HealthService(registry, {"a": fake}, clock)
    health.startService()
    assert health.interval == 60 and fake.probes == 1
    fast = conf(tmp_path, endpoints=local(tmp_path, "a"), extra="[health]\ninterval = 2\nfailures_to_offline = 7\n")
    registry.reconfigure(fast)
    assert health.reconfigure(fast) == []
    assert health.interval == 2 and registry.states["a"].failures_to_offline == 7
    clock.advance(2)
    assert fake.probes == 2  # the next round came one new interval later, not 60 s later
    health.stopService()

    fedd = build(tmp_path, clock, slow)
    space = fedd.space
    space.startService()
    first = space.interval
    spaced = conf(tmp_path, endpoints=local(tmp_path, "a"), extra="[space]\ninterval = 17\n")
    space.reconfigure(spaced)
    assert first != 17 and space.interval == 17 and space.settings.interval == 17
    space.stopService()


def test_writer_checksums_and_downtimes_take_their_sections(tmp_path: Path, clock: MemoryReactorClock) -> None:
    fedd = build(tmp_path, clock, conf(tmp_path, endpoints=local(tmp_path, "a")))
    new = conf(
        tmp_path,
        endpoints=local(tmp_path, "a") + "downtime = 2020-01-01T00:00Z 2999-01-01T00:00Z write\n",
        extra="[write]\nallow_overwrite = no\n",
        checksums="queue = 3",
    )
    assert fedd.writer.reconfigure(new) == [] and fedd.writer.config.allow_overwrite is False
    assert fedd.checksums.reconfigure(new) == [] and fedd.checksums.config.queue == 3
    assert fedd.downtimes.reconfigure(new) == []
    assert [(d["endpoint"], d["origin"]) for d in fedd.downtimes.to_json()] == [("a", "config")]
    moved = conf(tmp_path, endpoints=local(tmp_path, "a")).checksums
    other_db = parse_config(text=f"[checksums]\ndatabase = {tmp_path / 'other.sqlite'}\n" + local(tmp_path, "a"))
    assert fedd.checksums.reconfigure(other_db) == ["[checksums] database"]
    assert fedd.checksums.config.database == moved.database  # the running one stays until a restart


def test_what_is_read_once_at_start_is_named(tmp_path: Path) -> None:
    start = conf(tmp_path, endpoints=local(tmp_path, "a"))
    fixed = FixedAtStart(start)
    assert fixed.reconfigure(start) == []
    changed = parse_config(
        text=f"""[server]
listen = tcp:0:interface=127.0.0.2
[events]
spool = {tmp_path / "elsewhere"}
[locate]
memcached = 127.0.0.1:11211
[checksums]
database = {tmp_path / "checksums.sqlite"}
{local(tmp_path, "a")}"""
    )
    assert fixed.reconfigure(changed) == ["[server]", "[events]", "[locate] memcached, lru_entries"]


def test_the_reloader_calls_every_target_in_order_and_survives_one_that_fails(tmp_path: Path) -> None:
    path = tmp_path / "fedd.conf"
    path.write_text(f"[endpoint a]\nkind = local\npath = {tmp_path}\n")
    called: list[str] = []

    def first(new: Config) -> list[str]:
        called.append("first")
        return ["[server]"]

    def broken(new: Config) -> list[str]:
        called.append("broken")
        raise RuntimeError("a bug in one service")

    def last(new: Config) -> list[str]:
        called.append("last")
        return []

    status = ReloadStatus(str(path))
    events: list[LogEvent] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        assert Reloader(str(path), [first, broken, last], status).reload() is True
    finally:
        globalLogPublisher.removeObserver(observer)
    assert called == ["first", "broken", "last"]
    assert status.to_json()["reloads"] == 1 and status.needs_restart == ["[server]"]
    assert any("log_failure" in e and "a bug in one service" in str(e["log_failure"].value) for e in events)

    path.write_text("[endpoint a]\nkind = nosuchkind\n")
    assert Reloader(str(path), [last], status).reload() is False
    assert status.refused == 1 and "nosuchkind" in (status.last_error or "")
    assert called == ["first", "broken", "last"]  # a refused file reaches no service
    assert Reloader(None, [last], status).reload() is False  # the embedded demo has no file


def test_clock_is_the_only_time_source(tmp_path: Path) -> None:
    """The fleet's grace timers run on the injected clock, not the global reactor."""
    clock = Clock()
    from fedd.fleet import EndpointFleet

    config = conf(tmp_path, endpoints=local(tmp_path, "a"))
    made: list[str] = []

    def make(ep: Any, _: Config) -> Any:
        made.append(ep.id)
        return FakeEndpoint(ep.id)

    fleet = EndpointFleet(config, make, clock)
    fleet.reconfigure(conf(tmp_path, endpoints=local(tmp_path, "a", weight=2)))
    assert made == ["a", "a"] and clock.getDelayedCalls()

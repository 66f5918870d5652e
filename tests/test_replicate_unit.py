"""Replication's pure parts in process: counting on the redirect path, the window's buckets as a
Clock moves, the decision for a hot file and the choice of evictions (fedd.replicate)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from fedd.config.schema import ReplicateConfig
from fedd.replicate.counting import (
    BUCKETS,
    NO_REGION,
    ReadCounter,
    aggregate,
    bucket_of,
    first_bucket,
    hot,
    region_location,
    region_name,
)
from fedd.replicate.policy import Decision, Usage, decide, evictions, usage
from fedd.replicate.records import COPYING, DONE, EVICTED, FAILED, Record
from fedd.select.place import Placement

DESY, CERN = (53.5753, 9.8803), (46.2330, 6.0557)
SITES = {"10.0.0.1": DESY, "10.0.0.2": CERN}


def test_counting_is_one_increment_per_redirect_and_take_starts_again() -> None:
    counter = ReadCounter()
    for _ in range(3):
        counter.note(b"/a/f", "10.0.0.1", "ceph")
    counter.note(b"/a/f?x=1", "10.0.0.2", "ceph")
    counter.note(b"/a/../etc", "10.0.0.2", "ceph")
    taken = counter.take()
    assert taken[(b"/a/f", "10.0.0.1", "ceph")] == 3 and counter.pending == {} and counter.total == 5

    def path_of(raw: bytes) -> str | None:
        path = raw.partition(b"?")[0].decode()
        return None if ".." in path else path

    agg = aggregate(taken, SITES.get, path_of)
    assert agg.counts == {(region_name(DESY), "/a/f"): 3, (region_name(CERN), "/a/f"): 1}
    assert agg.read_on == {("/a/f", "ceph"): 4}


def test_counting_keeps_a_bounded_number_of_keys_between_flushes() -> None:
    counter = ReadCounter(max_pending=2)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1"):
        counter.note(b"/a/f", client, "ceph")
    assert len(counter.pending) == 2 and counter.dropped == 1 and counter.pending[(b"/a/f", "10.0.0.1", "ceph")] == 2


def test_regions_round_trip_and_unplaced_clients_are_never_hot() -> None:
    assert region_location(region_name(DESY)) == DESY
    assert region_name(None) == NO_REGION and region_location(NO_REGION) is None
    totals = {(NO_REGION, "/a"): 100, (region_name(DESY), "/b"): 5, (region_name(CERN), "/c"): 2}
    assert hot(totals, 3) == [(region_name(DESY), "/b", 5)]


def test_the_window_moves_one_bucket_at_a_time() -> None:
    clock = Clock()
    window = 60.0
    clock.advance(1000 * window)
    start = bucket_of(clock.seconds(), window)
    assert first_bucket(clock.seconds(), window) == start - BUCKETS + 1
    clock.advance(window / BUCKETS)
    assert bucket_of(clock.seconds(), window) == start + 1
    clock.advance(window)  # a whole window later, the first bucket has left it
    assert first_bucket(clock.seconds(), window) > start


def record(
    path: str, endpoint: str = "dav", state: str = DONE, size: int = 100, created: float = 0.0, last_read: float = 0.0
) -> Record:
    return Record(path, endpoint, "ceph", state, size, "0000abcd", region_name(DESY), "h1", "", created, last_read)


CONFIG = ReplicateConfig(enabled=True, paths=("/a",), threshold=3, cooldown=60, copies=2, budget=1000)
NOW = 10_000.0


def decision(config: ReplicateConfig = CONFIG, **changes: object) -> Decision:
    args: dict[str, object] = {
        "path": "/a/f",
        "region": region_name(DESY),
        "reads": 5,
        "where": DESY,
        "size": 100,
        "holders": {"ceph": CERN},
        "placement": Placement(["dav"]),
        "target_location": DESY,
        "records": [],
        "use": Usage({}, 0, 0),
        "now": NOW,
        "fuzz_km": 50.0,
    }
    args.update(changes)
    return decide(config, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "changes", "reason"),
    [
        (CONFIG, {"path": "/b/f"}, "not under a [replicate] path"),
        (CONFIG, {"holders": {}}, "no readable replica"),
        (CONFIG, {"size": None}, "announce no size"),
        (replace(CONFIG, max_size=50), {}, "outside [replicate] min_size..max_size"),
        (CONFIG, {"placement": Placement([], {"dav": "in a write downtime"})}, "dav: in a write downtime"),
        (CONFIG, {"holders": {"ceph": CERN, "dav": DESY}}, "the nearest writable endpoint, dav, holds a replica"),
        (CONFIG, {"holders": {"other": (53.6, 9.9)}}, "the replica on other is as near"),
        (CONFIG, {"records": [record("/a/f", state=COPYING)]}, "being copied to dav"),
        (CONFIG, {"records": [record("/a/f", "x", FAILED, created=NOW - 10)]}, "copy failed to x 10s ago"),
        (CONFIG, {"records": [record("/a/f", "dav", EVICTED, created=NOW - 5)]}, "evicted from dav 5s ago: cooling"),
        (replace(CONFIG, target_quota=150), {"use": Usage({"dav": 100}, 0, 0)}, "exceeds target_quota"),
        (CONFIG, {"use": Usage({}, 0, 2)}, "2 copies running (the limit"),
        (CONFIG, {"use": Usage({}, 950, 0)}, "50 B of the hourly budget left"),
    ],
)
def test_no_copy_and_why(config: ReplicateConfig, changes: dict[str, object], reason: str) -> None:
    made = decision(config, **changes)
    assert not made.copy and reason in made.reason


def test_a_hot_file_far_from_its_readers_is_copied_to_the_nearest_writable_endpoint() -> None:
    made = decision(records=[record("/a/f", "x", FAILED, created=NOW - 61)])  # the cool-down is over
    assert made.copy and made.target == "dav" and made.size == 100 and "5 reads" in made.reason


def test_usage_counts_running_copies_and_the_last_hour() -> None:
    rows = [
        record("/a/1", created=NOW - 10),
        record("/a/2", created=NOW - 4000),
        record("/a/3", state=COPYING, created=NOW),
        record("/a/4", state=FAILED, created=NOW),
    ]
    use = usage(rows, NOW)
    assert use == Usage({"dav": 300}, 200, 1)


def test_evictions_cold_first_then_least_recently_read_until_the_reserve_is_met() -> None:
    config = replace(CONFIG, cold_after=1000, reserve=250)
    rows = [
        record("/a/cold", last_read=NOW - 2000),
        record("/a/old", last_read=NOW - 500),
        record("/a/older", last_read=NOW - 600),
        record("/a/new", last_read=NOW - 1),
        record("/a/running", state=COPYING),
        record("/a/s3", endpoint="ceph", last_read=NOW - 900),
    ]
    out = evictions(config, rows, {"dav": 100, "ceph": None}, NOW)
    assert [(r.path, why.split(":")[0].split(" ")[0]) for r, why in out] == [
        ("/a/cold", "cold"),
        ("/a/older", "free"),
        ("/a/old", "free"),
    ]
    assert evictions(config, rows, {"dav": 300}, NOW - 1500) == []  # nothing cold yet, room enough


def test_evictions_bring_copies_under_target_quota() -> None:
    config = replace(CONFIG, target_quota=150)
    rows = [record("/a/1", last_read=NOW - 5), record("/a/2", last_read=NOW - 1)]
    assert [r.path for r, _ in evictions(config, rows, {}, NOW)] == ["/a/1"]


def test_turning_replication_on_or_off_asks_for_a_restart() -> None:
    from fedd.config import Config
    from fedd.reload import FixedAtStart

    assert FixedAtStart(Config()).reconfigure(Config(replicate=CONFIG)) == ["[replicate] enabled"]
    assert FixedAtStart(Config(replicate=CONFIG)).reconfigure(Config(replicate=replace(CONFIG, threshold=9))) == []


def test_an_explanation_without_its_database_is_a_503_without_traceback() -> None:
    from typing import Any

    from twisted.internet.defer import fail
    from twisted.web.test.requesthelper import DummyRequest

    from fedd.state.store import Unavailable
    from fedd.web.replication import replication_answer

    class Down:
        def explain(self, path: str) -> Any:
            return fail(Unavailable("connection refused"))

    request: Any = DummyRequest([b""])
    request.args = {b"path": [b"/a/f"]}
    request.channel = object()  # a client still connected
    replication_answer(request, Down())
    assert request.responseCode == 503 and request.finished
    assert b"cannot be read now: Unavailable: connection refused" in b"".join(request.written)


def test_a_worker_that_does_not_lead_counts_follows_and_never_copies(tmp_path: Path) -> None:
    """With [server] workers, only the leader decides and copies; the others flush their reads to the
    shared window, forget the paths copied since their last round and show the leader's decisions."""
    from typing import Any

    from twisted.internet.defer import Deferred, succeed

    from fedd.config import Config
    from fedd.replicate.service import ReplicationService
    from fedd.workers.shared import HostShare

    class Records:
        host = "h1"
        rows: list[Record] = []
        added: list[Any] = []

        def add_counts(self, counts: Any, bucket: int, first: int, now: float) -> Deferred[None]:
            self.added.append(counts)
            return succeed(None)

        def touch(self, read_on: Any, now: float) -> Deferred[None]:
            return succeed(None)

        def all(self) -> Deferred[list[Record]]:
            return succeed(list(self.rows))

        def __getattr__(self, name: str) -> Any:  # totals, claim, forget, finish: the leader's
            raise AssertionError(f"a worker that does not lead called records.{name}")

    class Geo:
        def locate(self, client: str) -> tuple[float, float] | None:
            return SITES.get(client)

    class Federation:
        geo = Geo()
        forgotten: list[str] = []

        def forget(self, path: str) -> None:
            self.forgotten.append(path)

    clock = Clock()
    clock.advance(NOW)
    fed, records = Federation(), Records()
    leader = HostShare(tmp_path, leader=True)
    follower = ReplicationService(
        Config(replicate=CONFIG),
        reactor=clock,
        federation=fed,  # type: ignore[arg-type]
        writer=None,  # type: ignore[arg-type]
        tpc=None,  # type: ignore[arg-type]
        records=records,  # type: ignore[arg-type]
        counter=ReadCounter(),
        share=HostShare(tmp_path, leader=False),
    )
    assert not follower.decides
    for _ in range(3):
        follower.counter.note(b"/a/f", "10.0.0.1", "ceph")
    published = {"hot": [[region_name(DESY), "/a/f", 7]], "decisions": [{"path": "/a/f", "action": "copy"}]}
    leader.publish("replication", published)
    records.rows = [record("/a/f")]  # the leader's copy is done
    follower.tick()
    assert records.added == [{(region_name(DESY), "/a/f"): 3}] and fed.forgotten == ["/a/f"]
    status = follower.to_json()
    assert status["hot"] == [{"region": region_name(DESY), "path": "/a/f", "reads": 7}]
    assert status["decisions"] == published["decisions"] and status["running"] == []

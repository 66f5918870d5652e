"""The federation (fedd.federation.Federation) in process: FakeEndpoints behind a real namespace,
health registry, locator and ranking, time on a Clock. The same questions against Ceph, Apache and
local endpoints through twistd: test_federation."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fedd.config import Config, parse_config
from fedd.endpoints.base import Entry, Stat, Valve
from fedd.errors import NoReplicaAvailable, NotFound
from fedd.federation import Federation, Replica
from fedd.health.service import HealthRegistry
from fedd.listings import Listing
from fedd.locate.locator import Locator
from fedd.namespace import Namespace
from fedd.select.geo import GeoLocator
from tests.fakes import FakeEndpoint
from tests.inprocess import result

# a (Geneva), b (Hamburg), c (Chicago): all map /atlas; c alone maps /cms too
CONFIG = """
[health]
interval = 45
failures_to_offline = 2

[geo]
site = 10.1.0.0/16 46.2 6.1
site = 10.2.0.0/16 53.6 10.0
site = 10.3.0.0/16 41.9 -87.6

[endpoint a]
kind = dav
url = http://a.example
map = /atlas /
lat = 46.2
lon = 6.1

[endpoint b]
kind = dav
url = http://b.example
map = /atlas /
lat = 53.6
lon = 10.0

[endpoint c]
kind = dav
url = http://c.example
map = /atlas /
map = /cms /cms
lat = 41.9
lon = -87.6
"""
GENEVA, HAMBURG, CHICAGO = "10.1.0.7", "10.2.0.7", "10.3.0.7"
F = Stat(size=10, mtime=1.0, etag='"e"')
D = Stat(is_dir=True)


class Parts:
    def __init__(self, endpoints: list[FakeEndpoint], config: Config | None = None) -> None:
        self.config = config or parse_config(CONFIG)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.endpoints = {e.id: e for e in endpoints}
        self.namespace = Namespace((ep.id, fed, epath) for ep in self.config.endpoints for fed, epath in ep.mappings)
        self.health = HealthRegistry(list(self.endpoints), self.config.health, self.clock)
        self.locator = Locator(
            clock=self.clock,
            namespace=self.namespace,
            endpoints=self.endpoints,
            health=self.health,
            config=self.config.locate,
        )
        self.fed = Federation(
            self.config,
            clock=self.clock,
            endpoints=self.endpoints,
            health=self.health,
            locator=self.locator,
            geo=GeoLocator("", self.config.geo.sites),
            namespace=self.namespace,
            instance="fedd-test",
        )

    def find(self, path: str, client: str = GENEVA) -> list[list[Replica] | Failure]:
        return result(ensureDeferred(self.fed.find(path, client)))

    def offline(self, eid: str) -> None:
        for _ in range(self.config.health.failures_to_offline):
            self.health.failure(eid, "probe refused")


def fakes(**files: dict[str, Stat]) -> list[FakeEndpoint]:
    return [FakeEndpoint(eid, dict(files.get(eid, {}))) for eid in ("a", "b", "c")]


def only(got: list[Any]) -> Any:
    assert len(got) == 1, got
    return got[0]


def failure_of(got: list[Any], kind: type[Exception]) -> Any:
    value = only(got)
    assert isinstance(value, Failure) and value.check(kind), value
    return value.value


@pytest.mark.parametrize(
    ("client", "first"),
    [(GENEVA, "a"), (HAMBURG, "b"), (CHICAGO, "c")],
)
def test_the_nearest_replica_comes_first(client: str, first: str) -> None:
    parts = Parts(fakes(a={"/f": F}, b={"/f": F}, c={"/f": F}))
    replicas = only(parts.find("/atlas/f", client))
    assert replicas[0].endpoint == first and {r.endpoint for r in replicas} <= {"a", "b", "c"}
    assert replicas[0].url == f"http://{first}.example/f" and replicas[0].priority == 1
    assert [r.priority for r in replicas] == list(range(1, len(replicas) + 1))


def test_a_mapping_decides_the_endpoint_path_and_who_is_asked() -> None:
    parts = Parts(fakes(c={"/cms/f": F}))
    replicas = only(parts.find("/cms/f"))
    assert [(r.endpoint, r.url) for r in replicas] == [("c", "http://c.example/cms/f")]
    assert parts.endpoints["a"].calls == [] and parts.endpoints["b"].calls == []


def test_not_found_only_when_every_mapped_endpoint_said_no() -> None:
    parts = Parts(fakes())
    exc = failure_of(parts.find("/atlas/nothing"), NotFound)
    assert exc.status == 404
    assert exc.not_collections == frozenset()  # FakeEndpoints do not tell collections by stat


def test_an_endpoint_that_did_not_answer_makes_it_503_with_retry_after() -> None:
    endpoints = fakes()
    endpoints[1].broken = "HEAD: HTTP 500"
    parts = Parts(endpoints)
    exc = failure_of(parts.find("/atlas/f"), NoReplicaAvailable)
    assert exc.status == 503 and exc.retry_after == 45 and exc.unreachable == ("b",)
    assert "b (HEAD: HTTP 500)" in str(exc)


def test_a_replica_on_an_offline_endpoint_is_never_a_target_and_means_503() -> None:
    parts = Parts(fakes(a={"/f": F}, b={"/f": F}))
    parts.offline("a")
    replicas = only(parts.find("/atlas/f", GENEVA))
    assert [r.endpoint for r in replicas] == ["b"]
    only_a = Parts(fakes(a={"/g": F}))
    only_a.offline("a")
    exc = failure_of(only_a.find("/atlas/g"), NoReplicaAvailable)
    assert exc.unreachable == ("a",) and "offline" in str(exc)


def test_an_endpoint_whose_last_probe_failed_goes_last() -> None:
    parts = Parts(fakes(a={"/f": F}, b={"/f": F}, c={"/f": F}))
    parts.health.failure("a", "probe timed out")  # one failure: still usable, but suspect
    replicas = only(parts.find("/atlas/f", GENEVA))
    assert replicas[0].endpoint == "b" and replicas[-1].endpoint == "a"  # Hamburg before Geneva now


def test_lookup_waits_for_every_endpoint() -> None:
    endpoints = [FakeEndpoint(eid, {"/f": F}, manual=True) for eid in ("a", "b", "c")]
    parts = Parts(endpoints)
    got = result(ensureDeferred(parts.fed.lookup("/atlas/f", GENEVA)))
    endpoints[0].answer("/f")
    endpoints[1].answer("/f")
    assert got == []
    endpoints[2].answer("/f")
    replicas, located = only(got)
    assert replicas[0].endpoint == "a" and set(located.files()) == {"a", "b", "c"}


def test_a_listing_merges_the_endpoints_and_a_collection_wins_over_a_file() -> None:
    endpoints = fakes()
    endpoints[0].dirs["/d"] = [Entry("x", F), Entry("y", F)]
    endpoints[1].dirs["/d"] = [Entry("y", D), Entry("z", F)]
    endpoints[2].broken = "PROPFIND: HTTP 502"
    parts = Parts(endpoints)
    listing = only(result(ensureDeferred(parts.fed.listdir("/atlas/d"))))
    assert isinstance(listing, Listing)
    assert [(e.name, e.stat.is_dir) for e in listing.entries] == [("x", False), ("y", True), ("z", False)]
    assert listing.failed == {"c": "PROPFIND: HTTP 502"}
    assert parts.health.states["c"].passive_failures == 1


def test_a_listing_nobody_has_is_none_unless_someone_could_not_answer() -> None:
    parts = Parts(fakes())
    assert only(result(ensureDeferred(parts.fed.listdir("/atlas/none")))) is None
    endpoints = fakes()
    endpoints[0].broken = "PROPFIND: connection refused"
    broken = Parts(endpoints)
    exc = failure_of(result(ensureDeferred(broken.fed.listdir("/atlas/none"))), NoReplicaAvailable)
    assert exc.unreachable == ("a",)


def test_the_root_and_virtual_parents_are_collections() -> None:
    parts = Parts(fakes())
    root = only(result(ensureDeferred(parts.fed.listdir("/"))))
    assert [(e.name, e.stat.is_dir) for e in root.entries] == [("atlas", True), ("cms", True)]


def test_an_offline_endpoint_is_named_missing_from_a_listing() -> None:
    endpoints = fakes()
    endpoints[1].dirs["/d"] = [Entry("y", F)]
    parts = Parts(endpoints)
    parts.offline("a")
    listing = only(result(ensureDeferred(parts.fed.listdir("/atlas/d"))))
    assert [e.name for e in listing.entries] == ["y"] and listing.failed == {"a": "offline"}


class Hanging(FakeEndpoint):
    """An endpoint whose listing never ends: its Deferred is cancelled by the idle limit."""

    def list_stream(
        self,
        path: str,
        emit: Any,
        via: tuple[str, ...] = (),
        valve: Valve | None = None,
    ) -> Deferred[bool]:
        self.calls.append("list " + path)
        return Deferred()


def test_a_streamed_listing_hands_on_each_name_once_and_cuts_a_stalled_endpoint() -> None:
    endpoints: list[FakeEndpoint] = [FakeEndpoint("a"), FakeEndpoint("b"), Hanging("c")]
    endpoints[0].dirs["/d"] = [Entry("x", F), Entry("y", F)]
    endpoints[1].dirs["/d"] = [Entry("y", D), Entry("z", F)]
    parts = Parts(endpoints)
    started: list[bool] = []
    batches: list[list[str]] = []
    got = result(
        ensureDeferred(
            parts.fed.stream_listing(
                "/atlas/d", lambda: started.append(True), lambda es: batches.append([e.name for e in es])
            )
        )
    )
    assert started == [True] and batches == [["x", "y"], ["z"]]  # y named once, by the first to name it
    assert got == []  # c still lists
    timeout = endpoints[2].config.timeout
    parts.clock.advance(timeout * 4 - 0.01)
    assert got == []
    parts.clock.advance(0.02)
    failed = only(got)
    assert failed == {"c": f"listing stalled: nothing for {timeout * 2:g}s"}
    assert parts.health.states["c"].passive_failures == 1


def test_to_json_describes_every_endpoint() -> None:
    parts = Parts(fakes())
    status = parts.fed.to_json()
    assert status["instance"] == "fedd-test"
    assert set(status["endpoints"]) == {"a", "b", "c"}
    assert status["endpoints"]["c"]["map"] == [["/atlas", "/"], ["/cms", "/cms"]]
    assert status["endpoints"]["a"]["location"] == (46.2, 6.1)

"""Locate: early answers, wait budget, coalescing, cache TTLs. Driven by a Clock, no real time."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from fedd.config import HealthConfig, LocateConfig
from fedd.endpoints.base import Stat
from fedd.errors import PathRefused
from fedd.health.service import HealthRegistry
from fedd.locate.locator import Locator
from fedd.namespace import Namespace
from tests.fakes import FakeEndpoint

F = Stat(size=10, mtime=1.0)


def make(*eps: FakeEndpoint, **cfg: float) -> tuple[Locator, Clock, HealthRegistry]:
    clock = Clock()
    endpoints = {e.id: e for e in eps}
    health = HealthRegistry(list(endpoints), HealthConfig(failures_to_offline=2), clock)
    ns = Namespace((e.id, "/atlas", "/") for e in eps)
    loc = Locator(clock=clock, namespace=ns, endpoints=endpoints, health=health, config=LocateConfig(**cfg))  # type: ignore[arg-type]
    return loc, clock, health


def results(d: object) -> list[object]:
    out: list[object] = []
    d.addBoth(out.append)  # type: ignore[attr-defined]
    return out


def test_answers_when_best_ranked_confirms_without_waiting_for_others() -> None:
    a = FakeEndpoint("a", {"/f": F}, manual=True)
    b = FakeEndpoint("b", {"/f": F}, manual=True)
    loc, _clock, _ = make(a, b)
    got = results(loc.locate("/atlas/f", ["a", "b"]))
    assert got == []
    a.answer("/f")
    assert len(got) == 1 and set(got[0].files()) == {"a"}  # type: ignore[attr-defined]
    assert not got[0].complete  # type: ignore[attr-defined]
    b.answer("/f")  # the background answer completes the cached entry
    assert set(loc.cached("/atlas/f").files()) == {"a", "b"}  # type: ignore[union-attr]


def test_waits_for_better_ranked_endpoint_when_a_worse_one_answers_first() -> None:
    a = FakeEndpoint("a", {"/f": F}, manual=True)
    b = FakeEndpoint("b", {"/f": F}, manual=True)
    loc, _, _ = make(a, b)
    got = results(loc.locate("/atlas/f", ["a", "b"]))
    b.answer("/f")
    assert got == []
    a.answer("/f")
    assert set(got[0].files()) == {"a", "b"}  # type: ignore[attr-defined]


def test_missing_on_best_falls_through_to_next() -> None:
    a = FakeEndpoint("a", {}, manual=True)
    b = FakeEndpoint("b", {"/f": F}, manual=True)
    loc, _, _ = make(a, b)
    got = results(loc.locate("/atlas/f", ["a", "b"]))
    b.answer("/f")
    assert got == []
    a.answer("/f")
    assert set(got[0].files()) == {"b"}  # type: ignore[attr-defined]


def test_hanging_endpoint_is_cut_at_the_wait_budget() -> None:
    hang = FakeEndpoint("hang", {"/f": F}, manual=True)
    ok = FakeEndpoint("ok", {"/f": F}, manual=True)
    loc, clock, health = make(hang, ok, wait_budget=2.0)
    got = results(loc.locate("/atlas/f", ["hang", "ok"]))
    ok.answer("/f")
    clock.advance(1.9)
    assert got == []
    clock.advance(0.2)
    result = got[0]
    assert set(result.files()) == {"ok"}  # type: ignore[attr-defined]
    assert "wait budget" in result.failed["hang"]  # type: ignore[attr-defined]
    assert health.states["hang"].passive_failures == 1
    assert hang.pending["/f"].called  # the hanging request was cancelled


def test_not_found_everywhere_is_answered_as_soon_as_all_said_no_and_cached_negative() -> None:
    a, b = FakeEndpoint("a"), FakeEndpoint("b")
    loc, clock, _ = make(a, b, negative_ttl=5.0, positive_ttl=100.0)
    got = results(loc.locate("/atlas/nope", ["a", "b"]))
    assert got[0].complete and not got[0].found  # type: ignore[attr-defined]
    assert loc.cached("/atlas/nope") is not None
    clock.advance(6)
    assert loc.cached("/atlas/nope") is None


def test_positive_answers_use_the_positive_ttl() -> None:
    a = FakeEndpoint("a", {"/f": F})
    loc, clock, _ = make(a, negative_ttl=5.0, positive_ttl=100.0)
    results(loc.locate("/atlas/f", ["a"]))
    clock.advance(50)
    assert loc.cached("/atlas/f") is not None
    clock.advance(51)
    assert loc.cached("/atlas/f") is None


def test_not_found_with_failures_is_not_cached() -> None:
    a, bad = FakeEndpoint("a"), FakeEndpoint("bad", broken="HTTP 500")
    loc, _, _ = make(a, bad)
    got = results(loc.locate("/atlas/f", ["a", "bad"]))
    assert got[0].failed == {"bad": "HTTP 500"}  # type: ignore[attr-defined]
    assert loc.cached("/atlas/f") is None


def test_concurrent_requests_share_one_fanout() -> None:
    a = FakeEndpoint("a", {"/f": F}, manual=True)
    loc, _, _ = make(a)
    gots = [results(loc.locate("/atlas/f", ["a"])) for _ in range(100)]
    assert a.calls == ["/f"]
    a.answer("/f")
    assert all(len(g) == 1 for g in gots)
    assert loc.fanouts == 1


def test_offline_endpoints_are_not_asked() -> None:
    a = FakeEndpoint("a", {"/f": F})
    b = FakeEndpoint("b", {"/f": F})
    loc, _, health = make(a, b)
    health.failure("b", "down")
    health.failure("b", "down")
    assert not health.usable("b")
    got = results(loc.locate("/atlas/f", ["a"]))
    assert b.calls == [] and set(got[0].files()) == {"a"}  # type: ignore[attr-defined]


def test_no_endpoint_for_path() -> None:
    a = FakeEndpoint("a")
    loc, _, _ = make(a)
    got = results(loc.locate("/elsewhere/f", []))
    assert got[0].complete and not got[0].found  # type: ignore[attr-defined]


def test_fresh_locate_asks_the_endpoints_past_the_cache_and_is_shared() -> None:
    a = FakeEndpoint("a")
    loc, _, _ = make(a, negative_ttl=30.0)
    assert not results(loc.locate("/atlas/f", ["a"]))[0].found  # type: ignore[attr-defined]
    a.files["/f"] = F  # written behind the cache's back
    assert not results(loc.locate("/atlas/f", ["a"]))[0].found  # type: ignore[attr-defined]  # cached
    got = results(loc.locate("/atlas/f", ["a"], wait_all=True, fresh=True))
    assert set(got[0].files()) == {"a"} and a.calls == ["/f", "/f"]  # type: ignore[attr-defined]
    assert set(loc.cached("/atlas/f").files()) == {"a"}  # type: ignore[union-attr]  # the cache took the news


class RefusingEndpoint(FakeEndpoint):
    """Refuses some names the way S3/DAV/local storage does (400/414/ENOTDIR): the request's fault."""

    def stat(self, path: str, via: tuple[str, ...] = ()) -> Deferred[Stat | None]:
        if path.startswith("/weird"):
            return fail(PathRefused(self.id, "HEAD: HTTP 400", suspect=path.endswith("403")))
        return super().stat(path, via)


def test_a_refused_path_is_that_endpoints_no_and_never_a_fault() -> None:
    a = RefusingEndpoint("a", {"/f": F})
    loc, _, health = make(a)
    suspects: list[str] = []
    health.suspects.append(suspects.append)
    for i in range(20):
        got = results(loc.locate(f"/atlas/weird{i}", ["a"]))
        assert got[0].complete and not got[0].found and not got[0].failed  # type: ignore[attr-defined]
        assert got[0].missing == {"a"}  # type: ignore[attr-defined]
    assert health.states["a"].passive_failures == 0 and health.states["a"].usable
    assert health.states["a"].refusals == 20
    assert suspects == []
    results(loc.locate("/atlas/weird403", ["a"]))  # 401/403 may be revoked keys: the poller looks early
    assert suspects == ["a"]


def test_endpoint_faults_are_passive_and_ask_for_a_probe() -> None:
    bad = FakeEndpoint("bad", broken="HEAD: HTTP 503")
    loc, _, health = make(bad)
    suspects: list[str] = []
    health.suspects.append(suspects.append)
    got = results(loc.locate("/atlas/f", ["bad"]))
    assert got[0].failed == {"bad": "HEAD: HTTP 503"}  # type: ignore[attr-defined]
    assert health.states["bad"].passive_failures == 1 and health.states["bad"].state != "offline"
    assert suspects == ["bad"]
    assert loc.cached("/atlas/f") is None  # "not found" with a failure is never cached


def test_offline_and_downtimed_endpoints_count_as_not_answering() -> None:
    a, b = FakeEndpoint("a", {"/f": F}), FakeEndpoint("b")
    loc, _, health = make(a, b, negative_ttl=5.0)
    for _ in range(2):
        health.failure("a", "probe refused")
    assert not health.usable("a")
    health.block_reads(frozenset({"b"}))
    got = results(loc.locate("/atlas/f", ["a", "b"]))
    assert got[0].failed == {"a": "offline", "b": "in a read downtime"}  # type: ignore[attr-defined]
    assert a.calls == [] and b.calls == []  # not asked
    assert loc.cached("/atlas/f") is None  # and the "not found" is not cached

"""Ranking is a pure function: tables of cases."""

from __future__ import annotations

from collections import Counter

import pytest

from fedd.select.rank import Candidate, distance_km, rank

GENEVA = (46.2044, 6.1432)
HAMBURG = (53.5511, 9.9937)
CHICAGO = (41.8781, -87.6298)
LYON = (45.7640, 4.8357)
TOKYO = (35.6762, 139.6503)


def c(eid: str, where: tuple[float, float] | None = None, **kw: object) -> Candidate:
    lat, lon = where if where else (None, None)
    return Candidate(eid, lat, lon, **kw)  # type: ignore[arg-type]


def test_distance() -> None:
    assert distance_km(*GENEVA, *GENEVA) == 0
    assert 850 < distance_km(*GENEVA, *HAMBURG) < 875
    assert 6900 < distance_km(*GENEVA, *CHICAGO) < 7100


@pytest.mark.parametrize(
    ("cands", "client", "expected"),
    [
        # nearest first, then by distance
        ([c("chi", CHICAGO), c("ham", HAMBURG), c("tok", TOKYO)], GENEVA, ["ham", "chi", "tok"]),
        ([c("chi", CHICAGO), c("ham", HAMBURG), c("tok", TOKYO)], TOKYO, ["tok", "ham", "chi"]),
        # offline never appears
        ([c("ham", HAMBURG, state="offline"), c("chi", CHICAGO)], GENEVA, ["chi"]),
        # online before unknown inside the same tier
        ([c("a", GENEVA, state="unknown"), c("b", LYON)], GENEVA, ["b", "a"]),
        # unlocated endpoints after located ones when the client has a location
        ([c("nowhere"), c("chi", CHICAGO)], GENEVA, ["chi", "nowhere"]),
        # a much faster endpoint in the same tier wins over a slow one
        ([c("slow", GENEVA, latency_ms=500.0), c("fast", LYON, latency_ms=5.0)], GENEVA, ["fast", "slow"]),
        # a far endpoint does not win by latency: distance tiers come first
        ([c("near", LYON, latency_ms=300.0), c("far", CHICAGO, latency_ms=1.0)], GENEVA, ["near", "far"]),
        # no client location: latency decides
        ([c("slow", GENEVA, latency_ms=500.0), c("fast", CHICAGO, latency_ms=5.0)], None, ["fast", "slow"]),
        # a fully loaded endpoint drops behind an equally fast idle one
        (
            [c("busy", GENEVA, latency_ms=5.0, load=1.0), c("idle", LYON, latency_ms=5.0, load=0.0)],
            GENEVA,
            ["idle", "busy"],
        ),
        ([], GENEVA, []),
    ],
)
def test_rank_table(cands: list[Candidate], client: tuple[float, float] | None, expected: list[str]) -> None:
    assert rank(cands, client, "/atlas/f", fuzz_km=200, latency_tolerance_ms=20) == expected


def test_fuzz_radius_makes_near_endpoints_equal_and_spreads_files() -> None:
    cands = [c("gva", GENEVA, latency_ms=10.0), c("lyo", LYON, latency_ms=12.0), c("ham", HAMBURG)]
    firsts = Counter(rank(cands, GENEVA, f"/atlas/f{i}", fuzz_km=200)[0] for i in range(2000))
    assert set(firsts) == {"gva", "lyo"}
    assert 800 < firsts["gva"] < 1200  # equal weights: about half each
    # with a zero fuzz radius the nearest always wins
    assert {rank(cands, LYON, f"/f{i}", fuzz_km=0)[0] for i in range(200)} == {"lyo"}


def test_weights_bias_the_spread() -> None:
    cands = [c("big", GENEVA, weight=3.0), c("small", LYON, weight=1.0)]
    firsts = Counter(rank(cands, GENEVA, f"/f{i}")[0] for i in range(4000))
    assert 2700 < firsts["big"] < 3300


def test_rank_is_deterministic() -> None:
    cands = [c("a", GENEVA), c("b", LYON), c("d", HAMBURG), c("e")]
    assert all(rank(cands, GENEVA, "/x") == rank(list(reversed(cands)), GENEVA, "/x") for _ in range(10))

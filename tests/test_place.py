"""Write placement is a pure function: tables of cases."""

from __future__ import annotations

from collections import Counter

import pytest

from fedd.select.place import WriteCandidate, human, place

GENEVA = (46.2044, 6.1432)
LYON = (45.7640, 4.8357)
HAMBURG = (53.5511, 9.9937)
CHICAGO = (41.8781, -87.6298)
G = 10**9


def w(eid: str, where: tuple[float, float] | None = None, **kw: object) -> WriteCandidate:
    lat, lon = where if where else (None, None)
    return WriteCandidate(eid, lat, lon, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cands", "client", "size", "order", "refused"),
    [
        # nearest first, then by distance
        ([w("chi", CHICAGO), w("ham", HAMBURG)], GENEVA, 0, ["ham", "chi"], {}),
        # below its minimum free space after the upload: refused
        ([w("ham", HAMBURG, free=5 * G, min_free=5 * G), w("chi", CHICAGO)], GENEVA, 1, ["chi"], {"ham": "free"}),
        # exactly at the minimum after the upload: still fine
        ([w("ham", HAMBURG, free=6 * G, min_free=5 * G)], GENEVA, G, ["ham"], {}),
        # the upload does not fit at all
        ([w("ham", HAMBURG, free=G), w("chi", CHICAGO, free=10 * G)], GENEVA, 2 * G, ["chi"], {"ham": "not enough"}),
        # over quota
        ([w("ham", HAMBURG, used=10 * G, quota=10 * G), w("chi", CHICAGO)], GENEVA, 1, ["chi"], {"ham": "quota"}),
        # under quota with room
        ([w("ham", HAMBURG, used=G, quota=10 * G), w("chi", CHICAGO)], GENEVA, 1, ["ham", "chi"], {}),
        # offline and blocked endpoints are refused with their reason
        (
            [w("a", GENEVA, state="offline"), w("b", GENEVA, blocked="downtime until 10:00"), w("c", CHICAGO)],
            GENEVA,
            0,
            ["c"],
            {"a": "offline", "b": "downtime"},
        ),
        # online before unknown health, even if farther
        ([w("near", GENEVA, state="unknown"), w("far", CHICAGO)], GENEVA, 0, ["far", "near"], {}),
        # endpoints without location after located ones
        ([w("nowhere"), w("chi", CHICAGO)], GENEVA, 0, ["chi", "nowhere"], {}),
        # nothing fits: empty order, every reason kept
        ([w("a", free=0), w("b", used=5, quota=5)], None, 1, [], {"a": "not enough", "b": "quota"}),
        # no candidates at all
        ([], GENEVA, 0, [], {}),
    ],
)
def test_place_table(
    cands: list[WriteCandidate],
    client: tuple[float, float] | None,
    size: int,
    order: list[str],
    refused: dict[str, str],
) -> None:
    result = place(cands, client, "/atlas/file", size)
    assert result.order == order
    assert set(result.refused) == set(refused)
    for eid, why in refused.items():
        assert why in result.refused[eid]


def test_same_path_same_endpoint() -> None:
    cands = [w("a", GENEVA, free=10 * G), w("b", LYON, free=10 * G), w("c", GENEVA, free=10 * G)]
    first = place(cands, GENEVA, "/x/1").order
    assert all(place(list(reversed(cands)), GENEVA, "/x/1").order == first for _ in range(3))


def test_spread_in_proportion_to_free_space() -> None:
    cands = [w("big", GENEVA, free=30 * G), w("small", LYON, free=10 * G)]
    firsts = Counter(place(cands, GENEVA, f"/f/{i}").order[0] for i in range(4000))
    share = firsts["big"] / 4000
    assert 0.70 < share < 0.80, firsts  # 30 / (30 + 10) = 0.75


def test_weights_multiply_free_space() -> None:
    cands = [w("a", free=10 * G, weight=3.0), w("b", free=10 * G, weight=1.0)]
    firsts = Counter(place(cands, None, f"/f/{i}").order[0] for i in range(4000))
    assert 0.70 < firsts["a"] / 4000 < 0.80, firsts


def test_unknown_free_space_counts_as_the_smallest_known() -> None:
    cands = [w("known", free=10 * G), w("unknown"), w("tiny", free=G)]
    firsts = Counter(place(cands, None, f"/f/{i}").order[0] for i in range(6000))
    # weights 10 : 1 : 1
    assert 0.78 < firsts["known"] / 6000 < 0.88, firsts
    assert abs(firsts["unknown"] - firsts["tiny"]) < 300, firsts


def test_explain_lists_every_reason() -> None:
    result = place([w("a", free=0), w("b", state="offline")], None, "/f", 10)
    assert "a: not enough free space" in result.explain()
    assert "b: offline" in result.explain()


def test_human_sizes() -> None:
    assert human(512) == "512 B"
    assert human(1_500_000) == "1.5 MB"
    assert human(2 * 10**12) == "2.0 TB"

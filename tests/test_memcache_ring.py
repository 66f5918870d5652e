"""fedd.locate.ring: memcached keys placed by consistent hashing (pure; no server needed)."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest

from fedd.locate.ring import HashRing

SERVERS = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
FOURTH = "10.0.0.4:11211"
KEYS = [f"locate:/atlas/data24/run{i // 100}/file{i}.root".encode() for i in range(10_000)]


def placement(servers: list[str]) -> dict[bytes, str]:
    ring = HashRing(servers)
    return {key: servers[ring.node(key)] for key in KEYS}


def test_adding_a_fourth_server_moves_about_a_quarter_of_the_keys_all_to_it() -> None:
    before, after = placement(SERVERS), placement([*SERVERS, FOURTH])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert 0.15 * len(KEYS) < len(moved) < 0.35 * len(KEYS)  # ideal: 1/4
    assert {after[key] for key in moved} == {FOURTH}  # no key moves between the old servers
    # what the ring replaces: crc32 % n moves three quarters of the keys
    assert sum(zlib.crc32(k) % 3 != zlib.crc32(k) % 4 for k in KEYS) > 0.7 * len(KEYS)


def test_removing_a_server_moves_only_its_keys() -> None:
    before, after = placement([*SERVERS, FOURTH]), placement(SERVERS)
    assert all(after[key] == before[key] for key in KEYS if before[key] != FOURTH)


def test_placement_is_stable_across_processes_and_server_order() -> None:
    first = placement(SERVERS)
    assert placement(list(SERVERS)) == first  # a second process with the same configuration
    assert placement(list(reversed(SERVERS))) == first  # listed in another order
    # the same in every run and Python version (BLAKE2b, not hash()); pinned, because a change of the
    # algorithm moves keys between the processes of a fleet running two fedd versions
    ring = HashRing(SERVERS)
    assert [ring.node(k) for k in (b"a", b"b", b"c", b"d", b"e", b"f")] == [2, 2, 1, 1, 0, 2]


def test_keys_spread_evenly() -> None:
    counts = Counter(placement(SERVERS).values())
    assert set(counts) == set(SERVERS)
    assert all(0.27 * len(KEYS) < n < 0.40 * len(KEYS) for n in counts.values())


def test_one_server_holds_everything_and_bad_rings_are_refused() -> None:
    ring = HashRing(["127.0.0.1:11211"])
    assert {ring.node(k) for k in KEYS[:100]} == {0}
    with pytest.raises(ValueError):
        HashRing([])
    with pytest.raises(ValueError):
        HashRing(["a:1", "a:1"])

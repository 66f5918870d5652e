"""fedd.locate.memcache in process: the connection is a MemoryReactorClock's, the server is the test
writing memcached's answers into the protocol. The same client runs against a real memcached in
test_federation (test_memcached_shares_answers_and_its_death_is_survived)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent

from fedd.locate.memcache import Memcached
from fedd.locate.ring import HashRing
from tests.inprocess import accept, captured_logs, formats, refuse, result

TIMEOUT = 0.5


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    with captured_logs() as events:
        yield events


def texts(events: list[LogEvent], word: str) -> list[str]:
    return formats(events, word)


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def cache(reactor: MemoryReactorClock) -> Iterator[Memcached]:
    m = Memcached(reactor, ["127.0.0.1:11211"], TIMEOUT)
    m.startService()
    yield m
    m.stopService()


def test_connects_to_the_configured_server(reactor: MemoryReactorClock, cache: Memcached) -> None:
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 11211)]


def test_a_lookup_while_disconnected_is_a_miss_at_once(cache: Memcached) -> None:
    got = result(cache.get(b"k"))
    assert got == [None]
    assert cache.misses == 1 and cache.hits == 0
    assert result(cache.add(b"lock", b"1", 10)) == [True]  # alone: every process wins its own lock
    assert result(cache.incr(b"n")) == [None]
    assert not cache.connected(b"k")
    assert cache.to_json()["servers"] == {"127.0.0.1:11211": "down"}


def test_hit_and_miss_over_the_wire(reactor: MemoryReactorClock, cache: Memcached) -> None:
    wire = accept(reactor)
    assert cache.connected(b"k") and cache.to_json()["servers"] == {"127.0.0.1:11211": "connected"}
    got = result(cache.get(b"k"))
    assert wire.sent() == b"get k\r\n" and got == []
    wire.answer(b"VALUE k 0 3\r\nabc\r\nEND\r\n")
    assert got == [b"abc"]
    missing = result(cache.get(b"other"))
    wire.answer(b"END\r\n")
    assert missing == [None]
    assert (cache.hits, cache.misses, cache.errors) == (1, 1, 0)


def test_a_silent_server_is_a_miss_after_the_timeout_on_the_injected_clock(
    reactor: MemoryReactorClock, cache: Memcached
) -> None:
    wire = accept(reactor)
    got = result(cache.get(b"k"))
    reactor.advance(TIMEOUT * 0.9)
    assert got == []
    reactor.advance(TIMEOUT * 0.2)
    assert got == [None] and cache.errors == 1
    assert wire.transport.disconnecting  # the connection is given up, ClientService makes another


def test_commands_on_the_wire(reactor: MemoryReactorClock, cache: Memcached) -> None:
    wire = accept(reactor)
    cache.set(b"k", b"v", 60.4)
    assert wire.sent() == b"set k 0 60 1\r\nv\r\n"
    wire.answer(b"STORED\r\n")
    cache.set(b"k", b"v", 0)
    assert wire.sent() == b""  # nothing to keep
    won = result(cache.add(b"lock", b"1", 0))
    assert wire.sent() == b"add lock 0 0 1\r\n1\r\n"  # 0: never expires
    wire.answer(b"STORED\r\n")
    lost = result(cache.add(b"lock", b"1", 5))
    wire.answer(b"NOT_STORED\r\n")
    assert won == [True] and lost == [False]
    n = result(cache.incr(b"n"))
    assert wire.sent().startswith(b"add lock 0 5 1\r\n1\r\nincr n 1\r\n")
    wire.answer(b"7\r\n")
    none = result(cache.incr(b"gone"))
    wire.answer(b"NOT_FOUND\r\n")
    assert n == [7] and none == [None]
    cache.delete(b"k")
    assert wire.sent().endswith(b"delete k\r\n")


def test_keys_are_spread_over_servers_by_the_hash_ring(reactor: MemoryReactorClock) -> None:
    servers = ["127.0.0.1:11211", "127.0.0.1:11212"]
    cache = Memcached(reactor, servers, TIMEOUT)
    cache.startService()
    try:
        wires = {reactor.tcpClients[i][1]: accept(reactor, i) for i in range(2)}
        ring = HashRing(servers)
        assert {ring.node(key) for key in (b"a", b"b", b"c", b"d")} == {0, 1}  # both servers are asked
        for key in (b"a", b"b", b"c", b"d"):
            result(cache.get(key))
            port = int(servers[ring.node(key)].rpartition(":")[2])
            assert wires[port].sent() == b"get " + key + b"\r\n"
            assert all(w.sent() == b"" for p, w in wires.items() if p != port)
    finally:
        cache.stopService()


def test_an_outage_is_logged_once_and_its_end_once(
    reactor: MemoryReactorClock, cache: Memcached, logged: list[LogEvent]
) -> None:
    for attempt in range(4):
        refuse(reactor)
        reactor.advance(60)  # past any backoff: the next attempt is made
        assert len(reactor.tcpClients) == attempt + 2
    assert len(texts(logged, "{address} unreachable")) == 1
    wire = accept(reactor)
    assert len(texts(logged, "{address} is back")) == 1
    wire.drop()
    assert not cache.connected(b"k") and result(cache.get(b"k")) == [None]
    assert len(texts(logged, "connection lost")) == 1
    refuse(reactor)
    reactor.advance(60)
    assert len(texts(logged, "{address} unreachable")) == 1 and len(texts(logged, "connection lost")) == 1
    accept(reactor)
    assert len(texts(logged, "{address} is back")) == 2 and cache.connected(b"k")


def test_backoff_grows_and_is_bounded(reactor: MemoryReactorClock, cache: Memcached) -> None:
    delays = []
    for _ in range(9):
        refuse(reactor)
        calls = reactor.getDelayedCalls()
        assert len(calls) == 1
        delays.append(calls[0].getTime() - reactor.seconds())
        reactor.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]

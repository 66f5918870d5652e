"""Cross-process invalidation (fedd.locate.invalidate) in process: two InvalidationLogs share one
in-memory memcached, each with its own LocalCache, time driven by a Clock. The real-memcached
version is test_writes' cross-process test."""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from fedd.endpoints.base import Stat
from fedd.locate.cache import LocalCache, LocateResult
from fedd.locate.invalidate import MISSING_POLLS, SEQ_KEY, SLOTS, InvalidationLog, slot_key
from fedd.locate.memcache import Memcached

INTERVAL = 0.5


class SharedMemcached:
    """memcached's get/set/add/incr semantics in a dict; `up = False` is a server that is unreachable."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.up = True

    def connected(self, key: bytes) -> bool:
        return self.up

    def get(self, key: bytes) -> Deferred[bytes | None]:
        return succeed(self.data.get(key) if self.up else None)

    def set(self, key: bytes, value: bytes, ttl: float) -> None:
        if self.up:
            self.data[key] = value

    def add(self, key: bytes, value: bytes, ttl: float) -> Deferred[bool]:
        if not self.up:
            return succeed(True)
        if key in self.data:
            return succeed(False)
        self.data[key] = value
        return succeed(True)

    def incr(self, key: bytes) -> Deferred[int | None]:
        if not self.up or key not in self.data:
            return succeed(None)
        value = int(self.data[key]) + 1
        self.data[key] = str(value).encode()
        return succeed(value)

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)


def answer(path: str) -> LocateResult:
    return LocateResult(path=path, found={"a": Stat(size=1)})


class Process:
    """One fedd process's view: its locate cache and its invalidation log."""

    def __init__(self, shared: SharedMemcached, clock: Clock) -> None:
        self.cache = LocalCache(1000)
        self.log = InvalidationLog(cast(Memcached, shared), self.cache, clock, interval=INTERVAL)
        self.clock = clock

    def cached(self, *paths: str) -> None:
        for path in paths:
            self.cache.put(path, answer(path), self.clock.seconds() + 3600)

    def has(self, path: str) -> bool:
        return self.cache.get(path, self.clock.seconds()) is not None


def two_processes() -> tuple[SharedMemcached, Clock, Process, Process]:
    shared, clock = SharedMemcached(), Clock()
    writer, reader = Process(shared, clock), Process(shared, clock)
    writer.log.startService()
    reader.log.startService()
    return shared, clock, writer, reader


def test_a_change_in_one_process_is_dropped_in_the_other_within_a_poll() -> None:
    _shared, clock, writer, reader = two_processes()
    reader.cached("/atlas/a", "/atlas/b")
    generation = reader.cache.generation
    writer.log.publish("/atlas/a")
    assert reader.has("/atlas/a")  # not before the next poll
    clock.advance(INTERVAL)
    assert not reader.has("/atlas/a") and reader.has("/atlas/b")
    assert reader.cache.generation > generation  # derived caches (redirect plans) see it
    assert writer.log.published == 1 and reader.log.applied >= 1
    assert reader.log.flushes == 0


def test_the_first_change_ever_is_followed() -> None:
    shared, clock, writer, reader = two_processes()
    assert SEQ_KEY not in shared.data and reader.log.seen == 0  # nobody wrote yet: follow from 0
    reader.cached("/x")
    writer.log.publish("/x")
    assert shared.data[SEQ_KEY] == b"1" and shared.data[slot_key(1)] == b"1 /x"
    clock.advance(INTERVAL)
    assert not reader.has("/x") and reader.log.seen == 1 and reader.log.flushes == 0


def test_more_changes_than_slots_empty_the_whole_cache() -> None:
    shared, clock, writer, reader = two_processes()
    writer.log.publish("/first")
    clock.advance(INTERVAL)
    reader.cached("/keep?", "/other")
    shared.data[SEQ_KEY] = str(1 + SLOTS + 1).encode()  # a burst the slots could not hold
    clock.advance(INTERVAL)
    assert not reader.has("/keep?") and not reader.has("/other")
    assert reader.log.flushes == 1 and reader.log.seen == SLOTS + 2


def test_a_missing_slot_is_waited_for_then_given_up() -> None:
    shared, clock, _writer, reader = two_processes()
    reader.cached("/a")
    shared.data[SEQ_KEY] = b"1"  # the writer counted, but its slot has not arrived (yet)
    for _ in range(MISSING_POLLS - 1):
        clock.advance(INTERVAL)
        assert reader.has("/a") and reader.log.seen == 0
    clock.advance(INTERVAL)
    assert not reader.has("/a") and reader.log.flushes == 1 and reader.log.seen == 1


def test_a_late_slot_is_applied_without_a_flush() -> None:
    shared, clock, _writer, reader = two_processes()
    reader.cached("/a", "/b")
    shared.data[SEQ_KEY] = b"1"
    clock.advance(INTERVAL)
    shared.data[slot_key(1)] = b"1 /a"
    clock.advance(INTERVAL)
    assert not reader.has("/a") and reader.has("/b") and reader.log.flushes == 0


def test_memcached_away_and_back_means_nothing_cached_before_is_trusted() -> None:
    shared, clock, writer, reader = two_processes()
    reader.cached("/a")
    shared.up = False
    clock.advance(INTERVAL)
    assert reader.log.seen is None
    writer.log.publish("/a")  # lost: memcached is down (the others fall back on their TTLs)
    assert writer.log.published == 0
    shared.up = True
    clock.advance(INTERVAL)
    assert not reader.has("/a") and reader.log.flushes == 1


def test_a_restarted_memcached_is_a_new_starting_point() -> None:
    shared, clock, writer, reader = two_processes()
    for path in ("/1", "/2", "/3"):
        writer.log.publish(path)
    clock.advance(INTERVAL)
    assert reader.log.seen == 3
    reader.cached("/a")
    shared.data.clear()  # memcached restarted: the sequence starts again
    writer.log.publish("/b")
    clock.advance(INTERVAL)
    assert not reader.has("/a") and reader.log.flushes == 1 and reader.log.seen == 1


def test_a_log_lost_without_a_new_change_is_a_new_starting_point_too() -> None:
    shared, clock, writer, reader = two_processes()
    writer.log.publish("/1")
    clock.advance(INTERVAL)
    reader.cached("/a")
    shared.data.clear()  # memcached restarted between two polls; nobody wrote since
    clock.advance(INTERVAL)
    assert not reader.has("/a") and reader.log.flushes == 1 and reader.log.seen == 0
    reader.cached("/a")
    clock.advance(INTERVAL * 3)  # still nobody writing: nothing more to drop
    assert reader.has("/a") and reader.log.flushes == 1


def test_a_process_starting_with_an_empty_cache_does_not_flush() -> None:
    shared, clock = SharedMemcached(), Clock()
    shared.data[SEQ_KEY] = b"41"
    late = Process(shared, clock)
    late.log.startService()
    assert late.log.seen == 41 and late.log.flushes == 0
    assert late.log.to_json() == {"seen": 41, "published": 0, "applied": 0, "flushes": 0}


def test_garbage_in_the_sequence_is_ignored_and_polling_goes_on() -> None:
    shared, clock, _writer, reader = two_processes()
    reader.cached("/a")
    shared.data[SEQ_KEY] = b"not a number"
    clock.advance(INTERVAL)
    assert reader.has("/a") and reader.log.seen == 0
    shared.data[SEQ_KEY] = b"1"
    shared.data[slot_key(1)] = b"1 /a"
    clock.advance(INTERVAL)
    assert not reader.has("/a")


def test_stopping_stops_the_polls() -> None:
    _shared, clock, writer, reader = two_processes()
    reader.log.stopService()
    reader.cached("/a")
    writer.log.publish("/a")
    clock.advance(INTERVAL * 4)
    assert reader.has("/a")
    assert len(clock.getDelayedCalls()) == 1  # the writer's loop only

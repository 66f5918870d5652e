"""Events: envelope, ids and routing keys (pure), the journal, the SQLite outbox's order, shedding
and notice slot, and the events service's durable emit (in process, with a Clock and a fake sink;
tests/test_events_rabbitmq.py and tests/test_events_durable.py run the real broker)."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher

from fedd.config import EventsConfig
from fedd.events.journal import LENGTH, SEGMENT_BYTES, Journal, decode, encode, read_segments
from fedd.events.model import Event, EventIds, envelope, routing_key
from fedd.events.outbox import Outbox, encode_all
from fedd.events.service import EventsService
from tests import reactor


def test_envelope_is_hermes_shaped_with_an_id() -> None:
    body = json.loads(envelope("0123", "get-redirect", {"path": "/a", "n": 1}, 1700000000.25))
    assert body == {
        "id": "0123",
        "event_type": "get-redirect",
        "payload": {"path": "/a", "n": 1},
        "created_at": "2023-11-14 22:13:20.250000",
    }


@pytest.mark.parametrize(
    ("prefix", "kind", "key"),
    [
        ("fedd", "transfer-done", "fedd.transfer.done"),
        ("", "get-redirect", "get.redirect"),
        ("site.x", "endpoint-offline", "site.x.endpoint.offline"),
    ],
)
def test_routing_keys(prefix: str, kind: str, key: str) -> None:
    assert routing_key(prefix, kind) == key


def test_event_ids_are_unique_across_processes_and_restarts() -> None:
    first, second = EventIds(1), EventIds(2)
    ids = [first() for _ in range(1000)] + [second() for _ in range(1000)]
    assert len(set(ids)) == 2000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert EventIds(2**64 + 5)() == EventIds(5)()  # the seed is 64 bits


def test_event_ids_count_from_one_in_hex_past_the_table() -> None:
    ids = EventIds(0xABC)
    got = [ids() for _ in range(70_000)]  # the last two digits from a table, the rest once per 256
    assert got == [f"{0xABC:016x}{n:016x}" for n in range(1, 70_001)]


def rows(n: int, start: int = 0) -> list[tuple[str, str, bytes]]:
    return [(f"id{i}", "k", b"%d" % i) for i in range(start, start + n)]


def test_outbox_keeps_order_across_reopen(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 100)
    assert reactor.call(box.open) == 0
    assert reactor.call(box.add, rows(5)) == (5, 0)
    reactor.call(box.close)
    again = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 100)
    assert reactor.call(again.open) == 5
    got = reactor.call(again.peek, 3)
    assert [e for _, e in got] == [("id0", "k", b"0"), ("id1", "k", b"1"), ("id2", "k", b"2")]
    assert reactor.call(again.remove, got[-1][0]) == 2
    assert [b for _, (_, _, b) in reactor.call(again.peek, 10)] == [b"3", b"4"]
    reactor.call(again.close)


def test_outbox_drop_oldest(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 5, "drop-oldest")
    reactor.call(box.open)
    reactor.call(box.add, rows(4))
    assert reactor.call(box.add, rows(3, 4)) == (5, 2)
    assert [b for _, (_, _, b) in reactor.call(box.peek, 10)] == [b"2", b"3", b"4", b"5", b"6"]
    assert reactor.call(box.add, rows(12, 100)) == (5, 12)  # 5 old ones + 7 of the batch
    assert [b for _, (_, _, b) in reactor.call(box.peek, 10)] == [b"107", b"108", b"109", b"110", b"111"]
    reactor.call(box.close)


def test_outbox_drop_newest(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 5, "drop-newest")
    reactor.call(box.open)
    reactor.call(box.add, rows(4))
    assert reactor.call(box.add, rows(3, 4)) == (5, 2)
    assert [b for _, (_, _, b) in reactor.call(box.peek, 10)] == [b"0", b"1", b"2", b"3", b"4"]
    reactor.call(box.close)


def test_unknown_policy_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 5, "drop-random")


def test_outbox_written_before_ids_gets_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, routing_key TEXT NOT NULL, body BLOB NOT NULL)"
    )
    db.executemany("INSERT INTO outbox (routing_key, body) VALUES (?, ?)", [("k", b'{"a":1}'), ("k", b'{"a":2}')])
    db.commit()
    db.close()
    box = Outbox(reactor.the_reactor(), str(path), 10)
    assert reactor.call(box.open) == 2
    first = reactor.call(box.peek, 10)
    assert reactor.call(box.peek, 10) == first  # the same id on every resend
    assert len({e[0] for _, e in first}) == 2
    assert reactor.call(box.add, rows(1)) == (3, 0)
    assert reactor.call(box.peek, 10)[-1][1] == ("id0", "k", b"0")
    reactor.call(box.close)


def test_notice_slot_is_outside_the_capacity(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 2)
    reactor.call(box.open)
    assert reactor.call(box.add, rows(2)) == (2, 0)
    reactor.call(box.put_notice, (("n1", "k", b"{}"), 7))
    reactor.call(box.put_notice, (("n2", "k", b"{}"), 9))  # replaces the unsent one
    assert reactor.call(box.add, rows(1, 2)) == (2, 1)  # the notice takes no room and is never shed
    reactor.call(box.clear_notice, "n1")  # confirmed an older notice: the newer one stays
    reactor.call(box.close)
    again = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 2)
    reactor.call(again.open)
    assert again.notice == (("n2", "k", b"{}"), 9)
    reactor.call(again.clear_notice, "n2")
    reactor.call(again.close)
    third = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 2)
    reactor.call(third.open)
    assert third.notice is None
    reactor.call(third.close)


def test_journal_decode_skips_torn_and_broken_records() -> None:
    raw = ("a1", "get-redirect", {"x": 1, "y": [None, 2.5, "é"]}, 1700000000.25)
    good = encode(raw)
    garbage = LENGTH.pack(4, 0) + b"junk"
    torn = good[: len(good) - 3]  # the process died in the middle of the copy
    assert decode(good + garbage + good + torn + b"\0" * 100) == ([raw, raw], 2)
    assert decode(good + b"\0" * 10) == ([raw], 0)


def test_journal_keeps_what_only_json_can_say() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)  # marshal cannot, JSON writes str(): the journal stores that
    [(_, _, payload, *_)], bad = decode(encode(("a1", "quota-report", {"at": when}, 1.0)))
    assert payload == {"at": str(when)} and bad == 0
    loop: dict[str, Any] = {"at": when}
    loop["self"] = loop  # neither marshal (the datetime) nor JSON (the cycle): the emitting code's bug
    with pytest.raises(ValueError):
        encode(("a2", "quota-report", loop, 1.0))


def test_journal_marks_what_is_stored_and_only_dead_segments_are_leftovers(tmp_path: Path) -> None:
    clock = Clock()
    base = str(tmp_path / "o.sqlite")
    journal = Journal(base, clock)
    assert journal.mark() == []  # nothing written: nothing to store
    journal.append(("a1", "t", {}, 1.0))
    journal.append(("a2", "t", {}, 1.0))
    [(segment, end)] = journal.mark()
    assert read_segments([segment.path]) == ([("a1", "t", {}, 1.0), ("a2", "t", {}, 1.0)], 0)  # in the file already
    journal.stored([(segment, end)])
    journal.append(("a3", "t", {}, 1.0))
    assert read_segments([segment.path]) == ([("a3", "t", {}, 1.0)], 0)  # what is stored is not replayed
    other = Journal(base, clock)  # a second process sharing the outbox: the segment is locked
    assert other.leftovers() == []
    journal.close(everything_stored=False)  # its writer dies with a3 unstored
    [found] = other.leftovers()
    assert found.path == segment.path and read_segments([found.path]) == ([("a3", "t", {}, 1.0)], 0)
    Journal.remove(found)
    assert list(tmp_path.iterdir()) == []


def test_journal_opens_another_segment_when_one_is_full(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "o.sqlite"), Clock())
    body = {"x": "x" * (SEGMENT_BYTES // 4)}  # three records to a segment
    events = [(f"id{i}", "t", body, 1.0) for i in range(7)]
    for event in events[:2]:
        journal.append(event)
    first = journal.mark()
    for event in events[2:]:
        journal.append(event)
    second = journal.mark()
    paths = sorted({s.path for s, _ in first + second})
    assert len(paths) == 3 and read_segments(paths) == (events, 0)
    journal.stored(first)
    assert read_segments(paths) == (events[2:], 0)
    journal.stored(second)  # of the two full segments one is gone, one the spare; the current one stays
    assert [p for p in paths if os.path.exists(p)] == [paths[0], paths[2]]
    assert read_segments(paths[:1]) == ([], 0)  # the spare replays nothing
    journal.append(("big", "t", {"y": "y" * SEGMENT_BYTES}, 1.0))  # larger than a segment: one of its own
    big = journal.mark()
    assert [e[0] for e in read_segments(sorted({s.path for s, _ in big}))[0]] == ["big"]
    journal.stored(big)
    journal.close(everything_stored=True)
    assert list(tmp_path.iterdir()) == []


def test_a_segment_stored_to_its_end_is_reused_under_a_later_name(tmp_path: Path) -> None:
    clock = Clock()
    base = str(tmp_path / "o.sqlite")
    journal = Journal(base, clock)
    body = {"x": "x" * (SEGMENT_BYTES // 3)}  # two records to a segment
    journal.append(("a1", "t", body, 1.0))
    journal.append(("a2", "t", body, 1.0))
    journal.append(("a3", "t", body, 1.0))  # a second segment
    first = journal.mark()
    journal.stored(first)  # the first one is stored to its end: the spare
    [spare] = [s for s, _ in first if s.full]
    spare_map = spare.map
    journal.append(("a4", "t", body, 1.0))
    journal.append(("a5", "t", body, 1.0))  # the second is full: the spare becomes the third
    second = journal.mark()
    third = second[-1][0]
    assert third.map is spare_map and third.path != spare.path and not os.path.exists(spare.path)
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == os.path.basename(third.path)  # the newest name
    assert read_segments([third.path]) == ([("a5", "t", body, 1.0)], 0)  # no record of its first use
    journal.stored(first)  # a stale mark of the old name does nothing
    assert read_segments([third.path]) == ([("a5", "t", body, 1.0)], 0)
    for segment, _ in second:  # killed with a4, a5 unstored: its locks go
        Journal.release(segment)
    journal.close(everything_stored=False)
    other = Journal(base, clock)
    found = other.leftovers()
    assert read_segments([s.path for s in found]) == ([("a4", "t", body, 1.0), ("a5", "t", body, 1.0)], 0)
    for segment in found:
        Journal.remove(segment)
    assert list(tmp_path.iterdir()) == []


class FakeSink:
    """An in-memory spool: what a SpoolSink would have written."""

    connected = True
    last_error = ""

    def __init__(self) -> None:
        self.written: list[Event] = []

    def describe(self) -> str:
        return "fake"

    def publish(self, events: list[Event]) -> Deferred[None]:
        self.written += events
        return succeed(None)

    def replay(self, paths: list[str], prefix: str) -> Deferred[tuple[int, int]]:
        raws, bad = read_segments(paths)
        events, _ = encode_all(raws, prefix)
        self.written += events
        return succeed((len(events), bad))


def service(tmp_path: Path, clock: Clock, sink: FakeSink) -> EventsService:
    config = EventsConfig(spool=str(tmp_path / "spool.jsonl"), flush_interval=0.05)
    return EventsService(config, clock=clock, outbox=None, sink=sink)


def journal_lines(tmp_path: Path) -> list[str]:
    """The ids of the unstored events in the journal."""
    raws, _ = read_segments([str(p) for p in sorted(tmp_path.glob("spool.jsonl.journal.*"))])
    return [r[0] for r in raws]


def test_emit_is_on_disk_before_it_returns_and_a_killed_run_is_replayed(tmp_path: Path) -> None:
    clock, sink = Clock(), FakeSink()
    events = service(tmp_path, clock, sink)
    events.startService()
    events.emit("get-redirect", {"path": "/a"})
    assert len(journal_lines(tmp_path)) == 1 and sink.written == []  # on disk, not yet delivered
    clock.advance(0.05)
    assert [json.loads(b)["payload"] for _, _, b in sink.written] == [{"path": "/a"}]
    assert journal_lines(tmp_path) == []  # stored: nothing left to replay
    events.emit("get-redirect", {"path": "/b"})
    events.emit("get-redirect", {"path": "/c"})
    killed = [e[0] for e in events._batch]
    events.journal.close(everything_stored=False)  # the process dies here: no flush, its lock goes with it
    again_sink = FakeSink()
    again = service(tmp_path, Clock(), again_sink)
    again.startService()
    assert [e[0] for e in again_sink.written] == killed  # same ids, in order
    assert [json.loads(b)["id"] for _, _, b in again_sink.written] == killed
    assert journal_lines(tmp_path) == []
    again.stopService()


class FailingSink(FakeSink):
    """A spool on a full disk, until `fail` is cleared."""

    fail = True

    def publish(self, events: list[Event]) -> Deferred[None]:
        if self.fail:
            return fail(OSError(28, "No space left on device"))
        return super().publish(events)


def test_drops_are_reported_once_per_interval_and_counted_once(tmp_path: Path) -> None:
    clock, sink = Clock(), FailingSink()
    config = EventsConfig(
        spool=str(tmp_path / "spool.jsonl"), flush_interval=0.05, outbox_max_events=3, drop_report_interval=60
    )
    events = EventsService(config, clock=clock, outbox=None, sink=sink)
    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    try:
        events.startService()
        for i in range(200):  # 10 s of redirects while the spool refuses every write
            events.emit("get-redirect", {"i": i})
            clock.advance(0.05)
        reports = [e for e in logged if "events dropped" in e.get("log_format", "")]
        assert len(reports) == 1 and events.dropped >= 190  # not one line per flush
        store_errors = [e for e in logged if "cannot store events" in e.get("log_format", "")]
        assert len(store_errors) == 1  # logged when it starts failing, not on every retry
        clock.advance(60)
        assert len([e for e in logged if "events dropped" in e.get("log_format", "")]) == 2
        sink.fail = False
        clock.advance(config.flush_interval + 5.0)
        notices = [json.loads(b)["payload"] for _, k, b in sink.written if k == "fedd.events.dropped"]
        assert len(notices) == 2 and sum(n["dropped"] for n in notices) == events.dropped
        redirects = [json.loads(b)["payload"]["i"] for _, k, b in sink.written if k == "fedd.get.redirect"]
        assert len(redirects) + events.dropped == 200 and redirects == sorted(redirects)
        assert journal_lines(tmp_path) == []
        assert "Traceback" not in "".join(str(e) for e in logged)
    finally:
        globalLogPublisher.removeObserver(observer)
        events.stopService()


def test_a_journal_the_disk_refuses_is_counted_and_events_still_go_out(tmp_path: Path) -> None:
    clock, sink = Clock(), FakeSink()
    config = EventsConfig(spool=str(tmp_path / "spool.jsonl"), flush_interval=0.05, drop_report_interval=60)
    journal = Journal(str(tmp_path / "missing" / "o"), clock)  # a directory that is not there: every open fails
    events = EventsService(config, clock=clock, outbox=None, sink=sink, journal=journal)
    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    try:
        events.startService()
        for i in range(30):
            events.emit("get-redirect", {"i": i})
            clock.advance(0.1)
        assert [json.loads(b)["payload"]["i"] for _, _, b in sink.written] == list(range(30))
        assert events.journal_errors == 30
        assert len([e for e in logged if "not writable" in e.get("log_format", "")]) == 1
    finally:
        globalLogPublisher.removeObserver(observer)
        events.stopService()

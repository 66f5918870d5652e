"""The events service with an outbox in front of a broker, in process: an in-memory outbox and sink,
time driven by a Clock. The SQLite outbox itself is tested in test_events_unit, the whole path against
RabbitMQ in test_events_rabbitmq and test_events_durable."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from fedd.config import EventsConfig
from fedd.events.model import Event
from fedd.events.outbox import Notice, Outbox, Row
from fedd.events.service import EventsService
from fedd.events.sinks import NotConnected
from tests.inprocess import captured_logs, formats, result

FLUSH = 0.05
IDLE = 1.0


class MemoryOutbox:
    """The Outbox's interface over a list; `max_events` sheds the oldest like drop-oldest."""

    def __init__(self, max_events: int = 1000) -> None:
        self.rows: list[Row] = []
        self.next_id = 1
        self.max_events = max_events
        self.notice: Notice | None = None
        self.opened = self.closed = False
        self.fail_remove = 0

    def open(self) -> Deferred[int]:
        self.opened = True
        return succeed(len(self.rows))

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def add(self, events: list[Event]) -> Deferred[tuple[int, int]]:
        for event in events:
            self.rows.append((self.next_id, event))
            self.next_id += 1
        dropped = max(0, len(self.rows) - self.max_events)
        del self.rows[:dropped]
        return succeed((len(self.rows), dropped))

    def peek(self, limit: int, after: int = 0) -> Deferred[list[Row]]:
        return succeed([row for row in self.rows if row[0] > after][:limit])

    def remove(self, up_to: int) -> Deferred[int]:
        if self.fail_remove:
            self.fail_remove -= 1
            return fail(OSError("database is locked"))
        self.rows = [row for row in self.rows if row[0] > up_to]
        return succeed(len(self.rows))

    def put_notice(self, notice: Notice) -> Deferred[None]:
        self.notice = notice
        return succeed(None)

    def clear_notice(self, event_id: str) -> Deferred[None]:
        if self.notice is not None and self.notice[0][0] == event_id:
            self.notice = None
        return succeed(None)


class Broker:
    """A sink that confirms at once, refuses while `down`, and keeps what it confirmed."""

    def __init__(self) -> None:
        self.connected = True
        self.down = False
        self.confirmed: list[Event] = []
        self.attempts = 0
        self.last_error = ""

    def describe(self) -> str:
        return "broker in memory"

    def publish(self, events: list[Event]) -> Deferred[None]:
        self.attempts += 1
        if self.down:
            return fail(NotConnected("broker did not confirm"))
        self.confirmed += events
        return succeed(None)

    def payloads(self, key: str = "fedd.get.redirect") -> list[Any]:
        return [json.loads(body)["payload"] for _, k, body in self.confirmed if k == key]


def make(tmp_path: Path, outbox: MemoryOutbox, broker: Broker, **settings: Any) -> tuple[EventsService, Clock]:
    clock = Clock()
    config = EventsConfig(outbox=str(tmp_path / "outbox.sqlite"), flush_interval=FLUSH, idle_interval=IDLE, **settings)
    events = EventsService(config, clock=clock, outbox=cast(Outbox, outbox), sink=broker, rng=random.Random(7))
    events.startService()
    return events, clock


def test_events_go_through_the_outbox_to_the_broker_and_leave_it_once_confirmed(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    events, clock = make(tmp_path, outbox, broker)
    assert outbox.opened
    for i in range(3):
        events.emit("get-redirect", {"i": i})
    assert outbox.rows == [] and broker.confirmed == []  # in the journal until the flush
    clock.advance(FLUSH)
    assert broker.payloads() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert outbox.rows == [] and events.sent == 3 and events.depth == 0
    status = events.to_json()
    assert status["emitted"] == 3 and status["sent"] == 3 and status["connected"] is True
    assert status["sink"] == "broker in memory"
    result(events.stopService())
    assert outbox.closed


def test_a_broker_that_is_not_connected_is_not_asked_and_the_outbox_keeps_the_events(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    broker.connected = False
    events, clock = make(tmp_path, outbox, broker)
    events.emit("put-redirect", {"path": "/a"})
    clock.advance(FLUSH)
    clock.advance(IDLE * 5)
    assert broker.attempts == 0 and len(outbox.rows) == 1 and events.depth == 1
    broker.connected = True
    clock.advance(IDLE)  # the loop looks again every idle_interval
    assert broker.payloads("fedd.put.redirect") == [{"path": "/a"}] and outbox.rows == []
    result(events.stopService())


def test_refused_publishes_back_off_and_are_sent_again_in_order_with_the_same_ids(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    events, clock = make(tmp_path, outbox, broker)
    broker.down = True
    for i in range(5):
        events.emit("get-redirect", {"i": i})
    clock.advance(FLUSH)
    ids = [event[0] for _, event in outbox.rows]
    attempts = []
    for _ in range(6):  # backoff 0.5, 1, 2, 4, 8 s: the attempts thin out
        clock.advance(1.0)
        attempts.append(broker.attempts)
    assert attempts == [2, 3, 3, 4, 4, 4] and events.failed == 4
    assert events.to_json()["last_error"].endswith("broker did not confirm")
    broker.down = False
    clock.advance(8.0)
    assert broker.payloads() == [{"i": i} for i in range(5)]
    assert [event[0] for event in broker.confirmed] == ids and outbox.rows == []
    clock.advance(FLUSH)  # back at the first step of the backoff after a success
    events.emit("get-redirect", {"i": 5})
    broker.down = True
    clock.advance(FLUSH + IDLE)
    broker.down = False
    before = broker.attempts
    clock.advance(0.5)
    assert broker.attempts == before + 1 and broker.payloads()[-1] == {"i": 5}
    result(events.stopService())


def test_events_confirmed_but_not_removed_are_sent_again_under_the_same_id(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    outbox.fail_remove = 1
    with captured_logs() as logged:
        events, clock = make(tmp_path, outbox, broker)
        events.emit("deletion-done", {"path": "/x"})
        clock.advance(FLUSH)
        clock.advance(IDLE)
    first, again = broker.confirmed
    assert first == again  # at least once: consumers drop the second by its id
    assert outbox.rows == [] and formats(logged, "outbox delete failed")
    result(events.stopService())


def test_a_full_outbox_is_reported_by_one_notice_sent_before_the_events(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(max_events=3), Broker()
    broker.connected = False
    events, clock = make(tmp_path, outbox, broker, outbox_max_events=3, drop_report_interval=60)
    with captured_logs() as logged:
        for i in range(10):
            events.emit("get-redirect", {"i": i})
        clock.advance(FLUSH)
        clock.advance(0)  # the report is due at once
    assert events.dropped == 7 and len(formats(logged, "events dropped")) == 1
    assert outbox.notice is not None and outbox.notice[1] == 7
    broker.connected = True
    clock.advance(IDLE)
    keys = [key for _, key, _ in broker.confirmed]
    assert keys[0] == "fedd.events.dropped" and keys[1:] == ["fedd.get.redirect"] * 3
    notice = json.loads(broker.confirmed[0][2])["payload"]
    assert notice["dropped"] == 7 and notice["policy"] == "drop-oldest" and notice["outbox_max"] == 3
    assert broker.payloads() == [{"i": 7}, {"i": 8}, {"i": 9}] and outbox.notice is None
    result(events.stopService())


def test_a_notice_left_by_the_previous_run_is_sent_first(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    old: Event = ("id-1", "fedd.events.dropped", b'{"id":"id-1","payload":{"dropped":4}}')
    outbox.notice = (old, 4)
    outbox.add([("id-2", "fedd.get.redirect", b'{"id":"id-2","payload":{}}')])
    events, _ = make(tmp_path, outbox, broker)
    assert [event[0] for event in broker.confirmed] == ["id-1", "id-2"]
    assert outbox.notice is None and events.sent == 2
    result(events.stopService())


def test_stopping_stores_what_was_emitted_and_closes_the_outbox(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    broker.connected = False
    events, clock = make(tmp_path, outbox, broker)
    events.emit("transfer-done", {"path": "/t"})
    stopped = result(events.stopService())
    assert stopped == [None]
    assert [key for _, (_, key, _) in outbox.rows] == ["fedd.transfer.done"] and outbox.closed
    assert list(tmp_path.glob("outbox.sqlite.journal.*")) == []  # stored: nothing to replay
    assert clock.getDelayedCalls() == []


def test_types_not_enabled_are_not_emitted_and_redirects_are_sampled(tmp_path: Path) -> None:
    outbox, broker = MemoryOutbox(), Broker()
    events, clock = make(tmp_path, outbox, broker, types=("get-redirect", "put-redirect"), get_redirect_sample=0.25)
    for i in range(400):
        events.emit("get-redirect", {"i": i})
        events.emit("put-redirect", {"i": i})
        events.emit("deletion-done", {"i": i})
    clock.advance(FLUSH)
    got = len(broker.payloads())
    assert 60 < got < 140 and events.sampled_out == 400 - got
    assert len(broker.payloads("fedd.put.redirect")) == 400
    assert broker.payloads("fedd.deletion.done") == []
    result(events.stopService())

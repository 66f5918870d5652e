"""Events published without the outbox while it is empty (EventsService(direct=True)), and the
publisher-confirm counting of fedd.events.amqp_frames.Confirms; in process. The real broker:
tests/test_events_rabbitmq.py and tests/test_events_durable.py (fedd runs with direct=True)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fedd.config import EventsConfig
from fedd.events.amqp_frames import Confirms, Nacked
from fedd.events.journal import read_segments
from fedd.events.model import Event
from fedd.events.outbox import Outbox
from fedd.events.service import BATCH, WINDOW, EventsService
from fedd.events.sinks import NotConnected
from tests.inprocess import result
from tests.test_events_service_inprocess import FLUSH, IDLE, Broker, MemoryOutbox


class HoldingBroker(Broker):
    """Confirms a batch only when the test fires its Deferred in `held`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[None]] = []

    def publish(self, events: list[Event]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.addCallback(lambda _: self.confirmed.extend(events))
        self.held.append(d)
        return d


class CountingOutbox(MemoryOutbox):
    def __init__(self) -> None:
        super().__init__(max_events=10 * BATCH)
        self.added: list[Event] = []

    def add(self, events: list[Event]) -> Deferred[tuple[int, int]]:
        self.added += events
        return super().add(events)


def make(tmp_path: Path, outbox: MemoryOutbox, broker: Broker) -> tuple[EventsService, Clock]:
    clock = Clock()
    config = EventsConfig(outbox=str(tmp_path / "outbox.sqlite"), flush_interval=FLUSH, idle_interval=IDLE)
    events = EventsService(
        config, clock=clock, outbox=cast(Outbox, outbox), sink=broker, rng=random.Random(7), direct=True
    )
    events.startService()
    return events, clock


def journal_ids(tmp_path: Path) -> list[str]:
    raws, _ = read_segments([str(p) for p in sorted(tmp_path.glob("outbox.sqlite.journal.*"))])
    return [r[0] for r in raws]


def test_with_an_empty_outbox_a_flush_publishes_itself_and_the_journal_waits_for_the_confirm(tmp_path: Path) -> None:
    outbox, broker = CountingOutbox(), HoldingBroker()
    events, clock = make(tmp_path, outbox, broker)
    for i in range(3):
        events.emit("get-redirect", {"i": i})
    ids = journal_ids(tmp_path)
    clock.advance(FLUSH)
    assert len(broker.held) == 1 and journal_ids(tmp_path) == ids  # published, not confirmed: still in the journal
    events.emit("get-redirect", {"i": 3})
    clock.advance(FLUSH)
    assert len(broker.held) == 1  # one batch at a time: the next one grows meanwhile
    broker.held[0].callback(None)
    assert journal_ids(tmp_path) == [journal_ids(tmp_path)[-1]] and len(broker.held) == 1
    clock.advance(FLUSH)
    broker.held[1].callback(None)
    assert [p["i"] for p in broker.payloads()] == [0, 1, 2, 3] and events.sent == 4
    assert outbox.added == [] and journal_ids(tmp_path) == [] and events.depth == 0
    result(events.stopService())


def test_an_unconfirmed_batch_goes_to_the_outbox_and_later_ones_follow_it_in_order(tmp_path: Path) -> None:
    outbox, broker = CountingOutbox(), Broker()
    events, clock = make(tmp_path, outbox, broker)
    broker.down = True
    events.emit("get-redirect", {"i": 0})
    clock.advance(FLUSH)
    assert [json_i(e) for e in outbox.added] == [0] and events.depth == 1  # refused: into the outbox
    assert broker.attempts == 2  # and the sender tries it at once
    broker.down = False
    events.emit("get-redirect", {"i": 1})
    clock.advance(FLUSH)  # the outbox is not empty: this one queues behind event 0
    assert [json_i(e) for e in outbox.added] == [0, 1]
    clock.advance(1.0)  # the sender's backoff
    assert broker.payloads() == [{"i": 0}, {"i": 1}] and events.depth == 0
    events.emit("get-redirect", {"i": 2})
    clock.advance(FLUSH)  # empty again: direct
    assert broker.payloads()[-1] == {"i": 2} and len(outbox.added) == 2
    result(events.stopService())


def test_a_disconnected_sink_is_not_asked_directly(tmp_path: Path) -> None:
    outbox, broker = CountingOutbox(), Broker()
    broker.connected = False
    events, clock = make(tmp_path, outbox, broker)
    events.emit("get-redirect", {"i": 0})
    clock.advance(FLUSH)
    assert broker.attempts == 0 and len(outbox.added) == 1
    result(events.stopService())


def json_i(event: Event) -> Any:
    return json.loads(event[2])["payload"]["i"]


def outcome(d: Deferred[None]) -> str:
    if not d.called:
        return "waiting"
    box: list[str] = []
    d.addCallbacks(lambda _: box.append("acked"), lambda f: box.append(f.type.__name__))
    return box[0]


def outcomes(ds: list[Deferred[None]]) -> list[str]:
    return [outcome(d) for d in ds]


def test_confirms_fire_batches_in_order_on_multiple_and_single_acks() -> None:
    c = Confirms()
    a, b, d = c.published(3), c.published(2), c.published(1)  # tags 1-3, 4-5, 6
    c.answer(4, multiple=False, nack=False)
    c.answer(2, multiple=True, nack=False)
    assert outcomes([a, b, d]) == ["waiting"] * 3 and c.done == 2
    c.answer(3, multiple=False, nack=False)  # 1-4 done now
    assert outcomes([a]) == ["acked"] and not b.called
    c.answer(6, multiple=True, nack=False)
    assert outcomes([b, d]) == ["acked", "acked"] and c.in_flight == 0


@pytest.mark.parametrize(
    ("tag", "multiple", "expected"),
    [(4, False, ["acked", "Nacked", "acked"]), (5, True, ["Nacked", "Nacked", "acked"])],
)
def test_a_nack_fails_the_batches_it_touches(tag: int, multiple: bool, expected: list[str]) -> None:
    c = Confirms()
    a, b, d = c.published(3), c.published(2), c.published(1)
    if not multiple:
        c.answer(3, multiple=True, nack=False)
    c.answer(tag, multiple=multiple, nack=True)
    c.answer(6, multiple=True, nack=False)
    assert outcomes([a, b, d]) == expected
    e = c.published(1)  # tag 7: counting goes on past the refused ones
    c.answer(7, multiple=False, nack=False)
    assert outcomes([e]) == ["acked"]


def test_a_lost_channel_fails_what_is_in_flight() -> None:
    c = Confirms()
    a = c.published(2)
    c.fail(ConnectionError("lost"))
    assert outcomes([a]) == ["ConnectionError"]
    assert Nacked.__mro__[1] is Exception


def test_the_outbox_is_sent_with_batches_in_flight_and_removed_in_order(tmp_path: Path) -> None:
    outbox, broker = CountingOutbox(), HoldingBroker()
    broker.connected = False
    events, clock = make(tmp_path, outbox, broker)
    for i in range(2 * BATCH + 5):
        events.emit("get-redirect", {"i": i})
    clock.advance(FLUSH)
    assert events.depth == 2 * BATCH + 5 and broker.held == []
    broker.connected = True
    clock.advance(IDLE)
    assert len(broker.held) == 3 and not any(d.called for d in broker.held)  # three batches in flight (WINDOW)
    assert WINDOW >= 3
    broker.held[1].callback(None)
    assert events.depth == 2 * BATCH + 5  # the first one is not confirmed yet: nothing removed
    broker.held[0].callback(None)
    assert events.depth == 5 and events.sent == 2 * BATCH  # both removed, in order
    broker.held[2].errback(NotConnected("lost"))
    clock.advance(0.5)  # backoff: then from the oldest event again
    assert len(broker.held) == 4
    broker.held[3].callback(None)
    assert events.depth == 0 and sorted(p["i"] for p in broker.payloads()) == list(range(2 * BATCH + 5))
    result(events.stopService())

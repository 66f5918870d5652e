"""Bundles (`[events] bundle`, fedd.events.bundles): the pure grouping, and the events service
publishing through the AMQP and STOMP sinks in process (bytes decoded with pika's and the STOMP
parser). The real brokers: tests/test_events_rabbitmq.py and tests/test_events_stomp.py."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import frame, spec
from twisted.internet.testing import MemoryReactorClock, StringTransport

from fedd.config import EventsConfig
from fedd.events.amqp_frames import Confirms, Publisher
from fedd.events.bundles import MAX_BYTES, bundle
from fedd.events.model import Event
from fedd.events.outbox import Outbox
from fedd.events.service import EventsService
from fedd.events.sinks import AmqpSink
from fedd.events.stomp import FrameParser, StompSink, parse_brokers
from tests.inprocess import result
from tests.test_events_service_inprocess import FLUSH, IDLE, MemoryOutbox

KEYS = ("fedd.get.redirect", "fedd.put.done", "fedd.endpoint.online")


def event(i: int, key: str = KEYS[0], pad: int = 0) -> Event:
    return (f"id{i:04d}", key, json.dumps({"id": f"id{i:04d}", "i": i, "pad": "x" * pad}).encode())


def flat(bundles: list[tuple[str, str, bytes, int]]) -> list[tuple[str, str, Any]]:
    return [(doc["id"], key, doc) for _, key, body, _ in bundles for doc in json.loads(body)]


# --- the grouping --------------------------------------------------------------------------------


def test_runs_of_one_key_up_to_the_size() -> None:
    events = [event(0), event(1), event(2), event(3, KEYS[1]), event(4), event(5), event(6)]
    got = bundle(events, 3)
    assert [(first, key, n) for first, key, _, n in got] == [
        ("id0000", KEYS[0], 3),
        ("id0003", KEYS[1], 1),
        ("id0004", KEYS[0], 3),
    ]
    assert got[0][2] == b"[" + b",".join(e[2] for e in events[:3]) + b"]"


def test_the_byte_limit_cuts_a_bundle_and_a_larger_event_travels_alone() -> None:
    events = [event(0, pad=400), event(1, pad=400), event(2, pad=3000), event(3, pad=10)]
    limit = len(events[0][2]) + len(events[1][2]) + 3  # brackets and one comma: exactly two fit
    got = bundle(events, 100, limit)
    assert [n for *_, n in got] == [2, 1, 1]
    assert len(got[0][2]) == limit and len(got[1][2]) > limit  # alone, still an array
    assert [doc["i"] for _, _, doc in flat(got)] == [0, 1, 2, 3]


def test_nothing_to_bundle() -> None:
    assert bundle([], 10) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 300)), max_size=60),
    st.integers(1, 12),
    st.integers(50, 2000),
)
def test_bundles_keep_every_event_in_order(spec_: list[tuple[str, int]], size: int, limit: int) -> None:
    events = [event(i, key, pad) for i, (key, pad) in enumerate(spec_)]
    got = bundle(events, size, limit)
    assert [(i, key) for i, key, _ in flat(got)] == [(e[0], e[1]) for e in events]
    for first, _, body, n in got:
        docs = json.loads(body)
        assert len(docs) == n and 1 <= n <= size and docs[0]["id"] == first
        assert n == 1 or len(body) <= limit
    bodies = {e[0]: e[2] for e in events}
    for a, b in itertools.pairwise(got):  # a run is cut only at the size or the byte limit
        if a[1] == b[1] and a[3] < size:
            assert len(a[2]) + 1 + len(bodies[b[0]]) > limit


# --- the AMQP sink under the events service ---------------------------------------------------


class Connection:
    """What AmqpSink._publish uses of pika's protocol: its transport."""

    def __init__(self) -> None:
        self.transport = StringTransport()


def connected_sink(reactor: MemoryReactorClock, size: int) -> tuple[AmqpSink, Connection]:
    sink = AmqpSink(reactor, "amqp://guest:guest@127.0.0.1:5672/%2F", "fedd", bundle=size)
    conn = Connection()
    sink._proto, sink.channel = cast(Any, conn), object()  # as run() leaves them once connected
    sink._confirms, sink._publisher = Confirms(), Publisher(1, "fedd", 4096)
    return sink, conn


def published(conn: Connection) -> list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    """(message_id, routing key, headers, envelopes) of every publish written, decoded by pika."""
    data = conn.transport.value()
    conn.transport.clear()
    out: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = []
    key = ""
    props: Any = None
    body = b""
    size = 0
    while data:
        used, f = frame.decode_frame(data)
        data = data[used:]
        if isinstance(f, frame.Method):
            assert isinstance(f.method, spec.Basic.Publish)
            key, body = f.method.routing_key, b""
        elif isinstance(f, frame.Header):
            props, size = f.properties, f.body_size
        else:
            body += f.fragment
            if len(body) == size:
                out.append((props.message_id, key, props.headers, json.loads(body)))
    return out


def service(tmp_path: Path, sink: Any, reactor: MemoryReactorClock) -> tuple[EventsService, MemoryOutbox]:
    config = EventsConfig(outbox=str(tmp_path / "outbox.sqlite"), flush_interval=FLUSH, idle_interval=IDLE)
    outbox = MemoryOutbox(max_events=10_000)
    events = EventsService(
        config, clock=reactor, outbox=cast(Outbox, outbox), sink=sink, rng=random.Random(7), direct=True
    )
    events.startService()
    return events, outbox


def emit_mixed(events: EventsService, n: int) -> None:
    """n events: runs of get-redirect with a put-done every 37th."""
    for i in range(n):
        events.emit("put-done" if i % 37 == 36 else "get-redirect", {"i": i})


def test_amqp_bundles_in_order_confirmed_per_message(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    sink, conn = connected_sink(reactor, 10)
    events, outbox = service(tmp_path, sink, reactor)
    emit_mixed(events, 250)
    reactor.advance(FLUSH)
    messages = published(conn)
    docs = [doc for *_, envelopes in messages for doc in envelopes]
    assert [d["payload"]["i"] for d in docs] == list(range(250))  # every event once, in order
    for mid, key, headers, envelopes in messages:
        assert headers == {"fedd-count": len(envelopes)} and 1 <= len(envelopes) <= 10
        assert mid == envelopes[0]["id"]
        assert {d["event_type"] for d in envelopes} == {key.removeprefix("fedd.").replace(".", "-")}
    runs = [36, 1] * 6 + [28]  # 6 put-dones cut the get-redirects into 7 runs
    assert len(messages) == sum(-(-r // 10) for r in runs)
    assert sink._confirms is not None and sink._confirms.sent == len(messages)
    sink._confirms.answer(len(messages) - 1, True, False)
    assert events.sent == 0  # one message short: the batch waits
    sink._confirms.answer(len(messages), False, False)
    assert events.sent == 250 and outbox.rows == []
    result(events.stopService())


def test_amqp_a_nacked_bundle_is_sent_again_with_the_same_ids(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    sink, conn = connected_sink(reactor, 100)
    events, outbox = service(tmp_path, sink, reactor)
    emit_mixed(events, 120)
    reactor.advance(FLUSH)
    first = published(conn)
    assert sink._confirms is not None
    sink._confirms.answer(2, False, True)  # the broker refused the second message: the batch fails
    assert len(outbox.rows) == 120  # into the outbox, and the sender sends it again at once
    again = published(conn)
    assert [(m[0], m[1], m[3]) for m in again] == [(m[0], m[1], m[3]) for m in first]  # same bundles, same ids
    sink._confirms.answer(sink._confirms.sent, True, False)
    assert events.sent == 120 and outbox.rows == []
    result(events.stopService())


def test_amqp_bundle_one_sends_plain_envelopes(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    sink, conn = connected_sink(reactor, 1)
    events, _ = service(tmp_path, sink, reactor)
    emit_mixed(events, 3)
    reactor.advance(FLUSH)
    data = conn.transport.value()
    assert b"fedd-count" not in data and data.count(b'{"id":') == 3
    result(events.stopService())


def test_amqp_bundles_stay_under_the_byte_limit(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    sink, conn = connected_sink(reactor, 10_000)
    events, _ = service(tmp_path, sink, reactor)
    for i in range(40):
        events.emit("get-redirect", {"i": i, "pad": "x" * 100_000})
    reactor.advance(FLUSH)
    messages = published(conn)
    assert [len(m[3]) for m in messages] == [10, 10, 10, 10]
    assert all(len(json.dumps(m[3], separators=(",", ":"))) <= MAX_BYTES for m in messages)
    result(events.stopService())


# --- STOMP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 50])
def test_stomp_frames_carry_bundles(size: int) -> None:
    sink = StompSink(MemoryReactorClock(), parse_brokers("stomp://127.0.0.1:61613", "", ""), "/topic/t", bundle=size)
    events = [event(i, KEYS[1] if i == 60 else KEYS[0]) for i in range(120)]
    parser = FrameParser()
    frames = parser.feed(b"".join(head + b"\n" + body + b"\0" for head, body in sink.frames(events)))
    if size == 1:
        assert [f.headers["fedd-id"] for f in frames] == [e[0] for e in events]
        assert all("fedd-count" not in f.headers for f in frames)
        return
    assert [(f.headers["event_type"], f.headers["fedd-count"]) for f in frames] == [
        ("get-redirect", "50"),
        ("get-redirect", "10"),
        ("put-done", "1"),
        ("get-redirect", "50"),
        ("get-redirect", "9"),
    ]
    docs = [doc for f in frames for doc in json.loads(f.body)]
    assert [d["i"] for d in docs] == list(range(120))
    assert all(f.headers["fedd-id"] == json.loads(f.body)[0]["id"] for f in frames)

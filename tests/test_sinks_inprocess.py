"""fedd.events.sinks in process: the AMQP sink's connection loop on a MemoryReactorClock (connection
attempts refused or completed by the test), and the spool sink with its writer thread answering
through a reactor stand-in the test drains. RabbitMQ itself: test_events_rabbitmq, test_events_durable."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from twisted.internet.testing import MemoryReactorClock

from fedd.events.journal import Journal
from fedd.events.model import Event
from fedd.events.sinks import AmqpSink, NotConnected, SpoolSink, failure_kind
from tests.inprocess import captured_logs, formats, refuse, result

URL = "amqp://fedd:s3cret@127.0.0.1:5672/%2Fgrid"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), "authentication"),
        (pika.exceptions.ConnectionClosedByBroker(403, "ACCESS_REFUSED - Login was refused"), "authentication"),
        (pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - no access to exchange"), "access"),
        (pika.exceptions.ProbableAccessDeniedError("vhost"), "access"),
        (pika.exceptions.ConnectionClosedByBroker(530, "NOT_ALLOWED - vhost /grid not found"), "access"),
        (pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg 'type'"), "setup"),
        (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
        (TimeoutError(), "unreachable"),
    ],
)
def test_failure_kinds(exc: BaseException, kind: str) -> None:
    assert failure_kind(exc) == kind


def test_describe_never_shows_the_password() -> None:
    sink = AmqpSink(MemoryReactorClock(), URL, "fedd")
    assert sink.describe() == "amqp://127.0.0.1:5672/grid exchange fedd"
    assert "s3cret" not in sink.describe() and "s3cret" not in repr(sink.params.host)


def test_publishing_without_a_connection_fails_at_once() -> None:
    sink = AmqpSink(MemoryReactorClock(), URL, "fedd")
    got = result(sink.publish([("id", "fedd.get.redirect", b"{}")]))
    assert len(got) == 1 and not sink.connected
    failure: Any = got[0]
    assert failure.check(NotConnected)


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def running(reactor: MemoryReactorClock) -> Iterator[AmqpSink]:
    sink = AmqpSink(reactor, URL, "fedd", timeout=5.0)
    sink.service.startService()
    yield sink
    result(sink.service.stopService())


def test_the_loop_connects_to_the_broker_of_the_url(reactor: MemoryReactorClock, running: AmqpSink) -> None:
    assert [(host, port, timeout) for host, port, _, timeout, _ in reactor.tcpClients] == [("127.0.0.1", 5672, 5.0)]


def test_an_unreachable_broker_is_retried_with_backoff_and_logged_once(
    reactor: MemoryReactorClock, running: AmqpSink
) -> None:
    delays = []
    with captured_logs() as logged:
        for attempt in range(8):
            refuse(reactor)
            calls = [c for c in reactor.getDelayedCalls() if c.active()]
            assert len(calls) == 1
            delays.append(calls[0].getTime() - reactor.seconds())
            reactor.advance(delays[-1])
            assert len(reactor.tcpClients) == attempt + 2
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert running.failures == 8 and "refused" in running.last_error.lower()
    outages = formats(logged, "events wait in the outbox, retrying")
    assert len(outages) == 1
    assert not running.connected


def test_stopping_during_the_backoff_ends_the_loop(reactor: MemoryReactorClock) -> None:
    sink = AmqpSink(reactor, URL, "fedd")
    sink.service.startService()
    refuse(reactor)
    stopped = result(sink.service.stopService())
    assert stopped == [None]
    reactor.advance(60)
    assert len(reactor.tcpClients) == 1  # no attempt after the stop
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []


def test_stopping_during_a_connection_attempt_cancels_it(reactor: MemoryReactorClock) -> None:
    sink = AmqpSink(reactor, URL, "fedd")
    sink.service.startService()
    stopped = result(sink.service.stopService())
    assert stopped == [None]
    assert reactor.connectors[0].stoppedConnecting
    reactor.advance(60)
    assert len(reactor.tcpClients) == 1


class ThreadCalls:
    """The reactor as the spool's thread pool sees it: results come back through callFromThread,
    queued here and run in the test's thread by `drain` (an awaited event, not a sleep)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.put((fn, args))

    def drain(self) -> None:
        fn, args = self.calls.get(timeout=10)
        fn(*args)


def bodies(n: int, start: int = 0) -> list[Event]:
    return [
        (f"id{i}", "fedd.get.redirect", json.dumps({"i": i, "pad": "x" * 30}).encode()) for i in range(start, start + n)
    ]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[tuple[SpoolSink, ThreadCalls]]:
    calls = ThreadCalls()
    sink = SpoolSink(calls, str(tmp_path / "events.jsonl"), max_bytes=200)
    yield sink, calls
    sink.close()


def test_the_spool_writes_one_line_per_event_and_confirms(tmp_path: Path, spool: tuple[SpoolSink, ThreadCalls]) -> None:
    sink, calls = spool
    assert sink.connected and sink.describe() == f"spool file {tmp_path / 'events.jsonl'}"
    got = result(sink.publish(bodies(3)))
    calls.drain()
    assert got == [None]
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]


def test_the_spool_rotates_past_its_size(tmp_path: Path, spool: tuple[SpoolSink, ThreadCalls]) -> None:
    sink, calls = spool
    for batch in range(4):
        result(sink.publish(bodies(5, start=batch * 5)))
        calls.drain()
    current = [json.loads(line)["i"] for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    rotated = [json.loads(line)["i"] for line in (tmp_path / "events.jsonl.1").read_bytes().splitlines()]
    assert (rotated, current) == ([10, 11, 12, 13, 14], [15, 16, 17, 18, 19])  # one old file is kept


def test_a_spool_that_cannot_be_written_fails_the_publish(tmp_path: Path) -> None:
    calls = ThreadCalls()
    sink = SpoolSink(calls, str(tmp_path / "missing" / "events.jsonl"), max_bytes=200)
    try:
        got = result(sink.publish(bodies(1)))
        calls.drain()
        failure: Any = got[0]
        assert failure.check(OSError)
    finally:
        sink.close()


def test_the_spool_replays_a_dead_process_journal(tmp_path: Path, spool: tuple[SpoolSink, ThreadCalls]) -> None:
    sink, calls = spool

    class Frozen:
        def seconds(self) -> float:
            return 1.0

    journal = Journal(str(tmp_path / "events.jsonl"), Frozen())
    journal.append(("a", "get-redirect", {"path": "/a"}, 1.0))
    journal.append(("b", "deletion-done", {"path": "/b"}, 2.0))
    paths = sorted(str(p) for p in tmp_path.glob("events.jsonl.journal.*"))
    journal.close(everything_stored=False)
    got = result(sink.replay(paths, "fedd"))
    calls.drain()
    assert got == [(2, 0)]
    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert [(e["id"], e["event_type"], e["payload"]) for e in written] == [
        ("a", "get-redirect", {"path": "/a"}),
        ("b", "deletion-done", {"path": "/b"}),
    ]

"""Events survive SIGKILL and broker faults, on the real RabbitMQ of this machine (127.0.0.1:5672).

Every GET answered 302 must reach a consumer as a get-redirect event: clients request distinct
paths, so a path the clients saw redirected and no consumer received is a lost event. Duplicates
(at-least-once delivery) are allowed, but two messages for one path must carry the same id.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port
from tests.test_events_rabbitmq import BROKER, Consumer, broker_up, rabbitmqctl

__all__ = ["broker_up"]  # the fixture, used by name

THREADS = 4


def config(port: int, exchange: str, data: Path, extra: str = "") -> str:
    # the default flush_interval (50 ms): the window the old in-memory batch lost on SIGKILL
    return f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[events]
broker = {BROKER}
exchange = {exchange}
types = get-redirect events-dropped
idle_interval = 0.2
{extra}
[endpoint data]
kind = local
path = {data}
map = /atlas /
space_source = none
"""


class Load:
    """THREADS clients, each over one keep-alive connection, GETting its own share of distinct
    paths until its share is done, `stop` is set, or fedd stops answering."""

    def __init__(self, fed: Fedd, paths: list[str], pace: float = 0.0) -> None:
        self.fed = fed
        self.pace = pace  # seconds between a client's requests: a load that outlasts the broker faults
        self.redirected: list[str] = []  # list.append is atomic: every path a client saw answered 302
        self.other: list[tuple[str, int]] = []
        self.stop = threading.Event()
        shares = [paths[i::THREADS] for i in range(THREADS)]
        self.threads = [threading.Thread(target=self._run, args=(share,), daemon=True) for share in shares]
        for t in self.threads:
            t.start()

    def _run(self, share: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.fed.port, timeout=10)
        try:
            for path in share:
                if self.stop.is_set():
                    return
                try:
                    conn.request("GET", path)
                    r = conn.getresponse()
                    r.read()
                except OSError:  # fedd killed under us: this request's answer never arrived
                    return
                if r.status == 302:
                    self.redirected.append(path)
                else:
                    self.other.append((path, r.status))
                if self.pace:
                    self.stop.wait(self.pace)
        finally:
            conn.close()

    def wait_for_count(self, n: int, timeout: float = 60.0) -> None:
        wait_for(lambda: len(self.redirected) >= n, timeout, f"{n} redirects")

    def join(self) -> None:
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()


def collect(consumer: Consumer, fed: Fedd, want: set[str], timeout: float = 90.0) -> list[tuple[str, str, str]]:
    """(path, message_id, envelope id) of every get-redirect message, until every wanted path has
    arrived, or fedd has nothing left to send (outbox empty, connected) and the queue is drained."""
    got: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            method, props, body = consumer.ch.basic_get(consumer.queue, auto_ack=True)
        except (pika.exceptions.AMQPError, OSError):
            time.sleep(0.5)  # the broker closed our connection too (close_all_connections): reconnect
            consumer._connect()
            continue
        if method is not None:
            doc = json.loads(body)
            if doc["event_type"] == "get-redirect":
                got.append((doc["payload"]["path"], props.message_id, doc.get("id")))
                seen.add(doc["payload"]["path"])
            continue
        events = fed.status()["events"]
        if want <= seen or (events["connected"] and events["outbox_depth"] == 0 and events["pending"] == 0):
            time.sleep(0.5)  # a last look: confirms reach fedd before the consumer sees the queue
            method, _, _ = consumer.ch.basic_get(consumer.queue, auto_ack=False)
            if method is None:
                return got
            consumer.ch.basic_nack(method.delivery_tag, requeue=True)
            continue
        time.sleep(0.05)
    return got


def check(load: Load, got: list[tuple[str, str, str]], in_flight: int) -> dict[str, int]:
    produced = set(load.redirected)
    assert len(produced) == len(load.redirected)  # every client path is distinct
    assert not load.other, load.other[:5]
    ids_by_path: dict[str, set[str]] = {}
    for path, message_id, envelope_id in got:
        assert message_id == envelope_id and message_id  # the AMQP property and the envelope agree
        ids_by_path.setdefault(path, set()).add(message_id)
    lost = produced - set(ids_by_path)
    assert not lost, f"{len(lost)} of {len(produced)} events lost, e.g. {sorted(lost)[:3]}"
    # a duplicate is the same event delivered twice: one id per path
    assert all(len(ids) == 1 for ids in ids_by_path.values()), [p for p, i in ids_by_path.items() if len(i) > 1][:3]
    # events for requests whose answer the kill cut off: at most one per client connection and kill
    assert len(set(ids_by_path) - produced) <= in_flight
    return {"produced": len(produced), "received": len(ids_by_path), "duplicates": len(got) - len(ids_by_path)}


@pytest.fixture()
def federation(tmp_path: Path, broker_up: None) -> Iterator[tuple[Path, Path, str, Consumer]]:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6000):
        (data / f"f{i}").write_bytes(b"x")
    exchange = f"fedd-durable-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(exchange, "fedd.get.#")
    yield tmp_path, data, exchange, consumer
    consumer.close()


def paths(n: int) -> list[str]:
    return [f"/atlas/f{i}" for i in range(n)]


def test_sigkill_under_load_loses_no_event(federation: tuple[Path, Path, str, Consumer]) -> None:
    tmp, data, exchange, consumer = federation
    port = free_port()
    conf = config(port, exchange, data)
    fed = start_fedd(tmp / "run", conf, port)
    try:
        load = Load(fed, paths(3000))
        load.wait_for_count(1200)
        os.kill(fed.proc.pid, signal.SIGKILL)  # mid-load: events emitted, answers sent, nothing flushed
        fed.proc.wait(10)
        load.join()
        assert 1200 <= len(load.redirected) < 3000
        fed = start_fedd(tmp / "run", conf, port)  # same outbox and journal: it delivers what was left
        got = collect(consumer, fed, set(load.redirected))
        figures = check(load, got, in_flight=THREADS)
        print(f"SIGKILL under load: {figures}")
        log = fed.log_text()
        assert "Traceback" not in log and "Unhandled" not in log, log
    finally:
        fed.stop()


def test_broker_cut_and_outage_under_load_lose_no_event(federation: tuple[Path, Path, str, Consumer]) -> None:
    tmp, data, exchange, consumer = federation
    port = free_port()
    fed = start_fedd(tmp / "run", config(port, exchange, data), port)
    try:
        load = Load(fed, paths(6000), pace=0.01)
        try:
            load.wait_for_count(300)
            rabbitmqctl("close_all_connections", "fedd events test")
            load.wait_for_count(len(load.redirected) + 300)
            rabbitmqctl("stop_app")
            try:
                start = len(load.redirected)
                load.wait_for_count(start + 300)  # redirects go on while the broker is down
            finally:
                rabbitmqctl("start_app")
            load.wait_for_count(len(load.redirected) + 300)
        finally:
            load.stop.set()
            load.join()
        consumer._connect()
        got = collect(consumer, fed, set(load.redirected))
        figures = check(load, got, in_flight=0)
        print(f"broker cut and outage under load: {figures}")
        log = fed.log_text()
        assert "Traceback" not in log and "Unhandled" not in log, log
        assert "connection lost: events wait in the outbox" in log
    finally:
        fed.stop()


def test_wrong_password_is_named_once_without_traceback(tmp_path: Path, broker_up: None) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f0").write_bytes(b"x")
    port = free_port()
    conf = config(port, f"fedd-auth-{uuid.uuid4().hex[:8]}", data)
    fed = start_fedd(tmp_path / "run", conf.replace("guest:guest@", "guest:wrong-password@"), port)
    try:
        status: dict[str, Any] = wait_for(
            lambda: (s := fed.status()["events"])["connect_failures"] >= 3 and s, 30, "three refused logins"
        )
        assert status["connected"] is False and "authentication" in status["last_error"]
        conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
        conn.request("GET", "/atlas/f0")
        assert conn.getresponse().status == 302  # fedd answers; the event waits in the outbox
        log = fed.log_text()
        lines = [line for line in log.splitlines() if "authentication failed" in line]
        assert len(lines) == 1, log
        assert "guest" in lines[0] and "wrong-password" not in log and "ACCESS_REFUSED" in lines[0]
        assert "unreachable" not in log
        assert "Traceback" not in log and "Unhandled" not in log and "NoTransition" not in log, log
    finally:
        fed.stop()

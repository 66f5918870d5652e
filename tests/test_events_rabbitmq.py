"""Events on the real RabbitMQ of this machine (127.0.0.1:5672, guest/guest): envelope, routing keys,
persistence, publisher confirms, broker outage, fedd restart with unsent events, outbox full."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def broker_up() -> None:
    try:
        pika.BlockingConnection(pika.URLParameters(BROKER)).close()
    except pika.exceptions.AMQPError:
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, timeout=60)
        rabbitmqctl("await_startup")
        rabbitmqctl("start_app")


class Consumer:
    """A durable queue bound to the test's exchange with pattern '#'."""

    def __init__(self, exchange: str, pattern: str = "#") -> None:
        self.exchange = exchange
        self.queue = f"test-{uuid.uuid4().hex[:8]}"
        self.pattern = pattern
        self._connect()

    def _connect(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(BROKER))
        self.ch = self.conn.channel()
        self.ch.exchange_declare(self.exchange, "topic", durable=True)
        self.ch.queue_declare(self.queue, durable=True)
        self.ch.queue_bind(self.queue, self.exchange, self.pattern)

    def take(self, n: int, timeout: float = 20.0) -> list[tuple[Any, Any, dict[str, Any]]]:
        got: list[tuple[Any, Any, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            try:
                method, props, body = self.ch.basic_get(self.queue, auto_ack=True)
            except (pika.exceptions.AMQPError, OSError):
                time.sleep(0.5)
                self._connect()
                continue
            if method is None:
                time.sleep(0.05)
                continue
            got.append((method, props, json.loads(body)))
        return got

    def close(self) -> None:
        try:
            self.ch.queue_delete(self.queue)
            self.conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


def config(port: int, exchange: str, extra: str = "") -> str:
    return f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[events]
broker = {BROKER}
exchange = {exchange}
routing_prefix = fedd
flush_interval = 0.02
idle_interval = 0.2
{extra}
[endpoint data]
kind = local
path = data
map = /atlas /
space_source = none
"""


@pytest.fixture()
def setup(tmp_path: Path, broker_up: None) -> Iterator[tuple[Path, str, Consumer]]:
    (tmp_path / "data").mkdir()
    for i in range(60):
        (tmp_path / "data" / f"f{i}").write_text("x")
    exchange = f"fedd-test-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(exchange)
    yield tmp_path, exchange, consumer
    consumer.close()


def get(fed: Fedd, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status


def redirects(messages: list[tuple[Any, Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [m[2] for m in messages if m[2]["event_type"] == "get-redirect"]


def per_producer(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Events by the process that emitted them (the 16 random hex digits of their ids), in the order
    they arrived: the order is a property of each producer (with workers, each worker is one)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(e["id"][:16], []).append(e)
    return out


def in_order(events: list[dict[str, Any]]) -> bool:
    """Each producer's events arrived in the order it emitted them (its id counter rising)."""
    return all([e["id"] for e in mine] == sorted(e["id"] for e in mine) for mine in per_producer(events).values())


def file_number(event: dict[str, Any]) -> int:
    return int(event["payload"]["path"].rsplit("/f", 1)[1])


def test_events_arrive_on_the_broker(setup: tuple[Path, str, Consumer]) -> None:
    tmp, exchange, consumer = setup
    port = free_port()
    fed = start_fedd(tmp / "run", config(port, exchange).replace("path = data", f"path = {tmp / 'data'}"), port)
    try:
        for i in range(3):
            assert get(fed, f"/atlas/f{i}") == 302
        msgs = consumer.take(4)  # endpoint-online + 3 redirects
        kinds = {m[2]["event_type"]: m for m in msgs}
        assert set(kinds) == {"endpoint-online", "get-redirect"}
        method, props, body = kinds["get-redirect"]
        assert method.routing_key == "fedd.get.redirect"
        assert props.content_type == "application/json" and props.delivery_mode == 2
        assert set(body) == {"id", "event_type", "payload", "created_at"}
        assert props.message_id == body["id"] and len(body["id"]) == 32
        assert len({m[1].message_id for m in msgs}) == len(msgs)  # one id per event
        assert body["payload"]["endpoint"] == "data" and body["payload"]["client"] == "127.0.0.1"
        got = redirects(msgs)  # all three, each producer's in order (with workers, each worker is one)
        assert sorted(file_number(g) for g in got) == [0, 1, 2] and in_order(got)
        assert all(
            [file_number(g) for g in mine] == sorted(file_number(g) for g in mine)
            for mine in per_producer(got).values()
        )
        online = kinds["endpoint-online"]
        assert online[0].routing_key == "fedd.endpoint.online" and online[2]["payload"]["endpoint"] == "data"
        # with workers, the status adds up the others' counts within a second
        status = wait_for(lambda: fed.status()["events"], 5, "4 events sent", until=lambda ev: ev["sent"] >= 4)
        assert status["connected"] is True and "guest" not in status["sink"]
    finally:
        fed.stop()


def test_broker_outage_and_restart_lose_nothing(setup: tuple[Path, str, Consumer]) -> None:
    tmp, exchange, consumer = setup
    port = free_port()
    conf = config(port, exchange).replace("path = data", f"path = {tmp / 'data'}")
    fed = start_fedd(tmp / "run", conf, port)
    try:
        assert get(fed, "/atlas/f0") == 302
        assert len(redirects(consumer.take(2))) == 1
        consumer.conn.close()
        rabbitmqctl("stop_app")
        try:
            start = time.monotonic()
            for i in range(1, 11):  # requests are answered at once while the broker is down
                assert get(fed, f"/atlas/f{i}") == 302
            assert time.monotonic() - start < 5
            wait_for(  # 10 redirects (online was sent before)
                lambda: fed.status()["events"]["outbox_depth"], 10, "10 events in the outbox", until=lambda n: n >= 10
            )
            assert fed.status()["events"]["connected"] is False
            log = fed.log_text()
            assert log.count("exchange " + exchange + " connection lost: events wait in the outbox") == 1, log
            fed.stop()  # fedd restarts with events still in its outbox
            fed = start_fedd(tmp / "run", conf, port)
            assert get(fed, "/atlas/f11") == 302
            wait_for(lambda: "unreachable" in fed.log_text(), 10, "the broker outage in the log")
        finally:
            rabbitmqctl("start_app")
        consumer._connect()
        got = redirects(consumer.take(12, timeout=60))
        assert sorted(file_number(g) for g in got) == list(range(1, 12))  # every one, once
        for mine in per_producer(got).values():  # in order: with workers, each worker's (docs/events.md)
            assert [file_number(g) for g in mine] == sorted(file_number(g) for g in mine), got
        assert in_order(got)
        if fed.status().get("workers", {}).get("count", 1) == 1:  # one process: one order for all of them
            assert [file_number(g) for g in got] == list(range(1, 12))
        log = fed.log_text()
        outage = [line for line in log.splitlines() if "unreachable" in line]
        assert len(outage) == 1 and f"exchange {exchange} unreachable (" in outage[0], log  # once per outage
        assert "connected to broker" in log.split(outage[0], 1)[1]  # and back afterwards
        assert "Traceback" not in log and "Unhandled" not in log, log
    finally:
        fed.stop()


def test_full_outbox_sheds_counts_and_reports_once(setup: tuple[Path, str, Consumer]) -> None:
    tmp, exchange, consumer = setup
    port = free_port()
    conf = config(port, exchange, "outbox_max_events = 5\nshed = drop-oldest\ntypes = get-redirect events-dropped")
    conf = conf.replace("path = data", f"path = {tmp / 'data'}")
    down = conf.replace(BROKER, "amqp://guest:guest@127.0.0.1:1/")
    fed = start_fedd(tmp / "run", down, port)  # a broker that is not there
    try:
        for i in range(60):  # over many flush intervals (20 ms)
            assert get(fed, f"/atlas/f{i}") == 302

        # each process has its own outbox of 5 (with workers, the status adds up those that took requests;
        # a worker that took fewer than 6 requests keeps them all and drops none)
        outboxes = fed.status().get("workers", {}).get("count", 1)

        def shed(ev: dict[str, Any]) -> bool:
            return bool(ev["dropped"] + ev["outbox_depth"] == 60 and 5 <= ev["outbox_depth"] <= 5 * outboxes)

        status = wait_for(lambda: fed.status()["events"], 10, "the events dropped but 5 per outbox", until=shed)
        assert status["connected"] is False  # notices take no room
        # one report, not one per flush; with workers, one per worker that dropped (each its own counts)
        reports = [line for line in fed.log_text().splitlines() if "events dropped" in line]
        reporters = {m.group(1) if (m := re.search(r"\[(worker-\d+)?", line)) else None for line in reports}
        assert 1 <= len(reports) <= outboxes and len(reporters) == len(reports), reports
        assert all("outbox full: 5 events, drop-oldest" in line for line in reports), reports
        assert fed.proc.poll() is None
    finally:
        fed.stop()  # the drops since the report go into the notice slot
    fed = start_fedd(tmp / "run", conf, port)  # the real broker, the same outbox(es)
    try:
        msgs = consumer.take(status["outbox_depth"] + len(reports))
        assert len(msgs) == status["outbox_depth"] + len(reports), [m[2] for m in msgs]
        kept = redirects(msgs)
        if outboxes == 1:  # one outbox: the last 5
            assert [file_number(e) for e in kept] == list(range(55, 60))
        else:  # each outbox its own last ones, each in order, the newest of all among them
            assert in_order(kept) and max(file_number(e) for e in kept) == 59 and len(kept) == status["outbox_depth"]
        notices = [m[2] for m in msgs if m[2]["event_type"] == "events-dropped"]
        assert len(notices) == len(reports) and sum(n["payload"]["dropped"] for n in notices) == 60 - len(kept)
        assert all(n["payload"]["outbox_max"] == 5 and n["payload"]["policy"] == "drop-oldest" for n in notices)
        assert consumer.take(1, timeout=1.0) == []  # nothing else: one notice, not one per flush
        assert "events dropped" not in fed.log_text()
    finally:
        fed.stop()


def test_bundles_arrive_with_every_id_once(setup: tuple[Path, str, Consumer]) -> None:
    tmp, exchange, consumer = setup
    port = free_port()
    conf = config(port, exchange, "bundle = 25").replace("path = data", f"path = {tmp / 'data'}")
    fed = start_fedd(tmp / "run", conf.replace("flush_interval = 0.02", "flush_interval = 0.5"), port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
        for i in range(60):  # one keep-alive connection: many redirects per flush
            conn.request("GET", f"/atlas/f{i}")
            r = conn.getresponse()
            r.read()
            assert r.status == 302
        conn.close()
        wait_for(lambda: fed.status()["events"]["sent"], 20, "61 events sent", until=lambda n: n >= 61)
        msgs = consumer.take(100, timeout=2.0)  # every message there is (fewer than 100)
        ids: list[str] = []
        paths: list[str] = []
        for method, props, docs in msgs:
            assert isinstance(docs, list) and props.headers == {"fedd-count": len(docs)} and len(docs) <= 25
            assert props.message_id == docs[0]["id"] and props.delivery_mode == 2
            assert {method.routing_key} == {"fedd." + d["event_type"].replace("-", ".") for d in docs}
            ids += [d["id"] for d in docs]
            paths += [d["payload"]["path"] for d in docs if d["event_type"] == "get-redirect"]
        assert len(ids) == len(set(ids)) == 61  # endpoint-online and 60 redirects, each once
        assert paths == [f"/atlas/f{i}" for i in range(60)]  # in order
        assert len(msgs) < 20  # bundled: far fewer messages than events
        assert "Traceback" not in fed.log_text()
    finally:
        fed.stop()

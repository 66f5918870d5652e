"""Confirmed uploads through `twistd fedd` (issue 17) with the real thing: Ceph RGW pushing bucket
notifications to RabbitMQ (the notification path), Apache mod_dav (the looking path), uploads by curl,
davix-put and gfal-copy, and the events read by a RabbitMQ consumer of fedd's feed."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import pika
import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, dav_endpoint, free_port
from tests.test_events_rabbitmq import BROKER, Consumer, broker_up  # noqa: F401  (broker_up: a fixture)

BUCKET = "fedd-confirm"
DEADLINE = 6.0


@pytest.fixture(scope="module")
def rgw_exchange(ceph: Any, s3client: Any, broker_up: None) -> str:  # noqa: F811
    """The bucket, and RGW's notification of every object created in it to a RabbitMQ exchange."""
    exchange = f"rgw-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(BROKER))
    conn.channel().exchange_declare(exchange, "topic", durable=True)
    conn.close()
    s3client.create_bucket(Bucket=BUCKET)
    sns = boto3.client(
        "sns",
        endpoint_url=ceph.url,
        aws_access_key_id=ceph.access_key,
        aws_secret_access_key=ceph.secret_key,
        region_name="us-east-1",
    )
    topic = sns.create_topic(
        Name=f"fedd-{exchange}",
        Attributes={"push-endpoint": "amqp://127.0.0.1:5672", "amqp-exchange": exchange, "amqp-ack-level": "broker"},
    )["TopicArn"]
    s3client.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "TopicConfigurations": [{"Id": "fedd", "TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return exchange


@pytest.fixture(scope="module")
def fed(
    ceph: Any, dav2: Any, rgw_exchange: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Fedd, Consumer]]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    events = f"fedd-confirm-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(events, "fedd.put.#")
    port = free_port()
    workdir = tmp_path_factory.mktemp("confirm")
    config = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[events]
broker = {BROKER}
exchange = {events}
flush_interval = 0.02
idle_interval = 0.2
[confirm]
deadline = {DEADLINE}
poll_initial = 0.5
poll_max = 3
checksum_wait = 20
notify = ceph {rgw_exchange}
{ceph_endpoint(ceph, BUCKET, map="/s3 /s3", write=True)}
{dav_endpoint(dav2, map="/dav /w/dav", write=True)}
"""
    f = start_fedd(workdir, config, port)
    try:
        wait_for(lambda: f.status()["confirm"]["rgw_notifications"]["connected"], what="RGW notifications consumed")
    except BaseException:
        f.stop()
        consumer.close()
        raise
    yield f, consumer
    f.stop()
    consumer.close()


def outcomes(consumer: Consumer, paths: set[str], timeout: float = 40.0) -> dict[str, list[dict[str, Any]]]:
    """put-done/put-failed events by path, until every path in `paths` has one (put-redirects skipped)."""
    got: dict[str, list[dict[str, Any]]] = {}
    end = time.monotonic() + timeout
    while not paths <= set(got) and time.monotonic() < end:
        for _, _, event in consumer.take(1, timeout=max(0.1, end - time.monotonic())):
            if event["event_type"] in ("put-done", "put-failed"):
                got.setdefault(event["payload"]["path"], []).append(event)
    return got


def drain(consumer: Consumer) -> list[dict[str, Any]]:
    """What is in the queue now (once fedd's outbox is empty, every event it emitted is there)."""
    out: list[dict[str, Any]] = []
    while True:
        method, _, body = consumer.ch.basic_get(consumer.queue, auto_ack=True)
        if method is None:
            return out
        out.append(json.loads(body))


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def run(*args: str) -> None:
    out = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, f"{args[0]}: {out.stdout}{out.stderr}"


def test_curl_davix_gfal_and_carried_uploads_give_one_put_done_each(fed: tuple[Fedd, Consumer], tmp_path: Path) -> None:
    f, consumer = fed
    expected: dict[str, bytes] = {}
    for i, client in enumerate(("curl", "davix", "gfal", "carried")):
        data = os.urandom(100_000 + 7 * i)
        src = tmp_path / f"{client}.bin"
        src.write_bytes(data)
        for top in ("s3", "dav"):
            # RGW's notifications name keys unencoded: an odd name is matched too
            path = f"/{top}/up/{client} a+b=é.bin" if client == "curl" else f"/{top}/up/{client}.bin"
            expected[path] = data
            url = f.url + quote(path)
            if client == "curl":
                run("curl", "-sS", "-f", "-L", "--max-time", "30", "-T", str(src), url)
            elif client == "carried":  # a client that cannot follow a 307 with its body: fedd carries it
                run("curl", "-sS", "-f", "-A", "rclone/v1.60", "--max-time", "30", "-T", str(src), url)
            elif client == "davix":
                run("davix-put", "--timeout", "30", str(src), url)
            else:
                run("gfal-copy", "-t", "60", f"file://{src}", url)
    got = outcomes(consumer, set(expected))
    for path, data in expected.items():
        events = got.get(path, [])
        assert [e["event_type"] for e in events] == ["put-done"], (path, events, f.log_text()[-3000:])
        payload = events[0]["payload"]
        assert payload["bytes"] == len(data) and payload["adler32"] == adler32(data), payload
        how = "carried" if "carried" in path else "notification" if path.startswith("/s3/") else "look"
        assert payload["confirmed_by"] == how, payload
        assert payload["rse"] == ("ceph" if path.startswith("/s3/") else "dav")
        assert 0 <= payload["duration"] < DEADLINE
    # with workers, the status adds up the others' counts within a second
    wait_for(lambda: (lambda c: c["pending"] == 0 and c["done"] >= 8)(f.status()["confirm"]), 5, "8 uploads done")


def send(url: str, data: bytes, size: int) -> None:
    """PUT `data` to `url` announcing `size`: a short body is an upload abandoned half-way."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.putrequest("PUT", parts.path + (f"?{parts.query}" if parts.query else ""), skip_accept_encoding=True)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    conn.send(data)
    if len(data) == size:
        r = conn.getresponse()
        r.read()
        assert r.status in (200, 201, 204), r.status
    conn.close()


def test_abandoned_and_wrong_size_uploads_give_put_failed(fed: tuple[Fedd, Consumer]) -> None:
    f, consumer = fed
    data = os.urandom(20_000)
    for top in ("s3", "dav"):
        send(f.redirect_put(f"/{top}/bad/abandoned.bin", 20_000), data[:10_000], 20_000)  # then the client goes
        short = f.redirect_put(f"/{top}/bad/short.bin", 20_000)
        send(short, data[:5_000], 5_000)  # 5000 bytes where 20000 were announced
    paths = {f"/{top}/bad/{name}" for top in ("s3", "dav") for name in ("abandoned.bin", "short.bin")}
    got = outcomes(consumer, paths)
    reasons = {path: [e["payload"]["reason"] for e in got.get(path, [])] for path in paths}
    assert [e["event_type"] for e in got.get("/s3/bad/short.bin", [])] == ["put-failed"], reasons
    assert reasons["/s3/bad/short.bin"] == ["size mismatch: announced 20000, stored 5000"]  # at once, RGW said so
    assert got["/s3/bad/short.bin"][0]["payload"]["duration"] < DEADLINE
    assert reasons["/dav/bad/short.bin"] == [f"size mismatch: announced 20000, found 5000 after {DEADLINE:g}s"]
    for top in ("s3", "dav"):
        assert reasons[f"/{top}/bad/abandoned.bin"] == [f"deadline passed: no object after {DEADLINE:g}s"]
        assert got[f"/{top}/bad/abandoned.bin"][0]["payload"]["duration"] >= DEADLINE

    def page() -> str:
        ask = urllib.request.Request(f.url + "/.well-known/fedd/status", headers={"Accept": "text/html"})
        with urllib.request.urlopen(ask, timeout=10) as r:
            return str(r.read().decode())

    def metrics() -> str:
        return str(urllib.request.urlopen(f.url + "/metrics", timeout=10).read().decode())

    # with workers, the page and /metrics add up the others' figures within a second
    html = wait_for(page, 5, "the failure on the status page", until=lambda h: "/dav/bad/abandoned.bin" in h)
    assert "<h2>Uploads</h2>" in html
    wait_for(metrics, 5, "4 failed uploads", until=lambda m: 'fedd_uploads_confirmed_total{outcome="failed"} 4.0' in m)


def test_a_notification_delivered_twice_gives_one_event(
    fed: tuple[Fedd, Consumer], rgw_exchange: str, tmp_path: Path
) -> None:
    f, consumer = fed
    rgw = Consumer(rgw_exchange)  # sees what RGW publishes, as fedd's queue does
    try:
        src = tmp_path / "twice.bin"
        src.write_bytes(b"twice\n" * 1000)
        run("curl", "-sS", "-f", "-L", "--max-time", "30", "-T", str(src), f.url + "/s3/up/twice.bin")
        notes = [body for _, _, body in rgw.take(1)]
        assert notes and notes[0]["Records"][0]["s3"]["object"]["key"] == "s3/up/twice.bin", notes
        ignored = f.status()["confirm"]["notifications_ignored"]
        conn = pika.BlockingConnection(pika.URLParameters(BROKER))
        conn.channel().basic_publish(rgw_exchange, "fedd-again", json.dumps(notes[0]).encode())  # redelivered
        conn.close()
        wait_for(lambda: f.status()["confirm"]["notifications_ignored"] > ignored, what="the duplicate ignored")
        got = outcomes(consumer, {"/s3/up/twice.bin"})
        wait_for(lambda: (lambda ev: ev["outbox_depth"] + ev["pending"] == 0)(f.status()["events"]), what="events sent")
        path = "/s3/up/twice.bin"
        got[path] += [e for e in drain(consumer) if e["payload"]["path"] == path and e["event_type"] != "put-redirect"]
        assert [e["event_type"] for e in got["/s3/up/twice.bin"]] == ["put-done"]
        assert "Traceback" not in f.log_text()
    finally:
        rgw.close()


def rabbitctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True).stdout


def rabbit_connection(connection_name: str) -> str:
    """The Erlang pid (as close_connection takes it) of the one connection with this connection_name."""
    mine = ["connection_name", "longstr", connection_name]
    listed = json.loads(rabbitctl("list_connections", "name", "client_properties", "--formatter", "json"))
    names = [str(c["name"]) for c in listed if mine in c["client_properties"]]
    assert len(names) == 1, listed
    for line in rabbitctl("list_connections", "pid", "name", "-q").splitlines():
        pid, _, name = line.partition("\t")
        if name == names[0]:
            return pid
    raise AssertionError(f"{names[0]} is gone")


def test_notifications_resume_after_the_broker_closed_the_connection(
    fed: tuple[Fedd, Consumer], tmp_path: Path
) -> None:
    f, consumer = fed
    status = f.status()
    # each process has its own connection (named with its pid): with workers, close the answering one's
    pid = status["workers"]["answered_by"]["pid"] if "workers" in status else f.proc.pid
    connection = rabbit_connection(f"fedd-{pid} rgw-notifications")
    before = status["confirm"]["rgw_notifications"]  # with workers, the counts of all of them
    rabbitctl("close_connection", connection, "test")
    wait_for(
        lambda: (lambda now: now["connected"] and now["connections"] == before["connections"] + 1)(
            f.status()["confirm"]["rgw_notifications"]
        ),
        what="consuming again on a new connection",
    )
    src = tmp_path / "after.bin"
    src.write_bytes(b"after the outage\n")
    run("curl", "-sS", "-f", "-L", "--max-time", "30", "-T", str(src), f.url + "/s3/up/after.bin")
    events = outcomes(consumer, {"/s3/up/after.bin"})["/s3/up/after.bin"]
    assert [(e["event_type"], e["payload"]["confirmed_by"]) for e in events] == [("put-done", "notification")]
    assert f.status()["confirm"]["rgw_notifications"]["failures"] == before["failures"]  # at the first try
    assert "Traceback" not in f.log_text()


def test_an_object_written_past_fedd_is_seen_at_once(fed: tuple[Fedd, Consumer], s3client: Any) -> None:
    f, _ = fed
    path = "/s3/past/direct.bin"

    def get() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status

    assert get() == 404  # and cached as missing for [locate] negative_ttl (30 s)
    ignored = f.status()["confirm"]["notifications_ignored"]
    s3client.put_object(Bucket=BUCKET, Key=path.lstrip("/"), Body=b"written directly to RGW\n")
    wait_for(lambda: f.status()["confirm"]["notifications_ignored"] > ignored, what="RGW's notification")
    assert get() == 302  # the notification dropped the cached 404

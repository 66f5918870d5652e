"""Popularity-driven replication (issue 17) through `twistd fedd` with real storage and clients.

A file lives only on Ceph RGW (S3, placed at CERN); Apache mod_dav (placed at DESY) is writable.
Clients at 127.0.0.2 are in a site range at DESY, clients at 127.0.0.3 in one at CERN. curl reads
with `--interface`; events are read by a RabbitMQ consumer; copies are checked on Apache itself.
Faults come from a small TCP proxy (ReplProxy) in front of Ceph (cut mid-copy) or Apache (a byte
flipped in uploads)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, dav_endpoint, free_port
from tests.test_events_rabbitmq import BROKER, Consumer, broker_up  # noqa: F401  (broker_up: a fixture)

BUCKET = "fedd-repl"
NEAR_DAV, NEAR_CEPH = "127.0.0.2", "127.0.0.3"
DESY, CERN = (53.5753, 9.8803), (46.2330, 6.0557)


class ReplProxy:
    """A TCP proxy to 127.0.0.1:`port`. `cut_after`: the next connection's answer is cut after that
    many bytes (once). `flip_puts`: in each PUT's stream, byte `flip_at` is inverted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut_after: int | None = None
        self.cuts = 0
        self.flip_puts = False
        self.flip_at = 4096
        self.flipped = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.listen_port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            cut, self.cut_after = self.cut_after, None
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, cut), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut: int | str | None) -> None:
        seen = 0
        put = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut == "up":
                    if seen == 0:
                        put = data.startswith(b"PUT ")
                    if put and self.flip_puts and seen <= self.flip_at < seen + len(data):
                        i = self.flip_at - seen
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                        self.flipped += 1
                elif isinstance(cut, int) and seen + len(data) > cut:
                    dst.sendall(data[: max(0, cut - seen)])
                    self.cuts += 1
                    break
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def stores(ceph: Any, s3client: Any, dav1: Any, broker_up: None) -> dict[str, Any]:  # noqa: F811
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    try:
        s3client.create_bucket(Bucket=BUCKET)
    except s3client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {"ceph": ceph, "s3": s3client, "dav": dav1}


def config(port: int, workdir: Path, stores: dict[str, Any], exchange: str, replicate: str, **urls: str) -> str:
    ceph = ceph_endpoint(stores["ceph"], BUCKET, map="/repl /repl", lat=CERN[0], lon=CERN[1])
    dav = dav_endpoint(stores["dav"], map="/repl /repl", write=True, lat=DESY[0], lon=DESY[1])
    if "ceph" in urls:  # through a ReplProxy
        ceph = ceph.replace(f"url = {stores['ceph'].url}", f"url = {urls['ceph']}")
    if "dav" in urls:
        dav = dav.replace(f"url = {stores['dav'].url}", f"url = {urls['dav']}")
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
negative_ttl = 0
[geo]
site = {NEAR_DAV}/32 {DESY[0]} {DESY[1]}
site = {NEAR_CEPH}/32 {CERN[0]} {CERN[1]}
[health]
interval = 2
timeout = 5
[space]
interval = 1
[state]
database = {workdir / "state.sqlite"}
poll_interval = 0.2
[events]
broker = {BROKER}
exchange = {exchange}
routing_prefix = fedd
flush_interval = 0.02
idle_interval = 0.2
[replicate]
enabled = yes
path = /repl
threshold = 3
window = 60
interval = 0.3
cooldown = 2
{replicate}
{ceph}{dav}"""


class Setup:
    def __init__(self, fed: Fedd, consumer: Consumer, stores: dict[str, Any]) -> None:
        self.fed = fed
        self.consumer = consumer
        self.stores = stores
        self.events: list[dict[str, Any]] = []

    def put_on_ceph(self, name: str, size: int) -> bytes:
        data = os.urandom(size)
        self.stores["s3"].put_object(Bucket=BUCKET, Key=f"repl/{name}", Body=data)
        return data

    def read(self, name: str, client: str, times: int = 1) -> str:
        """`times` GETs from `client` with curl (redirects not followed): the last Location."""
        out = ""
        for _ in range(times):
            result = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "--interface", client, "-w", "%{http_code} %{redirect_url}",
                 f"{self.fed.url}/repl/{name}"],
                capture_output=True, text=True, timeout=30, check=True,
            )
            code, _, out = result.stdout.partition(" ")
            assert code == "302", result.stdout
        return out

    def on_dav(self, name: str) -> Path:
        return Path(self.stores["dav"].docroot) / "repl" / name

    def dav_bytes(self, name: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"{self.stores['dav'].url}/repl/{name}", timeout=10) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def event(self, kind: str, name: str, timeout: float = 30) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.events += [body for _, _, body in self.consumer.take(1, timeout=0.2)]
            for e in self.events:
                if e["event_type"] == kind and e["payload"]["name"] == name:
                    return e["payload"]  # type: ignore[no-any-return]
            return None

        payload: dict[str, Any] = wait_for(found, timeout, f"a {kind} event for {name}", interval=0.05)
        return payload

    def replication(self, name: str | None = None) -> dict[str, Any]:
        query = f"?path=/repl/{name}" if name else ""
        with urllib.request.urlopen(f"{self.fed.url}/.well-known/fedd/replication{query}", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data


@pytest.fixture()
def make(stores: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[Fedd, Consumer]] = []

    def start(replicate: str = "", **urls: str) -> Setup:
        port = free_port()
        exchange = f"fedd-repl-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(exchange)
        workdir = tmp_path / f"fedd{len(started)}"
        fed = start_fedd(workdir, config(port, workdir, stores, exchange, replicate, **urls), port)
        started.append((fed, consumer))
        return Setup(fed, consumer, stores)

    yield start
    for fed, consumer in started:
        fed.stop()
        consumer.close()
        assert "Traceback" not in fed.log_text()


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def test_hot_file_is_copied_near_its_readers(make: Any) -> None:
    s = make()
    name = f"hot-{uuid.uuid4().hex[:8]}"
    data = s.put_on_ceph(name, 3 << 20)
    assert s.read(name, NEAR_DAV, times=3).startswith(s.stores["ceph"].url)
    created = s.event("replica-created", name)
    assert created["src-rse"] == "ceph" and created["dst-rse"] == "dav" and created["bytes"] == len(data)
    assert created["checksum-adler"] == adler(data) and created["scope"] == "repl"
    assert s.dav_bytes(name) == data  # on Apache itself: the same bytes, so the same adler32
    assert s.read(name, NEAR_DAV).startswith(s.stores["dav"].url)  # the readers' region: the copy
    assert s.read(name, NEAR_CEPH).startswith(s.stores["ceph"].url)  # elsewhere: still Ceph
    explained = s.replication(name)
    assert [r["endpoint"] for r in explained["replicas"]] == ["dav"] and explained["replicas"][0]["state"] == "done"
    assert "holds a replica" in explained["regions"][0]["reason"]
    status = s.fed.status()["replication"]
    assert status["bytes_per_endpoint"] == {"dav": len(data)} and status["copied"] == 1
    metrics = urllib.request.urlopen(f"{s.fed.url}/metrics", timeout=10).read().decode()
    used = re.search(r'^fedd_replicate_bytes\{endpoint="dav"\} (\S+)$', metrics, re.MULTILINE)
    assert used is not None and float(used.group(1)) == len(data)


def test_dry_run_copies_nothing_and_reports_each_decision(make: Any) -> None:
    s = make("dry_run = yes")
    name = f"dry-{uuid.uuid4().hex[:8]}"
    s.put_on_ceph(name, 1000)
    s.read(name, NEAR_DAV, times=3)
    s.read(name, NEAR_CEPH, times=3)

    def decisions() -> list[dict[str, Any]]:
        return [d for d in s.replication()["decisions"] if d["path"] == f"/repl/{name}"]

    both = wait_for(lambda: decisions(), 10, "two decisions", until=lambda d: len(d) == 2)
    by_region = {d["region"]: d for d in both}
    assert by_region["53.5753,9.8803"]["action"] == "copy" and by_region["53.5753,9.8803"]["target"] == "dav"
    assert by_region["46.2330,6.0557"]["action"] == "none"
    assert "as near" in by_region["46.2330,6.0557"]["reason"]
    said = f"dry run: /repl/{name} read 3 times from 53.5753,9.8803: would copy to dav"
    wait_for(lambda: said in s.fed.log_text(), 5, "the dry-run decision in the log")
    assert s.dav_bytes(name) is None and not s.on_dav(name).exists()
    assert s.fed.status()["replication"]["copied"] == 0

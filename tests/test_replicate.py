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
from functools import partial
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
    """A TCP proxy to 127.0.0.1:`port`. `cut_after`: the first answer that goes past that many bytes
    is cut there (once; whichever connection carries it: with workers, a worker's first HEAD opens a
    connection of its own). `flip_puts`: in each PUT's stream, byte `flip_at` is inverted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut_after: int | None = None
        self.cuts = 0
        self.flip_puts = False
        self.flip_at = 4096
        self.flipped = 0
        self.lock = threading.Lock()
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
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"), daemon=True).start()

    def _take_cut(self, seen: int, size: int) -> int | None:
        """The cut, if an answer at `seen` bytes receiving `size` more crosses it (taken once)."""
        with self.lock:
            cut = self.cut_after
            if cut is None or seen + size <= cut:
                return None
            self.cut_after = None
            return cut

    def _pipe(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        seen = 0
        put = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if way == "up":
                    if seen == 0:
                        put = data.startswith(b"PUT ")
                    if put and self.flip_puts and seen <= self.flip_at < seen + len(data):
                        i = self.flip_at - seen
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                        self.flipped += 1
                elif (cut := self._take_cut(seen, len(data))) is not None:
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


def config(
    port: int, database: Path, stores: dict[str, Any], exchange: str, replicate: str, swap: str, **urls: str
) -> str:
    """Ceph at CERN holds the files, Apache at DESY takes copies; `swap`: the other way round (with
    the `[endpoint ceph]` keys given in it)."""
    if swap:
        ceph = ceph_endpoint(stores["ceph"], BUCKET, map="/repl /repl", lat=DESY[0], lon=DESY[1], write=True)
        ceph += swap + "\n"
        dav = dav_endpoint(stores["dav"], map="/repl /repl", lat=CERN[0], lon=CERN[1])
    else:
        ceph = ceph_endpoint(stores["ceph"], BUCKET, map="/repl /repl", lat=CERN[0], lon=CERN[1])
        dav = dav_endpoint(stores["dav"], map="/repl /repl", write=True, lat=DESY[0], lon=DESY[1])
    if "ceph" in urls:  # through a ReplProxy
        ceph = ceph.replace(f"url = {stores['ceph'].url}", f"url = {urls['ceph']}")
    if "dav" in urls:
        dav = dav.replace(f"url = {stores['dav'].url}", f"url = {urls['dav']}")
    if "dav_keys" in urls:
        dav += urls["dav_keys"] + "\n"
    auth = ""
    if "access" in urls:  # access rules ([auth]), re-read every 0.2 s
        (database.parent / "access").write_text(urls["access"])
        auth = f"[auth]\naccess_file = {database.parent / 'access'}\nreload_interval = 0.2\n"
    return f"""{auth}
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
database = {database}
host_name = {database.parent.name}
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
{replicate if "cooldown" in replicate else replicate + chr(10) + "cooldown = 2"}
{ceph}{dav}"""


class Setup:
    def __init__(self, fed: Fedd, consumer: Consumer, stores: dict[str, Any], exchange: str, database: Path) -> None:
        self.exchange = exchange
        self.database = database
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
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "--interface",
                    client,
                    "-w",
                    "%{http_code} %{redirect_url}",
                    f"{self.fed.url}/repl/{name}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            code, _, out = result.stdout.partition(" ")
            assert code == "302", result.stdout
        return out

    def put_on_dav(self, name: str, size: int) -> bytes:
        """A file placed on Apache directly (not by fedd)."""
        data = os.urandom(size)
        folder = Path(self.stores["dav"].docroot) / "repl"
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o777)
        (folder / name).write_bytes(data)
        return data

    def on_ceph(self, name: str) -> bool:
        try:
            self.stores["s3"].head_object(Bucket=BUCKET, Key=f"repl/{name}")
            return True
        except self.stores["s3"].exceptions.ClientError:
            return False

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

    def start(replicate: str = "", swap: str = "", share: Setup | None = None, **urls: str) -> Setup:
        """A fedd; `share`: another one's state database and event exchange (a second host)."""
        port = free_port()
        exchange = share.exchange if share is not None else f"fedd-repl-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(exchange)
        workdir = tmp_path / f"fedd{len(started)}"
        workdir.mkdir()
        database = share.database if share is not None else workdir / "state.sqlite"
        fed = start_fedd(workdir, config(port, database, stores, exchange, replicate, swap, **urls), port)
        started.append((fed, consumer))
        return Setup(fed, consumer, stores, exchange, database)

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
    # with workers, the status adds up the copies of all of them within a second, and a worker that
    # did not copy reads the replicas table within an interval
    status = wait_for(
        lambda: s.fed.status()["replication"],
        5,
        "1 copy",
        until=lambda st: st["copied"] == 1 and st["bytes_per_endpoint"] == {"dav": len(data)},
    )
    assert status["bytes_per_endpoint"] == {"dav": len(data)}

    def fetch(path: str) -> str:
        return str(urllib.request.urlopen(f"{s.fed.url}{path}", timeout=10).read().decode())

    # the page and /metrics, like the status, show the other workers' figures of up to a second ago
    page = wait_for(
        lambda: fetch("/.well-known/fedd/status.html"), 5, "the copy on the page", until=lambda p: "1 copied" in p
    )
    assert "<h2>Replication</h2>" in page and f"/repl/{name}" in page and "1 copied" in page
    dav_bytes = re.compile(r'^fedd_replicate_bytes\{endpoint="dav"\} (\S+)$', re.MULTILINE)
    metrics = wait_for(lambda: fetch("/metrics"), 5, "the copy's bytes in /metrics", until=dav_bytes.search)
    used = dav_bytes.search(metrics)
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


def test_burst_of_hot_files_keeps_to_copies_at_once_and_budget(make: Any) -> None:
    size = 300_000
    s = make(f"copies = 2\nbudget = {5 * size}\ncooldown = 600")
    names = [f"burst{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for name in names:
        s.put_on_ceph(name, size)
    for name in names:
        s.read(name, NEAR_DAV, times=3)
    running_seen: list[int] = []

    def five_created() -> bool:
        status = s.fed.status()["replication"]
        running_seen.append(len(status["running"]))
        return bool(status["copied"] == 5)

    wait_for(five_created, 30, "5 copies (the budget)", interval=0.02)
    assert max(running_seen) <= 2
    waiting = wait_for(
        lambda: [d for d in s.replication()["decisions"] if "budget" in d["reason"]],
        5,
        "a round deciding on all 15 others: over the budget",
        until=lambda found: len(found) == 15,
    )
    assert len(waiting) == 15 and all(d["action"] == "none" for d in waiting)
    for _ in range(5):  # more rounds: still five, the hour's budget is spent
        s.replication()
    # with workers, a status answered by another than the copying worker reads its counters (up to 1 s old)
    status = wait_for(
        lambda: s.fed.status()["replication"],
        5,
        "5 copies",
        until=lambda st: st["copied"] == 5 and st["budget_left"] == 0,
    )
    assert status["copied"] == 5 and status["budget_left"] == 0
    assert sum(1 for n in names if s.on_dav(n).exists()) == 5


def test_cold_copy_is_evicted_and_a_file_fedd_did_not_copy_is_kept(make: Any) -> None:
    s = make("cold_after = 2\ncooldown = 600")
    name, theirs = f"cold-{uuid.uuid4().hex[:8]}", f"theirs-{uuid.uuid4().hex[:8]}"
    last = f"last-{uuid.uuid4().hex[:8]}"  # its original is deleted after the copy: the copy is all that is left
    kept = s.put_on_ceph(last, 2000)
    s.read(last, NEAR_DAV, times=3)
    s.event("replica-created", last)
    s.stores["s3"].delete_object(Bucket=BUCKET, Key=f"repl/{last}")
    data = s.put_on_ceph(name, 100_000)
    s.put_on_ceph(theirs, 1000)
    s.put_on_dav(theirs, 1000)  # on both: nothing to copy, and never fedd's to delete
    s.read(name, NEAR_DAV, times=3)
    s.read(theirs, NEAR_DAV, times=3)
    s.event("replica-created", name)
    assert s.dav_bytes(name) == data
    evicted = s.event("replica-evicted", name, timeout=15)
    assert evicted["dst-rse"] == "dav" and evicted["reason"].startswith("cold") and evicted["bytes"] == len(data)
    assert s.dav_bytes(name) is None and s.on_ceph(name)
    assert s.on_dav(theirs).exists()
    assert s.read(name, NEAR_DAV).startswith(s.stores["ceph"].url)
    assert not [e for e in s.events if e["event_type"].startswith("replica-") and e["payload"]["name"] == theirs]
    wait_for(lambda: f"/repl/{last} on dav not evicted (the only replica left" in s.fed.log_text(), 10, "kept")
    assert s.dav_bytes(last) == kept and not [
        e for e in s.events if e["event_type"] == "replica-evicted" and e["payload"]["name"] == last
    ]


def test_copies_are_evicted_when_the_endpoint_crosses_its_reserve(make: Any, stores: dict[str, Any]) -> None:
    s3 = stores["s3"]
    used = sum(
        o["Size"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    )
    mb = 1_000_000
    # Ceph (at DESY now) takes copies of files on Apache; the space reporter lists the bucket
    s = make(f"reserve = {1.5 * mb:.0f}\ncooldown = 600", swap=f"quota = {used + 3 * mb}\nspace_source = listing")
    name = f"reserve-{uuid.uuid4().hex[:8]}"
    s.put_on_dav(name, mb)
    s.read(name, NEAR_DAV, times=3)
    created = s.event("replica-created", name)
    assert created["dst-rse"] == "ceph" and s.on_ceph(name)
    s3.put_object(Bucket=BUCKET, Key=f"repl/filler-{name}", Body=os.urandom(mb))  # not fedd's
    evicted = s.event("replica-evicted", name, timeout=20)
    assert "reserve" in evicted["reason"] and evicted["dst-rse"] == "ceph"
    assert not s.on_ceph(name) and s.on_ceph(f"filler-{name}") and s.on_dav(name).exists()


def test_source_lost_mid_copy_removes_the_partial_copy_and_retries(make: Any, stores: dict[str, Any]) -> None:
    proxy = ReplProxy(int(stores["ceph"].url.rsplit(":", 1)[1]))
    try:
        s = make("", ceph=proxy.url)
        name = f"cut-{uuid.uuid4().hex[:8]}"
        data = s.put_on_ceph(name, 4 << 20)
        proxy.cut_after = 1 << 20
        s.read(name, NEAR_DAV, times=3)
        failed = s.event("replica-failed", name)
        assert proxy.cuts == 1 and failed["dst-rse"] == "dav" and failed["dst-url"] is None
        assert s.dav_bytes(name) is None  # the partial copy was removed (cooldown 2 s: not retried yet)
        created = s.event("replica-created", name, timeout=20)  # retried after the cool-down
        assert created["checksum-adler"] == adler(data) and s.dav_bytes(name) == data
    finally:
        proxy.close()


def test_a_target_that_corrupts_data_gets_no_copy(make: Any, stores: dict[str, Any]) -> None:
    proxy = ReplProxy(int(stores["dav"].url.rsplit(":", 1)[1]))
    proxy.flip_puts = True
    try:
        s = make("cooldown = 600", dav=proxy.url)
        name = f"flip-{uuid.uuid4().hex[:8]}"
        s.put_on_ceph(name, 200_000)
        s.read(name, NEAR_DAV, times=3)
        failed = s.event("replica-failed", name)
        assert proxy.flipped >= 1 and "checksum mismatch" in failed["reason"]
        assert s.dav_bytes(name) is None  # discarded
        assert s.read(name, NEAR_DAV).startswith(s.stores["ceph"].url)
        assert [r["state"] for r in s.replication(name)["replicas"]] == ["failed"]
    finally:
        proxy.close()


def test_two_hosts_add_up_their_reads_and_copy_once(make: Any) -> None:
    a = make()
    b = make(share=a)  # same state database and exchange, host name fedd1
    name = f"shared-{uuid.uuid4().hex[:8]}"
    data = a.put_on_ceph(name, 500_000)
    a.read(name, NEAR_DAV, times=2)
    b.read(name, NEAR_DAV, times=1)  # neither host alone reached the threshold (3)
    created = a.event("replica-created", name)
    assert created["bytes"] == len(data) and a.dav_bytes(name) == data
    dav_url = a.stores["dav"].url

    def to_copy(host: Setup) -> bool:
        return host.read(name, NEAR_DAV).startswith(dav_url)

    for host in (a, b):  # whichever made the copy, both redirect there within a round or two
        wait_for(partial(to_copy, host), 5, "a redirect to the copy")
    for _ in range(10):  # a few more rounds on both hosts: still one copy, made by one of them
        a.replication(name)
    replicas = a.replication(name)["replicas"]
    assert len(replicas) == 1 and replicas[0]["host"] in ("fedd0", "fedd1")
    a.events += [body for _, _, body in a.consumer.take(1000, timeout=1.0)]
    assert len([e for e in a.events if e["event_type"] == "replica-created"]) == 1


def test_placement_rules_hold_for_copies(make: Any) -> None:
    s = make(dav_keys="downtime = 2020-01-01T00:00Z 2099-01-01T00:00Z write disk replacement")
    name = f"downtime-{uuid.uuid4().hex[:8]}"
    s.put_on_ceph(name, 1000)
    s.read(name, NEAR_DAV, times=3)
    regions = wait_for(  # with workers, each flushes its reads to the state: wait for all 3
        lambda: s.replication(name)["regions"], 10, "a decision", until=lambda r: r and r[0]["reads"] == 3
    )
    assert regions[0]["action"] == "none" and "no endpoint may receive a copy: dav:" in regions[0]["reason"]
    assert "disk replacement" in regions[0]["reason"]
    assert s.dav_bytes(name) is None and s.fed.status()["replication"]["copied"] == 0


def test_the_explanation_is_authorised_like_the_status(make: Any) -> None:
    s = make(access="/repl anonymous rl\n")
    name = f"authz-{uuid.uuid4().hex[:8]}"
    s.put_on_ceph(name, 1000)
    s.read(name, NEAR_DAV, times=3)  # reads are allowed (and counted)
    with pytest.raises(urllib.error.HTTPError) as refused:
        s.replication(name)
    assert refused.value.code in (401, 403)
    (s.fed.config.parent / "access").write_text("/repl anonymous rl\n/.well-known/fedd/replication anonymous r\n")
    explained = wait_for(
        lambda: s.replication(name),
        5,
        "the rule to apply and the reads counted",  # with workers, each flushes its reads to the state
        ignore=(urllib.error.HTTPError,),
        until=lambda e: e["regions"] and e["regions"][0]["reads"] == 3,
    )
    assert explained["path"] == f"/repl/{name}"

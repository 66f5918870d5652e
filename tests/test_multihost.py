"""Several fedd hosts behind HAProxy, sharing state on PostgreSQL and caches on memcached (issue 16).

Each simulated host is its own `twistd fedd` on its own loopback address (127.0.0.2, 127.0.0.3, ...)
with its own working directory: nothing is shared through local files. HAProxy (Debian's) is in front
on 127.0.0.1, checking `/.well-known/fedd/health`; one memcached; PostgreSQL: a fresh database on the
machine's server, and for the outage a private server (initdb/pg_ctl) that the test stops for 20 s.
Ceph RGW (writable) and Apache mod_dav are the endpoints behind.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import pgservers
from tests.daemon import env, twistd_command, wait_for
from tests.load import Load, summary
from tests.servers import SECRET_ENV, Memcached, ceph_endpoint, dav_endpoint, free_port, start_memcached

BUCKET = "fedd-multihost"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Host:
    """One simulated fedd host: its address, port, working directory and twistd process."""

    name: str
    address: str
    port: int
    workdir: Path
    config: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Host:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "fedd.conf").write_text(self.config)
        self.proc = subprocess.Popen(
            twistd_command("--config", str(self.workdir / "fedd.conf")),
            stdout=(self.workdir / "fedd.log").open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env(),
        )

        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return self.health() == 200

        wait_for(serving, 30, f"host {self.name} to serve", interval=0.05, ignore=(OSError,))
        return self

    def log(self) -> str:
        return (self.workdir / "fedd.log").read_text(errors="replace")

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()

    def health(self) -> int:
        return self.request("GET", "/.well-known/fedd/health")[0]

    def status(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=30)
        try:
            conn.request("GET", "/.well-known/fedd/status")
            return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
        finally:
            conn.close()

    def downtime(self, endpoint: str, scope: str, reason: str) -> str:
        body = json.dumps({"endpoint": endpoint, "duration": 600, "scope": scope, "reason": reason})
        conn = http.client.HTTPConnection(self.address, self.port, timeout=30)
        try:
            conn.request("POST", "/.well-known/fedd/downtimes", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == 201, data
            return str(json.loads(data)["id"])
        finally:
            conn.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def host_config(name: str, address: str, port: int, database: str, memcached: int, endpoints: str) -> str:
    return f"""
[server]
listen = tcp:{port}:interface={address}
drain_notice = 1.5
drain_timeout = 5
[locate]
memcached = 127.0.0.1:{memcached}
[health]
interval = 1
timeout = 3
failures_to_offline = 2
successes_to_online = 1
[checksums]
wait = 0
[state]
database = {database}
host_name = {name}
poll_interval = 0.5
heartbeat_interval = 1
timeout = 3
{endpoints}"""


def haproxy_config(port: int, servers: list[Host]) -> str:
    """The shipped example (packaging/haproxy/fedd.cfg) with this test's addresses."""
    text = (REPO / "packaging" / "haproxy" / "fedd.cfg").read_text()
    text = text.replace("bind :80", f"bind 127.0.0.1:{port}")
    lines = [line for line in text.splitlines() if not line.strip().startswith("server ")]
    lines += [f"    server {h.name} {h.address}:{h.port} check" for h in servers]
    return "\n".join(lines) + "\n"


@dataclass
class HAProxy:
    port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_haproxy(workdir: Path, servers: list[Host]) -> HAProxy:
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, servers))
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)], stdout=(workdir / "haproxy.log").open("ab"), stderr=subprocess.STDOUT
    )
    from tests.servers import wait_for_port

    wait_for_port(port, 10, proc)
    return HAProxy(port, proc)


@dataclass
class Cluster:
    a: Host
    b: Host
    haproxy: HAProxy
    database: str


@pytest.fixture(scope="module")
def memcached_one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memcached]:
    mc = start_memcached(tmp_path_factory.mktemp("mh-memcached"))
    try:
        yield mc
    finally:
        mc.stop()


@pytest.fixture(scope="module")
def endpoints(ceph: Any, s3client: Any, dav1: Any) -> str:
    os.environ[SECRET_ENV] = ceph.secret_key
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="atlas/mh/both.bin", Body=b"both\n" * 100)
    dav_dir = Path(dav1.docroot) / "atlas" / "mh"
    dav_dir.mkdir(parents=True, exist_ok=True)
    (dav_dir / "both.bin").write_bytes(b"both\n" * 100)
    (dav_dir / "davonly.bin").write_bytes(b"only on apache\n" * 1000)
    subprocess.run(["chown", "-R", "www-data:www-data", str(dav_dir)], check=True)
    return ceph_endpoint(ceph, BUCKET, write=True, timeout=3) + dav_endpoint(dav1, timeout=3)


@pytest.fixture(scope="module")
def cluster(endpoints: str, memcached_one: Memcached, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    database = pgservers.create_database()
    work = tmp_path_factory.mktemp("multihost")
    hosts = []
    for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
        port = free_port()
        config = host_config(name, address, port, database, memcached_one.port, endpoints)
        hosts.append(Host(name, address, port, work / name, config))
    haproxy = None
    try:
        for h in hosts:
            h.start()
        haproxy = start_haproxy(work, hosts)
        yield Cluster(hosts[0], hosts[1], haproxy, database)
    finally:
        if haproxy is not None:
            haproxy.stop()
        for h in hosts:
            h.stop()
        pgservers.drop_database(database)
        for h in hosts:
            assert "Traceback" not in h.log(), h.log()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True, timeout=60)


def test_status_shows_the_host_and_what_is_shared(cluster: Cluster) -> None:
    a = cluster.a.status()
    assert a["fedd"]["host"] == "a" and a["state"]["host"] == "a" and a["state"]["reachable"]
    assert a["fedd"]["shared"]["database"].startswith("postgresql://") and a["fedd"]["shared"]["memcached"]
    wait_for(lambda: [h["host"] for h in cluster.a.status()["state"]["hosts"]] == ["a", "b"], 10, "a to see b")
    page = curl(f"http://{cluster.a.address}:{cluster.a.port}/.well-known/fedd/status.html").stdout
    assert "Hosts and shared state" in page and "a (this one)" in page


def test_written_through_a_is_read_through_b_at_once(cluster: Cluster, tmp_path: Path) -> None:
    path = "/atlas/mh/written.bin"
    assert cluster.b.request("GET", path)[0] == 404  # b caches the miss
    src = tmp_path / "f"
    src.write_bytes(b"new bytes\n" * 100)
    a_url = f"http://{cluster.a.address}:{cluster.a.port}{path}"
    out = curl("-L", "-T", str(src), "-w", "%{http_code}", "-o", "/dev/null", a_url)
    assert out.stdout == "201" or out.stdout == "200", out
    status, headers = cluster.b.request("GET", path)
    assert status == 302, (status, headers)


def test_checksum_computed_on_a_is_answered_by_b_from_the_store(cluster: Cluster) -> None:
    path = "/atlas/mh/davonly.bin"
    want = {"Want-Digest": "adler32", "Prefer": "wait=30"}
    status, headers = cluster.a.request("HEAD", path, want)
    assert status == 200 and headers.get("digest", "").startswith("adler32="), headers
    # (with workers, the worker that computed it may not be the one answering: its count within 1 s)
    wait_for(lambda: cluster.a.status()["checksums"]["computed"], 5, "a's computed count", until=(1).__eq__)
    wait_for(lambda: cluster.a.status()["state"]["queued"] == 0, 10, "a's write to reach the database")
    status, got = cluster.b.request("HEAD", path, {"Want-Digest": "adler32"})  # no wait: from the store
    assert status == 200 and got.get("digest") == headers["digest"], got
    assert cluster.b.status()["checksums"]["computed"] == 0


def test_downtime_declared_on_a_applies_on_b_within_2s_and_survives_restarts(cluster: Cluster) -> None:
    path = "/atlas/mh/davonly.bin"
    assert cluster.b.request("GET", path)[0] == 302
    declared = cluster.a.downtime("dav", "all", "multihost test")
    began = time.monotonic()
    wait_for(lambda: cluster.b.request("GET", path)[0] == 503, 2.0, "b to apply a's downtime", interval=0.05)
    print("DOWNTIME_PROPAGATION_SECONDS", round(time.monotonic() - began, 3))
    for h in (cluster.a, cluster.b):
        h.stop()
    for h in (cluster.a, cluster.b):
        h.start()  # returns once its health says 200: it has read the shared downtimes
    for h in (cluster.a, cluster.b):
        assert h.request("GET", path)[0] == 503, f"{h.name} forgot the downtime in its restart"
    # removed through b: a serves the file again
    status, _ = cluster.b.request("DELETE", f"/.well-known/fedd/downtimes/{declared}")
    assert status == 204
    wait_for(lambda: cluster.a.request("GET", path)[0] == 302, 2.0, "a to drop it", interval=0.05)


def haproxy_sees_both(cluster: Cluster) -> bool:
    """Both hosts answered through HAProxy (round robin: two answers from two hosts)."""
    seen = set()
    for _ in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", cluster.haproxy.port, timeout=10)
        conn.request("GET", "/.well-known/fedd/status")
        seen.add(json.loads(conn.getresponse().read())["fedd"]["host"])
        conn.close()
    return seen == {"a", "b"}


def test_sigkill_a_then_sigterm_b_under_load_through_haproxy(cluster: Cluster) -> None:
    paths = ["/atlas/mh/both.bin", "/atlas/mh/davonly.bin"]
    wait_for(lambda: haproxy_sees_both(cluster), 10, "haproxy to send to both hosts")
    load = Load(cluster.haproxy.port, paths, 16, 40).start()
    try:
        wait_for(lambda: len(load.answers) > 300, 20, "the load running")
        cluster.a.signal(signal.SIGKILL)
        cluster.a.wait(10)
        killed = time.monotonic()
        wait_for(lambda: sum(1 for x in load.answers if x.at > killed + 1) > 300, 20, "answers after the kill")
        cluster.a.start()
        wait_for(lambda: haproxy_sees_both(cluster), 10, "haproxy to send to a again")
        restarted = time.monotonic()
        wait_for(lambda: sum(1 for x in load.answers if x.at > restarted) > 300, 20, "answers with a back")
        cluster.b.signal(signal.SIGTERM)
        wait_for(lambda: cluster.b.health() == 503, 2, "b's health to say 503 while it drains", interval=0.02)
        assert cluster.b.wait(20) == 0
        termed = time.monotonic()
        wait_for(lambda: sum(1 for x in load.answers if x.at > termed) > 300, 20, "answers after b left")
    finally:
        load.stop()
    answers = load.join()
    counts = summary(answers)
    print("MULTIHOST_LOAD", json.dumps({p: dict(c) for p, c in counts.items()}))
    assert {x.status for x in answers} == {302}, counts
    cluster.b.start()


def test_postgresql_stopped_20s_under_load(
    endpoints: str, memcached_one: Memcached, dav1: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Redirects go on while PostgreSQL is down; a downtime declared and a checksum computed during
    the outage are in the database once it is back, and the other host applies the downtime. A host
    stopped during the outage saves what it queued and writes it after its restart."""
    pg = pgservers.start_private_postgres()
    work = tmp_path_factory.mktemp("mh-outage")
    hosts: list[Host] = []
    haproxy = None
    fresh = Path(dav1.docroot) / "atlas" / "mh" / "outage.bin"
    fresh.write_bytes(b"hashed during the outage\n" * 1000)
    try:
        database = pgservers.create_database(pg.url)
        for name, address in (("c", "127.0.0.4"), ("d", "127.0.0.5")):
            port = free_port()
            config = host_config(name, address, port, database, memcached_one.port, endpoints)
            hosts.append(Host(name, address, port, work / name, config).start())
        c, d = hosts
        haproxy = start_haproxy(work, hosts)
        wait_for(lambda: len(c.status()["state"]["hosts"]) == 2, 10, "both hosts in the database")
        load = Load(haproxy.port, ["/atlas/mh/both.bin"], 8, 90).start()
        try:
            wait_for(lambda: len(load.answers) > 200, 20, "the load running")
            pg.stop()
            stopped = time.monotonic()
            wait_for(lambda: c.status()["state"]["reachable"] is False, 10, "c to notice the outage")
            declared = c.downtime("ceph", "write", "declared during the outage")
            status, headers = c.request("HEAD", "/atlas/mh/outage.bin", {"Want-Digest": "adler32", "Prefer": "wait=30"})
            assert status == 200 and headers.get("digest", "").startswith("adler32="), headers
            # the two writes wait in the queues of c's workers (summed in the status within a second)
            wait_for(lambda: c.status()["state"]["queued"], 5, "c's queued writes", until=lambda n: n >= 2)
            on_d = d.downtime("dav", "write", "declared on d, which then stops")
            time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))  # the outage lasts 20 s: nothing to await
            during = [x for x in load.answers if x.at > stopped]
        finally:
            load.stop()
        answers = load.join()
        d.stop()  # SIGTERM while the database is still down
        assert "saved to" in d.log() and d.proc is not None and d.proc.returncode == 0, d.log()
        pg.start()
        restarted = time.monotonic()
        wait_for(lambda: c.status()["state"]["queued"] == 0 and c.status()["state"]["reachable"], 20, "c to write")
        print("PG_OUTAGE_CATCH_UP_SECONDS", round(time.monotonic() - restarted, 2))
        d.start()
        wait_for(lambda: any(x["id"] == declared for x in d.status()["downtimes"]), 5, "d to apply the downtime")
        wait_for(lambda: any(x["id"] == on_d for x in c.status()["downtimes"]), 10, "c to get d's saved downtime")
        assert "queued again" in d.log(), d.log()
        assert pgservers.query(database, f"SELECT endpoint FROM downtimes WHERE id = '{on_d}'") == [["dav"]]
        counts = summary(answers)
        print("PG_OUTAGE_LOAD", json.dumps({p: dict(n) for p, n in counts.items()}), "during:", len(during))
        assert len(during) > 500 and {x.status for x in answers} == {302}, counts
        rows = pgservers.query(f"{database}", "SELECT algorithm FROM checksums WHERE path = '/atlas/mh/outage.bin'")
        assert ["adler32"] in rows, rows
        assert pgservers.query(database, f"SELECT endpoint FROM downtimes WHERE id = '{declared}'") == [["ceph"]]
        state = c.status()["state"]
        assert state["outages"] == 1 and state["dropped"] == 0, state
        assert c.log().count("unreachable") == 1  # said once per outage
    finally:
        if haproxy is not None:
            haproxy.stop()
        for h in hosts:
            h.stop()
        pg.destroy()
        fresh.unlink()
        for h in hosts:
            assert "Traceback" not in h.log(), h.log()

"""`[server] workers = 2` with real `twistd fedd` processes (issue 14).

One fedd (a supervisor and two workers) over a local directory and a counting HTTP endpoint (a
small threaded server that counts health probes, HEAD on /probe, and space measurements,
PROPFIND): both workers answer; a SIGKILLed worker is started again while a keep-alive load sees
no failed request; SIGHUP reloads every worker; /metrics adds up both workers; the endpoint is
probed and measured once per interval for the host, and a result reaches the other worker within a
second; SIGTERM drains a request in flight in every worker and ends all processes.

About "no failed request": a keep-alive connection held by the killed worker is reset. HTTP lets a
client resend an idempotent request on a connection that closed before any answer (RFC 9110 9.2.2;
urllib3, curl and browsers do); the load here does that once per request, counts the resends, and
counts as failed only a request whose resend failed too.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

INTERVAL = 1.0  # [health] and [space] interval of the fedd under test
HELD_BODY = b"a replica whose GET waits for the test\n" * 1000


class Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.probes: list[float] = []
        self.measures: list[float] = []
        self.failing = False
        self.slow_head = 0.0  # seconds a HEAD of /slow-* waits before its answer
        self.slow_heads = 0  # HEADs of /slow-* that arrived
        self.held = threading.Event()  # a GET of /held-* is answered once this is set (or after 30 s)
        self.held_gets = 0  # GETs of /held-* that arrived
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Counting
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if body == HELD_BODY:
            self.send_header("ETag", '"held-1"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        if self.path == "/probe":
            with self.server.lock:
                self.server.probes.append(time.monotonic())
            self._answer(503 if self.server.failing else 200)
        elif self.path.startswith("/slow-"):
            with self.server.lock:
                self.server.slow_heads += 1
            time.sleep(self.server.slow_head)
            self._answer(200, extra={"Content-Length": "5"})
        elif self.path.startswith("/held-"):
            self._answer(200, HELD_BODY)
        else:
            self._answer(404)

    def do_GET(self) -> None:
        if not self.path.startswith("/held-"):
            self._answer(404)
            return
        with self.server.lock:
            self.server.held_gets += 1
        self.server.held.wait(30)
        self._answer(200, HELD_BODY)

    def do_PROPFIND(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.measures.append(time.monotonic())
        body = (
            b'<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/</D:href><D:propstat>'
            b"<D:prop><D:quota-used-bytes>10</D:quota-used-bytes><D:quota-available-bytes>90"
            b"</D:quota-available-bytes></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
            b"</D:response></D:multistatus>"
        )
        self._answer(207, body, {"Content-Type": "application/xml"})


def config_text(port: int, base: Path, dav: Counting, extra: str = "") -> str:
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
workers = 2
drain_timeout = 10
[health]
interval = {INTERVAL}
failures_to_offline = 1
successes_to_online = 1
[space]
interval = {INTERVAL}
[endpoint files]
kind = local
path = {base / "files"}
map = /data /
[endpoint counted]
kind = dav
url = {dav.url}
health_path = /probe
space_source = rfc4331
map = /dav /
{extra}"""


@dataclass
class Setup:
    fedd: Fedd
    dav: Counting
    base: Path
    port: int
    seen: dict[int, dict[str, Any]] = field(default_factory=dict)


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def status(port: int) -> dict[str, Any]:
    code, _, body = get(port, "/.well-known/fedd/status")
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def per_worker(port: int, want: set[int], check: Any, what: str, timeout: float = 15.0) -> dict[int, Any]:
    """Ask the status on new connections until every worker in `want` has answered with a status
    for which `check(status)` holds; {worker index: that status}."""
    found: dict[int, Any] = {}

    def poll() -> bool:
        data = status(port)
        index = data["workers"]["answered_by"]["index"]
        if index not in found and check(data):
            found[index] = data
        return want <= set(found)

    wait_for(poll, timeout, what, interval=0.02)
    return found


@contextmanager
def running(base: Path) -> Iterator[Setup]:
    """A two-worker fedd over `base`/files and a Counting DAV server, stopped at the end."""
    dav = Counting()
    threading.Thread(target=dav.serve_forever, daemon=True).start()
    port = free_port()
    fedd = start_fedd(base / "run", config_text(port, base, dav), port)
    try:
        yield Setup(fedd, dav, base, port)
    finally:
        fedd.stop()
        dav.shutdown()
        dav.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("workers")
    (base / "files").mkdir()
    (base / "files" / "a.txt").write_text("hello from a worker\n")
    with running(base) as s:
        yield s


def worker_pids(fedd_status: dict[str, Any]) -> dict[int, int]:
    return {w["index"]: w["pid"] for w in fedd_status["workers"]["workers"] if w["pid"]}


def test_two_workers_answer(setup: Setup) -> None:
    seen = per_worker(setup.port, {0, 1}, lambda s: True, "both workers to answer the status")
    pids = worker_pids(seen[0])
    assert sorted(pids) == [0, 1] and seen[0]["workers"]["count"] == 2
    assert {i: s["workers"]["answered_by"]["pid"] for i, s in seen.items()} == pids
    assert setup.fedd.proc.pid not in pids.values()  # the supervisor serves nothing itself
    code, headers, _ = get(setup.port, "/data/a.txt")
    assert code == 302 and headers["location"].endswith("/a.txt")
    assert "[worker-0 fedd" in setup.fedd.log_text() and "[worker-1 fedd" in setup.fedd.log_text()  # one log


def redirects_total(port: int) -> float:
    _, _, body = get(port, "/metrics")
    match = re.search(rb'^fedd_requests_total\{method="GET",status="302"\} ([0-9.e+]+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


def run_dir(setup: Setup) -> Path:
    match = re.search(r"run directory (\S+)\)", setup.fedd.log_text())
    assert match, setup.fedd.log_text()
    return Path(match.group(1))


def counters_written(setup: Setup) -> None:
    """Wait until every worker has written its counters after now (they do every second)."""
    since = time.time()
    live = worker_pids(status(setup.port)).values()

    def written() -> bool:
        files = [run_dir(setup) / f"counters-{pid}.json" for pid in live]
        return all(f.exists() and f.stat().st_mtime > since for f in files)

    wait_for(written, 5, "both workers to write their counters")


def test_metrics_add_up_across_workers(setup: Setup) -> None:
    counters_written(setup)
    before = redirects_total(setup.port)
    pids = worker_pids(status(setup.port))
    # The kernel hands a shared socket's connections to whichever worker accepts first, so an
    # idle machine may give them all to one. Pause each worker in turn (SIGSTOP): the other one
    # must take all 20 redirects, and both counters then hold some of the 40.
    for paused, serving in ((0, 1), (1, 0)):
        os.kill(pids[paused], signal.SIGSTOP)
        try:
            for _ in range(20):
                code, _, _ = get(setup.port, "/data/a.txt")
                assert code == 302
            assert status(setup.port)["workers"]["answered_by"]["index"] == serving
        finally:
            os.kill(pids[paused], signal.SIGCONT)
    # every worker writes its counters each second; any scrape adds them all up
    counters_written(setup)
    for _ in range(6):  # whichever worker answers the scrape
        assert redirects_total(setup.port) == before + 40


def test_every_worker_appends_to_the_one_event_spool(setup: Setup) -> None:
    """One spool per host (a consumer follows one file); each worker its own outbox and journal."""
    for _ in range(20):
        assert get(setup.port, "/data/a.txt")[0] == 302
    cwd = setup.fedd.config.parent
    spool = cwd / "fedd-events.jsonl"

    def events() -> list[dict[str, Any]]:
        # every line whole: a batch is one locked write (fedd.events.spoolfile)
        return [json.loads(line) for line in spool.read_text().splitlines()] if spool.exists() else []

    def writers(kind: str) -> set[str]:
        return {e["id"][:16] for e in events() if e["event_type"] == kind}  # an id starts with its process's seed

    def redirected_by() -> set[str]:
        assert get(setup.port, "/data/a.txt")[0] == 302  # more requests until both workers took some
        return writers("get-redirect")

    # the kernel hands the connections to both workers: both write redirects to the one file
    wait_for(redirected_by, 20, "both workers' redirects in the spool", until=lambda w: len(w) == 2)
    assert not list(cwd.glob("*.worker-*.jsonl*"))
    # endpoint transitions and space reports come from the worker that probes and measures
    wait_for(lambda: writers("endpoint-online") and writers("quota-report"), 5, "worker 0's probe and measure events")
    assert len(writers("endpoint-online") | writers("quota-report")) == 1


def test_probed_and_measured_once_per_interval(setup: Setup) -> None:
    dav = setup.dav
    start = time.monotonic()
    with dav.lock:
        probes_before, measures_before = len(dav.probes), len(dav.measures)
    wait_for(lambda: len(dav.probes) - probes_before, 10, "4 probe rounds", until=lambda n: n >= 4)
    elapsed = time.monotonic() - start
    with dav.lock:
        probes = len(dav.probes) - probes_before
        measures = len(dav.measures) - measures_before
    rounds = elapsed / INTERVAL
    # two workers probing on their own would make about 2 x rounds
    assert probes <= rounds + 1.5, (probes, elapsed)
    assert measures <= rounds + 1.5, (measures, elapsed)
    # both workers show the space the one measurement found
    spaces = per_worker(
        setup.port, {0, 1}, lambda s: s["space"]["counted"]["used"] == 10, "both workers to show the measured space"
    )
    assert all(s["space"]["counted"]["free"] == 90 for s in spaces.values())


def test_probe_result_reaches_every_worker_within_a_second(setup: Setup) -> None:
    def state(s: dict[str, Any]) -> str:
        return str(s["endpoints"]["counted"]["health"]["state"])

    def answers() -> set[int]:  # on new connections: both workers answer some
        return {get(setup.port, "/dav/slow-w.bin")[0] for _ in range(20)}

    per_worker(setup.port, {0, 1}, lambda s: state(s) == "online", "both workers to see the endpoint online")
    assert answers() == {302}
    setup.dav.failing = True
    try:
        offline = per_worker(setup.port, {0, 1}, lambda s: state(s) == "offline", "both workers to see it offline")
        assert answers() == {503}  # its one replica is on an endpoint known to be out, on every worker
        checked = {i: s["endpoints"]["counted"]["health"]["last_check"] for i, s in offline.items()}
        now = {i: s["fedd"]["now"] for i, s in offline.items()}
        # the failed probe was made once (by the leader); the other worker saw its result within 1 s
        assert checked[0] == checked[1]
        assert now[1] - checked[1] < 1.0 + 0.3, (now, checked)  # + the status poll's own pace
    finally:
        setup.dav.failing = False
    per_worker(setup.port, {0, 1}, lambda s: state(s) == "online", "both workers to see it online again")
    assert answers() == {302}


def head(port: int, path: str, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("HEAD", path, headers={"Connection": "close", **headers})
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_a_wait_for_the_other_workers_checksum_of_other_algorithms_ends_with_the_value(setup: Setup) -> None:
    """A client of worker 1 waits (Prefer: wait) for SHA-256 while worker 0 computes the same
    replica's MD5 and Adler-32: once worker 0's computation ends without SHA-256, worker 1 computes it
    and answers 200 with it (was: 202 as soon as worker 0 ended, the client's wait not over)."""
    dav = setup.dav
    pids = worker_pids(status(setup.port))
    dav.held.clear()
    gets = dav.held_gets
    os.kill(pids[1], signal.SIGSTOP)  # the MD5 request goes to worker 0
    try:
        code, _ = head(setup.port, "/dav/held-1.bin", {"Want-Digest": "MD5"})
        assert code == 202  # computing: its GET waits for dav.held
    finally:
        os.kill(pids[1], signal.SIGCONT)
    wait_for(lambda: dav.held_gets - gets, 10, "worker 0's GET of the replica", until=lambda n: n == 1)
    answers: list[tuple[int, dict[str, str]]] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            head(setup.port, "/dav/held-1.bin", {"Want-Repr-Digest": "sha-256=1", "Prefer": "wait=20"})
        )
    )
    os.kill(pids[0], signal.SIGSTOP)  # the SHA-256 request and the status go to worker 1
    try:
        waiting.start()
        wait_for(
            lambda: status(setup.port)["checksums"]["waiting_elsewhere"],
            10,
            "worker 1's client to wait for worker 0's computation",
            until=lambda n: n == 1,
        )
    finally:
        os.kill(pids[0], signal.SIGCONT)
    dav.held.set()  # worker 0 computes MD5 and Adler-32, stores them, releases its claim
    waiting.join(30)
    code, headers = answers[0]
    assert code == 200, headers
    assert headers["repr-digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(HELD_BODY).digest()).decode()}:"
    assert dav.held_gets - gets == 2  # MD5 and Adler-32 by worker 0, then SHA-256 by worker 1


def retrying_load(
    port: int, path: str, connections: int, stop: threading.Event
) -> tuple[list[int], list[str], list[threading.Thread]]:
    """Keep-alive GETs; a request whose connection fails before its answer is sent once more on a
    new connection. (statuses, resends, threads); status 0: the resend failed too."""
    statuses: list[int] = []
    resends: list[str] = []

    def reader() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            for attempt in (1, 2):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("GET", path)
                    r = conn.getresponse()
                    r.read()
                    statuses.append(r.status)
                    break
                except (OSError, http.client.HTTPException) as exc:
                    if conn is not None:
                        conn.close()
                    conn = None
                    if attempt == 2:
                        statuses.append(0)
                    else:
                        resends.append(f"{type(exc).__name__}: {exc}")
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    return statuses, resends, threads


def test_killed_worker_is_restarted_and_no_request_fails(setup: Setup) -> None:
    pids = worker_pids(status(setup.port))
    victim = pids[1]
    stop = threading.Event()
    statuses, resends, threads = retrying_load(setup.port, "/data/a.txt", 8, stop)
    try:
        wait_for(lambda: len(statuses), 10, "the load to run", until=lambda n: n >= 200)
        os.kill(victim, signal.SIGKILL)
        at_kill = len(statuses)
        replaced = wait_for(
            lambda: worker_pids(status(setup.port)).get(1),
            10,
            "worker 1 to be started again",
            until=lambda p: p and p != victim,
        )
        wait_for(lambda: len(statuses) - at_kill, 10, "the load to go on", until=lambda n: n >= 300)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert statuses.count(0) == 0, resends
    assert set(statuses) == {302}
    assert len(resends) <= 8  # at most the connections the killed worker held, once each
    assert replaced != victim
    assert f"worker 1 (pid {victim}) ended (signal 9)" in setup.fedd.log_text()
    per_worker(setup.port, {0, 1}, lambda s: True, "both workers to answer after the restart")


def test_sighup_reloads_every_worker(setup: Setup) -> None:
    (setup.base / "more").mkdir(exist_ok=True)
    (setup.base / "more" / "b.txt").write_text("added by a reload\n")
    extra = f"[endpoint more]\nkind = local\npath = {setup.base / 'more'}\nmap = /more /\n"
    setup.fedd.config.write_text(config_text(setup.port, setup.base, setup.dav, extra))
    pids = worker_pids(status(setup.port))
    os.kill(setup.fedd.proc.pid, signal.SIGHUP)
    per_worker(setup.port, {0, 1}, lambda s: "more" in s["endpoints"], "both workers to have reloaded")
    assert worker_pids(status(setup.port)) == pids  # reloaded in place, not restarted
    for _ in range(10):
        code, _, _ = get(setup.port, "/more/b.txt")
        assert code == 302


def test_sigterm_drains_every_worker(setup: Setup, tmp_path: Path) -> None:
    """A second fedd: a request in flight when SIGTERM comes is still answered; all processes end."""
    setup.dav.slow_head = 1.5
    port = free_port()
    fedd = start_fedd(tmp_path / "run", config_text(port, setup.base, setup.dav), port)
    try:
        pids = worker_pids(per_worker(port, {0, 1}, lambda s: True, "both workers")[0])
        answers: list[int] = []
        slow = [
            threading.Thread(target=lambda i=i: answers.append(get(port, f"/dav/slow-{i}.bin")[0])) for i in range(6)
        ]
        heads = setup.dav.slow_heads
        for t in slow:
            t.start()
        # each request's locate asks the endpoint: 6 HEADs there = 6 requests open in the workers
        wait_for(lambda: setup.dav.slow_heads - heads, 5, "the slow requests to reach fedd", until=lambda n: n >= 6)
        fedd.proc.send_signal(signal.SIGTERM)
        for t in slow:
            t.join(15)
        assert fedd.proc.wait(15) == 0
        assert answers == [302] * 6  # every request in flight was answered (both workers drained)
        assert not [pid for pid in pids.values() if _alive(pid)]  # the supervisor waited for them all
        text = fedd.log_text()
        assert "worker 0 stopped (status 0)" in text and "worker 1 stopped (status 0)" in text
    finally:
        setup.dav.slow_head = 0.0
        fedd.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_relayed_log_lines_read_as_a_single_fedds() -> None:
    """A worker's JSON log event, republished by the supervisor, formats numbers with their spec."""
    from twisted.logger import eventAsJSON, eventFromJSON, formatEvent

    from fedd.workers.supervisor import _reformat_numbers

    event = {"log_format": "draining {n} open request(s) for at most {timeout:g}s", "n": 1, "timeout": 10.0}
    relayed = eventFromJSON(eventAsJSON(event))
    assert formatEvent(relayed) == "draining 1 open request(s) for at most 10.0s"  # Twisted's round trip
    _reformat_numbers(relayed)
    assert formatEvent(relayed) == "draining 1 open request(s) for at most 10s"


def test_port_in_use_stops_the_supervisor_with_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.daemon import env, twistd_command

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (tmp_path / "files").mkdir()
    conf = tmp_path / "fedd.conf"
    conf.write_text(
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\nworkers = 2\n"
        f"[endpoint files]\nkind = local\npath = {tmp_path / 'files'}\nmap = /data /\n"
    )
    try:
        done = subprocess.run(
            twistd_command("--config", str(conf)), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=30
        )
    finally:
        taken.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"fedd: cannot listen on 127.0.0.1:{port} (tcp:{port}:interface=127.0.0.1): Address already in use" in (
        done.stdout
    )
    assert "Traceback" not in done.stdout + done.stderr and "worker" not in done.stdout.replace("fedd.workers", "")


def test_health_leader_and_follower_in_process(tmp_path: Path) -> None:
    """Two workers' health services on one run directory, driven by a Clock: only the leader
    probes; the follower takes each result at its next 0.25 s poll, its state changes announced
    nowhere; a fault the follower sees asks the leader for an early probe."""
    from twisted.internet.task import Clock

    from fedd.config import HealthConfig
    from fedd.health.service import HealthRegistry, HealthService
    from fedd.workers.shared import FOLLOW_INTERVAL, HostShare
    from tests.fakes import FakeEndpoint

    clock = Clock()
    config = HealthConfig(interval=30, timeout=3, failures_to_offline=1, successes_to_online=1)
    leading, following = FakeEndpoint("e"), FakeEndpoint("e")
    registries = [HealthRegistry(["e"], config, clock) for _ in range(2)]
    announced: list[str] = []
    registries[1].listeners.append(lambda t: announced.append(t.new))
    leader = HealthService(registries[0], {"e": leading}, clock, shared=HostShare(tmp_path, leader=True))
    follower = HealthService(registries[1], {"e": following}, clock, shared=HostShare(tmp_path, leader=False))
    leader.startService()
    follower.startService()
    assert leading.probes == 1 and registries[0].states["e"].state == "online"
    clock.advance(FOLLOW_INTERVAL)
    assert registries[1].states["e"].state == "online" and following.probes == 0
    version = registries[1].version
    leading.probe_ok = False
    clock.advance(30)  # the leader's next round fails
    assert registries[0].states["e"].state == "offline"
    clock.advance(FOLLOW_INTERVAL)
    assert registries[1].states["e"].state == "offline" and registries[1].version > version
    assert following.probes == 0 and announced == []  # the transition was announced by the leader
    leading.probe_ok = True
    clock.advance(2)  # past the leader's early probes after its failure
    probes = leading.probes
    registries[1].passive_failure("e", "connection reset")  # a client of the follower saw a fault
    clock.advance(FOLLOW_INTERVAL)  # the leader reads the suspect and probes at once
    assert leading.probes == probes + 1 and following.probes == 0
    clock.advance(FOLLOW_INTERVAL)
    assert registries[1].states["e"].state == "online"
    leader.stopService()
    follower.stopService()

"""Redirect throughput for a cached file: fedd vs nginx `return 302`, a lean Twisted protocol on
httptools answering a canned 302 (the ceiling of fedd's lean front), a bare twisted.web 302 and the
XRootD HTTP redirector (a cmsd manager and one data server: benchmarks/xrootd_redirector.py, which
installs XRootD with apt-get when it is missing and runs it in a private network namespace).

fedd runs its full path: routing, path normalisation, cache lookup, ranking, SigV4 presigned URL
(reused), Link headers, over a real Ceph RADOS Gateway (S3) and an Apache mod_dav replica; without
events (the path the foundation issue names), with a get-redirect event per redirect to the spool
file (the default when events are on), and with events to the machine's RabbitMQ (127.0.0.1:5672,
a durable topic exchange with a durable queue bound to '#' as a consumer would have, publisher
confirms): each event is in the journal before its 302 is sent (docs/events.md); the same with
`[events] bundle = 100` (up to 100 events per message); and with `[server] workers = 2`. Every
server runs side by side and is measured in turns at each connection count, ROUNDS times, so that
each ratio pairs figures taken seconds apart (the machine is shared):
the ratios printed are the means of the per-round ratios. Each server is measured alone (wrk and
the servers share the machine's two cores).

At 1, 32 and 1000 connections (wrk --latency: requests/s, p50 and p99 latency).

`--events` measures only the fedds with events off and on (no references, no workers): a shorter
run for the on/off ratios. `--queue lazy|v2|lazy-v2` declares the consumer's queue with
`x-queue-mode: lazy` and/or `x-queue-version: 2` (RabbitMQ 3.10+) instead of a default classic
queue, to see what the queue type costs the broker per message.

Usage: python3 benchmarks/redirect_throughput.py [--quick] [--rounds N] [--events] [--queue TYPE]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import ROOT, Fedd, cpu_seconds, free_port, start_fedd, wait_for_port, wrk_latency
from xrootd_redirector import XRootD

from tests import servers

TARGET = 0.70  # fedd should keep at least 70% of the lean ceiling at 32 connections (issue 14)
CONNECTIONS = (1, 32, 1000)
Figures = dict[int, tuple[float, float, float]]  # connections -> (requests/s, p50 ms, p99 ms)
ROUNDS = 2
BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
OFF, SPOOL, AMQP = "fedd (1 process)", "fedd + events (spool)", "fedd + events (RabbitMQ)"
AMQP100 = "fedd + events (RabbitMQ, bundle=100)"
QUEUES: dict[str, dict[str, Any]] = {  # --queue: the consumer queue's arguments besides its bound
    "classic": {},
    "lazy": {"x-queue-mode": "lazy"},
    "v2": {"x-queue-version": 2},
    "lazy-v2": {"x-queue-mode": "lazy", "x-queue-version": 2},
}
TWO = "fedd, workers = 2"
NGINX, LEAN, BARE, XRD = (
    "nginx return 302",
    "lean Twisted protocol 302",
    "bare twisted.web 302",
    "XRootD 5.5 redirector",
)
Rounds = list[dict[str, Figures]]
PATH = "/atlas/data/popular.root"


def fedd_config(
    port_line: str,
    rgw: servers.CephRGW,
    dav: servers.ApacheDav,
    events: str = "none",
    broker: str = "",
    workers: int = 1,
) -> str:
    return f"""
[server]
{port_line}
workers = {workers}
[events]
types = {events}
{broker}
[geo]
site = 127.0.0.0/8 46.2 6.1
[endpoint ceph]
kind = s3
url = {rgw.url}
bucket = bench
access_key = {rgw.access_key}
secret_key = {rgw.secret_key}
map = /atlas /atlas
lat = 46.2
lon = 6.1
[endpoint dav]
kind = dav
url = {dav.url}
map = /atlas /atlas
lat = 41.9
lon = -87.6
"""


def main() -> None:
    quick = "--quick" in sys.argv
    seconds = 2.0 if quick else 5.0
    rounds_wanted = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else ROUNDS
    only_events = "--events" in sys.argv
    queue = sys.argv[sys.argv.index("--queue") + 1] if "--queue" in sys.argv else "classic"
    work = Path(tempfile.mkdtemp(prefix="fedd-bench-"))
    started: list[Any] = []
    try:
        rgw = servers.start_ceph_rgw(work / "ceph")
        started.append(rgw)
        import boto3
        from botocore.config import Config

        s3 = boto3.client(
            "s3",
            endpoint_url=rgw.url,
            aws_access_key_id=rgw.access_key,
            aws_secret_access_key=rgw.secret_key,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="bench")
        s3.put_object(Bucket="bench", Key=PATH.lstrip("/"), Body=b"x" * 1024)
        dav = servers.start_apache_dav(work / "apache", work / "davroot")
        started.append(dav)
        (work / "davroot" / "atlas" / "data").mkdir(parents=True)
        (work / "davroot" / "atlas" / "data" / "popular.root").write_bytes(b"x" * 1024)
        (work / "xrdroot" / "atlas" / "data").mkdir(parents=True)
        (work / "xrdroot" / "atlas" / "data" / "popular.root").write_bytes(b"x" * 1024)
        xrd = None
        if not only_events:
            xrd = XRootD(work / "xrootd", work / "xrdroot")
            started.append(xrd)
        with broker_queue(QUEUES[queue]) as exchange:
            print(f"RabbitMQ queue: {queue} {QUEUES[queue]}")
            rounds = measure_all(work, rgw, dav, xrd, exchange, seconds, rounds_wanted, started)
            report(rounds, seconds)  # before any clean-up can fail
    finally:
        for server in reversed(started):
            server.stop()


def start_reference(script: str, location: str, started: list[Any]) -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / script), str(port), location])
    started.append(Stopper(proc))
    wait_for_port(port, 10, proc)
    return f"http://127.0.0.1:{port}"


class Stopper:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def warm(url: str) -> str:
    """GET twice (the second completes the cache entry); the Location of the answer."""
    for _ in range(2):
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-D", "-", url], capture_output=True, text=True, check=True
        )
    return next(
        line.split(": ", 1)[1].strip() for line in out.stdout.splitlines() if line.lower().startswith("location:")
    )


def measure_all(
    work: Path,
    rgw: servers.CephRGW,
    dav: servers.ApacheDav,
    xrd: XRootD | None,
    exchange: str,
    seconds: float,
    rounds_wanted: int,
    started: list[Any],
) -> Rounds:
    """Start every server, then at each connection count measure each in turn, `rounds_wanted` times."""
    urls: dict[str, tuple[str, list[str]]] = {}  # name -> (base URL, command wrk runs under)
    feds: dict[str, Fedd] = {}
    amqp = f"broker = {BROKER}\nexchange = {exchange}"
    variants = [
        (OFF, "none", "", 1),
        (SPOOL, "all", "", 1),
        (AMQP, "all", amqp, 1),
        (AMQP100, "all", amqp + "\nbundle = 100", 1),
        (TWO, "none", "", 2),
    ]
    for name, events, broker, workers in variants[:-1] if xrd is None else variants:
        port = free_port()
        conf = fedd_config(f"listen = tcp:{port}:interface=127.0.0.1", rgw, dav, events, broker, workers)
        feds[name] = start_fedd(work / f"fedd-{len(feds)}", conf, port)
        started.append(feds[name])
        urls[name] = (feds[name].url, [])
        for _ in range(20 if workers > 1 else 1):  # every worker's plan cache warm
            location = warm(feds[name].url + PATH)
    assert "X-Amz-Signature=" in location, location
    if xrd is not None:  # the references
        nginx = servers.start_nginx_redirect(work / "nginx", location)
        started.append(nginx)
        urls[NGINX] = (nginx.url, [])
        urls[LEAN] = (start_reference("lean_ceiling_302.py", location, started), [])
        urls[BARE] = (start_reference("bare_twisted_302.py", location, started), [])
        print("XRootD:", xrd.wait_redirect(PATH))
        urls[XRD] = (xrd.url, xrd.wrap)
    rounds: Rounds = [{name: {} for name in urls} for _ in range(rounds_wanted)]
    rabbit = broker_pids()
    for c in CONNECTIONS:
        for figures in rounds:
            for name, (url, wrap) in urls.items():
                pids = processes(feds[name].proc.pid) if name in feds else []
                before = cpu_seconds(pids), cpu_seconds(rabbit)
                figures[name][c] = wrk_latency(url + PATH, c, seconds, wrap=wrap)
                if name in feds:
                    drained(feds[name])
                    quiet(rabbit)
                if pids:
                    done = figures[name][c][0] * seconds / 1e6  # requests, in millions: CPU us per request
                    used = cpu_seconds(pids) - before[0], cpu_seconds(rabbit) - before[1]
                    CPU.setdefault((name, c), []).append((used[0] / done, used[1] / done))
    for name in (AMQP, AMQP100):
        ev = feds[name].status()["events"]
        print(f"{name}: emitted {ev['emitted']}, sent {ev['sent']}, outbox depth {ev['outbox_depth']}")
    return rounds


def drained(fed: Fedd, limit: float = 90.0) -> None:
    """Wait (up to `limit` s) until a fedd has sent or dropped every event it emitted: RabbitMQ
    persists fewer messages a second here than fedd redirects, and a backlog sent during the next
    server's figure would take its CPU. The CPU used until then counts for this figure."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ev = fed.status().get("events") or {}
        if not ev or ev["emitted"] <= ev["sent"] + ev["dropped"] + ev.get("sampled_out", 0):
            return
        time.sleep(0.5)
    print(f"{fed.url}: events still unsent after {limit:g}s: {fed.status()['events']}")


CPU: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (fedd, conns) -> per round: CPU us per request


def processes(pid: int) -> list[int]:
    """A fedd and its workers."""
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True)
    return [pid, *(int(p) for p in out.stdout.split())]


def broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM (only read: its CPU time); not the short-lived VMs of `rabbitmqctl`
    (also beam.smp) that other work on the machine may be running."""
    out = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True)
    pids = []
    for pid in out.stdout.split():
        with contextlib.suppress(OSError):
            if b"-s\0rabbit\0boot" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
    return pids


def quiet(rabbit: list[int], limit: float = 30.0, busy: float = 0.05) -> None:
    """Wait (up to `limit` s) until RabbitMQ uses under `busy` of a core: after its confirms it
    still works on what it stored (queue index, the length limit), and that CPU, taken from the
    next server's figure on a 2-core machine, made whichever fedd came next look slower."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(rabbit)
        time.sleep(0.5)
        if cpu_seconds(rabbit) - before < busy * 0.5:
            return


@contextlib.contextmanager
def broker_queue(arguments: dict[str, Any] | None = None) -> Iterator[str]:
    """A durable topic exchange with a consumer's durable queue bound to '#' (bounded: nobody reads
    it here; persistent messages to it are confirmed once RabbitMQ has written them). A connection
    each to set up and to delete: an idle blocking connection misses its heartbeats in a long run."""
    import pika

    exchange = f"fedd-bench-{os.getpid()}"
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(BROKER))) as admin:
        channel = admin.channel()
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(exchange, durable=True, arguments={"x-max-length": 200_000, **(arguments or {})})
        channel.queue_bind(exchange, exchange, "#")
    try:
        yield exchange
    finally:
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(BROKER))) as admin:
            channel = admin.channel()
            channel.queue_delete(exchange)
            channel.exchange_delete(exchange)


def paired(rounds: Rounds, a: str, b: str, c: int, field: int = 0) -> tuple[float, list[float]]:
    """The mean of the per-round ratios a/b at `c` connections, and those ratios."""
    ratios = [r[a][c][field] / r[b][c][field] for r in rounds]
    return sum(ratios) / len(ratios), ratios


def report(rounds: Rounds, seconds: float) -> None:
    names = list(rounds[0])
    best = {n: {c: max((r[n][c] for r in rounds), key=lambda f: f[0]) for c in CONNECTIONS} for n in names}
    print(f"\nRedirect throughput, cached file, wrk {seconds:g} s per figure, {len(rounds)} rounds in turns:")
    print("requests/s (p50 / p99 ms), the best round")
    print(f"{'server':36}" + "".join(f"{f'{c} conn':>26}" for c in CONNECTIONS))
    for name in names:
        cells = "".join(f"{r:10.0f} ({p50:6.2f} /{p99:7.2f})" for r, p50, p99 in (best[name][c] for c in CONNECTIONS))
        print(f"{name:36}{cells}")
    print("\nPaired ratios (mean of the per-round ratios; rounds in brackets):")

    def line(label: str, a: str, b: str, c: int, target: float | None = None, field: int = 0) -> None:
        if a not in names or b not in names:  # --events: no references measured
            return
        mean, each = paired(rounds, a, b, c, field)
        verdict = "" if target is None else (" meets" if mean >= target else " MISSES") + f" {target:g}"
        print(f"{c:5} conn  {label:44} {mean:5.2f}{verdict}  ({', '.join(f'{x:.2f}' for x in each)})")

    for fedd, label in ((AMQP, "fedd+events RabbitMQ"), (OFF, "fedd events off")):
        line(f"{label} / lean ceiling", fedd, LEAN, 1, 0.5 if fedd == AMQP else None)
        line(f"{label} / lean ceiling", fedd, LEAN, 32, TARGET if fedd == AMQP else None)
        line(f"{label} / lean ceiling", fedd, LEAN, 1000)
        line(f"{label} / nginx", fedd, NGINX, 32, 0.3 if fedd == AMQP else None)
        for c in CONNECTIONS:
            line(f"{label} / XRootD", fedd, XRD, c)
        line(f"{label} / bare twisted.web", fedd, BARE, 32)
    for c in CONNECTIONS:
        line("XRootD p50 / fedd+events RabbitMQ p50", XRD, AMQP, c, 1.0 if c == 1000 else None, field=1)
    for name, sink in ((SPOOL, "spool"), (AMQP, "RabbitMQ"), (AMQP100, "RabbitMQ, bundle=100")):
        for c in CONNECTIONS:
            line(f"events to {sink} on / off", name, OFF, c, 0.9)
    for c in CONNECTIONS:
        line("workers = 2 / 1 (events off)", TWO, OFF, c, 1.5 if c == 32 else None)
    print("\nCPU per request (median of the rounds, microseconds): fedd's processes / RabbitMQ's (beam.smp)")
    for (name, c), each in sorted(CPU.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        fedd_us = statistics.median(x for x, _ in each)
        broker_us = statistics.median(y for _, y in each)
        print(f"{c:5} conn  {name:36} fedd {fedd_us:6.1f} us   RabbitMQ {broker_us:6.1f} us")


if __name__ == "__main__":
    main()

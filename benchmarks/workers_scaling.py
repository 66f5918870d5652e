"""`[server] workers = 2` vs 1 (issue 14): cached-redirect throughput and fedd's CPU per request.

Two fedds side by side over one local-directory endpoint (a cached 302 answered by the lean front),
one with `workers = 1` and one with `workers = 2`, measured in turns with wrk at 32 and 1000
keep-alive connections, and at 32 connections pipelining 16 requests each (wrk then spends a
fraction of its CPU per request, so the two cores go to fedd: the run that shows what a second core
gives a server that is the bottleneck), ROUNDS times (the machine is shared: turns pair figures taken
seconds apart). For each run: requests/s, and the CPU seconds fedd's processes used (supervisor and workers,
from /proc), so requests per fedd CPU-second, the per-core figure that a host with more cores and
the clients elsewhere multiplies. wrk runs on the same two cores and needs a good part of them:
its own CPU per request is measured too (wrk is this script's child: getrusage), and with F fedd's
and W wrk's CPU microseconds per request, two workers sharing two cores with wrk can give at most
2F / (F + W) times one worker that is the bottleneck (two cores for F + W per request, against one
core for F): the "bound" column, from the same run.

Usage: python3 benchmarks/workers_scaling.py [--quick]
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Fedd, cpu_seconds, free_port, start_fedd, wrk

ROUNDS = 3
MODES = ((32, 1), (1000, 1), (32, 16))  # (connections, requests pipelined per connection)
PATH = "/data/popular.root"


def config(port: int, base: Path, workers: int) -> str:
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
workers = {workers}
[endpoint files]
kind = local
path = {base}
map = /data /
"""


def processes(fedd: Fedd) -> list[int]:
    out = subprocess.run(["ps", "--ppid", str(fedd.proc.pid), "-o", "pid="], capture_output=True, text=True)
    return [fedd.proc.pid, *(int(p) for p in out.stdout.split())]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it ended (and curl, before)
    return usage.ru_utime + usage.ru_stime


def run(fedd: Fedd, connections: int, pipeline: int, seconds: float) -> tuple[float, float, float, float]:
    """(requests/s, requests per fedd CPU-second, cores fedd used, wrk's CPU us per request)."""
    pids = processes(fedd)
    before, wrk_before = cpu_seconds(pids), children_cpu()
    rate = wrk(fedd.url + PATH, connections, seconds, pipeline=pipeline)
    used, wrk_used = cpu_seconds(pids) - before, children_cpu() - wrk_before
    requests = rate * seconds
    return rate, requests / used if used > 0 else float("nan"), used / seconds, wrk_used / requests * 1e6


def main() -> None:
    quick = "--quick" in sys.argv
    seconds = 2.0 if quick else 5.0
    rounds = 1 if quick else ROUNDS
    work = Path(tempfile.mkdtemp(prefix="fedd-workers-bench-"))
    (work / "files").mkdir()
    (work / "files" / "popular.root").write_bytes(b"x" * 1024)
    fedds: dict[int, Fedd] = {}
    figures: dict[tuple[int, int, int], list[tuple[float, float, float, float]]] = {}
    try:
        for workers in (1, 2):
            port = free_port()
            fedds[workers] = start_fedd(work / f"fedd-{workers}", config(port, work / "files", workers), port)
            for _ in range(20):  # every worker's plan cache warm
                subprocess.run(["curl", "-s", "-o", "/dev/null", fedds[workers].url + PATH], check=True)
        for _ in range(rounds):
            for c, depth in MODES:
                for workers in (1, 2):
                    figures.setdefault((workers, c, depth), []).append(run(fedds[workers], c, depth, seconds))
    finally:
        for fedd in fedds.values():
            fedd.stop()
    print(f"\nCached redirect, wrk {seconds:g} s per run, {rounds} round(s) in turns: median requests/s")
    print(
        f"{'conns x pipe':>12}{'workers = 1':>14}{'workers = 2':>14}{'2 / 1':>8}"
        f"{'req/CPU-s (1)':>16}{'(2)':>10}{'cores used (1)':>16}{'(2)':>8}{'wrk us/req':>12}{'bound':>7}"
    )
    for c, depth in MODES:
        one, per_one, cores_one, wrk_one = (statistics.median(f[i] for f in figures[(1, c, depth)]) for i in range(4))
        two, per_two, cores_two, wrk_two = (statistics.median(f[i] for f in figures[(2, c, depth)]) for i in range(4))
        fedd_us, wrk_us = 1e6 / per_one, (wrk_one + wrk_two) / 2
        print(
            f"{f'{c} x {depth}':>12}{one:>14.0f}{two:>14.0f}{two / one:>8.2f}"
            f"{per_one:>16.0f}{per_two:>10.0f}{cores_one:>16.2f}{cores_two:>8.2f}"
            f"{wrk_us:>12.1f}{2 * fedd_us / (fedd_us + wrk_us):>7.2f}"
        )
        print(
            f"{'':>12}16-core model (clients elsewhere, one worker per core): "
            f"about {16 * per_two / 1000:.0f}k requests/s"
        )


if __name__ == "__main__":
    main()

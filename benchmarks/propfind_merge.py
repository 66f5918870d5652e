"""Merged PROPFIND Depth 1 of a directory of 10,000 entries split over 3 Apache mod_dav endpoints.

Each endpoint holds a third of the names and 100 names are on two endpoints, so the merge must
de-duplicate. Reference: the slowest endpoint's own PROPFIND of its part, in the same run, round by
round alternating with fedd's (target: fedd's median <= 2x the slowest endpoint's median). Also
measured in each round, to explain the result: the HTML index (GET of the collection) through fedd,
and the floor, the three endpoints answering fedd's own PROPFIND (its property list) at once to a
client that only reads (what fedd cannot go below on this machine). fedd's memory: VmRSS before,
VmHWM (peak) after; fedd's CPU time per listing (user + system, summed over the rounds: less
disturbed by other work on the machine than the elapsed times).

Usage: python3 benchmarks/propfind_merge.py [--quick] [--rounds N] [--entries N] [--profile FILE]
       [--tree DIR]   (FILE: py-spy raw stacks of fedd during its PROPFINDs; DIR: run fedd from
                       another checkout, for before/after)
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import cpu_seconds, free_port, memory, start_fedd

import tests.daemon
from fedd.endpoints.dav import PROPFIND_BODY
from tests import servers

OVERLAP = 100


def request(port: int, method: str, path: str, body: bytes = b"", expect: int = 207) -> tuple[float, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Depth": "1"} if method == "PROPFIND" else {}
    if body:
        headers["Content-Type"] = "application/xml; charset=utf-8"
    start = time.perf_counter()
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status == expect, (response.status, data[:200])
    conn.close()
    return elapsed, data


def floor(davs: list[servers.ApacheDav]) -> float:
    """The three endpoints answering fedd's PROPFIND at once, read by threads that do nothing else."""
    threads = [
        threading.Thread(target=request, args=(dav.port, "PROPFIND", "/atlas/big/", PROPFIND_BODY)) for dav in davs
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--profile", default="", help="FILE: py-spy raw stacks of fedd during its PROPFINDs")
    parser.add_argument("--tree", default="", help="run fedd from this source tree instead of the checkout")
    args = parser.parse_args()
    if args.tree:
        tests.daemon.REPO = Path(args.tree).resolve()  # PYTHONPATH of the fedd process
    rounds = 3 if args.quick else args.rounds
    total = args.entries
    work = Path(tempfile.mkdtemp(prefix="fedd-propfind-"))
    davs: list[servers.ApacheDav] = []
    names = [f"file-{n:06d}.root" for n in range(total)]
    third = total // 3
    parts = [names[: third + OVERLAP], names[third : 2 * third], names[2 * third :]]
    fedd = None
    spy = None
    direct: dict[int, list[float]] = {i: [] for i in range(3)}
    timings: list[float] = []
    index: list[float] = []
    floors: list[float] = []
    cpu = {"PROPFIND": 0.0, "index": 0.0}
    try:
        for i, part in enumerate(parts):
            d = work / f"dav{i}" / "atlas" / "big"
            d.mkdir(parents=True)
            for name in part:
                (d / name).write_bytes(b"")
            davs.append(servers.start_apache_dav(work / f"apache{i}", work / f"dav{i}"))
        port = free_port()
        conf = f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n[health]\ninterval = 600\n"
        for i, dav in enumerate(davs):
            conf += f"[endpoint dav{i}]\nkind = dav\nurl = {dav.url}\nmap = /atlas /atlas\ntimeout = 30\n"
        fedd = start_fedd(work / "fedd", conf, port)
        request(port, "PROPFIND", "/atlas/big")  # warm: connections, health, imports
        before = memory(fedd.proc.pid)
        if args.profile:
            options = ["--idle", "--nonblocking", "--rate", "500", "--format", "raw", "--output", args.profile]
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(fedd.proc.pid), *options],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        for _ in range(rounds):
            for i, dav in enumerate(davs):
                direct[i].append(request(dav.port, "PROPFIND", "/atlas/big/")[0])
            used = cpu_seconds(fedd.proc.pid)
            elapsed, body = request(port, "PROPFIND", "/atlas/big")
            cpu["PROPFIND"] += cpu_seconds(fedd.proc.pid) - used
            timings.append(elapsed)
            responses = body.count(b"<D:response>")
            assert responses == total + 1, f"expected {total + 1} responses, got {responses}"
            used = cpu_seconds(fedd.proc.pid)
            elapsed, page = request(port, "GET", "/atlas/big/", expect=200)
            cpu["index"] += cpu_seconds(fedd.proc.pid) - used
            index.append(elapsed)
            assert page.count(b"<li>") == total, page[:300]
            floors.append(floor(davs))
        after = memory(fedd.proc.pid)
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=30)
        if fedd is not None:
            fedd.stop()
        for dav in davs:
            dav.stop()
        shutil.rmtree(work, ignore_errors=True)

    slowest = max(statistics.median(t) for t in direct.values())
    fed = statistics.median(timings)
    html = statistics.median(index)
    print(f"\nMerged PROPFIND Depth 1: {total} entries over 3 endpoints ({OVERLAP} duplicated), median of {rounds}")
    for i, t in direct.items():
        print(f"  endpoint dav{i} alone ({len(parts[i])} entries): {statistics.median(t):8.1f} ms")
    print(f"  fedd merged PROPFIND ({total} entries):   {fed:8.1f} ms   = {fed / slowest:.2f}x the slowest endpoint")
    print(f"  fedd merged HTML index:                 {html:8.1f} ms   = {html / slowest:.2f}x the slowest endpoint")
    print(f"  floor, 3 endpoints at once (fedd's props): {statistics.median(floors):5.1f} ms")
    print(
        f"  fedd CPU per listing (user + system): PROPFIND {cpu['PROPFIND'] / rounds * 1000:.1f} ms, "
        f"HTML index {cpu['index'] / rounds * 1000:.1f} ms"
    )
    print(
        f"  fedd memory: RSS before {before['VmRSS'] / 1024:.1f} MiB, after {after['VmRSS'] / 1024:.1f} MiB, "
        f"peak {after['VmHWM'] / 1024:.1f} MiB (+{(after['VmHWM'] - before['VmRSS']) / 1024:.1f} MiB)"
    )
    rounds_ms = ", ".join(f"{t:.0f}" for t in timings)
    print(f"  response body: {len(body) / 1024 / 1024:.1f} MiB; rounds fedd ms: {rounds_ms}")


if __name__ == "__main__":
    main()

"""Merged PROPFIND Depth 1 of a directory of 10,000 entries split over 3 Apache mod_dav endpoints.

Each endpoint holds a third of the names and 100 names are on two endpoints, so the merge must
de-duplicate. Reference: the slowest endpoint's own PROPFIND of its part, in the same run.
Also fedd's memory: VmRSS before, VmHWM (peak) after.

Usage: python3 benchmarks/propfind_merge.py [--quick]
"""

from __future__ import annotations

import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, memory, start_fedd

from tests import servers

TOTAL = 10_000
OVERLAP = 100


def propfind(port: int, path: str) -> tuple[float, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request("PROPFIND", path, headers={"Depth": "1"})
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status == 207, (response.status, body[:200])
    conn.close()
    return elapsed, body


def main() -> None:
    runs = 3 if "--quick" in sys.argv else 7
    work = Path(tempfile.mkdtemp(prefix="fedd-propfind-"))
    davs: list[servers.ApacheDav] = []
    names = [f"file-{n:05d}.root" for n in range(TOTAL)]
    third = TOTAL // 3
    parts = [names[: third + OVERLAP], names[third : 2 * third], names[2 * third :]]
    fedd = None
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
        before = memory(fedd.proc.pid)
        direct = {i: [propfind(dav.port, "/atlas/big/")[0] for _ in range(runs)] for i, dav in enumerate(davs)}
        timings = []
        for _ in range(runs):
            elapsed, body = propfind(port, "/atlas/big")
            timings.append(elapsed)
            responses = body.count(b"<D:response>")
            assert responses == TOTAL + 1, f"expected {TOTAL + 1} responses, got {responses}"
        after = memory(fedd.proc.pid)
    finally:
        if fedd is not None:
            fedd.stop()
        for dav in davs:
            dav.stop()

    slowest = max(statistics.median(t) for t in direct.values())
    fed = statistics.median(timings)
    print(f"\nMerged PROPFIND Depth 1: {TOTAL} entries over 3 endpoints ({OVERLAP} duplicated), median of {runs}")
    for i, t in direct.items():
        print(f"  endpoint dav{i} alone ({len(parts[i])} entries): {statistics.median(t):8.1f} ms")
    print(f"  fedd merged ({TOTAL} entries):            {fed:8.1f} ms   = {fed / slowest:.2f}x the slowest endpoint")
    print(
        f"  fedd memory: RSS before {before['VmRSS'] / 1024:.1f} MiB, after {after['VmRSS'] / 1024:.1f} MiB, "
        f"peak {after['VmHWM'] / 1024:.1f} MiB (+{(after['VmHWM'] - before['VmRSS']) / 1024:.1f} MiB)"
    )
    print(f"  response body: {len(body) / 1024 / 1024:.1f} MiB")


if __name__ == "__main__":
    main()

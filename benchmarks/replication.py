"""Popularity-driven replication (issue 17): what a copy costs and what counting costs.

Two Apache mod_dav servers on loopback: "src" (placed at CERN, read-only) holds a large random file,
"dst" (placed at DESY) is writable; clients at 127.0.0.2 are in a site range at DESY.

1. Copy throughput (second): each round links the file under a new name on src and reads it once from
   127.0.0.2 through fedd (`[replicate] threshold = 1`); fedd copies it to dst and reports the copy's
   duration in its `replica-created` event (from the decision to the verified copy: the pull, the
   source-to-stream check, and the read-back of the copy from dst for its adler32). The reference is
   `curl -s SRC | curl -T - DST` between the same servers (one copy, no verification),
   alternated round by round with fedd's copies.
2. The cost of counting on the redirect path (measured first, both processes fresh): the same
   federation in two fedd processes, one with `[replicate] enabled` (every 302 counted) and one
   without, both with the `[state] database`; wrk runs against each in turns (the order swapped
   each round), ROUNDS times; the paired on/off ratios of requests/s and of fedd's CPU seconds per
   redirect are reported.

Usage: python3 benchmarks/replication.py [--quick] [--size MiB] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import timeit
from pathlib import Path

from common import Fedd, curl_pipe, free_port, start_fedd, wrk
from tpc_throughput import cpu_seconds

from fedd.replicate.counting import ReadCounter
from tests import servers

NEAR_DST = "127.0.0.2"


def config(port: int, work: Path, src: str, dst: str, replicate: bool) -> str:
    return f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[health]
interval = 600
[geo]
site = {NEAR_DST}/32 53.5753 9.8803
[state]
database = {work / "state.sqlite"}
[replicate]
enabled = {"yes" if replicate else "no"}
threshold = 1
interval = 1
budget = 1P
copies = 1
[endpoint src]
kind = dav
url = {src}
map = /fed /data
lat = 46.2330
lon = 6.0557
[endpoint dst]
kind = dav
url = {dst}
map = /fed /data
write = yes
lat = 53.5753
lon = 9.8803
"""


def created_duration(fedd: Fedd, name: str, timeout: float = 900) -> float:
    """The `duration` of the replica-created event for `name` (from fedd's event spool)."""
    spool = fedd.config.parent / "fedd-events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in spool.read_text().splitlines() if spool.exists() else []:
            event = json.loads(line)
            payload = event.get("payload", {})
            if event.get("event_type") == "replica-failed" and payload.get("name") == name:
                raise RuntimeError(f"copy of {name} failed: {payload.get('reason')}")
            if event.get("event_type") == "replica-created" and payload.get("name") == name:
                return float(payload["duration"])
        time.sleep(0.05)
    raise RuntimeError(f"no replica-created event for {name} within {timeout}s")


def read_from_dst_region(port: int, name: str) -> None:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--interface",
            NEAR_DST,
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{port}/fed/{name}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.stdout != "302":
        raise RuntimeError(f"read of {name}: {out.stdout} {out.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=0, help="file size in MiB (default 512, 64 with --quick)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3, 2 with --quick)")
    parser.add_argument("--seconds", type=float, default=0, help="wrk seconds per run (default 8, 4 with --quick)")
    args = parser.parse_args()
    size = (args.size or (64 if args.quick else 512)) << 20
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.seconds or (4 if args.quick else 8)
    work = Path(tempfile.mkdtemp(prefix="fedd-replbench-"))
    work.chmod(0o755)
    src_root, dst_root = work / "src", work / "dst"
    (src_root / "data").mkdir(parents=True)
    (dst_root / "data").mkdir(parents=True)
    big = src_root / "data" / "big.bin"
    with big.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    src = servers.start_apache_dav(work / "apache-src", src_root)
    dst = servers.start_apache_dav(work / "apache-dst", dst_root)
    processes: list[Fedd] = []
    try:
        on_port, off_port = free_port(), free_port()
        on = start_fedd(work / "on", config(on_port, work / "on", src.url, dst.url, True), on_port)
        processes.append(on)
        off = start_fedd(work / "off", config(off_port, work / "off", src.url, dst.url, False), off_port)
        processes.append(off)
        # counting on the redirect path: a small file, read from 127.0.0.1 (counted, never hot enough
        # to copy there: no region)
        (src_root / "data" / "small.bin").write_bytes(b"x" * 1000)
        for port in (on_port, off_port):
            wrk(f"http://127.0.0.1:{port}/fed/small.bin", 4, 1)  # warm: located, planned
        for connections in (1, 32):
            pairs, cpu_pairs = [], []
            for n in range(rounds):
                measured = {}
                # in turns, the order swapped each round (neither side always runs first)
                for which, port, fedd in sorted([("on", on_port, on), ("off", off_port, off)], reverse=n % 2 == 1):
                    before = cpu_seconds(fedd.proc.pid)
                    rate = wrk(f"http://127.0.0.1:{port}/fed/small.bin", connections, seconds)
                    used = cpu_seconds(fedd.proc.pid) - before
                    measured[which] = (rate, used / (rate * seconds) * 1e6)
                pairs.append((measured["on"][0], measured["off"][0]))
                cpu_pairs.append((measured["on"][1], measured["off"][1]))
            ratios = [a / b for a, b in pairs]
            cpu_ratios = [a / b for a, b in cpu_pairs]
            print(
                f"redirects at {connections} connections: on {statistics.median(a for a, _ in pairs):.0f}/s, "
                f"off {statistics.median(b for _, b in pairs):.0f}/s, on/off ratios "
                + " ".join(f"{r:.3f}" for r in ratios)
                + f" (median {statistics.median(ratios):.3f}); fedd CPU per redirect on "
                f"{statistics.median(a for a, _ in cpu_pairs):.1f} us, "
                f"off {statistics.median(b for _, b in cpu_pairs):.1f} us, "
                f"ratio {statistics.median(cpu_ratios):.3f}"
            )
        counter = ReadCounter()
        key = (b"/fed/small.bin", "127.0.0.1", "src")
        note = timeit.timeit(lambda: counter.note(*key), number=1_000_000)
        empty = timeit.timeit(lambda: None, number=1_000_000)
        print(f"ReadCounter.note in process: {(note - empty):.3f} us per call (1e6 calls, lambda call subtracted)")
        direct, through = [], []
        for n in range(rounds):
            name = f"copy-{n}.bin"
            os.link(big, src_root / "data" / name)
            direct.append(curl_pipe(f"{src.url}/data/{name}", f"{dst.url}/data/direct-{n}.bin"))
            read_from_dst_region(on_port, name)
            through.append(created_duration(on, name))
            got = dst_root / "data" / name
            if got.stat().st_size != size:
                raise RuntimeError(f"{name}: {got.stat().st_size} bytes on dst, expected {size}")
        mb = size / 1e6
        print(f"copy of {size >> 20} MiB, {rounds} rounds (median MB/s):")
        print(f"  curl | curl -T (no verification) {mb / statistics.median(direct):8.1f}")
        print(f"  fedd replication (pull + adler32 + read-back) {mb / statistics.median(through):8.1f}")
        print(f"  ratio fedd / curl pipe: {statistics.median(direct) / statistics.median(through):.2f}")
        counted = json.loads(
            subprocess.run(
                ["curl", "-s", f"http://127.0.0.1:{on_port}/.well-known/fedd/replication"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )["reads_counted"]
        print(f"reads counted by the [replicate] fedd: {counted}")
    finally:
        for fedd in processes:
            fedd.stop()
        src.stop()
        dst.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

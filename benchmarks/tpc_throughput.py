"""Third-party-copy throughput: copies through fedd vs direct copies between the same two servers.

Two Apache mod_dav servers on loopback: "src" holding a large random file, "dst" the federation's
writable DAV endpoint; fedd federates both (src read-only). Three comparisons, each alternating the
reference and fedd round by round so both see the same machine state:

- pull: `COPY /fed/x` + `Source: <src URL>` (fedd fetches from src and uploads into dst);
- push: `COPY /src/big.bin` + `Destination: <dst URL>` (fedd reads its replica on src and sends it);
- parallel: N pulls at once, against N `curl` pipes at once (aggregate MB/s).

The reference is `curl -s SRC | curl -T - DST` (two processes doing nothing else). fedd's RSS is
sampled every 50 ms during its copies: the table gives its growth over the idle process (it must
not grow with the file size).

Usage: python3 benchmarks/tpc_throughput.py [--quick] [--size MiB] [--rounds N] [--parallel N]
       [--only pull,push,parallel] [--tree DIR]   (DIR: run fedd from another checkout, e.g. an
       older commit exported with `git archive`, for a before/after comparison in one go)
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import cpu_seconds, curl_pipe, free_port, memory, start_fedd

import tests.daemon
from tests import servers


def copy_through_fedd(port: int, path: str, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    conn.request("COPY", path, headers={"Credential": "none", **headers})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    if response.status != 202 or not body.rstrip().endswith("success: Created"):
        raise RuntimeError(f"COPY {path}: {response.status} {body[-300:]}")


def timed_parallel(jobs: list[Callable[[], None]]) -> float:
    """Wall seconds for running all `jobs` at once (each in a thread); the first error is raised."""
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def profile(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy sampling every thread of `pid` (collapsed stacks, with idle ones) until SIGINT."""
    options = ["--threads", "--idle", "--nonblocking", "--rate", "200", "--format", "raw", "--output", out]
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    return spy


class RssSampler:
    """Largest VmRSS of a process while a `with` block runs (KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory(self.pid)["VmRSS"])
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=0, help="file size in MiB (default 1024, 128 with --quick)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per comparison (default 3, 2 with --quick)")
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--only", default="pull,push,parallel")
    parser.add_argument("--tree", default="", help="run fedd from this source tree instead of the checkout")
    parser.add_argument("--profile", default="", help="PREFIX: py-spy records fedd's copies to PREFIX-<kind>.txt")
    args = parser.parse_args()
    size = (args.size or (128 if args.quick else 1024)) << 20
    rounds = args.rounds or (2 if args.quick else 3)
    kinds = args.only.split(",")
    if args.tree:
        tests.daemon.REPO = Path(args.tree).resolve()  # PYTHONPATH of the fedd process
    work = Path(tempfile.mkdtemp(prefix="fedd-tpcbench-"))
    work.chmod(0o755)
    src_root, dst_root = work / "src", work / "dst"
    (src_root / "data").mkdir(parents=True)
    (dst_root / "fed").mkdir(parents=True)
    with (src_root / "data" / "big.bin").open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    src = servers.start_apache_dav(work / "apache-src", src_root)
    dst = servers.start_apache_dav(work / "apache-dst", dst_root)
    fedd = None
    results: dict[str, tuple[list[float], list[float], int]] = {}
    cpu: dict[str, tuple[list[float], list[float]]] = {}  # CPU seconds per copy: curl pair, fedd
    try:
        port = free_port()
        fedd = start_fedd(
            work / "fedd",
            f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[health]
interval = 600
[tpc]
allow_hosts = 127.0.0.1
[endpoint src]
kind = dav
url = {src.url}
map = /src /data
[endpoint dst]
kind = dav
url = {dst.url}
map = /fed /fed
write = yes
""",
            port,
        )
        idle_rss = memory(fedd.proc.pid)["VmRSS"]
        source = src.url + "/data/big.bin"
        made: list[str] = []

        def check_and_remove() -> None:
            for name in made:
                got = dst_root / "fed" / name
                if got.stat().st_size != size:
                    raise RuntimeError(f"{name}: {got.stat().st_size} bytes, expected {size}")
                got.unlink()
            made.clear()

        for kind in kinds:
            count = args.parallel if kind == "parallel" else 1
            direct, through, peak = [], [], 0
            cpu_direct, cpu_fedd = [], []
            for n in range(rounds):
                names = [f"{kind}-{n}-{i}.bin" for i in range(count)]
                made.extend(f"direct-{x}" for x in names)
                cpu0 = children_cpu()
                direct.append(
                    timed_parallel(
                        [lambda x=x: curl_pipe(source, f"{dst.url}/fed/direct-{x}") for x in names]  # type: ignore[misc]
                    )
                )
                cpu_direct.append((children_cpu() - cpu0) / count)
                check_and_remove()
                made.extend(f"fedd-{x}" for x in names)
                if kind == "push":
                    jobs = [
                        lambda x=x: copy_through_fedd(port, "/src/big.bin", {"Destination": f"{dst.url}/fed/fedd-{x}"})
                        for x in names
                    ]
                else:
                    jobs = [lambda x=x: copy_through_fedd(port, f"/fed/fedd-{x}", {"Source": source}) for x in names]
                cpu0 = cpu_seconds(fedd.proc.pid)
                spy = profile(fedd.proc.pid, f"{args.profile}-{kind}-{n}.txt") if args.profile else None
                with RssSampler(fedd.proc.pid) as rss:
                    through.append(timed_parallel(jobs))  # type: ignore[arg-type]
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
                cpu_fedd.append((cpu_seconds(fedd.proc.pid) - cpu0) / count)
                peak = max(peak, rss.peak)
                check_and_remove()
            results[kind] = (direct, through, peak)
            cpu[kind] = (cpu_direct, cpu_fedd)
        hwm = memory(fedd.proc.pid)["VmHWM"]
    finally:
        if fedd is not None:
            fedd.stop()
        src.stop()
        dst.stop()
        shutil.rmtree(work, ignore_errors=True)

    mib = size >> 20
    print(f"\nTPC of a {mib} MiB random file between two Apache mod_dav servers on loopback, {rounds} rounds")
    print(f"reference: curl -s SRC | curl -T - DST; fedd idle RSS {idle_rss / 1024:.0f} MiB")
    print(
        f"{'':14} {'direct MB/s':>12} {'fedd MB/s':>10} {'ratio':>6} {'RSS growth':>11} "
        f"{'CPU s/copy: curls':>18} {'fedd':>5}   (seconds)"
    )
    for kind, (direct, through, peak) in results.items():
        count = args.parallel if kind == "parallel" else 1
        mb = count * size / 1e6
        ratios = [d / t for d, t in zip(direct, through, strict=True)]
        label = f"{kind} x{count}" if count > 1 else kind
        print(
            f"{label:14} {mb / statistics.median(direct):12.1f} {mb / statistics.median(through):10.1f} "
            f"{statistics.median(ratios):6.2f} {(peak - idle_rss) / 1024:7.0f} MiB "
            f"{statistics.median(cpu[kind][0]):18.2f} {statistics.median(cpu[kind][1]):5.2f}"
            f"   direct {', '.join(f'{x:.2f}' for x in direct)}; fedd {', '.join(f'{x:.2f}' for x in through)}"
        )
    print(f"fedd VmHWM {hwm / 1024:.0f} MiB; ratio = median of the per-round (direct time / fedd time)")
    print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()

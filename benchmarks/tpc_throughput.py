"""Third-party-copy throughput: a pull through fedd vs a direct copy between the same two servers.

Two Apache mod_dav servers on loopback: the "remote site" holding a large random file, and the
federation's writable DAV endpoint. fedd pulls the file (`COPY` + `Source:`), streaming it from one
to the other with flow control; the reference is `curl -s SRC | curl -T - DST` between the same two
servers in the same run (two processes doing nothing else). Also prints fedd's peak memory (VmHWM),
which must stay far below the file size.

Usage: python3 benchmarks/tpc_throughput.py [--quick]
"""

from __future__ import annotations

import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, memory, start_fedd

from tests import servers


def copy_through_fedd(port: int, path: str, source: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("COPY", path, headers={"Source": source, "Credential": "none"})
    response = conn.getresponse()
    body = response.read().decode()
    elapsed = time.perf_counter() - start
    conn.close()
    if response.status != 202 or not body.rstrip().endswith("success: Created"):
        raise RuntimeError(f"COPY {path}: {response.status} {body[-300:]}")
    return elapsed


def copy_direct(source: str, destination: str) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        f"curl -sS -f --max-time 600 {source} | curl -sS -f --max-time 600 -T - {destination}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=700,
    )
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"direct copy failed: {out.stderr}")
    return elapsed


def seconds(times: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in times) + " s"


def main() -> None:
    quick = "--quick" in sys.argv
    size = (128 if quick else 1024) << 20
    rounds = 2 if quick else 3
    work = Path(tempfile.mkdtemp(prefix="fedd-tpcbench-"))
    work.chmod(0o755)
    src_root, dst_root = work / "src", work / "dst"
    (src_root / "data").mkdir(parents=True)
    (dst_root / "fed").mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with (src_root / "data" / "big.bin").open("wb") as f:
        for _ in range(size >> 20):
            f.write(chunk)
    src = servers.start_apache_dav(work / "apache-src", src_root)
    dst = servers.start_apache_dav(work / "apache-dst", dst_root)
    fedd = None
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
[endpoint dst]
kind = dav
url = {dst.url}
map = /fed /fed
write = yes
""",
            port,
        )
        source = src.url + "/data/big.bin"
        direct, through = [], []
        for n in range(rounds):  # interleaved, so both see the same machine state
            direct.append(copy_direct(source, f"{dst.url}/fed/direct{n}.bin"))
            through.append(copy_through_fedd(port, f"/fed/fedd{n}.bin", source))
            for name in (f"direct{n}.bin", f"fedd{n}.bin"):
                got = dst_root / "fed" / name
                if got.stat().st_size != size:
                    raise RuntimeError(f"{name}: {got.stat().st_size} bytes, expected {size}")
                got.unlink()
        peak = memory(fedd.proc.pid)
    finally:
        if fedd is not None:
            fedd.stop()
        src.stop()
        dst.stop()
        shutil.rmtree(work, ignore_errors=True)

    mb = size / 1e6
    d, t = statistics.median(direct), statistics.median(through)
    print(f"\nTPC pull of a {size >> 20} MiB file between two Apache mod_dav servers on loopback, {rounds} rounds")
    print(f"{'direct: curl SRC | curl -T - DST':40} median {mb / d:8.1f} MB/s   ({seconds(direct)})")
    print(f"{'fedd: COPY + Source: (pull)':40} median {mb / t:8.1f} MB/s   ({seconds(through)})")
    print(f"\nfedd / direct throughput: {d / t:.2f}")
    print(
        f"fedd peak memory (VmHWM): {peak['VmHWM'] / 1024:.0f} MiB, now {peak['VmRSS'] / 1024:.0f} MiB "
        f"for a {size >> 20} MiB file"
    )


if __name__ == "__main__":
    main()

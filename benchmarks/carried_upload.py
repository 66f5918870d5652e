"""Carried uploads: rclone uploading a file through fedd (which streams it on to Apache mod_dav)
against the same rclone uploading it to the same Apache directly, in the same run, alternating.

    .venv/bin/python benchmarks/carried_upload.py [--mib 1024] [--runs 3]

Prints MB/s of each, their ratio, and fedd's peak RSS growth during the carried runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import free_port, memory, start_fedd

from tests.servers import start_apache_dav


def rclone(url: str, src: Path, name: str, workdir: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        ["rclone", "--webdav-url", url, "--retries", "1", "copyto", str(src), f":webdav:/{name}"],
        env=dict(os.environ, RCLONE_CONFIG=str(workdir / "rclone.conf")),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedd-bench-carry-"))
    os.chmod(work, 0o755)
    docroot = work / "docroot"
    (docroot / "up").mkdir(parents=True)
    subprocess.run(["chown", "-R", "www-data", str(docroot)], check=True)
    dav = start_apache_dav(work / "apache", docroot)
    src = work / "src.bin"
    with open(src, "wb") as f:
        block = os.urandom(8 << 20)
        for _ in range(max(1, args.mib // 8)):
            f.write(block)
    size = src.stat().st_size
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[space]
interval = 3600
[endpoint dav]
kind = dav
url = {dav.url}
map = /up /up
write = yes
space_source = none
timeout = 60
"""
    fed = start_fedd(work / "fedd", conf, port)
    try:
        direct: list[float] = []
        carried: list[float] = []
        base = memory(fed.proc.pid)["VmRSS"]
        peak = base
        for i in range(args.runs):
            direct.append(size / rclone(dav.url, src, f"up/direct{i}.bin", work) / 1e6)
            (docroot / "up" / f"direct{i}.bin").unlink()
            carried.append(size / rclone(fed.url, src, f"up/carried{i}.bin", work) / 1e6)
            peak = max(peak, memory(fed.proc.pid)["VmHWM"])
            (docroot / "up" / f"carried{i}.bin").unlink()
        d, c = statistics.median(direct), statistics.median(carried)
        print(f"file {size >> 20} MiB, {args.runs} runs alternating, medians")
        print(f"rclone -> Apache directly:      {d:8.1f} MB/s  {[round(x) for x in direct]}")
        print(f"rclone -> fedd -> Apache:       {c:8.1f} MB/s  {[round(x) for x in carried]}")
        print(f"ratio carried/direct:           {c / d:8.2f}")
        print(f"fedd RSS {base} KiB, peak {peak} KiB (+{(peak - base) >> 10} MiB)")
    finally:
        fed.stop()
        dav.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

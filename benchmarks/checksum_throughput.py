"""Adler-32 throughput of fedd's checksum worker on a large object, against the limit.

fedd (`twistd fedd`, one process) is asked `HEAD` + `Want-Digest: adler32` + `Prefer: wait=600` for an
object nobody knows the checksum of: a worker streams it from the endpoint over a bulk connection,
hashing each chunk (in a thread of its own) as it arrives. Its rate is the worker's own measurement (status page) and
the client's wall time. References in the same run: `zlib.adler32` over a memory buffer of the same
size (the hashing limit) and `curl` fetching the object to /dev/null (the transfer limit).
Sources: Apache mod_dav (a random file, in the page cache); with `--ceph`, also a Ceph RGW object
(random bytes, uploaded with boto3 first into a private RGW whose memstore holds 2 GiB: 512 MiB by
default). Each round runs curl first, then a fresh fedd (new database: nothing known) on the same
objects; the ratio is the median of the per-round fedd / curl rates.

Usage: python3 benchmarks/checksum_throughput.py [--quick] [--ceph] [--size MiB] [--ceph-size MiB]
       [--rounds N] [--tree DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

from common import free_port, memory, start_fedd

import tests.daemon
from tests import servers

BUCKET = "fedd-bench-sums"


def zlib_rate(size: int, repeat: int = 3) -> float:
    """MB/s of zlib.adler32 over one in-memory buffer of `size` bytes (best of `repeat`)."""
    buffer = os.urandom(1 << 20) * (size >> 20)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        zlib.adler32(buffer)
        best = min(best, time.perf_counter() - start)
    del buffer
    return size / best / 1e6


def curl_rate(url: str) -> float:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    size, seconds = out.stdout.split()
    return float(size) / float(seconds) / 1e6


def fedd_rate(port: int, path: str, size: int) -> tuple[float, float]:
    """(worker MB/s from the status, client wall-clock MB/s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    start = time.perf_counter()
    conn.request("HEAD", path, headers={"Want-Digest": "adler32", "Prefer": "wait=600"})
    response = conn.getresponse()
    response.read()
    wall = time.perf_counter() - start
    conn.close()
    if response.status != 200 or not response.getheader("digest"):
        raise RuntimeError(f"{path}: HTTP {response.status} {response.getheaders()}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/fedd/status", timeout=10) as r:
        status = json.loads(r.read())
    job = next(j for j in status["checksums"]["recent"] if j["path"] == path)
    if job["bytes"] != size:
        raise RuntimeError(f"{path}: hashed {job['bytes']} of {size} bytes")
    return size / job["running_s"] / 1e6, size / wall / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ceph", action="store_true", help="also a Ceph RGW object (--ceph-size MiB)")
    parser.add_argument("--size", type=int, default=0, help="Apache file size in MiB (default 1024, 200 quick)")
    parser.add_argument("--ceph-size", type=int, default=512, help="Ceph object size in MiB (memstore: 2 GiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", default="", help="run fedd from this source tree instead of the checkout")
    args = parser.parse_args()
    if args.tree:
        tests.daemon.REPO = Path(args.tree).resolve()  # PYTHONPATH of the fedd process
    size = (args.size or (200 if args.quick else 1024)) << 20
    sizes = {"apache": size, "ceph": args.ceph_size << 20}
    work = Path(tempfile.mkdtemp(prefix="fedd-sums-"))
    work.chmod(0o755)
    docroot = work / "docroot"
    (docroot / "data").mkdir(parents=True)
    with open(docroot / "data" / "big.bin", "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    dav = servers.start_apache_dav(work / "apache", docroot)
    ceph = None
    fedd_rates: dict[str, list[tuple[float, float]]] = {"apache": []}
    curl_rates: dict[str, list[float]] = {"apache": []}
    urls = {"apache": f"{dav.url}/data/big.bin"}
    peak = 0.0
    try:
        text = "[server]\nlisten = tcp:PORT:interface=127.0.0.1\n[checksums]\ndatabase = DB\n"
        text += f"max_file_bytes = 10G\n[endpoint dav]\nkind = dav\nurl = {dav.url}\nmap = /dav /data\n"
        if args.ceph:
            import boto3
            from botocore.config import Config

            ceph = servers.start_ceph_rgw(work / "ceph")
            s3 = boto3.client(
                "s3",
                endpoint_url=ceph.url,
                aws_access_key_id=ceph.access_key,
                aws_secret_access_key=ceph.secret_key,
                region_name="us-east-1",
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
            s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key="data/big.bin", Body=os.urandom(1 << 20) * (sizes["ceph"] >> 20))
            urls["ceph"] = s3.generate_presigned_url(
                "get_object", Params={"Bucket": BUCKET, "Key": "data/big.bin"}, ExpiresIn=3600
            )
            fedd_rates["ceph"], curl_rates["ceph"] = [], []
            text += (
                f"[endpoint ceph]\nkind = s3\nurl = {ceph.url}\nbucket = {BUCKET}\naccess_key = {ceph.access_key}\n"
                f"secret_key = {ceph.secret_key}\nmap = /ceph /data\n"
            )
        paths = {"apache": "/dav/big.bin", "ceph": "/ceph/big.bin"}
        for n in range(args.rounds):  # alternating, a fresh fedd (and database) each round: nothing known
            for source in fedd_rates:
                curl_rates[source].append(curl_rate(urls[source]))
            port = free_port()
            config = text.replace("PORT", str(port)).replace("DB", str(work / f"sums-{n}.sqlite"))
            fedd = start_fedd(work / f"fedd-{n}", config, port)
            try:
                for source in fedd_rates:
                    fedd_rates[source].append(fedd_rate(port, paths[source], sizes[source]))
                peak = max(peak, memory(fedd.proc.pid)["VmHWM"] / 1024)
            finally:
                fedd.stop()
        if ceph is not None:
            s3.delete_object(Bucket=BUCKET, Key="data/big.bin")
    finally:
        dav.stop()
        if ceph is not None:
            ceph.stop()
        shutil.rmtree(work, ignore_errors=True)
    limit = zlib_rate(size)
    print(f"\nAdler-32 by fedd's checksum worker (one fedd process, one worker busy), {args.rounds} rounds alternating")
    print(f"{'zlib.adler32 on a memory buffer (hashing limit)':52} {limit:9.0f} MB/s")
    print(f"{'':28} {'size':>8} {'curl MB/s':>10} {'fedd MB/s':>10} {'ratio':>6}  (fedd as its client saw it)")
    for source in fedd_rates:
        worker = [w for w, _ in fedd_rates[source]]
        wall = [c for _, c in fedd_rates[source]]
        ratios = [w / c for w, c in zip(worker, curl_rates[source], strict=True)]
        print(
            f"{'from ' + source:28} {sizes[source] >> 20:5} MiB {statistics.median(curl_rates[source]):10.0f} "
            f"{statistics.median(worker):10.0f} {statistics.median(ratios):6.2f}  ({statistics.median(wall):.0f} MB/s)"
            f"   curl {', '.join(f'{x:.0f}' for x in curl_rates[source])}; fedd {', '.join(f'{x:.0f}' for x in worker)}"
        )
    print(f"fedd peak RSS (VmHWM) {peak:.0f} MiB; ratio = median of the per-round fedd worker / curl rates")


if __name__ == "__main__":
    main()

"""Adler-32 throughput of fedd's checksum worker on a large object, against the limit.

fedd (`twistd fedd`, one process) is asked `HEAD` + `Want-Digest: adler32` + `Prefer: wait=600` for an
object nobody knows the checksum of: a worker streams it from the endpoint through the endpoint's HTTP
client, hashing each chunk as it arrives. Its rate is the worker's own measurement (status page) and
the client's wall time. References in the same run: `zlib.adler32` over a memory buffer of the same
size (the hashing limit) and `curl` fetching the object to /dev/null (the transfer limit).
Sources: Apache mod_dav (a sparse file: Apache sends zeros at disk-cache speed); with `--ceph`, also
a Ceph RGW object (random bytes, uploaded with boto3 first).

Usage: python3 benchmarks/checksum_throughput.py [--quick] [--ceph]
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

from common import free_port, memory, start_fedd

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
    size = (200 if "--quick" in sys.argv else 1024) << 20
    with_ceph = "--ceph" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="fedd-sums-"))
    docroot = work / "docroot"
    (docroot / "data").mkdir(parents=True)
    with open(docroot / "data" / "big.bin", "wb") as f:
        f.truncate(size)
    dav = servers.start_apache_dav(work / "apache", docroot)
    ceph = None
    results: dict[str, tuple[float, float]] = {}
    transfer: dict[str, float] = {}
    try:
        text = f"[server]\nlisten = tcp:PORT:interface=127.0.0.1\n[checksums]\ndatabase = {work / 'sums.sqlite'}\n"
        text += f"max_file_bytes = 10G\n[endpoint dav]\nkind = dav\nurl = {dav.url}\nmap = /dav /data\n"
        if with_ceph:
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
            s3.put_object(Bucket=BUCKET, Key="data/big.bin", Body=os.urandom(1 << 20) * (size >> 20))
            transfer["ceph"] = curl_rate(
                s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "data/big.bin"})
            )
            text += (
                f"[endpoint ceph]\nkind = s3\nurl = {ceph.url}\nbucket = {BUCKET}\naccess_key = {ceph.access_key}\n"
                f"secret_key = {ceph.secret_key}\nmap = /ceph /data\n"
            )
        transfer["apache"] = curl_rate(f"{dav.url}/data/big.bin")
        port = free_port()
        fedd = start_fedd(work / "fedd", text.replace("PORT", str(port)), port)
        try:
            results["apache"] = fedd_rate(port, "/dav/big.bin", size)
            if with_ceph:
                results["ceph"] = fedd_rate(port, "/ceph/big.bin", size)
            peak = memory(fedd.proc.pid)["VmHWM"] / 1024
        finally:
            fedd.stop()
    finally:
        dav.stop()
        if ceph is not None:
            ceph.stop()
    limit = zlib_rate(size)
    print(f"\nAdler-32 of a {size >> 20} MiB object by fedd's checksum worker (one process, one worker busy)")
    print(f"{'zlib.adler32 on a memory buffer (limit)':48} {limit:9.0f} MB/s")
    for source, (worker, wall) in results.items():
        print(f"{'curl GET to /dev/null from ' + source + ' (transfer)':48} {transfer[source]:9.0f} MB/s")
        print(f"{'fedd worker, streamed from ' + source:48} {worker:9.0f} MB/s   ratio to zlib {worker / limit:.2f}")
        print(f"{'  as the client saw it (HEAD, Prefer: wait)':48} {wall:9.0f} MB/s")
    print(f"fedd peak RSS {peak:.0f} MiB for a {size >> 20} MiB object")


if __name__ == "__main__":
    main()

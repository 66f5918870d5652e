"""Write redirects with placement over 10 endpoints, and the quota reporter on a 100,000-object bucket.

Part A: 10 S3 endpoints (the same Ceph RGW, ten buckets) all mapping /bench and writable. Every PUT is
a new name, so each one asks all ten endpoints whether the file exists (HEAD fan-out, wait_all), runs
the placement and presigns the upload URL. Reference, same run: fedd's cached GET redirect and a bare
twisted.web 302, with the same client (a Python keep-alive loop, N clients in threads).
Part B: the S3 listing measurement (`space_source = listing`) of a bucket of 100,000 objects:
seconds and peak Python memory (tracemalloc) of the measurement, vs the bytes of the whole listing.

Usage: python3 benchmarks/write_placement.py [--quick] [--writes-only]     (as root; starts Ceph)
FEDD_BENCH_PROFILE=out.txt records a py-spy profile of fedd during the PUTs.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from common import free_port, start_fedd

from fedd.config import EndpointConfig
from fedd.endpoints import make_endpoint
from tests import reactor, servers

ENDPOINTS = 10


def loop(port: int, method: str, paths: list[str], clients: int, seconds: float) -> float:
    """Requests per second over keep-alive connections, `clients` threads, bounded by time and count."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < stop and n < len(paths):
            path = paths[(i * 100_003 + n) % len(paths)] if method == "GET" else f"{paths[0]}/{i}-{n}.bin"
            body = b"x" if method == "PUT" else None
            conn.request(method, path, body=body)
            r = conn.getresponse()
            r.read()
            assert r.status in (302, 307), (method, r.status)
            n += 1
        done[i] = n
        conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def existence_check_rate(ceph: Any, seconds: float) -> float:
    from twisted.internet.defer import DeferredList

    endpoints = [
        make_endpoint(
            EndpointConfig(
                id=f"s{i}",
                kind="s3",
                url=ceph.url,
                bucket=f"bench{i}",
                access_key=ceph.access_key,
                secret_key=ceph.secret_key,
                timeout=10.0,
            ),
            reactor=reactor.the_reactor(),
        )
        for i in range(ENDPOINTS)
    ]
    rounds = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds and rounds < 100_000:
        name = f"/bench/floor-{rounds}.bin"
        reactor.call(lambda n=name: DeferredList([e.stat(n) for e in endpoints], fireOnOneErrback=True))
        rounds += 1
    return rounds / (time.monotonic() - started)


def bare_twisted(port: int) -> Any:
    import subprocess

    code = (
        "from twisted.web import server, resource; from twisted.internet import reactor\n"
        "class R(resource.Resource):\n isLeaf=True\n"
        " def render(self, r):\n  r.setResponseCode(302); r.setHeader(b'location', b'http://127.0.0.1/x'); return b''\n"
        f"reactor.listenTCP({port}, server.Site(R()), interface='127.0.0.1'); reactor.run()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    servers.wait_for_port(port, 10, proc)
    return proc


def main() -> None:
    quick = "--quick" in sys.argv
    seconds = 3.0 if quick else 8.0
    objects = 10_000 if quick else 100_000
    work = Path(tempfile.mkdtemp(prefix="fedd-bench-write-"))
    ceph = servers.start_ceph_rgw(work / "ceph")
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=ceph.url,
            aws_access_key_id=ceph.access_key,
            aws_secret_access_key=ceph.secret_key,
            region_name="us-east-1",
            config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}, max_pool_connections=32),
        )
        sections = []
        for i in range(ENDPOINTS):
            s3.create_bucket(Bucket=f"bench{i}")
            sections.append(
                f"[endpoint s{i}]\nkind = s3\nurl = {ceph.url}\nbucket = bench{i}\naccess_key = {ceph.access_key}\n"
                f"secret_key = {ceph.secret_key}\nmap = /bench /bench\nwrite = yes\nmin_free = 1G\n"
            )
        s3.put_object(Bucket="bench0", Key="bench/read.bin", Body=b"r")
        port = free_port()
        fedd = start_fedd(
            work / "fedd",
            f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n[locate]\nwait_budget = 5\n[space]\ninterval = 5\n"
            + "\n".join(sections),
            port,
        )
        bare_port = free_port()
        bare = bare_twisted(bare_port)
        try:
            if os.environ.get("FEDD_BENCH_PROFILE"):
                import subprocess

                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-o",
                        os.environ["FEDD_BENCH_PROFILE"],
                        "-f",
                        "raw",
                        "-d",
                        "6",
                        "-p",
                        str(fedd.proc.pid),
                    ]
                )
                loop(port, "PUT", ["/bench/p"], 4, 6)
                spy.wait()
            puts = {c: loop(port, "PUT", ["/bench/w"], c, seconds) for c in (1, 8)}
            gets = {c: loop(port, "GET", ["/bench/read.bin"] * 10**6, c, seconds) for c in (1, 8)}
            bares = {c: loop(bare_port, "GET", ["/x"] * 10**6, c, seconds) for c in (1, 8)}
        finally:
            bare.terminate()
            fedd.stop()
        # the floor: every new upload first asks all ten endpoints whether the name exists
        floor = existence_check_rate(ceph, seconds)
        print(f"A. write redirects with placement over {ENDPOINTS} S3 endpoints (Python client, keep-alive)")
        print(f"   reference: {floor:.0f} rounds/s of {ENDPOINTS} parallel signed HEADs (fedd's S3 client, in-process)")
        print("   clients | fedd PUT 307/s | fedd cached GET 302/s | bare twisted 302/s | PUT/GET | PUT/bare")
        for c in (1, 8):
            print(
                f"   {c:7d} | {puts[c]:14.0f} | {gets[c]:21.0f} | {bares[c]:18.0f} | "
                f"{puts[c] / gets[c]:7.2f} | {puts[c] / bares[c]:8.2f}"
            )

        if "--writes-only" in sys.argv:
            return
        # Part B: the quota reporter on a big bucket
        s3.create_bucket(Bucket="big")
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(
                pool.map(
                    lambda i: s3.put_object(Bucket="big", Key=f"d{i % 100}/o{i:06d}", Body=b"b" * (i % 97)),
                    range(objects),
                )
            )
        print(f"B. filled a bucket with {objects} objects in {time.monotonic() - started:.0f} s")
        config = EndpointConfig(
            id="big",
            kind="s3",
            url=ceph.url,
            bucket="big",
            access_key=ceph.access_key,
            secret_key=ceph.secret_key,
            timeout=30.0,
        )
        endpoint = make_endpoint(config, reactor=reactor.the_reactor())
        tracemalloc.start()
        started = time.monotonic()
        space = reactor.call(endpoint.space, timeout=600)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        expected = sum(i % 97 for i in range(objects))
        listing_bytes = objects * 330  # one <Contents> entry of a ListObjectsV2 page is ~330 bytes of XML
        print(
            f"   listing measurement: {space.files} objects, {space.used} bytes (expected {expected}) in "
            f"{elapsed:.1f} s = {space.files / elapsed:.0f} objects/s; peak traced memory {peak / 1e6:.1f} MB "
            f"(the whole listing as XML would be ~{listing_bytes / 1e6:.0f} MB)"
        )
        assert space.files == objects and space.used == expected
    finally:
        ceph.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

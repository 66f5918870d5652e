"""The cost of sharing state (issue 16): `[state] database` on SQLite vs PostgreSQL in the same run,
and redirect throughput with `[state]` on PostgreSQL vs without it (nothing on the redirect path reads it).

For each of: no [state], [state] on an SQLite file, [state] on PostgreSQL (a fresh database on the
machine's server, 127.0.0.1:5432):
- PUT placement: new names PUT through fedd (307 to a writable Ceph RGW bucket), N keep-alive clients;
- checksums computed: HEAD Want-Digest: adler32 + Prefer: wait on N distinct small local files (each is
  hashed once and its value written to the state database);
- checksum answers from the store: fedd restarted (nothing in memory), the same HEADs, answered from
  the database (SQLite vs PostgreSQL is the difference that matters);
- redirects: wrk at 32 connections on a cached GET (a presigned Ceph URL).
Figures move by 2x between machines of this kind: read the ratios.

Usage: python3 benchmarks/state_sharing.py [--quick]     (as root; starts Ceph RGW)
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from common import Fedd, free_port, start_fedd, wrk

from tests import pgservers, servers
from tests.daemon import wait_for

QUICK = "--quick" in sys.argv
CLIENTS = 8
PUT_SECONDS = 3.0 if QUICK else 10.0
FILES = 300 if QUICK else 2000
WRK_SECONDS = 3.0 if QUICK else 10.0
GET_PATH = "/atlas/bench/popular.bin"


def config(port: int, rgw: servers.CephRGW, local: Path, state: str) -> str:
    state_section = f"[state]\ndatabase = {state}\nhost_name = bench\n" if state else ""
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[events]
types = none
[checksums]
workers = 2
queue = 100000
{state_section}
[endpoint ceph]
kind = s3
url = {rgw.url}
bucket = bench-state
access_key = {rgw.access_key}
secret_key = {rgw.secret_key}
map = /atlas /atlas
write = yes
[endpoint files]
kind = local
path = {local}
map = /sums /
"""


def requests_per_second(port: int, method: str, paths: list[str], headers: dict[str, str]) -> tuple[float, int]:
    """(requests/s, answers with a Digest) over CLIENTS keep-alive connections, each path once."""
    chunks = [paths[i::CLIENTS] for i in range(CLIENTS)]

    def run(mine: list[str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        digests = 0
        for path in mine:
            conn.request(method, path, body=b"x" if method == "PUT" else None, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status}")
            digests += r.getheader("digest") is not None
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()
        return digests

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        digests = sum(pool.map(run, chunks))
    return len(paths) / (time.monotonic() - began), digests


def put_rate(port: int, tag: str) -> float:
    """PUT redirects per second for PUT_SECONDS (new names: each asks the endpoint, places, presigns)."""
    stop = time.monotonic() + PUT_SECONDS

    def run(i: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < stop:
            conn.request("PUT", f"/atlas/bench/put-{tag}-{i}-{n}.bin", body=b"x")
            r = conn.getresponse()
            r.read()
            if r.status != 307:
                raise RuntimeError(f"PUT: {r.status}")
            n += 1
        conn.close()
        return n

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        total = sum(pool.map(run, range(CLIENTS)))
    return total / (time.monotonic() - began)


def queued(fedd: Fedd) -> int:
    state = fedd.status().get("state")
    return int(state["queued"]) if state else 0


def measure(name: str, state: str, rgw: servers.CephRGW, work: Path) -> dict[str, Any]:
    local = work / f"files-{name}"
    local.mkdir()
    for i in range(FILES):
        (local / f"f{i}.bin").write_bytes(os.urandom(4096))
    paths = [f"/sums/f{i}.bin" for i in range(FILES)]
    want = {"Want-Digest": "adler32", "Prefer": "wait=30"}
    port = free_port()
    text = config(port, rgw, local, state)
    fedd = start_fedd(work / name, text, port)
    figures: dict[str, Any] = {}
    try:
        figures["put_per_s"] = round(put_rate(port, name))
        rate, digests = requests_per_second(port, "HEAD", paths, want)
        assert digests == FILES, digests
        figures["checksums_computed_per_s"] = round(rate)
        wait_for(lambda: queued(fedd) == 0, 60, "the state writes")
        figures["computed"] = fedd.status()["checksums"]["computed"]
    finally:
        fedd.stop()
    if state:  # restarted: nothing in memory, every answer comes from the state database
        fedd = start_fedd(work / name, text, port)
        try:
            # the checksum service asks the database once it has opened it (a lookup before that is
            # answered without, and computes)
            wait_for(lambda: "checksum database" in fedd.log_text(), 20, "the checksum database open")
            rate, digests = requests_per_second(port, "HEAD", paths, {"Want-Digest": "adler32"})
            assert digests == FILES, f"{digests} of {FILES} answered from the store"
            assert fedd.status()["checksums"]["computed"] == 0
            figures["checksums_from_store_per_s"] = round(rate)
        finally:
            fedd.stop()
    fedd = start_fedd(work / name, text, port)
    try:
        wait_for(lambda: _status(port, GET_PATH) == 302, 20, "the cached redirect")
        figures["redirects_per_s"] = round(wrk(f"http://127.0.0.1:{port}{GET_PATH}", 32, WRK_SECONDS))
    finally:
        fedd.stop()
    return figures


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="fedd-bench-state-"))
    rgw = servers.start_ceph_rgw(work / "ceph")
    database = pgservers.create_database()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=rgw.url,
            aws_access_key_id=rgw.access_key,
            aws_secret_access_key=rgw.secret_key,
            region_name="us-east-1",
            config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="bench-state")
        s3.put_object(Bucket="bench-state", Key=GET_PATH.lstrip("/"), Body=b"popular\n" * 1000)
        results = {
            "none": measure("none", "", rgw, work),
            "sqlite": measure("sqlite", "state.sqlite", rgw, work),
            "postgresql": measure("postgresql", database, rgw, work),
        }
    finally:
        pgservers.drop_database(database)
        rgw.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    pg, lite, none = results["postgresql"], results["sqlite"], results["none"]
    print(f"PUT placement, PostgreSQL / SQLite: {pg['put_per_s'] / lite['put_per_s']:.2f}")
    computed = pg["checksums_computed_per_s"] / lite["checksums_computed_per_s"]
    print(f"checksums computed, PostgreSQL / SQLite: {computed:.2f}")
    print(
        f"checksum answers from the store, PostgreSQL / SQLite: "
        f"{pg['checksums_from_store_per_s'] / lite['checksums_from_store_per_s']:.2f}"
    )
    print(f"redirects, [state] on PostgreSQL / no [state]: {pg['redirects_per_s'] / none['redirects_per_s']:.2f}")


if __name__ == "__main__":
    main()

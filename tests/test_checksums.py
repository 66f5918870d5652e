"""Checksums through `twistd fedd` with real storage and real clients: Ceph RGW metadata and ETags,
Apache mod_dav files hashed by fedd, gfal-sum, davix-http and curl; 202 + Retry-After, Prefer: wait,
store-back into Ceph metadata and fedd's database, mismatches as events, a 200 MB file in bounded memory."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import sqlite3
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, dav_endpoint, free_port

BUCKET = "fedd-sums"


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def b64(hex_value: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_value)).decode()


def request(
    fed: Fedd, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=90)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def run(*cmd: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


def dav_file(stores: dict[str, Any], path: str, data: bytes) -> Path:
    target = Path(stores["dav"].docroot) / "d" / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    subprocess.run(["chown", "-R", "www-data:www-data", str(Path(stores["dav"].docroot) / "d")], check=True)
    return target


def spool_events(fed: Fedd, event_type: str) -> list[dict[str, Any]]:
    spool = fed.config.parent / "events.jsonl"
    if not spool.exists():
        return []
    lines = [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["event_type"] == event_type]


@pytest.fixture(scope="module")
def stores(ceph: Any, s3client: Any, dav1: Any) -> dict[str, Any]:
    s3client.create_bucket(Bucket=BUCKET)
    return {"ceph": ceph, "dav": dav1, "s3": s3client}


@pytest.fixture(scope="module")
def fed(stores: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("checksums")
    ceph, dav = stores["ceph"], stores["dav"]
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    text = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
positive_ttl = 1
negative_ttl = 1
[events]
spool = {workdir / "events.jsonl"}
[checksums]
workers = 2
database = {workdir / "sums.sqlite"}
max_file_bytes = 500M
{ceph_endpoint(ceph, BUCKET, map="/sums /sums", write=True)}{dav_endpoint(dav, map="/sums /d/sums")}"""
    f = start_fedd(workdir, text, port)
    yield f
    f.stop()


def head_until_known(fed: Fedd, path: str, headers: dict[str, str], timeout: float = 60) -> dict[str, str]:
    def ask() -> dict[str, str] | None:
        status, got, _ = request(fed, "HEAD", path, headers)
        assert status in (200, 202), status
        return got if status == 200 else None

    result: dict[str, str] = wait_for(ask, timeout, f"checksum of {path}")
    return result


def checksums_count(fed: Fedd, key: str, at_least: int) -> int:
    """The status's summed `checksums.<key>` once it is at least `at_least` (bounded wait): with
    workers, the one that answers adds the others' counts as they wrote them, up to a second ago."""
    count: int = wait_for(
        lambda: fed.status()["checksums"][key], 5, f"checksums.{key} >= {at_least}", until=lambda n: n >= at_least
    )
    return count


def test_s3_metadata_answers_at_once_curl_gfal_davix(fed: Fedd, stores: dict[str, Any]) -> None:
    data = os.urandom(100_000)
    value = adler(data)
    stores["s3"].put_object(Bucket=BUCKET, Key="sums/meta.bin", Body=data, Metadata={"adler32": value.upper()})
    before = fed.status()["checksums"]["computed"]
    url = fed.url + "/sums/meta.bin"
    out = run("curl", "-sS", "-I", "-H", "Want-Digest: adler32", url)
    assert out.stdout.startswith("HTTP/1.1 200"), out.stdout
    assert f"Digest: adler32={value}" in out.stdout
    assert "Content-Length: 100000" in out.stdout
    out = run("gfal-sum", "-t", "60", url, "ADLER32")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [url, value]
    # a one-part upload's ETag is its MD5
    out = run("gfal-sum", "-t", "60", url, "MD5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [url, hashlib.md5(data).hexdigest()]
    out = run("davix-http", "-X", "HEAD", "-H", "Want-Digest: MD5", "--trace", "header", url)
    assert out.returncode == 0, out.stderr
    assert f"md5={b64(hashlib.md5(data).hexdigest())}" in out.stdout + out.stderr
    assert fed.status()["checksums"]["computed"] == before, "answered from metadata, nothing computed"


def test_s3_object_without_metadata_is_computed_once_and_stored(fed: Fedd, stores: dict[str, Any]) -> None:
    s3 = stores["s3"]
    data = os.urandom(3 << 20)
    value = adler(data)
    s3.put_object(
        Bucket=BUCKET, Key="sums/plain.bin", Body=data, ContentType="application/x-fedd-test", Metadata={"owner": "me"}
    )
    status, headers, _ = request(fed, "HEAD", "/sums/plain.bin", {"Want-Digest": "ADLER32"})
    assert status == 202, (status, headers)
    assert int(headers["retry-after"]) >= 1
    assert "digest" not in headers
    got = head_until_known(fed, "/sums/plain.bin", {"Want-Digest": "ADLER32"})
    assert got["digest"] == f"adler32={value}"
    assert got["content-length"] == str(len(data))
    # kept in the object's own metadata, the rest of it untouched
    head = wait_for(
        lambda: (lambda h: h if "adler32" in h["Metadata"] else None)(
            s3.head_object(Bucket=BUCKET, Key="sums/plain.bin")
        ),
        timeout=30,
        what="metadata stored back",
    )
    assert head["Metadata"] == {"owner": "me", "adler32": value}
    assert head["ContentType"] == "application/x-fedd-test"
    assert head["ContentLength"] == len(data)
    assert s3.get_object(Bucket=BUCKET, Key="sums/plain.bin")["Body"].read() == data
    # Ceph holds the metadata a moment before fedd has its answer and finishes the job: wait for the event
    events = wait_for(
        lambda: [e["payload"] for e in spool_events(fed, "checksum-done") if e["payload"]["path"] == "/sums/plain.bin"],
        timeout=30,
        what="checksum-done event",
    )
    assert events[0]["checksum-adler"] == value and events[0]["stored"] == "s3-metadata"
    # (with workers, the one answering adds the others' counts and recent jobs within a second)
    st = wait_for(
        lambda: fed.status()["checksums"],
        5,
        "the stored checksum in the status",
        until=lambda c: c["stored_s3"] >= 1 and any(j["path"] == "/sums/plain.bin" for j in c["recent"]),
    )
    done = [j for j in st["recent"] if j["path"] == "/sums/plain.bin"]
    assert done and done[0]["bytes"] == len(data) and done[0]["values"]["adler32"] == value
    computed = st["computed"]
    for _ in range(3):  # asked again: answered from memory, never computed again
        status, headers, _ = request(fed, "HEAD", "/sums/plain.bin", {"Want-Digest": "adler32"})
        assert status == 200 and headers["digest"] == f"adler32={value}"
    assert checksums_count(fed, "computed", computed) == computed


def test_dav_file_prefer_wait_repr_digest_and_database(fed: Fedd, stores: dict[str, Any]) -> None:
    data = os.urandom(1 << 20)
    dav_file(stores, "/sums/dav/one.bin", data)
    md5 = hashlib.md5(data).hexdigest()
    sha = hashlib.sha256(data).hexdigest()
    status, headers, _ = request(fed, "HEAD", "/sums/dav/one.bin", {"Want-Digest": "MD5", "Prefer": "wait=30"})
    assert status == 200, headers
    assert headers["digest"] == f"md5={b64(md5)}"
    status, headers, _ = request(
        fed, "HEAD", "/sums/dav/one.bin", {"Want-Repr-Digest": "sha-256=1", "Prefer": "wait=30"}
    )
    assert status == 200
    assert headers["repr-digest"] == f"sha-256=:{b64(sha)}:"
    assert "digest" not in headers  # Repr-Digest was asked, not Digest
    out = run("gfal-sum", "-t", "60", fed.url + "/sums/dav/one.bin", "ADLER32")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == adler(data)
    out = run("curl", "-sS", "-I", "-H", "Want-Repr-Digest: adler=3, md5=1", fed.url + "/sums/dav/one.bin")
    assert f"Repr-Digest: adler=:{b64(adler(data))}:" in out.stdout, out.stdout
    # kept in fedd's database (Apache has no metadata to keep it in)
    db = sqlite3.connect(fed.config.parent / "sums.sqlite")
    rows = dict(db.execute("SELECT algorithm, value FROM checksums WHERE path = '/d/sums/dav/one.bin'").fetchall())
    db.close()
    assert rows["adler32"] == adler(data) and rows["md5"] == md5 and rows["sha256"] == sha


def test_q_values_unknown_algorithms_and_get_redirects(fed: Fedd, stores: dict[str, Any]) -> None:
    data = b"q-values\n" * 1000
    md5 = hashlib.md5(data).hexdigest()
    stores["s3"].put_object(Bucket=BUCKET, Key="sums/q.bin", Body=data, Metadata={"adler32": adler(data)})
    path = "/sums/q.bin"
    cases = [
        ("md5;q=0.3, adler32;q=0.9", f"adler32={adler(data)}"),
        ("md5;q=1, adler32;q=0.9", f"md5={b64(md5)}"),
        ("sha-256;q=1, adler32;q=0.2", f"adler32={adler(data)}"),  # the best *known* one: no waiting
        ("UNIXcksum, adler32;q=0, MD5;q=0.1", f"md5={b64(md5)}"),
    ]
    for want, expected in cases:
        status, headers, _ = request(fed, "HEAD", path, {"Want-Digest": want})
        assert (status, headers.get("digest")) == (200, expected), want
    computed = fed.status()["checksums"]["computed"]
    status, headers, _ = request(fed, "HEAD", path, {"Want-Digest": "crc32c, UNIXsum"})
    assert status == 200 and "digest" not in headers  # RFC 3230: unknown algorithms are ignored
    status, headers, _ = request(fed, "GET", path, {"Want-Digest": "adler32"})
    assert status == 302 and headers["digest"] == f"adler32={adler(data)}"
    assert "X-Amz-Signature=" in headers["location"]
    # a GET for a file whose checksum nobody knows is redirected at once, and starts no computation
    dav_file(stores, "/sums/dav/get.bin", b"g" * 5000)
    started = time.monotonic()
    status, headers, _ = request(fed, "GET", "/sums/dav/get.bin", {"Want-Digest": "adler32"})
    assert status == 302 and "digest" not in headers and time.monotonic() - started < 2
    assert checksums_count(fed, "computed", computed) == computed
    status, headers, _ = request(fed, "HEAD", "/sums/nothing-here.bin", {"Want-Digest": "adler32"})
    assert status == 404


def test_mismatch_between_ceph_and_apache_is_an_event(fed: Fedd, stores: dict[str, Any]) -> None:
    path = "/sums/mm.bin"
    dav_data = b"the apache copy\n" * 500
    dav_file(stores, path, dav_data)
    status, headers, _ = request(fed, "HEAD", path, {"Want-Digest": "adler32", "Prefer": "wait=30"})
    assert status == 200 and headers["digest"] == f"adler32={adler(dav_data)}"
    # a copy on Ceph whose metadata says something else (same size: a silent corruption)
    stores["s3"].put_object(Bucket=BUCKET, Key="sums/mm.bin", Body=dav_data, Metadata={"adler32": "deadbeef"})
    time.sleep(1.5)  # positive_ttl = 1: the next locate sees both replicas

    def mismatch() -> list[dict[str, Any]]:
        request(fed, "HEAD", path, {"Want-Digest": "adler32"})
        return [e["payload"] for e in spool_events(fed, "checksum-mismatch") if e["payload"]["path"] == path]

    events = wait_for(mismatch, timeout=30, what="checksum-mismatch event")
    assert events[0]["algorithm"] == "adler32"
    assert events[0]["values"] == {"ceph": "deadbeef", "dav": adler(dav_data)}
    assert "checksum mismatch for /sums/mm.bin" in fed.log_text()
    checksums_count(fed, "mismatches", 1)  # counted by the worker that saw both replicas


def _vm(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def test_200mb_file_hashed_in_bounded_memory_with_progress(fed: Fedd, stores: dict[str, Any]) -> None:
    size = 200 << 20
    target = Path(stores["dav"].docroot) / "d" / "sums" / "dav" / "huge.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.truncate(size)  # sparse: made at once, Apache serves 200 MB of zeros
    subprocess.run(["chown", "-R", "www-data:www-data", str(target.parent)], check=True)
    expected = 1
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        expected = zlib.adler32(zeros, expected)
    before = _vm(fed.proc.pid)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for job in fed.status()["checksums"]["running"]:
                if job["path"] == "/sums/dav/huge.bin":
                    seen.append(job)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert request(fed, "HEAD", "/sums/dav/huge.bin", {"Want-Digest": "adler32"})[0] == 202
        got = head_until_known(fed, "/sums/dav/huge.bin", {"Want-Digest": "adler32"}, timeout=120)
    finally:
        stop.set()
        watcher.join(10)
    assert got["digest"] == f"adler32={expected & 0xFFFFFFFF:08x}"
    after = _vm(fed.proc.pid)
    grown = after["VmHWM"] - before["VmHWM"]
    assert grown < 40 << 20, f"peak memory grew by {grown >> 20} MiB while hashing a 200 MiB file"
    assert seen, "the computation was never visible in the status"
    partial = [j for j in seen if 0 < j["bytes"] < size]
    assert partial, "progress (bytes hashed so far) was never visible in the status"
    assert all(j["size"] == size and j["algorithms"] == ["adler32"] for j in seen)


def test_site_default_wait_lets_gfal_sum_get_a_new_checksum_at_once(tmp_path: Path) -> None:
    """gfal2/davix do not retry a 202: with `[checksums] wait`, their first ask brings the value."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = os.urandom(5 << 20)
    (data_dir / "new.bin").write_bytes(data)
    port = free_port()
    text = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[checksums]
wait = 30
database = {tmp_path / "sums.sqlite"}
[endpoint local]
kind = local
path = {data_dir}
map = /l /
"""
    f = start_fedd(tmp_path / "fedd", text, port)
    try:
        url = f.url + "/l/new.bin"
        out = run("gfal-sum", "-t", "60", url, "ADLER32")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [url, adler(data)]
        out = run("gfal-sum", "-t", "60", url, "MD5")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [url, hashlib.md5(data).hexdigest()]
        status, headers, _ = request(f, "HEAD", "/l/new.bin", {"Want-Digest": "sha-512", "Prefer": "respond-async"})
        assert status == 202 and int(headers["retry-after"]) >= 1  # the client asked not to wait
        # with workers, the one that answers adds the others' finished checksums within a second
        wait_for(
            lambda: [sorted(j["algorithms"]) for j in reversed(f.status()["checksums"]["recent"])][:2],
            5,
            "both checksums in the status",
            until=[["adler32"], ["md5"]].__eq__,
        )
    finally:
        f.stop()


def test_metalink_carries_the_known_hashes_and_aria2_checks_them(
    fed: Fedd, stores: dict[str, Any], tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    stores["s3"].put_object(Bucket=BUCKET, Key="sums/ml.bin", Body=data, Metadata={"adler32": adler(data)})
    stores["s3"].put_object(Bucket=BUCKET, Key="sums/bad.bin", Body=data, Metadata={"adler32": "00000001"})
    status, _, body = request(fed, "GET", "/sums/ml.bin?metalink")
    assert status == 200
    text = body.decode()
    assert f'<hash type="adler32">{adler(data)}</hash>' in text
    assert f'<hash type="md5">{hashlib.md5(data).hexdigest()}</hash>' in text  # the one-part ETag
    (tmp_path / "good.meta4").write_bytes(body)
    good = run(
        "aria2c", "-q", "--check-integrity=true", "-d", str(tmp_path / "good"), "-M", str(tmp_path / "good.meta4")
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert (tmp_path / "good" / "ml.bin").read_bytes() == data
    # a wrong stored checksum makes aria2 refuse the download
    (tmp_path / "ml.meta4").write_bytes(request(fed, "GET", "/sums/bad.bin?metalink")[2])
    bad = run("aria2c", "-q", "--check-integrity=true", "-d", str(tmp_path / "bad"), "-M", str(tmp_path / "ml.meta4"))
    assert bad.returncode == 32, bad.stdout + bad.stderr  # aria2: "checksum validation failed"

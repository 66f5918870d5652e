"""HTTP third-party copy through `twistd fedd` with real storage and real clients.

The "remote site" is an Apache mod_dav (Basic auth on /private/), fedd federates Ceph RGW (S3) and
another Apache; gfal-copy (pull and push modes) and curl drive the copies. Misbehaving sources are
small loopback servers (tests/tpcservers.py)."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, dav_endpoint, free_port
from tests.tpcservers import RemoteSite, TrickySource, start_remote_site

BUCKET = "fedd-tpc"
MARKER_INTERVAL = 0.3


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteSite]:
    site = start_remote_site()
    yield site
    site.stop()


def fedd_config(port: int, ceph: Any, dav: Any, tpc: str, extra: str = "") -> str:
    endpoints = ceph_endpoint(ceph, BUCKET, map="/tpc/s3 /s3", write=True) + dav_endpoint(
        dav, map="/tpc/dav /tpcdav", write=True
    )
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
negative_ttl = 0
[health]
interval = 2
timeout = 5
[tpc]
marker_interval = {MARKER_INTERVAL}
idle_timeout = 5
timeout = 120
connect_timeout = 10
{tpc}
{endpoints}{extra}
"""


@pytest.fixture(scope="module")
def stores(ceph: Any, s3client: Any, dav2: Any) -> dict[str, Any]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    try:
        s3client.create_bucket(Bucket=BUCKET)
    except s3client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {"ceph": ceph, "s3": s3client, "dav": dav2}


@pytest.fixture(scope="module")
def fed(stores: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("tpc")
    f = start_fedd(workdir, fedd_config(port, stores["ceph"], stores["dav"], "allow_hosts = 127.0.0.1"), port)
    yield f
    f.stop()


def copy(
    fed: Fedd, path: str, headers: dict[str, str], timeout: float = 120
) -> tuple[int, dict[str, str], list[tuple[float, str]]]:
    """COPY and read the answer line by line as it streams: (status, headers, [(arrival time, line)])."""
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=timeout)
    conn.request("COPY", path, headers={"Credential": "none", **headers})
    r = conn.getresponse()
    lines = []
    while True:
        line = r.readline()
        if not line:
            break
        lines.append((time.monotonic(), line.decode().rstrip("\n")))
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, lines


def http_status(fed: Fedd, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=30)
    conn.request(method, path)
    status = conn.getresponse().status
    conn.close()
    return status


def outcome(lines: list[tuple[float, str]]) -> str:
    return lines[-1][1] if lines else ""


def events(fed: Fedd, kind: str, path: str) -> list[dict[str, Any]]:
    """The events of one type about one path, from fedd's spool file (waiting a little for them)."""
    spool = fed.config.parent / "fedd-events.jsonl"

    def found() -> list[dict[str, Any]]:
        lines = spool.read_text().splitlines() if spool.exists() else []
        docs = [json.loads(text) for text in lines if text.strip()]
        return [d["payload"] for d in docs if d.get("event_type") == kind and d["payload"].get("path") == path]

    payloads: list[dict[str, Any]] = wait_for(found, 5, f"a {kind} event about {path} in {spool}")
    return payloads


def s3_exists(stores: dict[str, Any], key: str) -> bool:
    """Whether Ceph holds `key`: only its 404 means no; any other error (Ceph down) fails the test."""
    try:
        stores["s3"].head_object(Bucket=BUCKET, Key=key)
        return True
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        return False


def is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in ("404", "NoSuchKey", "NotFound") or status == 404


def s3_get(stores: dict[str, Any], key: str) -> bytes:
    return stores["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[no-any-return]


def dav_file(stores: dict[str, Any], rel: str) -> Path:
    return Path(stores["dav"].docroot) / "tpcdav" / rel


def dav_put(stores: dict[str, Any], rel: str, data: bytes) -> None:
    """Put a file straight into the DAV endpoint's tree, owned by Apache's user like its own files."""
    path = dav_file(stores, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    docroot = Path(stores["dav"].docroot)
    for part in [path, *path.relative_to(docroot).parents]:
        shutil.chown(docroot / part, "www-data", "www-data")


def gfal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gfal-copy", "-t", "90", *args], capture_output=True, text=True, timeout=timeout)


# --- the two modes with real clients ----------------------------------------------------------------


def test_curl_pull_passes_transfer_headers_to_the_remote(fed: Fedd, remote: RemoteSite, stores: dict[str, Any]) -> None:
    data = os.urandom(3 << 20)
    remote.put_file("private/secret.bin", data)
    src = remote.url + "/private/secret.bin"
    status, headers, lines = copy(
        fed, "/tpc/dav/pulled/secret.bin", {"Source": src, "TransferHeaderAuthorization": remote.basic}
    )
    assert status == 202 and headers["content-type"] == "text/plain", lines
    assert outcome(lines) == "success: Created", lines
    assert dav_file(stores, "pulled/secret.bin").read_bytes() == data
    # the remote got the credentials as a plain Authorization header (the prefix taken off)
    assert any(
        line.startswith("GET /private/secret.bin 200 ") and f'auth="{remote.basic}"' in line
        for line in remote.access_log()
    ), remote.access_log()
    done = events(fed, "transfer-done", "/tpc/dav/pulled/secret.bin")
    assert done and done[0]["src-url"] == src and done[0]["dst-rse"] == "dav" and done[0]["src-rse"] == "127.0.0.1"
    assert done[0]["bytes"] == done[0]["file-size"] == len(data)
    assert done[0]["checksum-adler"] == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    # without the transfer header the remote says 401, after the 202, in the body
    status, _, lines = copy(fed, "/tpc/dav/pulled/noauth.bin", {"Source": src})
    assert status == 202
    assert outcome(lines).startswith("failure: the source answered HTTP 401"), lines
    assert not dav_file(stores, "pulled/noauth.bin").exists()


def test_gfal_copy_pull_into_s3(fed: Fedd, remote: RemoteSite, stores: dict[str, Any]) -> None:
    data = os.urandom(5 << 20)
    remote.put_file("public/gfal-pull.bin", data)
    out = gfal("--copy-mode", "pull", remote.url + "/public/gfal-pull.bin", fed.url + "/tpc/s3/gfal/pulled.bin")
    assert out.returncode == 0, out.stderr + out.stdout
    assert s3_get(stores, "s3/gfal/pulled.bin") == data
    # gfal2 asked fedd to pull (it did not stream the bytes through itself)
    assert "pull copy" in fed.log_text() and events(fed, "transfer-done", "/tpc/s3/gfal/pulled.bin")


def test_gfal_copy_push_from_s3(fed: Fedd, remote: RemoteSite, stores: dict[str, Any]) -> None:
    data = os.urandom(4 << 20)
    stores["s3"].put_object(Bucket=BUCKET, Key="s3/push/src.bin", Body=data)
    remote.put_file("public/pushed/.keep", b"")
    out = gfal("--copy-mode", "push", fed.url + "/tpc/s3/push/src.bin", remote.url + "/public/pushed/from-fedd.bin")
    assert out.returncode == 0, out.stderr + out.stdout
    assert (remote.docroot / "public/pushed/from-fedd.bin").read_bytes() == data
    done = events(fed, "transfer-done", "/tpc/s3/push/src.bin")
    assert done and done[0]["tpc-mode"] == "push" and done[0]["src-rse"] == "ceph"
    assert done[0]["dst-url"] == remote.url + "/public/pushed/from-fedd.bin"
    assert "X-Amz" not in json.dumps(done[0]), "presigned signatures must not reach the events"


def test_curl_push_with_transfer_header(fed: Fedd, remote: RemoteSite, stores: dict[str, Any]) -> None:
    data = os.urandom(1 << 20)
    dav_put(stores, "push/src.bin", data)
    dst = remote.url + "/private/pushed.bin"
    status, _, lines = copy(
        fed, "/tpc/dav/push/src.bin", {"Destination": dst, "TransferHeaderAuthorization": remote.basic}
    )
    assert status == 202 and outcome(lines) == "success: Created", lines
    assert (remote.docroot / "private/pushed.bin").read_bytes() == data
    assert any(line.startswith("PUT /private/pushed.bin 201 ") and remote.basic in line for line in remote.access_log())


# --- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["s3", "dav"])
def test_source_dying_mid_copy_leaves_nothing(fed: Fedd, stores: dict[str, Any], where: str) -> None:
    source = TrickySource(os.urandom(2 << 20), "half")
    try:
        status, _, lines = copy(fed, f"/tpc/{where}/broken/half.bin", {"Source": source.url + "/half.bin"})
    finally:
        source.stop()
    assert status == 202
    assert outcome(lines) == f"failure: the source closed the connection after {1 << 20} of {2 << 20} bytes", lines
    if where == "s3":
        assert not s3_exists(stores, "s3/broken/half.bin")
    else:
        assert not dav_file(stores, "broken/half.bin").exists()
    failed = events(fed, "transfer-failed", f"/tpc/{where}/broken/half.bin")
    assert failed and failed[0]["reason"].startswith("the source closed") and failed[0]["bytes"] == 1 << 20


def test_destination_refusing_the_write(fed: Fedd, remote: RemoteSite, stores: dict[str, Any]) -> None:
    stores["s3"].put_object(Bucket=BUCKET, Key="s3/refused/src.bin", Body=b"r" * 300_000)
    status, _, lines = copy(fed, "/tpc/s3/refused/src.bin", {"Destination": remote.url + "/private/refused.bin"})
    assert status == 202
    assert outcome(lines).startswith("failure: the destination answered HTTP 401"), lines
    assert not (remote.docroot / "private/refused.bin").exists()
    # a pull whose destination path exists already (no overwrite allowed): refused before the 202
    stores["s3"].put_object(Bucket=BUCKET, Key="s3/refused/exists.bin", Body=b"old")
    status, _, lines = copy(fed, "/tpc/s3/refused/exists.bin", {"Source": remote.url + "/private/x"})
    assert status == 409, lines
    assert s3_get(stores, "s3/refused/exists.bin") == b"old"


def test_forbidden_addresses(fed: Fedd, stores: dict[str, Any], tmp_path: Path) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x", "http://127.0.0.2:9/x"):
        status, _, lines = copy(fed, "/tpc/s3/forbidden.bin", {"Source": url})
        assert status == 403, (url, lines)
        assert "allow_hosts" in " ".join(line for _, line in lines), lines
    status, _, lines = copy(fed, "/tpc/s3/push/src.bin", {"Destination": "http://169.254.169.254/put"})
    assert status == 403 and "link-local" in " ".join(line for _, line in lines), lines
    # a fedd with the default allow_hosts (public addresses only) refuses loopback, by name too
    source = TrickySource(b"never fetched", "honest")
    port = free_port()
    other = start_fedd(tmp_path / "strict", fedd_config(port, stores["ceph"], stores["dav"], ""), port)
    try:
        for url in (source.url + "/f", f"http://localhost:{source.port}/f", f"http://[::1]:{source.port}/f"):
            status, _, lines = copy(other, "/tpc/s3/strict.bin", {"Source": url})
            assert status == 403 and "loopback" in " ".join(line for _, line in lines), (url, lines)
    finally:
        other.stop()
        source.stop()
    assert source.requests == [], "a refused source must not be contacted at all"


def test_checksum_is_verified(fed: Fedd, stores: dict[str, Any]) -> None:
    data = os.urandom(700_000)
    liar = TrickySource(data, "liar")
    honest = TrickySource(data, "honest")
    try:
        status, _, lines = copy(fed, "/tpc/dav/sum/liar.bin", {"Source": liar.url + "/f"})
        assert status == 202
        assert outcome(lines).startswith("failure: checksum mismatch: the source says adler32"), lines
        assert not dav_file(stores, "sum/liar.bin").exists(), "a copy that failed its checksum is removed"
        status, _, lines = copy(fed, "/tpc/dav/sum/honest.bin", {"Source": honest.url + "/f"})
        assert outcome(lines) == "success: Created", lines
    finally:
        liar.stop()
        honest.stop()
    assert b"want-digest: adler32" in honest.requests[0].lower()
    assert dav_file(stores, "sum/honest.bin").read_bytes() == data


def test_markers_stream_during_a_slow_copy(fed: Fedd, stores: dict[str, Any]) -> None:
    data = os.urandom(40 * 8192)
    slow = TrickySource(data, "slow", chunk=8192, delay=0.05)  # about 2 s
    try:
        started = time.monotonic()
        status, _, lines = copy(fed, "/tpc/s3/slow.bin", {"Source": slow.url + "/slow"})
    finally:
        slow.stop()
    assert status == 202 and outcome(lines) == "success: Created", lines
    texts = [line for _, line in lines]
    starts = [i for i, t in enumerate(texts) if t == "Perf Marker"]
    assert len(starts) >= 4, texts
    first = texts[starts[0] : starts[0] + 6]
    assert first[1].startswith("    Timestamp: ") and abs(int(first[1].split()[-1]) - time.time()) < 60
    assert first[2:] == [
        "    Stripe Index: 0",
        first[3],
        "    Total Stripe Count: 1",
        "End",
    ] and first[3].startswith("    Stripe Bytes Transferred: ")
    counts = [int(texts[i + 3].split()[-1]) for i in starts]
    assert counts == sorted(counts) and counts[-1] == len(data) and 0 < counts[0] < len(data), counts
    # the markers arrived while the copy was running, not all at the end
    arrival = [lines[i][0] - started for i in starts]
    assert arrival[0] < arrival[-1] - 1.0, arrival
    assert s3_get(stores, "s3/slow.bin") == data


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


HUGE = 2 << 30


@pytest.fixture(scope="module")
def huge(remote: RemoteSite) -> str:
    """A 2 GiB (sparse) file on the remote site: its URL."""
    remote.put_file("public/huge.bin", sparse=HUGE)
    return remote.url + "/public/huge.bin"


class RssSampler:
    """The largest VmRSS of fedd's processes while a `with` block runs (KiB), sampled every 50 ms:
    `growth` is the most any one of them grew (with workers, the one that did the work)."""

    def __init__(self, fed: Fedd) -> None:
        # a worker still starting grows with its imports, not with the copy
        wait_for(fed.log_text, 20, "every worker serving", until=lambda text: _all_serving(fed, text))
        self.pids = sorted(_fedd_pids(fed))
        self.before = {pid: _rss_kb(pid) for pid in self.pids}
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return max(self.peak[pid] - self.before[pid] for pid in self.pids)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], _rss_kb(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_2gib_pull_streams_in_flat_memory(fed: Fedd, huge: str, stores: dict[str, Any]) -> None:
    with RssSampler(fed) as rss:
        status, _, lines = copy(fed, "/tpc/dav/huge.bin", {"Source": huge}, timeout=300)
    try:
        assert status == 202 and outcome(lines) == "success: Created", lines
        assert dav_file(stores, "huge.bin").stat().st_size == HUGE
    finally:
        dav_file(stores, "huge.bin").unlink(missing_ok=True)
    growth_mb = rss.growth / 1024
    # the hashing thread's backlog (8 MiB) and 1 MiB socket reads are the only buffers
    assert growth_mb < 40, f"fedd grew by {growth_mb:.0f} MB while copying {HUGE >> 20} MB"
    done = events(fed, "transfer-done", "/tpc/dav/huge.bin")
    assert done and done[0]["bytes"] == HUGE and done[0]["checksum-adler"] == f"{_zero_adler(HUGE):08x}"


def _zero_adler(size: int) -> int:
    """Adler-32 of `size` zero bytes: A stays 1, B adds 1 per byte."""
    return ((size % 65521) << 16) | 1


def test_zero_adler_formula() -> None:
    for size in (0, 1, 65521, 3 << 20):
        assert _zero_adler(size) == zlib.adler32(bytes(size)), size


def _fedd_pids(fed: Fedd) -> set[int]:
    """fedd's processes: twistd's, and with `[server] workers` its workers (they hold the connections)."""
    pids = {fed.proc.pid}
    for task in Path(f"/proc/{fed.proc.pid}/task").iterdir():
        try:
            pids.update(int(child) for child in (task / "children").read_text().split())
        except OSError:  # a thread that ended meanwhile
            continue
    return pids


def _moved(now: tuple[int, int], before: tuple[int, int]) -> int:
    """The most bytes a connection received or sent since `before`."""
    return max(now[0] - before[0], now[1] - before[1])


def _all_serving(fed: Fedd, log: str) -> bool:
    return all(f"serving (pid {pid})" in log for pid in _fedd_pids(fed) - {fed.proc.pid})


def _connections(fed: Fedd) -> dict[int, tuple[int, int]]:
    """fedd's established TCP connections: local port -> (bytes received, bytes sent), from ss."""
    pids = _fedd_pids(fed)
    out = subprocess.run(
        ["ss", "-tnpiH", "state", "established"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.splitlines()
    found: dict[int, tuple[int, int]] = {}
    for line, info in itertools.pairwise(out):
        owners = {int(pid) for pid in re.findall(r"pid=(\d+),", line)}
        if not owners & pids or not info.startswith(("\t", " ")):
            continue
        local = line.split()[2]
        counters = dict(re.findall(r"\b(bytes_received|bytes_acked):(\d+)", info))
        found[int(local.rsplit(":", 1)[1])] = (
            int(counters.get("bytes_received", 0)),
            int(counters.get("bytes_acked", 0)),
        )
    return found


REPLICA = 900 << 20  # the remote site's Apache takes at most 1 GiB in one PUT (LimitRequestBody)


@pytest.fixture(scope="module")
def huge_replica(stores: dict[str, Any]) -> Iterator[str]:
    """A large (sparse) file on the federation's DAV endpoint: its federation path."""
    path = dav_file(stores, "huge-replica.bin")
    dav_put(stores, "huge-replica.bin", b"")
    with path.open("r+b") as f:
        f.truncate(REPLICA)
    yield "/tpc/dav/huge-replica.bin"
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_client_gone_mid_copy_releases_every_connection(
    fed: Fedd, remote: RemoteSite, stores: dict[str, Any], huge: str, huge_replica: str, mode: str
) -> None:
    if mode == "pull":
        path, headers, size = "/tpc/dav/gone.bin", {"Source": huge}, HUGE
        target: Path = dav_file(stores, "gone.bin")
    else:
        path, headers, size = huge_replica, {"Destination": remote.url + "/public/gone.bin"}, REPLICA
        target = remote.docroot / "public/gone.bin"
    # connections kept alive from earlier copies (in any worker's pool) carry their old counts
    before = _connections(fed)
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=60)
    conn.request("COPY", path, headers={"Credential": "none", **headers})
    response = conn.getresponse()
    assert response.status == 202
    moving: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    while len(moving) < 2 and time.monotonic() < deadline:  # wait for the copy to be under way
        line = response.readline().decode()
        assert line and not line.startswith("failure"), line
        # the copy's two data connections: one reading the source, one writing the destination
        moving = {port: c for port, c in _connections(fed).items() if _moved(c, before.get(port, (0, 0))) > 8 << 20}
    assert len(moving) == 2, moving
    response.close()
    conn.close()  # the client goes away mid-stream
    wait_for(
        lambda: (set(moving) & set(_connections(fed)), fed.status()["tpc"]["active"], target.exists()),
        20,
        "(data connections left, copies active, partial file present) to be (none, 0, False)",
        until=lambda seen: seen == (set(), 0, False),
    )
    assert not set(moving) & set(_connections(fed)), "a data connection outlived the copy"
    assert fed.status()["tpc"]["active"] == 0
    assert not target.exists(), "the partial copy was left behind"
    failed = events(fed, "transfer-failed", path)
    assert failed and failed[-1]["reason"] == "the client closed the connection", failed
    assert 0 < failed[-1]["bytes"] < size


def test_authorisation_pull_writes_push_reads(
    fed: Fedd, remote: RemoteSite, stores: dict[str, Any], tmp_path: Path
) -> None:
    access = tmp_path / "access"
    access.write_text("/tpc/dav/ro anonymous rl\n/tpc/dav/rw anonymous rlw\n")
    data = os.urandom(200_000)
    remote.put_file("public/authz.bin", data)
    dav_put(stores, "ro/src.bin", data)
    port = free_port()
    extra = f"[auth]\naccess_file = {access}\n"
    guarded = start_fedd(
        tmp_path / "authz", fedd_config(port, stores["ceph"], stores["dav"], "allow_hosts = 127.0.0.1", extra), port
    )
    try:
        source = remote.url + "/public/authz.bin"
        # pull = a write on the federation path
        status, _, lines = copy(guarded, "/tpc/dav/ro/pulled.bin", {"Source": source})
        assert status == 401, lines
        status, _, lines = copy(guarded, "/tpc/dav/rw/pulled.bin", {"Source": source})
        assert status == 202 and outcome(lines) == "success: Created", lines
        # push = a read of the federation path: allowed from the read-only prefix
        status, _, lines = copy(guarded, "/tpc/dav/ro/src.bin", {"Destination": remote.url + "/public/authz-out.bin"})
        assert status == 202 and outcome(lines) == "success: Created", lines
        assert (remote.docroot / "public/authz-out.bin").read_bytes() == data
        status, _, lines = copy(guarded, "/tpc/s3/x.bin", {"Destination": remote.url + "/public/never.bin"})
        assert status == 401, lines
    finally:
        guarded.stop()
    assert dav_file(stores, "rw/pulled.bin").read_bytes() == data
    assert not dav_file(stores, "ro/pulled.bin").exists()


def test_copy_redirected_to_an_endpoint_that_does_tpc(
    fed: Fedd, remote: RemoteSite, stores: dict[str, Any], tmp_path: Path
) -> None:
    """An endpoint with `tpc = yes` gets the COPY itself (307). Here it is another fedd, which does TPC."""
    data = os.urandom(300_000)
    remote.put_file("public/native.bin", data)
    dav_put(stores, "nat/out.bin", data)
    port = free_port()
    front = start_fedd(
        tmp_path / "front",
        f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[tpc]
allow_hosts = 127.0.0.1
[endpoint native]
kind = dav
url = {fed.url}
map = /nat /tpc/dav/nat
write = yes
tpc = yes
""",
        port,
    )
    try:
        status, headers, lines = copy(front, "/nat/in.bin", {"Source": remote.url + "/public/native.bin"})
        assert status == 307, lines
        assert headers["location"] == fed.url + "/tpc/dav/nat/in.bin"
        out = subprocess.run(
            ["curl", "-sS", "-L", "--max-time", "60", "-X", "COPY", "-H", f"Source: {remote.url}/public/native.bin",
             "-H", "Credential: none", front.url + "/nat/in.bin"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert out.stdout.rstrip("\n").endswith("success: Created"), out.stdout + out.stderr
        assert dav_file(stores, "nat/in.bin").read_bytes() == data
        # the front locates the file with HEAD on the other fedd, which may first answer 202 while it
        # computes a checksum the HEAD asked for (Want-Digest): wait until the front sees the file
        wait_for(
            lambda: http_status(front, "HEAD", "/nat/out.bin"),
            20,
            "the front to find /nat/out.bin",
            interval=0.2,
            until=(200).__eq__,
        )
        status, headers, lines = copy(front, "/nat/out.bin", {"Destination": remote.url + "/public/native-out.bin"})
        assert status == 307, lines
        assert headers["location"] == fed.url + "/tpc/dav/nat/out.bin"
    finally:
        front.stop()


def test_stalled_source_hits_the_idle_timeout(fed: Fedd, stores: dict[str, Any]) -> None:
    data = os.urandom(200_000)
    stalled = TrickySource(data, "slow", chunk=100_000, delay=8)  # half, then 8 s of silence (idle_timeout 5)
    try:
        started = time.monotonic()
        status, _, lines = copy(fed, "/tpc/dav/stalled.bin", {"Source": stalled.url + "/f"})
        elapsed = time.monotonic() - started
    finally:
        stalled.stop()
    assert status == 202
    assert outcome(lines) == "failure: no data moved for 5s", lines
    assert 4.5 < elapsed < 7.5, elapsed
    assert not dav_file(stores, "stalled.bin").exists()
    assert fed.status()["tpc"]["active"] == 0

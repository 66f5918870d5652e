"""HTTP edges against a live `twistd fedd`, over loopback with raw sockets and real clients.

- An HTTP/1.1 request without `Host` gets `400` on both fronts (RFC 9112 section 3.2); HTTP/1.0
  without it is answered; curl, davix, gfal2 and Python's http.client send one and are served.
- `[server] idle_timeout`: a request body that stalls gets `408` and the connection is closed; an
  upload fedd carries to its endpoint is aborted there and leaves nothing under the file's name
  (Apache mod_dav, Ceph RGW); a kept-alive connection idle between requests is closed without an
  answer (on the lean front and on twisted.web's); a slow body that keeps moving is read to its end,
  and a client that fedd itself holds back (its endpoint lags) is not cut.
"""

from __future__ import annotations

import http.client
import http.server
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, free_port
from tests.test_carried_upload import connections

IDLE = 1.0  # [server] idle_timeout of the fedd under test
SLACK = 1.5  # a loaded machine's lateness, on top of the deadline
NO_HOST_TEXT = b"an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)\n"
RCLONE = b"User-Agent: rclone/v1.60\r\n"  # an agent fedd carries uploads for ([write] proxy_user_agent)


class HeldEndpoint:
    """A WebDAV endpoint that lags: it takes a PUT's body only `hold` seconds after its head came in
    (so fedd holds its client back), then answers 201 with what it read."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.received: dict[str, int] = {}
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _empty(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self._empty(200 if self.path == "/" else 404)

            def do_PUT(self) -> None:
                time.sleep(endpoint.hold)  # the lag itself: this server's thread, not the test's
                left = int(self.headers["Content-Length"])
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                endpoint.received[self.path] = int(self.headers["Content-Length"]) - left
                self._empty(201)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def held() -> Iterator[HeldEndpoint]:
    endpoint = HeldEndpoint(hold=4 * IDLE)
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def fed(dav2: Any, held: HeldEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    base = tmp_path_factory.mktemp("edges")
    (base / "one" / "data").mkdir(parents=True)
    (base / "one" / "data" / "f.txt").write_text("file\n")
    docroot = Path(dav2.docroot) / "edges"
    docroot.mkdir(exist_ok=True)
    subprocess.run(["chown", "-R", "www-data", str(docroot)], check=True)
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
header_timeout = 30
idle_timeout = {IDLE:g}
[space]
interval = 3600
[endpoint one]
kind = local
path = {base / "one"}
map = /atlas /
[endpoint dav]
kind = dav
url = {dav2.url}
map = /edges /edges
write = yes
space_source = none
timeout = 30
[endpoint held]
kind = dav
url = {held.url}
map = /held /
write = yes
space_source = none
timeout = 30
"""
    f = start_fedd(base / "run", conf, port)
    try:
        yield f
    finally:
        f.stop()
        assert "Traceback" not in f.log_text()


def connect(fed: Fedd) -> socket.socket:
    return socket.create_connection(("127.0.0.1", fed.port), timeout=10)


def answer(s: socket.socket) -> bytes:
    """One answer: its head and its Content-Length of body."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer: {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    while length and len(body) < int(length.group(1)):
        chunk = s.recv(65536)
        assert chunk, f"closed in an answer: {got!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def until_closed(s: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed (monotonic)."""
    got = b""
    s.settimeout(limit)
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got, time.monotonic()


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0


# --- 1. Host ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /atlas/data/f.txt HTTP/1.1\r\n\r\n",  # a hot path: the lean front
        b"GET /atlas/data/f.txt HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
        b"PROPFIND /atlas/data/ HTTP/1.1\r\nDepth: 1\r\n\r\n",  # twisted.web's
        b"PUT /edges/nohost.bin HTTP/1.1\r\n" + RCLONE + b"Content-Length: 5\r\n\r\nhello",  # a carried upload
        b"PUT /edges/nohost.bin HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",  # a redirected one
    ],
)
def test_an_http_1_1_request_without_host_gets_400(fed: Fedd, dav2: Any, head: bytes) -> None:
    with connect(fed) as s:  # a hot plan for the path first: the lean front would answer it
        s.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status(answer(s)) == 302
        s.sendall(head)
        got, _ = until_closed(s)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n") and got.endswith(b"\r\n\r\n" + NO_HOST_TEXT), got
    assert b"Connection: close\r\n" in got
    assert not (Path(dav2.docroot) / "edges" / "nohost.bin").exists()


def test_http_1_0_without_host_is_answered(fed: Fedd) -> None:
    for head, code in (
        (b"GET /atlas/data/f.txt HTTP/1.0\r\n\r\n", 302),
        (b"PROPFIND /atlas/data/ HTTP/1.0\r\nDepth: 1\r\n\r\n", 207),
    ):
        with connect(fed) as s:
            s.sendall(head)
            got, _ = until_closed(s)
        assert status(got) == code, got


def test_the_clients_grid_sites_use_send_host(fed: Fedd) -> None:
    """Each would get 400 without it. davix and gfal2 follow the redirect to fedd's local data URL."""
    url = fed.url + "/atlas/data/f.txt"
    run = {"capture_output": True, "text": True, "timeout": 60}
    curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url], **run)  # type: ignore[call-overload]
    assert curl.stdout == "302", curl
    davix = subprocess.run(["davix-get", url], **run)  # type: ignore[call-overload]
    assert davix.returncode == 0 and davix.stdout == "file\n", davix
    gfal = subprocess.run(["gfal-ls", fed.url + "/atlas/data"], **run)  # type: ignore[call-overload]
    assert gfal.returncode == 0 and "f.txt" in gfal.stdout, gfal
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("GET", "/atlas/data/f.txt")
    assert conn.getresponse().status == 302
    conn.close()


# --- 2. idle connections -----------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_idle_timeout(fed: Fedd) -> None:
    with connect(fed) as s:  # never a byte
        started = time.monotonic()
        got, closed = until_closed(s)
    assert got == b"" and IDLE - 0.1 <= closed - started <= IDLE + SLACK, closed - started
    with connect(fed) as s:  # kept alive after hot answers (the lean front's)
        for _ in range(3):
            s.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status(answer(s)) == 302
        answered = time.monotonic()
        got, closed = until_closed(s)
    assert got == b"" and IDLE - 0.1 <= closed - answered <= IDLE + SLACK, closed - answered


def test_an_idle_connection_of_twisted_webs_front_is_closed(fed: Fedd) -> None:
    body = b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop><getcontentlength/></prop></propfind>'
    with connect(fed) as s:  # a body: the connection is twisted.web's for good
        s.sendall(b"PROPFIND /atlas/data/ HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nContent-Length: %d\r\n\r\n" % len(body))
        s.sendall(body)
        assert status(answer(s)) == 207
        answered = time.monotonic()
        got, closed = until_closed(s)
    assert got == b"" and IDLE - 0.1 <= closed - answered <= IDLE + SLACK, closed - answered


def test_a_busy_connection_is_not_cut(fed: Fedd) -> None:
    """A request every half deadline, for four deadlines, some through twisted.web (whose idle
    timer must not count the lean front's hot answers as silence)."""
    heads = [
        b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"OPTIONS /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    with connect(fed) as s:
        for n in range(8):
            s.sendall(heads[n % len(heads)])
            assert status(answer(s)) in (200, 302)
            time.sleep(IDLE / 2)  # the client's pace (nothing to wait for)


def test_a_head_begun_and_left_gets_408(fed: Fedd) -> None:
    with connect(fed) as s:
        s.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHo")
        sent = time.monotonic()
        got, closed = until_closed(s)
    assert got.startswith(b"HTTP/1.1 408 ") and IDLE - 0.1 <= closed - sent <= IDLE + SLACK, (got, closed - sent)


def test_without_a_head_deadline_a_head_begun_and_left_gets_408_at_the_idle_timeout(tmp_path: Path) -> None:
    """`header_timeout = 0` (no head deadline): a head begun and left, even only part of its request
    line, gets the idle deadline's 408 (not at once, not a silent close), on the lean front and on
    twisted.web's; a kept-alive connection silent between requests is closed without a word."""
    (tmp_path / "one" / "data").mkdir(parents=True)
    (tmp_path / "one" / "data" / "f.txt").write_text("file\n")
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
header_timeout = 0
idle_timeout = {IDLE:g}
[endpoint one]
kind = local
path = {tmp_path / "one"}
map = /atlas /
"""
    fed = start_fedd(tmp_path / "run", conf, port)
    body = b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop><getcontentlength/></prop></propfind>'
    propfind = b"PROPFIND /atlas/data/ HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nContent-Length: %d\r\n\r\n" % len(body)
    try:
        hot = b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        for before, code in ((b"", 0), (hot, 302), (propfind + body, 207)):
            for begun in (b"GET /atl", b"GET /atlas/data/f.txt HTTP/1.1\r\nHo", b""):
                with connect(fed) as s:
                    if before:  # a hot answer (the lean front keeps the connection), or twisted.web's for good
                        s.sendall(before)
                        assert status(answer(s)) == code
                    s.sendall(begun)
                    sent = time.monotonic()
                    got, closed = until_closed(s)
                expected = b"HTTP/1.1 408 Request Timeout\r\n" if begun else b""
                assert got[: len(expected)] == expected and (got == b"") == (not begun), (before, begun, got)
                assert IDLE - 0.1 <= closed - sent <= IDLE + SLACK, (before, begun, closed - sent)
    finally:
        fed.stop()
    assert "Traceback" not in fed.log_text()


# --- 3. stalled and slow bodies ------------------------------------------------------------------------


def test_a_stalled_body_gets_408(fed: Fedd, dav2: Any) -> None:
    """An upload fedd would redirect after reading its (small) body, and a PROPFIND's body."""
    for head in (
        b"PUT /edges/small.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        b"PROPFIND /atlas/data/ HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nContent-Length: 100\r\n\r\n",
    ):
        with connect(fed) as s:
            s.sendall(head + b"<" * 10)
            sent = time.monotonic()
            got, closed = until_closed(s)
        assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
        assert IDLE - 0.1 <= closed - sent <= IDLE + SLACK, closed - sent
    assert not (Path(dav2.docroot) / "edges" / "small.bin").exists()
    assert "/edges/small.bin: no byte of the body for 1s: 408, connection closed" in fed.log_text()


def stall_a_carried_upload(fed: Fedd, path: bytes, endpoint_port: int) -> None:
    """PUT 64 MiB: 1 MiB, then a kilobyte at a time (within the deadline) until fedd passes the upload
    on to the endpoint; then the client stalls: 408, closed, and fedd's connection to the endpoint is
    released (aborted: the endpoint has seen only part of the announced body)."""
    before = connections(fed, endpoint_port)  # pooled ones (the health probe's) stay open

    def moving() -> set[tuple[int, int]]:
        s.sendall(b"x" * 1024)
        return {c for c, sent in connections(fed, endpoint_port).items() if sent - before.get(c, 0) > 1 << 19}

    with connect(fed) as s:
        s.sendall(b"PUT %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (path, RCLONE, 64 << 20))
        s.sendall(b"x" * (1 << 20))
        upload = wait_for(moving, 20, "the upload to the endpoint under way")
        got, _ = until_closed(s, limit=IDLE + 10)
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
    wait_for(lambda: not upload & set(connections(fed, endpoint_port)), 20, "fedd's upload connection released")


def test_a_stalled_carried_upload_gets_408_and_leaves_nothing_on_apache(fed: Fedd, dav2: Any) -> None:
    stall_a_carried_upload(fed, b"/edges/stalled.bin", dav2.port)
    folder = Path(dav2.docroot) / "edges"
    # mod_dav_fs writes a PUT to a temporary file renamed at its end: gone with the aborted upload
    left = wait_for(
        lambda: [p.name for p in folder.iterdir() if "stalled" in p.name or p.name.startswith(".davfs")],
        10,
        "no file of the upload left",
        until=lambda names: not names,
    )
    assert left == []
    assert "carried upload of /edges/stalled.bin to dav stopped" in fed.log_text()


def test_a_slow_body_that_keeps_moving_is_carried_to_its_end(fed: Fedd, dav2: Any) -> None:
    chunk = b"0123456789" * 100
    with connect(fed) as s:
        s.sendall(
            b"PUT /edges/slow.bin HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (RCLONE, 10 * len(chunk))
        )
        for _ in range(10):  # 5 s for 10 kB: under a kB/s, but a byte within every deadline
            time.sleep(IDLE / 2)  # the client's pace
            s.sendall(chunk)
        got = answer(s)
    assert status(got) == 201, got
    stored = Path(dav2.docroot) / "edges" / "slow.bin"
    try:
        assert stored.read_bytes() == chunk * 10
    finally:
        stored.unlink()


def test_a_client_fedd_holds_back_for_a_lagging_endpoint_is_not_cut(fed: Fedd, held: HeldEndpoint) -> None:
    """The endpoint takes nothing for 4 deadlines: fedd stops reading its client (flow control),
    and that silence is fedd's, not the client's."""
    size = 64 << 20  # well over fedd's window and the socket buffers on both sides
    with connect(fed) as s:
        s.settimeout(held.hold + 30)
        s.sendall(b"PUT /held/big.bin HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (RCLONE, size))
        block = b"y" * (1 << 20)
        started = time.monotonic()
        for _ in range(size // len(block)):
            s.sendall(block)  # blocks while fedd holds the client back
        took = time.monotonic() - started
        got = answer(s)
    assert status(got) == 201, got
    assert held.received == {"/big.bin": size}
    assert took >= held.hold - 0.5, took  # the client was held back, longer than the idle timeout


def test_a_stalled_carried_upload_leaves_nothing_on_ceph(ceph: Any, s3client: Any, tmp_path: Path) -> None:
    bucket = "edges"
    s3client.create_bucket(Bucket=bucket)
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
idle_timeout = {IDLE:g}
[space]
interval = 3600
{ceph_endpoint(ceph, bucket, map="/s3 /s3", write=True, secret_from_env=False, timeout=30)}
"""
    fed = start_fedd(tmp_path / "run", conf, port)
    try:
        stall_a_carried_upload(fed, b"/s3/stalled.bin", ceph.port)
        listed = s3client.list_objects_v2(Bucket=bucket)
        assert listed.get("KeyCount", 0) == 0, listed.get("Contents")
        assert "carried upload of /s3/stalled.bin to ceph stopped" in fed.log_text()
    finally:
        fed.stop()
    assert "Traceback" not in fed.log_text()

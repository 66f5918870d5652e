"""Carried uploads streamed: rclone (which cannot follow a 307 with its body) uploads 2 GiB through
fedd to Apache mod_dav; fedd passes the bytes on as they arrive, with no temporary file and a flat
RSS; a client that goes away mid-upload releases every connection; StreamBody's flow control in
process."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from fedd.errors import ClientGone
from fedd.web.streambody import StreamBody
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

GIB = 1 << 30


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fedd_pids(fed: Fedd) -> list[int]:
    """fedd's processes: twistd's, and with `[server] workers` its workers (they hold the connections)."""
    pids = [fed.proc.pid]
    for task in Path(f"/proc/{fed.proc.pid}/task").iterdir():
        try:
            pids += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return pids


def serving(fed: Fedd) -> bool:
    """Every worker (if any) has started serving: its memory no longer grows with its start."""
    log = fed.log_text()
    return all(f"serving (pid {pid})" in log for pid in fedd_pids(fed)[1:])


def connections(fed: Fedd, port: int) -> dict[tuple[int, int], int]:
    """fedd's established TCP connections to or from `port`: (local port, peer port) -> bytes sent
    and acknowledged (from ss). With workers, another worker's idle pooled connection to the same
    server (its health probe's keep-alive) is among them: a test follows the connections it saw move data."""
    pids = fedd_pids(fed)
    out = subprocess.run(
        ["ss", "-tnpiH", "state", "established"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.splitlines()
    found: dict[tuple[int, int], int] = {}
    for line, info in itertools.pairwise(out):
        owners = {int(pid) for pid in re.findall(r"pid=(\d+),", line)}
        if not owners.intersection(pids) or not info.startswith(("\t", " ")):
            continue
        local, peer = (int(address.rsplit(":", 1)[1]) for address in line.split()[2:4])
        if port in (local, peer):
            acked = re.search(r"\bbytes_acked:(\d+)", info)
            found[(local, peer)] = int(acked.group(1)) if acked else 0
    return found


@pytest.fixture(scope="module")
def fed(dav2: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    docroot = Path(dav2.docroot) / "carry"
    docroot.mkdir(exist_ok=True)
    subprocess.run(["chown", "-R", "www-data", str(docroot)], check=True)
    port = free_port()
    work = tmp_path_factory.mktemp("carry")
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[space]
interval = 3600
[endpoint dav]
kind = dav
url = {dav2.url}
map = /atlas /carry
write = yes
space_source = none
timeout = 30
"""
    f = start_fedd(work, conf, port)
    try:
        yield f
    finally:
        f.stop()
        assert "Traceback" not in f.log_text()


def rclone(fed: Fedd, tmp: Path, *args: str, timeout: float = 300) -> subprocess.Popen[str]:
    env = dict(os.environ, RCLONE_CONFIG=str(tmp / "rclone.conf"))
    return subprocess.Popen(
        ["rclone", "--webdav-url", fed.url, "--retries", "1", "--low-level-retries", "1", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_gib_carried_upload_streams_with_flat_rss(fed: Fedd, dav2: Any, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:  # sparse-free: rclone reads real bytes (a repeated random block)
        block = os.urandom(8 << 20)
        for _ in range((2 * GIB) // len(block)):
            f.write(block)
    wait_for(lambda: serving(fed), 20, "every worker serving")
    pids = fedd_pids(fed)  # with workers: whichever takes the upload
    start = {pid: rss_kib(pid) for pid in pids}
    most = dict(start)
    proc = rclone(fed, tmp_path, "copyto", str(src), ":webdav:/atlas/big.bin")
    samples = 0
    while proc.poll() is None:
        for pid in pids:
            most[pid] = max(most[pid], rss_kib(pid))
        samples += 1
        time.sleep(0.05)
    before, peak = max(((start[pid], most[pid]) for pid in pids), key=lambda bp: bp[1] - bp[0])
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, out
    stored = Path(dav2.docroot) / "carry" / "big.bin"
    try:
        assert stored.stat().st_size == 2 * GIB
        assert samples > 10
        # nothing held but the flow-control window and the reactor's buffers
        assert peak - before < 64 * 1024, (before, peak)
        assert not list(Path(fed.log.parent).glob("tmp*"))
        print(f"CARRY 2 GiB: RSS {before} -> peak {peak} KiB over {samples} samples")
    finally:
        stored.unlink(missing_ok=True)


def test_a_client_gone_mid_upload_releases_every_connection(fed: Fedd, dav2: Any, tmp_path: Path) -> None:
    size = 512 << 20
    earlier = connections(fed, dav2.port)  # pooled ones of earlier uploads (another worker's) stay open
    sock = socket.create_connection(("127.0.0.1", fed.port), timeout=10)
    sock.sendall(
        b"PUT /atlas/gone.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: rclone/v1.60\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    chunk = b"x" * (1 << 20)
    for _ in range(64):  # 64 MiB of the 512 announced, then gone
        sock.sendall(chunk)
    # generous deadlines: on a loaded machine the 64 MiB already sent still cross fedd before the
    # close is seen (the client's socket is paused while Apache lags); a connection never released fails
    moving = wait_for(
        lambda: {c for c, sent in connections(fed, dav2.port).items() if sent - earlier.get(c, 0) > 1 << 20},
        30,
        "the upload to Apache under way",
    )
    sock.close()
    wait_for(lambda: not moving & set(connections(fed, dav2.port)), 60, "the upload's connection to Apache released")
    wait_for(lambda: not connections(fed, fed.port), 20, "the client's connection released")
    assert not (Path(dav2.docroot) / "carry" / "gone.bin").exists() or (
        (Path(dav2.docroot) / "carry" / "gone.bin").stat().st_size < size
    )
    assert "Traceback" not in fed.log_text()
    # and fedd still carries the next upload
    small = tmp_path / "small.txt"
    small.write_text("after the gone one\n")
    proc = rclone(fed, tmp_path, "copyto", str(small), ":webdav:/atlas/small.txt")
    assert proc.wait(60) == 0, proc.stdout.read() if proc.stdout else ""


# --- StreamBody in process -----------------------------------------------------------------------


class Source:
    """The client's transport, as far as flow control goes."""

    def __init__(self) -> None:
        self.paused = False
        self.changes = 0

    def pauseProducing(self) -> None:
        self.paused, self.changes = True, self.changes + 1

    def resumeProducing(self) -> None:
        self.paused, self.changes = False, self.changes + 1

    def stopProducing(self) -> None:
        pass


def test_stream_body_holds_at_most_the_high_water_mark_before_the_endpoint_connects() -> None:
    source = Source()
    body = StreamBody(100, source, high_water=10, low_water=4)  # type: ignore[arg-type]
    body.feed(b"a" * 6)
    assert not source.paused
    body.feed(b"b" * 6)
    assert source.paused  # 12 bytes held, over the high mark: the client waits
    consumer = StringTransport()
    done = body.startProducing(consumer)
    assert consumer.value() == b"a" * 6 + b"b" * 6 and not source.paused
    body.feed(b"c" * 3)
    body.end()
    assert consumer.value().endswith(b"ccc")
    assert done.called


def test_stream_body_follows_the_endpoints_pace() -> None:
    source = Source()
    body = StreamBody(100, source, high_water=10, low_water=4)  # type: ignore[arg-type]
    consumer = StringTransport()
    done = body.startProducing(consumer)
    body.pauseProducing()  # the endpoint's socket is full
    assert source.paused
    body.feed(b"x" * 20)  # what the client had in flight is held
    assert consumer.value() == b""
    body.resumeProducing()
    assert consumer.value() == b"x" * 20 and not source.paused
    body.end()
    assert done.called and body.sent == body.received == 20


def test_stream_body_fails_the_endpoint_request_when_the_client_goes() -> None:
    body = StreamBody(100, Source())  # type: ignore[arg-type]
    done: Deferred[None] = body.startProducing(StringTransport())
    errors: list[Any] = []
    done.addErrback(errors.append)
    body.feed(b"partial")
    body.fail(ClientGone("gone"))
    assert errors and errors[0].check(ClientGone)
    body.feed(b"more")  # dropped
    assert body.received == 7


def test_stream_body_stopped_by_the_endpoint_resumes_the_client() -> None:
    source = Source()
    body = StreamBody(100, source, high_water=4, low_water=2)  # type: ignore[arg-type]
    body.startProducing(StringTransport())
    body.pauseProducing()
    body.feed(b"12345678")
    assert source.paused
    body.stopProducing()
    assert not source.paused  # the client's bytes are read (and dropped) while fedd answers it
    body.feed(b"more")
    assert body.sent == 0

"""Slowloris against a live `twistd fedd`: heads trickled a byte at a time are cut at `header_timeout`
(counted from each head's first byte, also on a kept-alive connection), fresh requests are answered
meanwhile, and `max_connections_per_client` turns the connections over the limit away with 503.

The attackers connect from 127.0.0.2 (all of 127/8 is loopback), the well-behaved client from 127.0.0.1.
"""

from __future__ import annotations

import http.client
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

HEADER_TIMEOUT = 2.0
ATTACKERS = 300
LIMIT = 40
TRICKLE = 0.5  # seconds between two bytes of a head
HEAD = b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nAccept: */*\r\nX-Pad: " + b"p" * 200


def _config(base: Path, port: int, limit: int, header_timeout: float) -> str:
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
header_timeout = {header_timeout:g}
max_connections_per_client = {limit}
[endpoint one]
kind = local
path = {base / "one"}
map = /atlas /
"""


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, limit: int, header_timeout: float) -> Fedd:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * ATTACKERS:  # our sockets and fedd's (it inherits the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * ATTACKERS), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 4 * ATTACKERS, "ulimit -n too low for the test"
    base = tmp_path_factory.mktemp(name)
    (base / "one" / "data").mkdir(parents=True)
    (base / "one" / "data" / "f.txt").write_text("file\n")
    port = free_port()
    return start_fedd(base / "run", _config(base, port, limit, header_timeout), port)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    fedd = _start(tmp_path_factory, "slowloris", 0, HEADER_TIMEOUT)
    yield fedd
    fedd.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    fedd = _start(tmp_path_factory, "slowloris-limited", LIMIT, 30.0)  # held heads stay held
    yield fedd
    fedd.stop()


def attacker(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


def fresh_get(fedd: Fedd) -> float:
    """A normal request from another address: its answer time (it must be a 302)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", fedd.port, timeout=5)
    try:
        conn.request("GET", "/atlas/data/f.txt")
        r = conn.getresponse()
        r.read()
    finally:
        conn.close()
    assert r.status == 302
    return time.monotonic() - started


def open_connections(fedd: Fedd) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", fedd.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    line = next(x for x in text.splitlines() if x.startswith("fedd_open_connections "))
    return float(line.split()[1])


def test_trickled_heads_are_cut_at_the_deadline_while_others_are_served(fed: Fedd) -> None:
    idle = [attacker(fed.port) for _ in range(5)]  # connected, silent: not a head yet, not cut
    socks = [attacker(fed.port) for _ in range(ATTACKERS)]
    sel = selectors.DefaultSelector()
    first_byte: dict[int, float] = {}
    cut: dict[int, tuple[float, bytes]] = {}
    sent = dict.fromkeys(range(ATTACKERS), 0)
    for i, s in enumerate(socks):
        s.send(HEAD[:1])
        first_byte[i] = time.monotonic()
        sent[i] = 1
        sel.register(s, selectors.EVENT_READ, i)
    latencies = []
    next_trickle = time.monotonic() + TRICKLE
    next_probe = time.monotonic()
    deadline = time.monotonic() + HEADER_TIMEOUT + 8
    while len(cut) < ATTACKERS and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            i, s = key.data, cast(socket.socket, key.fileobj)  # registered above: our sockets
            try:
                data = s.recv(4096)
            except ConnectionError:
                data = b"<reset>"
            cut[i] = (time.monotonic() - first_byte[i], data)
            sel.unregister(s)
        now = time.monotonic()
        if now >= next_trickle:  # one more byte on every connection still open
            for i, s in enumerate(socks):
                if i not in cut and sent[i] < len(HEAD):
                    try:
                        s.send(HEAD[sent[i] : sent[i] + 1])
                        sent[i] += 1
                    except (BlockingIOError, ConnectionError):
                        pass
            next_trickle = now + TRICKLE
        if now >= next_probe:
            latencies.append(fresh_get(fed))
            next_probe = time.monotonic() + 0.25
    sel.close()
    for s in socks:
        s.close()
    assert len(cut) == ATTACKERS, f"only {len(cut)} of {ATTACKERS} slow connections were cut"
    times = sorted(t for t, _ in cut.values())
    assert times[0] >= HEADER_TIMEOUT - 0.1, f"cut before the deadline: {times[:5]}"
    assert times[-1] <= HEADER_TIMEOUT + 3.0, f"cut long after the deadline: {times[-5:]}"
    answers = {data[:12] for _, data in cut.values()}
    assert answers <= {b"HTTP/1.1 408", b""}, answers  # 408, or a bare close if the 408 was lost
    assert sum(1 for _, d in cut.values() if d.startswith(b"HTTP/1.1 408")) > ATTACKERS * 0.9
    assert latencies and max(latencies) < 1.0, f"fresh requests: {len(latencies)}, slowest {max(latencies):.2f}s"
    print(
        f"slowloris: {ATTACKERS} cut {times[0]:.2f}..{times[-1]:.2f}s after their first byte;"
        f" {len(latencies)} fresh GETs, slowest {max(latencies) * 1000:.0f} ms"
    )
    for s in idle:  # silent connections are left to Twisted's idle timeout
        with pytest.raises(BlockingIOError):
            s.recv(1)
        s.close()
    wait_for(lambda: open_connections(fed) <= 1, timeout=10, what="fedd to drop every slow connection")
    assert "Traceback" not in fed.log_text()


def test_second_head_on_a_kept_alive_connection_has_its_own_deadline(fed: Fedd) -> None:
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as s:
        s.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 302 ")
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle between requests: within Twisted's idle timeout, not cut
        s.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 302 ")
        started = time.monotonic()
        for byte in b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n":
            try:
                s.sendall(bytes([byte]))
            except ConnectionError:
                break
            s.settimeout(0.3)
            try:
                answer = s.recv(4096)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the trickled second head was never cut")
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + 1.5, (
        answer,
        elapsed,
    )


def test_connections_over_the_per_client_limit_get_503(limited: Fedd) -> None:
    held = [attacker(limited.port) for _ in range(LIMIT)]
    for s in held:
        s.send(b"GET /atl")  # heads in progress: fedd holds them (until their deadline)
    try:
        wait_for(lambda: open_connections(limited) >= LIMIT, timeout=5, what="the held connections to be open")
        extra = attacker(limited.port)
        extra.setblocking(True)
        extra.settimeout(5)
        extra.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := extra.recv(4096):
            answer += chunk
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: " in answer, answer
        assert fresh_get(limited) < 1.0  # another address is not limited
        held.pop().close()
        wait_for(lambda: open_connections(limited) < LIMIT + 1, timeout=5, what="a held connection to close")

        def accepted_again() -> bool:
            s = attacker(limited.port)
            s.setblocking(True)
            s.sendall(b"GET /atlas/data/f.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = s.recv(4096)
            s.close()
            return got.startswith(b"HTTP/1.1 302 ")

        assert wait_for(accepted_again, timeout=5, what="a connection under the limit to be served")
    finally:
        for s in held:
            s.close()
    text = limited.log_text()
    assert "Traceback" not in text and text.count("refusing connections over max_connections_per_client") == 1

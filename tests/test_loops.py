"""Federation loops: fedd instances that list each other as DAV endpoints (a misconfiguration
Dynafed guarded against with its noloop plugin). One client request must cost at most one request
per instance, answered at once, never a storm ended by the wait budget."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

LINE = re.compile(r'^fedd_requests_total\{method="([A-Z]+)",status="(\d+)"\} ([0-9.e+]+)$', re.M)


def requests_seen(fed: Fedd) -> int:
    """Federation requests this instance answered (its /metrics, less the metrics reads themselves)."""
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return int(sum(float(n) for method, _, n in LINE.findall(text) if method != "GET"))


def settled(fed: Fedd) -> int:
    """`requests_seen` once every request already answered is in it: with [server] workers, /metrics
    adds the other workers' counters as they last wrote them (every second), so the count is taken
    when it stayed the same over more than one write (at once with a single process)."""
    if "workers" not in fed.status():
        return requests_seen(fed)
    last = [requests_seen(fed), time.monotonic()]

    def still() -> bool:
        now = requests_seen(fed)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - float(last[1]) > 1.3

    wait_for(still, timeout=10, what="the workers' counters written", interval=0.2)
    return int(last[0])


def ask(fed: Fedd, method: str, path: str) -> tuple[int, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=30)
    conn.request(method, path, headers={"Depth": "1"} if method == "PROPFIND" else {})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, time.monotonic() - started


def cycle(tmp: Path, size: int) -> list[Fedd]:
    """`size` fedd instances, each with a local directory and the next instance as a DAV endpoint."""
    ports = [free_port() for _ in range(size)]
    feds: list[Fedd] = []
    try:
        for i, port in enumerate(ports):
            data = tmp / f"data{i}"
            data.mkdir()
            (data / f"only-on-{i}.txt").write_text(f"instance {i}\n")
            conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 10
negative_ttl = 0
[health]
# no poll while requests are counted; at start, the early probes retry a next instance not yet
# listening every second until it answers (it is not taken offline before)
interval = 3600
failures_to_offline = 30
successes_to_online = 1
[endpoint local{i}]
kind = local
path = {data}
map = /atlas /
[endpoint next]
kind = dav
url = http://127.0.0.1:{ports[(i + 1) % size]}
map = /atlas /atlas
timeout = 10
space_source = none
"""
            feds.append(start_fedd(tmp / f"fedd{i}", conf, port))
    except BaseException:
        for f in feds:
            f.stop()
        raise
    return feds


@pytest.fixture(params=[2, 3], ids=["two", "three"])
def ring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Fedd]]:
    feds = cycle(tmp_path, request.param)
    try:
        for f in feds:  # the first probes done and answered: no probe runs while requests are counted

            def next_online(f: Fedd = f) -> bool:
                return bool(f.status()["endpoints"]["next"]["health"]["state"] == "online")

            wait_for(next_online, 20, "next online")
        yield feds
    finally:
        for f in feds:
            f.stop()
        for f in feds:
            assert "Traceback" not in f.log_text()


@pytest.mark.parametrize("method", ["GET", "HEAD", "PROPFIND"])
def test_a_request_for_a_missing_file_costs_one_request_per_instance(ring: list[Fedd], method: str) -> None:
    before = [settled(f) for f in ring]
    status, took = ask(ring[0], method, "/atlas/missing-everywhere.txt")
    assert status == 404 and took < 2.0, (status, took)  # every instance said no, at once
    # one from each instance to the next (HEAD, or PROPFIND for a PROPFIND), and the client's own
    # (not counted for GET: requests_seen leaves GETs out, for its own reads of /metrics)
    client = 0 if method == "GET" else 1
    expected = [1 + client] + [1] * (len(ring) - 1)

    def costs() -> list[int]:
        return [requests_seen(f) - b for f, b in zip(ring, before, strict=True)]

    # with [server] workers, /metrics adds the other workers' counters as they wrote them last
    # (every second): wait that long for them, no longer (a count above the expected one fails too)
    wait_for(costs, timeout=3, what=f"one request per instance {expected}", until=lambda c: c == expected)
    assert "federation loop" in ring[0].log_text()


def test_files_on_any_instance_are_found_through_the_ring(ring: list[Fedd]) -> None:
    last = len(ring) - 1
    status, _ = ask(ring[0], "GET", f"/atlas/only-on-{last}.txt")
    assert status == 302
    status, _ = ask(ring[0], "GET", "/atlas/only-on-0.txt")
    assert status == 302

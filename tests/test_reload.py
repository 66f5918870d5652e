"""`systemctl reload fedd` (SIGHUP) with the real daemon: endpoints added/changed/removed in place, a
broken configuration refused while the old one keeps serving, requests in flight never failing."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for, with_test_workers
from tests.servers import free_port


def base(port: int, dav1: Any) -> str:
    # FEDD_TEST_WORKERS: the rewritten file keeps the workers the daemon started with ([server]
    # changes need a restart, and a reload would say so)
    return with_test_workers(f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[health]
interval = 5
failures_to_offline = 3
[endpoint one]
kind = dav
url = {dav1.url}
map = /one /reload-one
""")


def two(dav2: Any, extra: str = "") -> str:
    return f"""
[endpoint two]
kind = dav
url = {dav2.url}
map = /two /reload-two
{extra}
"""


@pytest.fixture()
def daemon(dav1: Any, dav2: Any, tmp_path: Path) -> Iterator[tuple[Fedd, Path]]:
    for dav, name in ((dav1, "reload-one"), (dav2, "reload-two")):
        d = Path(dav.docroot) / name
        d.mkdir(exist_ok=True)
        (d / "f.txt").write_text(name)
    port = free_port()
    f = start_fedd(tmp_path, base(port, dav1), port)
    yield f, tmp_path / "fedd.conf"
    f.stop()


def status_code(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status


def reloaded(f: Fedd, count: int, key: str = "reloads") -> dict[str, Any]:
    return wait_for(lambda: f.status()["reload"][key] >= count and f.status(), what=f"{key} >= {count}")  # type: ignore[no-any-return]


def test_add_change_remove_endpoints_without_dropping_connections(daemon: tuple[Fedd, Path], dav2: Any) -> None:
    f, conf = daemon
    keep = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
    assert status_code(keep, "/one/f.txt") == 302
    assert status_code(keep, "/two/f.txt") == 404  # now cached as missing
    conf.write_text(conf.read_text() + two(dav2, "weight = 3"))
    f.proc.send_signal(signal.SIGHUP)
    status = reloaded(f, 1)
    assert set(status["endpoints"]) == {"one", "two"} and status["endpoints"]["two"]["weight"] == 3
    # the same keep-alive connection goes on, and the new endpoint is asked (the 'not found' was dropped)
    assert status_code(keep, "/two/f.txt") == 302
    assert status_code(keep, "/one/f.txt") == 302
    assert "reloaded" in f.log_text() and "added two" in f.log_text()
    # a change of an endpoint's mapping, then its removal
    conf.write_text(
        base(f.port, _dav_from(conf)) + two(dav2).replace("map = /two /reload-two", "map = /deux /reload-two")
    )
    f.proc.send_signal(signal.SIGHUP)
    reloaded(f, 2)
    assert status_code(keep, "/deux/f.txt") == 302
    conf.write_text(base(f.port, _dav_from(conf)))
    f.proc.send_signal(signal.SIGHUP)
    status = reloaded(f, 3)
    assert set(status["endpoints"]) == {"one"}
    assert status_code(keep, "/deux/f.txt") == 404
    keep.close()


def _dav_from(conf: Path) -> Any:
    """The `one` endpoint's URL from the file, as an object with .url (for base())."""
    text = conf.read_text()
    url = text.split("[endpoint one]")[1].split("url = ")[1].split()[0]
    return type("Dav", (), {"url": url})()


def test_broken_config_is_refused_and_the_old_one_serves(daemon: tuple[Fedd, Path], dav2: Any) -> None:
    f, conf = daemon
    good = conf.read_text()
    conf.write_text(good + two(dav2) + "\n[endpoint bad]\nkind = s4\nweight = heavy\n")
    f.proc.send_signal(signal.SIGHUP)
    status = reloaded(f, 1, "refused")
    assert status["reload"]["reloads"] == 0
    assert (
        "unknown endpoint kind 's4'" in status["reload"]["last_error"]
        and "fedd.conf:" in status["reload"]["last_error"]
    )
    assert set(status["endpoints"]) == {"one"}
    assert "reload refused" in f.log_text()
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
    assert status_code(conn, "/one/f.txt") == 302
    conn.close()
    assert f.proc.poll() is None


def test_reload_while_requests_are_in_flight(daemon: tuple[Fedd, Path], dav2: Any) -> None:
    f, conf = daemon
    conf.write_text(conf.read_text() + two(dav2))
    failures: list[str] = []
    counts = [0]
    stop = time.monotonic() + 4.0

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
        i = 0
        while time.monotonic() < stop and i < 5000:
            path = "/one/f.txt" if i % 2 else f"/one/missing-{n}-{i}"
            try:
                code = status_code(conn, path)
            except Exception as exc:  # any connection error is a failure of the reload
                failures.append(f"{path}: {exc!r}")
                conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
                continue
            if code != (302 if i % 2 else 404):
                failures.append(f"{path}: {code}")
            counts[0] += 1
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for _ in range(6):
        time.sleep(0.5)
        f.proc.send_signal(signal.SIGHUP)
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert counts[0] > 100
    assert reloaded(f, 6)["reload"]["refused"] == 0


def test_reload_restarts_the_loops_with_new_intervals_and_applies_checksums(
    daemon: tuple[Fedd, Path], tmp_path: Path
) -> None:
    """[health] and [space] intervals are read by loops that run since the start: a reload that says
    it applied a new interval must restart them. [checksums] is applied too, but its database needs a
    restart, and the status says so."""
    f, conf = daemon
    slow = base(f.port, _dav_from(conf)).replace("interval = 5", "interval = 60") + "[space]\ninterval = 300\n"
    conf.write_text(slow)
    f.proc.send_signal(signal.SIGHUP)
    reloaded(f, 1)

    def checks() -> int:
        return int(f.status()["endpoints"]["one"]["health"]["checks"])

    def measured() -> tuple[Any, Any]:
        m = f.status()["space"]["one"]  # mod_dav reports no quota: every round records its error
        return m["measured"], m["error_at"]

    wait_for(lambda: measured() != (None, None), what="the first space round")
    health_before, space_before = checks(), measured()
    fast = slow.replace("interval = 60", "interval = 0.2").replace("interval = 300", "interval = 0.3")
    fast += f"[checksums]\nworkers = 5\nqueue = 7\ndatabase = {tmp_path / 'other.sqlite'}\n"
    conf.write_text(fast)
    f.proc.send_signal(signal.SIGHUP)
    status = reloaded(f, 2)
    # the old periods (60 s, 300 s) would give at most one more round in these 5 seconds
    wait_for(lambda: checks() >= health_before + 10, timeout=5, what="health probes every 0.2 s")
    seen = {space_before}

    def four_rounds() -> bool:
        seen.add(measured())
        return len(seen) >= 4

    wait_for(four_rounds, timeout=5, what="space rounds every 0.3 s")
    ck = f.status()["checksums"]
    assert ck["workers"] == 5 and ck["queue_max"] == 7
    assert ck["database"] == "fedd-checksums.sqlite"  # the running database stays until a restart
    assert status["reload"]["needs_restart"] == ["[checksums] database"]
    log = f.log_text()
    assert "[health] interval 60s -> 0.2s" in log and "[space] interval 300s -> 0.3s" in log
    assert "changes to [checksums] database need a restart" in log
    # back to a slow period: the fast loop stops (not a second loop beside it)
    conf.write_text(slow)
    f.proc.send_signal(signal.SIGHUP)
    assert reloaded(f, 3)["reload"]["needs_restart"] == []
    settled = checks()
    time.sleep(1.5)  # nothing to wait for: this checks that probes do *not* happen
    assert checks() <= settled + 1

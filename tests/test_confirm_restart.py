"""Uploads redirected before a restart are confirmed after it (`[confirm] pending_file`), through
`twistd fedd` and a real Apache mod_dav endpoint: a SIGTERMed fedd started again, a SIGKILLed worker
of `[server] workers = 2` started again by its supervisor, and an upload whose deadline passed while
fedd was down. The client uploads to the endpoint (the 307's Location) while fedd or the worker is
down; the events are read from the spool file."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import dav_endpoint, free_port

DEADLINE = 8.0


def config(dav: Any, port: int, top: str, workers: int, deadline: float = DEADLINE) -> str:
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
workers = {workers}
[events]
flush_interval = 0.02
idle_interval = 0.2
[confirm]
deadline = {deadline:g}
poll_initial = 0.5
poll_max = 1
{dav_endpoint(dav, map=f"/{top} /w/{top}", write=True)}
"""


def upload(url: str, data: bytes) -> None:
    """The client's PUT to the endpoint itself (fedd is not asked)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("PUT", parts.path + (f"?{parts.query}" if parts.query else ""), body=data)
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status in (200, 201, 204), r.status


def outcomes(workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """put-done/put-failed events in the spool, by path."""
    spool = workdir / "fedd-events.jsonl"
    got: dict[str, list[dict[str, Any]]] = {}
    if spool.exists():
        for line in spool.read_text().splitlines():  # every line whole: one locked write per batch
            event = json.loads(line)
            if event["event_type"] in ("put-done", "put-failed"):
                got.setdefault(event["payload"]["path"], []).append(event)
    return got


def kept(workdir: Path) -> dict[str, int]:
    """What the pending file holds: path -> the worker index that waits for it."""
    file = workdir / "fedd-pending.sqlite"
    if not file.exists():
        return {}
    db = sqlite3.connect(file, timeout=10)
    try:
        return {str(p): int(w) for p, w in db.execute("SELECT path, worker FROM pending")}
    finally:
        db.close()


def redirected_then_stopped(workdir: Path, text: str, port: int, path: str, size: int) -> tuple[Fedd, str, float]:
    """fedd started, a PUT of `path` redirected and kept in the pending file, fedd stopped (SIGTERM):
    that fedd, the 307's Location, and when the redirect was answered."""
    f = start_fedd(workdir, text, port)
    try:
        location = f.redirect_put(path, size)
        asked = time.time()
        wait_for(lambda: kept(workdir), 10, "the upload in the pending file", until=lambda k: path in k)
    finally:
        f.stop()
    return f, location, asked


def test_an_upload_redirected_before_a_restart_is_confirmed_after_it(dav2: Any, tmp_path: Path) -> None:
    top = f"restart-{uuid.uuid4().hex[:8]}"
    port = free_port()
    text = config(dav2, port, top, workers=1, deadline=60)
    data = os.urandom(30_000)
    f, location, _ = redirected_then_stopped(tmp_path, text, port, f"/{top}/landed.bin", len(data))
    assert f.proc.returncode == 0
    assert f"/{top}/landed.bin to dav (30000 bytes) not confirmed after" in f.log_text()
    assert "kept in fedd-pending.sqlite, they are confirmed after the restart" in f.log_text()
    upload(location, data)  # while fedd is down
    assert outcomes(tmp_path) == {}

    f = start_fedd(tmp_path, text, port)
    try:
        got = wait_for(lambda: outcomes(tmp_path), 20, "put-done after the restart", until=bool)
        events = got[f"/{top}/landed.bin"]
        assert [(e["event_type"], e["payload"]["bytes"], e["payload"]["confirmed_by"]) for e in events] == [
            ("put-done", 30_000, "look")
        ]
        wait_for(lambda: kept(tmp_path), 10, "the pending file emptied", until=lambda k: k == {})
        assert f.status()["confirm"]["taken_over"] == 1
        assert "taking over 1 upload(s) not confirmed before the restart" in f.log_text()
        assert "Traceback" not in f.log_text()
    finally:
        f.stop()


def test_an_upload_whose_deadline_passed_while_fedd_was_down_fails_at_once(dav2: Any, tmp_path: Path) -> None:
    top = f"late-{uuid.uuid4().hex[:8]}"
    port = free_port()
    text = config(dav2, port, top, workers=1, deadline=3)
    _, _, asked = redirected_then_stopped(tmp_path, text, port, f"/{top}/never.bin", 1000)
    assert outcomes(tmp_path) == {}, "the deadline passed before fedd stopped: make it longer"
    # fedd stays down past the deadline (3 s from the redirect)
    wait_for(lambda: time.time() - asked, 10, "the deadline to pass", until=lambda waited: waited > 3.2)
    f = start_fedd(tmp_path, text, port)
    try:
        got = wait_for(lambda: outcomes(tmp_path), 20, "put-failed after the restart", until=bool)
        events = got[f"/{top}/never.bin"]
        assert [(e["event_type"], e["payload"]["reason"]) for e in events] == [
            ("put-failed", "deadline passed: no object after 3s")
        ]
        assert events[0]["payload"]["duration"] > 3.0  # counted from the redirect, before the restart
        assert f.status()["confirm"]["looks"] == 1  # one look, at once
        wait_for(lambda: kept(tmp_path), 10, "the pending file emptied", until=lambda k: k == {})
    finally:
        f.stop()


def test_a_killed_worker_started_again_confirms_its_uploads(dav2: Any, tmp_path: Path) -> None:
    top = f"worker-{uuid.uuid4().hex[:8]}"
    port = free_port()
    f = start_fedd(tmp_path, config(dav2, port, top, workers=2, deadline=60), port)
    try:
        data = os.urandom(20_000)
        locations = {f"/{top}/f{i}.bin": f.redirect_put(f"/{top}/f{i}.bin", len(data)) for i in range(6)}
        owners = wait_for(lambda: kept(tmp_path), 10, "6 uploads kept", until=lambda k: len(k) == 6)
        pids = wait_for(
            lambda: {w["index"]: w["pid"] for w in f.status()["workers"]["workers"] if w["pid"]},
            10,
            "both workers",
            until=lambda p: len(p) == 2,
        )
        # the worker that redirected most of them (new connections: usually both took some)
        victim = max((0, 1), key=lambda i: list(owners.values()).count(i))
        os.kill(pids[victim], signal.SIGKILL)
        for location in locations.values():
            upload(location, data)  # the killed worker's uploads land while it is down (or starting)
        got = wait_for(lambda: outcomes(tmp_path), 30, "6 put-done", until=lambda g: len(g) == 6)
        for path in locations:
            assert [e["event_type"] for e in got[path]] == ["put-done"], got[path]
        wait_for(lambda: kept(tmp_path), 10, "the pending file emptied", until=lambda k: k == {})
        assert f"worker {victim} (pid {pids[victim]}) ended (signal 9)" in f.log_text()
        mine = list(owners.values()).count(victim)
        assert f"taking over {mine} upload(s) not confirmed before the restart" in f.log_text()
    finally:
        f.stop()


def put_request(port: int, path: str, size: int) -> socket.socket:
    """A PUT sent to fedd (Expect: 100-continue, no body yet): the connection its answer comes on."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {size}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    return s


def answer_head(s: socket.socket) -> str:
    """The status line and headers of the answer on `s` (read until the blank line)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before the answer: {buf!r}"
        buf += chunk
    return buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")


def test_an_upload_redirected_just_before_a_kill_is_confirmed_after_the_restart(dav2: Any, tmp_path: Path) -> None:
    """A PUT's 307 goes out once its row is committed to the pending file, so fedd SIGKILLed at once
    after the answer has kept the upload. The row's commit is held back here (the test holds the
    file's write lock, as another worker's transaction or a slow disk would): the 307 waits for it."""
    top = f"kill-{uuid.uuid4().hex[:8]}"
    port = free_port()
    text = config(dav2, port, top, workers=1, deadline=60)
    path, data = f"/{top}/killed.bin", os.urandom(1000)
    f = start_fedd(tmp_path, text, port)
    try:
        f.redirect_put(f"/{top}/warm.bin", 1)  # the pending file open
        wait_for(lambda: kept(tmp_path), 10, "the first upload kept", until=bool)
        lock = sqlite3.connect(tmp_path / "fedd-pending.sqlite", isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")  # fedd's next commit waits for this transaction
        try:
            conn = put_request(port, path, len(data))
            wait_for(lambda: f.status()["confirm"]["pending"], 10, "the PUT taken", until=lambda n: n == 2)
            with selectors.DefaultSelector() as sel:  # the status went out after the PUT was taken: so would a 307
                sel.register(conn, selectors.EVENT_READ)
                assert sel.select(timeout=0) == [], "answered before the upload's row was committed"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        head = answer_head(conn)
        os.kill(f.proc.pid, signal.SIGKILL)  # at once after the answer
        conn.close()
        assert head.startswith("HTTP/1.1 307"), head
        f.proc.wait(10)
    finally:
        f.stop()
    assert path in kept(tmp_path)
    location = next(v for k, _, v in (h.partition(": ") for h in head.split("\r\n")[1:]) if k.lower() == "location")
    upload(location, data)
    f = start_fedd(tmp_path, text, port)
    try:
        got = wait_for(lambda: outcomes(tmp_path), 20, "put-done after the restart", until=lambda g: path in g)
        assert [e["event_type"] for e in got[path]] == ["put-done"], got[path]
        assert "Traceback" not in f.log_text()
    finally:
        f.stop()


def test_an_outcome_published_again_after_a_kill_carries_the_same_id(dav2: Any, tmp_path: Path) -> None:
    """put-done decided just before a SIGKILL, its row's delete not yet committed (the test holds the
    pending file's write lock): published again after the restart, with the same envelope id."""
    top = f"twice-{uuid.uuid4().hex[:8]}"
    port = free_port()
    text = config(dav2, port, top, workers=1, deadline=60)
    path, data = f"/{top}/twice.bin", os.urandom(2000)
    f = start_fedd(tmp_path, text, port)
    try:
        location = f.redirect_put(path, len(data))
        wait_for(lambda: kept(tmp_path), 10, "the upload kept", until=lambda k: path in k)
        lock = sqlite3.connect(tmp_path / "fedd-pending.sqlite", isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")  # the row's delete waits for this transaction
        try:
            upload(location, data)
            wait_for(lambda: outcomes(tmp_path), 10, "put-done", until=lambda g: path in g)
            os.kill(f.proc.pid, signal.SIGKILL)
            f.proc.wait(10)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    finally:
        f.stop()
    assert path in kept(tmp_path)
    f = start_fedd(tmp_path, text, port)
    try:
        got = wait_for(lambda: outcomes(tmp_path), 20, "put-done again", until=lambda g: len(g.get(path, [])) == 2)
        first, second = got[path]
        assert (first["event_type"], second["event_type"]) == ("put-done", "put-done")
        assert first["id"] == second["id"] and len(first["id"]) == 32
        assert first["created_at"] != second["created_at"]  # two emissions, one id
        wait_for(lambda: kept(tmp_path), 10, "the pending file emptied", until=lambda k: k == {})
    finally:
        f.stop()

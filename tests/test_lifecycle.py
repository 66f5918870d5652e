"""fedd's start and stop as a daemon: SIGTERM drains open requests within a bound; a port in use."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fedd.config import ConfigError, parse_config
from fedd.twtypes import MultiService, Service
from fedd.web.lifecycle import DrainFirst, WebService
from tests.daemon import Fedd, env, start_fedd, twistd_command, wait_for
from tests.servers import free_port


class SlowDav:
    """A WebDAV endpoint on loopback whose HEAD of /data/slow.bin answers after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.port = free_port()
        self.received = threading.Event()  # the slow HEAD has arrived
        self.release = threading.Event()  # set at teardown: answer at once
        dav = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                if self.path == "/data/slow.bin":
                    dav.received.set()
                    dav.release.wait(dav.delay)
                self.send_response(200 if self.path in ("/data/slow.bin", "/data/", "/data") else 404)
                self.send_header("Content-Length", "5")
                self.send_header("Last-Modified", "Mon, 02 Nov 2026 10:00:00 GMT")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def start(tmp_path: Path, dav: SlowDav, drain_timeout: float) -> Fedd:
    port = free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
drain_timeout = {drain_timeout}
[locate]
wait_budget = 50
[health]
interval = 60
[endpoint slow]
kind = dav
url = http://127.0.0.1:{dav.port}/data
timeout = 60
"""
    return start_fedd(tmp_path / "run", conf, port)


class Client(threading.Thread):
    """GET /slow.bin in a thread; keeps the answer or the exception."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.result: tuple[int, str | None, bytes] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
        try:
            conn.request("GET", "/slow.bin")
            r = conn.getresponse()
            self.result = (r.status, r.getheader("Location"), r.read())
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def dav_2s() -> Iterator[SlowDav]:
    d = SlowDav(2.0)
    yield d
    d.stop()


@pytest.fixture
def dav_30s() -> Iterator[SlowDav]:
    d = SlowDav(30.0)
    yield d
    d.stop()


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path, dav_2s: SlowDav) -> None:
    f = start(tmp_path, dav_2s, drain_timeout=10)
    try:
        client = Client(f.port)
        client.start()
        assert dav_2s.received.wait(10), f.log_text()
        sent = time.monotonic()
        f.proc.send_signal(signal.SIGTERM)
        # no new connections while draining...
        wait_for(lambda: refused(f.port), 1.5, "fedd to refuse new connections after SIGTERM", interval=0.02)
        assert client.is_alive()  # ...while the old one is still being served
        code = f.proc.wait(15)
        took = time.monotonic() - sent
        client.join(5)
        assert code == 0, f.log_text()
        assert client.error is None and client.result is not None, client.error
        status, location, body = client.result
        assert status == 302 and location == f"http://127.0.0.1:{dav_2s.port}/data/slow.bin" and body == b""
        assert 1.0 < took < 8.0, took  # waited for the answer, not for the whole drain_timeout
        log = f.log_text()
        assert "draining 1 open request(s) for at most 10s" in log and "Traceback" not in log
    finally:
        f.stop()


def test_a_request_that_outlives_drain_timeout_is_cut_off(tmp_path: Path, dav_30s: SlowDav) -> None:
    f = start(tmp_path, dav_30s, drain_timeout=1.5)
    try:
        client = Client(f.port)
        client.start()
        assert dav_30s.received.wait(10), f.log_text()
        sent = time.monotonic()
        f.proc.send_signal(signal.SIGTERM)
        code = f.proc.wait(10)
        took = time.monotonic() - sent
        client.join(5)
        assert code == 0, f.log_text()
        assert 1.4 < took < 1.5 + 3.0, took
        assert client.result is None and client.error is not None  # the connection was closed unanswered
        assert "drain timeout: 1 request(s) still open are cut off" in f.log_text()
    finally:
        f.stop()


def test_idle_daemon_stops_at_once(tmp_path: Path, dav_2s: SlowDav) -> None:
    f = start(tmp_path, dav_2s, drain_timeout=30)
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)  # an idle keep-alive connection
    try:
        conn.request("GET", "/.well-known/fedd/status")
        assert conn.getresponse().read()
        sent = time.monotonic()
        f.proc.send_signal(signal.SIGTERM)
        assert f.proc.wait(10) == 0
        assert time.monotonic() - sent < 3.0
    finally:
        conn.close()
        f.stop()


def test_port_in_use_is_one_clear_line_and_a_failure(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        conf = tmp_path / "fedd.conf"
        conf.write_text(
            f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n[endpoint l]\nkind = local\npath = {tmp_path / 'd'}\n"
        )
        out = subprocess.run(
            twistd_command("--config", str(conf)), capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60
        )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"fedd: cannot listen on 127.0.0.1:{port} (tcp:{port}:interface=127.0.0.1): Address already in use" in text
    assert "Traceback" not in text and "CannotListenError" not in text
    assert len(text.splitlines()) < 6, text


@pytest.mark.parametrize(("value", "expected"), [(None, 10.0), ("0", 0.0), ("2.5", 2.5)])
def test_drain_timeout_setting(value: str | None, expected: float) -> None:
    text = "[server]\n" + (f"drain_timeout = {value}\n" if value is not None else "")
    assert parse_config(text + "[endpoint l]\nkind = dav\nurl = http://h/\n").server.drain_timeout == expected


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_bad_drain_timeout_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="drain_timeout"):
        parse_config(f"[server]\ndrain_timeout = {value}\n[endpoint l]\nkind = dav\nurl = http://h/\n")


# --- the drain logic itself, with a fake clock --------------------------------------------------------


class FakeSite:
    def __init__(self) -> None:
        self.open_requests: set[object] = set()
        self.drained = False

    def drain(self) -> None:
        self.drained = True


class Recorder(Service):
    def __init__(self, name: str, order: list[str]) -> None:
        self.setName(name)
        self.order = order

    def stopService(self) -> None:
        super().stopService()
        assert self.name is not None
        self.order.append(self.name)


def test_web_service_waits_for_open_requests_then_stops() -> None:
    clock, site = Clock(), FakeSite()
    web = WebService(site, clock=clock, drain_timeout=10)
    web.startService()
    site.open_requests.add("r")
    d: Deferred[None] = web.stopService()
    assert site.drained and not d.called
    clock.advance(3)
    assert not d.called
    site.open_requests.clear()
    clock.advance(0.05)
    assert d.called


def test_web_service_gives_up_at_the_timeout() -> None:
    clock, site = Clock(), FakeSite()
    web = WebService(site, clock=clock, drain_timeout=2)
    web.startService()
    site.open_requests.add("r")
    d = web.stopService()
    clock.pump([0.05] * 39)
    assert not d.called
    clock.pump([0.05] * 2)
    assert d.called


def test_drain_first_stops_web_before_the_rest() -> None:
    clock, site = Clock(), FakeSite()
    order: list[str] = []
    top = DrainFirst()
    Recorder("health", order).setServiceParent(top)
    web = WebService(site, clock=clock, drain_timeout=10)
    web.setServiceParent(top)
    inner = MultiService()
    inner.setName("events")
    inner.setServiceParent(top)
    Recorder("closer", order).setServiceParent(inner)
    top.startService()
    site.open_requests.add("r")
    d = top.stopService()
    clock.advance(1)
    assert order == [] and not d.called  # nothing else stops while the web front drains
    site.open_requests.clear()
    clock.advance(0.05)
    assert order == ["closer", "health"] and d.called

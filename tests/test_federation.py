"""A whole federation through `twistd fedd`: Ceph RGW (S3) + Apache mod_dav + a local directory,
GeoIP-style ranking by site ranges, real clients (curl, davix, gfal2, aria2c), faults, memcached."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.badservers import BadServer
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, dav_endpoint, free_port, local_endpoint

BUCKET = "fedd-federation"
CONTENT = b"federated bytes\n" * 1000
GENEVA = "46.2044 6.1432"
CHICAGO = "41.8781 -87.6298"


@pytest.fixture(scope="module")
def data(ceph: Any, s3client: Any, dav1: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key  # the configs read the S3 secret from the environment
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="rucio/atlas/data/both.bin", Body=CONTENT)
    s3client.put_object(Bucket=BUCKET, Key="rucio/atlas/data/s3only.txt", Body=b"only on ceph\n")
    dav_dir = Path(dav1.docroot) / "atlas" / "data"
    dav_dir.mkdir(parents=True, exist_ok=True)
    (dav_dir / "both.bin").write_bytes(CONTENT)
    (dav_dir / "davonly.txt").write_text("only on apache\n")
    local = tmp_path_factory.mktemp("local-endpoint")
    (local / "data").mkdir()
    (local / "data" / "localonly.txt").write_text("only local\n")
    return {"local": local}


# tolerant health settings: a loaded CI machine must not take a healthy endpoint offline
RELAXED = "interval = 5\ntimeout = 5\nfailures_to_offline = 3\nsuccesses_to_online = 1"
EAGER = "interval = 0.5\ntimeout = 1\nfailures_to_offline = 1\nsuccesses_to_online = 1"


def config(
    ceph: Any,
    dav1: Any,
    data: dict[str, Any],
    port: int,
    extra: str = "",
    near: str = "ceph",
    locate: str = "",
    health: str = RELAXED,
    budget: float = 3.0,
) -> str:
    where = {"ceph": CHICAGO, "dav": CHICAGO}
    where[near] = GENEVA
    lat, lon = {k: v.split()[0] for k, v in where.items()}, {k: v.split()[1] for k, v in where.items()}
    endpoints = (
        ceph_endpoint(ceph, BUCKET, map="/atlas /rucio/atlas", lat=lat["ceph"], lon=lon["ceph"])
        + dav_endpoint(dav1, lat=lat["dav"], lon=lon["dav"])
        + local_endpoint(data["local"])
    )
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = {budget}
{locate}
[geo]
site = 127.0.0.0/8 {GENEVA}
fuzz_km = 100
[health]
{health}
{endpoints}{extra}
"""


@pytest.fixture(scope="module")
def fed(ceph: Any, dav1: Any, data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    port = free_port()
    f = start_fedd(tmp_path_factory.mktemp("fed"), config(ceph, dav1, data, port), port)
    yield f
    f.stop()


def get(fed: Fedd, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """GET without following: the redirect itself."""
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=15)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r


def test_nearest_replica_is_a_presigned_ceph_url_and_curl_reads_it(fed: Fedd) -> None:
    # the first (cold) answer may come before the other endpoints answered; the second lists them all
    assert get(fed, "/atlas/data/both.bin").status == 302
    r = get(fed, "/atlas/data/both.bin")
    assert r.status == 302
    location = r.getheader("Location") or ""
    assert location.startswith(fed.status()["endpoints"]["ceph"]["url"] + f"/{BUCKET}/rucio/atlas/data/both.bin?")
    assert "X-Amz-Signature=" in location
    assert "rel=duplicate; pri=2" in (r.getheader("Link") or "")
    out = subprocess.run(["curl", "-sfL", fed.url + "/atlas/data/both.bin"], capture_output=True, check=True)
    assert out.stdout == CONTENT


def test_head_of_an_s3_file_is_answered_by_fedd(fed: Fedd) -> None:
    get(fed, "/atlas/data/both.bin")  # a cold answer may precede the slower replica's
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=15)
    conn.request("HEAD", "/atlas/data/both.bin")
    r = conn.getresponse()
    r.read()
    assert r.status == 200 and r.getheader("Content-Length") == str(len(CONTENT))
    assert (r.getheader("Link") or "").count("rel=duplicate") == 2


def test_each_endpoint_serves_its_own_files(fed: Fedd) -> None:
    for path, body in [
        ("/atlas/data/s3only.txt", b"only on ceph\n"),
        ("/atlas/data/davonly.txt", b"only on apache\n"),
        ("/atlas/data/localonly.txt", b"only local\n"),
    ]:
        out = subprocess.run(["curl", "-sfL", fed.url + path], capture_output=True, check=True)
        assert out.stdout == body


def test_davix_reads_and_lists(fed: Fedd, tmp_path: Path) -> None:
    out = subprocess.run(["davix-get", fed.url + "/atlas/data/both.bin"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == CONTENT
    ls = subprocess.run(["davix-ls", fed.url + "/atlas/data"], capture_output=True, timeout=60, text=True)
    assert ls.returncode == 0, ls.stderr
    assert set(ls.stdout.split()) == {"both.bin", "s3only.txt", "davonly.txt", "localonly.txt"}


def test_gfal_copy_and_ls(fed: Fedd, tmp_path: Path) -> None:
    if shutil.which("gfal-copy") is None:
        pytest.fail("gfal-copy is not installed: tests/run.sh installs gfal2-util-scripts")
    target = tmp_path / "copy.bin"
    out = subprocess.run(
        ["gfal-copy", "-f", fed.url + "/atlas/data/both.bin", f"file://{target}"],
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == CONTENT
    ls = subprocess.run(["gfal-ls", fed.url + "/atlas/data"], capture_output=True, timeout=60, text=True)
    assert ls.returncode == 0, ls.stderr
    assert {"both.bin", "davonly.txt"} <= set(ls.stdout.split())


def test_aria2c_metalink_lists_all_replicas_in_rank_order(fed: Fedd, tmp_path: Path) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=15)
    conn.request("GET", "/atlas/data/both.bin?metalink")
    body = conn.getresponse().read().decode()
    assert body.count("<url ") == 2
    assert body.index("X-Amz-Signature") < body.index("/atlas/data/both.bin</url>")
    subprocess.run(
        ["aria2c", "-q", "--follow-metalink=mem", "-d", str(tmp_path), fed.url + "/atlas/data/both.bin?metalink"],
        check=True,
        timeout=60,
    )
    assert (tmp_path / "both.bin").read_bytes() == CONTENT


def test_merged_listing_over_three_kinds(fed: Fedd) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=15)
    conn.request("PROPFIND", "/atlas/data", headers={"Depth": "1"})
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 207
    assert body.count("<D:href>/atlas/data/both.bin</D:href>") == 1
    for name in ("s3only.txt", "davonly.txt", "localonly.txt"):
        assert f"/atlas/data/{name}</D:href>" in body


def test_ranking_follows_the_client_site(ceph: Any, dav1: Any, data: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    f = start_fedd(tmp_path, config(ceph, dav1, data, port, near="dav"), port)
    try:
        location = get(f, "/atlas/data/both.bin").getheader("Location") or ""
        assert location == dav1.url + "/atlas/data/both.bin"
    finally:
        f.stop()


def state(f: Fedd, endpoint: str) -> str:
    return str(f.status()["endpoints"][endpoint]["health"]["state"])


def memcached_servers(f: Fedd) -> dict[str, str]:
    """Each memcached server's state: connected or down."""
    servers: dict[str, str] = f.status()["locate"]["memcached"]["servers"]
    return servers


def connected(servers: dict[str, str]) -> bool:
    return "down" not in servers.values()


def test_offline_endpoint_is_never_a_target(ceph: Any, dav1: Any, data: dict[str, Any], tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    extra = f"[endpoint dead]\nkind = dav\nurl = {dead}\nmap = /atlas /atlas\nlat = 46.2044\nlon = 6.1432\n"
    port = free_port()
    f = start_fedd(tmp_path, config(ceph, dav1, data, port, extra=extra, health=EAGER), port)
    try:
        wait_for(lambda: state(f, "dead"), 10, "the poller to mark the dead endpoint offline", until="offline".__eq__)
        for _i in range(5):
            r = get(f, "/atlas/data/both.bin")
            assert r.status == 302 and not (r.getheader("Location") or "").startswith(dead)
        assert "cannot connect" in f.status()["endpoints"]["dead"]["health"]["last_error"]
    finally:
        f.stop()


@pytest.mark.parametrize("mode", ["hang", "garbage"])
def test_bad_nearest_endpoint_costs_at_most_the_wait_budget(
    ceph: Any, dav1: Any, data: dict[str, Any], tmp_path: Path, mode: str
) -> None:
    bad = BadServer(mode)
    extra = (
        f"[endpoint bad]\nkind = dav\nurl = {bad.url}\nmap = /atlas /atlas\nlat = 46.2044\nlon = 6.1432\ntimeout = 30\n"
    )
    port = free_port()
    f = start_fedd(
        tmp_path,
        config(ceph, dav1, data, port, extra=extra, budget=1.0).replace("interval = 5", "interval = 600"),
        port,
    )
    try:
        start = time.monotonic()
        r = get(f, "/atlas/data/davonly.txt")
        elapsed = time.monotonic() - start
        assert r.status == 302 and (r.getheader("Location") or "").startswith(dav1.url)
        assert elapsed < 1.0 + 0.8  # wait budget 1 s, plus a margin for a loaded machine
        assert f.proc.poll() is None
        # with workers, another worker's passive failures reach the status within a second
        wait_for(
            lambda: f.status()["endpoints"]["bad"]["health"],
            5,
            "the bad endpoint's failure counted",
            until=lambda state: state["passive_failures"] >= 1 or state["failures"] >= 1,
        )
    finally:
        f.stop()
        bad.stop()


def test_memcached_shares_answers_and_its_death_is_survived(
    ceph: Any, dav1: Any, data: dict[str, Any], tmp_path: Path, memcached: Any
) -> None:
    mc = f"memcached = 127.0.0.1:{memcached.port}\nmemcached_timeout = 0.2"
    p1, p2 = free_port(), free_port()
    f1 = start_fedd(tmp_path / "a", config(ceph, dav1, data, p1, locate=mc), p1)
    f2 = start_fedd(tmp_path / "b", config(ceph, dav1, data, p2, locate=mc), p2)
    try:
        wait_for(lambda: memcached_servers(f2), 10, "the second fedd on memcached", interval=0.05, until=connected)
        assert get(f1, "/atlas/data/s3only.txt").status == 302
        from pymemcache.client.base import Client

        from fedd.locate.cache import cache_key

        mc_client = Client(("127.0.0.1", memcached.port), timeout=2)
        wait_for(  # the set is fire-and-forget
            lambda: mc_client.get(cache_key("/atlas/data/s3only.txt")),
            10,
            "fedd's answer stored in memcached",
            interval=0.02,
        )
        mc_client.close()
        assert get(f2, "/atlas/data/s3only.txt").status == 302
        # f2 never asked the endpoints (with workers, the status sums theirs within a second)
        wait_for(lambda: f2.status()["locate"]["memcached"]["hits"], 5, "f2's memcached hit", until=lambda n: n == 1)
        memcached.kill()
        for i in range(3):  # new paths: memcached would be asked, but it is gone
            assert get(f1, "/atlas/data/davonly.txt" if i == 0 else f"/atlas/data/x{i}").status in (302, 404)
        start = time.monotonic()
        assert get(f1, "/atlas/data/localonly.txt").status == 302
        assert time.monotonic() - start < 1.5  # memcached is gone: no wait for it (timeout would be 0.2 s each)
        memcached.restart()
        wait_for(lambda: memcached_servers(f1), 40, "fedd to reconnect to memcached", until=connected)
        log = f1.log_text()
        assert log.count("using the in-process cache alone") == 1
        assert "is back" in log
        assert f1.proc.poll() is None
    finally:
        f1.stop()
        f2.stop()

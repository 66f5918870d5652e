"""Space measurement against real storage: Ceph RGW by paged listing and by its admin API (what
dynafed-storagestats' ceph-admin method reads), and RFC 4331 from a WebDAV server that reports quota
(a second fedd over a local directory: Apache's mod_dav_fs does not report RFC 4331)."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fedd.config import EndpointConfig
from fedd.endpoints import make_endpoint
from fedd.endpoints import s3 as s3mod
from fedd.errors import EndpointError
from tests import reactor
from tests.daemon import start_fedd, wait_for
from tests.servers import free_port

BUCKET = "fedd-space"


@pytest.fixture(scope="module")
def filled(ceph: Any, s3client: Any) -> dict[str, int]:
    s3client.create_bucket(Bucket=BUCKET)
    sizes = {f"d{i % 3}/obj{i:03d}": 100 + i for i in range(25)}
    for key, size in sizes.items():
        s3client.put_object(Bucket=BUCKET, Key=key, Body=b"s" * size)
    ceph.admin("caps", "add", "--uid=fedd", "--caps=buckets=read")
    return sizes


def s3(ceph: Any, **kw: Any) -> Any:
    config = EndpointConfig(
        id="ceph",
        kind="s3",
        url=ceph.url,
        bucket=kw.pop("bucket", BUCKET),
        access_key=ceph.access_key,
        secret_key=ceph.secret_key,
        timeout=10.0,
        **kw,
    )
    return make_endpoint(config, reactor=reactor.the_reactor())


def test_listing_sum_is_paged(ceph: Any, filled: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "PAGE_SIZE", 7)  # 25 objects: 4 pages
    space = reactor.call(s3(ceph, quota=10_000).space)
    assert (space.used, space.files, space.total, space.source) == (sum(filled.values()), 25, 10_000, "listing")
    assert space.free == 10_000 - sum(filled.values())
    with pytest.raises(EndpointError, match="more than 10 objects"):
        reactor.call(s3(ceph).space, 10)


def test_ceph_admin_api(ceph: Any, filled: dict[str, int]) -> None:
    space = reactor.call(s3(ceph, space_source="ceph-admin").space)
    assert space.source == "ceph-admin" and space.files == 25
    assert space.used is not None and space.used >= sum(filled.values())
    # a bucket quota set by the admin is the capacity when fedd has none configured
    ceph.admin("quota", "set", "--quota-scope=bucket", f"--bucket={BUCKET}", "--max-size=1048576")
    ceph.admin("quota", "enable", "--quota-scope=bucket", f"--bucket={BUCKET}")
    space = reactor.call(s3(ceph, space_source="ceph-admin").space)
    assert space.total == 1 << 20
    with pytest.raises(EndpointError, match=r"does not exist|unexpected HTTP|unreadable"):
        reactor.call(s3(ceph, bucket="no-such-bucket", space_source="ceph-admin").space)


def test_rfc4331_from_a_dav_server_that_reports_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "f.bin").write_bytes(b"z" * 1234)
    inner_port, outer_port = free_port(), free_port()
    inner = start_fedd(
        tmp_path / "inner",
        f"[server]\nlisten = tcp:{inner_port}:interface=127.0.0.1\n[space]\ninterval = 1\n"
        f"[endpoint disk]\nkind = local\npath = {data}\n",
        inner_port,
    )
    try:
        # with workers, one status read each (a follower takes worker 0's measurement within a second)
        wait_for(lambda: inner.status()["space"]["disk"], what="inner measured", until=lambda s: s["measured"])
        outer = start_fedd(
            tmp_path / "outer",
            f"[server]\nlisten = tcp:{outer_port}:interface=127.0.0.1\n[space]\ninterval = 1\n"
            f"[endpoint inner]\nkind = dav\nurl = {inner.url}\nmap = /site /\nwrite = yes\n",
            outer_port,
        )
        try:
            state = wait_for(
                lambda: outer.status()["space"]["inner"], what="outer measured", until=lambda s: s["measured"]
            )
            inner_state = wait_for(lambda: inner.status()["space"]["disk"], until=lambda s: s["measured"])
            assert state["source"] == "rfc4331"
            # the inner fedd answers RFC 4331 from its file system's figures
            # (the file system is shared with the rest of the machine: allow for what others wrote meanwhile)
            assert abs(state["used"] - inner_state["used"]) < 200 << 20
            assert abs(state["total"] - (inner_state["used"] + inner_state["free"])) < 200 << 20

            def srr_share() -> dict[str, Any]:
                with urllib.request.urlopen(outer.url + "/.well-known/fedd/srr.json", timeout=10) as r:
                    found: dict[str, Any] = json.loads(r.read())["storageservice"]["storageshares"][0]
                    return found

            share = wait_for(srr_share, what="the measured share in the SRR", until=lambda s: s.get("totalsize"))
            assert share["totalsize"] == state["total"] and share["path"] == ["/site"]
        finally:
            outer.stop()
    finally:
        inner.stop()
    assert os.path.exists(data / "sub" / "f.bin")

"""The configuration blocks tests/servers.py writes for its servers are what fedd reads."""

from __future__ import annotations

from pathlib import Path

from fedd.config import parse_config
from tests.servers import ApacheDav, CephRGW, ceph_endpoint, dav_endpoint, endpoint_block, local_endpoint


def test_blocks_parse_into_the_endpoints_meant(tmp_path: Path) -> None:
    rgw = CephRGW(tmp_path, tmp_path / "ceph.conf", 7480)
    apache = ApacheDav(tmp_path, tmp_path / "docroot", 8081, tmp_path / "httpd.conf")
    text = (
        ceph_endpoint(rgw, "bucket1", map=("/atlas /atlas", "/s3only /s3only"), write=True, quota=1000)
        + dav_endpoint(apache, id="dav1", map="/atlas /w/atlas", lat=41.9, lon=-87.6, vo=("atlas", "cms"))
        + local_endpoint(tmp_path, read=False, timeout=None)
        + ceph_endpoint(rgw, "bucket2", id="plain", secret_from_env=False)
    )
    config = parse_config(text, environ={"FEDD_TEST_SECRET": rgw.secret_key})
    ceph = config.endpoint("ceph")
    assert (ceph.kind, ceph.url, ceph.bucket, ceph.access_key) == ("s3", rgw.url, "bucket1", rgw.access_key)
    assert ceph.secret_key == rgw.secret_key and ceph.write is True and ceph.quota == 1000
    assert ceph.mappings == (("/atlas", "/atlas"), ("/s3only", "/s3only"))
    dav = config.endpoint("dav1")
    assert (dav.kind, dav.url, dav.mappings) == ("dav", apache.url, (("/atlas", "/w/atlas"),))
    assert (dav.lat, dav.lon, dav.vos) == (41.9, -87.6, ("atlas", "cms"))
    local = config.endpoint("local")
    assert (local.kind, local.path, local.read, local.mappings) == ("local", str(tmp_path), False, (("/atlas", "/"),))
    assert config.endpoint("plain").secret_key == rgw.secret_key
    assert "secret_key = " + rgw.secret_key in text and text.count("secret_key_env = FEDD_TEST_SECRET") == 1


def test_block_layout_is_the_hand_written_one() -> None:
    assert endpoint_block("x", "dav", ("/a /b", "/c /d"), url="http://h", write=True, timeout=3) == (
        "[endpoint x]\nkind = dav\nurl = http://h\nmap = /a /b\nmap = /c /d\nwrite = yes\ntimeout = 3\n"
    )

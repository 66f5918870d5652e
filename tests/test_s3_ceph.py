"""The S3 endpoint against a real Ceph RADOS Gateway: signed HEAD, paged listing, presigned redirects."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from fedd.config import EndpointConfig
from fedd.endpoints import make_endpoint
from fedd.endpoints.s3 import S3Endpoint
from fedd.errors import EndpointError, PathRefused
from tests import reactor

BUCKET = "fedd-s3-tests"


@pytest.fixture(scope="module")
def bucket(s3client: Any) -> str:
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="data/file.txt", Body=b"hello from ceph\n")
    s3client.put_object(Bucket=BUCKET, Key="data/sub/inner.txt", Body=b"x")
    s3client.put_object(Bucket=BUCKET, Key="data/with space & ü.txt", Body=b"odd name")
    s3client.put_object(Bucket=BUCKET, Key="emptydir/", Body=b"")
    for i in range(7):
        s3client.put_object(Bucket=BUCKET, Key=f"paged/f{i:02d}", Body=b"p" * i)
    return BUCKET


def endpoint(ceph: Any, **kw: Any) -> S3Endpoint:
    config = EndpointConfig(
        id="ceph",
        kind="s3",
        url=ceph.url,
        bucket=kw.pop("bucket", BUCKET),
        access_key=ceph.access_key,
        secret_key=kw.pop("secret_key", ceph.secret_key),
        timeout=5.0,
        **kw,
    )
    ep = make_endpoint(config, reactor=reactor.the_reactor())
    assert isinstance(ep, S3Endpoint)
    return ep


def test_stat_file_and_missing(ceph: Any, bucket: str) -> None:
    ep = endpoint(ceph)
    stat = reactor.call(ep.stat, "/data/file.txt")
    assert stat.size == 16 and not stat.is_dir and stat.mtime and stat.etag
    assert reactor.call(ep.stat, "/data/nope") is None
    assert reactor.call(ep.stat, "/data/with space & ü.txt").size == 8


def test_listdir_with_prefixes_markers_and_paging(ceph: Any, bucket: str, monkeypatch: Any) -> None:
    ep = endpoint(ceph)
    entries = {e.name: e.stat for e in reactor.call(ep.listdir, "/data")}
    assert set(entries) == {"file.txt", "sub", "with space & ü.txt"}
    assert entries["sub"].is_dir and entries["file.txt"].size == 16
    assert reactor.call(ep.listdir, "/emptydir") == []  # a directory marker object
    assert reactor.call(ep.listdir, "/data/file.txt") is None
    assert reactor.call(ep.listdir, "/nothing") is None
    root = {e.name for e in reactor.call(ep.listdir, "/")}
    assert {"data", "emptydir", "paged"} <= root
    monkeypatch.setattr("fedd.endpoints.s3.PAGE_SIZE", 3)
    paged = reactor.call(ep.listdir, "/paged")
    assert [e.name for e in paged] == [f"f{i:02d}" for i in range(7)]


def test_presigned_url_downloads_and_tampering_is_refused_by_ceph(ceph: Any, bucket: str) -> None:
    ep = endpoint(ceph)
    url = ep.url_for("/data/file.txt", 0)
    assert "X-Amz-Signature=" in url and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"hello from ceph\n"
    sig = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    tampered = url[:sig] + ("0" if url[sig] != "0" else "1") + url[sig + 1 :]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(tampered, timeout=10)
    assert info.value.code == 403 and b"SignatureDoesNotMatch" in info.value.read()
    with urllib.request.urlopen(ep.url_for("/data/with space & ü.txt", 0), timeout=10) as r:
        assert r.read() == b"odd name"


def test_expired_presigned_url_is_refused_by_ceph(ceph: Any, bucket: str) -> None:
    import time

    ep = endpoint(ceph)
    url = ep.presign("GET", "/data/file.txt", expires=1)
    time.sleep(2.1)  # the only way to let a real signature expire is to let real time pass
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=10)
    assert info.value.code == 403


def test_presigned_urls_are_reused_for_part_of_their_validity(ceph: Any, bucket: str) -> None:
    ep = endpoint(ceph, presign_expiry=100)
    first = ep.url_for("/data/file.txt", 1000.0)
    assert ep.url_for("/data/file.txt", 1049.0) is first  # reused, not signed again
    assert ep._urls.get("GET /data/file.txt", 1049.0) is first
    assert ep._urls.get("GET /data/file.txt", 1051.0) is None
    head = ep.url_for("/data/file.txt", 1000.0, "HEAD")
    request = urllib.request.Request(head, method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert (
            r.headers["Content-Length"] == "16"
        )  # a HEAD-signed URL works for HEAD  # half the validity (presign_reuse 0.5) is over


def test_wrong_keys_and_missing_bucket_are_endpoint_errors(ceph: Any, bucket: str) -> None:
    bad = endpoint(ceph, secret_key="wrong")
    # a 403 to a HEAD is that path's refusal (a bucket policy, a name the client may not see): never
    # the endpoint's fault by itself, but suspect (revoked keys look the same): the probe decides
    with pytest.raises(PathRefused, match="HTTP 403") as refusal:
        reactor.call(bad.stat, "/data/file.txt")
    assert refusal.value.suspect
    with pytest.raises(EndpointError, match="access denied"):
        reactor.call(bad.probe)
    nobucket = endpoint(ceph, bucket="no-such-bucket-here")
    with pytest.raises(EndpointError, match="does not exist"):
        reactor.call(nobucket.probe)
    assert reactor.call(endpoint(ceph).probe) is None

"""Federated writes through `twistd fedd` with real storage and real clients: Ceph RGW (S3) and Apache
mod_dav as writable endpoints; curl, davix-put, gfal-copy and rclone uploading; DELETE, MKCOL, MOVE;
capacity-aware placement, SRR, RFC 4331 quota, run-time downtimes and faults."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ApacheDav, ceph_endpoint, dav_endpoint, free_port, start_apache_dav

BUCKET = "fedd-writes"
JSON = {"Content-Type": "application/json"}
RELAXED = "interval = 2\ntimeout = 5\nfailures_to_offline = 2\nsuccesses_to_online = 1"


def request(
    fed: Fedd, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def upload(url: str, data: bytes) -> subprocess.CompletedProcess[str]:
    """Send `data` to a URL fedd redirected to, as the client would."""
    return subprocess.run(
        ["curl", "-sS", "-f", "--max-time", "30", "-X", "PUT", "--data-binary", "@-", url],
        input=data.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stores(ceph: Any, s3client: Any, dav2: Any) -> dict[str, Any]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="full/existing.bin", Body=b"f" * 5000)
    return {"ceph": ceph, "dav": dav2, "s3": s3client}


def config(stores: dict[str, Any], port: int, workdir: Path, extra: str = "", write: str = "") -> str:
    ceph, dav = stores["ceph"], stores["dav"]
    endpoints = (
        ceph_endpoint(ceph, BUCKET, map=("/atlas /atlas", "/s3only /s3only"), write=True, vo="atlas")
        + dav_endpoint(dav, map=("/atlas /w/atlas", "/davonly /w/davonly"), write=True, vo="atlas")
        + ceph_endpoint(ceph, BUCKET, id="cephfull", map="/full /full", write=True, quota=1000, share="tiny")
    )
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
[health]
{RELAXED}
downtime_file = {workdir / "downtimes.json"}
[space]
interval = 1
[write]
{write}
{endpoints}{extra}
"""


@pytest.fixture(scope="module")
def fed(stores: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("writes")
    f = start_fedd(workdir, config(stores, port, workdir), port)
    try:
        # the quota reporter's first round: every endpoint measured once
        wait_for(
            lambda: (lambda sp: sp["ceph"]["measured"] and sp["cephfull"]["measured"] and sp["dav"]["error"])(
                f.status()["space"]
            ),
            what="space measured",
        )
    except BaseException:
        f.stop()
        raise
    yield f
    f.stop()


def where(stores: dict[str, Any], fed_path: str) -> list[str]:
    """Which endpoints hold a federation path under /atlas, asked directly."""
    out = []
    try:
        stores["s3"].head_object(Bucket=BUCKET, Key=fed_path.lstrip("/"))
        out.append("ceph")
    except ClientError as exc:  # only Ceph's 404 means "not there"; Ceph down fails the test
        if not is_not_found(exc):
            raise
    if (Path(stores["dav"].docroot) / "w" / fed_path.lstrip("/")).is_file():
        out.append("dav")
    return out


def is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in ("404", "NoSuchKey", "NotFound") or status == 404


def test_curl_upload_small_is_visible_at_once(fed: Fedd, stores: dict[str, Any], tmp_path: Path) -> None:
    path = "/atlas/up/small.txt"
    assert request(fed, "GET", path)[0] == 404  # now cached as missing
    src = tmp_path / "small.txt"
    src.write_bytes(b"small upload\n")
    out = curl("-L", "-T", str(src), "-w", "%{http_code} %{num_redirects}", fed.url + path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
    assert where(stores, path)
    status = request(fed, "GET", path)[0]
    assert status == 302, "the new file must be visible at once, not after the negative TTL"
    got = curl("-L", fed.url + path)
    assert got.stdout == "small upload\n"


def test_put_answers_307_with_presigned_or_endpoint_url(fed: Fedd) -> None:
    status, headers, body = request(fed, "PUT", "/s3only/direct.bin", b"x" * 10)
    assert status == 307, body
    assert "X-Amz-Signature=" in headers["location"] and "/s3only/direct.bin" in headers["location"]
    status, headers, body = request(fed, "PUT", "/davonly/direct.bin", b"x" * 10)
    assert status == 307, body
    assert headers["location"].endswith("/w/davonly/direct.bin") and "X-Amz-" not in headers["location"]


def test_large_upload_with_and_without_expect(fed: Fedd, stores: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))  # over max_body_bytes: answered before the body
    for name, extra in (("expect.bin", []), ("noexpect.bin", ["-H", "Expect:"])):
        path = f"/atlas/big/{name}"
        out = curl("-L", "-T", str(src), *extra, "-w", "%{http_code}", fed.url + path)
        assert out.returncode == 0, (name, out.stderr)
        assert out.stdout.strip().endswith(("200", "201")), (name, out.stdout)
        got = subprocess.run(["curl", "-sS", "-L", fed.url + path], capture_output=True, timeout=60)
        assert got.stdout == src.read_bytes(), name


def test_davix_put_and_gfal_copy(fed: Fedd, tmp_path: Path) -> None:
    src = tmp_path / "grid.bin"
    src.write_bytes(os.urandom(200_000))
    out = subprocess.run(
        ["davix-put", "--timeout", "30", str(src), fed.url + "/atlas/clients/davix.bin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    out = subprocess.run(
        ["gfal-copy", "-t", "60", f"file://{src}", fed.url + "/atlas/clients/gfal.bin"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    for name in ("davix.bin", "gfal.bin"):
        got = subprocess.run(["curl", "-sS", "-L", f"{fed.url}/atlas/clients/{name}"], capture_output=True, timeout=60)
        assert got.stdout == src.read_bytes(), name


def test_rclone_uploads_carried_by_fedd(fed: Fedd, stores: dict[str, Any], tmp_path: Path) -> None:
    """rclone (Go) cannot follow a 307 with its body: fedd carries its uploads to the chosen endpoint."""
    env = dict(os.environ, RCLONE_CONFIG=str(tmp_path / "rclone.conf"))
    base = ["rclone", "--webdav-url", fed.url, "--contimeout", "10s", "--timeout", "30s", "--retries", "1"]
    for name, data in (("small.txt", b"uploaded by rclone\n"), ("big.bin", os.urandom(3 << 20))):
        src = tmp_path / name
        src.write_bytes(data)
        out = subprocess.run(
            [*base, "copyto", str(src), f":webdav:/atlas/rclone/{name}"],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        got = subprocess.run(["curl", "-sS", "-L", f"{fed.url}/atlas/rclone/{name}"], capture_output=True, timeout=60)
        assert got.stdout == data, name
        assert where(stores, f"/atlas/rclone/{name}"), name
    listing = subprocess.run(
        [*base, "lsf", ":webdav:/atlas/rclone"], capture_output=True, text=True, timeout=60, env=env
    )
    assert sorted(listing.stdout.split()) == ["big.bin", "small.txt"], listing.stderr


def test_rclone_reads_through_fedd(fed: Fedd, stores: dict[str, Any], tmp_path: Path) -> None:
    stores["s3"].put_object(Bucket=BUCKET, Key="s3only/rclone/read.txt", Body=b"read by rclone\n")
    env = dict(os.environ, RCLONE_CONFIG=str(tmp_path / "rclone.conf"))
    base = ["rclone", "--webdav-url", fed.url, "--contimeout", "10s", "--timeout", "30s"]
    listing = subprocess.run(
        [*base, "lsf", ":webdav:/s3only/rclone"], capture_output=True, text=True, timeout=60, env=env
    )
    assert listing.stdout.split() == ["read.txt"], listing.stderr
    cat = subprocess.run(
        [*base, "cat", ":webdav:/s3only/rclone/read.txt"], capture_output=True, text=True, timeout=60, env=env
    )
    assert cat.stdout == "read by rclone\n", cat.stderr


def test_existing_file_is_not_overwritten(fed: Fedd) -> None:
    path = "/s3only/once.txt"
    status, headers, _ = request(fed, "PUT", path, b"first")
    assert upload(headers["location"], b"first").returncode == 0
    status, _, body = request(fed, "PUT", path, b"second")
    assert status == 409 and b"overwriting is not allowed" in body


def test_delete_every_replica(fed: Fedd, stores: dict[str, Any]) -> None:
    path = "atlas/del/both.txt"
    stores["s3"].put_object(Bucket=BUCKET, Key=path, Body=b"on ceph")
    target = Path(stores["dav"].docroot) / "w" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("on dav")
    shutil.chown(target.parent, "www-data")
    shutil.chown(target, "www-data")
    assert request(fed, "GET", "/" + path)[0] == 302
    status, _, body = request(fed, "DELETE", "/" + path)
    assert status == 204, body
    assert where(stores, "/" + path) == []
    assert request(fed, "GET", "/" + path)[0] == 404  # not a stale redirect
    assert request(fed, "DELETE", "/" + path)[0] == 404


def test_mkcol_on_object_store(fed: Fedd, stores: dict[str, Any]) -> None:
    status, _, body = request(fed, "MKCOL", "/s3only/newdir")
    assert status == 201, body
    status, _, body = request(fed, "PROPFIND", "/s3only/", headers={"Depth": "1"})
    assert status == 207 and b"/s3only/newdir/" in body
    assert request(fed, "MKCOL", "/s3only/newdir")[0] == 405
    # an empty collection can be deleted; a full one cannot
    assert request(fed, "DELETE", "/s3only/newdir")[0] == 204
    request(fed, "MKCOL", "/s3only/fulldir")
    stores["s3"].put_object(Bucket=BUCKET, Key="s3only/fulldir/child", Body=b"c")
    status, _, body = request(fed, "DELETE", "/s3only/fulldir")
    assert status == 409 and b"not empty" in body


def test_move_within_an_endpoint(fed: Fedd, stores: dict[str, Any]) -> None:
    stores["s3"].put_object(Bucket=BUCKET, Key="s3only/mv/a.txt", Body=b"moving")
    stores["s3"].put_object(Bucket=BUCKET, Key="s3only/mv/taken.txt", Body=b"taken")
    dest = {"Destination": f"{fed.url}/s3only/mv/b.txt"}
    status, _, body = request(fed, "MOVE", "/s3only/mv/a.txt", headers=dest)
    assert status == 201, body
    assert request(fed, "GET", "/s3only/mv/a.txt")[0] == 404
    assert curl("-L", fed.url + "/s3only/mv/b.txt").stdout == "moving"
    # Overwrite: F onto an existing name
    status, _, body = request(
        fed, "MOVE", "/s3only/mv/b.txt", headers={"Destination": "/s3only/mv/taken.txt", "Overwrite": "F"}
    )
    assert status == 412, body
    # onto itself
    assert request(fed, "MOVE", "/s3only/mv/b.txt", headers={"Destination": "/s3only/mv/b.txt"})[0] == 403
    # outside the federation
    status, _, body = request(
        fed, "MOVE", "/s3only/mv/b.txt", headers={"Destination": "http://elsewhere.example/s3only/x"}
    )
    assert status == 502 and b"outside this federation" in body
    # across endpoints: the S3 file cannot be renamed onto the DAV-only namespace
    status, _, body = request(fed, "MOVE", "/s3only/mv/b.txt", headers={"Destination": "/davonly/b.txt"})
    assert status == 502 and b"cannot move across endpoints" in body
    assert request(fed, "MOVE", "/s3only/mv/b.txt", headers={})[0] == 400


def test_dav_move_is_forwarded(fed: Fedd, stores: dict[str, Any]) -> None:
    status, headers, _ = request(fed, "PUT", "/davonly/m/src.txt", b"")
    assert upload(headers["location"], b"dav move").returncode == 0
    status, _, body = request(fed, "MOVE", "/davonly/m/src.txt", headers={"Destination": "/davonly/m2/dst.txt"})
    assert status == 201, body
    assert (Path(stores["dav"].docroot) / "w/davonly/m2/dst.txt").is_file()
    assert not (Path(stores["dav"].docroot) / "w/davonly/m/src.txt").exists()


def test_bad_writes(fed: Fedd) -> None:
    status, _, body = request(fed, "PUT", "/full/new.bin", b"x" * 10)
    assert status == 507 and b"over quota" in body, body
    status, _, body = request(fed, "PUT", "/nowhere/x.bin", b"x")
    assert status == 403 and b"no writable endpoint" in body
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.putrequest("PUT", "/atlas/absurd.bin")
    conn.putheader("Content-Length", "99999999999999999999999")
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 400 and b"Content-Length" in r.read()
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.putrequest("PUT", "/atlas/negative.bin")
    conn.putheader("Content-Length", "-5")
    conn.endheaders()
    assert conn.getresponse().status == 400
    conn.close()
    assert request(fed, "PUT", "/atlas/dir/", b"x")[0] == 409
    assert request(fed, "PUT", "/atlas/../etc/passwd", b"x")[0] in (400, 403, 404)
    assert request(fed, "DELETE", "/")[0] == 403


def test_srr_and_quota(fed: Fedd, stores: dict[str, Any]) -> None:
    status, headers, body = request(fed, "GET", "/.well-known/fedd/srr.json")
    assert status == 200 and headers["content-type"] == "application/json"
    srr = json.loads(body)["storageservice"]
    assert srr["implementation"] == "fedd" and srr["latestupdate"] > 0
    shares = {s["name"]: s for s in srr["storageshares"]}
    assert set(shares) == {"ceph", "dav", "tiny"}
    assert shares["tiny"]["totalsize"] == 1000
    assert shares["tiny"]["usedsize"] >= 5000  # the whole bucket is listed
    assert shares["ceph"]["vos"] == ["atlas"] and "/atlas" in shares["ceph"]["path"]
    assert not shares["ceph"]["stale"]
    assert {e["name"] for e in srr["storageendpoints"]} == {"ceph", "dav", "cephfull"}
    # Apache mod_dav reports no RFC 4331 quota: known as unknown, with the reason, and stale
    dav = fed.status()["space"]["dav"]
    assert dav["stale"] and "RFC 4331" in (dav["error"] or "")
    # RFC 4331 on collections only
    props = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:quota-available-bytes/>'
        b"<D:quota-used-bytes/><D:getcontentlength/></D:prop></D:propfind>"
    )
    status, _, body = request(fed, "PROPFIND", "/full/", props, {"Depth": "1"})
    assert status == 207
    text = body.decode()
    top, _, rest = text.partition("existing.bin")
    assert "<D:quota-used-bytes>" in top and "<D:quota-available-bytes>0<" in top
    assert "quota-used-bytes>" not in rest.split("</D:response>")[0] or "404" in rest


def test_runtime_downtime_moves_writes(fed: Fedd) -> None:
    def placed(n: int) -> set[str]:
        out = set()
        for i in range(n):
            status, headers, body = request(fed, "PUT", f"/atlas/dt/{time.monotonic_ns()}-{i}.bin", b"x")
            assert status == 307, body
            out.add("dav" if "X-Amz-" not in headers["location"] else "ceph")
        return out

    assert placed(30) == {"ceph", "dav"}
    body = json.dumps({"endpoint": "dav", "scope": "write", "duration": 600, "reason": "disk swap"}).encode()
    status, _, answer = request(fed, "POST", "/.well-known/fedd/downtimes", body, JSON)
    assert status == 201, answer
    downtime = json.loads(answer)
    assert downtime["active"] and downtime["scope"] == "write"
    assert placed(20) == {"ceph"}
    assert any(d["id"] == downtime["id"] for d in fed.status()["downtimes"])
    for bad in (b"{", b'{"endpoint": "nope", "duration": 5}', b'{"endpoint": "dav", "duration": -5}'):
        assert request(fed, "POST", "/.well-known/fedd/downtimes", bad, JSON)[0] == 400
    assert request(fed, "DELETE", f"/.well-known/fedd/downtimes/{downtime['id']}")[0] == 204
    assert placed(30) == {"ceph", "dav"}, json.dumps(fed.status()["endpoints"]["dav"]["health"])


@pytest.fixture()
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheDav]:
    root = tmp_path_factory.mktemp("doomed")
    (root / "www").mkdir()
    dav = start_apache_dav(root, root / "www")
    yield dav
    dav.stop()


def test_endpoint_dies_after_placement_retry_goes_elsewhere(
    stores: dict[str, Any], doomed: ApacheDav, tmp_path: Path
) -> None:
    port = free_port()
    extra = dav_endpoint(doomed, id="doomed", map="/retry /retry", write=True, weight=1000000) + ceph_endpoint(
        stores["ceph"], BUCKET, id="cephretry", map="/retry /retry", write=True
    )
    f = start_fedd(tmp_path / "fed", config(stores, port, tmp_path, extra), port)
    try:
        status, headers, _ = request(f, "PUT", "/retry/job.bin", b"payload")
        assert status == 307 and headers["location"].startswith(doomed.url)
        doomed.stop()
        assert upload(headers["location"], b"payload").returncode != 0
        # the job retries through fedd: fedd finds the endpoint dead and places the upload elsewhere
        status, headers, body = request(f, "PUT", "/retry/job.bin", b"payload")
        assert status == 307, body
        assert "X-Amz-Signature" in headers["location"]
        # DELETE with one endpoint down: reported, not hidden
        assert upload(headers["location"], b"payload").returncode == 0
        status, _, body = request(f, "DELETE", "/retry/job.bin")
        assert status == 502 and b"done on cephretry" in body and b"doomed" in body, body
    finally:
        f.stop()


def test_two_processes_share_writes_and_space_through_memcached(
    stores: dict[str, Any], memcached: Any, tmp_path: Path
) -> None:
    """A file written through one process is seen by the other at once (its cached 'not found' is
    invalidated through memcached), a delete too; space measurements are shared, not repeated."""
    mc = f"[locate]\nmemcached = 127.0.0.1:{memcached.port}\n"
    procs: list[Fedd] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            text = config(stores, port, tmp_path / name).replace("[locate]\n", mc, 1)
            procs.append(start_fedd(tmp_path / name, text, port))
        a, b = procs
        for f in procs:

            def memcached_up(f: Fedd = f) -> bool:
                return "down" not in f.status()["locate"]["memcached"]["servers"].values()

            wait_for(memcached_up, what="memcached")
        path = "/s3only/shared/new.txt"
        assert request(b, "GET", path)[0] == 404  # b caches 'not found'
        status, headers, _ = request(a, "PUT", path, b"shared")
        assert status == 307 and upload(headers["location"], b"shared").returncode == 0
        wait_for(lambda: request(b, "GET", path)[0] == 302, timeout=5, what="b sees the new file")
        assert request(a, "DELETE", path)[0] == 204
        wait_for(lambda: request(b, "GET", path)[0] == 404, timeout=5, what="b sees the delete")
        # through the change log: an entry followed, or (when b first reads the log after both changes,
        # now that its 'not found' is not kept in its own LRU and the 302 comes at once) its cache emptied
        # (with workers, the one answering adds the others' counts within a second)
        wait_for(
            lambda: b.status()["locate"]["invalidations"],
            5,
            "b to have followed the change log",
            until=lambda followed: (followed["applied"] or 0) + (followed["flushes"] or 0) >= 1,
        )
        # one measurement of each endpoint serves both processes
        wait_for(
            lambda: (
                a.status()["space"]["ceph"]["measured"]
                and a.status()["space"]["ceph"]["measured"] == b.status()["space"]["ceph"]["measured"]
            ),
            what="a shared space measurement",
        )
    finally:
        for f in procs:
            f.stop()


def test_srr_file_and_read_downtime(stores: dict[str, Any], tmp_path: Path) -> None:
    stores["s3"].put_object(Bucket=BUCKET, Key="atlas/dtr/both.txt", Body=b"ceph copy")
    target = Path(stores["dav"].docroot) / "w/atlas/dtr/both.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("dav copy")
    port = free_port()
    srr = tmp_path / "srr.json"
    text = config(stores, port, tmp_path).replace("[space]\n", f"[space]\nsrr_file = {srr}\nname = test-site\n", 1)
    f = start_fedd(tmp_path / "fed", text, port)
    try:
        data = wait_for(lambda: srr.exists() and json.loads(srr.read_text()), what="srr file")
        assert data["storageservice"]["name"] == "test-site"
        assert request(f, "GET", "/atlas/dtr/both.txt")[0] == 302
        body = json.dumps({"endpoint": "ceph", "scope": "read", "duration": 300}).encode()
        assert request(f, "POST", "/.well-known/fedd/downtimes", body, JSON)[0] == 201
        for _ in range(5):
            status, headers, _ = request(f, "GET", "/atlas/dtr/both.txt")
            assert status == 302 and "X-Amz-" not in headers["location"], headers
        # a read downtime does not stop writes
        status, headers, _ = request(f, "PUT", "/s3only/dtr/w.txt", b"x")
        assert status == 307 and "X-Amz-" in headers["location"]
    finally:
        f.stop()

"""Nothing a client sends changes an endpoint's health, and 404 means every endpoint said no.

A federation of Ceph RGW + Apache mod_dav + a local directory, through `twistd fedd`:
- a thousand requests for paths the storage refuses (below a file: ENOTDIR; names too long for a
  file system or an object store; control bytes; keys RGW answers 400 to; request lines Apache
  answers 414 to) leave every endpoint online with no fault counted, and real files still 302;
- while an endpoint is out (read downtime), a file only it holds is 503 + Retry-After for GET,
  HEAD, metalink and Want-Digest, PROPFIND too, and listings name the missing endpoint; a file on
  no endpoint is still a 404.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import ceph_endpoint, dav_endpoint, free_port, local_endpoint

BUCKET = "fedd-clienthealth"


@pytest.fixture(scope="module")
def fed(ceph: Any, s3client: Any, dav1: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="atlas/ch/both.txt", Body=b"both\n")
    s3client.put_object(Bucket=BUCKET, Key="atlas/ch/s3only.txt", Body=b"ceph only\n")
    s3client.put_object(Bucket=BUCKET, Key="atlas/ch/dir/in-ceph.txt", Body=b"in a ceph directory\n")
    dav_dir = Path(dav1.docroot) / "atlas" / "ch"
    (dav_dir / "dir").mkdir(parents=True, exist_ok=True)
    (dav_dir / "both.txt").write_text("both\n")
    (dav_dir / "dir" / "in-dav.txt").write_text("in a dav directory\n")
    local = tmp_path_factory.mktemp("ch-local")
    (local / "ch").mkdir()
    (local / "ch" / "f1.txt").write_text("local\n")
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
negative_ttl = 0
positive_ttl = 0
[health]
interval = 1
timeout = 5
failures_to_offline = 1
successes_to_online = 1
[checksums]
workers = 0
database = {local / "sums.sqlite"}
{ceph_endpoint(ceph, BUCKET)}{dav_endpoint(dav1)}{local_endpoint(local)}"""
    # failures_to_offline = 1 and no caches: the most sensitive setting, one counted fault would show
    f = start_fedd(tmp_path_factory.mktemp("clienthealth"), conf, port)
    wait_for(lambda: all(e["health"]["state"] == "online" for e in f.status()["endpoints"].values()), 30, "online")
    try:
        yield f
    finally:
        f.stop()
        assert "Traceback" not in f.log_text()


def request(
    fed: Fedd, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def health(fed: Fedd) -> dict[str, dict[str, Any]]:
    return {eid: e["health"] for eid, e in fed.status()["endpoints"].items()}


def bad_paths() -> list[str]:
    """Paths each endpoint kind refuses for the name itself, never for being broken."""
    e_acute = urllib.parse.quote("\u00e9")
    long_key = "/".join(["x" * 250] * 5)  # a 1254-byte key: over S3's 1024-byte key limit
    huge_line = "/".join([e_acute * 120] * 16)  # 3840 bytes, 11,520 once encoded: Apache answers 414
    return [
        "/atlas/ch/f1.txt/x",  # below a file: ENOTDIR on the local endpoint
        "/atlas/ch/f1.txt/x/y/z",
        "/atlas/ch/" + "n" * 300,  # over NAME_MAX: refused by fedd itself (400)
        "/atlas/ch/" + "d/" * 2100 + "f",  # over PATH_MAX (400)
        "/atlas/ch/a%00b",  # NUL (400)
        "/atlas/ch/a%01b",  # control byte (400)
        "/atlas/ch/a%7Fb",
        "/atlas/ch/" + long_key,  # RGW: 400 KeyTooLongError; the local endpoint: ENAMETOOLONG path
        "/atlas/ch/" + huge_line,
        "/atlas/ch/%25%25%25",
        "/atlas/ch/.htaccess",
        "/atlas/ch/%3F%23%5B%5D",
    ]


def test_a_thousand_refused_paths_leave_every_endpoint_online(fed: Fedd) -> None:
    before = health(fed)
    statuses: Counter[int] = Counter()
    paths = bad_paths()
    for i in range(1000):
        path = paths[i % len(paths)]
        method = ("GET", "HEAD", "PROPFIND")[i % 3]
        headers = {"Depth": "1"} if method == "PROPFIND" else {}
        status, _, _ = request(fed, method, path, headers)
        statuses[status] += 1
    assert set(statuses) <= {400, 404}, statuses  # the client's answer, never 5xx
    assert statuses[400] > 0 and statuses[404] > 0, statuses
    after = health(fed)
    for eid, state in after.items():
        assert state["state"] == "online", (eid, state)
        assert state["passive_failures"] == before[eid]["passive_failures"], (eid, state)
        assert state["failures"] == before[eid]["failures"], (eid, state)
    # the refusals reached every endpoint kind and were counted as the path's, not as faults
    assert after["local"]["refusals"] > before["local"]["refusals"], after["local"]
    assert after["ceph"]["refusals"] > before["ceph"]["refusals"], after["ceph"]
    assert after["dav"]["refusals"] > before["dav"]["refusals"], after["dav"]
    for path in ("/atlas/ch/both.txt", "/atlas/ch/s3only.txt", "/atlas/ch/f1.txt"):
        assert request(fed, "GET", path)[0] == 302, path


def downtime(fed: Fedd, endpoint: str) -> str:
    body = json.dumps({"endpoint": endpoint, "duration": 600, "scope": "read", "reason": "test"}).encode()
    status, _, data = request(fed, "POST", "/.well-known/fedd/downtimes", {"Content-Type": "application/json"}, body)
    assert status == 201, data
    return str(json.loads(data)["id"])


def end_downtime(fed: Fedd, downtime_id: str) -> None:
    status, _, data = request(fed, "DELETE", f"/.well-known/fedd/downtimes/{downtime_id}")
    assert status in (200, 204), data


def test_an_unreachable_replica_is_503_with_retry_after_for_every_kind_of_read(fed: Fedd) -> None:
    assert request(fed, "GET", "/atlas/ch/s3only.txt")[0] == 302
    dt = downtime(fed, "ceph")
    try:
        for method, target, headers in [
            ("GET", "/atlas/ch/s3only.txt", {}),
            ("HEAD", "/atlas/ch/s3only.txt", {}),
            ("GET", "/atlas/ch/s3only.txt?metalink", {}),
            ("GET", "/atlas/ch/s3only.txt", {"Accept": "application/metalink4+xml"}),
            ("HEAD", "/atlas/ch/s3only.txt", {"Want-Digest": "adler32"}),
            ("GET", "/atlas/ch/s3only.txt", {"Want-Digest": "md5"}),
            ("PROPFIND", "/atlas/ch/s3only.txt", {"Depth": "0"}),
            ("GET", "/atlas/ch/never-existed.txt", {}),  # ceph might hold it: not a 404 either
        ]:
            status, hdrs, body = request(fed, method, target, headers)
            assert status == 503, (method, target, headers, status, body)
            assert int(hdrs["retry-after"]) >= 1, hdrs
            assert "ceph" in hdrs["fedd-missing-endpoints"], hdrs
        # the replicated file goes to the endpoints still there
        status, hdrs, _ = request(fed, "GET", "/atlas/ch/both.txt")
        assert status == 302 and "fedd-clienthealth" not in hdrs["location"], hdrs
        # a listing without ceph says so, and still lists what the others hold
        status, hdrs, body = request(fed, "PROPFIND", "/atlas/ch/dir", {"Depth": "1"})
        assert status == 207 and b"in-dav.txt" in body and b"in-ceph.txt" not in body
        assert hdrs["fedd-missing-endpoints"].startswith("ceph;"), hdrs
        status, hdrs, body = request(fed, "GET", "/atlas/ch/dir")
        assert status == 200 and b"in-dav.txt" in body and "ceph" in hdrs["fedd-missing-endpoints"]
    finally:
        end_downtime(fed, dt)
    assert request(fed, "GET", "/atlas/ch/s3only.txt")[0] == 302
    status, hdrs, body = request(fed, "PROPFIND", "/atlas/ch/dir", {"Depth": "1"})
    assert status == 207 and b"in-ceph.txt" in body and "fedd-missing-endpoints" not in hdrs
    # every endpoint answering "no": the one case that is a 404
    status, hdrs, _ = request(fed, "GET", "/atlas/ch/never-existed.txt")
    assert status == 404 and "retry-after" not in hdrs

"""Chaos: a federation of Ceph RGW + Apache mod_dav + a local directory under a bounded load of
concurrent readers, while the RGW is killed and brought back, put in a read downtime, or hangs.

The promise under test: a file with a replica on a reachable endpoint is always a 302 to a live
replica (once the poller has seen the fault), and a file whose only replica is unreachable is a
503 with Retry-After, never a 404 (to Rucio and FTS a 404 means "file lost"), and 302 again after.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.load import Answer, Load, summary
from tests.servers import ceph_endpoint, dav_endpoint, free_port, local_endpoint

BUCKET = "fedd-chaos"
BOTH = "/atlas/chaos/both.bin"
S3ONLY = "/atlas/chaos/s3only.bin"
CONNECTIONS = 200
PATHS = [BOTH, BOTH, BOTH, S3ONLY]  # 150 readers of the replicated file, 50 of the single replica
SLACK = 0.5  # seconds between fedd's state change and the test seeing it in the status


@pytest.fixture(scope="module")
def chaos(ceph: Any, s3client: Any, dav1: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="atlas/chaos/both.bin", Body=b"both\n" * 100)
    s3client.put_object(Bucket=BUCKET, Key="atlas/chaos/s3only.bin", Body=b"ceph only\n")
    dav_dir = Path(dav1.docroot) / "atlas" / "chaos"
    dav_dir.mkdir(parents=True, exist_ok=True)
    (dav_dir / "both.bin").write_bytes(b"both\n" * 100)
    local = tmp_path_factory.mktemp("chaos-local")
    (local / "chaos").mkdir()
    (local / "chaos" / "local.txt").write_text("local\n")
    port = free_port()
    # ceph is the nearest: it is the first choice until it fails
    endpoints = (
        ceph_endpoint(ceph, BUCKET, lat=46.2, lon=6.1, timeout=3)
        + dav_endpoint(dav1, lat=41.9, lon=-87.6, timeout=3)
        + local_endpoint(local)
    )
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 1.5
negative_ttl = 5
[geo]
site = 127.0.0.0/8 46.2 6.1
[health]
interval = 1
timeout = 3
failures_to_offline = 2
successes_to_online = 1
{endpoints}"""
    fedd = start_fedd(tmp_path_factory.mktemp("chaos"), conf, port)
    wait_for(lambda: all(e["health"]["state"] == "online" for e in fedd.status()["endpoints"].values()), 30, "online")
    try:
        yield fedd
    finally:
        fedd.stop()
        assert "Traceback" not in fedd.log_text()


def state(fedd: Fedd, eid: str) -> str:
    return str(fedd.status()["endpoints"][eid]["health"]["state"])


def ceph_url(ceph: Any, answer: Answer) -> bool:
    return answer.location.startswith(ceph.url)


def warm(fedd: Fedd) -> None:
    """Both files answered once, so the locate cache holds both replicas (the load starts warm)."""
    for path in (BOTH, S3ONLY):

        def redirected(p: str = path) -> bool:
            return _status(fedd, p) == 302

        wait_for(redirected, 10, f"{path} redirected")


def _status(fedd: Fedd, path: str) -> int:
    req = urllib.request.Request(fedd.url + path)  # a GET, not followed
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def check_common(answers: list[Answer]) -> None:
    """Whatever happened: fedd itself always answered, never 404, never a 5xx but 503."""
    counts = summary(answers)
    assert len(answers) > 1000, counts
    broken = [a for a in answers if a.status == 0]
    assert not broken, f"{len(broken)} requests got no answer from fedd, first: {broken[0].error}"
    assert not [a for a in answers if a.status == 404], f"a 404 for an existing file: {counts}"
    assert {a.status for a in answers if a.path == BOTH} == {302}, f"the replicated file failed: {counts}"
    assert {a.status for a in answers} <= {302, 503}, counts
    assert all(a.retry_after.isdigit() and int(a.retry_after) >= 1 for a in answers if a.status == 503)


def outage(
    fedd: Fedd, ceph: Any, start_fault: Any, end_fault: Any, what: str, seconds: float = 40
) -> tuple[list[Answer], float, float, float, float]:
    """Load, then the fault, until fedd sees ceph offline and answers 503 for a while; then the
    fault ends, until fedd sees ceph online and answers 302 again. Returns the answers and the
    moments the fault began, fedd was seen to know it, the fault ended, and fedd was seen to know."""
    warm(fedd)
    load = Load(fedd.port, PATHS, CONNECTIONS, seconds).start()
    try:
        wait_for(lambda: len(load.answers) > 500, 20, "the load running")
        began = time.monotonic()
        start_fault()
        wait_for(lambda: state(fedd, "ceph") == "offline", 20, f"ceph offline after {what}")
        seen = time.monotonic()
        wait_for(
            lambda: sum(1 for a in load.answers if a.path == S3ONLY and a.at > seen + SLACK) > 200,
            20,
            "answers while ceph is out",
        )
    finally:
        ended = time.monotonic()
        end_fault()
    wait_for(lambda: state(fedd, "ceph") == "online", 30, f"ceph online after {what}")
    back = time.monotonic()
    wait_for(
        lambda: sum(1 for a in load.answers if a.path == S3ONLY and a.at > back + SLACK) > 200,
        20,
        "answers after ceph came back",
    )
    load.stop()
    return load.join(), began, seen, ended, back


def check_outage(
    ceph: Any, answers: list[Answer], began: float, seen: float, ended: float, back: float
) -> dict[str, Any]:
    check_common(answers)
    out = [a for a in answers if seen + SLACK < a.at < ended]
    assert not [a for a in out if ceph_url(ceph, a)], "a redirect to the endpoint known to be out"
    assert {a.status for a in out if a.path == S3ONLY} == {503}
    after = [a for a in answers if a.at > back + SLACK]
    assert {a.status for a in after} == {302}, summary(after)
    assert any(ceph_url(ceph, a) for a in after if a.path == S3ONLY)
    window = [a for a in answers if began <= a.at <= seen + SLACK]
    figures = {
        "requests": len(answers),
        "statuses": {p: dict(c) for p, c in summary(answers).items()},
        "detect_seconds": round(seen - began, 2),
        "302_to_ceph_before_detection": {
            p: sum(1 for a in window if a.path == p and ceph_url(ceph, a)) for p in (BOTH, S3ONLY)
        },
    }
    print("CHAOS", json.dumps(figures))
    return figures


def test_rgw_killed_and_restarted_under_load(chaos: Fedd, ceph: Any) -> None:
    check_outage(ceph, *outage(chaos, ceph, ceph.kill_rgw, ceph.start_rgw, "SIGKILL"))


def test_read_downtime_under_load(chaos: Fedd, ceph: Any) -> None:
    declared: list[str] = []

    def declare() -> None:
        body = json.dumps({"endpoint": "ceph", "duration": 600, "scope": "read", "reason": "chaos"}).encode()
        req = urllib.request.Request(
            chaos.url + "/.well-known/fedd/downtimes",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            declared.append(json.loads(r.read())["id"])

    def end() -> None:
        req = urllib.request.Request(chaos.url + f"/.well-known/fedd/downtimes/{declared[0]}", method="DELETE")
        urllib.request.urlopen(req, timeout=10).close()

    warm(chaos)
    load = Load(chaos.port, PATHS, CONNECTIONS, 30).start()
    wait_for(lambda: len(load.answers) > 500, 20, "the load running")
    began = time.monotonic()
    declare()
    seen = time.monotonic()  # a downtime applies at once: no detection window
    try:
        wait_for(lambda: sum(1 for a in load.answers if a.path == S3ONLY and a.at > seen + SLACK) > 200, 20, "503s")
    finally:
        ended = time.monotonic()
        end()
    back = time.monotonic()
    wait_for(lambda: sum(1 for a in load.answers if a.path == S3ONLY and a.at > back + SLACK) > 200, 20, "302s")
    load.stop()
    answers = load.join()
    assert state(chaos, "ceph") == "online"  # a downtime is not a health state
    check_outage(ceph, answers, began, seen, ended, back)


def test_rgw_hanging_under_load(chaos: Fedd, ceph: Any) -> None:
    check_outage(ceph, *outage(chaos, ceph, ceph.pause_rgw, ceph.resume_rgw, "SIGSTOP"))

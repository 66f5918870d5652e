"""fedd as a daemon (twistd) on local-directory endpoints: the demo, the front's rules, bad input."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, env, start_fedd, twistd_command, wait_for
from tests.servers import free_port, wait_for_port


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    base = tmp_path_factory.mktemp("local-fed")
    for name in ("one", "two"):
        (base / name / "data").mkdir(parents=True)
    (base / "one" / "data" / "shared.txt").write_text("shared-one\n")
    (base / "two" / "data" / "shared.txt").write_text("shared-two\n")
    (base / "one" / "data" / "only-one.bin").write_bytes(bytes(range(256)) * 40)
    (base / "two" / "data" / "only-two.txt").write_text("two\n")
    (base / "secret.txt").write_text("do not serve\n")
    port = free_port()
    config = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
max_body_bytes = 4096
access_log_file = access.json
[endpoint one]
kind = local
path = {base / "one"}
map = /atlas /
[endpoint two]
kind = local
path = {base / "two"}
map = /atlas /
"""
    fedd = start_fedd(base / "run", config, port)
    yield fedd
    fedd.stop()


def request(
    fed: Fedd, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response


def both_replicas(fed: Fedd, method: str, path: str) -> http.client.HTTPResponse:
    """The answer once both endpoints answered: a cold answer comes as soon as the best-ranked one
    confirmed the file, and the slower one completes the cached answer a moment later (on a loaded
    machine, after the next request may already have been answered)."""

    def complete() -> http.client.HTTPResponse | None:
        r = request(fed, method, path)
        return r if "rel=duplicate; pri=2" in (r.getheader("Link") or "") else None

    return wait_for(complete, 10, f"{method} {path} naming both replicas")  # type: ignore[no-any-return]


def test_get_redirects_with_link_headers_and_curl_follows(fed: Fedd) -> None:
    assert request(fed, "GET", "/atlas/data/shared.txt").status == 302
    r = both_replicas(fed, "GET", "/atlas/data/shared.txt")
    assert r.status == 302
    assert r.getheader("Content-Length") == "0"
    location = r.getheader("Location")
    assert location is not None and location.startswith(f"http://127.0.0.1:{fed.port}/.well-known/fedd/local/")
    links = r.getheader("Link") or ""
    assert 'rel=describedby; type="application/metalink4+xml"' in links
    assert "rel=duplicate; pri=2" in links  # the other replica
    out = subprocess.run(["curl", "-sfL", fed.url + "/atlas/data/shared.txt"], capture_output=True, check=True)
    assert out.stdout in (b"shared-one\n", b"shared-two\n")


def test_head_is_answered_by_fedd_with_metadata_and_all_replicas(fed: Fedd) -> None:
    request(fed, "HEAD", "/atlas/data/shared.txt")  # a cold answer may precede the slower replica's
    r = both_replicas(fed, "HEAD", "/atlas/data/shared.txt")
    assert r.status == 200
    assert r.getheader("Content-Length") == "11"
    assert r.getheader("Last-Modified", "").endswith(" GMT") and r.getheader("ETag")
    links = r.getheader("Link") or ""
    assert "rel=duplicate; pri=1" in links and "rel=duplicate; pri=2" in links
    assert request(fed, "HEAD", "/atlas/data/missing").status == 404
    out = subprocess.run(["curl", "-sfI", fed.url + "/atlas/data/only-one.bin"], capture_output=True, text=True)
    assert "content-length: 10240" in out.stdout.lower()


def test_head_redirect_option(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    port = free_port()
    conf = (
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\nhead_redirect = yes\n"
        f"[endpoint l]\nkind = local\npath = {tmp_path / 'd'}\n"
    )
    f = start_fedd(tmp_path / "run", conf, port)
    try:
        r = request(f, "HEAD", "/f")
        assert r.status == 302 and r.getheader("Location", "").endswith("/.well-known/fedd/local/l/f")
    finally:
        f.stop()


def test_range_requests_on_local_data(fed: Fedd) -> None:
    out = subprocess.run(
        ["curl", "-sfL", "-r", "256-511", fed.url + "/atlas/data/only-one.bin"], capture_output=True, check=True
    )
    assert out.stdout == bytes(range(256))


def test_keep_alive_over_many_redirects(fed: Fedd) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    for _ in range(50):
        conn.request("GET", "/atlas/data/only-two.txt")
        r = conn.getresponse()
        r.read()
        assert r.status == 302 and r.getheader("Connection") != "close"
    conn.close()


def test_missing_file_is_404_quickly(fed: Fedd) -> None:
    start = time.monotonic()
    r = request(fed, "GET", "/atlas/data/no-such-file")
    assert r.status == 404
    assert time.monotonic() - start < 1.0


def test_metalink_by_query_and_accept(fed: Fedd) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("GET", "/atlas/data/shared.txt?metalink")
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 200 and r.getheader("Content-Type") == "application/metalink4+xml"
    assert body.count("<url ") == 2 and "<size>11</size>" in body
    conn.request("GET", "/atlas/data/only-two.txt", headers={"Accept": "application/metalink4+xml"})
    r = conn.getresponse()
    assert r.status == 200 and r.read().decode().count("<url ") == 1


def test_aria2c_downloads_via_metalink(fed: Fedd, tmp_path: Path) -> None:
    subprocess.run(
        ["aria2c", "-q", "--follow-metalink=mem", "-d", str(tmp_path), fed.url + "/atlas/data/only-one.bin?metalink"],
        check=True,
        timeout=60,
    )
    assert (tmp_path / "only-one.bin").read_bytes() == bytes(range(256)) * 40


def test_propfind_merges_listings(fed: Fedd) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("PROPFIND", "/atlas/data", headers={"Depth": "1"})
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 207
    assert body.count("<D:href>/atlas/data/shared.txt</D:href>") == 1
    assert "/atlas/data/only-one.bin" in body and "/atlas/data/only-two.txt" in body
    conn.request("PROPFIND", "/", headers={"Depth": "1"})
    r = conn.getresponse()
    assert r.status == 207 and "<D:href>/atlas/</D:href>" in r.read().decode()
    conn.request("PROPFIND", "/atlas/data/only-two.txt", headers={"Depth": "0"})
    r = conn.getresponse()
    assert r.status == 207 and "<D:getcontentlength>4</D:getcontentlength>" in r.read().decode()
    conn.request("PROPFIND", "/atlas/nothing-here", headers={"Depth": "0"})
    r = conn.getresponse()
    r.read()
    assert r.status == 404


@pytest.mark.parametrize("depth", [None, "infinity", "2"])
def test_propfind_infinite_depth_refused(fed: Fedd, depth: str | None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("PROPFIND", "/atlas", headers={"Depth": depth} if depth else {})
    r = conn.getresponse()
    assert r.status == 403 and b"propfind-finite-depth" in r.read()


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:x>&b;</D:x></D:prop></D:propfind>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:x>&e;</D:x></D:prop></D:propfind>',
        b"<D:propfind",
    ],
)
def test_hostile_propfind_xml_is_400(fed: Fedd, body: bytes) -> None:
    r = request(fed, "PROPFIND", "/atlas", {"Depth": "0", "Content-Type": "application/xml"}, body)
    assert r.status == 400


def test_oversized_body_is_413_before_reading(fed: Fedd) -> None:
    r = request(fed, "PROPFIND", "/atlas", {"Depth": "0"}, b"<" + b"x" * 10000)
    assert r.status == 413


@pytest.mark.parametrize(
    "path",
    [
        "/atlas/../secret.txt",
        "/atlas/%2e%2e/secret.txt",
        "/atlas/data/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/atlas/data/..%2fsecret.txt",
        "/.well-known/fedd/local/one/../secret.txt",
        "/.well-known/fedd/local/one/%2e%2e/secret.txt",
    ],
)
def test_path_traversal_never_escapes(fed: Fedd, path: str) -> None:
    out = subprocess.run(
        ["curl", "-s", "--path-as-is", "-L", "-o", "-", "-w", "%{http_code}", fed.url + path], capture_output=True
    )
    assert b"do not serve" not in out.stdout
    assert out.stdout[-3:] in (b"400", b"403", b"404")


def test_local_data_symlink_out_of_root_is_refused(fed: Fedd, tmp_path: Path) -> None:
    one = Path(fed.config.read_text().split("path = ", 1)[1].split("\n", 1)[0])
    link = one / "data" / "escape.txt"
    link.symlink_to(one.parent / "secret.txt")
    try:
        out = subprocess.run(["curl", "-s", "-L", fed.url + "/atlas/data/escape.txt"], capture_output=True)
        assert b"do not serve" not in out.stdout
    finally:
        link.unlink()


def test_oversized_headers_are_refused_and_daemon_survives(fed: Fedd) -> None:
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as s:
        s.sendall(b"GET /atlas/data/shared.txt HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
        answer = s.recv(200)
    assert answer.startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as s:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 400")
    assert request(fed, "GET", "/atlas/data/shared.txt").status == 302


def test_bad_host_header_does_not_leak_into_location(fed: Fedd) -> None:
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as s:
        s.sendall(b"GET /atlas/data/only-two.txt HTTP/1.1\r\nHost: evil.example/<script>\r\n\r\n")
        answer = s.recv(4000)
    assert b"evil" not in answer and (answer.startswith(b"HTTP/1.1 302") or answer.startswith(b"HTTP/1.1 400"))
    r = request(fed, "GET", "/atlas/data/only-two.txt", {"Host": "bad host/with?junk"})
    assert r.status == 302 and (r.getheader("Location") or "").startswith("http://127.0.0.1:")


def test_options_and_unsupported_methods(fed: Fedd) -> None:
    r = request(fed, "OPTIONS", "/atlas")
    assert r.status == 200 and r.getheader("DAV") == "1" and "PROPFIND" in (r.getheader("Allow") or "")
    r = request(fed, "PATCH", "/atlas/x")
    assert r.status == 405 and "GET" in (r.getheader("Allow") or "")


def test_status_json(fed: Fedd) -> None:
    status = fed.status()
    assert set(status["endpoints"]) == {"one", "two"}
    assert status["endpoints"]["one"]["health"]["state"] == "online"
    assert status["locate"]["fanouts"] >= 1


def test_directory_get_gives_an_index(fed: Fedd) -> None:
    out = subprocess.run(["curl", "-sf", fed.url + "/atlas/data"], capture_output=True, check=True)
    assert b"only-one.bin" in out.stdout and b"only-two.txt" in out.stdout


def test_malformed_config_lists_every_error_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nlisten = nope\n[endpoint x]\nkind = gopher\n[endpoint y]\nkind = s3\n")
    out = subprocess.run(twistd_command("--config", str(bad)), capture_output=True, env=env(), timeout=60)
    text = out.stdout.decode() + out.stderr.decode()
    assert out.returncode != 0
    assert f"{bad}:2: listen" in text
    assert f"{bad}:4: kind: unknown endpoint kind 'gopher'" in text
    assert "needs 'url'" in text and "Traceback" not in text


def test_demo_runs_without_config(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        twistd_command("--listen", f"tcp:{port}:interface=127.0.0.1"),
        cwd=tmp_path,
        env=env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 20)
        out = subprocess.run(
            ["curl", "-sfL", f"http://127.0.0.1:{port}/demo/hello.txt"], capture_output=True, check=True, timeout=30
        )
        assert out.stdout == b"Hello from the fedd demo federation.\n"
        assert "try: curl -L http://127.0.0.1:" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_shipped_example_config_runs(tmp_path: Path) -> None:
    port = free_port()
    conf = Path(__file__).resolve().parent.parent / "conf" / "fedd.conf"
    proc = subprocess.Popen(
        twistd_command("--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"),
        cwd=tmp_path,
        env=env(),
        stdout=(tmp_path / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 20)
        out = subprocess.run(
            ["curl", "-sfL", f"http://127.0.0.1:{port}/local/hello.txt"], capture_output=True, check=True, timeout=30
        )
        assert out.stdout == b"Hello from the fedd example configuration.\n"
    finally:
        proc.terminate()
        proc.wait(10)


def test_endpoint_host_names_are_resolved_for_their_location(tmp_path: Path) -> None:
    port = free_port()
    conf = (
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n[geo]\nsite = 127.0.0.0/8 46.2 6.1\n"
        f"[endpoint named]\nkind = dav\nurl = http://localhost:{free_port()}/x\n"
    )
    f = start_fedd(tmp_path, conf, port)
    try:
        wait_for(
            lambda: f.status()["endpoints"]["named"]["location"] == [46.2, 6.1],
            10,
            "the endpoint's host name placed at its site",
        )
    finally:
        f.stop()


def test_prometheus_metrics(fed: Fedd) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert request(fed, "GET", "/atlas/data/only-two.txt").status == 302
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    text = r.read().decode()
    assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("fedd_requests_total", (("method", "GET"), ("status", "302")))] >= 1
    assert samples[("fedd_endpoint_up", (("endpoint", "one"),))] == 1.0
    assert samples[("fedd_redirect_seconds_count", ())] >= 1
    assert ("fedd_locate_cache_lookups_total", (("result", "hit"),)) in samples
    assert samples[("fedd_open_connections", ())] >= 1  # this scrape's own connection
    assert ("fedd_events_outbox_depth", ()) in samples


def test_json_access_log(fed: Fedd) -> None:
    import json

    assert request(fed, "GET", "/atlas/data/only-one.bin", {"User-Agent": "gfal2-test"}).status == 302
    path = fed.config.parent / "access.json"

    def hits() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return [x for x in lines if x["path"] == "/atlas/data/only-one.bin" and x["user_agent"] == "gfal2-test"]

    line = wait_for(hits, 10, "the request's access log line")[-1]
    assert line["method"] == "GET" and line["status"] == 302 and line["client"] == "127.0.0.1"
    assert line["endpoint"] in ("one", "two") and line["locate_ms"] is not None and line["dn"] is None
    assert line["time"].endswith("+00:00") and line["duration_ms"] >= 0

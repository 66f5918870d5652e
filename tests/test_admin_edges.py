"""Admin and access edges (issue 13, item 7) with the real daemon: who may change downtimes without
`[auth]` (loopback decided on the parsed address, JSON only, never through a proxy or under a foreign
Host name), and symlinks in a local endpoint that must not lead past the access rules."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from fedd.config import parse_config
from fedd.endpoints.local import LocalEndpoint
from fedd.web.admin import is_json, is_loopback, local_admin_refusal
from tests.daemon import Fedd, start_fedd
from tests.servers import free_port

DOWNTIMES = "/.well-known/fedd/downtimes"


# --- the pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.200.3.4", True),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("::ffff:127.0.0.1", True),  # a dual-stack socket's view of an IPv4 loopback client
        ("::ffff:10.1.2.3", False),
        ("10.1.2.3", False),
        ("192.168.1.127", False),
        ("127.evil.example", False),  # a string test said yes
        ("127.", False),
        ("fe80::1%lo", False),
        ("", False),
        ("localhost", False),  # a name is not an address: only a Host header may say it
    ],
)
def test_loopback_is_decided_on_the_parsed_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def headers(**values: str) -> Headers:
    h = Headers()
    for name, value in values.items():
        h.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
    return h


@pytest.mark.parametrize(
    ("client", "given", "refused"),
    [
        ("127.0.0.1", {"host": "127.0.0.1:8080"}, None),
        ("127.0.0.1", {"host": "localhost:8080"}, None),
        ("::1", {"host": "[::1]:8080"}, None),
        ("::ffff:127.0.0.1", {"host": "127.0.0.1"}, None),
        ("10.0.0.7", {"host": "127.0.0.1:8080"}, "from this host only"),
        ("127.0.0.1", {"host": "127.0.0.1", "x_forwarded_for": "203.0.113.9"}, "through a proxy"),
        ("127.0.0.1", {"host": "127.0.0.1", "forwarded": "for=203.0.113.9"}, "through a proxy"),
        ("127.0.0.1", {"host": "127.0.0.1", "x_real_ip": "203.0.113.9"}, "through a proxy"),
        ("127.0.0.1", {"host": "127.0.0.1", "via": "1.1 proxy"}, "through a proxy"),
        ("127.0.0.1", {"host": "evil.example:8080"}, "at a loopback address"),  # DNS rebinding
        ("127.0.0.1", {}, "at a loopback address"),
    ],
)
def test_local_admin_refusal(client: str, given: dict[str, str], refused: str | None) -> None:
    reason = local_admin_refusal(client, headers(**given))
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"application/json", True),
        (b"Application/JSON; charset=utf-8", True),
        (b"text/plain", False),
        (b"application/x-www-form-urlencoded", False),
        (b"multipart/form-data; boundary=x", False),
        (b"application/jsonp", False),
        (None, False),
    ],
)
def test_json_content_type(value: bytes | None, ok: bool) -> None:
    assert is_json(value) is ok


# --- the downtimes resource on the wire -------------------------------------------------------------


@pytest.fixture(scope="module")
def open_fedd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fedd, int]]:
    """fedd without [auth], listening on 127.0.0.1 and on [::1]."""
    base = tmp_path_factory.mktemp("admin")
    (base / "data").mkdir()
    (base / "data" / "f.txt").write_text("f")
    port, port6 = free_port(), free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
listen = tcp6:{port6}:interface=\\:\\:1
[health]
downtime_file = {base / "downtimes.json"}
[endpoint l]
kind = local
path = {base / "data"}
map = /l /
"""
    f = start_fedd(base / "run", conf, port)
    yield f, port6
    f.stop()


def call(
    host: str, port: int, method: str, path: str, body: bytes | None = None, hdrs: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers=hdrs or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


JSON = {"Content-Type": "application/json"}
DOWNTIME = json.dumps({"endpoint": "l", "scope": "write", "duration": 60, "reason": "test"}).encode()


def test_downtime_changes_need_json_from_this_host(open_fedd: tuple[Fedd, int]) -> None:
    f, port6 = open_fedd
    before = len(f.status()["downtimes"])
    # what a cross-site form or a no-preflight fetch from a browser on the host can send
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"):
        status, body = call("127.0.0.1", f.port, "POST", DOWNTIMES, DOWNTIME, {"Content-Type": ctype})
        # twisted.web itself answers 400 to a multipart body that is not one, before fedd sees it
        assert status == 415 or (status == 400 and ctype.startswith("multipart/")), (ctype, status, body)
    assert call("127.0.0.1", f.port, "POST", DOWNTIMES, DOWNTIME)[0] == 415  # no Content-Type at all
    # through a proxy on the host, or under a name that is not loopback (DNS rebinding): refused
    for extra in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"Host": "evil.example"}):
        status, body = call("127.0.0.1", f.port, "POST", DOWNTIMES, DOWNTIME, {**JSON, **extra})
        assert status == 403, body
    assert len(f.status()["downtimes"]) == before  # nothing of the above was declared
    # the admin on the host, over IPv4 and IPv6 loopback
    status, body = call("127.0.0.1", f.port, "POST", DOWNTIMES, DOWNTIME, JSON)
    assert status == 201, body
    first = json.loads(body)["id"]
    status, body = call("::1", port6, "POST", DOWNTIMES, DOWNTIME, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 201, body
    second = json.loads(body)["id"]
    assert {first, second} <= {d["id"] for d in f.status()["downtimes"]}
    # DELETE: the same host rules (a browser cannot send it cross-site without a preflight)
    assert call("127.0.0.1", f.port, "DELETE", f"{DOWNTIMES}/{first}", hdrs={"X-Forwarded-For": "1.2.3.4"})[0] == 403
    assert call("127.0.0.1", f.port, "DELETE", f"{DOWNTIMES}/{first}")[0] == 204
    assert call("::1", port6, "DELETE", f"{DOWNTIMES}/{second}")[0] == 204
    assert len(f.status()["downtimes"]) == before
    assert "Traceback" not in f.log_text()


def test_a_browser_form_post_is_refused(open_fedd: tuple[Fedd, int]) -> None:
    """What `<form method=post enctype=text/plain>` on any web site makes a browser on the host send."""
    f, _ = open_fedd
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-X", "POST",
         "-H", "Content-Type: text/plain", "-H", "Origin: https://evil.example",
         "--data-binary", DOWNTIME.decode(), f.url + DOWNTIMES],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert out.stdout == "415"


# --- symlinks in a local endpoint -------------------------------------------------------------------

ACCESS = """
/pub     anonymous   rl
/priv    "/DC=org/CN=Admin"   rl
"""
SECRET, HIDDEN = "private bytes 7f3a", "unpublished bytes 91c2"


def tree(base: Path) -> Path:
    """data/pub (public) and data/priv (private), with symlinks from pub into priv and within pub."""
    data = base / "data"
    (data / "pub").mkdir(parents=True)
    (data / "priv").mkdir()
    (data / "unpublished").mkdir()
    (data / "priv" / "secret.txt").write_text(SECRET)
    (data / "unpublished" / "hidden.txt").write_text(HIDDEN)
    (data / "pub" / "real.txt").write_text("public")
    (data / "pub" / "sub").mkdir()
    os.symlink("../priv/secret.txt", data / "pub" / "escape.txt")  # into another mapped prefix
    os.symlink("../priv", data / "pub" / "privdir")  # a directory link into it
    os.symlink(str(data / "priv" / "secret.txt"), data / "pub" / "absolute.txt")  # absolute target
    os.symlink("../unpublished/hidden.txt", data / "pub" / "hidden.txt")  # into the unmapped root
    os.symlink("real.txt", data / "pub" / "alias.txt")  # within the prefix: still served
    os.symlink("../real.txt", data / "pub" / "sub" / "up.txt")
    return data


def test_resolve_keeps_symlinks_in_their_mapped_prefix(tmp_path: Path) -> None:
    data = tree(tmp_path)
    # the pub prefix itself a symlink inside the root (a common layout): followed like the directory
    (data / ".store").mkdir()
    os.symlink("../pub", data / ".store" / "pubview")
    cfg = parse_config(
        text=f"[endpoint l]\nkind = local\npath = {data}\n"
        "map = /pub /pub\nmap = /priv /priv\nmap = /view /.store/pubview\n"
    )
    ep = LocalEndpoint(cfg.endpoints[0], Clock())
    real = os.path.realpath(data)
    assert ep.resolve("/pub/real.txt") == f"{real}/pub/real.txt"
    assert ep.resolve("/pub/alias.txt") == f"{real}/pub/real.txt"
    assert ep.resolve("/pub/sub/up.txt") == f"{real}/pub/real.txt"
    assert ep.resolve("/priv/secret.txt") == f"{real}/priv/secret.txt"
    assert ep.resolve("/.store/pubview/real.txt") == f"{real}/pub/real.txt"
    for refused in (
        "/pub/escape.txt",
        "/pub/privdir/secret.txt",
        "/pub/absolute.txt",
        "/pub/hidden.txt",
        "/pub/../../etc/passwd",
    ):
        assert ep.resolve(refused) is None, refused
    # a path that does not exist (yet) resolves to where it would be
    assert ep.resolve("/pub/new.txt") == f"{real}/pub/new.txt"


def test_listings_leave_out_symlinks_out_of_their_prefix(tmp_path: Path) -> None:
    data = tree(tmp_path)
    cfg = parse_config(text=f"[endpoint l]\nkind = local\npath = {data}\nmap = /pub /pub\nmap = /priv /priv\n")
    ep = LocalEndpoint(cfg.endpoints[0], Clock())
    names = {e.name for e in ep._listdir("/pub") or []}
    assert {"real.txt", "alias.txt", "sub"} <= names
    assert not names & {"escape.txt", "privdir", "absolute.txt", "hidden.txt"}, names


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    base = tmp_path_factory.mktemp("symlinks")
    data = tree(base)
    (base / "access.conf").write_text(ACCESS)
    port = free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[auth]
access_file = {base / "access.conf"}
[endpoint l]
kind = local
path = {data}
map = /pub /pub
map = /priv /priv
"""
    f = start_fedd(base / "run", conf, port)
    yield f
    f.stop()


def fetch(f: Fedd, path: str) -> tuple[int, bytes]:
    """GET through fedd, following its redirect to the local data URL like a client would."""
    status, body, location = _get(f, path)
    if status == 302:
        assert location.startswith("/.well-known/fedd/local/") or location.startswith(f.url), location
        status, body, _ = _get(f, location.removeprefix(f.url))
    return status, body


def _get(f: Fedd, path: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, r.getheader("Location") or ""


def leaks(body: bytes) -> bool:
    return SECRET.encode() in body or HIDDEN.encode() in body


def test_symlinks_do_not_lead_past_the_access_rules(guarded: Fedd) -> None:
    f = guarded
    assert fetch(f, "/priv/secret.txt")[0] == 401  # the rule at its own path
    assert fetch(f, "/pub/real.txt") == (200, b"public")
    assert fetch(f, "/pub/alias.txt") == (200, b"public")  # links within the prefix still work
    assert fetch(f, "/pub/sub/up.txt") == (200, b"public")
    for path in ("/pub/escape.txt", "/pub/absolute.txt", "/pub/privdir/secret.txt", "/pub/hidden.txt"):
        status, body = fetch(f, path)
        assert status == 404 and not leaks(body), (path, status, body)
        # the local data URL asked directly: refused too
        status, body, _ = _get(f, "/.well-known/fedd/local/l" + path)
        assert status in (403, 404) and not leaks(body), (path, status, body)
    assert "Traceback" not in f.log_text()

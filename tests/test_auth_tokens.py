"""Authorisation through the daemon: access rules, WLCG tokens against a real JWKS server on loopback."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.daemon import Fedd, env, start_fedd, twistd_command, wait_for
from tests.servers import free_port

AUD = "https://fedd.test"


class Issuer:
    """A token issuer: RSA and EC keys, JWKS served over HTTP on loopback."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.iss = self.url + "/"
        self.fetches = 0
        jwks = {
            "keys": [
                {**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "rsa1", "alg": "RS256"},
                {**json.loads(ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "ec1", "alg": "ES256"},
            ]
        }
        body = json.dumps(jwks).encode()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(
        self,
        scope: str = "storage.read:/",
        *,
        alg: str = "RS256",
        kid: str | None = None,
        groups: list[str] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": self.iss,
            "sub": "user-42",
            "aud": AUD,
            "exp": now + 600,
            "iat": now,
            "nbf": now - 1,
            "scope": scope,
            "wlcg.ver": "1.0",
            "wlcg.groups": groups,
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        key = self.rsa if alg == "RS256" else self.ec
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid or ("rsa1" if alg == "RS256" else "ec1")})

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    yield i
    i.stop()


ACCESS = """/atlas/public anonymous rl
/atlas /atlas rl
/atlas/scratch authenticated rlwd
/.well-known/fedd/status anonymous r
"""


@pytest.fixture(scope="module")
def fed(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    base = tmp_path_factory.mktemp("auth")
    for d in ("public", "data", "scratch"):
        (base / "data" / d).mkdir(parents=True)
        (base / "data" / d / "f").write_text(d)
    (base / "access.conf").write_text(ACCESS)
    port = free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[auth]
access_file = {base / "access.conf"}
reload_interval = 0.2
token_audience = {AUD}
jwks_min_refresh = 0
[issuer test]
issuer = {issuer.iss}
jwks_url = {issuer.url}/jwks.json
base_path = /atlas
[endpoint l]
kind = local
path = {base / "data"}
map = /atlas /
"""
    f = start_fedd(base / "run", conf, port)
    yield f
    f.stop()


def get(fed: Fedd, path: str, token: str | None = None, method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
    r = conn.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    return r


def test_anonymous_access_follows_the_rules(fed: Fedd) -> None:
    assert get(fed, "/atlas/public/f").status == 302
    r = get(fed, "/atlas/data/f")
    assert r.status == 401 and r.getheader("WWW-Authenticate") == 'Bearer realm="fedd"'
    assert b"authentication required" in r.body  # type: ignore[attr-defined]
    # the local data URL behind a redirect is protected like the federation path
    r = get(fed, "/.well-known/fedd/local/l/data/f")
    assert r.status == 401
    out = subprocess.run(["curl", "-sfL", fed.url + "/atlas/public/f"], capture_output=True, check=True)
    assert out.stdout == b"public"


def test_token_scopes_relative_to_the_issuer_base_path(fed: Fedd, issuer: Issuer) -> None:
    token = issuer.token("storage.read:/data")
    assert get(fed, "/atlas/data/f", token).status == 302
    assert get(fed, "/atlas/scratch/f", token).status == 403
    out = subprocess.run(
        ["curl", "-sfL", "-H", f"Authorization: Bearer {token}", fed.url + "/atlas/data/f"], capture_output=True
    )
    assert out.returncode == 0 and out.stdout == b"data"
    assert get(fed, "/atlas/data", token, "PROPFIND").status == 403  # PROPFIND without Depth is refused below
    ec_token = issuer.token("storage.read:/", alg="ES256")
    assert get(fed, "/atlas/scratch/f", ec_token).status == 302


def test_token_groups_use_the_access_rules(fed: Fedd, issuer: Issuer) -> None:
    token = issuer.token("openid", groups=["/atlas"])
    assert get(fed, "/atlas/data/f", token).status == 302
    token = issuer.token("openid", groups=["/cms"])
    assert get(fed, "/atlas/data/f", token).status == 403
    assert get(fed, "/atlas/scratch/f", token).status == 302  # any authenticated identity


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda i: i.token(exp=int(time.time()) - 3600), b"token expired"),
        (lambda i: i.token(nbf=int(time.time()) + 3600), b"not valid yet"),
        (lambda i: i.token(aud="https://other.example"), b"audience"),
        (lambda i: i.token(iss="https://evil.example/"), b"not trusted"),
        (lambda i: i.token(kid="nope"), b"unknown key"),
        (lambda i: i.token()[:-4] + "AAAA", b"signature does not verify"),
        (
            lambda i: jwt.encode(
                {"iss": i.iss, "sub": "x", "aud": AUD, "exp": int(time.time()) + 60},
                None,  # type: ignore[arg-type]  # PyJWT's hints leave out the None key that alg=none requires
                algorithm="none",
            ),
            b"'none' is not accepted",
        ),
        (
            lambda i: jwt.encode(
                {"iss": i.iss, "sub": "x", "aud": AUD, "exp": int(time.time()) + 60},
                "secret-key-long-enough-for-hmac-256",
                algorithm="HS256",
            ),
            b"'HS256' is not accepted",
        ),
        (lambda i: "not.a.token", b"malformed token"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(fed: Fedd, issuer: Issuer, make: Any, message: bytes) -> None:
    r = get(fed, "/atlas/public/f", make(issuer))
    assert r.status == 401
    assert message in r.body  # type: ignore[attr-defined]
    assert fed.proc.poll() is None


def test_dot_dot_scopes_are_ignored(fed: Fedd, issuer: Issuer) -> None:
    token = issuer.token("storage.read:/../.. storage.read:/public/../scratch")
    assert get(fed, "/atlas/scratch/f", token).status == 403
    # with workers the line reaches the log through the supervisor: a moment after the answer
    wait_for(lambda: "malformed scope" in fed.log_text(), 10, "the malformed scope to be logged")


def test_rules_reload_and_bad_files_keep_the_old_rules(fed: Fedd) -> None:
    access = Path(fed.config.read_text().split("access_file = ", 1)[1].split("\n", 1)[0])
    try:
        access.write_text(ACCESS + "/atlas/data anonymous r\n")
        wait_for(lambda: get(fed, "/atlas/data/f").status == 302, 10, "the new rules to be read")
        access.write_text("/atlas anonymous rx\nbroken line\n")
        wait_for(lambda: "previous rules stay in force" in fed.log_text(), 10, "the broken rules to be refused")
        log = fed.log_text()
        assert f"{access}:1: letters must be from 'rlwd'" in log and f"{access}:2: expected" in log
        assert get(fed, "/atlas/data/f").status == 302  # the previous rules are still in force
        assert fed.status()["auth"]["reload_errors"] >= 1
    finally:
        access.write_text(ACCESS)


def test_broken_access_file_at_start_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "access.conf").write_text("/atlas atlas rq\n")
    conf = tmp_path / "fedd.conf"
    conf.write_text(
        f"[server]\nlisten = tcp:{free_port()}\n[auth]\naccess_file = access.conf\n"
        "[endpoint l]\nkind = local\npath = data\n"
    )
    out = subprocess.run(twistd_command("--config", str(conf)), capture_output=True, env=env(), timeout=60, text=True)
    assert out.returncode != 0
    assert f"{tmp_path / 'access.conf'}:1: letters must be from 'rlwd'" in out.stdout + out.stderr


def test_offline_jwks_file(issuer: Issuer, tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from fedd.auth.tokens import TokenError, TokenVerifier, no_fetch
    from fedd.config import IssuerSettings as IssuerConfig

    jwks = tmp_path / "jwks.json"
    jwks.write_text(
        json.dumps(
            {
                "keys": [
                    {**json.loads(RSAAlgorithm.to_jwk(issuer.rsa.public_key())), "kid": "rsa1"},
                    {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},  # one bad key does not spoil the others
                ]
            }
        )
    )
    fetched = issuer.fetches
    verifier = TokenVerifier(
        [IssuerConfig("t", issuer.iss, jwks_file=str(jwks), base_path="/atlas")], [AUD], clock=Clock(), fetch=no_fetch
    )
    results: list[Any] = []
    verifier.verify(issuer.token("storage.read:/data")).addBoth(results.append)
    who = results[0]
    assert who.subject == "user-42" and who.scopes == ("storage.read:/atlas/data",)
    verifier.verify(issuer.token(alg="ES256")).addBoth(results.append)  # its key is not in the file
    assert results[1].check(TokenError)
    assert issuer.fetches == fetched  # never went to the network

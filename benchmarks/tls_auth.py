"""TLS with client-certificate verification: new handshakes per second and authorised redirects per
second over keep-alive, fedd vs nginx (`ssl_verify_client on`, same CA and CRL) in the same run.

Handshakes: `openssl s_time -new` (a fresh full handshake per connection, no resumption).
Redirects: one curl process fetching N URLs over one keep-alive TLS connection with the user
certificate; fedd runs its whole path (identity from the chain, access-file decision, redirect).

fedd with `workers = 1` and `workers = 2` (each worker does its own handshakes) and nginx run side by
side and are measured in turns, ROUNDS times.

Usage: python3 benchmarks/tls_auth.py [--quick]
"""

from __future__ import annotations

import http.client
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import free_port, start_fedd

from tests import servers
from tests.gridpki import CA

USER_DN = "/DC=org/DC=fedd-test/OU=Users/CN=Bench User"
NGINX = "nginx ssl_verify_client"
ROUNDS = 3


def s_time(port: int, ca: Path, cert: Path, key: Path, seconds: int) -> float:
    out = subprocess.run(
        [
            "openssl",
            "s_time",
            "-connect",
            f"127.0.0.1:{port}",
            "-new",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-CAfile",
            str(ca),
            "-time",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    match = re.search(r"([0-9.]+) connections/user sec", out.stdout)
    if match is None:
        raise RuntimeError(f"s_time failed: {out.stdout}{out.stderr}")
    # connections per second of wall time is what a site sees
    wall = re.search(r"(\d+) connections in (\d+) real seconds", out.stdout)
    return int(wall.group(1)) / int(wall.group(2)) if wall else float(match.group(1))


def keepalive_redirects(port: int, ca: Path, cert: Path, key: Path, count: int) -> float:
    """Authorised redirects per second: `count` GETs of one URL, one after another over one
    keep-alive TLS connection with the user certificate (Python's http.client; curl's URL globs
    add a query string, which the lean front lends to twisted.web, and a curl config of `count`
    URLs costs curl itself more than the server)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    codes: set[int] = set()
    try:
        conn.request("GET", "/users/f")  # the handshake and the first locate, not timed
        conn.getresponse().read()
        start = time.perf_counter()
        for _ in range(count):
            conn.request("GET", "/users/f")
            response = conn.getresponse()
            response.read()
            codes.add(response.status)
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    if codes != {302}:
        raise RuntimeError(f"unexpected answers: {sorted(codes)}")
    return count / elapsed


def nginx_tls(work: Path, host: tuple[Path, Path], ca: CA, crl: Path) -> servers.Nginx:
    tls = f"""ssl_certificate {host[0]};
        ssl_certificate_key {host[1]};
        ssl_client_certificate {ca.pem};
        ssl_crl {crl};
        ssl_verify_client on;
        ssl_verify_depth 10;
        ssl_session_cache off;
        ssl_session_tickets off;"""
    return servers.start_nginx_redirect(work / "nginx", "https://localhost/.well-known/fedd/local/l/users/f", tls=tls)


def main() -> None:
    quick = "--quick" in sys.argv
    seconds, count = (2, 300) if quick else (5, 2000)
    work = Path(tempfile.mkdtemp(prefix="fedd-tls-"))
    ca = CA(work, "ca", "/DC=org/DC=fedd-test/CN=Fedd Test CA")
    host = ca.issue("host", "/DC=org/DC=fedd-test/OU=Services/CN=localhost", "host")
    user = ca.issue("user", USER_DN)
    certdir = work / "certificates"
    ca.install(certdir)
    crl = certdir / f"{ca.hash}.r0"
    (work / "data" / "users").mkdir(parents=True)
    (work / "data" / "users" / "f").write_text("x")
    (work / "access.conf").write_text(f'/users "{USER_DN}" rl\n')
    rounds = 1 if quick else ROUNDS
    servers_up: dict[str, tuple[int, Any]] = {}  # name -> (TLS port, what to stop)
    try:
        for workers in (1, 2):
            http_port, https_port = free_port(), free_port()
            conf = config(work, host, certdir, http_port, https_port, workers)
            servers_up[f"fedd, workers = {workers}"] = (
                https_port,
                start_fedd(work / f"fedd-{workers}", conf, http_port),
            )
        nginx = nginx_tls(work, host, ca, crl)
        servers_up[NGINX] = (nginx.port, nginx)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers_up}
        for _ in range(rounds):  # in turns: each ratio pairs figures taken seconds apart
            for name, (port, _) in servers_up.items():
                results[name].append(
                    (s_time(port, ca.pem, *user, seconds), keepalive_redirects(port, ca.pem, *user, count))
                )
    finally:
        for _, server in servers_up.values():
            server.stop()
    print(
        f"\nTLS with client certificates (RSA 2048, CRL checked), {seconds} s handshakes, {count} redirects, "
        f"{rounds} round(s) in turns (median)"
    )
    print(f"{'server':26} {'new handshakes/s':>18} {'redirects/s (keep-alive)':>26}")
    for name, each in results.items():
        hs, rd = (statistics.median(x[i] for x in each) for i in (0, 1))
        print(f"{name:26} {hs:18.0f} {rd:26.0f}")
    n = results[NGINX]
    for name in ("fedd, workers = 1", "fedd, workers = 2"):
        f = results[name]
        shakes = [a[0] / b[0] for a, b in zip(f, n, strict=True)]
        redirects = [a[1] / b[1] for a, b in zip(f, n, strict=True)]
        print(
            f"{name} / nginx: handshakes {statistics.mean(shakes):.2f}, "
            f"authorised redirects {statistics.mean(redirects):.2f} "
            f"(target >= 0.6; rounds: {', '.join(f'{x:.2f}' for x in redirects)})"
        )


def config(work: Path, host: tuple[Path, Path], certdir: Path, http_port: int, https_port: int, workers: int) -> str:
    return f"""[server]
listen = tcp:{http_port}:interface=127.0.0.1
listen = ssl:{https_port}:interface=127.0.0.1
workers = {workers}
tls_certificate = {host[0]}
tls_private_key = {host[1]}
[auth]
access_file = {work / "access.conf"}
ca_dir = {certdir}
client_certificates = required
[events]
types = none
[endpoint l]
kind = local
path = {work / "data"}
map = / /
"""


if __name__ == "__main__":
    main()

"""TLS with client-certificate verification: new handshakes per second and authorised redirects per
second over keep-alive, fedd vs nginx (`ssl_verify_client on`, same CA and CRL) in the same run.

Handshakes: `openssl s_time -new` (a fresh full handshake per connection, no resumption).
Redirects: one curl process fetching N URLs over one keep-alive TLS connection with the user
certificate; fedd runs its whole path (identity from the chain, access-file decision, redirect).

Usage: python3 benchmarks/tls_auth.py [--quick]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, start_fedd

from tests import servers
from tests.gridpki import CA

USER_DN = "/DC=org/DC=fedd-test/OU=Users/CN=Bench User"


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
    url = f"https://localhost:{port}/users/f?n=[1-{count}]"
    start = time.perf_counter()
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--cacert",
            str(ca),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    codes = out.stdout.split()
    if len(codes) != count or set(codes) != {"302"}:
        raise RuntimeError(f"unexpected answers: {sorted(set(codes))} ({len(codes)} of {count})")
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
    http_port, https_port = free_port(), free_port()
    conf = f"""[server]
listen = tcp:{http_port}:interface=127.0.0.1
listen = ssl:{https_port}:interface=127.0.0.1
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
    results: dict[str, tuple[float, float]] = {}
    fedd = start_fedd(work / "fedd", conf, http_port)
    try:
        results["fedd"] = (
            s_time(https_port, ca.pem, *user, seconds),
            keepalive_redirects(https_port, ca.pem, *user, count),
        )
    finally:
        fedd.stop()
    nginx = nginx_tls(work, host, ca, crl)
    try:
        results["nginx ssl_verify_client"] = (
            s_time(nginx.port, ca.pem, *user, seconds),
            keepalive_redirects(nginx.port, ca.pem, *user, count),
        )
    finally:
        nginx.stop()
    print(f"\nTLS with client certificates (RSA 2048, CRL checked), {seconds} s handshakes, {count} redirects")
    print(f"{'server':26} {'new handshakes/s':>18} {'redirects/s (keep-alive)':>26}")
    for name, (hs, rd) in results.items():
        print(f"{name:26} {hs:18.0f} {rd:26.0f}")
    f, n = results["fedd"], results["nginx ssl_verify_client"]
    print(f"\nfedd/nginx: handshakes {f[0] / n[0]:.2f}, authorised redirects {f[1] / n[1]:.2f}")


if __name__ == "__main__":
    main()

"""The HTTPS listener: fedd serves TLS with the configured host certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.daemon import env, start_fedd, twistd_command, wait_for
from tests.servers import free_port


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "host.pem", tmp / "host.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_listener_redirects(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("tls data\n")
    http_port, https_port = free_port(), free_port()
    config = f"""
[server]
listen = tcp:{http_port}:interface=127.0.0.1
listen = ssl:{https_port}:interface=127.0.0.1
tls_certificate = {cert.name}
tls_private_key = {key.name}
[endpoint l]
kind = local
path = data
map = /x /
"""
    (tmp_path / "run").mkdir()
    # relative certificate and data paths are relative to the configuration file
    for name in (cert.name, key.name):
        (tmp_path / "run" / name).write_bytes((tmp_path / name).read_bytes())
    (tmp_path / "run" / "data").symlink_to(tmp_path / "data")
    fed = start_fedd(tmp_path / "run", config, http_port)
    try:
        out = subprocess.run(
            ["curl", "-sS", "-L", "--cacert", str(cert), f"https://127.0.0.1:{https_port}/x/f.txt"],
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"tls data\n"
        # handshakes are counted in the metrics, refused ones too (a client offering only TLS 1.0)
        old = subprocess.run(
            ["curl", "-sS", "--tlsv1.0", "--tls-max", "1.0", "-k", f"https://127.0.0.1:{https_port}/x/f.txt"],
            capture_output=True,
            timeout=30,
        )
        assert old.returncode != 0

        def handshakes() -> dict[str, float]:
            metrics = subprocess.run(
                ["curl", "-sS", f"http://127.0.0.1:{http_port}/metrics"], capture_output=True, text=True, timeout=30
            ).stdout
            return {
                line.split('"')[1]: float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("fedd_tls_handshakes_total{")
            }

        # with workers, a scrape adds up the others' handshakes within a second
        wait_for(handshakes, 5, "a handshake done and one failed", until=lambda c: c["ok"] >= 1 and c["failed"] >= 1)
        head = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--cacert",
                str(cert),
                f"https://127.0.0.1:{https_port}/x/f.txt",
            ],
            capture_output=True,
            timeout=30,
            text=True,
        )
        assert f"location: https://127.0.0.1:{https_port}/.well-known/fedd/local/l/f.txt" in head.stdout.lower()
        old = subprocess.run(
            ["curl", "-sS", "--tls-max", "1.1", "--cacert", str(cert), f"https://127.0.0.1:{https_port}/x/f.txt"],
            capture_output=True,
            timeout=30,
        )
        assert old.returncode != 0  # TLS 1.0/1.1 are refused
    finally:
        fed.stop()


@pytest.mark.parametrize("problem", ["missing", "garbage"])
def test_bad_certificate_is_a_clear_startup_error(tmp_path: Path, problem: str) -> None:
    (tmp_path / "data").mkdir()
    cert = tmp_path / "host.pem"
    if problem == "garbage":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    conf = tmp_path / "fedd.conf"
    conf.write_text(
        f"[server]\nlisten = ssl:{free_port()}\ntls_certificate = host.pem\n"
        f"tls_private_key = host.pem\n[endpoint l]\nkind = local\npath = data\n"
    )
    out = subprocess.run(twistd_command("--config", str(conf)), capture_output=True, env=env(), timeout=60, text=True)
    assert out.returncode != 0
    assert "cannot load the TLS certificate or key" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr

"""A throwaway grid PKI made with openssl and voms-proxy-fake: CA directory with CRL, user, host and
VOMS server certificates, RFC 3820 proxies with VOMS attributes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CA_CNF = """[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
crlnumber = {dir}/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
preserve = yes
copy_extensions = copy
[ policy_any ]
domainComponent = optional
organizationalUnitName = optional
commonName = supplied
[ usr ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment, dataEncipherment
extendedKeyUsage = clientAuth
[ host ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
"""


def run(*cmd: str, cwd: Path | None = None) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stdout}{out.stderr}")
    return out.stdout


class CA:
    def __init__(self, base: Path, name: str, dn: str) -> None:
        self.dir = base / name
        (self.dir / "newcerts").mkdir(parents=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("01\n")
        (self.dir / "crlnumber").write_text("01\n")
        self.cnf = self.dir / "ca.cnf"
        self.cnf.write_text(CA_CNF.format(dir=self.dir))
        self.key, self.pem = self.dir / "ca.key", self.dir / "ca.pem"
        self.dn = dn
        run(
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(self.key),
            "-out",
            str(self.pem),
            "-days",
            "30",
            "-subj",
            dn,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        self.hash = run("openssl", "x509", "-hash", "-noout", "-in", str(self.pem)).strip()

    def issue(self, name: str, dn: str, ext: str = "usr", *dates: str) -> tuple[Path, Path]:
        key, csr, pem = self.dir / f"{name}.key", self.dir / f"{name}.csr", self.dir / f"{name}.pem"
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", dn)
        run(
            "openssl",
            "ca",
            "-batch",
            "-config",
            str(self.cnf),
            "-cert",
            str(self.pem),
            "-keyfile",
            str(self.key),
            "-in",
            str(csr),
            "-out",
            str(pem),
            "-extensions",
            ext,
            "-notext",
            *dates,
        )
        key.chmod(0o600)
        return pem, key

    def revoke(self, pem: Path) -> None:
        run(
            "openssl",
            "ca",
            "-config",
            str(self.cnf),
            "-cert",
            str(self.pem),
            "-keyfile",
            str(self.key),
            "-revoke",
            str(pem),
        )

    def crl(self, out: Path, *, expired: bool = False) -> None:
        args = ["-crl_lastupdate", "20200101000000Z", "-crl_nextupdate", "20200102000000Z"] if expired else []
        run(
            "openssl",
            "ca",
            "-config",
            str(self.cnf),
            "-cert",
            str(self.pem),
            "-keyfile",
            str(self.key),
            "-gencrl",
            "-out",
            str(out),
            *args,
        )

    def install(self, certdir: Path, *, crl: bool = True, expired_crl: bool = False) -> None:
        certdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.pem, certdir / f"{self.hash}.0")
        if crl:
            self.crl(certdir / f"{self.hash}.r0", expired=expired_crl)


def self_signed(out: Path, dn: str) -> Path:
    """A self-signed certificate (what a forged "proxy" or a home-made CA looks like to a server)."""
    crt = out.with_suffix(".crt")
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(out),
        "-out",
        str(crt),
        "-days",
        "2",
        "-subj",
        dn,
    )
    out.write_text(crt.read_text() + out.read_text())
    out.chmod(0o600)
    return out


def proxy(
    user: tuple[Path, Path],
    out: Path,
    certdir: Path,
    *,
    voms: tuple[Path, Path] | None = None,
    fqans: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Path:
    """An RFC 3820 proxy of `user`, with a VOMS AC signed by `voms` if given."""
    Path.home().joinpath(".rnd").touch()
    cmd = [
        "voms-proxy-fake",
        "-cert",
        str(user[0]),
        "-key",
        str(user[1]),
        "-certdir",
        str(certdir),
        "-rfc",
        "-out",
        str(out),
        *extra,
    ]
    if voms is not None:
        cmd += [
            "-hostcert",
            str(voms[0]),
            "-hostkey",
            str(voms[1]),
            "-voms",
            fqans[0].split("/")[1],
            "-uri",
            "voms.example.org:15000",
        ]
        for fqan in fqans:
            cmd += ["-fqan", fqan]
    run(*cmd)
    out.chmod(0o600)
    return out

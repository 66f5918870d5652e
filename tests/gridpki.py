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
        self._ca(
            "-batch",
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

    def _ca(self, *args: str) -> str:
        return run("openssl", "ca", "-config", str(self.cnf), "-cert", str(self.pem), "-keyfile", str(self.key), *args)

    def revoke(self, pem: Path) -> None:
        self._ca(
            "-revoke",
            str(pem),
        )

    def crl(self, out: Path, *, expired: bool = False) -> None:
        args = ["-crl_lastupdate", "20200101000000Z", "-crl_nextupdate", "20200102000000Z"] if expired else []
        self._ca(
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


def proxy_of(parent: Path, out: Path) -> Path:
    """An RFC 3820 proxy signed by the proxy in `parent` (a proxy of a proxy), made with cryptography."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    data = parent.read_bytes()
    certs = x509.load_pem_x509_certificates(data)
    parent_key = serialization.load_pem_private_key(data, password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    serial = x509.random_serial_number() >> 100
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            *certs[0].subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(x509.NameOID.COMMON_NAME, str(serial))]),
        ]
    )
    # ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint OPTIONAL, proxyPolicy SEQUENCE { id-ppl-inheritAll } }
    info = bytes.fromhex("300c300a06082b06010505071501")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(certs[0].subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"), info), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .sign(parent_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    out.write_bytes(pem + key_pem + chain)
    out.chmod(0o600)
    return out

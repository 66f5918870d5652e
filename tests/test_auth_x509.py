"""Grid authentication end to end: fedd over HTTPS verifying client certificates and RFC 3820 VOMS
proxies made by voms-proxy-fake, with curl and davix as clients."""

from __future__ import annotations

import http.client
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.gridpki import CA, proxy, proxy_of, self_signed
from tests.servers import free_port

USER_DN = "/DC=org/DC=fedd-test/OU=Users/CN=Jane Doe"
PROD = "/atlas/Role=production/Capability=NULL"
ACCESS = f"""/atlas/public anonymous rl
/atlas /atlas/Role=production rl
/users "{USER_DN}" rl
"""


@dataclass
class Pki:
    ca: CA
    newca: CA
    certdir: Path
    vomsdir: Path
    host: tuple[Path, Path]
    user: tuple[Path, Path]
    creds: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = CA(base, "ca", "/DC=org/DC=fedd-test/CN=Fedd Test CA")
    host = ca.issue("host", "/DC=org/DC=fedd-test/OU=Services/CN=localhost", "host")
    voms = ca.issue("voms", "/DC=org/DC=fedd-test/OU=Services/CN=voms.example.org", "host")
    rogue = ca.issue("rogue", "/DC=org/DC=fedd-test/OU=Services/CN=rogue.example.org", "host")
    user = ca.issue("user", USER_DN)
    bob = ca.issue("bob", "/DC=org/DC=fedd-test/OU=Users/CN=Bob Revoked")
    ca.revoke(bob[0])
    expired = ca.issue(
        "old",
        "/DC=org/DC=fedd-test/OU=Users/CN=Old Timer",
        "usr",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
    )
    evil = CA(base, "evil", "/DC=org/DC=evil/CN=Evil CA")
    newca = CA(base, "newca", "/DC=org/DC=newca/CN=New CA")
    newcomer = newca.issue("newcomer", "/DC=org/DC=newca/CN=Newcomer")
    mallory = evil.issue("mallory", "/DC=org/DC=evil/CN=Mallory")
    certdir = base / "certificates"
    ca.install(certdir)
    vomsdir = base / "vomsdir"
    (vomsdir / "atlas").mkdir(parents=True)
    (vomsdir / "atlas" / "voms.example.org.lsc").write_text(
        "/DC=org/DC=fedd-test/OU=Services/CN=voms.example.org\n/DC=org/DC=fedd-test/CN=Fedd Test CA\n"
    )
    creds = {
        "user": _combined(base / "user.pem", user),
        "revoked": _combined(base / "bob.pem", bob),
        "untrusted": _combined(base / "mallory.pem", mallory),
        "expired": _combined(base / "old.pem", expired),
        "newcomer": _combined(base / "newcomer.pem", newcomer),
        "self_signed": self_signed(base / "selfsigned.pem", USER_DN + "/CN=proxy"),
        "voms": proxy(user, base / "x509up_voms", certdir, voms=voms, fqans=(PROD, "/atlas/Capability=NULL")),
        "rogue": proxy(user, base / "x509up_rogue", certdir, voms=rogue, fqans=(PROD,)),
        "expired_ac": proxy(
            user,
            base / "x509up_expired",
            certdir,
            voms=voms,
            fqans=(PROD,),
            extra=("-pastac", "7200", "-vomslife", "1"),
        ),
        "plain_proxy": proxy(user, base / "x509up_plain", certdir),
    }
    # a proxy whose signature was tampered with
    text = creds["plain_proxy"].read_text()
    first = text.index("-----END CERTIFICATE-----")
    body = text[:first]
    tampered = body[:-40] + ("A" if body[-40] != "A" else "B") + body[-39:] + text[first:]
    (base / "x509up_tampered").write_text(tampered)
    creds["tampered"] = base / "x509up_tampered"
    return Pki(ca, newca, certdir, vomsdir, host, user, creds)


def _combined(out: Path, pair: tuple[Path, Path]) -> Path:
    out.write_text(pair[0].read_text() + pair[1].read_text())
    out.chmod(0o600)
    return out


def config(pki: Pki, base: Path, http_port: int, https_port: int, extra: str = "") -> str:
    return f"""[server]
listen = tcp:{http_port}:interface=127.0.0.1
listen = ssl:{https_port}:interface=127.0.0.1
tls_certificate = {pki.host[0]}
tls_private_key = {pki.host[1]}
[auth]
access_file = {base / "access.conf"}
ca_dir = {pki.certdir}
vomsdir = {pki.vomsdir}
{extra}
[endpoint l]
kind = local
path = {base / "data"}
map = / /
"""


@pytest.fixture(scope="module")
def fed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fedd, int]]:
    base = tmp_path_factory.mktemp("x509fed")
    for d in ("atlas/public", "atlas/data", "users"):
        (base / "data" / d).mkdir(parents=True)
        (base / "data" / d / "f").write_text(d)
    (base / "access.conf").write_text(ACCESS)
    http_port, https_port = free_port(), free_port()
    f = start_fedd(base / "run", config(pki, base, http_port, https_port), http_port)
    yield f, https_port
    f.stop()


def curl(pki: Pki, port: int, path: str, cred: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["curl", "-sS", "--cacert", str(pki.ca.pem), "-o", "-", "-w", "\n%{http_code}", *args]
    if cred:
        cmd += ["--cert", str(pki.creds[cred]), "--key", str(pki.creds[cred])]
    return subprocess.run([*cmd, f"https://localhost:{port}{path}"], capture_output=True, text=True, timeout=30)


def status(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.rsplit("\n", 1)[-1]


def test_voms_proxy_reads_by_role(pki: Pki, fed: tuple[Fedd, int]) -> None:
    _f, port = fed
    out = curl(pki, port, "/atlas/data/f", "voms", "-L")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "atlas/data\n200"
    davix = subprocess.run(
        [
            "davix-get",
            "--cert",
            str(pki.creds["voms"]),
            "--capath",
            str(pki.certdir),
            f"https://localhost:{port}/atlas/data/f",
        ],
        capture_output=True,
        timeout=60,
    )
    assert davix.returncode == 0, davix.stderr
    assert davix.stdout == b"atlas/data"


def test_gfal_lists_with_a_voms_proxy(pki: Pki, fed: tuple[Fedd, int]) -> None:
    _, port = fed
    env = {"X509_USER_PROXY": str(pki.creds["voms"]), "X509_CERT_DIR": str(pki.certdir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["gfal-ls", f"davs://localhost:{port}/atlas/data"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["f"]


def test_limited_proxy_policy(pki: Pki, tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from fedd.auth.identity import Identity
    from fedd.auth.service import AuthService

    (tmp_path / "access.conf").write_text("/ authenticated rlwd\n")
    who = Identity("x509", USER_DN, limited_proxy=True)
    for policy, allowed in [("allow", "rlwd"), ("read-only", "rl"), ("deny", "")]:
        auth = AuthService(clock=Clock(), access_file=str(tmp_path / "access.conf"), limited_proxies=policy)
        assert "".join(c for c in "rlwd" if auth.decide(who, c, "/x").allowed) == allowed
    limited = proxy(pki.user, tmp_path / "x509up_limited", pki.certdir, extra=("-limited",))
    from cryptography import x509

    from fedd.auth.x509id import identity_from_chain

    chain = x509.load_pem_x509_certificates(limited.read_bytes())
    assert identity_from_chain(chain, vomsdir="", cas={}, now=None).limited_proxy  # type: ignore[arg-type]
    plain = x509.load_pem_x509_certificates(pki.creds["plain_proxy"].read_bytes())
    assert not identity_from_chain(plain, vomsdir="", cas={}, now=None).limited_proxy  # type: ignore[arg-type]


def test_user_certificate_without_voms(pki: Pki, fed: tuple[Fedd, int]) -> None:
    _f, port = fed
    assert status(curl(pki, port, "/users/f", "user")) == "302"
    assert status(curl(pki, port, "/users/f", "plain_proxy")) == "302"  # the DN behind the proxy counts
    denied = curl(pki, port, "/atlas/data/f", "user")
    assert status(denied) == "403" and "not granted to " + USER_DN in denied.stdout


def test_proxy_of_a_proxy_is_the_user_and_keeps_voms(pki: Pki, fed: tuple[Fedd, int], tmp_path: Path) -> None:
    _, port = fed
    pki.creds["deep"] = proxy_of(pki.creds["voms"], tmp_path / "x509up_deep")
    assert status(curl(pki, port, "/users/f", "deep")) == "302"  # Jane Doe, two proxy levels down
    assert status(curl(pki, port, "/atlas/data/f", "deep")) == "302"  # the AC in the first proxy still counts


def test_anonymous_over_https(pki: Pki, fed: tuple[Fedd, int]) -> None:
    _f, port = fed
    assert status(curl(pki, port, "/atlas/public/f", None)) == "302"
    assert status(curl(pki, port, "/atlas/data/f", None)) == "401"


@pytest.mark.parametrize(("cred", "log"), [("rogue", "not trusted for VO 'atlas'"), ("expired_ac", "expired")])
def test_untrusted_or_expired_voms_attributes_are_ignored(pki: Pki, fed: tuple[Fedd, int], cred: str, log: str) -> None:
    f, port = fed
    assert status(curl(pki, port, "/users/f", cred)) == "302"  # still Jane Doe
    assert status(curl(pki, port, "/atlas/data/f", cred)) == "403"  # but without the production role
    assert log in f.log_text()


@pytest.mark.parametrize(
    ("cred", "reason"),
    [
        ("revoked", "certificate revoked"),
        ("untrusted", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("self_signed", "self-signed certificate"),
        ("tampered", ""),
    ],
)
def test_bad_certificates_are_refused_in_the_handshake(pki: Pki, fed: tuple[Fedd, int], cred: str, reason: str) -> None:
    f, port = fed
    out = curl(pki, port, "/atlas/public/f", cred)
    assert out.returncode != 0 or status(out) == "000"
    if reason:
        wait_for(lambda: reason in f.log_text(), 5, f"{reason!r} in the log", interval=0.05)
    assert f.proc.poll() is None
    assert status(curl(pki, port, "/atlas/public/f", None)) == "302"  # and the daemon serves on


def test_garbage_tls_and_http_on_the_tls_port(pki: Pki, fed: tuple[Fedd, int]) -> None:
    import socket

    f, port = fed
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05garbage" * 50)
        try:
            s.recv(100)
        except OSError:
            pass
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        conn.getresponse()
    except (OSError, http.client.HTTPException):
        pass
    assert f.proc.poll() is None
    assert status(curl(pki, port, "/atlas/public/f", None)) == "302"


@pytest.mark.parametrize(("policy", "expect"), [("hard", "refused"), ("soft", "302")])
def test_expired_crl_policy(pki: Pki, tmp_path: Path, policy: str, expect: str) -> None:
    certdir = tmp_path / "certificates"
    pki.ca.install(certdir, expired_crl=True)
    (tmp_path / "data" / "users").mkdir(parents=True)
    (tmp_path / "data" / "users" / "f").write_text("u")
    (tmp_path / "access.conf").write_text(ACCESS)
    http_port, https_port = free_port(), free_port()
    conf = config(pki, tmp_path, http_port, https_port, f"crl = {policy}").replace(
        f"ca_dir = {pki.certdir}", f"ca_dir = {certdir}"
    )
    f = start_fedd(tmp_path / "run", conf, http_port)
    try:
        out = curl(pki, https_port, "/users/f", "user")
        if expect == "refused":
            assert out.returncode != 0
            assert "CRL has expired" in f.log_text()
        else:
            assert status(out) == "302"
            assert "without a usable CRL" in f.log_text()
    finally:
        f.stop()


def test_chain_too_long(pki: Pki, tmp_path: Path) -> None:
    """verify_depth = 0: certificates issued by a trusted CA directly, no proxies (chain one too long)."""
    (tmp_path / "data" / "users").mkdir(parents=True)
    (tmp_path / "data" / "users" / "f").write_text("u")
    (tmp_path / "access.conf").write_text(ACCESS)
    http_port, https_port = free_port(), free_port()
    f = start_fedd(tmp_path / "run", config(pki, tmp_path, http_port, https_port, "verify_depth = 0"), http_port)
    try:
        assert status(curl(pki, https_port, "/users/f", "user")) == "302"
        out = curl(pki, https_port, "/users/f", "plain_proxy")
        assert out.returncode != 0
        wait_for(lambda: "certificate chain too long" in f.log_text(), 5, "the refusal in the log", interval=0.05)
    finally:
        f.stop()


def test_new_ca_is_picked_up_without_a_restart(pki: Pki, tmp_path: Path) -> None:
    certdir = tmp_path / "certificates"
    pki.ca.install(certdir)
    (tmp_path / "data" / "atlas" / "public").mkdir(parents=True)
    (tmp_path / "data" / "atlas" / "public" / "f").write_text("p")
    (tmp_path / "access.conf").write_text(ACCESS)
    http_port, https_port = free_port(), free_port()
    conf = config(pki, tmp_path, http_port, https_port, "ca_reload_interval = 0.3").replace(
        f"ca_dir = {pki.certdir}", f"ca_dir = {certdir}"
    )
    f = start_fedd(tmp_path / "run", conf, http_port)
    try:
        assert curl(pki, https_port, "/atlas/public/f", "newcomer").returncode != 0
        pki.newca.install(certdir)  # as fetch-crl or a CA rpm update would
        wait_for(
            lambda: status(curl(pki, https_port, "/atlas/public/f", "newcomer")) == "302",
            10,
            "the new CA to be picked up",
            interval=0.2,
        )
        assert f.proc.poll() is None
    finally:
        f.stop()

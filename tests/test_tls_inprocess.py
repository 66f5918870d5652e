"""The grid TLS context (fedd.auth.tls) in process: handshakes between GridContextFactory's context and
a pyOpenSSL client over memory BIOs (no sockets), certificates and CRLs made in memory
(tests/memorypki.py). Through twistd with curl, davix and gfal2: test_tls and test_auth_x509."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from fedd.auth.tls import GridContextFactory, load_cas
from fedd.auth.voms import grid_dn
from tests.inprocess import captured_logs, formats
from tests.memorypki import DAY, Issued, certificate, crl, name, proxy

REAL_NOW = datetime.datetime.now(datetime.UTC)  # OpenSSL checks validity at the real time


def issue(subject: x509.Name, issuer: Issued | None, **kw: object) -> Issued:
    return certificate(subject, issuer, not_before=REAL_NOW - DAY, not_after=REAL_NOW + 30 * DAY, **kw)  # type: ignore[arg-type]


def openssl_hash(cert: x509.Certificate) -> str:
    value: int = crypto.X509.from_cryptography(cert).subject_name_hash()  # type: ignore[assignment]  # stubs say bytes
    return f"{value:08x}"


def install(certdir: Path, ca: Issued, *, crl_file: bytes | None) -> None:
    certdir.mkdir(exist_ok=True)
    h = openssl_hash(ca.cert)
    (certdir / f"{h}.0").write_bytes(ca.pem())
    if crl_file is not None:
        (certdir / f"{h}.r0").write_bytes(crl_file)


def fresh_crl(ca: Issued, revoked: tuple[int, ...] = ()) -> bytes:
    return crl(ca, revoked, next_update=REAL_NOW + 30 * DAY)


class Pki:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.certdir = tmp_path / "certificates"
        self.ca = issue(name(("DC", "org"), ("DC", "example"), ("CN", "Grid CA")), None, ca=True)
        install(self.certdir, self.ca, crl_file=fresh_crl(self.ca))
        self.host = issue(name(("DC", "org"), ("DC", "example"), ("CN", "localhost")), self.ca, server=True)
        self.host_pem = tmp_path / "hostcert.pem"
        self.host_key = tmp_path / "hostkey.pem"
        self.host_pem.write_bytes(self.host.pem())
        self.host_key.write_bytes(self.host.key_pem())
        self.user = issue(name(("DC", "org"), ("DC", "example"), ("CN", "Jane Doe")), self.ca)

    def factory(self, *, require: bool = True, crl_mode: str = "hard", chain: str = "") -> GridContextFactory:
        return GridContextFactory(
            certificate=str(self.host_pem),
            private_key=str(self.host_key),
            chain=chain,
            ca_dir=str(self.certdir),
            require=require,
            crl=crl_mode,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def handshake(
    factory: GridContextFactory, client: Issued | None = None, chain: tuple[Issued, ...] = ()
) -> SSL.Connection:
    """Run a TLS handshake in memory; the server's connection, or SSL.Error if the server refused."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if client is not None:
        ctx.use_certificate(client.cert)  # type: ignore[arg-type]  # pyOpenSSL takes cryptography's types
        ctx.use_privatekey(client.key)  # type: ignore[arg-type]
        for extra in chain:
            ctx.add_extra_chain_cert(extra.cert)  # type: ignore[arg-type]
    c = SSL.Connection(ctx, None)
    c.set_connect_state()
    s = SSL.Connection(factory.getContext(), None)
    s.set_accept_state()
    done = {"c": False, "s": False}
    for _ in range(20):
        for side, conn, peer in (("c", c, s), ("s", s, c)):
            if not done[side]:
                try:
                    conn.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
            try:
                data = conn.bio_read(65536)
            except SSL.WantReadError:
                continue
            peer.bio_write(data)
        if done["s"]:
            s.write(b"x")  # TLS 1.3: the server's verdict on the client certificate reaches the client
            return s
    raise AssertionError("handshake did not finish")


def test_a_user_of_a_trusted_ca_is_accepted(pki: Pki) -> None:
    server = handshake(pki.factory(), pki.user)
    peer = server.get_peer_certificate()
    assert peer is not None and grid_dn(peer.to_cryptography().subject) == "/DC=org/DC=example/CN=Jane Doe"


def test_a_proxy_of_the_user_is_accepted(pki: Pki) -> None:
    server = handshake(
        pki.factory(), proxy(pki.user, not_before=REAL_NOW - DAY, not_after=REAL_NOW + DAY), chain=(pki.user,)
    )
    chain = server.get_peer_cert_chain() or []
    assert [grid_dn(c.to_cryptography().subject) for c in chain][-1] == "/DC=org/DC=example/CN=Jane Doe"


def test_no_client_certificate_is_refused_only_when_required(pki: Pki) -> None:
    with pytest.raises(SSL.Error):
        handshake(pki.factory(require=True))
    server = handshake(pki.factory(require=False))
    assert server.get_peer_certificate() is None


def test_a_revoked_user_is_refused_and_logged(pki: Pki) -> None:
    install(pki.certdir, pki.ca, crl_file=fresh_crl(pki.ca, revoked=(pki.user.cert.serial_number,)))
    with captured_logs() as logged, pytest.raises(SSL.Error):
        handshake(pki.factory(), pki.user)
    refused = [e for e in logged if "refused client certificate" in str(e.get("log_format", ""))]
    assert refused and refused[0]["dn"] == "/DC=org/DC=example/CN=Jane Doe" and "revoked" in refused[0]["reason"]


def test_an_unknown_ca_is_refused(pki: Pki) -> None:
    stranger_ca = issue(name(("CN", "Home-made CA")), None, ca=True)
    stranger = issue(name(("CN", "Mallory")), stranger_ca)
    with captured_logs() as logged, pytest.raises(SSL.Error):
        handshake(pki.factory(), stranger)
    assert formats(logged, "refused client certificate")


@pytest.mark.parametrize("expired", [False, True])
def test_a_ca_without_a_usable_crl_is_refused_when_hard_and_accepted_when_soft(pki: Pki, expired: bool) -> None:
    if expired:
        install(pki.certdir, pki.ca, crl_file=crl(pki.ca, next_update=REAL_NOW - DAY))
    else:
        (pki.certdir / f"{openssl_hash(pki.ca.cert)}.r0").unlink()
    with pytest.raises(SSL.Error):
        handshake(pki.factory(crl_mode="hard"), pki.user)
    with captured_logs() as logged:
        handshake(pki.factory(crl_mode="soft"), pki.user)
    assert formats(logged, "without a usable CRL (crl = soft)")


def test_a_reload_takes_a_new_crl_and_the_cas_for_voms(pki: Pki) -> None:
    factory = pki.factory()
    handshake(factory, pki.user)  # the context has read the CRL
    install(pki.certdir, pki.ca, crl_file=fresh_crl(pki.ca, revoked=(pki.user.cert.serial_number,)))
    other_ca = issue(name(("DC", "org"), ("CN", "Second CA")), None, ca=True)
    install(pki.certdir, other_ca, crl_file=fresh_crl(other_ca))
    assert "/DC=org/CN=Second CA" not in factory.cas
    factory.reload()
    with pytest.raises(SSL.Error):
        handshake(factory, pki.user)
    assert "/DC=org/CN=Second CA" in factory.cas


def test_a_reload_that_fails_keeps_the_previous_context(pki: Pki) -> None:
    factory = pki.factory()
    before = factory.getContext()
    pki.host_key.write_text("not a key\n")
    with captured_logs() as logged:
        factory.reload()
    assert factory.getContext() is before and formats(logged, "TLS context not reloaded")
    handshake(factory, pki.user)


def test_a_separate_chain_file_is_sent_after_the_certificate(pki: Pki) -> None:
    intermediate = issue(name(("DC", "org"), ("CN", "Intermediate CA")), pki.ca, ca=True)
    host = issue(name(("CN", "localhost")), intermediate, server=True)
    pki.host_pem.write_bytes(host.pem())
    pki.host_key.write_bytes(host.key_pem())
    chain = pki.dir / "chain.pem"
    chain.write_bytes(intermediate.pem())
    factory = pki.factory(chain=str(chain))
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    server = SSL.Connection(factory.getContext(), None)
    server.set_accept_state()
    for _ in range(6):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                break
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    sent = client.get_peer_cert_chain() or []
    assert [grid_dn(c.to_cryptography().subject) for c in sent] == ["/CN=localhost", "/DC=org/CN=Intermediate CA"]


def test_load_cas_reads_every_ca_by_grid_dn(pki: Pki) -> None:
    (pki.certdir / "readme.txt").write_text("not a certificate")
    (pki.certdir / "deadbeef.1").write_bytes(b"garbage")
    cas = load_cas(str(pki.certdir))
    assert list(cas) == ["/DC=org/DC=example/CN=Grid CA"]
    assert cas["/DC=org/DC=example/CN=Grid CA"].public_bytes(serialization.Encoding.PEM) == pki.ca.pem()

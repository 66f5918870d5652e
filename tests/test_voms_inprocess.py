"""VOMS attribute certificates (fedd.auth.voms) in process: proxies and ACs made in memory
(tests/memorypki.py), each trust rule broken once. Proxies made by voms-proxy-fake, through twistd
and real clients: test_auth_x509."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from fedd.auth.voms import VomsError, fqans, grid_dn, read_lsc
from tests.memorypki import DAY, NOW, Issued, certificate, name, proxy, voms_ac, write_lsc

FQANS = ("/atlas/Role=NULL/Capability=NULL", "/atlas/prod/Role=production/Capability=NULL")


class Grid:
    def __init__(self, tmp_path: Path) -> None:
        self.ca = certificate(name(("DC", "org"), ("DC", "example"), ("CN", "Example CA")), None, ca=True)
        self.user = certificate(name(("DC", "org"), ("DC", "example"), ("CN", "Jane Doe")), self.ca)
        self.voms = certificate(name(("DC", "org"), ("DC", "example"), ("CN", "voms.example.org")), self.ca)
        self.vomsdir = tmp_path / "vomsdir"
        write_lsc(self.vomsdir, "atlas", "voms.example.org", self.voms)

    @property
    def cas(self) -> dict[str, x509.Certificate]:
        return {grid_dn(self.ca.cert.subject): self.ca.cert}

    def check(
        self, proxy_cert: Issued, *, now: datetime.datetime = NOW, cas: dict[str, x509.Certificate] | None = None
    ) -> tuple[str, ...]:
        return fqans(
            proxy_cert.cert, self.user.cert, vomsdir=str(self.vomsdir), cas=self.cas if cas is None else cas, now=now
        )


@pytest.fixture
def grid(tmp_path: Path) -> Grid:
    return Grid(tmp_path)


def test_a_trusted_ac_gives_its_fqans_in_order(grid: Grid) -> None:
    assert grid.check(proxy(grid.user, voms_ac(grid.user.cert, grid.voms, FQANS))) == FQANS


def test_a_holder_named_by_its_own_subject_is_accepted(grid: Grid) -> None:
    ac = voms_ac(grid.user.cert, grid.voms, FQANS, holder_by_subject=True)
    assert grid.check(proxy(grid.user, ac)) == FQANS


def test_a_proxy_without_voms_has_no_fqans(grid: Grid) -> None:
    assert grid.check(proxy(grid.user)) == ()


@pytest.mark.parametrize(
    ("when", "trusted"),
    [(NOW - 2 * DAY, False), (NOW - DAY, True), (NOW + DAY, True), (NOW + DAY + datetime.timedelta(seconds=1), False)],
)
def test_the_ac_is_trusted_only_within_its_validity(grid: Grid, when: datetime.datetime, trusted: bool) -> None:
    p = proxy(grid.user, voms_ac(grid.user.cert, grid.voms, FQANS))
    if trusted:
        assert grid.check(p, now=when) == FQANS
    else:
        with pytest.raises(VomsError, match="expired or not yet valid"):
            grid.check(p, now=when)


def test_an_ac_for_another_certificate_is_refused(grid: Grid) -> None:
    ac = voms_ac(grid.user.cert, grid.voms, FQANS, holder_serial=grid.user.cert.serial_number + 1)
    with pytest.raises(VomsError, match="issued for another certificate"):
        grid.check(proxy(grid.user, ac))


def test_a_tampered_signature_is_refused(grid: Grid) -> None:
    with pytest.raises(VomsError, match="does not verify"):
        grid.check(proxy(grid.user, voms_ac(grid.user.cert, grid.voms, FQANS, tamper=True)))


def test_a_vo_without_an_lsc_file_is_not_trusted(grid: Grid) -> None:
    ac = voms_ac(grid.user.cert, grid.voms, ("/cms/Role=NULL/Capability=NULL",))
    with pytest.raises(VomsError, match="not trusted for VO 'cms'"):
        grid.check(proxy(grid.user, ac))


def test_an_lsc_naming_another_server_is_not_trusted(grid: Grid, tmp_path: Path) -> None:
    other = certificate(name(("DC", "org"), ("DC", "example"), ("CN", "voms2.example.org")), grid.ca)
    (grid.vomsdir / "atlas" / "voms.example.org.lsc").unlink()
    write_lsc(grid.vomsdir, "atlas", "voms2.example.org", other)
    with pytest.raises(VomsError, match="is not trusted for VO 'atlas'"):
        grid.check(proxy(grid.user, voms_ac(grid.user.cert, grid.voms, FQANS)))


def test_the_voms_servers_ca_must_be_trusted(grid: Grid) -> None:
    with pytest.raises(VomsError, match=r"CA of VOMS server .* is not trusted"):
        grid.check(proxy(grid.user, voms_ac(grid.user.cert, grid.voms, FQANS)), cas={})


def test_a_voms_server_certificate_from_a_ca_of_the_same_name_is_refused(grid: Grid) -> None:
    forger = certificate(grid.ca.cert.subject, None, ca=True)  # same DN, other key
    forged = certificate(grid.voms.cert.subject, forger)
    with pytest.raises(VomsError, match="not signed by its CA"):
        grid.check(proxy(grid.user, voms_ac(grid.user.cert, forged, FQANS)))


def test_an_expired_voms_server_certificate_is_refused(grid: Grid) -> None:
    old = certificate(grid.voms.cert.subject, grid.ca, not_before=NOW - 10 * DAY, not_after=NOW - DAY / 2)
    with pytest.raises(VomsError, match="expired"):
        grid.check(proxy(grid.user, voms_ac(grid.user.cert, old, FQANS)))


def test_an_unreadable_extension_is_an_error_not_a_crash(grid: Grid) -> None:
    with pytest.raises(VomsError, match="unreadable VOMS attribute certificate"):
        grid.check(proxy(grid.user, b"\x30\x03\x02\x01\x01"))


def test_read_lsc_skips_comments_other_files_and_short_files(tmp_path: Path) -> None:
    atlas = tmp_path / "atlas"
    atlas.mkdir()
    (atlas / "a.lsc").write_text("# comment\n/DC=org/CN=voms\n\n/DC=org/CN=CA\n")
    (atlas / "b.lsc").write_text("/DC=org/CN=only one line\n")
    (atlas / "c.pem").write_text("/DC=org/CN=x\n/DC=org/CN=y\n")
    entries = read_lsc(str(tmp_path), "atlas")
    assert [(e.subject, e.issuer) for e in entries] == [("/DC=org/CN=voms", "/DC=org/CN=CA")]
    assert read_lsc(str(tmp_path), "cms") == []


def test_grid_dn_is_the_openssl_one_line_form() -> None:
    dn = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.DOMAIN_COMPONENT, "org"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "Jane Doe"),
            x509.NameAttribute(x509.NameOID.EMAIL_ADDRESS, "jane@example.org"),
        ]
    )
    assert grid_dn(dn) == "/DC=org/O=Example/CN=Jane Doe/emailAddress=jane@example.org"

"""fedd.pem: every certificate of a PEM bundle, the one reader for chains and ca_file bundles."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.web.client import BrowserLikePolicyForHTTPS

from fedd.endpoints import tls_policy
from fedd.pem import read_certificates


def _pem(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_every_certificate_of_a_bundle_in_order(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    # text around and between the blocks, as in the system bundles (comments) and openssl output
    bundle.write_bytes(b"# first\n" + _pem("one") + b"subject=CN = two\n" + _pem("two") + b"\n")
    for path in (bundle, str(bundle)):
        names = [c.to_cryptography().subject.rfc4514_string() for c in read_certificates(path)]
        assert names == ["CN=one", "CN=two"]


@pytest.mark.parametrize(
    "content", [b"", b"no certificate here\n", b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"]
)
def test_no_or_a_malformed_certificate_is_an_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    with pytest.raises(ValueError):
        read_certificates(bad)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_certificates(tmp_path / "absent.pem")


def test_endpoint_ca_file_with_no_certificate_is_refused(tmp_path: Path) -> None:
    """The old splitter trusted nothing (every endpoint's TLS failed later); now it is an error at once."""
    empty = tmp_path / "ca.pem"
    empty.write_bytes(b"# nothing here\n")
    with pytest.raises(ValueError):
        tls_policy(True, str(empty))
    good = tmp_path / "good.pem"
    good.write_bytes(_pem("one") + _pem("two"))
    assert isinstance(tls_policy(True, str(good)), BrowserLikePolicyForHTTPS)

"""A grid PKI made in memory with cryptography and asn1crypto (no openssl, no voms-proxy-fake): CAs,
user, host and VOMS server certificates, CRLs, RFC 3820 proxies carrying a VOMS attribute
certificate. tests/gridpki.py makes the same things with the grid's own tools for the twistd tests."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import algos, cms, core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedd.auth.voms import VOMS_AC_OID, VOMS_ATTR_OID, VOMS_CERTS_OID

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
_KEYS: list[rsa.RSAPrivateKey] = []


def _key() -> rsa.RSAPrivateKey:
    # RSA key generation costs ~50 ms: a handful of keys serve the whole session
    if len(_KEYS) < 6:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEYS[-1]
    _KEYS.append(_KEYS.pop(0))
    return _KEYS[-1]


def name(*parts: tuple[str, str]) -> x509.Name:
    oids = {"DC": NameOID.DOMAIN_COMPONENT, "O": NameOID.ORGANIZATION_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts])


@dataclass
class Issued:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )


def certificate(
    subject: x509.Name,
    issuer: Issued | None,
    *,
    ca: bool = False,
    serial: int | None = None,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
    server: bool = False,
) -> Issued:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def crl(ca: Issued, revoked: tuple[int, ...] = (), *, next_update: datetime.datetime = NOW + 30 * DAY) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(min(next_update - DAY, NOW - DAY))
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - DAY).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _general_names(n: x509.Name) -> ax509.GeneralNames:
    return ax509.GeneralNames([ax509.GeneralName({"directory_name": ax509.Name.load(n.public_bytes())})])


class _IetfValues(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.OctetString


class _IetfAttrSyntax(core.Sequence):  # type: ignore[misc]
    _fields = [("policy_authority", ax509.GeneralNames, {"implicit": 0, "optional": True}), ("values", _IetfValues)]


def voms_ac(
    holder: x509.Certificate,
    server: Issued,
    fqans: tuple[str, ...],
    *,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + DAY,
    holder_serial: int | None = None,
    holder_by_subject: bool = False,
    tamper: bool = False,
) -> bytes:
    """The DER of a VOMS extension value: SEQUENCE OF SEQUENCE OF AttributeCertificate, one AC whose
    holder is `holder` (named by its issuer, RFC 5755, or by its own subject as voms-proxy-fake does),
    signed by `server`, carrying its certificate."""
    ietf = _IetfAttrSyntax(
        {
            "policy_authority": _general_names(name(("CN", "voms.example.org:15000"))),
            "values": [f.encode() for f in fqans],
        }
    )
    cert_seq = _nested(server.cert.public_bytes(serialization.Encoding.DER))  # ACCerts: SEQ { SEQ OF Certificate }
    info = cms.AttributeCertificateInfoV2(
        {
            "version": "v2",
            "holder": {
                "base_certificate_id": {
                    "issuer": _general_names(holder.subject if holder_by_subject else holder.issuer),
                    "serial": holder_serial if holder_serial is not None else holder.serial_number,
                }
            },
            "issuer": cms.AttCertIssuer(name="v2_form", value={"issuer_name": _general_names(server.cert.subject)}),
            "signature": {"algorithm": "sha256_rsa"},
            "serial_number": 1234,
            "att_cert_validity_period": {
                "not_before_time": core.GeneralizedTime(not_before),
                "not_after_time": core.GeneralizedTime(not_after),
            },
            "attributes": [{"type": VOMS_ATTR_OID, "values": [core.Any.load(ietf.dump())]}],
            "extensions": [{"extn_id": VOMS_CERTS_OID, "critical": False, "extn_value": cert_seq.dump()}],
        }
    )
    data = info.dump()
    signature = server.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if tamper:
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    ac = cms.AttributeCertificateV2(
        {
            "ac_info": info,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_rsa"}),
            "signature": signature,
        }
    )
    return bytes(_nested(ac.dump()).dump())


def _nested(der: bytes) -> core.SequenceOf:
    """SEQUENCE { SEQUENCE { <der> } }."""
    inner = core.SequenceOf(spec=core.Any)
    inner.append(core.Any.load(der))
    outer = core.SequenceOf(spec=core.Any)
    outer.append(core.Any.load(inner.dump()))
    return outer


def proxy(
    user: Issued,
    ac: bytes | None = None,
    *,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + DAY,
) -> Issued:
    """An RFC 3820 proxy of `user`, with `ac` (from voms_ac) as its VOMS extension if given."""
    key = _key()
    serial = x509.random_serial_number() >> 100
    subject = x509.Name(
        [
            *user.cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))]),
        ]
    )
    # ProxyCertInfo ::= SEQUENCE { proxyPolicy SEQUENCE { id-ppl-inheritAll } }
    info = bytes.fromhex("300c300a06082b06010505071501")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(user.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"), info), critical=True)
    )
    if ac is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(VOMS_AC_OID), ac), critical=False
        )
    return Issued(builder.sign(user.key, hashes.SHA256()), key)


def grid_dn_line(n: x509.Name) -> str:
    from fedd.auth.voms import grid_dn

    return grid_dn(n)


def write_lsc(vomsdir: Path, vo: str, host: str, server: Issued) -> Path:
    d = vomsdir / vo
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{host}.lsc"
    path.write_text(f"{grid_dn_line(server.cert.subject)}\n{grid_dn_line(server.cert.issuer)}\n")
    return path

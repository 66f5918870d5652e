"""VOMS attribute certificates (RFC 5755) inside proxy certificates: parse, verify, expose FQANs.

An AC is trusted only when (1) its signature verifies with the VOMS server certificate carried in
the AC, (2) that certificate's subject and issuer are the two lines of `vomsdir/<vo>/<host>.lsc`,
(3) that certificate was issued by a CA in the trusted CA directory, (4) it is within its validity
period and (5) its holder is the user's end-entity certificate. Pure except for reading vomsdir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms, core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

VOMS_AC_OID = "1.3.6.1.4.1.8005.100.100.5"
VOMS_ATTR_OID = "1.3.6.1.4.1.8005.100.100.4"
VOMS_CERTS_OID = "1.3.6.1.4.1.8005.100.100.10"
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


class VomsError(Exception):
    pass


# asn1crypto ships no type information: its classes are Any to mypy, so each subclass below carries
# ignore[misc] (subclassing Any)
class _ACs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = cms.AttributeCertificateV2


class _ACSeq(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _ACs


class _Values(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.OctetString


class _IetfAttrSyntax(core.Sequence):  # type: ignore[misc]
    _fields = [("policy_authority", ax509.GeneralNames, {"implicit": 0, "optional": True}), ("values", _Values)]


class _CertList(core.SequenceOf):  # type: ignore[misc]
    _child_spec = ax509.Certificate


class _Certs(core.SequenceOf):  # type: ignore[misc]  # ACCerts ::= SEQUENCE { certList SEQUENCE OF Certificate }
    _child_spec = _CertList


def grid_dn(name: x509.Name) -> str:
    """`/DC=org/DC=example/CN=Jane Doe`: the OpenSSL one-line form grid files use."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = "emailAddress" if attr.oid == x509.NameOID.EMAIL_ADDRESS else attr.rfc4514_attribute_name
            value = attr.value.decode("latin-1") if isinstance(attr.value, bytes) else attr.value
            parts.append(f"{key}={value}")
    return "/" + "/".join(parts)


def _parse_name(name: ax509.Name) -> x509.Name:
    """cryptography has no public "Name from DER": rebuild one from asn1crypto's view."""
    rdns = []
    for rdn in name.chosen:
        attrs = []
        for atv in rdn:
            oid = x509.ObjectIdentifier(atv["type"].dotted)
            attrs.append(x509.NameAttribute(oid, str(atv["value"].native)))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


@dataclass(frozen=True)
class LscEntry:
    subject: str
    issuer: str


def read_lsc(vomsdir: str, vo: str) -> list[LscEntry]:
    """All `.lsc` files of a VO: each names a trusted VOMS server's subject and its CA."""
    entries = []
    directory = os.path.join(vomsdir, vo)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        if not name.endswith(".lsc"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError:
            continue
        if len(lines) >= 2:
            entries.append(LscEntry(lines[0], lines[1]))
    return entries


def _verify(public_key: object, signature: bytes, data: bytes, algorithm: str) -> None:
    digest = _HASHES.get(algorithm.split("_", 1)[0])
    if digest is None:
        raise VomsError(f"unsupported AC signature algorithm {algorithm}")
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(digest))
    else:
        raise VomsError("unsupported VOMS server key type")


def fqans(
    proxy: x509.Certificate,
    user: x509.Certificate,
    *,
    vomsdir: str,
    cas: dict[str, x509.Certificate],
    now: datetime,
) -> tuple[str, ...]:
    """The FQANs of the first trusted AC in `proxy`; raises VomsError if an AC is present but not trusted."""
    try:
        ext = proxy.extensions.get_extension_for_oid(x509.ObjectIdentifier(VOMS_AC_OID))
    except x509.ExtensionNotFound:
        return ()
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    try:
        acs = [ac for group in _ACSeq.load(raw) for ac in group]
        for ac in acs:
            return _check(ac, user, vomsdir=vomsdir, cas=cas, now=now)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise VomsError(f"unreadable VOMS attribute certificate ({type(exc).__name__})") from None
    return ()


def _check(
    ac: cms.AttributeCertificateV2,
    user: x509.Certificate,
    *,
    vomsdir: str,
    cas: dict[str, x509.Certificate],
    now: datetime,
) -> tuple[str, ...]:
    info = ac["ac_info"]
    period = info["att_cert_validity_period"].native
    if not period["not_before_time"] <= now <= period["not_after_time"]:
        raise VomsError("VOMS attributes expired or not yet valid")
    holder = info["holder"]["base_certificate_id"]
    # the holder is the user's certificate: its serial, named by its issuer (RFC 5755) or, as
    # voms-proxy-fake and some VOMS versions write it, by its own subject
    holder_names = {grid_dn(user.issuer), grid_dn(user.subject)}
    if (
        holder.native is None
        or holder["serial"].native != user.serial_number
        or grid_dn(_parse_name(holder["issuer"][0].chosen)) not in holder_names
    ):
        raise VomsError("VOMS attributes were issued for another certificate")
    values: list[str] = []
    for attr in info["attributes"]:
        if attr["type"].dotted != VOMS_ATTR_OID:
            continue
        for value in attr["values"]:
            parsed = _IetfAttrSyntax.load(value.dump())
            values.extend(v.native.decode("utf-8") for v in parsed["values"])
    if not values:
        raise VomsError("VOMS attribute certificate without FQANs")
    signer = None
    for ext in info["extensions"]:
        if ext["extn_id"].dotted == VOMS_CERTS_OID:
            certs = _Certs.load(
                ext["extn_value"].native if isinstance(ext["extn_value"].native, bytes) else ext["extn_value"].contents
            )
            if len(certs) and len(certs[0]):
                signer = x509.load_der_x509_certificate(certs[0][0].dump())
    if signer is None:
        raise VomsError("VOMS attribute certificate carries no server certificate")
    try:
        _verify(signer.public_key(), ac["signature"].native, info.dump(), ac["signature_algorithm"]["algorithm"].native)
    except InvalidSignature:
        raise VomsError("VOMS attribute signature does not verify") from None
    vo = values[0].split("/")[1] if values[0].startswith("/") else ""
    subject, issuer = grid_dn(signer.subject), grid_dn(signer.issuer)
    if not any(e.subject == subject and e.issuer == issuer for e in read_lsc(vomsdir, vo)):
        raise VomsError(f"VOMS server {subject} is not trusted for VO {vo!r} (no matching .lsc)")
    ca = cas.get(issuer)
    if ca is None:
        raise VomsError(f"the CA of VOMS server {subject} is not trusted")
    try:
        signer.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise VomsError(f"VOMS server certificate {subject} is not signed by its CA") from None
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        raise VomsError(f"VOMS server certificate {subject} expired")
    return tuple(values)

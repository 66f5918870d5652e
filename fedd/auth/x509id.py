"""Identity from a verified client certificate chain: end-entity DN behind RFC 3820 proxies, VOMS FQANs.

The TLS handshake has already verified the chain (CA directory, CRLs, proxy rules); this module only
reads it. Pure: the chain, vomsdir, the trusted CAs and `now` in; an Identity out.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from twisted.logger import Logger

from fedd.auth.identity import Identity
from fedd.auth.voms import VomsError, fqans, grid_dn

log = Logger(namespace="fedd.auth.x509")
PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
# DER of the OID 1.3.6.1.4.1.3536.1.1.1.9 (id-ppl-limited, "limited proxy" policy language)
_LIMITED_POLICY = bytes.fromhex("060b2b060104019b5001010109")


def _proxy_info(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(PROXY_CERT_INFO)
    except x509.ExtensionNotFound:
        pass
    else:
        return ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if (
        cns
        and cns[-1].value in ("proxy", "limited proxy")
        and grid_dn(cert.issuer) == grid_dn(cert.subject).rsplit("/CN=", 1)[0]
    ):
        return b"legacy-limited" if cns[-1].value == "limited proxy" else b"legacy"  # pre-RFC 3820 proxies
    return None


def identity_from_chain(
    chain: list[x509.Certificate], *, vomsdir: str, cas: dict[str, x509.Certificate], now: datetime
) -> Identity:
    """`chain` as the client sent it: leaf first (the proxy, if any), then its issuers."""
    proxies: list[tuple[x509.Certificate, bytes]] = []
    user = None
    for cert in chain:
        info = _proxy_info(cert)
        if info is None:
            user = cert
            break
        proxies.append((cert, info))
    if user is None:
        raise ValueError("certificate chain holds only proxies")
    limited = any(_LIMITED_POLICY in info or info == b"legacy-limited" for _, info in proxies)
    found: tuple[str, ...] = ()
    for proxy, _ in reversed(proxies):  # the AC sits in the first proxy made from the user certificate
        try:
            found = fqans(proxy, user, vomsdir=vomsdir, cas=cas, now=now)
        except VomsError as exc:
            log.warn("ignoring the VOMS attributes of {dn}: {reason}", dn=grid_dn(user.subject), reason=str(exc))
            found = ()
            break
        if found:
            break
    return Identity(
        kind="x509",
        subject=grid_dn(user.subject),
        issuer=grid_dn(user.issuer),
        fqans=found,
        limited_proxy=limited,
    )

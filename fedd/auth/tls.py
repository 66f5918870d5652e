"""The grid TLS context: client certificates verified in the handshake against a CA directory.

`/etc/grid-security/certificates` layout: `<hash>.0` CA certificates, `<hash>.r0` CRLs, looked up by
OpenSSL. RFC 3820 proxies are allowed (X509_V_FLAG_ALLOW_PROXY_CERTS). CRLs are checked for the
whole chain; `crl = soft` accepts a chain whose CA has no CRL or an expired one (logged), `hard`
refuses it. The context is rebuilt every `ca_reload_interval` (new CAs and CRLs, as fetch-crl writes
them); connections already made keep theirs.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from fedd.auth.voms import grid_dn
from fedd.pem import read_certificates

log = Logger(namespace="fedd.auth.tls")
_SOFT_CRL_ERRORS = {3, 12}  # X509_V_ERR_UNABLE_TO_GET_CRL, X509_V_ERR_CRL_HAS_EXPIRED


def load_cas(ca_dir: str) -> dict[str, x509.Certificate]:
    """Trusted CA certificates by grid DN (for checking VOMS server certificates)."""
    cas: dict[str, x509.Certificate] = {}
    for path in sorted(glob.glob(os.path.join(ca_dir, "*.[0-9]"))):
        try:
            with open(path, "rb") as f:
                for cert in x509.load_pem_x509_certificates(f.read()):
                    cas[grid_dn(cert.subject)] = cert
        except (OSError, ValueError):
            continue
    return cas


class GridContextFactory:
    """Twisted context factory (`getContext`) whose context can be rebuilt without a restart."""

    def __init__(
        self,
        *,
        certificate: str,
        private_key: str,
        chain: str = "",
        ca_dir: str,
        require: bool,
        crl: str = "hard",
        verify_depth: int = 10,
    ) -> None:
        self.certificate = certificate
        self.private_key = private_key
        self.chain = chain
        self.ca_dir = ca_dir
        self.require = require
        self.crl = crl
        self.verify_depth = verify_depth
        self.cas: dict[str, x509.Certificate] = {}
        self.info_callback: Any = None  # set by the metrics (handshake counts); kept across rebuilds
        self._context = self._build()

    def getContext(self) -> SSL.Context:
        return self._context

    def reload(self) -> None:
        try:
            self._context = self._build()
        except (OSError, SSL.Error, crypto.Error) as exc:
            log.error("TLS context not reloaded, the previous one stays: {reason}", reason=exc)

    def _verify(self, conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if ok:
            return True
        if self.crl == "soft" and errno in _SOFT_CRL_ERRORS:
            log.warn(
                "accepting {dn} without a usable CRL (crl = soft): error {errno}",
                dn=grid_dn(cert.to_cryptography().subject),
                errno=errno,
            )
            return True
        try:
            dn = grid_dn(cert.to_cryptography().subject)
        except Exception:
            dn = "?"
        log.info(
            "refused client certificate {dn} at depth {depth}: {reason}",
            dn=dn,
            depth=depth,
            reason=crypto.X509StoreContextError.__name__ + f" {errno}: {_reason(errno)}",
        )
        return False

    def _build(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        if not self.chain:
            ctx.use_certificate_chain_file(self.certificate.encode())
        else:
            ctx.use_certificate_file(self.certificate.encode())
            try:
                chain = read_certificates(self.chain)
            except ValueError as exc:  # callers (start-up, reload) handle TLS set-up errors as SSL.Error
                raise SSL.Error(f"{self.chain}: {exc}") from None
            for cert in chain:
                ctx.add_extra_chain_cert(cert)
        ctx.use_privatekey_file(self.private_key.encode())
        ctx.check_privatekey()
        ctx.load_verify_locations(None, self.ca_dir)
        store = ctx.get_cert_store()
        assert store is not None
        flags = crypto.X509StoreFlags
        store.set_flags(flags.ALLOW_PROXY_CERTS | flags.CRL_CHECK | flags.CRL_CHECK_ALL)
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if self.require else 0)
        ctx.set_verify(mode, self._verify)
        ctx.set_verify_depth(self.verify_depth)
        ctx.set_session_id(b"fedd")
        callback = getattr(self, "info_callback", None)
        if callback is not None:
            ctx.set_info_callback(callback)
        self.cas = load_cas(self.ca_dir)
        return ctx


def _reason(errno: int) -> str:
    from OpenSSL._util import ffi, lib

    try:
        return str(ffi.string(lib.X509_verify_cert_error_string(errno)).decode())
    except Exception:
        return "verification failed"

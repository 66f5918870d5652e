"""PEM certificate bundles: every certificate of a file (CA bundles, chains), in order.

One reader for the server chain, the grid context's chain, the endpoints' and the STOMP sink's
`ca_file`: cryptography's `load_pem_x509_certificates` (pyOpenSSL's loaders read only a bundle's
first certificate, and splitting on `-----END CERTIFICATE-----` by hand was written three times).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from OpenSSL.crypto import X509


def read_certificates(path: str | Path) -> list[X509]:
    """The certificates of the PEM file at `path`, as pyOpenSSL objects (what Twisted and
    `SSL.Context` take). Raises OSError (unreadable) or ValueError (no certificate, or a malformed one)."""
    return [X509.from_cryptography(cert) for cert in x509.load_pem_x509_certificates(Path(path).read_bytes())]

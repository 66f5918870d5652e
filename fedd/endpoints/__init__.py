"""Endpoint kinds. `make_endpoint` builds the right one for an `EndpointConfig`."""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from fedd.config import EndpointConfig
from fedd.endpoints.azure import AzureEndpoint
from fedd.endpoints.base import Endpoint, Entry, HttpClient, Space, Stat
from fedd.endpoints.dav import DavEndpoint
from fedd.endpoints.local import LocalEndpoint
from fedd.endpoints.s3 import S3Endpoint
from fedd.pem import read_certificates

__all__ = ["Endpoint", "Entry", "HttpClient", "Space", "Stat", "close_endpoint", "make_endpoint"]


@implementer(IPolicyForHTTPS)
class _NoVerify:
    """For test beds with self-signed endpoint certificates (verify_tls = no). Never the default."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.CertificateOptions(verify=False)


def _tls_policy(config: EndpointConfig) -> Any:
    return tls_policy(config.verify_tls, config.ca_file, default=None)


def tls_policy(verify: bool, ca_file: str, default: Any = None) -> Any:
    """How fedd checks a server's certificate: not at all (test beds), against a PEM bundle, or
    `default` (None: Twisted's system roots)."""
    if not verify:
        return _NoVerify()
    if ca_file:
        roots = [ssl.Certificate(cert) for cert in read_certificates(ca_file)]
        return BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(roots))
    return default


def make_endpoint(config: EndpointConfig, *, reactor: Any, presign_reuse: float = 0.5, instance: str = "") -> Endpoint:
    """`instance`: this fedd's id, marked (`Via`) on what a DAV endpoint is asked, against loops."""
    if config.kind == "local":
        return LocalEndpoint(config, reactor)
    http = HttpClient(reactor, endpoint=config.id, timeout=config.timeout, tls_policy=_tls_policy(config))
    if config.kind == "s3":
        return S3Endpoint(config, http, presign_reuse=presign_reuse)
    if config.kind == "azure":
        return AzureEndpoint(config, http, clock=reactor, presign_reuse=presign_reuse)
    return DavEndpoint(config, http, instance=instance)


async def close_endpoint(endpoint: Endpoint) -> None:
    http = getattr(endpoint, "_http", None)
    if isinstance(http, HttpClient):
        await http.close()

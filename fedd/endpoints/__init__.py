"""Endpoint kinds. `make_endpoint` builds the right one for an `EndpointConfig`."""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from fedd.config import EndpointConfig
from fedd.endpoints.azure import AzureEndpoint
from fedd.endpoints.base import Endpoint, Entry, HttpClient, Space, Stat
from fedd.endpoints.dav import DavEndpoint
from fedd.endpoints.interfaces import (
    IChecksumSource,
    IChecksumStore,
    IHttpEndpoint,
    IListable,
    ILocalFiles,
    IPresignable,
    IReadable,
    ISpaceSource,
    ITPCTarget,
)
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


# what each kind must provide: checked on every endpoint built (verifyObject), so a kind that
# declares a capability it does not implement fails at start-up, not on the first request that asks
CAPABILITIES: dict[str, tuple[type[Interface], ...]] = {
    "local": (ILocalFiles, IListable, ISpaceSource),
    "s3": (IPresignable, IListable, ITPCTarget, IChecksumSource, IChecksumStore, ISpaceSource),
    "azure": (IPresignable, IListable, ITPCTarget, IChecksumSource, ISpaceSource),
    "dav": (IReadable, IListable, ITPCTarget, IChecksumSource, ISpaceSource),
}


def make_endpoint(
    config: EndpointConfig,
    *,
    reactor: Any,
    presign_reuse: float = 0.5,
    instance: str = "",
    http_client: Any = None,
) -> Endpoint:
    """`instance`: this fedd's id, marked (`Via`) on what a DAV endpoint is asked, against loops.
    `http_client`: a treq-compatible client for the HTTP kinds (`treq.testing.StubTreq` in tests);
    without one each endpoint gets a pooled client of its own with its TLS settings."""
    endpoint: Endpoint
    if config.kind == "local":
        endpoint = LocalEndpoint(config, reactor)
    else:
        http = HttpClient(
            reactor, endpoint=config.id, timeout=config.timeout, tls_policy=_tls_policy(config), client=http_client
        )
        if config.kind == "s3":
            endpoint = S3Endpoint(config, http, presign_reuse=presign_reuse)
        elif config.kind == "azure":
            endpoint = AzureEndpoint(config, http, clock=reactor, presign_reuse=presign_reuse)
        else:
            endpoint = DavEndpoint(config, http, instance=instance)
    for capability in CAPABILITIES.get(config.kind, CAPABILITIES["dav"]):
        verifyObject(capability, endpoint)
    return endpoint


async def close_endpoint(endpoint: Endpoint) -> None:
    if IHttpEndpoint.providedBy(endpoint):
        await IHttpEndpoint(endpoint).http.close()

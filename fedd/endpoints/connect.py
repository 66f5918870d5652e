"""Where the endpoint clients' Agent connects: straight to an IP address when the URL names one.

twisted.web's Agent connects through `HostnameEndpoint` for every URL, which resolves the host in a
thread of the reactor's pool even when it is an IP literal (`getaddrinfo` of "10.0.0.5" is still a
thread hop and a wake-up of the reactor): for a cold locate that opens a connection to an endpoint
whose pooled connections are busy, that was about 8% of fedd's time (py-spy; docs/operations.md,
"Cold locates"). An IPv4 or IPv6 literal now connects with `TCP4ClientEndpoint`/`TCP6ClientEndpoint`
at once; a name still goes through `HostnameEndpoint` (every address of the name tried, as before).
TLS is wrapped the same way as Agent's own factory does, with the same policy (`creatorForNetloc`).
The connection pool's factories are made quiet (`noisy = False`): connecting through the plain TCP
endpoints, Twisted would log "Starting factory" and "Stopping factory" for every connection.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


@implementer(IAgentEndpointFactory)
class DirectEndpoints:
    """`Agent.usingEndpointFactory`'s factory: IP literals without a resolver, names through it."""

    def __init__(self, reactor: Any, *, timeout: float, tls_policy: Any = None) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return self.endpoint(uri.scheme, uri.host, uri.port)

    def endpoint(self, scheme: bytes, host: bytes, port: int) -> IStreamClientEndpoint:
        """Where to connect for a URL of `scheme` (http or https) on `host` and `port`."""
        try:
            name = host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {host!r} is not ASCII") from None
        endpoint = self._tcp(name, port)
        if scheme == b"http":
            return endpoint
        if scheme == b"https":
            return wrapClientTLS(self.tls_policy.creatorForNetloc(host, port), endpoint)
        raise SchemeNotSupported(f"Unsupported scheme: {scheme!r}")

    def _tcp(self, host: str, port: int) -> IStreamClientEndpoint:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if address.version == 4:
            return _Quiet(TCP4ClientEndpoint(self.reactor, str(address), port, timeout=self.timeout))
        return _Quiet(TCP6ClientEndpoint(self.reactor, str(address), port, timeout=self.timeout))


@implementer(IStreamClientEndpoint)
class _Quiet:
    """A TCP endpoint whose factories do not log their start and stop (one line each per connection)."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self.inner = inner

    def connect(self, protocolFactory: Any) -> Any:
        protocolFactory.noisy = False
        return self.inner.connect(protocolFactory)

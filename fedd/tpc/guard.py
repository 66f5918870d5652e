"""Which remote hosts a third-party copy may reach, checked on the *resolved* address.

A `COPY` names a URL chosen by the client: without a guard, fedd would fetch cloud metadata
(169.254.169.254), its own loopback services or a site's private network on anyone's behalf.
`HostPolicy` is the pure decision; `GuardedEndpointFactory` gives Twisted's `Agent` connections that
resolve the name without blocking, check every address and connect to the checked address itself
(so a second DNS answer cannot slip in between the check and the connection), for every hop of a
redirect too.

Patterns (`[tpc] allow_hosts`, repeatable; the default is `*`):

- `*`: any host name whose address is public;
- `name`, `*.domain` (optionally `:port`): host names whose address is public;
- `192.0.2.7`, `[2001:db8::1]` (optionally `:port`), `10.0.0.0/8`, `fd00::/8`: addresses or networks.
  Only these can allow a loopback, link-local, private or otherwise non-public address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAME_RE = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*$")


class HostRefused(Exception):
    """The remote host is not allowed (the message says why, safe to show to the client)."""


@dataclass(frozen=True)
class HostPattern:
    text: str
    name: str = ""  # "*", "host.example.org" or "*.example.org" (lower case)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches_name(self, host: str, port: int) -> bool:
        if not self.name or (self.port is not None and self.port != port):
            return False
        if self.name == "*":
            return True
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def matches_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return address in self.network


def parse_host_pattern(text: str) -> HostPattern:
    """One `allow_hosts` value; ValueError with a readable message when malformed."""
    value = text.strip()
    if value == "*":
        return HostPattern(value, name="*")
    if "/" in value:
        try:
            return HostPattern(value, network=ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"expected a network such as 10.0.0.0/8, got {text!r}") from None
    host, port = value, None
    bracketed = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?$", value)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
        port = int(port_text) if port_text else None
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"expected host:port, got {text!r}")
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _NAME_RE.match(host):
            raise ValueError(
                f"expected *, a host name, *.domain, an address or a network (optionally :port), got {text!r}"
            ) from None
        return HostPattern(value, name=host.lower(), port=port)
    return HostPattern(value, network=ipaddress.ip_network(address), port=port)


def special(address: IPAddress) -> str:
    """Why an address is not public ('' when it is): such addresses need an explicit pattern."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return ""


class HostPolicy:
    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = tuple(parse_host_pattern(p) for p in patterns)

    def refusal(self, host: str, port: int, address: str) -> str:
        """'' when fedd may connect to `address` (resolved from `host`) on `port`; else why not."""
        ip = ipaddress.ip_address(address)
        if ip.is_multicast or ip.is_unspecified:
            return f"{host} resolves to {address}, which is not a host address"
        if any(p.matches_address(ip, port) for p in self.patterns):
            return ""
        kind = special(ip)
        if kind:
            return f"{host} resolves to {address}, a {kind} address that [tpc] allow_hosts does not allow"
        if any(p.matches_name(host.lower().rstrip("."), port) for p in self.patterns):
            return ""
        return f"{host}:{port} is not in [tpc] allow_hosts"


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, IPv4Address | IPv6Address):
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class Guard:
    """Resolves host names without blocking (the reactor's resolver) and picks an allowed address."""

    def __init__(self, reactor: Any, policy: HostPolicy, timeout: float) -> None:
        self.reactor = reactor
        self.policy = policy
        self.timeout = timeout

    async def address(self, host: str, port: int) -> str:
        """An allowed address of `host`; HostRefused (or a resolution error) otherwise."""
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            receiver = _Addresses()
            self.reactor.nameResolver.resolveHostName(receiver, host, portNumber=port)
            d = receiver.done
            d.addTimeout(self.timeout, self.reactor)
            addresses = await d
        if not addresses:
            raise HostRefused(f"cannot resolve {host}")
        reasons = []
        for address in addresses:
            reason = self.policy.refusal(host, port, address)
            if not reason:
                return address
            reasons.append(reason)
        raise HostRefused(reasons[0])


@implementer(IStreamClientEndpoint)
class _GuardedEndpoint:
    def __init__(self, factory: GuardedEndpointFactory, uri: URI) -> None:
        self._factory = factory
        self._uri = uri

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        return ensureDeferred(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> Any:
        f = self._factory
        host = self._uri.host.decode("idna") if isinstance(self._uri.host, bytes) else self._uri.host
        port = self._uri.port
        address = await f.guard.address(host, port)
        endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint: Any = endpoint_type(f.reactor, address, port, timeout=f.connect_timeout)
        if self._uri.scheme == b"https":
            endpoint = wrapClientTLS(f.tls.creatorForNetloc(host.encode("idna"), port), endpoint)
        return await endpoint.connect(protocol_factory)


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """For `Agent.usingEndpointFactory`: every connection goes to an address the guard allowed."""

    def __init__(self, reactor: Any, guard: Guard, *, tls: Any = None, connect_timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.guard = guard
        self.tls = tls if tls is not None else BrowserLikePolicyForHTTPS()
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise HostRefused(f"unsupported scheme {uri.scheme.decode('latin-1')!r}")
        return _GuardedEndpoint(self, uri)

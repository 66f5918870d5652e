"""Twisted base classes with types: fedd subclasses `Service`, `MultiService`,
`StreamServerEndpointService`, `Protocol`, `Resource`, `Options`, `MemCacheProtocol`, `HTTPChannel`,
`Request` and `Site` imported from here, not from Twisted.

Twisted 26.10 leaves these unannotated (twisted.application entirely, `BaseProtocol.makeConnection`,
`Resource.__init__`, `usage.Options.__init__`, twisted.protocols.memcache, most of twisted.web's
channel, request and site), so under mypy's strict mode every `super().startService()`,
`setServiceParent(...)` or `proto.makeConnection(...)` on a subclass is a call to an untyped function.
At run time the names below are Twisted's own classes, unchanged; only the type checker sees the
signatures declared here, which follow the interfaces' documentation (IService, IServiceCollection,
IProtocol, IResource) and Twisted's code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.application import internet as _internet
    from twisted.application import service as _service
    from twisted.internet import protocol as _protocol
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import (
        IAddress,
        IDelayedCall,
        IProtocolFactory,
        IStreamServerEndpoint,
        ITransport,
    )
    from twisted.protocols import memcache as _memcache
    from twisted.python import usage as _usage
    from twisted.python.failure import Failure
    from twisted.web import http as _http
    from twisted.web import resource as _resource
    from twisted.web import server as _server

    class Service(_service.Service):
        running: int
        name: str | None
        parent: _service.IServiceCollection | None

        def setName(self, name: str) -> None: ...
        def setServiceParent(self, parent: _service.IServiceCollection) -> None: ...
        def disownServiceParent(self) -> Deferred[Any] | None: ...
        def privilegedStartService(self) -> None: ...
        def startService(self) -> None: ...
        def stopService(self) -> Deferred[Any] | None: ...

    class MultiService(Service, _service.MultiService):
        services: list[_service.IService]
        namedServices: dict[str, _service.IService]

        def __init__(self) -> None: ...
        def stopService(self) -> Deferred[Any]: ...
        def getServiceNamed(self, name: str) -> _service.IService: ...
        def __iter__(self) -> Iterator[_service.IService]: ...
        def addService(self, service: _service.IService) -> None: ...
        def removeService(self, service: _service.IService) -> Deferred[Any] | None: ...

    class StreamServerEndpointService(Service, _internet.StreamServerEndpointService):
        _raiseSynchronously: bool

        def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None: ...
        def stopService(self) -> Deferred[None]: ...

    class Protocol(_protocol.Protocol):
        def makeConnection(self, transport: ITransport) -> None: ...

    class Resource(_resource.Resource):
        def __init__(self) -> None: ...

    class Options(_usage.Options):
        def __init__(self) -> None: ...

    class MemCacheProtocol(_memcache.MemCacheProtocol):
        def __init__(self, timeOut: float = 60) -> None: ...
        def connectionMade(self) -> None: ...
        def connectionLost(self, reason: Failure = ...) -> None: ...
        def get(self, key: bytes, withIdentifier: bool = False) -> Deferred[tuple[int, bytes | None]]: ...
        def set(self, key: bytes, val: bytes, flags: int = 0, expireTime: int = 0) -> Deferred[bool]: ...
        def add(self, key: bytes, val: bytes, flags: int = 0, expireTime: int = 0) -> Deferred[bool]: ...
        def increment(self, key: bytes, val: int = 1) -> Deferred[int | bool]: ...  # False: NOT_FOUND
        def delete(self, key: bytes) -> Deferred[bool]: ...

    class HTTPChannel(_http.HTTPChannel):
        def __init__(self) -> None: ...
        def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall: ...
        def dataReceived(self, data: bytes) -> None: ...
        def lineReceived(self, line: bytes) -> None: ...
        def headerReceived(self, line: bytes) -> bool: ...
        def allHeadersReceived(self) -> None: ...
        def connectionLost(self, reason: Failure = ...) -> None: ...
        def loseConnection(self) -> None: ...

    class Request(_server.Request):
        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None: ...
        def finish(self) -> None: ...
        def connectionLost(self, reason: Failure) -> None: ...
        def render(self, resrc: _resource.IResource) -> None: ...
        def gotLength(self, length: int | None) -> None: ...
        def handleContentChunk(self, data: bytes) -> None: ...

    class Site(_server.Site):
        def __init__(
            self,
            resource: _resource.IResource,
            requestFactory: Callable[..., _server.Request] | None = None,
            *args: Any,
            parsePOSTFormSubmission: bool = True,
            **kwargs: Any,
        ) -> None: ...
        def buildProtocol(self, addr: IAddress | None) -> Any: ...  # a private channel wrapper, or None
        def getResourceFor(self, request: _server.Request) -> _resource.IResource: ...

else:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.application.service import MultiService, Service
    from twisted.internet.protocol import Protocol
    from twisted.protocols.memcache import MemCacheProtocol
    from twisted.python.usage import Options
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

__all__ = [
    "HTTPChannel",
    "MemCacheProtocol",
    "MultiService",
    "Options",
    "Protocol",
    "Request",
    "Resource",
    "Service",
    "Site",
    "StreamServerEndpointService",
]

"""Twisted base classes with types: fedd subclasses `Service`, `MultiService`,
`StreamServerEndpointService`, `Protocol`, `Resource`, `Options` and `MemCacheProtocol` imported from
here, not from Twisted.

Twisted 26.10 leaves these unannotated (twisted.application entirely, `BaseProtocol.makeConnection`,
`Resource.__init__`, `usage.Options.__init__`, twisted.protocols.memcache), so under mypy's strict
mode every `super().startService()`, `setServiceParent(...)` or `proto.makeConnection(...)` on a
subclass is a call to an untyped function.
At run time the names below are Twisted's own classes, unchanged; only the type checker sees the
signatures declared here, which follow the interfaces' documentation (IService, IServiceCollection,
IProtocol, IResource) and Twisted's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.application import internet as _internet
    from twisted.application import service as _service
    from twisted.internet import protocol as _protocol
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint, ITransport
    from twisted.protocols import memcache as _memcache
    from twisted.python import usage as _usage
    from twisted.python.failure import Failure
    from twisted.web import resource as _resource

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

else:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.application.service import MultiService, Service
    from twisted.internet.protocol import Protocol
    from twisted.protocols.memcache import MemCacheProtocol
    from twisted.python.usage import Options
    from twisted.web.resource import Resource

__all__ = [
    "MemCacheProtocol",
    "MultiService",
    "Options",
    "Protocol",
    "Resource",
    "Service",
    "StreamServerEndpointService",
]

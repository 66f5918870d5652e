"""Twisted base classes with types: fedd subclasses `Service`, `MultiService`,
`StreamServerEndpointService`, `Protocol`, `Resource` and `Options` imported from here, not from Twisted.

Twisted 26.10 leaves these unannotated (twisted.application entirely, `BaseProtocol.makeConnection`,
`Resource.__init__`, `usage.Options.__init__`), so under mypy's strict mode every `super().startService()`,
`setServiceParent(...)` or `proto.makeConnection(...)` on a subclass is a call to an untyped function.
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
    from twisted.python import usage as _usage
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

else:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.application.service import MultiService, Service
    from twisted.internet.protocol import Protocol
    from twisted.python.usage import Options
    from twisted.web.resource import Resource

__all__ = ["MultiService", "Options", "Protocol", "Resource", "Service", "StreamServerEndpointService"]

"""Helpers for the in-process tests (tests/test_*_inprocess.py): Deferred results without a reactor,
log capture, and connections completed by hand on a MemoryReactorClock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure

T = TypeVar("T")


def result(d: Deferred[T]) -> list[T | Failure]:
    """What `d` fired with so far: [] while it waits, [value] or [Failure] once fired (consumed)."""
    out: list[T | Failure] = []
    d.addBoth(out.append)
    return out


@contextmanager
def captured_logs() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def formats(events: list[LogEvent], word: str) -> list[str]:
    """The format strings of the logged events that contain `word`."""
    return [str(e["log_format"]) for e in events if word in str(e.get("log_format", ""))]


class Wire:
    """One client connection to a pretend server: what was written, and a way to answer."""

    def __init__(self, proto: IProtocol, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport

    def sent(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return bytes(out)

    def answer(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def drop(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def accept(reactor: MemoryReactorClock, index: int = -1) -> Wire:
    """Complete the connection attempt `index` of reactor.tcpClients."""
    factory: Any = reactor.tcpClients[index][2]
    proto = factory.buildProtocol(None)
    assert proto is not None
    transport = StringTransport()
    proto.makeConnection(transport)
    return Wire(proto, transport)


def refuse(reactor: MemoryReactorClock, index: int = -1) -> None:
    """Fail the connection attempt `index` as a refused connection."""
    factory: Any = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(reactor.connectors[index], Failure(ConnectionRefusedError()))

"""Helpers for the in-process tests (tests/test_*_inprocess.py): Deferred results without a reactor,
log capture, connections completed by hand on a MemoryReactorClock, and a MemoryReactorClock with a
thread pool that runs its work in the test's thread (at once, or when the test says)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


class InlinePool:
    """The reactor's thread pool, in the test's thread: each call runs at once (`immediate`), or
    waits in `work` until the test calls `run`."""

    def __init__(self, *, immediate: bool) -> None:
        self.immediate = immediate
        self.work: list[tuple[Callable[[bool, Any], None], Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], fn: Callable[..., Any], *args: Any
    ) -> None:
        self.work.append((on_result, fn, args))
        if self.immediate:
            self.run()

    def run(self) -> None:
        work, self.work = self.work, []
        for on_result, fn, args in work:
            try:
                value = fn(*args)
            except Exception:
                on_result(False, Failure())
            else:
                on_result(True, value)


class PoolReactor(MemoryReactorClock):
    """A MemoryReactorClock with a `InlinePool` as its thread pool; `callFromThread` runs at once."""

    def __init__(self, *, immediate: bool, start: float = 0.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # MemoryReactorClock.__init__ is unannotated
        self.advance(start)
        self.pool = InlinePool(immediate=immediate)

    def getThreadPool(self) -> InlinePool:
        return self.pool

    def callFromThread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)

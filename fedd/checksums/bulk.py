"""Moving and hashing bulk bytes at the speed of the wire: big socket reads, hashing off the reactor.

Measured here (CPython 3.11, 2 cores): one reactor thread that reads 64 KiB at a time, hashes each
chunk and writes it on tops out well below what two plain processes move between the same servers,
and `zlib.adler32` alone runs at ~650 MB/s. So:

- connections that carry whole files (TPC, checksum reads) read and send up to `BULK_READ` bytes a
  call instead of Twisted's 64 KiB (`widen`, through `BulkEndpointFactory`): a tenth of the reactor
  turns, calls and parser steps per byte;
- a slow hashing (the system zlib's Adler-32 at ~0.7 GB/s, MD5, SHA-2) runs in a thread of its own
  (`ThreadedHashing`): zlib and hashlib release the GIL on buffers over a few KiB, so it overlaps with
  the reactor's socket work on another core. zlib-ng's Adler-32 (several GB/s) stays on the reactor
  thread: handing 1 MiB chunks to a thread cost more than hashing them (checksum reads measured
  1.4-1.6 GB/s threaded, 1.6-1.9 GB/s inline, curl 2.0 GB/s). The thread's backlog
  is bounded: past `BACKLOG_HIGH` queued bytes the stream is paused (`on_backlog(True)`), and resumed
  below `BACKLOG_LOW`, so a slow hasher pushes back on the source like a slow destination does;
- glibc's allocator is told to keep 1 MiB buffers on its heap and not to hand freed memory back at
  once (`tune_allocator`): by default a 1 MiB `recv()` lands in freshly mapped pages, one page fault
  per 4 KiB inside the kernel's copy, which measured 3x slower than the copy itself (1.1 vs 3.3 GB/s
  on a socketpair). fedd keeps at most `TRIM_THRESHOLD` of freed memory instead of returning it.
"""

from __future__ import annotations

import ctypes
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from fedd.checksums.digest import Hasher

BULK_READ = 1 << 20  # bytes per recv()/send() on a bulk connection, and its write-buffer pause mark
BACKLOG_HIGH = 8 << 20  # bytes queued for the hashing thread before the stream is paused
BACKLOG_LOW = 2 << 20  # ... and resumed
INLINE_BELOW = 1 << 20  # smaller streams are hashed on the calling thread (no thread for them)
MMAP_THRESHOLD = 4 << 20  # blocks below this come from the heap (glibc's dynamic default starts at 128 KiB)
TRIM_THRESHOLD = 32 << 20  # freed memory at the heap's top kept for reuse, up to this
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Once per process, on glibc: bulk buffers from the heap, freed memory kept (see the module doc).
    True when applied; False elsewhere (musl, macOS), where nothing changes."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
    return _tuned


def widen(transport: Any, size: int = BULK_READ) -> None:
    """Let a connection read and send `size` bytes per call (Twisted: 64 KiB reads, 128 KiB sends).

    `bufferSize` (recv size and the write-buffer mark that pauses a producer) and `SEND_LIMIT` are
    public attributes of Twisted's `FileDescriptor`; under TLS the socket is the transport's transport."""
    for _ in range(3):
        if isinstance(transport, FileDescriptor):
            transport.bufferSize = size
            transport.SEND_LIMIT = size
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


@implementer(IStreamClientEndpoint)
class _WideEndpoint:
    def __init__(self, inner: IStreamClientEndpoint, size: int) -> None:
        self._inner = inner
        self._size = size

    def connect(self, factory: Any) -> Deferred[Any]:
        def wide(protocol: Any) -> Any:
            widen(getattr(protocol, "transport", None), self._size)
            return protocol

        factory.noisy = False  # no "Starting factory" log line for every copy and checksum read
        d: Deferred[Any] = self._inner.connect(factory)
        return d.addCallback(wide)


@implementer(IAgentEndpointFactory)
class BulkEndpointFactory:
    """For `Agent.usingEndpointFactory`: the connections of `inner` (or plain TCP/TLS ones, as
    Twisted's own Agent makes them) with big reads and sends."""

    def __init__(
        self,
        reactor: Any,
        *,
        inner: Any = None,
        tls: Any = None,
        connect_timeout: float = 30.0,
        size: int = BULK_READ,
    ) -> None:
        self._reactor = reactor
        self._inner = inner
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._size = size

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if self._inner is not None:
            endpoint: IStreamClientEndpoint = self._inner.endpointForURI(uri)
        else:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._connect_timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return _WideEndpoint(endpoint, self._size)


class InlineHashing:
    """The same interface as ThreadedHashing, hashing on the calling thread (small streams, tests)."""

    held = False

    def __init__(self, hashers: Sequence[Hasher]) -> None:
        self._hashers = list(hashers)

    def update(self, data: bytes) -> None:
        for h in self._hashers:
            h.update(data)

    def finish(self) -> Deferred[None]:
        return succeed(None)

    def cancel(self) -> None:
        pass


class ThreadedHashing:
    """Feed a byte stream, in order, to hashers running in a thread of their own.

    `update` (reactor thread) queues a chunk and never blocks; `finish` fires, on the reactor thread,
    once every queued chunk is hashed (or with the hasher's error); `cancel` drops what is queued and
    ends the thread. `on_backlog(True)` asks the caller to pause its source, `on_backlog(False)` that
    it may resume: called on the reactor thread, the latter possibly more than once."""

    def __init__(
        self,
        hashers: Sequence[Hasher],
        *,
        reactor: Any,
        on_backlog: Callable[[bool], None] | None = None,
        high: int = BACKLOG_HIGH,
        low: int = BACKLOG_LOW,
        name: str = "fedd-hash",
    ) -> None:
        self._hashers = list(hashers)
        self._reactor = reactor
        self._on_backlog = on_backlog
        self._high, self._low = high, low
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog = 0
        self.held = False  # the caller was asked to pause and not yet told to resume
        self._cancelled = False
        self._ended = False
        self._done: Deferred[None] = Deferred()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._backlog

    def update(self, data: bytes) -> None:
        if not data or self._ended:
            return
        with self._lock:
            self._backlog += len(data)
            hold = not self.held and self._backlog > self._high
            if hold:
                self.held = True
        self._queue.put(data)
        if hold and self._on_backlog is not None:
            self._on_backlog(True)

    def finish(self) -> Deferred[None]:
        """Fires when everything given to `update` is hashed."""
        if not self._ended:
            self._ended = True
            self._queue.put(None)
        return self._done

    def cancel(self) -> None:
        self._cancelled = True
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    # --- the hashing thread -----------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        while True:
            data = self._queue.get()
            if data is None:
                break
            if error is None and not self._cancelled:
                try:
                    for h in self._hashers:
                        h.update(data)
                except BaseException as exc:  # handed to the reactor thread through finish()
                    error = exc
            with self._lock:
                self._backlog -= len(data)
                release = self.held and self._backlog <= self._low
                if release:
                    self.held = False
            if release:
                self._reactor.callFromThread(self._released)
        self._reactor.callFromThread(self._finished, error)

    # --- back on the reactor thread ---------------------------------------------------------------

    def _released(self) -> None:
        if not self.held and self._on_backlog is not None and not self._cancelled:
            self._on_backlog(False)

    def _finished(self, error: BaseException | None) -> None:
        if self._done.called:
            return
        if error is not None:
            self._done.errback(error)
        else:
            self._done.callback(None)


def hashing_for(
    hashers: Sequence[Hasher],
    size: int | None,
    *,
    reactor: Any,
    on_backlog: Callable[[bool], None] | None = None,
    name: str = "fedd-hash",
) -> InlineHashing | ThreadedHashing:
    """A thread for a large stream or one of unknown size with a slow hasher among `hashers`; the
    calling thread for a small stream, or when every hasher is fast (zlib-ng's Adler-32)."""
    if (size is not None and size < INLINE_BELOW) or all(getattr(h, "fast", False) for h in hashers):
        return InlineHashing(hashers)
    return ThreadedHashing(hashers, reactor=reactor, on_backlog=on_backlog, name=name)

"""Stream one HTTP response body into another HTTP request, with flow control and an adler32.

`Pump` is the request body (`IBodyProducer`) of the upload; it takes its bytes from the download's
response (`IResponse.deliverBody`). When the upload's connection cannot take more, Twisted pauses the
pump, which pauses the download's transport: TCP pushes back on the source, and fedd holds no more
than a socket buffer or two of the file, whatever its size.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

_DONE = Failure(ResponseDone())


class SourceFailed(Exception):
    """The download broke off (the message is the reason, safe to show to the client)."""


@implementer(IBodyProducer)
class Pump:
    def __init__(self, response: IResponse, on_data: Callable[[int], None]) -> None:
        self._response = response
        self._on_data = on_data
        self.length: Any = response.length  # an int, or UNKNOWN_LENGTH (the upload is chunked then)
        self.bytes = 0
        self.adler = 1  # zlib.adler32 of nothing
        self.error = ""  # why the download failed, when it did
        self._consumer: Any = None
        self._transport: Any = None
        self._done: Deferred[None] | None = None
        self._stopped = False

    @property
    def expected(self) -> int | None:
        return None if self.length is UNKNOWN_LENGTH else int(self.length)

    @property
    def adler32(self) -> str:
        return f"{self.adler & 0xFFFFFFFF:08x}"

    # --- IBodyProducer: the upload asks -------------------------------------------------------

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        self._response.deliverBody(_Receiver(self))  # the download was paused until now
        return self._done

    def pauseProducing(self) -> None:
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._transport is not None and not self._stopped:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """The upload gave up (its connection failed or was cancelled): stop downloading."""
        self._stopped = True
        if self._transport is not None:
            self._transport.stopProducing()

    def abort(self) -> None:
        """Cancelled from outside (timeouts, client gone): stop the download and cut the upload's
        connection. Closing it gracefully is not enough: a transport whose producer is paused waits
        for it before closing, and the destination would wait for the rest of the body until its own
        timeout."""
        self.stopProducing()
        consumer = self._consumer
        transport = getattr(consumer, "_consumer", None) or getattr(consumer, "transport", None) or consumer
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()

    # --- the download delivers ------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        if self._stopped:
            return
        self.bytes += len(data)
        self.adler = zlib.adler32(data, self.adler)
        self._consumer.write(data)
        self._on_data(len(data))

    def _finished(self, reason: Failure) -> None:
        if self._stopped or self._done is None or self._done.called:
            return
        expected = self.expected
        if reason.check(ResponseDone, PotentialDataLoss) and (expected is None or expected == self.bytes):
            self._done.callback(None)
            return
        if expected is not None:
            self.error = f"the source closed the connection after {self.bytes} of {expected} bytes"
        else:
            self.error = f"the source connection broke after {self.bytes} bytes"
        self._done.errback(SourceFailed(self.error))


class _Receiver(Protocol):
    def __init__(self, pump: Pump) -> None:
        self.pump = pump

    def makeConnection(self, transport: Any) -> None:
        self.pump._transport = transport
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.pump._data(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.pump._finished(reason)


class Drain(Protocol):
    """Read an answer body we do not need, keeping at most `keep` bytes of it (for error messages)."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if len(self.data) < self.keep:
            self.data += data[: self.keep - len(self.data)]

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if not self.done.called:
            self.done.callback(self.data)

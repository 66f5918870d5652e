"""Stream one HTTP response body into another HTTP request, with flow control and an adler32.

`Pump` is the request body (`IBodyProducer`) of the upload; it takes its bytes from the download's
response (`IResponse.deliverBody`). When the upload's connection cannot take more, Twisted pauses the
pump, which pauses the download's transport: TCP pushes back on the source, and fedd holds no more
than a socket buffer or two of the file, whatever its size.

The adler32 is computed in a thread of its own (`fedd.checksums.bulk`): on the reactor thread it
took a third of a copy's time. The hashing thread's backlog pauses the download like a full upload
connection does, so memory stays bounded when hashing is the slower side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from fedd.checksums.bulk import InlineHashing, ThreadedHashing, hashing_for
from fedd.checksums.digest import Adler32
from fedd.twcompat import transport_under
from fedd.twtypes import Protocol

_DONE = Failure(ResponseDone())


class SourceFailed(Exception):
    """The download broke off (the message is the reason, safe to show to the client)."""


@implementer(IBodyProducer)
class Pump:
    def __init__(self, response: IResponse, on_data: Callable[[int], None], *, reactor: Any) -> None:
        self._response = response
        self._on_data = on_data
        self._reactor = reactor
        self.length: Any = response.length  # an int, or UNKNOWN_LENGTH (the upload is chunked then)
        self.bytes = 0
        self._adler = Adler32()
        self._hashing: InlineHashing | ThreadedHashing | None = None
        self.error = ""  # why the download failed, when it did
        self._consumer: Any = None
        self._transport: Any = None
        self._done: Deferred[None] | None = None
        self._stopped = False
        self._upload_full = False  # the upload's connection asked us to pause
        self._hash_full = False  # the hashing thread's backlog did
        self._reading = True

    @property
    def expected(self) -> int | None:
        return None if self.length is UNKNOWN_LENGTH else int(self.length)

    @property
    def adler32(self) -> str:
        """The adler32 of what went through: final once `checksum()` has fired."""
        return self._adler.hexdigest()

    def checksum(self) -> Deferred[str]:
        """The adler32 of the whole stream, once the hashing thread has caught up."""
        if self._hashing is None:
            return succeed(self.adler32)
        return self._hashing.finish().addCallback(lambda _: self.adler32)

    # --- IBodyProducer: the upload asks -------------------------------------------------------

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        self._hashing = hashing_for([self._adler], self.expected, reactor=self._reactor, on_backlog=self._backlog)
        self._response.deliverBody(_Receiver(self))  # the download was paused until now
        return self._done

    def pauseProducing(self) -> None:
        self._upload_full = True
        self._follow()

    def resumeProducing(self) -> None:
        self._upload_full = False
        self._follow()

    def _backlog(self, full: bool) -> None:
        self._hash_full = full
        self._follow()

    def _follow(self) -> None:
        """Read from the source only while both the upload and the hashing thread can take more."""
        reading = not (self._upload_full or self._hash_full)
        if self._transport is None or self._stopped or reading == self._reading:
            return
        self._reading = reading
        if reading:
            self._transport.resumeProducing()
        else:
            self._transport.pauseProducing()

    def stopProducing(self) -> None:
        """The upload gave up (its connection failed or was cancelled): stop downloading."""
        self._stopped = True
        if self._hashing is not None:
            self._hashing.cancel()
        if self._transport is not None:
            self._transport.stopProducing()

    def abort(self) -> None:
        """Cancelled from outside (timeouts, client gone): stop the download and cut the upload's
        connection. Closing it gracefully is not enough: a transport whose producer is paused waits
        for it before closing, and the destination would wait for the rest of the body until its own
        timeout."""
        self.stopProducing()
        consumer = self._consumer
        transport = transport_under(consumer)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()

    # --- the download delivers ------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        if self._stopped:
            return
        self.bytes += len(data)
        assert self._hashing is not None
        self._hashing.update(data)
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
        if not self.pump._reading:  # paused before the download was handed over
            transport.pauseProducing()

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

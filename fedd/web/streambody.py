"""A request body passed on as it arrives: the client's upload streamed to an endpoint (carried
uploads), with flow control end to end and nothing on disk.

The channel feeds the client's bytes in (`feed`, `end`); the endpoint's HTTP client pulls them as
an `IBodyProducer`. When the endpoint side is slower, or not connected yet, at most `high_water`
bytes are held: past it the client's socket is paused, and it is resumed when the held bytes fall
below `low_water`. So memory stays bounded whatever the size of the upload, and the client uploads
at the endpoint's pace.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from fedd.errors import ClientGone

HIGH_WATER = 4 << 20
LOW_WATER = 1 << 20


@implementer(IBodyProducer)
class StreamBody:
    def __init__(
        self, length: int, source: IPushProducer | None, *, high_water: int = HIGH_WATER, low_water: int = LOW_WATER
    ) -> None:
        self.length = length  # the client's Content-Length: also the endpoint's
        self._source = source  # the client's transport, paused and resumed for flow control
        self._high, self._low = high_water, low_water
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._paused = False  # the endpoint side asked us to stop writing
        self._source_paused = False
        self._ended = False
        self._failed: Failure | None = None
        self.received = 0
        self.sent = 0
        self.adler32 = 1  # of the bytes sent (zlib's running value): a carried upload's put-done says it

    # --- the client's side (called by the channel) ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._failed is not None or self._ended:
            return  # the upload already failed (or is over): what still comes is dropped
        self.received += len(data)
        if self._consumer is not None and not self._paused and not self._chunks:
            self._write(data)
            return
        self._chunks.append(data)
        self._held += len(data)
        if self._held >= self._high:
            self._pause_source()

    def end(self) -> None:
        """The whole body has arrived."""
        self._ended = True
        self._flush()

    def fail(self, reason: BaseException) -> None:
        """The client went away (or the upload was refused): the endpoint's request is aborted."""
        if self._failed is not None:
            return
        self._failed = Failure(reason)
        self._chunks.clear()
        self._held = 0
        self._resume_source()
        done, self._done = self._done, None
        if done is not None:
            done.errback(self._failed)

    @property
    def complete(self) -> bool:
        return self._ended

    @property
    def holding_client(self) -> bool:
        """The client's socket is paused by fedd (the endpoint side lags): its silence is fedd's."""
        return self._source_paused

    # --- the endpoint's side (IBodyProducer) --------------------------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        done = self._done
        if self._failed is not None:
            self._done = None
            done.errback(self._failed)
            return done
        self._flush()
        return done

    def pauseProducing(self) -> None:
        self._paused = True
        self._pause_source()

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()
        if self._held < self._low:
            self._resume_source()

    def stopProducing(self) -> None:
        """The endpoint's request ended (error, timeout, cancelled): nothing more is sent."""
        self._consumer = None
        self._done = None  # the HTTP client does not want this Deferred fired after stopProducing
        if self._failed is None:
            self._failed = Failure(ClientGone("the upload to the endpoint was stopped"))
        self._chunks.clear()
        self._held = 0
        self._resume_source()

    # --- internals ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self._consumer is not None
        self.sent += len(data)
        self.adler32 = zlib.adler32(data, self.adler32)
        self._consumer.write(data)

    def _flush(self) -> None:
        while self._chunks and self._consumer is not None and not self._paused and self._failed is None:
            data = self._chunks.popleft()
            self._held -= len(data)
            self._write(data)
        if self._held < self._low and not self._paused:
            self._resume_source()
        if self._ended and not self._chunks and self._done is not None and self._failed is None:
            done, self._done = self._done, None
            done.callback(None)

    def _pause_source(self) -> None:
        if not self._source_paused and self._source is not None:
            self._source_paused = True
            self._source.pauseProducing()

    def _resume_source(self) -> None:
        if self._source_paused and self._source is not None:
            self._source_paused = False
            self._source.resumeProducing()


def transport_of(channel: Any) -> IPushProducer | None:
    """The client connection's transport, as the producer to pause (None once it is gone)."""
    transport = getattr(channel, "transport", None)
    return transport if transport is not None and hasattr(transport, "pauseProducing") else None

"""The ceiling for a lean Twisted HTTP/1.1 server on one process: a `Protocol` parsing with httptools
and answering every request with a canned 302, keep-alive (what fedd's lean front could reach if it
did nothing but answer).

Usage: python3 benchmarks/lean_ceiling_302.py PORT LOCATION
"""

from __future__ import annotations

import sys

import httptools
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol


class Canned(Protocol):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.parser = httptools.HttpRequestParser(self)

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(self.answer)


class CannedFactory(Factory):
    def __init__(self, location: bytes) -> None:
        self.answer = b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location

    def buildProtocol(self, addr: object) -> Canned:
        return Canned(self.answer)


if __name__ == "__main__":
    from typing import Any, cast

    the_reactor = cast(Any, reactor)  # the global reactor is typed as a module-level object
    the_reactor.listenTCP(int(sys.argv[1]), CannedFactory(sys.argv[2].encode()), interface="127.0.0.1")
    the_reactor.run()

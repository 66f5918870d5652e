"""The ceiling for a Twisted program on one process: a bare twisted.web Resource answering 302.

Usage: python3 benchmarks/bare_twisted_302.py PORT LOCATION
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web import resource, server


class Redirect(resource.Resource):
    isLeaf = True

    def __init__(self, location: bytes) -> None:
        super().__init__()
        self.location = location

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", self.location)
        return b""


class QuietSite(server.Site):
    def log(self, request: object) -> None:  # fedd's default: no access log
        pass


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), QuietSite(Redirect(sys.argv[2].encode())), interface="127.0.0.1")
    reactor.run()

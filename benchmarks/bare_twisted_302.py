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
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web Resource.__init__ is unannotated
        self.location = location

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", self.location)
        return b""


class QuietSite(server.Site):
    def log(self, request: object) -> None:  # fedd's default: no access log
        pass


if __name__ == "__main__":
    # Site.__init__ is unannotated, and listenTCP's type rejects Twisted's own HTTPFactory (its protocol is
    # a proxyForInterface class that does not match the _ProtoWithFactory bound)
    site = QuietSite(Redirect(sys.argv[2].encode()))  # type: ignore[no-untyped-call]
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()

"""The supervisor's listening sockets (fedd.workers.sockets): the listen descriptions it opens for
its workers read as Twisted reads them, escapes included; what it cannot open is one clear error."""

from __future__ import annotations

import socket

import pytest
from twisted.python import usage

from fedd.workers.sockets import open_listener


@pytest.mark.parametrize(
    ("description", "family", "host"),
    [
        (r"tcp6:0:interface=\:\:1", socket.AF_INET6, "::1"),  # Twisted's escaped colons
        ("tcp:0:interface=127.0.0.1", socket.AF_INET, "127.0.0.1"),
        ("ssl:0:interface=127.0.0.1:backlog=5", socket.AF_INET, "127.0.0.1"),
        (r"tcp:0:interface=\:\:1", socket.AF_INET6, "::1"),  # an IPv6 interface on tcp:
    ],
)
def test_listen_descriptions_open_the_socket_twisted_would(description: str, family: int, host: str) -> None:
    sock = open_listener(description)
    try:
        assert sock.family == family and sock.getsockname()[0] == host
        assert sock.get_inheritable() and not sock.getblocking()
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ("unix:/tmp/x.sock", "with workers > 1 fedd listens on tcp:, tcp6:, ssl: or systemd: sockets"),
        ("tcp:0:interface=127.0.0.1:nodelay=1", "'nodelay=1' is not understood"),
        ("tcp:http", "port and backlog are numbers"),
    ],
)
def test_what_cannot_be_opened_is_one_usage_error(description: str, says: str) -> None:
    with pytest.raises(usage.UsageError, match=says.replace("(", r"\(")):
        open_listener(description)

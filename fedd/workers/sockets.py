"""Listening sockets for workers: opened (or taken from systemd) by the supervisor, adopted by workers.

The supervisor understands the listen descriptions that name one TCP socket: `tcp:PORT`,
`tcp6:PORT`, `ssl:PORT` (TLS is the worker's business: it wraps what it accepts) with `interface=`
and `backlog=`, and `systemd:domain=INET|INET6:index=N` (a socket systemd passed to the supervisor).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from fedd.twcompat import adopt_port_one_accept

DEFAULT_BACKLOG = 1024  # a burst of connects waits in the shared queue, not refused (Linux caps at somaxconn)


def _options(description: str, parts: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise usage.UsageError(f"listen {description!r}: with workers > 1, {part!r} is not understood")
        options[key] = value
    return options


def _split(rest: str) -> list[str]:
    """The colon-separated parts of a listen description, with Twisted's escapes (`interface=\\:\\:1`)."""
    parts, part, chars = [], [], iter(rest)
    for ch in chars:
        if ch == "\\":
            part.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(part))
            part = []
        else:
            part.append(ch)
    parts.append("".join(part))
    return parts


def open_listener(description: str, environ: Any = None) -> socket.socket:
    """A listening, inheritable socket for one `[server] listen` description (UsageError if it cannot be)."""
    env = os.environ if environ is None else environ
    kind, _, rest = description.partition(":")
    parts = _split(rest) if rest else []
    if kind == "systemd":
        options = _options(description, parts, ("domain", "index"))
        if env.get("LISTEN_PID") != str(os.getpid()):
            raise usage.UsageError(f"listen {description!r}: no sockets passed by systemd to this process")
        try:
            index = int(options.get("index", "0"))
            if not 0 <= index < int(env.get("LISTEN_FDS", "0")):
                raise ValueError
        except ValueError:
            raise usage.UsageError(f"listen {description!r}: no such inherited socket") from None
        sock = socket.socket(fileno=3 + index)
    elif kind in ("tcp", "tcp6", "ssl"):
        if not parts:
            raise usage.UsageError(f"listen {description!r}: expected {kind}:PORT")
        options = _options(description, parts[1:], ("interface", "backlog"))
        try:
            port = int(parts[0])
            backlog = int(options.get("backlog", DEFAULT_BACKLOG))
        except ValueError:
            raise usage.UsageError(f"listen {description!r}: port and backlog are numbers") from None
        interface = options.get("interface", "::" if kind == "tcp6" else "")
        family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((interface, port))
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise usage.UsageError(
                f"cannot listen on {interface or '*'}:{port} ({description}): {exc.strerror}"
            ) from None
    else:
        raise usage.UsageError(
            f"listen {description!r}: with workers > 1 fedd listens on tcp:, tcp6:, ssl: or systemd: sockets"
        )
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class AdoptedEndpoint:
    """An `IStreamServerEndpoint` over a listening socket inherited as a file descriptor; with `tls`,
    what it accepts is wrapped in TLS as an `ssl:` listener would be."""

    def __init__(self, reactor: Any, fd: int, tls: Any = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.tls = tls

    def listen(self, factory: Any) -> Deferred[Any]:
        with socket.socket(fileno=os.dup(self.fd)) as probe:
            family = probe.family
        wrapped = TLSMemoryBIOFactory(self.tls, False, factory) if self.tls is not None else factory
        port = adopt_port_one_accept(self.reactor, self.fd, family, wrapped)  # it dups the descriptor
        os.close(self.fd)
        return succeed(port)

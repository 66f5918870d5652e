"""The few private Twisted names fedd's HTTP front relies on, in one place (checked on Twisted 26.10).

twisted.web has no public way to (a) build the HTTP/1.1-or-HTTP/2 channel wrapper around a channel
subclass of our own, (b) reach the channel inside that wrapper, or (c) stop the channel from pausing
the transport while it is being closed. If a Twisted upgrade renames one of them,
tests/test_hostile_input.py::test_twisted_compat_names fails first, pointing here.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http


def wrap_channel(channel: http.HTTPChannel) -> Any:
    """The protocol `Site` hands to the reactor: Twisted's HTTP/1.1 / HTTP/2 switch around `channel`."""
    return http._GenericHTTPChannelProtocol(channel)


def inner_channel(protocol: Any) -> Any:
    """The `HTTPChannel` inside a protocol built by `wrap_channel` (the protocol itself otherwise)."""
    return getattr(protocol, "_channel", protocol)


def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """(method, target, version) of the request whose head the channel has just read, before its
    body: what the channel later passes to `Request.requestReceived` (kept there until then)."""
    return channel._command, channel._path, channel._version  # type: ignore[attr-defined]


def release_transport(channel: http.HTTPChannel) -> None:
    """Stop the channel from pausing/resuming the transport (it is about to be half-closed)."""
    channel._networkProducer.unregisterProducer()  # type: ignore[attr-defined]

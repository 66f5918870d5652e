"""What fedd notes on a twisted.web request (and its channel) while handling it, for the access log,
the metrics and later steps of the same request: one typed view instead of attributes set on
Twisted's objects unannounced. `noted(request).fedd_endpoint = ...` sets; readers use `getattr` with
a default (a request fedd did not build, in tests, has none of them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from fedd.auth.identity import Identity


class RequestNotes(Protocol):
    fedd_started: float  # when fedd began handling it (reactor seconds)
    fedd_via: tuple[str, ...]  # the fedd instances it went through (its Via header)
    fedd_identity: Identity  # who asked, once authenticated
    fedd_endpoint: str  # the endpoint it was sent to
    fedd_locate_ms: float  # how long finding the replica took
    fedd_base: str  # the public base URL it was addressed to


class ChannelNotes(Protocol):
    fedd_identity: Identity  # the TLS client's identity, worked out once per connection
    _fedd_linger: bool  # close after the answer, draining what the client still sends


def noted(request: Any) -> RequestNotes:
    return cast(RequestNotes, request)


def channel_noted(channel: Any) -> ChannelNotes:
    return cast(ChannelNotes, channel)

"""Who may do what, before any handler runs: the TLS client's identity (once per connection), bearer
tokens, the access rules, and federation loops (`Via`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.web import server

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.auth.policy import METHOD_LETTER
from fedd.auth.service import AuthService, Unauthenticated
from fedd.endpoints.dav import parse_via
from fedd.errors import Forbidden, LoopDetected, Unauthorized
from fedd.federation import MAX_HOPS
from fedd.tpc.wire import copy_letter
from fedd.web.notes import channel_noted, noted
from fedd.web.site import ALREADY_ANSWERED

log = Logger(namespace="fedd.web")


class Gate:
    def __init__(self, auth: AuthService | None, instance: str) -> None:
        self.auth = auth
        self.instance = instance  # this fedd's name in Via headers

    def check_loop(self, request: server.Request, values: Sequence[bytes]) -> None:
        """A request that already went through this instance, or through too many fedd instances,
        is answered at once (508) instead of being asked of the endpoints again: a federation loop
        (two fedd listing each other) must cost one request per instance, not a storm."""
        chain = parse_via([v.decode("latin-1") for v in values])
        if self.instance in chain:
            log.warn(
                "federation loop: {method} {path} already went through this instance ({chain})",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                chain=", ".join(chain),
            )
            raise LoopDetected("federation loop: this request already went through this fedd instance")
        if len(chain) >= MAX_HOPS:
            raise LoopDetected(f"federation loop: the request went through {len(chain)} fedd instances")
        noted(request).fedd_via = chain

    def certificate_identity(self, request: server.Request) -> Identity:
        """The TLS client's identity, worked out once per connection; anonymous without a certificate."""
        if self.auth is None or self.auth.tls is None or not request.isSecure():
            return ANONYMOUS
        channel = request.channel
        who: Identity | None = getattr(channel, "fedd_identity", None)
        if who is None:
            who = self.transport_identity(channel.transport if channel is not None else None)
            channel_noted(channel).fedd_identity = who
        return who

    def transport_identity(self, transport: Any) -> Identity:
        """The identity in a TLS connection's client certificate chain (anonymous without one)."""
        if self.auth is None or self.auth.tls is None:
            return ANONYMOUS
        handle = getattr(transport, "getHandle", None)
        chain = []
        if handle is not None:
            # on the server side OpenSSL's peer chain leaves out the leaf (the proxy): put it back
            leaf = handle().get_peer_certificate(as_cryptography=True)
            rest = handle().get_peer_cert_chain(as_cryptography=True) or []
            chain = ([leaf] if leaf is not None else []) + [c for c in rest if c != leaf]
        if not chain:
            return ANONYMOUS
        try:
            return self.auth.from_certificate(list(chain))
        except ValueError as exc:
            raise Forbidden(f"unusable client certificate: {exc}") from None

    def authorize(self, request: server.Request, who: Identity, path: str) -> None:
        """Raise Unauthorized/Forbidden unless `who` may do this request's method on `path`."""
        assert self.auth is not None
        noted(request).fedd_identity = who
        letter = copy_letter(request) if request.method == b"COPY" else METHOD_LETTER.get(request.method)
        if letter is None:
            return  # OPTIONS and unsupported methods: nothing to protect
        decision = self.auth.decide(who, letter, path)
        if decision.allowed:
            return
        log.info(
            "denied {method} {path} to {who}: {reason}",
            method=request.method.decode("latin-1"),
            path=path,
            who=who.label(),
            reason=decision.reason,
        )
        if who.anonymous:
            raise Unauthorized(f"authentication required: {decision.reason}")
        raise Forbidden(f"forbidden: {decision.reason}")

    async def with_token(
        self, request: server.Request, path: str, authorization: bytes, handler: Callable[[], bytes | int]
    ) -> bytes:
        """Verify a bearer token (its issuer's keys may need fetching), authorise, then run `handler`."""
        assert self.auth is not None
        try:
            who = await self.auth.from_token(authorization)
        except Unauthenticated as exc:
            log.info(
                "refused token for {method} {path}: {reason}",
                method=request.method.decode("latin-1"),
                path=path,
                reason=str(exc),
            )
            raise Unauthorized(str(exc)) from None
        self.authorize(request, who, path)
        result = handler()
        if result == server.NOT_DONE_YET:
            return ALREADY_ANSWERED
        assert isinstance(result, bytes)
        return result

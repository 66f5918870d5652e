"""How a request is answered: the one place where domain errors become HTTP statuses, and the small
per-request facts (client address, identity, `Via` chain) that the handlers share.

A handler either returns bytes at once or starts a coroutine with `start`; every coroutine ends in
`respond` or `fail`. Tracebacks go to the log, never to the client.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.errors import FeddError, MethodNotAllowed, NoReplicaAvailable, Unauthorized
from fedd.web.listing import MISSING_HEADER
from fedd.web.site import ALREADY_ANSWERED

log = Logger(namespace="fedd.web")
ALLOW = b"OPTIONS, GET, HEAD, PROPFIND, PUT, DELETE, MKCOL, MOVE, COPY"


def start(request: server.Request, coro: Coroutine[Any, Any, bytes]) -> int:
    """Run a handler coroutine; its bytes (or its error) answer the request."""
    d = ensureDeferred(coro)
    d.addCallbacks(respond, fail, callbackArgs=(request,), errbackArgs=(request,))
    return server.NOT_DONE_YET


def respond(body: bytes, request: server.Request) -> None:
    if body is ALREADY_ANSWERED or request.finished or request.channel is None:
        return
    if request.method != b"HEAD":
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
    request.finish()


def fail(failure: Failure, request: server.Request) -> None:
    if request.finished or request.channel is None:
        return
    if isinstance(failure.value, FeddError):
        body = error(request, failure.value)
    else:
        log.failure(
            "internal error on {method} {path}",
            failure,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
        )
        request.setResponseCode(500)
        body = b"internal error: the details are in the server log\n"
    respond(body, request)


def error(request: server.Request, exc: FeddError) -> bytes:
    """Status, headers and a short text body for a domain error."""
    request.setResponseCode(exc.status)
    if isinstance(exc, Unauthorized):
        request.setHeader(b"www-authenticate", b'Bearer realm="fedd"')
    if isinstance(exc, MethodNotAllowed):
        request.setHeader(b"allow", ALLOW)
    if isinstance(exc, NoReplicaAvailable):
        request.setHeader(b"retry-after", b"%d" % exc.retry_after)
        if exc.unreachable:
            request.setHeader(MISSING_HEADER, ", ".join(exc.unreachable).encode())
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (str(exc) + "\n").encode()


def client_ip(request: server.Request) -> str:
    addr = request.getClientAddress()
    return getattr(addr, "host", "") or ""


def identity(request: server.Request) -> Identity:
    """Who the request was authorised as (anonymous without [auth])."""
    who: Identity = getattr(request, "fedd_identity", ANONYMOUS)
    return who


def via(request: server.Request) -> tuple[str, ...]:
    """The fedd instances the request came through (its checked `Via` chain)."""
    chain: tuple[str, ...] = getattr(request, "fedd_via", ())
    return chain

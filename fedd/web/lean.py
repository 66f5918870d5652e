"""The lean front: cached redirects answered without building a twisted.web request.

Every connection starts here. Each request head is cut at its blank line and parsed by `httptools`
(llhttp; fedd.web.leanwire); a GET or HEAD of a plain federation path that the resource can answer
from a fresh redirect plan (`FeddResource.hot_plan`: authorised, no body, no `Via`, no checksum or
metalink wish; a query string is ignored, as twisted.web's reads ignore it, but `metalink`) is
answered at once with the plan's prebuilt headers, counted in the metrics, the access log and the
`get-redirect` event like any other. Keep-alive, HTTP/1.0, `Connection: close` and pipelined
requests are handled here (the hot answers to requests that arrived together go out in one write).

Anything else -- another method, a body, a bearer token, an odd or malformed head, a head that is
too big -- and the connection is handed to twisted.web's channel (fedd.web.channel) for the rest of
its life: the bytes of that request (and whatever followed) are replayed into it unchanged, so every
rule of the full front applies there (strict heads, 400/408/413/431 answers, an HTTP/1.1 request
without Host, uploads answered before their body, the drain). The lean front never answers an error
itself except the 408 of its deadlines (fedd.web.deadlines) to a head begun and left unfinished.

While this front holds a connection (between requests, and while it answers them), its own deadlines
run: a head unfinished after the site's `header_timeout` gets 408; a connection silent for the
site's `timeOut` (`[server] idle_timeout`) is closed, with a 408 if a head is begun. twisted.web's
channel has its idle timer off meanwhile, and on while it has the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.errors import FeddError
from fedd.twcompat import inner_channel, write_now
from fedd.web.accesslog import entry as access_entry
from fedd.web.channel import REQUEST_TIMEOUT
from fedd.web.deadlines import Deadlines
from fedd.web.leanwire import BORROW, DATE, MAX_HEAD, HotRequest, answer_parts, parse_head

log = Logger(namespace="fedd.web")
__all__ = ["MAX_HEAD", "LeanChannel"]


class LeanChannel(Protocol):
    """One client connection, answered here while its requests are plan-cache hits."""

    def __init__(self, site: Any, full_channel: Callable[[], Any], on_lost: Callable[[], None]) -> None:
        self.site = site
        self._on_lost = on_lost  # the site's connection count
        self._full_channel = full_channel  # builds twisted.web's channel, as the site would
        self.inner: Any = None  # twisted.web's channel, once a request needed it
        self._handed_over = False  # the channel reads the rest of the connection
        self._waiting = False  # for the channel's answer to a request it was lent
        self._buf = bytearray()
        self._secure = False
        self._client = ""
        self._who: Identity | None = None
        self._deadlines = Deadlines(
            site.reactor, header_timeout=site.header_timeout, idle_timeout=site.timeOut, expire=self._expired
        )
        self._closing = False
        self._last_head = b""  # the last head answered here, parsed: clients repeat themselves
        self._last_request: HotRequest | None = None
        self._last_plan: Any = None  # and the plan it was answered from, with the answer's bytes
        self._last_parts = (b"", b"")
        self._write: Callable[[bytes], None] = lambda data: None  # the transport's, at connectionMade

    # --- the connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self._secure = ISSLTransport.providedBy(transport)
        self._write = write_now(transport)
        peer = transport.getPeer()
        self._client = getattr(peer, "host", "") or ""
        self._deadlines.read()

    def dataReceived(self, data: bytes) -> None:
        if self._handed_over:
            self.inner.dataReceived(data)
            return
        self._buf += data
        self._serve()

    def _serve(self) -> None:
        """Answer the complete request heads in the buffer, in order, until one must wait. The hot
        answers to pipelined requests that arrived together go out in one write (before anything the
        full front writes, so the order holds)."""
        transport = self.transport
        buf = self._buf
        answers: list[bytes] = []
        while buf and not self._waiting and not self._closing and transport is not None:
            if getattr(transport, "disconnecting", False):
                break  # the full front closes the connection after its answer (Connection: close, an error)
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end + 4 > MAX_HEAD:
                bare_cr = buf.count(b"\r") - buf.endswith(b"\r") != buf.count(b"\r\n")
                if len(buf) > MAX_HEAD or bare_cr or buf.count(b"\n") != buf.count(b"\r\n"):
                    self._send(answers)
                    self._hand_over()  # too big, or bare CR/LF line ends: the full front's answer
                    return
                self._send(answers)
                self._deadlines.read()
                self._deadlines.head_begun()
                return
            head = bytes(buf[: end + 4])
            answer = self._answer(head)
            if answer is None:
                self._send(answers)
                self._hand_over()
                return
            del buf[: end + 4]
            self._deadlines.head_done()  # a head that follows has its own deadline, from this read
            if answer is BORROW:
                self._send(answers)
                self._borrow(head)
                continue
            answers.append(answer)
            if self._closing:
                self._send(answers)
                self._deadlines.stop()
                transport.loseConnection()
                return
        self._send(answers)
        if self._waiting:
            self._deadlines.stop()  # the full front answers a request: no idle time until it is done
        elif not self._closing:
            self._deadlines.read()

    def _send(self, answers: list[bytes]) -> None:
        if answers:
            self._write(answers[0] if len(answers) == 1 else b"".join(answers))
            answers.clear()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._deadlines.stop()
        self._closing = True
        self._on_lost()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def open_requests(self) -> list[Any]:
        """Requests received and not answered yet (the drain waits for them): only the full front's."""
        if self.inner is None:
            return []
        channel = getattr(self.inner, "_channel", self.inner)
        return list(getattr(channel, "requests", ()))

    # --- one request ---------------------------------------------------------------------------

    def _answer(self, head: bytes) -> bytes | None:
        """The whole response to a hot request; `BORROW` for another request without a body (the
        full front answers it, then this connection comes back here); None to hand the connection
        over for good (a body follows, or the head is one the full front refuses)."""
        request = self._last_request
        if head != self._last_head or request is None:  # else a client asking again the same way
            parsed = parse_head(head)
            if not isinstance(parsed, HotRequest):
                return parsed  # BORROW or None
            request = parsed
            self._last_head, self._last_request = head, request
        resource = self.site.resource
        try:
            who = self._identity()
            hot = resource.hot_plan(request.method, request.path, request.host, self._secure, self._client, who)
        except FeddError:
            return BORROW  # the full front says why (an unusable certificate: 403)
        if hot is None:
            return BORROW
        plan = hot[0]
        draining = self.site.draining
        self._closing = not request.keep or draining
        resource.reads.announce(plan, path=request.path, method=request.method, client=self._client, who=who)
        self._count(request, plan.code, plan.endpoint, who)
        if plan is not self._last_plan or draining:
            self._last_plan = plan if not draining else None
            self._last_parts = answer_parts(plan, request, keep=request.keep and not draining)
        before, after = self._last_parts
        return before + DATE.value() + after

    def _identity(self) -> Identity:
        if self._who is None:
            gate = self.site.resource.gate
            self._who = gate.transport_identity(self.transport) if self._secure else ANONYMOUS
        return self._who

    def _count(self, request: HotRequest, code: int, endpoint: str, who: Identity) -> None:
        site = self.site
        method = request.method
        site.hot_answers += 1
        if site.metrics is not None:
            site.metrics.request(method, code, 0.0)
        if site.access_file is not None and site.clock is not None:
            now = site.clock.seconds()
            site.access_file.write(
                access_entry(
                    now=now,
                    started=now,
                    client=self._client,
                    who=who,
                    method=method,
                    path=request.path,
                    status=code,
                    sent=0,
                    endpoint=endpoint,
                    locate_ms=0.0,
                    agent=request.agent,
                )
            )
        if site.access_log_enabled:
            log.info(
                "{client} {method} {uri} {code}",
                client=self._client or "-",
                method=method.decode("latin-1"),
                uri=request.url.decode("latin-1"),
                code=code,
            )

    # --- the full front ------------------------------------------------------------------------

    def _channel(self) -> Any:
        if self.inner is None:
            self.inner = self._full_channel()
            self.inner.makeConnection(self.transport)
        else:  # its idle timer was off while this front held the connection
            inner_channel(self.inner).setTimeout(self.site.timeOut)
        return self.inner

    def _borrow(self, head: bytes) -> None:
        """The full front answers this request (it has no body); the connection comes back here
        once the answer is complete, so later requests can be hot again."""
        inner = self._channel()
        inner.dataReceived(head)
        waiting = self.open_requests()
        if waiting and not self._handed_over:
            self._waiting = True
            waiting[-1].notifyFinish().addBoth(self._answered)
        else:
            self._take_back()  # answered at once

    def _answered(self, _: object) -> None:
        self._waiting = False
        if self.transport is not None and not self._handed_over:
            self._take_back()
            self.site.reactor.callLater(0, self._serve)  # not inside the full front's finish()

    def _take_back(self) -> None:
        """The connection is this front's again, and so is its idle time: twisted.web's channel
        would otherwise cut it `timeOut` after the last byte it read, however busy it is here."""
        inner_channel(self.inner).setTimeout(None)

    def _hand_over(self) -> None:
        """From now on twisted.web's channel reads this connection, starting with the request at the
        head of the buffer (and whatever follows)."""
        self._deadlines.stop()
        inner = self._channel()
        self._handed_over = True
        pending, self._buf = bytes(self._buf), bytearray()
        if pending:
            inner.dataReceived(pending)

    # --- a deadline passed (fedd.web.deadlines) ----------------------------------------------------

    def _expired(self) -> None:
        """Closed, with a 408 if a head is begun (a slow head, or one left unfinished); without a
        word between requests."""
        if self._handed_over or self._waiting or self._closing:
            return
        self._closing = True
        self._deadlines.stop()
        transport = self.transport
        if transport is not None:
            if self._buf:
                transport.write(REQUEST_TIMEOUT)
            transport.loseConnection()

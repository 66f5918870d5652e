"""Starting and stopping the web front: a clear error for a port in use, a bounded drain on shutdown.

- `Listener` is a `StreamServerEndpointService` that turns "cannot listen" into one log line naming
  the address and a non-zero exit, instead of a traceback from deep inside twistd.
- `WebService` holds the listeners. Stopping it first gives load balancers `notice` seconds
  (`[server] drain_notice`) in which the site is draining (the health URL answers 503, each
  connection closes after its answer) but still accepts connections; then it stops listening,
  asks the site to close each connection after its current answer, and waits until the site has no open request or until
  `drain_timeout` seconds have passed (whichever comes first); then the reactor closes what is left.
- `DrainFirst` is the top `MultiService`: on shutdown it stops its `web` child first and the others
  (endpoint clients, health, events, ...) only after the drain, so in-flight requests still have them.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from fedd.twcompat import raise_listen_errors
from fedd.twtypes import MultiService, Service, StreamServerEndpointService

log = Logger(namespace="fedd.web")
POLL_SECONDS = 0.05


class DrainableSite(Protocol):
    """What `WebService` needs of the site: its open requests, and a switch to stop keep-alive."""

    @property
    def open_requests(self) -> Any: ...  # a sized collection

    def drain(self) -> None: ...


class ListenFailed(SystemExit):
    """Raised out of twistd's start-up (a `SystemExit`: no traceback, exit status 1)."""


def cannot_listen_message(description: str, exc: CannotListenError) -> str:
    reason = exc.socketError
    text = getattr(reason, "strerror", None) or str(reason)
    where = f"{exc.interface or '*'}:{exc.port}"
    return f"fedd: cannot listen on {where} ({description}): {text}"


class Listener(StreamServerEndpointService):
    """One listening endpoint; failing to bind stops start-up with a one-line error naming the port."""

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        raise_listen_errors(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as exc:
            message = cannot_listen_message(self.description, exc)
            log.critical("{message}", message=message)
            raise ListenFailed(1) from None


class WebService(MultiService):
    """The `web` service: the listeners, and the drain of open requests when it stops."""

    def __init__(self, site: DrainableSite, *, clock: IReactorTime, drain_timeout: float, notice: float = 0.0) -> None:
        super().__init__()
        self.setName("web")
        self.site = site
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.notice = notice

    def stopService(self) -> Deferred[None]:
        if self.notice <= 0:
            return self._stop()
        self.site.drain()  # the health URL says 503 from now on: load balancers take this host out
        log.info("draining: still accepting connections for {notice:g}s (drain_notice)", notice=self.notice)
        return deferLater(self.clock, self.notice, lambda: None).addCallback(lambda _: self._stop())

    def _stop(self) -> Deferred[None]:
        listeners = super().stopService()  # stop accepting connections first
        self.site.drain()
        waiting = len(self.site.open_requests)
        if waiting:
            log.info("draining {n} open request(s) for at most {timeout:g}s", n=waiting, timeout=self.drain_timeout)
        done: Deferred[None] = Deferred()
        deadline = self.clock.seconds() + self.drain_timeout

        def check() -> None:
            left = len(self.site.open_requests)
            if left and self.clock.seconds() < deadline:
                return
            if left:
                log.warn("drain timeout: {n} request(s) still open are cut off", n=left)
            loop.stop()
            done.callback(None)

        loop = LoopingCall(check)
        loop.clock = self.clock
        loop.start(POLL_SECONDS, now=True).addErrback(lambda f: log.failure("drain check failed", f))
        return DeferredList([listeners, done], consumeErrors=True).addCallback(lambda _: None)


class DrainFirst(MultiService):
    """The top service: stops `web` (and its drain) before every other child."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        web = self.namedServices.get("web")
        first: Deferred[Any] = maybeDeferred(web.stopService) if web is not None and web.running else succeed(None)

        def the_rest(_: object) -> Deferred[Any]:
            others = [s for s in reversed(list(self)) if s is not web]
            return DeferredList([maybeDeferred(s.stopService) for s in others], consumeErrors=True)

        first.addErrback(lambda f: log.failure("stopping the web service failed", f))
        return first.addCallback(the_rest).addCallback(lambda _: None)

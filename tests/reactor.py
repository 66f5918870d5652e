"""Run Twisted code from plain pytest tests: the global reactor turns in a daemon thread for the session.

Used only by tests that talk to real servers in-process (endpoint classes against Ceph/Apache).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread

T = TypeVar("T")
_lock = threading.Lock()
_thread: threading.Thread | None = None


def _ensure_running() -> None:
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True, name="reactor"
            )
            _thread.start()


def call(fn: Callable[..., Any], *args: Any, timeout: float = 60.0, **kwargs: Any) -> Any:
    """Call `fn` in the reactor thread; wait for its Deferred/coroutine; return or raise its result."""
    _ensure_running()

    def run() -> Deferred[Any]:
        result = fn(*args, **kwargs)
        d = ensureDeferred(result) if not isinstance(result, Deferred) and hasattr(result, "send") else result
        if isinstance(d, Deferred):
            d.addTimeout(timeout, reactor)
        return d

    return blockingCallFromThread(IReactorFromThreads(reactor), run)


def the_reactor() -> Any:
    _ensure_running()
    return reactor

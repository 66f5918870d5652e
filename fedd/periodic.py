"""Background loops that survive their errors.

A `twisted.internet.task.LoopingCall` stops for good the first time its function raises or its
Deferred fails: one unexpected error in a flush, a poll or a probe round would silently end that
duty until the next restart. `Periodic` runs `work` every `interval` seconds on the given clock, logs
an error of one run (with the loop's name) and runs again at the next interval. Like LoopingCall it
waits for a Deferred that `work` returns before counting the next interval, so rounds never pile up.
`retime` applies a reloaded interval: a round under way finishes, the next comes one new interval
from now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="fedd")


class Periodic:
    def __init__(self, clock: Any, work: Callable[[], object], what: str) -> None:
        self.clock = clock
        self.work = work
        self.what = what  # for the log: "state poll", "access log flush", ...
        self.errors = 0
        self._loop: LoopingCall | None = None

    def start(self, interval: float, *, now: bool = True) -> Periodic:
        self.stop()
        loop = LoopingCall(self._run)
        loop.clock = self.clock
        self._loop = loop
        loop.start(interval, now=now).addErrback(lambda f: log.failure("{what} loop stopped", f, what=self.what))
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    @property
    def interval(self) -> float | None:
        """The period in force (None when not running)."""
        return self._loop.interval if self._loop is not None and self._loop.running else None

    def retime(self, interval: float, setting: str) -> bool:
        """Run every `interval` seconds from now on (a reload changed `setting`, e.g. "[space]
        interval"); True when it changed."""
        old = self.interval
        if old is None or old == interval:
            return False
        log.info("reload: {setting} {old:g}s -> {new:g}s", setting=setting, old=old, new=interval)
        self.start(interval, now=False)
        return True

    def _run(self) -> Deferred[None] | None:
        try:
            result = self.work()
        except Exception:
            self._failed()
            return None
        if isinstance(result, Deferred):
            return result.addCallbacks(lambda _: None, lambda f: self._failed(f))
        return None

    def _failed(self, failure: Any = None) -> None:
        self.errors += 1
        log.failure("{what} failed; it runs again at its next interval", failure, what=self.what)

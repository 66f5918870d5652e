"""fedd.periodic: a background loop outlives an error of one run (a LoopingCall would stop for good)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from fedd.periodic import Periodic
from tests.inprocess import captured_logs


def test_a_run_that_raises_does_not_end_the_loop() -> None:
    clock = Clock()
    runs: list[float] = []

    def work() -> None:
        runs.append(clock.seconds())
        if len(runs) == 2:
            raise OSError("disk full")

    with captured_logs() as logs:
        loop = Periodic(clock, work, "test flush").start(1.0)
        for _ in range(4):
            clock.advance(1.0)
    assert runs == [0.0, 1.0, 2.0, 3.0, 4.0] and loop.errors == 1 and loop.running
    assert [e["what"] for e in logs if "runs again" in str(e.get("log_format"))] == ["test flush"]
    loop.stop()
    clock.advance(5)
    assert len(runs) == 5 and not loop.running and loop.interval is None


def test_a_failed_deferred_does_not_end_the_loop_and_rounds_do_not_pile_up() -> None:
    clock = Clock()
    pending: list[Deferred[None]] = []
    calls = 0

    def work() -> Deferred[None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return fail(ValueError("endpoint said nonsense"))
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    with captured_logs():
        loop = Periodic(clock, work, "test round").start(1.0)
        clock.advance(1.0)  # second run: waits on its Deferred
        clock.advance(5.0)
        assert calls == 2  # no new round while one is under way
        pending[0].callback(None)
        clock.advance(1.0)
    assert calls == 3 and loop.errors == 1 and loop.running


def test_retime_applies_a_new_interval_from_now() -> None:
    clock = Clock()
    runs: list[float] = []
    loop = Periodic(clock, lambda: runs.append(clock.seconds()), "test poll").start(10.0)
    clock.advance(3)
    assert not loop.retime(10.0, "[test] interval")  # unchanged
    assert loop.retime(2.0, "[test] interval") and loop.interval == 2.0
    clock.advance(2)
    assert runs == [0.0, 5.0]
    loop.stop()
    assert not loop.retime(5.0, "[test] interval")  # stopped: nothing to retime

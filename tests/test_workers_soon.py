"""CountersWriter.soon: a worker writes its counters file at the reactor's next turn when a number the
other workers add up must not be read late (a third-party copy that ended), once for many calls."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from fedd.workers.shared import CounterFiles, CountersWriter, read_json


def test_soon_writes_once_at_the_next_turn_and_not_after_stop(tmp_path: Path) -> None:
    clock = Clock()
    value = {"n": 0}
    files = CounterFiles(tmp_path, 4242, lambda: dict(value), clock=clock)
    writer = CountersWriter(files, clock)
    writer.startService()  # writes at once, then every second
    assert read_json(files.own) == {"n": 0, "writer": files.writer}
    value["n"] = 1
    writer.soon()
    writer.soon()
    assert read_json(files.own) == {"n": 0, "writer": files.writer}  # not inside the caller
    assert len(clock.getDelayedCalls()) == 2  # the one-second loop and one soon write
    clock.advance(0)
    assert read_json(files.own) == {"n": 1, "writer": files.writer}
    assert len(clock.getDelayedCalls()) == 1
    value["n"] = 2
    writer.soon()
    writer.stopService()  # writes the last numbers itself; the pending soon write is cancelled
    assert read_json(files.own) == {"n": 2, "writer": files.writer} and clock.getDelayedCalls() == []
    writer.soon()  # a stopped writer schedules nothing
    assert clock.getDelayedCalls() == []

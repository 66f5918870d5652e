"""Confirmed uploads (issue 17): what taking an upload for confirmation costs on the PUT path, and the
memory of a full table, in process (a Clock, fedd.testing's endpoint; no network).

- `expect()` per upload (what a 307 for a PUT adds), against a bare dict insert of the same key as a
  floor, both timed in the same run (ratio reported);
- bytes per pending upload at `max_pending` uploads (tracemalloc);
- a burst of uploads over the bound: the table stays at its bound, the rest are counted.

Run: .venv/bin/python benchmarks/confirm_table.py [N]
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from fedd.config.schema import ConfirmConfig
from fedd.confirm.service import ConfirmService
from fedd.namespace import Target
from fedd.testing import FakeEndpoint


class _Fed:
    def __init__(self, endpoint: FakeEndpoint) -> None:
        self.endpoints = {endpoint.id: endpoint}

    def mapped(self, path: str) -> list[Target]:
        return [Target("e", path)]

    def forget(self, path: str) -> None:
        pass


def _service(limit: int) -> ConfirmService:
    clock = Clock()
    events: list[Any] = []
    s = ConfirmService(
        ConfirmConfig(max_pending=limit),
        federation=_Fed(FakeEndpoint("e", clock=clock)),
        clock=clock,
        emit=lambda t, p, i=None: events.append(t),
    )
    s.startService()
    return s


def main(n: int) -> None:
    paths = [f"/atlas/data/run{i // 1000}/file{i}.root" for i in range(n)]
    s = _service(n)
    start = time.perf_counter()
    for i, path in enumerate(paths):
        s.expect(path, "e", i)
    took = time.perf_counter() - start
    floor: dict[tuple[str, str], int] = {}
    start = time.perf_counter()
    for i, path in enumerate(paths):
        floor[("e", path)] = i
    bare = time.perf_counter() - start
    per, floor_per = took / n * 1e6, bare / n * 1e6
    print(f"expect(): {per:.2f} us per upload; dict insert {floor_per:.3f} us; ratio {took / bare:.0f}x")

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    s2 = _service(n)
    for i, path in enumerate(paths):
        s2.expect(path, "e", i)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"memory: {used / n:.0f} bytes per pending upload ({used / 2**20:.1f} MiB for {n}, paths included)")

    s3 = _service(n // 10)
    for i, path in enumerate(paths):
        s3.expect(path, "e", i)
    print(f"burst of {n} over a bound of {n // 10}: {len(s3.table)} pending, {s3.counts['untracked']} untracked")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)

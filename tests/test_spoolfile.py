"""fedd.events.spoolfile: the one spool every worker of a host appends to, with writer processes.

Two processes append batches to one spool that rotates every few batches: every line is whole,
every batch's lines are together, and each rotation happened once (the rotated file is a full
generation: larger than the limit, and within it before its last batch). A writer waits while the
lock beside the spool is held (by the test, as another worker would hold it), then writes. The
journals beside the spool: a starting worker never replays a live one's, and replays a dead one's.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedd.events.journal import Journal, read_segments
from fedd.events.spoolfile import LOCK_SUFFIX, append_batch
from tests.daemon import wait_for

MAX_BYTES = 4000
BATCHES = 150
BATCH = 4

_WRITER = """
import json, sys
from fedd.events.spoolfile import append_batch
path, name, batches, per, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
for b in range(batches):
    bodies = [json.dumps({"w": name, "b": b, "i": i, "pad": "x" * 40}).encode() for i in range(per)]
    append_batch(path, max_bytes, bodies)
"""


def _writer(path: Path, name: str, batches: int, per: int = BATCH) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = [sys.executable, "-c", _WRITER, str(path), name, str(batches), str(per), str(MAX_BYTES)]
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE)


def _batches(path: Path) -> list[tuple[str, int, int]]:
    """The file's batches in order: (writer, batch number, bytes); fails on a torn or split batch."""
    found: list[tuple[str, int, int]] = []
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends inside a line"
    pos = 0
    body = lines[:-1]
    while pos < len(body):
        first = json.loads(body[pos])
        size = 0
        for i in range(BATCH):
            line = json.loads(body[pos + i])  # a torn line fails here
            assert (line["w"], line["b"], line["i"]) == (first["w"], first["b"], i), f"batch split at line {pos + i}"
            size += len(body[pos + i]) + 1
        found.append((first["w"], first["b"], size))
        pos += BATCH
    return found


def test_two_writer_processes_share_one_spool_and_rotate_once_each_time(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    writers = [_writer(spool, name, BATCHES) for name in ("a", "b")]
    for proc in writers:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    rotated = Path(f"{spool}.1")
    current, old = _batches(spool), _batches(rotated)
    # a generation takes batches until it is past the limit, and is rotated before the next batch
    # lands: a second rotation by the other writer would leave a short file as `.1`
    old_size = sum(size for *_, size in old)
    assert old_size > MAX_BYTES and old_size - old[-1][2] <= MAX_BYTES
    assert sum(size for *_, size in current[:-1]) <= MAX_BYTES
    # each writer's batches in its own order, across the two generations kept, none twice; the
    # last batch written is the file's last (older generations are gone: one rotated file is kept)
    for name in ("a", "b"):
        numbers = [b for w, b, _ in old + current if w == name]
        assert numbers == sorted(set(numbers))
    assert current[-1][1] == BATCHES - 1


def _blocked_on_a_lock(pid: int) -> bool:
    """`pid` waits for an flock (a `->` line of /proc/locks names the waiting process)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and "FLOCK" in line and line.split()[-4] == str(pid) for line in lines)


def test_a_writer_waits_for_the_lock_beside_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    append_batch(str(spool), MAX_BYTES, [b'{"first": 1}'])
    assert Path(f"{spool}{LOCK_SUFFIX}").exists() and spool.read_bytes() == b'{"first": 1}\n'
    lock = os.open(f"{spool}{LOCK_SUFFIX}", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another worker in the middle of its batch
        proc = _writer(spool, "a", 1)
        wait_for(lambda: _blocked_on_a_lock(proc.pid) or proc.poll() is not None, 20, "the writer waiting for the lock")
        assert proc.poll() is None and spool.read_bytes() == b'{"first": 1}\n'
    finally:
        os.close(lock)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    first, *rest = spool.read_bytes().splitlines()
    assert first == b'{"first": 1}' and [json.loads(line)["w"] for line in rest] == ["a"] * BATCH


def test_the_spool_is_rotated_past_its_size_and_a_missing_directory_fails(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    append_batch(str(spool), 10, [b"0123456789", b"x"])
    append_batch(str(spool), 10, [b"y"])
    assert Path(f"{spool}.1").read_bytes() == b"0123456789\nx\n" and spool.read_bytes() == b"y\n"
    missing = tmp_path / "gone" / "events.jsonl"
    with pytest.raises(FileNotFoundError):
        append_batch(str(missing), 10, [b"z"])
    assert not missing.parent.exists()


_JOURNAL_WRITER = """
import sys
from fedd.events.journal import Journal

class Clock:
    def seconds(self) -> float:
        return 1.0

journal = Journal(sys.argv[1], Clock())
journal.append(("live-1", "get-redirect", {"path": "/a"}, 1.0))
print("written", flush=True)
sys.stdin.read()  # alive, its segment locked, until the test closes stdin or kills it
"""


def test_a_live_workers_journal_is_never_replayed_and_a_dead_ones_is(tmp_path: Path) -> None:
    """Without a broker every worker's journal is `<spool>.journal.<time>-<pid>`: a worker that
    starts takes only the segments nobody holds (a dead worker's), never a live worker's."""
    spool = str(tmp_path / "events.jsonl")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    live = subprocess.Popen(
        [sys.executable, "-c", _JOURNAL_WRITER, spool], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert live.stdout is not None and live.stdout.readline() == b"written\n"
        segments = list(tmp_path.glob("events.jsonl.journal.*"))
        assert len(segments) == 1 and segments[0].name.endswith(f"-{live.pid}")

        class Clock:
            def seconds(self) -> float:
                return 2.0

        starting = Journal(spool, Clock())  # another worker starting beside it
        assert starting.leftovers() == []
        live.kill()  # SIGKILL: the kernel drops its lock, the segment stays
        live.wait(timeout=10)
        taken = starting.leftovers()
        assert [s.path for s in taken] == [str(segments[0])]
        raws, bad = read_segments([s.path for s in taken])
        assert bad == 0 and [r[0] for r in raws] == ["live-1"]
        for segment in taken:
            Journal.remove(segment)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait(timeout=10)

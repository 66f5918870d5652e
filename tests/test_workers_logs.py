"""The supervisor's relay of its workers' logs (fedd.workers.supervisor): a warning that every worker
logs about the same outage is logged once per host; a repeat by the same worker, another text, an
info line, or the same warning after `REPEAT_WINDOW`, goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, eventAsJSON, formatEvent

from fedd.workers.supervisor import REPEAT_WINDOW, RepeatFilter, Supervisor, _Worker
from tests.inprocess import captured_logs

REFUSED = "broker {url} refused the login of user {user}: events wait in the outbox, retrying with backoff"


def _line(level: LogLevel, fmt: str, namespace: str = "fedd.events", **fields: Any) -> bytes:
    """One line as a worker writes it on its stdout (Twisted's JSON log format)."""
    event = {"log_level": level, "log_namespace": namespace, "log_format": fmt, "log_time": 1.0, **fields}
    return b"\x1e" + eventAsJSON(event).encode()


def _relayed(clock: Clock, tmp_path: Path, lines: list[tuple[int, float, bytes]]) -> list[str]:
    """Relay (worker, at, line) in order; what the supervisor's log shows: `[system] text`."""
    sup = Supervisor(reactor=clock, count=2, listen=["tcp:0"], run_dir=tmp_path, argv=[], stop_timeout=1.0, environ={})
    workers = {i: _Worker(sup, i) for i in (0, 1)}
    with captured_logs() as events:
        for index, at, line in lines:
            clock.advance(at - clock.seconds())
            workers[index].childDataReceived(1, line + b"\n")
    return [
        f"[{e['log_system']}] {formatEvent(e)}" for e in events if str(e.get("log_system", "")).startswith("worker-")
    ]


def test_the_same_warning_from_every_worker_is_logged_once(tmp_path: Path) -> None:
    refused = _line(LogLevel.warn, REFUSED, url="amqp://127.0.0.1:5672/", user="guest")
    text = REFUSED.format(url="amqp://127.0.0.1:5672/", user="guest")
    got = _relayed(Clock(), tmp_path, [(0, 1.0, refused), (1, 1.2, refused)])
    assert got == [f"[worker-0 fedd.events#warn] {text}"]  # the worker, then what one fedd shows


def test_a_repeat_by_the_same_worker_and_other_texts_go_through(tmp_path: Path) -> None:
    lost = _line(LogLevel.error, "connection lost ({n})", n=1)
    got = _relayed(
        Clock(),
        tmp_path,
        [
            (1, 1.0, lost),
            (1, 5.0, lost),  # the same worker's next outage: a new occurrence
            (0, 6.0, lost),  # another worker within the window: held back
            (0, 7.0, _line(LogLevel.error, "connection lost ({n})", n=2)),  # another text
            (0, 8.0, _line(LogLevel.error, "connection lost ({n})", namespace="fedd.state", n=1)),  # namespace
            (0, 9.0, _line(LogLevel.info, "connection lost ({n})", n=1)),  # info is never held back
            (0, 9.5, _line(LogLevel.info, "connection lost ({n})", n=1)),
            (0, 5.0 + REPEAT_WINDOW + 0.1, lost),  # past the window: a new outage for this host
            (1, 5.0 + REPEAT_WINDOW + 0.2, lost),
        ],
    )
    assert got == [
        "[worker-1 fedd.events#error] connection lost (1)",
        "[worker-1 fedd.events#error] connection lost (1)",
        "[worker-0 fedd.events#error] connection lost (2)",
        "[worker-0 fedd.state#error] connection lost (1)",
        "[worker-0 fedd.events#info] connection lost (1)",
        "[worker-0 fedd.events#info] connection lost (1)",
        "[worker-0 fedd.events#error] connection lost (1)",
    ]


def test_lines_not_in_json_are_relayed_as_they_are(tmp_path: Path) -> None:
    got = _relayed(Clock(), tmp_path, [(0, 1.0, b"Traceback: boom"), (1, 1.0, b"Traceback: boom")])
    assert got == ["[worker-0] Traceback: boom", "[worker-1] Traceback: boom"]  # info: stderr as it comes


def test_a_legacy_events_system_is_kept(tmp_path: Path) -> None:
    line = _line(LogLevel.info, "GET /x", namespace="log_legacy", log_system="HTTPChannel,3,127.0.0.1")
    assert _relayed(Clock(), tmp_path, [(1, 1.0, line)]) == ["[worker-1 HTTPChannel,3,127.0.0.1] GET /x"]


def test_the_filter_keeps_only_the_window_and_counts_what_it_held() -> None:
    repeats = RepeatFilter(window=10.0)
    for n in range(1000):  # a thousand distinct warnings, one a second
        assert repeats.admit(n % 2, "fedd.x", f"warning {n}", float(n))
    assert len(repeats._recent) == 10  # pruned from the oldest: memory bounded by the window
    assert repeats.held == 0
    assert not repeats.admit(1, "fedd.x", "warning 998", 1000.0)  # worker 0's, 2 s ago
    assert repeats.admit(0, "fedd.x", "warning 998", 1000.0)  # worker 0 again: a new occurrence
    assert repeats.held == 1

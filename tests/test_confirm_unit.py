"""Confirmed uploads in process: the rules of fedd.confirm.pending and the `confirm` service's table,
looks, notifications and events, driven by a Clock against fedd.testing's in-memory endpoint."""

from __future__ import annotations

import gc
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from fedd.config import Config
from fedd.config.schema import ConfirmConfig
from fedd.config.values import RgwNotify
from fedd.confirm.kept import KEEP_WAIT, TAKE_OVER_CHUNK, PendingFile
from fedd.confirm.metrics import ConfirmCollector
from fedd.confirm.pending import Table, Timing, Upload, judge_look, judge_notification, outcome_id
from fedd.confirm.rgw import created_objects
from fedd.confirm.service import ConfirmService
from fedd.endpoints.base import Stat
from fedd.namespace import Target
from fedd.testing import FakeEndpoint
from fedd.web.statuspage import render_status_page
from tests.inprocess import captured_logs, result

TIMING = Timing(deadline=60.0, poll_initial=1.0, poll_factor=2.0, poll_max=8.0)


def upload(size: int | None = 10, started: float = 100.0, **kw: Any) -> Upload:
    return Upload("/atlas/f", "e", "/atlas/f", size, started, **kw)


# --- the rules --------------------------------------------------------------------------------


def test_look_lands_on_the_announced_size_only() -> None:
    u = upload()
    assert judge_look(u, None, None, False, 101.0, TIMING).outcome == "wait"
    assert judge_look(u, 5, 101.0, True, 101.0, TIMING).outcome == "wait"  # still being written, perhaps
    assert u.seen_size == 5
    v = judge_look(u, 10, 101.0, True, 102.0, TIMING)
    assert (v.outcome, v.size) == ("landed", 10)
    assert judge_look(upload(size=None), 7, None, True, 101.0, TIMING).size == 7  # no size announced


def test_look_at_the_deadline_fails_with_the_reason() -> None:
    u = upload()
    v = judge_look(u, None, None, False, 160.0, TIMING)
    assert (v.outcome, v.reason) == ("failed", "deadline passed: no object after 60s")
    u = upload()
    judge_look(u, 4, 101.0, True, 110.0, TIMING)
    v = judge_look(u, None, None, False, 160.0, TIMING)
    assert v.reason == "size mismatch: announced 10, found 4 after 60s"


def test_an_overwrite_needs_a_newer_object() -> None:
    u = upload(overwrite=True)
    assert judge_look(u, 10, 50.0, True, 101.0, TIMING).outcome == "wait"  # the old file
    assert judge_look(u, 10, 99.0, True, 101.0, TIMING).outcome == "landed"  # within the clock skew
    assert "not replaced" in judge_look(upload(overwrite=True), 10, 50.0, True, 170.0, TIMING).reason


def test_a_notification_is_final() -> None:
    assert judge_notification(upload(), 10, 101.0).outcome == "landed"
    v = judge_notification(upload(), 11, 101.0)
    assert (v.outcome, v.reason) == ("failed", "size mismatch: announced 10, stored 11")
    assert judge_notification(upload(), 10, 90.0).outcome == "wait"  # an older write's, late


def test_backoff_grows_to_the_cap_and_ends_at_the_deadline() -> None:
    u = upload()
    assert TIMING.first_look(u) == 101.0
    assert TIMING.first_look(upload(notified=True)) == 108.0
    waits = []
    for looks in range(6):
        u.looks = looks
        waits.append(TIMING.next_look(u, 120.0) - 120.0)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert TIMING.next_look(u, 157.0) == 160.0


def test_table_is_bounded_and_a_second_put_replaces_the_first() -> None:
    table = Table(limit=2)
    assert table.add(Upload("/a", "e", "/a", 1, 0.0), 1.0) == (True, None)
    first = Upload("/b", "e", "/b", 1, 0.0)
    assert table.add(first, 2.0) == (True, None)
    assert table.add(Upload("/c", "e", "/c", 1, 0.0), 1.0) == (False, None)  # full
    taken, old = table.add(Upload("/b", "e", "/b", 2, 1.0), 3.0)  # same name again: not over the bound
    assert taken and old is first and len(table) == 2
    assert [u.path for u in table.due(2.5, 10)] == ["/a"]
    assert table.next_due() == 3.0


def test_the_oldest_are_in_the_order_of_the_redirects_after_supersedes_and_takeovers() -> None:
    table = Table(limit=10)
    for name, started in [("/a", 10.0), ("/b", 11.0), ("/c", 12.0)]:
        table.add(Upload(name, "e", name, 1, started), started + 1)
    table.add(Upload("/a", "e", "/a", 1, 13.0), 14.0)  # a second PUT goes last (not in /a's old place)
    for name, started in [("/x", 1.0), ("/y", 2.0)]:  # the previous run's, handed over meanwhile
        table.add(Upload(name, "e", name, 1, started), 20.0, earlier=True)
    table.add(Upload("/d", "e", "/d", 1, 14.0), 15.0)
    table.add(Upload("/z", "e", "/z", 1, 3.0), 20.0, earlier=True)  # the next chunk
    table.add(Upload("/x", "e", "/x", 1, 15.0), 16.0)  # a PUT of a name taken over: the newest
    assert [u.path for u in table.oldest(10)] == ["/y", "/z", "/b", "/c", "/a", "/d", "/x"]
    assert [u.path for u in table.oldest(3)] == ["/y", "/z", "/b"] and len(table) == 7
    table.pop(("e", "/y"))
    table.pop(("e", "/b"))
    assert [u.path for u in table.oldest(3)] == ["/z", "/c", "/a"] and table.get(("e", "/x")) is not None


class Counted(Upload):
    """An Upload that counts the reads of its redirect's time."""

    __slots__ = ()
    reads: ClassVar[list[int]] = [0]

    def __getattribute__(self, name: str) -> Any:
        if name == "started":
            Counted.reads[0] += 1
        return super().__getattribute__(name)


def test_the_oldest_are_found_without_reading_every_pending_upload() -> None:
    """A status read or a stop with 100k pending took ~10 ms picking the 10 oldest of all of them."""
    table = Table(limit=20_000)
    for i in range(5000):
        table.add(Counted(f"/t{i}", "e", f"/t{i}", 1, float(i)), 1e6, earlier=True)
    for i in range(5000):
        table.add(Counted(f"/n{i}", "e", f"/n{i}", 1, 10_000.0 + i), 1e6)
    for i in range(4000):  # resolved, the oldest first
        table.pop(("e", f"/t{i}"))
        table.pop(("e", f"/n{i}"))
    Counted.reads[0] = 0
    assert [u.path for u in table.oldest(10)] == [f"/t{i}" for i in range(4000, 4010)]
    assert Counted.reads[0] <= 15


def test_rgw_records_are_read_for_the_bucket() -> None:
    body = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-12-01T02:00:00.5Z",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": "atlas/x", "size": 3}},
                },
                {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "y"}}},
                {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "other"}, "object": {"key": "z"}}},
            ]
        }
    ).encode()
    assert created_objects(body, "b") == [("/atlas/x", 3, 1796090400.5)]
    for bad in (b"nonsense", b"[]", b'{"Records": 3}'):
        try:
            created_objects(bad, "b")
        except ValueError:
            continue
        raise AssertionError(bad)


# --- the service ------------------------------------------------------------------------------


@dataclass
class Fed:
    endpoints: dict[str, Any]
    forgotten: list[str] = field(default_factory=list)

    def mapped(self, path: str) -> list[Target]:
        return [Target(eid, path) for eid in self.endpoints]

    def forget(self, path: str) -> None:
        self.forgotten.append(path)

    @property
    def namespace(self) -> Fed:
        return self

    def to_federation(self, endpoint: str, endpoint_path: str) -> str | None:
        return endpoint_path if endpoint in self.endpoints else None


def service(**settings: Any) -> tuple[ConfirmService, FakeEndpoint, Fed, Clock, list[tuple[str, dict[str, Any]]]]:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    fed = Fed({"e": ep})
    events: list[tuple[str, dict[str, Any]]] = []
    config = ConfirmConfig(deadline=30.0, poll_initial=1.0, poll_max=4.0, checksum_wait=0.0, **settings)
    s = ConfirmService(config, federation=fed, clock=clock, emit=lambda t, p, i=None: events.append((t, p)))
    s.startService()
    return s, ep, fed, clock, events


def test_a_look_confirms_the_upload_with_the_stored_adler32() -> None:
    s, ep, fed, clock, events = service()
    s.expect("/atlas/f", "e", 5)
    clock.advance(1.0)
    assert s.counts["looks"] == 1 and not events
    ep.files["/atlas/f"] = Stat(size=5, mtime=clock.seconds(), checksums=(("adler32", "05c801f0"),))
    clock.advance(2.0)
    assert [t for t, _ in events] == ["put-done"]
    payload = events[0][1]
    assert payload["bytes"] == 5 and payload["adler32"] == "05c801f0" and payload["confirmed_by"] == "look"
    assert payload["duration"] == 3.0 and payload["scope"] == "atlas" and payload["name"] == "f"
    assert "/atlas/f" in fed.forgotten
    assert len(s.table) == 0 and s.counts["done"] == 1
    assert ep.calls == ["/atlas/f", "/atlas/f"]  # two looks; the adler32 came with the second, no third stat


def test_nothing_there_fails_at_the_deadline_after_bounded_looks() -> None:
    s, _ep, _, clock, events = service()
    s.expect("/atlas/f", "e", 5)
    clock.pump([1.0] * 40)
    assert [t for t, _ in events] == ["put-failed"]
    assert events[0][1]["reason"] == "deadline passed: no object after 30s"
    assert events[0][1]["duration"] == 30.0
    assert s.counts["looks"] <= 10  # 1, 2, 4, then every 4 s up to 30 s


def test_a_notification_confirms_once_and_duplicates_are_ignored() -> None:
    s, ep, fed, clock, events = service(notifies=(RgwNotify("e", "x"),))
    s.expect("/atlas/f", "e", 5)
    clock.advance(0.5)
    assert s.counts["looks"] == 0  # with notifications, looking starts at poll_max
    ep.files["/atlas/f"] = Stat(size=5, mtime=clock.seconds())
    s.notified("e", "/atlas/f", 5, clock.seconds())
    s.notified("e", "/atlas/f", 5, clock.seconds())
    s.notified("e", "/atlas/elsewhere", 5, clock.seconds())
    clock.advance(10)
    assert [(t, p["confirmed_by"]) for t, p in events] == [("put-done", "notification")]
    assert s.counts["notifications"] == 3 and s.counts["notifications_ignored"] == 2
    assert fed.forgotten.count("/atlas/elsewhere") == 1  # not placed by fedd: only its cache entries go


def test_a_notification_with_the_wrong_size_fails_at_once() -> None:
    s, _, _, clock, events = service(notifies=(RgwNotify("e", "x"),))
    s.expect("/atlas/f", "e", 5)
    s.notified("e", "/atlas/f", 6, clock.seconds())
    assert [(t, p["reason"]) for t, p in events] == [("put-failed", "size mismatch: announced 5, stored 6")]


def test_endpoint_faults_are_retried_and_named_at_the_deadline() -> None:
    s, ep, _, clock, events = service()
    ep.broken = "connection refused"
    s.expect("/atlas/f", "e", 5)
    clock.pump([1.0] * 5)
    assert s.counts["look_errors"] >= 2 and not events
    clock.pump([1.0] * 30)
    assert "did not answer" in events[0][1]["reason"] and "connection refused" in events[0][1]["reason"]


def test_over_the_bound_uploads_are_counted_not_tracked_and_looks_are_limited() -> None:
    s, ep, _, clock, _events = service(max_pending=3, max_polls=2)
    ep.manual = True  # looks hang until answered
    for i in range(5):
        s.expect(f"/atlas/f{i}", "e", 1)
    assert len(s.table) == 3 and s.counts["untracked"] == 2
    clock.advance(1.0)
    assert s._looking == 2 and len(ep.pending) == 2  # two at once
    for path in list(ep.pending):
        ep.answer(path)
    clock.advance(0.0)
    assert len(ep.pending) == 1  # the third is looked at once a slot is free


def test_shutdown_logs_what_is_pending_and_reload_applies_timings() -> None:
    s, _, _, clock, _ = service()
    s.expect("/atlas/f", "e", 5)
    pending = s.reconfigure(Config(confirm=ConfirmConfig(deadline=5.0)))
    assert pending == [] and s.timing.deadline == 5.0
    assert s.reconfigure(Config(confirm=ConfirmConfig(notifies=(RgwNotify("e", "x"),)))) == ["[confirm] broker, notify"]
    status = s.to_json()
    assert status["pending"] == 1 and status["oldest"][0]["path"] == "/atlas/f"
    s.stopService()
    assert not clock.getDelayedCalls()


def test_disabled_takes_nothing() -> None:
    s, _, _, _, _ = service(enabled=False)
    s.expect("/atlas/f", "e", 5)
    assert len(s.table) == 0


def test_a_carried_upload_is_done_from_fedds_own_result() -> None:
    s, ep, fed, clock, events = service()
    s.carried("/atlas/f", "e", 5, clock.seconds() - 2.0, "05c801f0")
    assert [(t, p["confirmed_by"], p["bytes"], p["adler32"], p["duration"]) for t, p in events] == [
        ("put-done", "carried", 5, "05c801f0", 2.0)
    ]
    assert not ep.calls and "/atlas/f" in fed.forgotten and len(s.table) == 0


def test_the_announced_size_of_a_chunked_upload_comes_from_its_size_header() -> None:
    import pytest
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyRequest

    from fedd.errors import BadRequest
    from fedd.web.writing import _announced_size

    dummy = DummyRequest([b"atlas", b"f"])
    request = cast(Request, dummy)  # DummyRequest: twisted.web's stand-in for a Request
    assert _announced_size(request, None) is None
    assert _announced_size(request, 7) == 7  # Content-Length
    dummy.requestHeaders.setRawHeaders(b"oc-total-length", [b"1234"])
    assert _announced_size(request, None) == 1234
    dummy.requestHeaders.setRawHeaders(b"oc-total-length", [b"12x"])
    with pytest.raises(BadRequest, match="oc-total-length"):
        _announced_size(request, None)


# --- kept across a restart (fedd.confirm.kept) -----------------------------------------------------


class InlinePendingFile(PendingFile):
    """The pending file's own statements on a real SQLite file, run at once in the test's thread (the
    Clock drives the service); tests/test_confirm_restart.py runs the daemon with the threaded one."""

    def open(self) -> Deferred[int]:
        return self._run(self._open)

    def close(self) -> Deferred[None]:
        return self._run(self._close)

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args))
        except Exception:
            return fail()


class HeldPendingFile(InlinePendingFile):
    """Each batch's statements run when the test says (`commit`): a slow disk, a lock held elsewhere."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[tuple[list[Any], Deferred[None]]] = []

    def apply(self, changes: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.batches.append((list(changes), d))
        return d

    def commit(self, ok: bool = True) -> None:
        changes, d = self.batches.pop(0)
        if ok:
            self._apply(changes)
            d.callback(None)
        else:
            d.errback(sqlite3.OperationalError("database is locked"))


class BrokenDisk(InlinePendingFile):
    def _apply(self, changes: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def kept_service(
    clock: Clock, ep: FakeEndpoint, kept: PendingFile | None, **settings: Any
) -> tuple[ConfirmService, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    config = ConfirmConfig(deadline=30.0, poll_initial=1.0, poll_max=4.0, checksum_wait=0.0, **settings)
    s = ConfirmService(
        config, federation=Fed({"e": ep}), clock=clock, emit=lambda t, p, i=None: events.append((t, p)), kept=kept
    )
    s.startService()
    return s, events


def rows(path: Path) -> list[tuple[int, str, float]]:
    db = sqlite3.connect(path)
    try:
        return [(int(w), str(p), float(t)) for w, p, t in db.execute("SELECT worker, path, started FROM pending")]
    finally:
        db.close()


def test_pending_uploads_are_confirmed_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    file = tmp_path / "pending.sqlite"
    s, events = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    s.expect("/atlas/landed", "e", 5)
    s.expect("/atlas/later", "e", 7)
    clock.advance(0)
    assert sorted(p for _, p, _ in rows(file)) == ["/atlas/landed", "/atlas/later"]
    ep.files["/atlas/landed"] = Stat(size=5, mtime=clock.seconds())
    clock.advance(1.0)
    assert [(t, p["path"]) for t, p in events] == [("put-done", "/atlas/landed")]
    clock.advance(0)
    assert rows(file) == [(0, "/atlas/later", 1000.0)]  # decided: deleted
    s.stopService()

    clock.advance(10.0)  # fedd is down; the client uploads meanwhile
    ep.files["/atlas/later"] = Stat(size=7, mtime=clock.seconds())
    ep.calls.clear()
    again, events = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    assert again.counts["taken_over"] == 1 and len(again.table) == 1
    clock.advance(0)  # looked at at once
    assert ep.calls == ["/atlas/later"]
    assert [(t, p["path"], p["confirmed_by"], p["duration"]) for t, p in events] == [
        ("put-done", "/atlas/later", "look", 11.0)  # from the redirect, before the restart
    ]
    clock.advance(0)
    assert rows(file) == [] and len(again.table) == 0
    again.stopService()


def test_an_upload_whose_deadline_passed_while_down_gets_one_look_then_its_outcome(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    file = tmp_path / "pending.sqlite"
    s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    s.expect("/atlas/never", "e", 5)
    s.expect("/atlas/there", "e", 5)
    clock.advance(0)
    s.stopService()
    clock.advance(100.0)  # past the 30 s deadline
    ep.files["/atlas/there"] = Stat(size=5, mtime=clock.seconds())
    ep.calls.clear()
    again, events = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    clock.advance(0)
    assert sorted(ep.calls) == ["/atlas/never", "/atlas/there"]  # one look each
    outcomes = {p["path"]: (t, p.get("reason"), p["duration"]) for t, p in events}
    assert outcomes == {
        "/atlas/never": ("put-failed", "deadline passed: no object after 30s", 100.0),
        "/atlas/there": ("put-done", None, 100.0),
    }
    clock.advance(0)
    assert rows(file) == [] and not clock.getDelayedCalls()
    again.stopService()


def test_each_worker_takes_over_its_own_rows_and_worker_0_those_of_workers_gone(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    file = str(tmp_path / "pending.sqlite")
    for index in range(3):  # fedd ran with three workers
        s, _ = kept_service(clock, ep, InlinePendingFile(clock, file, index, 3))
        s.expect(f"/atlas/w{index}", "e", 5)
        s.expect("/atlas/same", "e", 5)  # each worker waits for its own PUT of it
        clock.advance(0)
        s.stopService()
    one, _ = kept_service(clock, ep, InlinePendingFile(clock, file, 1, 2))  # now two workers
    assert sorted(u.path for u in one.table.uploads()) == ["/atlas/same", "/atlas/w1"]
    zero, _ = kept_service(clock, ep, InlinePendingFile(clock, file, 0, 2))
    assert sorted(u.path for u in zero.table.uploads()) == ["/atlas/same", "/atlas/w0", "/atlas/w2"]
    assert sorted((w, p) for w, p, _ in rows(tmp_path / "pending.sqlite")) == [
        (0, "/atlas/same"),
        (0, "/atlas/w0"),
        (0, "/atlas/w2"),
        (1, "/atlas/same"),
        (1, "/atlas/w1"),
    ]
    one.stopService()
    zero.stopService()


def test_max_pending_holds_for_the_uploads_taken_over(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    file = tmp_path / "pending.sqlite"
    s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    for i in range(3):
        s.expect(f"/atlas/f{i}", "e", 5)
        clock.advance(1.0)
    s.stopService()
    again, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)), max_pending=2)
    assert [u.path for u in again.table.uploads()] == ["/atlas/f0", "/atlas/f1"]  # the oldest
    assert again.counts["taken_over"] == 2 and again.counts["untracked"] == 1
    clock.advance(0)
    assert [p for _, p, _ in rows(file)] == ["/atlas/f0", "/atlas/f1"]
    again.stopService()


def test_a_failing_pending_file_is_logged_once_and_confirming_goes_on(tmp_path: Path) -> None:
    with captured_logs() as logged:
        clock = Clock()
        clock.advance(1000)
        ep = FakeEndpoint("e", clock=clock)
        s, events = kept_service(clock, ep, BrokenDisk(clock, str(tmp_path / "pending.sqlite")))
        for i in range(3):
            s.expect(f"/atlas/f{i}", "e", 5)
            clock.advance(0)
            ep.files[f"/atlas/f{i}"] = Stat(size=5, mtime=clock.seconds())
        clock.advance(1.0)
        assert sorted(p["path"] for t, p in events if t == "put-done") == ["/atlas/f0", "/atlas/f1", "/atlas/f2"]
        assert s.to_json()["pending_file_errors"] >= 2
        nowhere, _ = kept_service(clock, ep, InlinePendingFile(clock, str(tmp_path / "no" / "such" / "dir.sqlite")))
        nowhere.expect("/atlas/g", "e", 5)
        ep.files["/atlas/g"] = Stat(size=5, mtime=clock.seconds())
        clock.advance(1.0)
        assert len(nowhere.table) == 0 and nowhere.counts["done"] == 1
        s.stopService()
        nowhere.stopService()
    texts = [formatEvent(e) for e in logged if e.get("log_namespace") == "fedd.confirm"]
    assert len([t for t in texts if "writing failed" in t and "disk I/O error" in t]) == 1, texts
    assert len([t for t in texts if "dir.sqlite" in t and "in memory only" in t]) == 1, texts
    assert not [e for e in logged if e.get("log_failure") is not None]


def test_shutdown_says_the_pending_uploads_are_confirmed_after_the_restart(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(tmp_path / "pending.sqlite")))
    s.expect("/atlas/f", "e", 5)
    clock.advance(2.0)
    with captured_logs() as logged:
        s.stopService()
    texts = [formatEvent(e) for e in logged if e.get("log_namespace") == "fedd.confirm"]
    assert "stopping: upload of /atlas/f to e (5 bytes) not confirmed after 2.0s: confirmed after the restart" in texts
    assert any("1 upload(s) not confirmed: kept in" in t and "confirmed after the restart" in t for t in texts)


def test_status_and_stop_show_the_oldest_after_supersedes_and_takeovers(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("fedd.confirm.kept.TAKE_OVER_CHUNK", 2)
    file = tmp_path / "pending.sqlite"
    left_rows(file, 5)  # /atlas/r0 .. r4, redirected at 900.000 .. 900.004
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    ep.manual = True
    s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    assert len(s.table) == 2  # r0, r1 taken over; the rest at the next turns
    for path in ("/atlas/r3", "/atlas/n1", "/atlas/r0"):  # r3 before its chunk, r0 again after it
        s.expect(path, "e", 5)
        clock.advance(1.0)  # (the next chunks too)
    s.expect("/atlas/n2", "e", 5)
    assert s.to_json()["taking_over"] == 0 and s.counts["taken_over"] == 4
    order = ["/atlas/r1", "/atlas/r2", "/atlas/r4", "/atlas/r3", "/atlas/n1", "/atlas/r0", "/atlas/n2"]
    assert [u["path"] for u in s.to_json()["oldest"]] == order
    with captured_logs() as logged:
        s.stopService()
    texts = [formatEvent(e) for e in logged if e.get("log_namespace") == "fedd.confirm"]
    assert [t.split()[3] for t in texts if t.startswith("stopping: upload of")] == order


def test_the_pending_file_in_its_thread_keeps_rows_across_reopen(tmp_path: Path) -> None:
    from tests import reactor

    file = str(tmp_path / "pending.sqlite")
    kept = PendingFile(reactor.the_reactor(), file, 1, 2)
    assert reactor.call(kept.open) == 0
    assert reactor.call(kept.take) == []
    first = Upload("/a", "e", "/x/a", 5, 1000.5, True)
    reactor.call(kept.apply, [(first.key, first), (("e", "/x/b"), Upload("/b", "e", "/x/b", None, 1001.0))])
    reactor.call(kept.apply, [(("e", "/x/b"), None)])
    reactor.call(kept.close)
    again = PendingFile(reactor.the_reactor(), file, 1, 2)
    assert reactor.call(again.open) == 1
    assert reactor.call(again.take) == [Upload("/a", "e", "/x/a", 5, 1000.5, True)]
    reactor.call(again.close)


def test_a_puts_answer_waits_for_the_commit_that_holds_its_row_and_puts_share_commits(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    file = HeldPendingFile(clock, str(tmp_path / "pending.sqlite"))
    s, _ = kept_service(clock, ep, file)
    first = s.expect("/atlas/f0", "e", 5)
    assert first is not None
    clock.advance(0)  # the batch goes to the file's thread
    later = [s.expect(f"/atlas/f{i}", "e", 5) for i in range(1, 4)]  # while the first batch is written
    assert [d is not None for d in later] == [True, True, True]
    waiting = [result(d) for d in [first, *later] if d is not None]
    clock.advance(0)
    assert waiting == [[], [], [], []] and len(file.batches) == 1  # nothing answered before its commit
    file.commit()
    assert waiting == [[True], [], [], []] and rows(tmp_path / "pending.sqlite")[0][1] == "/atlas/f0"
    clock.advance(0)
    assert [[p for (_, _), u in changes if u is not None for p in [u.path]] for changes, _ in file.batches] == [
        ["/atlas/f1", "/atlas/f2", "/atlas/f3"]  # one commit for the three PUTs that came meanwhile
    ]
    file.commit()
    assert waiting == [[True]] * 4
    assert sorted(p for _, p, _ in rows(tmp_path / "pending.sqlite")) == [f"/atlas/f{i}" for i in range(4)]
    assert s.to_json()["pending_file_unkept"] == 0
    s.stopService()


def test_a_put_is_answered_without_its_row_when_the_write_fails_or_stalls(tmp_path: Path) -> None:
    """As an event the journal cannot take: the client is answered, the upload confirmed in memory,
    the miss counted and logged (once a minute for stalls; a failing write once until it works)."""
    with captured_logs() as logged:
        clock = Clock()
        clock.advance(1000)
        ep = FakeEndpoint("e", clock=clock)
        file = HeldPendingFile(clock, str(tmp_path / "pending.sqlite"))
        s, events = kept_service(clock, ep, file)
        failing = s.expect("/atlas/failing", "e", 5)
        assert failing is not None
        clock.advance(0)
        file.commit(ok=False)
        assert result(failing) == [False]
        stalled = [s.expect(f"/atlas/stalled{i}", "e", 5) for i in range(2)]
        clock.advance(0)
        got = [result(d) for d in stalled if d is not None]
        clock.advance(KEEP_WAIT - 0.01)
        assert got == [[], []]
        clock.advance(0.01)
        assert got == [[False], [False]]
        file.commit()  # late: the rows are there now, the answers went out before
        assert s.to_json()["pending_file_unkept"] == 3 and len(s.table) == 3
        figures = {m.name: m.samples[0].value for m in ConfirmCollector(s).collect() if not m.samples[0].labels}
        assert figures["fedd_uploads_unkept"] == 3
        assert figures["fedd_pending_file_errors"] == s.to_json()["pending_file_errors"] >= 1
        assert figures["fedd_uploads_taking_over"] == 0
        page = render_status_page({"confirm": s.to_json()}).decode()
        assert '<th>redirected before kept on disk</th><td><span class="bad">3</span>' in page
        assert "still being taken over" not in page
        ep.files["/atlas/failing"] = Stat(size=5, mtime=clock.seconds())
        clock.pump([1.0] * 4)
        assert [(t, p["path"]) for t, p in events] == [("put-done", "/atlas/failing")]  # confirmed in memory
        s.stopService()
    texts = [formatEvent(e) for e in logged if e.get("log_namespace") == "fedd.confirm"]
    assert len([t for t in texts if "writing failed (OperationalError: database is locked)" in t]) == 1, texts
    assert len([t for t in texts if "not written within 2s: PUTs are answered without waiting" in t]) == 1, texts
    assert not [e for e in logged if e.get("log_failure") is not None]


def test_nothing_to_wait_for_without_a_pending_file_or_once_it_failed(tmp_path: Path) -> None:
    s, _, _, _, _ = service()
    assert s.expect("/atlas/f", "e", 5) is None
    clock = Clock()
    ep = FakeEndpoint("e", clock=clock)
    nowhere, _ = kept_service(clock, ep, InlinePendingFile(clock, str(tmp_path / "no" / "dir.sqlite")))
    assert nowhere.expect("/atlas/f", "e", 5) is None and len(nowhere.table) == 1
    nowhere.stopService()


def test_an_outcome_published_again_after_a_crash_carries_the_same_id(tmp_path: Path) -> None:
    """Decided just before a crash, its row's delete not written yet: the restarted service publishes
    the outcome again, with the id of the first time (a consumer drops the second by its id)."""
    clock = Clock()
    clock.advance(1000.25)
    ep = FakeEndpoint("e", clock=clock)
    file = HeldPendingFile(clock, str(tmp_path / "pending.sqlite"))
    ids: list[tuple[str, str, str | None]] = []
    config = ConfirmConfig(deadline=30.0, poll_initial=1.0, poll_max=4.0, checksum_wait=0.0)

    def start(kept: PendingFile) -> ConfirmService:
        def emit(event_type: str, payload: dict[str, Any], event_id: str | None = None) -> None:
            ids.append((event_type, payload["path"], event_id))

        s = ConfirmService(config, federation=Fed({"e": ep}), clock=clock, emit=emit, kept=kept)
        s.startService()
        return s

    s = start(file)
    for name in ("landed", "failed"):
        s.expect(f"/atlas/{name}", "e", 5)
        clock.advance(0)
        file.commit()
    ep.files["/atlas/landed"] = Stat(size=5, mtime=clock.seconds())
    ep.files["/atlas/failed"] = Stat(size=4, mtime=clock.seconds())
    clock.pump([1.0] * 30)  # landed: done; failed: the wrong size until the deadline
    assert sorted((t, p) for t, p, _ in ids) == [("put-done", "/atlas/landed"), ("put-failed", "/atlas/failed")]
    assert len(file.batches) == 1  # the deletes of both rows, not written: fedd is killed now
    first = {p: i for _, p, i in ids}
    assert all(i is not None and len(i) == 32 and int(i, 16) >= 0 for i in first.values())
    assert first["/atlas/landed"] != first["/atlas/failed"]

    ids.clear()
    clock.advance(5.0)
    again = start(InlinePendingFile(clock, str(tmp_path / "pending.sqlite")))
    clock.advance(0)
    assert sorted((t, p) for t, p, _ in ids) == [("put-done", "/atlas/landed"), ("put-failed", "/atlas/failed")]
    assert {p: i for _, p, i in ids} == first  # the same ids as before the crash
    same_name_later = Upload("/atlas/landed", "e", "/atlas/landed", 5, 1000.250001)
    assert outcome_id(same_name_later) != first["/atlas/landed"]  # another upload of the name: another id
    started = clock.seconds() - 1.0
    again.carried("/atlas/c", "e", 5, started, None)
    assert ids[-1] == ("put-done", "/atlas/c", outcome_id(Upload("/atlas/c", "e", "/atlas/c", 5, started)))
    again.stopService()


def left_rows(path: Path, n: int, started: float = 900.0) -> None:
    """`n` pending rows of worker 0, as a previous run leaves them."""
    db = sqlite3.connect(path)
    try:
        db.execute(PendingFile.SCHEMA)
        db.executemany(
            "INSERT INTO pending VALUES (0, 'e', ?, ?, 5, ?, 0)",
            [(f"/atlas/r{i}", f"/atlas/r{i}", started + i * 1e-3) for i in range(n)],
        )
        db.commit()
    finally:
        db.close()


def test_many_uploads_are_taken_over_a_chunk_at_a_reactor_turn(tmp_path: Path) -> None:
    """100k rows handed over at once blocked the reactor ~0.8 s here: TAKE_OVER_CHUNK at a turn, the
    rest at the next turns, and a PUT between two chunks is taken (the newer upload of its name)."""
    file = tmp_path / "pending.sqlite"
    n = 2 * TAKE_OVER_CHUNK + TAKE_OVER_CHUNK // 2
    left_rows(file, n)
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    ep.manual = True  # looks wait: only the hand-over counts here
    with captured_logs() as logged:
        s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)), max_polls=5)
        assert (len(s.table), s.to_json()["taking_over"]) == (TAKE_OVER_CHUNK, n - TAKE_OVER_CHUNK)
        assert len(clock.getDelayedCalls()) == 2  # the next chunk, the first looks
        put = s.expect("/atlas/r2100", "e", 5)  # a PUT between two chunks: of a name in a later chunk
        assert put is not None
        clock.advance(0)  # (a Clock runs the later turns' calls too)
        assert result(put) == [True] and len(ep.pending) == 5
        assert len(s.table) == n and s.to_json()["taking_over"] == 0 and s.counts["taken_over"] == n - 1
        assert next(u for u in s.table.uploads() if u.path == "/atlas/r2100").started == 1000.0  # the newer
    texts = [formatEvent(e) for e in logged if e.get("log_namespace") == "fedd.confirm"]
    assert [t for t in texts if "taking over" in t] == [
        f"taking over {n - 1} upload(s) not confirmed before the restart ({file}; 0 over max_pending)"
    ]
    s.stopService()


def test_a_stop_during_the_hand_over_leaves_the_rest_for_the_next_start(tmp_path: Path) -> None:
    file = tmp_path / "pending.sqlite"
    n = TAKE_OVER_CHUNK + 10
    left_rows(file, n)
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    ep.manual = True
    s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    assert len(s.table) == TAKE_OVER_CHUNK
    s.stopService()
    assert not clock.getDelayedCalls() and len(rows(file)) == n
    again, _ = kept_service(clock, ep, InlinePendingFile(clock, str(file)))
    clock.advance(0)
    assert len(again.table) == n
    again.stopService()


def test_the_objects_there_before_a_large_take_over_are_frozen_first(tmp_path: Path, monkeypatch: Any) -> None:
    """100k uploads taken over at start made a full garbage collection go through all of fedd's
    start-up objects too, the reactor stopped meanwhile (76-105 ms here; 27 ms once frozen)."""
    monkeypatch.setattr("fedd.confirm.kept.FREEZE_OVER", 3)
    clock = Clock()
    clock.advance(1000)
    ep = FakeEndpoint("e", clock=clock)
    ep.manual = True
    few, many = tmp_path / "few.sqlite", tmp_path / "many.sqlite"
    left_rows(few, 2)
    left_rows(many, 3)
    gc.unfreeze()
    try:
        s, _ = kept_service(clock, ep, InlinePendingFile(clock, str(few)))
        assert len(s.table) == 2 and gc.get_freeze_count() == 0
        s.stopService()
        again, _ = kept_service(clock, ep, InlinePendingFile(clock, str(many)))
        assert len(again.table) == 3 and gc.get_freeze_count() > 0
        collected = {id(o) for o in gc.get_objects()}  # (not those frozen)
        assert id(ep) not in collected and all(id(u) in collected for u in again.table.uploads())
        again.stopService()
    finally:
        gc.unfreeze()


def test_the_reactor_turns_between_the_chunks_of_100k_uploads_taken_over(tmp_path: Path) -> None:
    """The real reactor and the pending file in its thread: a call made again every millisecond sees
    the hand-over in between (before: nothing, then all 100k at once)."""
    from tests import reactor

    file = tmp_path / "pending.sqlite"
    n = 100_000
    left_rows(file, n)
    real = reactor.the_reactor()
    seen: list[int] = []

    def start() -> Deferred[list[int]]:
        ep = FakeEndpoint("e", clock=real)
        ep.manual = True
        config = ConfirmConfig(max_pending=2 * n, checksum_wait=0.0, deadline=3600.0)
        kept = PendingFile(real, str(file))
        s = ConfirmService(config, federation=Fed({"e": ep}), clock=real, emit=lambda *a: None, kept=kept)
        s.startService()
        done: Deferred[list[int]] = Deferred()

        give_up = real.seconds() + 60

        def turn() -> None:  # every millisecond (at the next turn when a chunk is longer)
            seen.append(s.counts["taken_over"])
            if s.counts["taken_over"] < n and real.seconds() < give_up:
                real.callLater(0.001, turn)
            else:
                s.stopService().addBoth(lambda _: done.callback(seen))

        turn()
        return done

    reactor.call(start, timeout=120)
    gc.unfreeze()  # (the take-over froze the test process's objects)
    assert seen[-1] == n
    between = {c for c in seen if 0 < c < n}
    assert len(between) >= n // TAKE_OVER_CHUNK // 2, sorted(between)[:10]  # a chunk at a turn, or two

"""What one worker learns, every worker of the host applies (fedd.workers): one instance id for the
host's fedd, passed by the supervisor to every worker it starts, restarts included; the workers'
implicit host-local state (downtimes and upload reservations without `[state] database`), with a
row of reservations per worker; a downtime change answered once every worker applies it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from fedd.builders import HOST_STATE_FILE, build_state
from fedd.config import Downtime, parse_config
from fedd.space.downtime import DowntimeBook
from fedd.state.store import StateStore
from fedd.state.tables import SharedDowntimes, SharedReservations
from fedd.workers import WorkerRole
from fedd.workers.applied import AppliedMarks
from fedd.workers.shared import WORKERS_FILE, HostShare
from fedd.workers.supervisor import Supervisor
from tests.daemon import wait_for
from tests.inprocess import captured_logs
from tests.reactor import call, the_reactor


class _Transport:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def signalProcess(self, signum: int) -> None:
        pass


class _Reactor:
    """Records the processes a supervisor starts (their environment) instead of starting them."""

    def __init__(self) -> None:
        self.spawned: list[dict[str, str]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str], childFDs: Any) -> Any:
        self.spawned.append(env)
        return _Transport(1000 + len(self.spawned))


def _supervisor(tmp_path: Path, reactor: _Reactor) -> Supervisor:
    return Supervisor(
        reactor=reactor, count=2, listen=["tcp:0"], run_dir=tmp_path, argv=[], stop_timeout=1.0, environ={}
    )


def _spawned(tmp_path: Path) -> tuple[Supervisor, list[WorkerRole]]:
    """A supervisor that started workers 0 and 1, then 1 again after a crash, and their roles."""
    reactor = _Reactor()
    sup = _supervisor(tmp_path, reactor)
    sup.spawn(0)
    sup.spawn(1)
    sup.spawn(1)  # started again after a crash
    return sup, [WorkerRole.from_environment(env) for env in reactor.spawned]


def test_every_worker_and_a_restarted_one_get_the_supervisors_instance_id(tmp_path: Path) -> None:
    sup, roles = _spawned(tmp_path)
    assert [r.index for r in roles] == [0, 1, 1]
    assert {r.instance for r in roles} == {sup.instance} and sup.instance.startswith("fedd-")
    assert _supervisor(tmp_path, _Reactor()).instance != sup.instance  # another fedd, another id


def test_a_role_without_an_instance_id_reads_as_empty() -> None:
    role = WorkerRole(index=1, count=2, run_dir=Path("/run/x"), listen=("tcp:1",), instance="fedd-abc")
    env = role.environment()
    assert WorkerRole.from_environment(env) == role
    del env["FEDD_WORKER_INSTANCE"]  # a worker of an older supervisor, during an upgrade
    assert WorkerRole.from_environment(env).instance == ""


def _workers(run_dir: Path, *indexes: int) -> None:
    (run_dir / WORKERS_FILE).write_text(json.dumps([{"index": i, "pid": 100 + i} for i in indexes]))


def test_marks_wait_for_every_other_live_worker_within_a_deadline(tmp_path: Path) -> None:
    clock = Clock()
    _workers(tmp_path, 0, 1, 2)
    mine, one, two = (AppliedMarks(tmp_path, i, clock) for i in range(3))
    done = mine.wait("downtimes", 7, timeout=2.0)
    one.mark("downtimes", 7)
    clock.advance(0.05)
    assert not done.called  # worker 2 has not applied it yet
    two.mark("downtimes", 8)  # beyond is applied too
    clock.advance(0.05)
    assert done.result == []
    late = mine.wait("downtimes", 9, timeout=1.0)
    one.mark("downtimes", 9)
    clock.pump([0.05] * 25)
    assert late.result == [2]  # the deadline answers, naming who is behind
    _workers(tmp_path, 0, 1)  # worker 2 ended: not waited for
    assert mine.wait("downtimes", 9, timeout=1.0).result == []


def _role(tmp_path: Path, index: int) -> WorkerRole:
    return WorkerRole(index=index, count=2, run_dir=tmp_path, listen=("tcp:0",), instance="fedd-host")


def _config(tmp_path: Path, extra: str = "") -> Any:
    conf = tmp_path / "fedd.conf"
    conf.write_text(f"[server]\nlisten = tcp:0\n{extra}[endpoint d]\nkind = local\npath = {tmp_path}\nmap = / /\n")
    return parse_config(path=str(conf))


def test_workers_without_a_state_database_share_an_implicit_one_in_the_run_directory(tmp_path: Path) -> None:
    config = _config(tmp_path)
    reactor = the_reactor()
    assert build_state(config, reactor, "fedd-x", None) is None  # one process: as before
    assert build_state(config, reactor, "fedd-x", WorkerRole(0, 1, tmp_path, ("tcp:0",))) is None  # workers = 1
    state = build_state(config, reactor, "fedd-host", _role(tmp_path, 1))
    assert state is not None and state.implicit and state.db.where == str(tmp_path / HOST_STATE_FILE)
    assert state.poll_interval == 0.25 and state.queue_file == ""  # a local file: no spill file
    assert state.identity.instance == "fedd-host" and state.identity.member.endswith("/worker-1")
    assert state.to_json()["implicit"] is True
    site = _config(tmp_path, f"[state]\ndatabase = {tmp_path / 'site.sqlite'}\n")
    given = build_state(site, reactor, "i", _role(tmp_path, 0))
    assert given is not None and not given.implicit and given.db.where.endswith("site.sqlite")


def test_reservations_and_downtimes_of_one_worker_reach_the_other(tmp_path: Path) -> None:
    config = _config(tmp_path)
    reactor = the_reactor()
    stores = [build_state(config, reactor, "fedd-host", _role(tmp_path, i)) for i in (0, 1)]
    a, b = stores[0], stores[1]
    assert a is not None and b is not None
    _workers(tmp_path, 0, 1)
    books = [
        DowntimeBook({}, reactor, shared=SharedDowntimes(s), marks=AppliedMarks(tmp_path, i, reactor), settle_timeout=5)
        for i, s in enumerate((a, b))
    ]
    for service in (a, b, *books):
        call(service.startService)
    try:
        call(a.ready)
        call(b.ready)
        mine, theirs = SharedReservations(a), SharedReservations(b)
        call(lambda: mine.add("ep", 100, 10.0))  # the same host name: a row per worker
        wait_for(lambda: theirs.others("ep", 10.0) == 100, 5, "worker 1 to count worker 0's reservation")
        assert mine.others("ep", 10.0) == 0
        now = time.time()
        declared = call(books[0].add, "ep", Downtime(now - 1, now + 600, "write", "disk swap"))
        started = time.monotonic()
        call(books[0].settled)  # the admin's answer: once worker 1 applies it
        assert "disk swap" in books[1].blocks("ep", "write", time.time())
        assert time.monotonic() - started < 2.0
        assert call(books[1].remove, declared.id)
        call(books[1].settled)
        assert books[0].blocks("ep", "write", time.time()) == ""
    finally:
        for service in (*books, a, b):
            call(service.stopService)


class _ClockReactor(Clock, _Reactor):
    def __init__(self) -> None:
        Clock.__init__(self)
        _Reactor.__init__(self)


def test_a_reload_is_logged_done_once_every_worker_handled_it_and_the_status_agrees(tmp_path: Path) -> None:
    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

    from fedd.reload import Reloader, ReloadStatus

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "fedd.workers":
            lines.append(formatEvent(event))

    conf = tmp_path / "fedd.conf"
    _config(tmp_path)  # writes a good fedd.conf
    reactor = _ClockReactor()
    sup = _supervisor(tmp_path, reactor)
    sup.spawn(0)
    sup.spawn(1)
    statuses = [ReloadStatus(str(conf), tmp_path) for _ in range(2)]
    reloaders = [Reloader(str(conf), [], statuses[i], marks=AppliedMarks(tmp_path, i, reactor)) for i in range(2)]
    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        done = sup.reload()
        assert reloaders[0].reload()
        reactor.advance(0.05)
        assert not done.called and "reloaded" not in " ".join(lines)
        # worker 0 reloaded, worker 1 not yet: worker 0's status still shows the reload all applied
        assert statuses[0].to_json()["reloads"] == 0
        assert statuses[0].to_json()["host"] == {"asked": 1, "applied_by_all": 0, "this_worker": 1}
        assert reloaders[1].reload()
        reactor.advance(0.05)
        assert done.result == [] and lines[-1] == "reloaded (all 2 workers)"
        assert [s.to_json()["reloads"] for s in statuses] == [1, 1]
        assert statuses[1].to_json()["host"] == {"asked": 1, "applied_by_all": 1, "this_worker": 1}
        conf.write_text(conf.read_text() + "[endpoint bad]\nkind = s4\n")
        refused = sup.reload()
        for reloader in reloaders:
            assert not reloader.reload()
        reactor.advance(0.05)
        assert refused.result == [] and "reload 2 refused by worker(s) 0, 1" in lines[-1]
        assert [s.to_json()["refused"] for s in statuses] == [1, 1]
        late = sup.reload()  # worker 1 stopped (SIGSTOP): named after the wait, nothing said done
        reloaders[0].reload()
        reactor.pump([1.0] * 31)
        assert late.result == [1] and "reload 3: worker(s) 1 have not reloaded after 30s" in lines[-1]
        assert statuses[0].to_json()["host"]["applied_by_all"] == 2
    finally:
        globalLogPublisher.removeObserver(observer)


def test_a_worker_that_cannot_read_the_file_as_it_is_now_is_retried_while_others_serve(tmp_path: Path) -> None:
    """A worker (re)started while the file is broken (an edit, a reload about to be refused) must not
    stop the workers that serve; fedd stops when no worker is left (a configuration none can use)."""
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    reactor = _ClockReactor()
    stopped: list[bool] = []
    reactor.stop = lambda: stopped.append(True)  # type: ignore[attr-defined]
    sup = _supervisor(tmp_path, reactor)
    sup.spawn(0)
    sup.spawn(1)
    sup.ended(sup.workers[1], Failure(ProcessTerminated(exitCode=78)))
    assert not stopped and sup.exit_code == 0
    reactor.advance(0.5)  # started again (it dies young: 0.5 s)
    assert len(reactor.spawned) == 3 and 1 in sup.workers
    sup.ended(sup.workers[0], Failure(ProcessTerminated(exitCode=78)))
    sup.ended(sup.workers[1], Failure(ProcessTerminated(exitCode=78)))  # the last one: fedd stops
    assert stopped == [True] and sup.exit_code == 1


def test_a_write_stamped_by_one_worker_is_seen_by_another_at_once(tmp_path: Path) -> None:
    from fedd.workers.stamps import STAMPS_FILE, WriteStamps

    mine, theirs = WriteStamps(tmp_path / STAMPS_FILE), WriteStamps(tmp_path / STAMPS_FILE)
    try:
        assert theirs.since("/atlas/new.txt") == 0.0
        mine.stamp("/atlas/new.txt", 1234.5)
        assert theirs.since("/atlas/new.txt") == 1234.5  # the same shared pages: no poll
        assert theirs.since("/atlas/other.txt") in (0.0, 1234.5)  # another slot, or a shared one
        assert WriteStamps(tmp_path / STAMPS_FILE).since("/atlas/new.txt") == 1234.5  # a restarted worker
    finally:
        mine.close()
        theirs.close()


def test_workers_sharing_a_downtime_file_answer_a_change_once_all_read_it(tmp_path: Path) -> None:
    """[health] downtime_file with workers: each re-reads the file every 0.25 s and marks what it
    read; a change answers once the others read it, and a change on an older copy keeps theirs."""
    clock = Clock()
    clock.advance(time.time())
    _workers(tmp_path, 0, 1)
    path = str(tmp_path / "downtimes.json")
    books = [
        DowntimeBook({}, clock, path=path, marks=AppliedMarks(tmp_path, i, clock), settle_timeout=5) for i in (0, 1)
    ]
    for book in books:
        book.startService()
    now = clock.seconds()
    first = books[0].add("ep", Downtime(now - 1, now + 600, "write", "disk swap"))
    answered = books[0].settled()
    assert not answered.called and books[1].blocks("ep", "write", now) == ""
    clock.pump([0.05] * 6)  # worker 1's look at the file, then the next look at its mark
    assert answered.called and "disk swap" in books[1].blocks("ep", "write", clock.seconds())
    # worker 1 declares one right after worker 0 did, before its next look: both stay in the file
    books[0].add("other", Downtime(now - 1, now + 600, "read", "network"))
    books[1].add("ep2", Downtime(now - 1, now + 600, "all", "power"))
    clock.pump([0.05] * 6)
    for book in books:
        assert {d["id"] for d in book.to_json()} >= {first.id} and len(book.to_json()) == 3
    assert books[1].remove(first.id)  # worker 1 removes what worker 0 declared
    clock.pump([0.05] * 6)
    assert books[0].blocks("ep", "write", clock.seconds()) == ""
    for book in books:
        book.stopService()


def test_a_change_the_database_has_not_taken_answers_after_the_settle_timeout(tmp_path: Path) -> None:
    """The database went down after the change was queued, before this worker noticed: the admin's
    answer comes after settle_timeout (the others apply the change once it is written), not after
    the outage."""

    class Shared:  # SharedDowntimes' part that settled() uses; its database not known to be down
        unreachable = False

        def serial(self) -> Any:
            raise AssertionError("the serial is not read for a change that is not written")

    clock = Clock()
    _workers(tmp_path, 0, 1)
    book = DowntimeBook(
        {}, clock, shared=cast(SharedDowntimes, Shared()), marks=AppliedMarks(tmp_path, 0, clock), settle_timeout=5
    )
    book._last_write = Deferred()  # queued: the database does not answer
    with captured_logs() as events:
        answered = book.settled()
        clock.advance(4.9)
        assert not answered.called
        clock.advance(0.2)
        assert answered.called and clock.getDelayedCalls() == []
    assert any("not yet applied" in str(e.get("log_format")) for e in events)
    book._last_write.callback(None)  # written later: nothing waits on it any more


def _host_rows(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [str(row[0]) for row in db.execute("SELECT host FROM hosts")]


def test_the_hosts_row_goes_with_the_last_worker_only(tmp_path: Path) -> None:
    """The workers share their host's heartbeat row: one worker that stops (restarted, or done
    draining first) leaves it for the others, who still serve; the last one removes it, also when
    the last two stop together."""
    database = tmp_path / "site.sqlite"
    config = _config(tmp_path, f"[state]\ndatabase = {database}\nhost_name = h1\n")
    reactor = the_reactor()

    def start(index: int) -> StateStore:
        store = build_state(config, reactor, "fedd-host", _role(tmp_path, index))
        assert store is not None and not store.implicit
        call(store.startService)
        call(store.ready)
        wait_for(lambda: store.hosts, 10, f"worker {index}'s first heartbeat")
        return store

    first, second = start(0), start(1)
    call(second.stopService)  # worker 1 restarts: worker 0 still serves
    assert _host_rows(database) == ["h1"]
    second = start(1)
    call(first.stopService)  # worker 0 done draining, worker 1 not yet
    assert _host_rows(database) == ["h1"]
    first = start(0)
    call(lambda: gatherResults([first.stopService(), second.stopService()]))  # a drain: both together
    assert _host_rows(database) == []


def _host_started(database: Path) -> list[float]:
    with sqlite3.connect(database) as db:
        return [float(row[0]) for row in db.execute("SELECT started FROM hosts")]


def test_the_hosts_row_says_when_the_host_started_not_its_last_restarted_worker(tmp_path: Path) -> None:
    """Every worker, a restarted one too, carries the supervisor's start time (FEDD_WORKER_STARTED),
    and the host's row gives it as the host's `started`; a single fedd gives its own start."""
    sup, roles = _spawned(tmp_path)
    assert {r.started for r in roles} == {sup.started} and abs(sup.started - time.time()) < 60
    database = tmp_path / "site.sqlite"
    config = _config(tmp_path, f"[state]\ndatabase = {database}\nhost_name = h1\n")
    real = the_reactor()
    host_started = time.time() - 3600.0  # the supervisor started an hour ago

    def beat(store: StateStore | None) -> StateStore:
        assert store is not None
        call(store.startService)
        call(store.ready)
        wait_for(lambda: store.hosts, 10, "a first heartbeat")
        return store

    def role(index: int) -> WorkerRole:
        return WorkerRole(index, 2, tmp_path, ("tcp:0",), instance="fedd-host", started=host_started)

    first = beat(build_state(config, real, "fedd-host", role(0)))
    restarted = beat(build_state(config, real, "fedd-host", role(1)))  # its heartbeat is the last one
    try:
        assert _host_started(database) == [host_started]
        assert [h["started"] for h in restarted.hosts] == [host_started]
    finally:
        call(lambda: gatherResults([first.stopService(), restarted.stopService()]))
    before = time.time()
    single = beat(build_state(config, real, "fedd-one", None))
    try:
        assert _host_started(database) == [single.started] and single.started >= before
    finally:
        call(single.stopService)
    old = role(1).environment()
    del old["FEDD_WORKER_STARTED"]  # a worker of an older supervisor, during an upgrade: its own start
    assert WorkerRole.from_environment(old).started is None


def test_the_status_says_when_the_host_started_and_each_worker_when_it_did(tmp_path: Path) -> None:
    """With workers, the status's `fedd.started` (the page's uptime) is the host's start, the one
    its hosts row gives (was: the answering worker's own, so a restarted worker made fedd look just
    started); each worker's own start stays in the workers table."""
    from twisted.internet.testing import MemoryReactorClock

    from fedd.service import build_service
    from fedd.web.statuspage import render_status_page

    host_started = time.time() - 7200.0  # the supervisor started two hours ago
    worker_started = time.time() - 300.0  # this worker five minutes ago (after a crash)
    listed = [{"index": 0, "pid": 1, "started": worker_started, "restarts": 1}]
    (tmp_path / WORKERS_FILE).write_text(json.dumps(listed))
    config = _config(tmp_path)
    role = WorkerRole(0, 2, tmp_path, ("tcp:0",), instance="fedd-host", started=host_started)
    fedd = build_service(config, reactor=MemoryReactorClock(), worker=role)  # never started
    status = fedd.resource.status()
    assert status["fedd"]["started"] == host_started
    assert [w["started"] for w in status["workers"]["workers"]] == [worker_started]
    page = render_status_page(status).decode()
    assert " · up 2.0 h · " in page
    assert "<td>1</td><td><span" in page and ">5 min ago</span></td><td>1</td></tr>" in page
    # a worker of an older supervisor (no FEDD_WORKER_STARTED), or a single fedd: its own start
    before = time.time()
    alone = build_service(config, reactor=MemoryReactorClock(), worker=None)
    assert before <= alone.resource.status()["fedd"]["started"] <= time.time()


def test_a_publication_that_cannot_be_written_is_logged_once_per_outage(tmp_path: Path) -> None:
    """The run directory replaced by a file: each measurement the leader shares fails, warned once
    (not at every interval), and once per name; when it writes again, one line says so, and the next
    outage is warned again. The followers read what was written once it works."""
    run = tmp_path / "run"
    run.write_text("not a directory")
    share = HostShare(run, leader=True)
    with captured_logs() as events:
        for n in range(5):
            share.publish("health", {"n": n})
        share.publish("space", {"n": 0})
        warned = [e for e in events if "cannot share" in str(e.get("log_format", ""))]
        assert [(e["name"], e["log_level"].name) for e in warned] == [("health", "warn"), ("space", "warn")]
        assert all("log_failure" not in e for e in events)
        run.unlink()
        run.mkdir()
        share.publish("health", {"n": 5})
        share.publish("health", {"n": 6})
        again = [e["name"] for e in events if "shared with the other workers again" in str(e.get("log_format", ""))]
        assert again == ["health"]
        assert HostShare(run, leader=False).read("health") == {"n": 6}
        shutil.rmtree(run)
        run.write_text("broken again")
        share.publish("health", {"n": 7})
        warned = [e for e in events if "cannot share" in str(e.get("log_format", ""))]
        assert [e["name"] for e in warned] == ["health", "space", "health"]

"""One view of a host's workers (issue 14): /metrics and the status add up every worker's figures.

Unit tests of the summing (fedd.web.metrics `add_families`, fedd.workers.statussum, the ended
workers' file), then real `twistd fedd` with two workers: the same scrape and status numbers
whichever worker answers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from itertools import count, permutations
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.task import Clock

from fedd.web.metrics import (
    GAUGE_MODES,
    REDIRECT_BUCKETS,
    Metrics,
    PeerCounters,
    add_families,
    add_snapshots,
    families_of,
    snapshot_of,
)
from fedd.web.statuspage import render_status_page
from fedd.workers.shared import ENDED_FILE, CounterFiles, WorkersStatus, fold_ended, read_json, write_json
from fedd.workers.statussum import add_numbers, add_status, status_numbers
from tests.daemon import wait_for
from tests.test_workers import Setup, get, per_worker, run_dir, running, status, worker_pids


class Figures(Collector):
    """A worker's state: a counter, a per-process gauge, a host-wide gauge, a min gauge."""

    def __init__(self, hits: int, entries: int, up: float, connected: float = 1.0) -> None:
        self.hits, self.entries, self.up, self.connected = hits, entries, up, connected

    def collect(self) -> Iterator[Any]:
        lookups = CounterMetricFamily("fedd_locate_cache_lookups", "lookups", labels=["result"])
        lookups.add_metric(["hit"], float(self.hits))
        yield lookups
        yield GaugeMetricFamily("fedd_locate_cache_entries", "entries", value=float(self.entries))
        up = GaugeMetricFamily("fedd_endpoint_up", "up", labels=["endpoint"])
        up.add_metric(["e"], self.up)
        yield up
        yield GaugeMetricFamily("fedd_events_connected", "connected", value=self.connected)


def samples(text: bytes) -> dict[str, float]:
    found = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


class Peers:
    unwritten_since = None

    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots

    def others(self) -> list[dict[str, Any]]:
        return self.snapshots

    def share_counters(self, counters: dict[str, Any]) -> None:
        pass


def worker_metrics(figures: Figures, peers: PeerCounters | None = None) -> Metrics:
    metrics = Metrics(peers=peers)
    metrics.add_state(figures)
    return metrics


def test_counters_and_gauges_combine_by_their_mode() -> None:
    other = worker_metrics(Figures(hits=5, entries=7, up=0.0, connected=0.0))
    other.request(b"GET", 302, 0.001)
    metrics = worker_metrics(Figures(hits=3, entries=2, up=1.0), Peers([other.snapshot()]))
    metrics.request(b"GET", 302, 0.001)
    got = samples(metrics.render())
    assert got['fedd_locate_cache_lookups_total{result="hit"}'] == 8  # counters: summed
    assert got["fedd_locate_cache_entries"] == 9  # a gauge of each process: summed
    assert got['fedd_endpoint_up{endpoint="e"}'] == 1  # host-wide: the answering worker's
    assert got["fedd_events_connected"] == 0  # min: connected only when every worker is
    assert got['fedd_requests_total{method="GET",status="302"}'] == 2
    # alone, a worker's own figures
    alone = samples(worker_metrics(Figures(hits=3, entries=2, up=1.0)).render())
    assert alone['fedd_locate_cache_lookups_total{result="hit"}'] == 3 and alone["fedd_locate_cache_entries"] == 2


def test_labels_only_another_worker_has_still_count_and_bad_families_are_left_out() -> None:
    own = families_of([CounterMetricFamily("fedd_x", "x", labels=["a"])])
    peer = families_of([CounterMetricFamily("fedd_x", "x", labels=["a"], value=None)])
    peer["fedd_x"][2] = [["fedd_x_total", {"a": "only-there"}, 4.0]]
    merged = add_families(own, [peer, {"fedd_y": "garbage"}, {"fedd_x": ["gauge", "x", []]}])
    assert merged == {"fedd_x": ["counter", "x", [["fedd_x_total", {"a": "only-there"}, 4.0]]]}


def test_every_gauge_fedd_exports_has_a_declared_mode() -> None:
    import inspect

    from fedd.confirm import metrics as confirm_metrics
    from fedd.replicate import build as replicate_build
    from fedd.web import metrics as web_metrics

    declared = set()
    for module in (confirm_metrics, replicate_build, web_metrics):
        declared |= set(re.findall(r'GaugeMetricFamily\(\s*"(fedd_\w+)"', inspect.getsource(module)))
        declared |= {
            f"fedd_endpoint_space_{k}" for k in re.findall(r'"fedd_endpoint_space_\{(\w+)\}', inspect.getsource(module))
        }
    assert declared and declared <= set(GAUGE_MODES), declared - set(GAUGE_MODES)


def test_status_numbers_sum_over_workers() -> None:
    def one(sent: int, depth: int, passive: int) -> dict[str, Any]:
        return {
            "events": {"sent": sent, "outbox_depth": depth, "sink": "spool", "connected": True},
            "endpoints": {"e.1": {"kind": "dav", "health": {"state": "online", "passive_failures": passive}}},
            "locate": {"local_hits": 1, "memcached": None},
            "confirm": {"recent": [{"event": "put-done", "path": f"/{sent}"}]},
        }

    mine = one(sent=3, depth=1, passive=0)
    others = [status_numbers(one(sent=4, depth=2, passive=5)), status_numbers(one(sent=10, depth=0, passive=1))]
    add_status(mine, [*others, "junk", [[["events", "sent"], "x"]]])
    assert mine["events"]["sent"] == 17 and mine["events"]["outbox_depth"] == 3
    assert mine["endpoints"]["e.1"]["health"] == {"state": "online", "passive_failures": 6}
    assert mine["locate"] == {"local_hits": 3, "memcached": None}
    assert mine["events"]["connected"] is True and mine["events"]["sink"] == "spool"
    assert [e["path"] for e in mine["confirm"]["recent"]] == ["/3", "/4", "/10"]  # lists joined
    # the ended workers' file keeps counts, not quantities of the moment
    assert sorted(add_numbers(others, counters_only=True)) == [
        [["endpoints", "e.1", "health", "passive_failures"], 6],
        [["events", "sent"], 14],
        [["locate", "local_hits"], 2],
    ]


def test_an_ended_workers_counters_and_status_counts_still_count(tmp_path: Path) -> None:
    dead = worker_metrics(Figures(hits=5, entries=7, up=1.0))
    dead.request(b"GET", 302, 0.001)
    write_json(tmp_path / "counters-11.json", {**dead.snapshot(), "status": [[["events", "sent"], 4]]})
    write_json(tmp_path / "counters-12.json", {**dead.snapshot(), "status": [[["events", "outbox_depth"], 9]]})
    fold_ended(tmp_path, 11)
    fold_ended(tmp_path, 12)
    assert not list(tmp_path.glob("counters-1*.json"))
    ended = read_json(tmp_path / ENDED_FILE)
    assert ended["folded"] == [11, 12] and ended["status"] == [[["events", "sent"], 4]]
    files = CounterFiles(tmp_path, 13, clock=Clock())
    got = samples(worker_metrics(Figures(hits=1, entries=1, up=1.0), files).render())
    assert got['fedd_locate_cache_lookups_total{result="hit"}'] == 11
    assert got["fedd_locate_cache_entries"] == 1  # the gauges of ended workers are gone with them
    assert got['fedd_requests_total{method="GET",status="302"}'] == 2
    section = WorkersStatus(tmp_path, 0, 2, files)
    mine = {"events": {"sent": 1, "outbox_depth": 0}}
    section.add_peers(mine)
    assert mine == {"events": {"sent": 5, "outbox_depth": 0}}


# --- two real workers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("view")
    (base / "files").mkdir()
    for i in range(4):
        (base / "files" / f"f{i}.txt").write_text("a file\n")
    with running(base) as s:
        yield s


def scrape(port: int) -> dict[str, float]:
    code, _, body = get(port, "/metrics")
    assert code == 200
    return samples(body)


def counted_online(data: dict[str, Any]) -> bool:
    return bool(data["endpoints"]["counted"]["health"]["state"] == "online")


def test_metrics_and_status_are_equal_whichever_worker_answers(setup: Setup) -> None:
    pids = worker_pids(per_worker(setup.port, {0, 1}, lambda s: True, "both workers to answer")[0])
    # each worker in turn serves alone (the other paused): each locates the files on its own
    for paused, serving in ((0, 1), (1, 0)):
        os.kill(pids[paused], signal.SIGSTOP)
        try:
            for i in range(4):
                assert get(setup.port, f"/data/f{i}.txt")[0] == 302
            assert status(setup.port)["workers"]["answered_by"]["index"] == serving
        finally:
            os.kill(pids[paused], signal.SIGCONT)
    files = [run_dir(setup) / f"counters-{pid}.json" for pid in pids.values()]

    def misses_written() -> bool:
        counts = [
            n for f in files for p, n in (read_json(f) or {}).get("status", []) if p == ["locate", "local_misses"]
        ]
        return len(counts) == 2 and min(counts) >= 4

    wait_for(misses_written, 5, "both workers' files to hold their locates")
    # per-worker figures are the host's whichever worker answers, over new connections; the endpoint
    # is online at both (worker 1 follows worker 0's first probe within 0.25 s: the test may get
    # here sooner, its workers' counters files written as they answered)
    seen = per_worker(setup.port, {0, 1}, counted_online, "both workers to answer the status, the endpoint online")
    for s in seen.values():
        assert s["locate"]["local_misses"] >= 8, s["locate"]  # 4 by each worker at least
    assert seen[0]["locate"]["local_misses"] == seen[1]["locate"]["local_misses"]
    assert all(s["events"]["emitted"] >= 8 for s in seen.values())  # (worker 0 adds its space reports)
    assert all(s["workers"]["counters_file"]["written"] for s in seen.values())
    # fedd started when the host did (its supervisor), before each worker's own start
    started = {s["fedd"]["started"] for s in seen.values()}
    assert len(started) == 1 and started.pop() <= min(w["started"] for w in seen[0]["workers"]["workers"])
    keys = ('fedd_locate_cache_lookups_total{result="miss"}', 'fedd_requests_total{method="GET",status="302"}')
    scrapes = [scrape(setup.port) for _ in range(8)]
    assert all(s[k] == scrapes[0][k] for s in scrapes for k in keys), [[s[k] for k in keys] for s in scrapes]
    assert scrapes[0][keys[0]] == seen[0]["locate"]["local_misses"]
    assert all(s['fedd_endpoint_up{endpoint="counted"}'] == 1 for s in scrapes)  # the host's, not doubled
    # the page for browsers shows the same sums and says which worker answered
    page = render_status_page(seen[1])
    assert "this page from worker 1; the counts above are those of every worker added up" in page.decode()
    assert f"<th>cache misses</th><td>{seen[1]['locate']['local_misses']}</td>" in page.decode()


def test_checksums_finished_lately_are_joined_newest_first_and_invalidations_summed() -> None:
    def one(finished: list[float], applied: int) -> dict[str, Any]:
        return {
            "checksums": {"recent": [{"path": f"/{t}", "finished_at": t} for t in finished], "computed": len(finished)},
            "locate": {"invalidations": {"seen": 1, "published": 2, "applied": applied, "flushes": 0}},
        }

    mine = one([30.0, 10.0], applied=1)
    add_status(mine, [status_numbers(one([40.0, 20.0], applied=2)), status_numbers(one([25.0], applied=0))])
    assert [e["finished_at"] for e in mine["checksums"]["recent"]] == [40.0, 30.0, 25.0, 20.0, 10.0]
    assert mine["checksums"]["computed"] == 5
    assert mine["locate"]["invalidations"] == {"seen": 3, "published": 6, "applied": 3, "flushes": 0}


def test_a_read_writes_its_workers_counters_first_so_the_next_read_elsewhere_sees_no_less(tmp_path: Path) -> None:
    """In process, two workers' Metrics and status over one run directory, no periodic write: what a
    scrape or status read at worker A reported, a read at worker B right after reports too."""

    def worker(pid: int, sent: list[int]) -> tuple[Metrics, WorkersStatus]:
        def snapshot() -> dict[str, Any]:
            return {**metrics.snapshot(), "status": [[["events", "sent"], sent[0]]]}

        files = CounterFiles(tmp_path, pid, snapshot, clock=Clock())
        metrics = worker_metrics(Figures(hits=0, entries=0, up=1.0), files)
        return metrics, WorkersStatus(tmp_path, pid, 2, files)

    sent_a, sent_b = [0], [0]
    (a, status_a), (b, status_b) = worker(1, sent_a), worker(2, sent_b)
    for _ in range(3):
        a.request(b"GET", 302, 0.001)
    sent_a[0] = 3
    key = 'fedd_requests_total{method="GET",status="302"}'
    assert samples(a.render())[key] == 3
    assert samples(b.render()).get(key) == 3  # was none: worker A's file not written yet
    seen_a: dict[str, Any] = {"events": {"sent": 3}}
    status_a.add_peers(seen_a)
    b.request(b"GET", 302, 0.001)
    sent_b[0] = 1
    seen_b: dict[str, Any] = {"events": {"sent": 1}}
    status_b.add_peers(seen_b)
    assert seen_a["events"]["sent"] == 3 and seen_b["events"]["sent"] == 4
    assert samples(a.render())[key] == 4


def test_a_status_read_writes_the_numbers_it_answers_without_building_the_status_again(tmp_path: Path) -> None:
    """The status a read answers is built once: its own numbers are what the counters file gets
    (written before the others' are added), the status callable is left for the periodic write."""
    built: list[int] = []

    def own_status() -> dict[str, Any]:
        built.append(1)
        return {"events": {"sent": 1}}

    files = CounterFiles(tmp_path, 13, lambda: {"requests": []}, own_status, clock=Clock())
    write_json(tmp_path / "counters-14.json", {"status": [[["events", "sent"], 2]]})
    mine: dict[str, Any] = {"events": {"sent": 5, "outbox_depth": 3}}
    WorkersStatus(tmp_path, 0, 2, files).add_peers(mine)
    assert built == [] and mine == {"events": {"sent": 7, "outbox_depth": 3}}
    written = read_json(files.own)
    assert written["status"] == [[["events", "sent"], 5], [["events", "outbox_depth"], 3]]
    files.share()  # the periodic write builds it
    assert built == [1] and read_json(files.own)["status"] == [[["events", "sent"], 1]]


class Counted(Figures):
    """Figures that count how often they are collected."""

    def __init__(self, hits: int) -> None:
        super().__init__(hits=hits, entries=1, up=1.0)
        self.collected = 0

    def collect(self) -> Iterator[Any]:
        self.collected += 1
        return super().collect()


def test_a_scrape_collects_once_and_writes_what_it_answers_without_building_the_status(tmp_path: Path) -> None:
    """A scrape runs this worker's collectors once: the numbers it writes to its counters file are
    those it answers (the other workers' added to them), and the status numbers beside them are
    those last written, not a status built for the scrape (was: the status built and the collectors
    run twice, once for the file, once for the answer)."""
    built: list[int] = []
    sent = [1]

    def own_status() -> dict[str, Any]:
        built.append(1)
        return {"events": {"sent": sent[0]}}

    figures = Counted(hits=3)
    files = CounterFiles(tmp_path, 13, lambda: metrics.snapshot(), own_status, clock=Clock())
    metrics = worker_metrics(figures, files)
    other = worker_metrics(Figures(hits=5, entries=7, up=0.0))
    other.request(b"GET", 302, 0.001)
    write_json(tmp_path / "counters-14.json", {**other.snapshot(), "status": [[["events", "sent"], 2]]})
    files.share()  # the periodic write: a status built, the collectors run
    assert built == [1] and figures.collected == 1
    sent[0] = 4
    metrics.request(b"GET", 302, 0.001)
    figures.hits = 6
    got = samples(metrics.render())
    assert figures.collected == 2 and built == [1]
    assert got['fedd_locate_cache_lookups_total{result="hit"}'] == 11
    assert got['fedd_requests_total{method="GET",status="302"}'] == 2
    written = read_json(files.own)
    assert written["status"] == [[["events", "sent"], 1]]  # the last written, not a new status
    hits = written["families"]["fedd_locate_cache_lookups"][2]
    assert hits == [["fedd_locate_cache_lookups_total", {"result": "hit"}, 6.0]]
    assert written["requests"] == [["GET", 302, 1]]
    # a scrape before any write builds the status once, for the file
    built.clear()
    first = CounterFiles(tmp_path / "first", 15, lambda: {}, own_status, clock=Clock())
    (tmp_path / "first").mkdir()
    samples(worker_metrics(Figures(hits=1, entries=1, up=1.0), first).render())
    assert built == [1] and read_json(first.own)["status"] == [[["events", "sent"], 4]]


def test_a_counters_file_that_cannot_be_written_is_shown_logged_once_per_outage_and_reads_go_on(
    tmp_path: Path,
) -> None:
    """The run directory gone and a file in its place (as root, a read-only directory would still be
    written): each scrape and status read still answers, with live figures; the status says since
    when the file is not written and why, /metrics says so too, the page in red; one warning for the
    outage, one line when it writes again, no traceback; a second outage is logged again."""
    from twisted.logger import LogLevel

    from tests.inprocess import captured_logs

    start = 1_700_000_000.0
    clock = Clock()
    clock.advance(start)
    parent = tmp_path / "run"
    run = parent / "workers"
    run.mkdir(parents=True)
    sent = [1]
    files = CounterFiles(run, 13, lambda: metrics.snapshot(), lambda: {"events": {"sent": sent[0]}}, clock=clock)
    metrics = worker_metrics(Figures(hits=3, entries=1, up=1.0), files)
    section = WorkersStatus(run, 0, 2, files)
    hits = 'fedd_locate_cache_lookups_total{result="hit"}'

    def status_read() -> dict[str, Any]:
        status: dict[str, Any] = {"fedd": {"now": clock.seconds()}, "events": {"sent": sent[0]}}
        status["workers"] = section.to_json()
        section.add_peers(status)
        return status

    def unwritten(got: dict[str, float]) -> tuple[float, float | None]:
        return got["fedd_counters_file_unwritten"], got.get("fedd_counters_file_unwritten_since_seconds")

    with captured_logs() as logs:
        files.share()
        assert status_read()["workers"]["counters_file"] == {
            "written": True,
            "unwritten_since": None,
            "error": None,
            "failed_writes": 0,
        }
        assert unwritten(samples(metrics.render())) == (0.0, None)

        def break_run_dir() -> None:
            for f in run.iterdir():
                f.unlink()
            run.rmdir()
            parent.rmdir()
            parent.write_text("not a directory")

        break_run_dir()
        clock.advance(10)
        files.share()  # the periodic write: the outage starts
        for n in range(5):
            clock.advance(1)
            sent[0] = 2 + n
            got = samples(metrics.render())
            assert got[hits] == 3 and unwritten(got) == (1.0, start + 10)
            status = status_read()
            assert status["events"]["sent"] == 2 + n  # live figures answered
            counters = status["workers"]["counters_file"]
            assert counters["written"] is False and counters["unwritten_since"] == start + 10
            assert counters["error"].startswith(f"Not a directory: {run}/") and counters["failed_writes"] == 3 + 2 * n
        page = render_status_page(status).decode()
        assert '<p class="bad">worker 0 cannot write its counters file since <span' in page
        assert ">5 s ago</span>: Not a directory: " in page
        warned = [e for e in logs if e["log_level"] >= LogLevel.warn]
        assert len(warned) == 1 and "log_failure" not in warned[0]
        assert str(warned[0]["log_format"]).startswith("cannot write the request counters to {path}: {reason}")
        # the run directory back: the next write says so once, and the figures say it is written
        parent.unlink()
        run.mkdir(parents=True)
        clock.advance(5)
        got = samples(metrics.render())
        assert unwritten(got) == (0.0, None) and read_json(files.own)["families"]
        assert status_read()["workers"]["counters_file"] == {
            "written": True,
            "unwritten_since": None,
            "error": None,
            "failed_writes": 11,
        }
        again = [e for e in logs if "written to {path} again" in str(e["log_format"])]
        assert len(again) == 1 and again[0]["failures"] == 11 and again[0]["seconds"] == 10
        assert len([e for e in logs if e["log_level"] >= LogLevel.warn]) == 1
        break_run_dir()  # a second outage: logged again, dated anew
        clock.advance(3)
        assert unwritten(samples(metrics.render())) == (1.0, clock.seconds())
        assert len([e for e in logs if e["log_level"] >= LogLevel.warn]) == 2


def test_redirect_seconds_add_up_exactly_in_any_order_and_through_a_fold(tmp_path: Path) -> None:
    """The redirect seconds of the workers are added exactly and rounded once: the same float
    whichever worker adds them (its own first, the others in directory order) and after an ended
    worker's are folded in (in floats, 0.1 + 0.2 + 0.3 is 0.6000000000000001 or 0.6 by order)."""

    def snap(seconds: float) -> dict[str, Any]:
        return snapshot_of(({}, [0] * (len(REDIRECT_BUCKETS) + 1), seconds))

    a, b, c = snap(0.1), snap(0.2), snap(0.3)
    sums = {add_snapshots(list(order))[2] for order in permutations([a, b, c])}
    assert sums == {Fraction(0.1) + Fraction(0.2) + Fraction(0.3)}
    for pid, ended in ((11, b), (12, c)):
        write_json(tmp_path / f"counters-{pid}.json", {**ended, "families": {}, "status": []})
        fold_ended(tmp_path, pid)
    assert add_snapshots([a, *CounterFiles(tmp_path, 13, clock=Clock()).others()])[2] in sums
    metrics = Metrics(peers=CounterFiles(tmp_path, 13, clock=Clock()))
    metrics.request(b"GET", 302, 0.1)
    assert samples(metrics.render())["fedd_redirect_seconds_sum"] == float(sums.pop())


# --- summed counters never go back, whichever worker answers ---------------------------------------

SUMMED = ("counter", "histogram")  # gauges may go down
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def summed_samples(text: bytes) -> dict[str, float]:
    """The samples of a scrape's counter and histogram families."""
    kinds = dict(line.split()[2:4] for line in text.decode().splitlines() if line.startswith("# TYPE "))
    found = {}
    for name, value in samples(text).items():
        base = name.partition("{")[0]  # a counter's TYPE line names it with _total, a histogram's without
        family = next((base.removesuffix(x) for x in SUFFIXES if base.endswith(x)), base)
        if kinds.get(base, kinds.get(family)) in SUMMED:
            found[name] = value
    return found


def scrape_and_status(port: int) -> tuple[bytes, dict[str, Any]]:
    """/metrics then the status on one new connection, so one worker answers both (the status says
    which; /metrics does not)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        answers = []
        for path in ("/metrics", "/.well-known/fedd/status"):
            conn.request("GET", path)
            r = conn.getresponse()
            answers.append(r.read())
            assert r.status == 200, answers[-1]
        return answers[0], json.loads(answers[1])
    finally:
        conn.close()


def test_summed_counters_never_go_back_whichever_worker_answers(setup: Setup) -> None:
    """Requests arrive at both workers while /metrics and the status are read over new connections,
    each pair answered by either worker: no counter, histogram bucket, count or sum of a scrape and
    no summed count of the status is ever below what an earlier read reported (was: a read at
    worker 0 added its live counts, a later one at worker 1 worker 0's file of up to 1 s before)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        try:
            for _ in range(2000):  # bounded; stopped once the reads are done
                conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=10)
                try:
                    for n in range(20):  # a new connection every 20 requests: either worker
                        conn.request("GET", f"/data/f{n % 4}.txt")
                        r = conn.getresponse()
                        r.read()
                        assert r.status == 302, r.status
                finally:
                    conn.close()
                if stop.is_set():
                    return
        except BaseException as exc:
            failures.append(exc)

    drivers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for d in drivers:
        d.start()
    highest: dict[str, tuple[float, int, int]] = {}  # figure -> (value, read number, worker)
    back: list[str] = []
    answered: set[int] = set()
    moving = ('fedd_requests_total{method="GET",status="302"}', "fedd_redirect_seconds_count", "events/emitted")
    deadline = time.monotonic() + 60
    try:
        # 150 reads, then on until each of `moving` has risen in a read after the 140th: the load and
        # the other worker's counters file (written each second) may both pause for a few reads
        for n in count():
            if n >= 150 and all(highest[name][1] > 140 for name in moving):
                break
            assert time.monotonic() < deadline, f"reads took over 60 s ({n} done)"
            scraped, data = scrape_and_status(setup.port)
            index = data["workers"]["answered_by"]["index"]
            answered.add(index)
            figures = summed_samples(scraped)
            figures.update({"/".join(p): float(v) for p, v in status_numbers(data, ("counter",))})
            for name, value in figures.items():
                before = highest.get(name)
                if before is not None and value < before[0]:
                    back.append(
                        f"{name}: {before[0]} (read {before[1]}, worker {before[2]}) then {value} ({n}, {index})"
                    )
                if before is None or value > before[0]:
                    highest[name] = (value, n, index)
    finally:
        stop.set()
        for d in drivers:
            d.join(15)
    assert failures == []
    assert back == [], "\n".join(back[:20])
    assert answered == {0, 1}
    # the figures moved until the last reads (the load ran all along)
    for name in moving:
        assert highest[name][1] > 140, (name, highest[name])

"""How `[server] workers` ends (issue 14): a worker that cannot be built from the configuration
stops fedd with exit status 1 and a clear line; the counters of ended workers are added up into one
file (a crash loop does not leave a file per pid) and a scrape's totals never go back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from tests.daemon import env, start_fedd, twistd_command, wait_for
from tests.servers import free_port


def _config(port: int, files: Path, extra: str = "") -> str:
    return (
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\nworkers = 2\n{extra}"
        f"[endpoint files]\nkind = local\npath = {files}\nmap = /data /\n"
    )


def test_worker_that_cannot_start_makes_fedd_exit_1(tmp_path: Path) -> None:
    """The supervisor reads the file fine; each worker fails to build (access log in a missing
    directory): twistd exits 1, says why once per worker and that fedd stops, no traceback."""
    (tmp_path / "files").mkdir()
    conf = tmp_path / "fedd.conf"
    missing = tmp_path / "no-such-dir" / "access.log"
    conf.write_text(_config(free_port(), tmp_path / "files", f"access_log_file = {missing}\n"))
    done = subprocess.run(
        twistd_command("--config", str(conf)), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"cannot open access_log_file {missing}" in out
    assert "cannot start from this configuration (above): fedd stops, exit status 1" in out
    assert "Traceback" not in out


def test_ended_workers_counters_are_added_up_in_one_file(tmp_path: Path) -> None:
    """In process: files of live workers plus the ended workers' sum; folding 50 ended workers
    leaves one file and the same totals; a reader that saw a live file just before it was folded
    counts it once."""
    from twisted.internet.task import Clock

    from fedd.web.metrics import Metrics
    from fedd.workers.shared import ENDED_FILE, CounterFiles, fold_ended

    def counters(pid: int, n: int) -> CounterFiles:
        files = CounterFiles(tmp_path, pid, clock=Clock())
        m = Metrics()
        for _ in range(n):
            m.request(b"GET", 302, 0.0002)
        files.write(m.snapshot())
        return files

    scraper = counters(1, 0)  # the worker that answers the scrape (its own counters are live ints)
    scraping = Metrics(peers=scraper)
    counters(2, 5)
    for pid in range(100, 150):  # a crash loop: each worker answered 3 requests, then died
        dying = counters(pid, 3)
        seen_before = scraper.others()  # a scrape that read the live file just before the fold
        fold_ended(tmp_path, pid)
        ended = scraper.others()[-1]
        assert dying.writer in ended["folded"]
        assert sum(n for _, _, n in ended["requests"]) == 3 * (pid - 99)
        assert len(seen_before) == 2 + (pid > 100)  # worker 2, the dying one, the ended file
    assert sorted(p.name for p in tmp_path.glob("counters-*.json")) == [
        "counters-1.json",
        "counters-2.json",
        ENDED_FILE,
    ]
    requests, redirects, _ = scraping.totals()
    assert requests == {(b"GET", 302): 5 + 50 * 3}
    assert redirects[0] == 5 + 50 * 3  # 0.2 ms: the first bucket
    counters(150, 7)  # a live worker
    counters(151, 4)
    before_fold = (tmp_path / "counters-151.json").read_text()
    fold_ended(tmp_path, 151)
    # a reader that globbed counters-151.json before the unlink still reads it: its writer is folded, skipped
    (tmp_path / "counters-151.json").write_text(before_fold)
    assert scraping.totals()[0] == {(b"GET", 302): 5 + 50 * 3 + 7 + 4}
    # a new worker given pid 151 again (pid_max may be 32768) writes the same file name: it counts
    counters(151, 2)
    assert scraping.totals()[0] == {(b"GET", 302): 5 + 50 * 3 + 7 + 4 + 2}


def test_killed_workers_leave_no_counter_files(tmp_path: Path) -> None:
    """A real supervisor: worker 1 SIGKILLed three times; the run directory then holds the two live
    workers' counters and one file for the ended ones, and /metrics never counted fewer redirects."""
    import http.client

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("a\n")
    port = free_port()
    fedd = start_fedd(tmp_path / "run", _config(port, tmp_path / "files"), port)

    def redirects() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return sum(
            int(float(n)) for n in re.findall(r'^fedd_requests_total\{method="GET",status="302"\} (\S+)', text, re.M)
        )

    def live_pids() -> dict[int, int]:
        return {w["index"]: w["pid"] for w in fedd.status()["workers"]["workers"] if w["pid"]}

    def kill_worker_1(run_dir: Path) -> None:
        victim = wait_for(lambda: live_pids().get(1), 10, "worker 1 to run")
        # its counters reach its file within a second (COUNTERS_INTERVAL)
        wait_for((run_dir / f"counters-{victim}.json").exists, 5, "worker 1's counters file")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: live_pids().get(1), 15, "worker 1 to start again", until=lambda p: p not in (None, victim))

    try:
        found = re.search(r"run directory (\S+)\)", fedd.log_text())
        assert found, fedd.log_text()
        run_dir = Path(found.group(1))
        seen = 0
        for _ in range(3):
            for _ in range(10):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/data/a.txt", headers={"Connection": "close"})
                assert conn.getresponse().status == 302
                conn.close()
            kill_worker_1(run_dir)
            now = redirects()
            assert now >= seen
            seen = now
        wait_for(
            lambda: sorted(p.name for p in run_dir.glob("counters-*.json")),
            10,
            "two live counter files and the ended workers' one",
            until=lambda names: len(names) == 3 and "counters-ended.json" in names,
        )
        assert redirects() >= seen
    finally:
        fedd.stop()

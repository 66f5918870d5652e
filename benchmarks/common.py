"""Shared pieces of the benchmarks: starting fedd, running wrk, reading a process's memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon import Fedd, env, twistd_command, with_workers  # noqa: E402
from tests.daemon import start_fedd as _start_fedd  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

__all__ = ["ROOT", "Fedd", "env", "free_port", "memory", "start_fedd", "twistd_command", "wait_for_port", "wrk"]


def start_fedd(workdir: Path, config_text: str, port: int, *extra: str, timeout: float = 20.0) -> Fedd:
    """fedd as the tests start it, on ONE process unless the configuration sets `[server] workers`:
    the benchmarks measure fedd's CPU and memory by its pid and compare one process with its
    references (workers_scaling.py, tls_auth.py and redirect_throughput.py set `workers` themselves)."""
    return _start_fedd(workdir, with_workers(config_text, "1"), port, *extra, timeout=timeout)


def _run_wrk(
    url: str, connections: int, seconds: float, threads: int | None, extra: list[str], wrap: Sequence[str] = ()
) -> tuple[str, float]:
    """wrk's output and the requests per second it measured (redirects count as completed requests);
    RuntimeError when wrk fails or saw an error response. `wrap`: a command wrk runs under
    (`ip netns exec NAME` for a server in a network namespace)."""
    threads = threads or min(2, connections)
    out = subprocess.run(
        [*wrap, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", *extra, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses during the run:\n{out.stdout}")
    return out.stdout, float(match.group(1))


def wrk(url: str, connections: int, seconds: float, threads: int | None = None, pipeline: int = 1) -> float:
    """Requests per second that wrk measured (redirects count as completed requests). `pipeline` > 1:
    each connection sends that many requests in one write and reads their answers (wrk's own
    pipelining script), so wrk spends a fraction of its per-request CPU and the server is the limit."""
    if pipeline <= 1:
        return _run_wrk(url, connections, seconds, threads, [])[1]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="fedd-wrk-") as script:
        script.write(
            "init = function(args)\n"
            "  local r = {}\n"
            f"  for i = 1, {pipeline} do r[i] = wrk.format(nil) end\n"
            "  req = table.concat(r)\n"
            "end\n"
            "request = function() return req end\n"
        )
        script.flush()
        return _run_wrk(url, connections, seconds, threads, ["-s", script.name])[1]


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_latency(
    url: str, connections: int, seconds: float, threads: int | None = None, wrap: Sequence[str] = ()
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) that wrk --latency measured."""
    stdout, rate = _run_wrk(url, connections, seconds, threads, ["--latency"], wrap)
    quantiles = {}
    for q in ("50", "99"):
        found = re.search(rf"^\s+{q}%\s+([0-9.]+)(us|ms|s)\s*$", stdout, re.M)
        quantiles[q] = float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")
    return rate, quantiles["50"], quantiles["99"]


def curl_pipe(source: str, destination: str) -> float:
    """`curl SRC | curl -T - DST`: the reference for copies through fedd; returns wall seconds."""
    start = time.perf_counter()
    out = subprocess.run(
        f"curl -sS -f --max-time 900 {source} | curl -sS -f --max-time 900 -T - {destination}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=1000,
    )
    if out.returncode != 0:
        raise RuntimeError(f"direct copy failed: {out.stderr}")
    return time.perf_counter() - start


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def http_status(url: str) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def settle(seconds: float = 0.5) -> None:
    time.sleep(seconds)


def cpu_seconds(pids: int | Sequence[int]) -> float:
    """User + system CPU seconds the processes have used so far (clock ticks of /proc/PID/stat);
    a process that has ended counts nothing."""
    total = 0.0
    for pid in [pids] if isinstance(pids, int) else pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total

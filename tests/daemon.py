"""Start fedd itself as `twistd -n fedd` in a subprocess, the way sites run it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_command(*args: str) -> list[str]:
    return [*TWISTD, "-n", "--pidfile=", "fedd", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


@dataclass
class Fedd:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/.well-known/fedd/status", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def redirect_put(self, path: str, size: int) -> str:
        """A PUT to fedd announcing `size` bytes (Expect: 100-continue): the 307's Location."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.putrequest("PUT", path)
        conn.putheader("Content-Length", str(size))
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 307, r.status
        return r.getheader("location") or ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def with_workers(config_text: str, workers: str) -> str:
    """The configuration with `[server] workers = <workers>` where it sets none."""
    if "[server]" not in config_text:
        return config_text + f"\n[server]\nworkers = {workers}\n"
    server_section = config_text.split("[server]", 1)[1].split("\n[", 1)[0]
    if re.search(r"^\s*workers\s*=", server_section, re.M):
        return config_text
    return config_text.replace("[server]", f"[server]\nworkers = {workers}", 1)


def with_test_workers(config_text: str) -> str:
    """The configuration with `[server] workers = $FEDD_TEST_WORKERS` (default `1`) where it sets none.

    fedd's own default is `auto`. The daemon tests that do not set `workers` run on one process
    unless FEDD_TEST_WORKERS says otherwise (`FEDD_TEST_WORKERS=auto bash tests/run.sh` runs them all
    with a worker per core): with two workers a full run still has 2-4 timing failures, different
    each run, in tests that read a number another worker counted right after an action (docs/
    operations.md, Workers). The workers' own behaviour is tested by tests/test_workers*.py."""
    return with_workers(config_text, os.environ.get("FEDD_TEST_WORKERS", "") or "1")


def start_fedd(workdir: Path, config_text: str, port: int, *extra: str, timeout: float = 20.0) -> Fedd:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "fedd.conf"
    config.write_text(with_test_workers(config_text))
    log = workdir / "fedd.log"
    proc = subprocess.Popen(
        twistd_command("--config", str(config), *extra),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=env(),
    )
    fedd = Fedd(proc, port, log, config)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"fedd exited with {proc.returncode}:\n{fedd.log_text()}")
        try:
            fedd.status()
        except urllib.error.HTTPError:
            pass  # it answers (the status may be refused by the site's access rules)
        return True

    try:
        wait_for(answers, timeout, "fedd to answer", interval=0.05, ignore=(OSError,))
    except AssertionError as exc:
        fedd.stop()
        raise RuntimeError(f"fedd did not answer within {timeout}s ({exc}):\n{fedd.log_text()}") from None
    return fedd


def wait_for(
    check: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    *,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (),
    until: Callable[[Any], Any] = bool,
) -> Any:
    """Poll `check` every `interval` s until `until(value)` holds for its value (by default: the
    value is true), and return that value; or fail after `timeout` naming `what` and the last value
    seen. Exceptions of the `ignore` types count as "not yet" (a server still starting refuses
    connections) and are reported as what was last seen."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while True:
        try:
            value = check()
        except ignore as exc:
            value = seen = exc
        else:
            seen = value
        if not isinstance(value, BaseException) and until(value):
            return value
        if time.monotonic() > deadline:
            last = repr(seen)
            if len(last) > 2000:
                last = last[:1000] + " ... " + last[-1000:]
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last saw: {last}")
        time.sleep(interval)

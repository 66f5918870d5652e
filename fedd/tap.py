"""twistd plugin options -> Config -> MultiService. The only module that imports the global reactor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from fedd import twtypes
from fedd.config import Config, ConfigError, default_config, parse_config
from fedd.reload import Reloader
from fedd.twcompat import clean_exit_after_signal

log = Logger(namespace="fedd")
DEMO_FILE = "hello.txt"


class Options(twtypes.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT ...]"
    longdesc = (
        "Run the fedd storage federation. Without --config, an embedded demo federation serves "
        "./fedd-demo (created if missing) at /demo on http://127.0.0.1:8080."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (e.g. /etc/fedd/fedd.conf)."],
        ["demo-dir", None, "fedd-demo", "Directory served by the embedded default (no --config)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint (tcp:8080, ssl:8443:interface=::). Repeatable; overrides the config."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if self["config"] is not None:
            if self["demo-dir"] != "fedd-demo":
                raise usage.UsageError("--demo-dir only applies without --config")
            try:
                self.config = parse_config(path=self["config"])
            except ConfigError as exc:
                raise usage.UsageError(
                    f"configuration {self['config']} has {len(exc.errors)} error(s):\n  " + "\n  ".join(exc.errors)
                ) from None
        else:
            self.config = demo_config(self["demo-dir"], self["listen"][0] if self["listen"] else None)
        if self["listen"]:
            from dataclasses import replace

            self.config = replace(self.config, server=replace(self.config.server, listen=tuple(self["listen"])))


def demo_config(demo_dir: str, listen: str | None) -> Config:
    path = Path(demo_dir).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        sample = path / DEMO_FILE
        if not sample.exists():
            sample.write_text("Hello from the fedd demo federation.\n")
    except OSError as exc:
        raise usage.UsageError(f"cannot prepare the demo directory {path}: {exc.strerror}") from None
    return default_config(str(path), listen or "tcp:8080:interface=127.0.0.1")


def _on_sighup(reactor: Any, reloader: Reloader) -> None:
    """`systemctl reload fedd`: SIGHUP re-reads the configuration (in the reactor thread, between requests)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reloader.reload)

    signal.signal(signal.SIGHUP, handler)


def worker_count(config: Config, demo: bool) -> int:
    """`[server] workers`, `auto` (0) resolved to one per core; the embedded demo stays on one process."""
    from fedd.workers import cores

    if demo:
        return 1
    return config.server.workers or cores()


def run_dir() -> Path:
    """Where the workers share their files: systemd's RuntimeDirectory, else a new temporary directory."""
    import os
    import tempfile

    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "workers"
    return Path(tempfile.mkdtemp(prefix="fedd-workers-"))


def supervisor_service(options: Options, count: int) -> IService:
    """`[server] workers` > 1: a supervisor of `count` workers (fedd.workers.supervisor)."""
    import shutil
    import signal

    from twisted.internet import reactor as global_reactor

    from fedd.workers.supervisor import Supervisor

    reactor: Any = global_reactor

    config: Config = options.config
    directory = run_dir()
    argv = ["--config", options["config"]]
    supervisor = Supervisor(
        reactor=reactor,
        count=count,
        listen=config.server.listen,
        run_dir=directory,
        argv=argv,
        stop_timeout=config.server.drain_notice + config.server.drain_timeout + 15.0,
    )

    def hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(supervisor.reload)  # numbered: logs "reloaded (all N workers)" when done

    signal.signal(signal.SIGHUP, hup)
    reactor.addSystemEventTrigger("after", "shutdown", clean_exit_after_signal, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", _exit_status_at_end, supervisor)
    if directory.name.startswith("fedd-workers-"):  # our temporary one (systemd removes its own)
        reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, directory, True)
    return supervisor


def _exit_status_at_end(supervisor: Any) -> None:
    """twistd exits 0 once its reactor has stopped, whatever stopped it: a supervisor that stopped
    because a worker could not start makes the process exit with its status, after twistd's own
    cleanup (pid file, log), at interpreter exit."""
    import atexit
    import os
    import sys

    code = int(supervisor.exit_code)
    if code:

        def leave() -> None:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)

        atexit.register(leave)


def run_worker(argv: list[str]) -> None:
    """One worker (`python -m fedd.workers`, started by the supervisor): build fedd on the inherited
    sockets, log JSON lines to stdout, reload on SIGHUP, drain and exit on SIGTERM or when the
    supervisor is gone."""
    import os
    import signal
    import sys
    from dataclasses import replace

    from twisted.internet import reactor as global_reactor
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    from fedd.service import build_service
    from fedd.workers import EX_CONFIG, WorkerRole

    reactor: Any = global_reactor
    role = WorkerRole.from_environment(os.environ)
    _die_with_parent()
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)
    if len(argv) != 2 or argv[0] != "--config":
        raise SystemExit("usage: python -m fedd.workers --config FILE (started by fedd's supervisor)")
    path = argv[1]
    from fedd.reload import asked_generation

    generation = asked_generation(role.run_dir)  # the reloads asked before this worker read the file
    try:
        parsed = parse_config(path=path)
        config = replace(parsed, server=replace(parsed.server, listen=role.listen))
        fedd = build_service(config, reactor=reactor, config_path=path, worker=role)
    # worded as one fedd says it (the log's `[worker-N ...]` names the worker): every worker fails the
    # same way, and the supervisor logs a line that another worker logged already once
    except ConfigError as exc:
        log.critical("fedd: {path}: {errors}", path=path, errors="; ".join(exc.errors))
        raise SystemExit(EX_CONFIG) from None
    except (usage.UsageError, SystemExit) as exc:
        log.critical("fedd: {error}", error=str(exc))
        raise SystemExit(EX_CONFIG) from None
    stopping: list[bool] = []

    def stop(signum: int, frame: Any) -> None:
        if not stopping:  # a second SIGTERM (systemd signals the whole group) is the same stop
            stopping.append(True)
            reactor.callFromThread(reactor.stop)

    def handlers() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    _on_sighup(reactor, fedd.reloader)
    top = fedd.service
    top.privilegedStartService()
    reactor.callWhenRunning(handlers)
    reactor.callWhenRunning(top.startService)
    if asked_generation(role.run_dir) > generation:  # a SIGHUP came while building (ignored): apply it now
        reactor.callWhenRunning(fedd.reloader.reload)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.callWhenRunning(log.info, "worker {index} serving (pid {pid})", index=role.index, pid=os.getpid())
    reactor.run()


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL (no orphaned workers)."""
    import ctypes
    import os
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl
        raise SystemExit(0)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from fedd.service import build_service

    config: Config = options.config
    count = worker_count(config, options["config"] is None)
    if count > 1:
        return supervisor_service(options, count)
    try:
        fedd = build_service(config, reactor=reactor, config_path=options["config"])
    except usage.UsageError as exc:
        raise SystemExit(f"fedd: {exc}") from None
    reactor.addSystemEventTrigger("after", "shutdown", clean_exit_after_signal, reactor)
    _on_sighup(reactor, fedd.reloader)  # now: a SIGHUP right after the port opens must already be a reload
    if options["config"] is None:
        listen = config.server.listen[0]
        port = listen.split(":")[1] if ":" in listen else "8080"
        demo = config.endpoints[0].path
        reactor.callWhenRunning(
            log.info,
            "fedd demo federation serving {demo} at /demo; try: curl -L http://127.0.0.1:{port}/demo/{file}",
            demo=demo,
            port=port,
            file=DEMO_FILE,
        )
    else:
        reactor.callWhenRunning(
            log.info,
            "fedd started from {files} with {n} endpoint(s) on {listen}",
            files=", ".join(config.files),
            n=len(config.endpoints),
            listen=", ".join(config.server.listen),
        )
    return fedd.service

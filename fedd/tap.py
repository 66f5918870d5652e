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


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from fedd.service import build_service

    config: Config = options.config
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

"""PostgreSQL for the shared-state tests: a fresh database on the machine's own server (127.0.0.1:5432,
trust auth, user postgres), and a private server of our own (initdb/pg_ctl as user postgres on a free
port) that a fault test may stop and start."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHARED = "postgresql://postgres@127.0.0.1:5432"


def _psql(url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-tAc", sql], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {out.stderr}")
    return out.stdout


def create_database(server: str = SHARED) -> str:
    """A new, empty database on `server`; returns its URL."""
    name = f"fedd_test_{secrets.token_hex(4)}"
    _psql(f"{server}/postgres", f"CREATE DATABASE {name}")
    return f"{server}/{name}"


def drop_database(url: str) -> None:
    server, _, name = url.rpartition("/")
    _psql(f"{server}/postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def query(url: str, sql: str) -> list[list[str]]:
    return [line.split("|") for line in _psql(url, sql).splitlines() if line]


@dataclass
class PrivatePostgres:
    """A PostgreSQL 15 server of our own, in `workdir`, on 127.0.0.1:`port`."""

    workdir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.workdir / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-l", str(self.workdir / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_private_postgres() -> PrivatePostgres:
    # not under pytest's temporary directory (0700, root's): the server runs as user postgres
    workdir = Path(tempfile.mkdtemp(prefix="fedd-pg-"))
    shutil.chown(workdir, "postgres")
    workdir.chmod(0o700)
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            "-D",
            str(workdir / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pg = PrivatePostgres(workdir, free_port())
    pg.start()
    return pg

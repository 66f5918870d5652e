"""What one worker learns, every worker of the host applies (fedd.workers): one instance id for the
host's fedd, passed by the supervisor to every worker it starts, restarts included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedd.workers import WorkerRole
from fedd.workers.supervisor import Supervisor


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


def test_every_worker_and_a_restarted_one_get_the_supervisors_instance_id(tmp_path: Path) -> None:
    reactor = _Reactor()
    sup = _supervisor(tmp_path, reactor)
    sup.spawn(0)
    sup.spawn(1)
    sup.spawn(1)  # started again after a crash
    roles = [WorkerRole.from_environment(env) for env in reactor.spawned]
    assert [r.index for r in roles] == [0, 1, 1]
    assert {r.instance for r in roles} == {sup.instance} and sup.instance.startswith("fedd-")
    assert _supervisor(tmp_path, _Reactor()).instance != sup.instance  # another fedd, another id


def test_a_role_without_an_instance_id_reads_as_empty() -> None:
    role = WorkerRole(index=1, count=2, run_dir=Path("/run/x"), listen=("tcp:1",), instance="fedd-abc")
    env = role.environment()
    assert WorkerRole.from_environment(env) == role
    del env["FEDD_WORKER_INSTANCE"]  # a worker of an older supervisor, during an upgrade
    assert WorkerRole.from_environment(env).instance == ""

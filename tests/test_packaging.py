"""The RPM (built here with Debian's rpmbuild), its systemd unit and the Grafana dashboard.

Needs the Debian packages `rpm` and `rpmlint` (tests/run.sh installs them) and systemd-analyze.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

import fedd
from fedd.auth.rules import parse_access
from fedd.config import parse_config
from fedd.endpoints.base import Space
from fedd.service import build_service
from fedd.space.service import Measurement

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "systemd" / "fedd.service"
DASHBOARD = ROOT / "packaging" / "grafana" / "fedd-dashboard.json"
SITELIB = re.compile(r"^/usr/lib/python3\.\d+/site-packages/")
RPMFILE_CONFIG, RPMFILE_NOREPLACE = 1 << 0, 1 << 4


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def rpm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("rpmbuild", "rpmlint", "rpm2archive"):
        assert shutil.which(tool), f"{tool} is missing: apt-get install rpm rpmlint (tests/run.sh does)"
    out = tmp_path_factory.mktemp("rpm")
    started = time.monotonic()
    build = run(str(ROOT / "packaging" / "rpm" / "build.sh"), str(out), cwd=ROOT)
    assert build.returncode == 0, build.stdout + build.stderr
    assert time.monotonic() - started < 60, "the RPM build must take well under a minute"
    (rpm,) = (out / "RPMS" / "noarch").glob("fedd-*.noarch.rpm")
    return rpm


@pytest.fixture(scope="module")
def payload(rpm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of the RPM, unpacked under a temporary root."""
    work = tmp_path_factory.mktemp("payload")
    copy = work / rpm_file.name
    shutil.copy(rpm_file, copy)
    result = run("rpm2archive", str(copy))
    assert result.returncode == 0, result.stderr
    root = work / "root"
    with tarfile.open(f"{copy}.tgz") as archive:
        archive.extractall(root, filter="tar")
    return root


def query(rpm: Path, fmt: str) -> list[str]:
    result = run("rpm", "-qp", "--qf", fmt, str(rpm))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_rpm_holds_package_plugin_unit_and_config(rpm_file: Path) -> None:
    result = run("rpm", "-qlp", str(rpm_file))
    assert result.returncode == 0, result.stderr
    files = set(result.stdout.splitlines())
    assert query(rpm_file, "%{VERSION}") == [fedd.__version__]
    for path in (
        "/usr/lib/systemd/system/fedd.service",
        "/usr/lib/sysusers.d/fedd.conf",
        "/usr/bin/fedd-import-ugr",
        "/etc/fedd/fedd.conf",
        "/etc/fedd/access.conf",
        "/etc/fedd/conf.d",
        "/etc/fedd/conf.d/local.conf",
        "/etc/logrotate.d/fedd",
        "/var/lib/fedd",
        "/var/lib/fedd/data",
        "/var/log/fedd",
        "/usr/share/fedd/grafana/fedd-dashboard.json",
        "/usr/share/doc/fedd/operations.md",
    ):
        assert path in files, path
    in_sitelib = {SITELIB.sub("", f) for f in files if SITELIB.match(f)}
    for path in ("twisted/plugins/fedd_plugin.py", "fedd/__init__.py", "fedd/tap.py", "fedd/ugrimport.py"):
        assert path in in_sitelib, path
    assert any(re.fullmatch(r"twisted/plugins/__pycache__/fedd_plugin\.cpython-\d+\.pyc", f) for f in in_sitelib)
    # the RPM must not own Twisted's directories or its plugin cache
    assert not {"twisted", "twisted/plugins", "twisted/plugins/dropin.cache"} & in_sitelib
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fedd").rglob("*.py")}
    assert {f for f in in_sitelib if f.startswith("fedd/") and f.endswith(".py")} >= shipped


def test_rpm_config_files_and_ownership(rpm_file: Path) -> None:
    result = run("rpm", "-qcp", str(rpm_file))
    assert result.returncode == 0, result.stderr
    assert {"/etc/fedd/fedd.conf", "/etc/fedd/access.conf", "/etc/fedd/conf.d/local.conf"} <= set(
        result.stdout.splitlines()
    )
    rows = {
        name: (flags, user, group, perms)
        for name, flags, user, group, perms in (
            line.split()
            for line in query(
                rpm_file, "[%{FILENAMES} %{FILEFLAGS} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEMODES:perms}\n]"
            )
        )
    }
    for conf in ("/etc/fedd/fedd.conf", "/etc/fedd/access.conf", "/etc/fedd/conf.d/local.conf"):
        flags, user, group, perms = rows[conf]
        assert int(flags) & (RPMFILE_CONFIG | RPMFILE_NOREPLACE) == RPMFILE_CONFIG | RPMFILE_NOREPLACE, conf
        assert (user, group, perms) == ("root", "fedd", "-rw-r-----"), conf  # keys may live in conf.d
    for state in ("/var/lib/fedd", "/var/lib/fedd/data", "/var/log/fedd"):
        assert rows[state][1:] == ("fedd", "fedd", "drwxr-x---"), state


def test_rpm_scriptlets(rpm_file: Path) -> None:
    result = run("rpm", "-qp", "--scripts", str(rpm_file))
    assert result.returncode == 0, result.stderr
    scripts = result.stdout
    posttrans = scripts.split("posttrans scriptlet", 1)[1]
    assert "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" in posttrans
    pre = scripts.split("preinstall scriptlet", 1)[1].split("postinstall", 1)[0]
    assert "useradd -r -g fedd -d /var/lib/fedd -s /sbin/nologin" in pre
    sysusers = (ROOT / "packaging" / "rpm" / "fedd.sysusers").read_text()
    assert re.search(r"^u fedd - .* /var/lib/fedd /sbin/nologin$", sysusers, re.M)


# rpmlint errors that come from building on Debian or from deliberate choices, each with its reason
RPMLINT_ACCEPTED = {
    # Debian's rpmlint applies openSUSE's policy: EL/Fedora dropped Group and set Packager at build time
    "no-group-tag": "openSUSE policy; EL9 spec files have no Group",
    "no-packager-tag": "set by the build system (Koji/mock), not in the spec",
    # a local test build is never signed; releases are signed by the repository
    "no-signature": "test builds are unsigned",
    # deliberate: conf.d holds S3/Azure keys, so /etc/fedd is root:fedd 0750 and its files 0640;
    # /var/lib/fedd and /var/log/fedd hold the event outbox and access logs (client DNs)
    "non-standard-dir-perm": "private state, log and config directories (0750)",
    "non-readable": "configuration that may hold endpoint keys (0640 root:fedd)",
}


def test_rpmlint_has_no_errors(rpm_file: Path) -> None:
    result = run("rpmlint", str(rpm_file))
    errors = [line for line in result.stdout.splitlines() if re.match(r"^\S+: E: ", line)]
    assert "1 packages and 0 specfiles checked" in result.stdout, result.stdout + result.stderr
    unexpected = [line for line in errors if line.split()[2] not in RPMLINT_ACCEPTED]
    assert not unexpected, "\n".join(unexpected)
    # the accepted ones are only about the files meant
    for line in errors:
        name, *rest = line.split()[2:]
        if name in ("non-standard-dir-perm", "non-readable"):
            assert rest[0].startswith(("/etc/fedd", "/var/lib/fedd", "/var/log/fedd")), line


def test_shipped_configuration_parses(payload: Path) -> None:
    """/etc/fedd as installed, with its absolute paths moved under the unpacked root."""
    etc = payload / "etc" / "fedd"
    for conf in [etc / "fedd.conf", *(etc / "conf.d").glob("*.conf")]:
        text = conf.read_text()
        for absolute in ("/etc/fedd", "/var/lib/fedd", "/var/log/fedd"):
            text = text.replace(absolute, str(payload) + absolute)
        conf.write_text(text)
    config = parse_config(path=str(etc / "fedd.conf"), environ={})
    assert config.server.listen == ("ssl:443",)
    assert [(ep.id, ep.kind, ep.mappings) for ep in config.endpoints] == [("local-data", "local", (("/local", "/"),))]
    assert config.auth is not None and Path(config.auth.access_file).is_file()
    assert parse_access(Path(config.auth.access_file).read_text(), config.auth.access_file)
    # what fedd writes must be where the unit lets it write
    writable = [str(payload) + d for d in re.findall(r"^ReadWritePaths=(.*)$", UNIT.read_text(), re.M)[0].split()]
    for path in (config.events.outbox, config.events.spool, config.server.access_log_file):
        assert any(path.startswith(d + "/") for d in writable), path


def test_packaged_console_script_runs(payload: Path, tmp_path: Path) -> None:
    (sitelib,) = (payload / "usr" / "lib").glob("python3.*/site-packages")
    ugr = tmp_path / "ugr.conf"
    ugr.write_text("glb.locplugin[]: libugrlocplugin_dav.so site 10 https://dav.example.org/data\n")
    env = {**os.environ, "PYTHONPATH": str(sitelib)}
    result = run(sys.executable, str(payload / "usr" / "bin" / "fedd-import-ugr"), str(ugr), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[endpoint site]" in result.stdout
    assert (
        str(sitelib)
        in run(sys.executable, "-c", "import fedd.ugrimport as m; print(m.__file__)", env=env, cwd=tmp_path).stdout
    )


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_settings() -> None:
    s = unit_settings()
    assert s["ExecStart"] == ["/usr/bin/twistd --nodaemon --pidfile= fedd --config /etc/fedd/fedd.conf"]
    for key, value in {
        "Restart": "on-failure",
        "User": "fedd",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "fedd",
        "LogsDirectory": "fedd",
        "LimitNOFILE": "65536",
    }.items():
        assert s[key] == [value], key


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    twistd = Path(sys.executable).parent / "twistd"
    assert twistd.is_file()
    # the same unit, with ExecStart pointing at a twistd that exists on this machine
    unit = tmp_path / "fedd.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/twistd ", f"ExecStart={twistd} "))
    result = run(analyze, "verify", str(unit))
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "fedd.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
    # and the check does catch mistakes in this unit
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    result = run(analyze, "verify", str(unit))
    assert "Unknown key 'ProtectSystm'" in result.stderr


def test_unit_reload_matches_the_daemon(tmp_path: Path) -> None:
    """ExecReload sends SIGHUP: the unit may offer reload only if fedd survives SIGHUP."""
    twistd = Path(sys.executable).parent / "twistd"
    log = tmp_path / "fedd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "fedd", "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "starting on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGHUP)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        survives = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    offers_reload = "ExecReload" in unit_settings()
    assert offers_reload == survives, (
        "fedd survives SIGHUP: add ExecReload=/bin/kill -HUP $MAINPID to the unit"
        if survives
        else "SIGHUP stops fedd: the unit must not offer ExecReload"
    )


def exposed_metric_names(workdir: Path) -> set[str]:
    """Every sample name fedd's /metrics shows, from the service fedd really builds (one local
    endpoint, events, the space reporter), after a request, a probe and a space measurement."""
    (workdir / "data").mkdir()
    config = parse_config(
        text=f"""[server]
listen = tcp:0:interface=127.0.0.1
[events]
outbox = {workdir / "outbox.sqlite"}
[checksums]
database = {workdir / "checksums.sqlite"}
[endpoint ep1]
kind = local
path = {workdir / "data"}
"""
    )
    top = build_service(config, reactor=MemoryReactorClock())  # built, never started: no port, no thread
    top.federation.health.success("ep1", 12.0)  # type: ignore[attr-defined]
    top.space.measurements["ep1"] = Measurement(space=Space(used=1, total=10), measured=0.0)  # type: ignore[attr-defined]
    metrics = top.resource.metrics  # type: ignore[attr-defined]
    metrics.request(b"GET", 302, 0.004)
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_dashboard_uses_only_exposed_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "fedd" and dashboard["uid"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    exprs: list[str] = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                exprs.append(target["expr"])
            walk(panel.get("panels", []))  # type: ignore[arg-type]

    walk(dashboard["panels"])
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bfedd_[a-z0-9_]+\b", expr))
        assert names, f"an expression without a fedd metric: {expr}"
        used |= names
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr
    exposed = exposed_metric_names(tmp_path)
    assert used - exposed == set(), sorted(used - exposed)
    for family in ("fedd_requests_total", "fedd_redirect_seconds_bucket", "fedd_locate_cache_lookups_total",
                   "fedd_endpoint_up", "fedd_endpoint_latency_seconds", "fedd_endpoint_errors_total",
                   "fedd_events_outbox_depth", "fedd_open_connections"):  # fmt: skip
        assert family in used, family
    assert "fedd_endpoint_space_free_bytes" in used, "no free-space panel"

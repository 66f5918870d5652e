"""The RPM (built here with Debian's rpmbuild), its systemd unit and the Grafana dashboard.

The RPM is self-contained for EL9: fedd and its locked wheels in /usr/lib/fedd, run by python3.11.
The tests build it twice (release 1 and 2), check every Requires against the EL9 BaseOS/AppStream
list in tests/data/el9-packages.txt, install it with `rpm -i --root` into a scratch root (--nodeps:
Debian's rpm database is empty, the EL9 list is the dependency check; --noscripts: the root has no
shell, so the posttrans step is run here by hand, relocated) and run the installed tree's
`fedd-twistd fedd` demo with this machine's /usr/bin/python3.11, then upgrade it. The lock holds the
extras the RPM ships (zlib-ng, psycopg with its bundled libpq): the installed fedd hashes with
zlib-ng's Adler-32 and keeps its [state] in this machine's PostgreSQL.

Needs the Debian packages `rpm`, `rpmlint`, `python3-pip` (tests/run.sh installs them),
systemd-analyze, the PostgreSQL server of tests/pgservers.py, and PyPI for the first build (the
wheels are cached in ~/.cache/fedd/wheels).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

import fedd
from fedd.auth.rules import parse_access
from fedd.config import parse_config
from fedd.endpoints.base import Space
from fedd.service import build_service
from fedd.space.service import Measurement
from tests import pgservers
from tests.daemon import wait_for

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "systemd" / "fedd.service"
DASHBOARD = ROOT / "packaging" / "grafana" / "fedd-dashboard.json"
LOCK = ROOT / "packaging" / "rpm" / "requirements.lock"
WHEELS_SH = ROOT / "packaging" / "rpm" / "wheels.sh"
EL9 = Path(__file__).resolve().parent / "data" / "el9-packages.txt"
SITE = "/usr/lib/fedd/site-packages/"
RPMFILE_CONFIG, RPMFILE_NOREPLACE = 1 << 0, 1 << 4
# a fast payload for the tests (same files); EL9's rpmbuild uses zstd level 19, Debian's gzip -9
FAST_PAYLOAD = ("--define", "_binary_payload w3.zstdio")
BUILD_SECONDS = 240  # one build, the first download of the wheels included, on a loaded 2-core machine


def run(
    *args: str, timeout: float = 120, cwd: str | Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def build_command(out: Path, *rpmbuild_args: str) -> list[str]:
    """packaging/rpm/build.sh OUTDIR, with a fast payload."""
    for tool in ("rpmbuild", "rpmlint", "/usr/bin/python3.11"):
        assert shutil.which(tool), f"{tool} is missing: apt-get install rpm rpmlint python3-pip (tests/run.sh does)"
    return [str(ROOT / "packaging" / "rpm" / "build.sh"), str(out), *FAST_PAYLOAD, *rpmbuild_args]


def built_rpm(out: Path, returncode: int, log: str, seconds: float) -> Path:
    assert returncode == 0, log
    assert seconds < BUILD_SECONDS, f"the RPM build took {seconds:.0f} s"
    (rpm,) = (out / "RPMS" / "x86_64").glob("fedd-*.x86_64.rpm")
    return rpm


@dataclass
class Builds:
    release_1: Path
    release_2_out: Path
    release_2_proc: subprocess.Popen[str]
    release_2_started: float

    def release_2(self) -> tuple[Path, str]:
        """The release-2 RPM (built in the background while the other tests run) and its stderr."""
        _, err = self.release_2_proc.communicate(timeout=BUILD_SECONDS + 60)
        seconds = time.monotonic() - self.release_2_started
        return built_rpm(self.release_2_out, self.release_2_proc.returncode, err, seconds), err


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    out = tmp_path_factory.mktemp("rpm")
    started = time.monotonic()
    first = run(*build_command(out), cwd=ROOT, timeout=BUILD_SECONDS + 60)
    rpm = built_rpm(out, first.returncode, first.stdout + first.stderr, time.monotonic() - started)
    # release 2 for the upgrade test, started after the first build filled the wheel cache
    out2 = tmp_path_factory.mktemp("rpm2")
    proc = subprocess.Popen(
        build_command(out2, "--define", "fedd_release 2"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    yield Builds(rpm, out2, proc, time.monotonic())
    if proc.poll() is None:  # the upgrade test did not run: stop the build and its children
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def rpm_file(builds: Builds) -> Path:
    return builds.release_1


@pytest.fixture(scope="module")
def rpm_release_2(builds: Builds) -> tuple[Path, str]:
    return builds.release_2()


def rpm_root(*args: str) -> subprocess.CompletedProcess[str]:
    # --nodeps: this root has no EL9 packages (the Requires are checked against tests/data/el9-packages.txt);
    # --noscripts: it has no /bin/sh to run them in (see test_posttrans_builds_the_plugin_cache)
    return run("rpm", "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts", *args, timeout=300)


@pytest.fixture(scope="module")
def installed(rpm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root with the RPM installed by `rpm -i --root`."""
    root = tmp_path_factory.mktemp("el9root")
    result = rpm_root("--root", str(root), "-i", str(rpm_file))
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def query(rpm: Path, fmt: str) -> list[str]:
    result = run("rpm", "-qp", "--qf", fmt, str(rpm))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def locked() -> dict[str, str]:
    """requirements.lock: distribution name -> version."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:[0-9a-f]{64}", LOCK.read_text(), re.M))


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """setup.py's install_requires and extras_require, read as wheels.sh reads them (not run)."""
    found = {}
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg in ("install_requires", "extras_require"):
            found[node.arg] = ast.literal_eval(node.value)
    return found["install_requires"], found["extras_require"]


def test_lock_holds_install_requires_and_the_shipped_extras() -> None:
    """requirements.lock is what `wheels.sh lock` made of setup.py as it is now: install_requires and
    the extras wheels.sh ships (zlib-ng's fast Adler-32; psycopg with its libpq for PostgreSQL), each
    locked at a version setup.py accepts. After a change to either: run `packaging/rpm/wheels.sh lock`."""
    (listed,) = re.findall(r"^extras=\((.*)\)$", WHEELS_SH.read_text(), re.M)
    extras = listed.split()
    assert {"fast", "postgresql"} <= set(extras)
    requires, extras_require = setup_requirements()
    wanted = requires + [r for extra in extras for r in extras_require[extra]]
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    assert f"# extras: {' '.join(extras)}" in header
    assert "#   " + " ".join(wanted) in header, "the lock is older than setup.py: run packaging/rpm/wheels.sh lock"
    versions: dict[str, str] = {canonicalize_name(name): version for name, version in locked().items()}
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{requirement} is not locked"
        assert requirement.specifier.contains(versions[name], prereleases=True), (requirement, versions[name])
    assert "zlib-ng" in versions
    # psycopg[binary]: the C implementation with libpq and OpenSSL inside, of exactly psycopg's version
    assert versions["psycopg-binary"] == versions["psycopg"]
    assert re.search(
        r"^psycopg-binary==\S+ .*# psycopg_binary-\S+-cp311-cp311-\S*manylinux\S+\.whl$", LOCK.read_text(), re.M
    )


def test_rpm_holds_private_tree_launchers_unit_and_config(rpm_file: Path) -> None:
    result = run("rpm", "-qlp", str(rpm_file))
    assert result.returncode == 0, result.stderr
    files = set(result.stdout.splitlines())
    assert query(rpm_file, "%{VERSION} %{ARCH}") == [f"{fedd.__version__} x86_64"]
    for path in (
        "/usr/bin/fedd-twistd",
        "/usr/bin/fedd-python",
        "/usr/bin/fedd-import-ugr",
        "/usr/lib/fedd/requirements.lock",
        "/usr/lib/systemd/system/fedd.service",
        "/usr/lib/sysusers.d/fedd.conf",
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
        SITE + "twisted/plugins/fedd_plugin.py",
        SITE + "twisted/plugins/dropin.cache",  # %ghost: made by %posttrans, removed with the package
    ):
        assert path in files, path
    # nothing in the interpreter's own site-packages any more
    assert not [f for f in files if re.match(r"^/usr/lib(64)?/python3", f)]
    in_site = {f.removeprefix(SITE) for f in files if f.startswith(SITE)}
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fedd").rglob("*.py")}
    assert {f for f in in_site if f.startswith("fedd/") and f.endswith(".py")} >= shipped
    # compiled with python3.11 at build time: the fedd user cannot write __pycache__ there
    for py in [*shipped, "twisted/plugins/fedd_plugin.py", "twisted/internet/reactor.py"]:
        folder, _, name = py.rpartition("/")
        assert f"{folder}/__pycache__/{name[:-3]}.cpython-311.pyc" in in_site, py
    # exactly the locked distributions, at the locked versions
    dists = {m.group(1).lower().replace("_", "-").replace(".", "-"): m.group(2)
             for f in in_site if (m := re.fullmatch(r"([^/]+)-([^-/]+)\.dist-info", f))}  # fmt: skip
    assert dists == {name.lower().replace("_", "-").replace(".", "-"): v for name, v in locked().items()}


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
    for launcher in ("/usr/bin/fedd-twistd", "/usr/bin/fedd-python", "/usr/bin/fedd-import-ugr"):
        assert rows[launcher][1:] == ("root", "root", "-rwxr-xr-x"), launcher


def test_rpm_scriptlets(rpm_file: Path) -> None:
    result = run("rpm", "-qp", "--scripts", str(rpm_file))
    assert result.returncode == 0, result.stderr
    scripts = result.stdout
    posttrans = scripts.split("posttrans scriptlet", 1)[1]
    assert (
        "/usr/bin/fedd-python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'"
        in posttrans
    )
    pre = scripts.split("preinstall scriptlet", 1)[1].split("postinstall", 1)[0]
    assert "useradd -r -g fedd -d /var/lib/fedd -s /sbin/nologin" in pre
    sysusers = (ROOT / "packaging" / "rpm" / "fedd.sysusers").read_text()
    assert re.search(r"^u fedd - .* /var/lib/fedd /sbin/nologin$", sysusers, re.M)


def el9_offer() -> tuple[set[str], dict[str, str], dict[tuple[str, str], tuple[int, ...]]]:
    """tests/data/el9-packages.txt: packages, capability -> package, (soname, prefix) -> newest version."""
    packages: set[str] = set()
    provides: dict[str, str] = {}
    symbols: dict[tuple[str, str], tuple[int, ...]] = {}
    for line in EL9.read_text().splitlines():
        kind, *fields = line.split() or ["#"]
        if kind == "package":
            packages.add(fields[0])
        elif kind == "provides":
            provides[fields[1]] = fields[0]
        elif kind == "symbols":
            symbols[(fields[1], fields[2])] = tuple(int(n) for n in fields[3].split("."))
        else:
            assert kind.startswith("#"), line
    assert set(provides.values()) <= packages
    return packages, provides, symbols


def unmet_on_el9(requires: list[str], own: set[str]) -> list[str]:
    """The requirements (`name [op version]`) that EL9 BaseOS + AppStream cannot satisfy."""
    packages, provides, symbols = el9_offer()
    unmet = []
    for req in requires:
        name = req.split()[0]
        versioned = re.fullmatch(r"(.+\.so\.[\d.]+)\(([A-Z]+)_([\d.]+)\)\(64bit\)", name)
        if name.startswith("rpmlib(") or name in own or name in packages or name in provides:
            continue
        if versioned and (key := versioned.group(1, 2)) in symbols:
            if tuple(int(n) for n in versioned.group(3).split(".")) <= symbols[key]:
                continue
        unmet.append(req)
    return unmet


def test_requires_only_el9_baseos_and_appstream(rpm_file: Path) -> None:
    requires = query(rpm_file, "[%{REQUIRENAME} %{REQUIREFLAGS:depflags} %{REQUIREVERSION}\n]")
    own = set(query(rpm_file, "[%{PROVIDENAME}\n]"))
    assert {"python3.11", "logrotate", "shadow-utils", "/usr/bin/python3.11"} <= {r.split()[0] for r in requires}
    assert unmet_on_el9(requires, own) == []
    # and the check does refuse what EL9 lacks: the old RPM's Python packages, a newer glibc, EPEL
    assert unmet_on_el9(
        ["python3.11-twisted >= 23.10", "python(abi) = 3.11", "libc.so.6(GLIBC_2.35)(64bit)",
         "libffi-4c1a1a6d.so.8.1.0()(64bit)", "libc.so.6(GLIBC_2.28)(64bit)", "/bin/sh"], own
    ) == ["python3.11-twisted >= 23.10", "python(abi) = 3.11", "libc.so.6(GLIBC_2.35)(64bit)",
          "libffi-4c1a1a6d.so.8.1.0()(64bit)"]  # fmt: skip
    # the private tree provides nothing to other packages
    assert sorted(own) == ["config(fedd)", "fedd", "fedd(x86-64)"]


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
    # the wheels' files as their projects publish them (and as requirements.lock pins them), only
    # under /usr/lib/fedd/site-packages and never in fedd's own files: empty marker files, Twisted's
    # newsfragments/.gitignore, `#!/usr/bin/env python` lines in importable modules, identical
    # license and test files in several wheels
    "zero-length": "third-party",
    "version-control-internal-file": "third-party",
    "non-executable-script": "third-party",
    "script-without-shebang": "third-party",
    "files-duplicated-waste": "third-party (no file named)",
}
WHEEL_ONLY = {"zero-length", "version-control-internal-file", "non-executable-script", "script-without-shebang"}


def test_rpmlint_has_no_errors(rpm_file: Path) -> None:
    result = run("rpmlint", str(rpm_file), timeout=300)
    errors = [line for line in result.stdout.splitlines() if re.match(r"^\S+: E: ", line)]
    assert "1 packages and 0 specfiles checked" in result.stdout, result.stdout + result.stderr
    unexpected = [line for line in errors if line.split()[2] not in RPMLINT_ACCEPTED]
    assert not unexpected, "\n".join(unexpected)
    # the accepted ones are only about the files meant
    for line in errors:
        name, *rest = line.split()[2:]
        if name in ("non-standard-dir-perm", "non-readable"):
            assert rest[0].startswith(("/etc/fedd", "/var/lib/fedd", "/var/log/fedd")), line
        if name in WHEEL_ONLY:
            assert rest[0].startswith(SITE), line
            assert not rest[0].startswith((SITE + "fedd/", SITE + "twisted/plugins/fedd")), line


def test_installed_tree_uses_only_itself_and_the_standard_library(installed: Path) -> None:
    """fedd-python (the launchers' -IS start) ignores PYTHONPATH, the user's and the system's site-packages."""
    site = installed / SITE.strip("/")
    probe = (
        "import sys, json, fedd, twisted, lxml.etree, cryptography.hazmat.bindings._rust, maxminddb.extension,"
        " zope.interface, OpenSSL, yarl, _cffi_backend;"
        " print(json.dumps({'path': sys.path, 'files': [m.__file__ for m in (fedd, twisted, lxml.etree,"
        " cryptography.hazmat.bindings._rust, maxminddb.extension, zope.interface, OpenSSL, yarl, _cffi_backend)]}))"
    )
    # this checkout and the test venv on PYTHONPATH (both have fedd and Twisted): they must not be used
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(sys.executable).parent.parent}/lib/python3.11/site-packages",
    }
    result = run(str(installed / "usr/bin/fedd-python"), "-c", probe, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    stdlib = [p for p in seen["path"] if p != str(site)]
    assert str(site) in seen["path"]
    assert all(re.fullmatch(r"/usr/lib/python3(11\.zip|\.11|\.11/lib-dynload)", p) for p in stdlib), seen["path"]
    assert all(f.startswith(str(site) + "/") for f in seen["files"]), seen["files"]
    assert (installed / "usr/lib/fedd/requirements.lock").read_text() == LOCK.read_text()


def test_posttrans_builds_the_plugin_cache(rpm_file: Path, installed: Path) -> None:
    """%posttrans as rpm runs it (in the root), with /usr/bin pointing into the scratch root."""
    (script,) = [query(rpm_file, "%{POSTTRANS}")[-1]]
    cache = installed / SITE.strip("/") / "twisted/plugins/dropin.cache"
    cache.unlink(missing_ok=True)
    result = run("sh", "-c", script.replace("/usr/bin/", f"{installed}/usr/bin/"))
    assert result.returncode == 0, result.stderr
    assert b"fedd_plugin" in cache.read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logged(proc: subprocess.Popen[bytes], log: Path, text: str) -> bool:
    """Is `text` in the log yet? A process that died ends the wait at once, with its log."""
    assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
    return text in log.read_text()


def test_installed_tree_runs_the_demo(installed: Path, tmp_path: Path) -> None:
    """/usr/bin/fedd-twistd from the scratch root, on this machine's /usr/bin/python3.11: `twistd fedd` demo."""
    port = free_port()
    log = tmp_path / "fedd.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # ignored by the launcher (-I)
    with log.open("w") as out:
        command = [str(installed / "usr/bin/fedd-twistd"), "--nodaemon", "--pidfile=", "fedd"]
        command += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: logged(proc, log, "fedd demo federation serving"), 60, f"the demo serving ({log})")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/demo/hello.txt", timeout=10) as answer:
            assert answer.read() == b"Hello from the fedd demo federation.\n"
            assert answer.url != f"http://127.0.0.1:{port}/demo/hello.txt"  # it followed fedd's redirect
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/fedd/status", timeout=10) as answer:
            assert json.loads(answer.read())["endpoints"]
        # every Python library the daemon mapped comes from the installed tree
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        libraries = {line.split()[-1] for line in maps.splitlines() if re.search(r"(site|dist)-packages/", line)}
        assert libraries and all(lib.startswith(f"{installed}{SITE}") for lib in libraries), libraries
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_installed_tree_hashes_with_zlib_ng_and_keeps_state_in_postgresql(installed: Path, tmp_path: Path) -> None:
    """The extras the RPM ships work from its tree: `fedd-twistd fedd` with `[state] database =
    postgresql://...` (psycopg with the libpq its wheel bundles) on this machine's PostgreSQL, and an
    Adler-32 computed by zlib-ng's (`checksums.adler32` in the status), kept in that database."""
    site = installed / SITE.strip("/")
    probe = (
        "import json, psycopg, zlib_ng.zlib_ng, fedd.checksums.digest as d;"
        " print(json.dumps([d.ADLER32_IMPLEMENTATION, psycopg.pq.__impl__, psycopg.pq.version(),"
        " [m.__file__ for m in (psycopg, psycopg.pq, zlib_ng.zlib_ng)]]))"
    )
    result = run(str(installed / "usr/bin/fedd-python"), "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    implementation, pq, libpq, files = json.loads(result.stdout)
    assert (implementation, pq) == ("zlib-ng", "binary") and libpq >= 140000, result.stdout
    assert all(f.startswith(f"{site}/") for f in files), files
    database = pgservers.create_database()
    (tmp_path / "data").mkdir()
    data = os.urandom(3_000_000)
    (tmp_path / "data" / "f.bin").write_bytes(data)
    port = free_port()
    (tmp_path / "fedd.conf").write_text(f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[state]
database = {database}
timeout = 10
[endpoint data]
kind = local
path = {tmp_path / "data"}
map = /data /
""")
    log = tmp_path / "fedd.log"
    with log.open("w") as out:
        command = [str(installed / "usr/bin/fedd-twistd"), "--nodaemon", "--pidfile=", "fedd"]
        command += ["--config", str(tmp_path / "fedd.conf")]
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def status() -> dict[str, Any]:
            with urllib.request.urlopen(f"{base}/.well-known/fedd/status", timeout=10) as answer:
                parsed: dict[str, Any] = json.loads(answer.read())
                return parsed

        def up() -> bool:
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
            try:
                return bool(status()["state"]["reachable"])
            except OSError:
                return False

        wait_for(up, 60, f"fedd with its state in PostgreSQL ({log})")
        assert status()["state"]["kind"] == "postgresql"
        assert status()["checksums"]["adler32"] == "zlib-ng"
        ask = urllib.request.Request(
            f"{base}/data/f.bin", method="HEAD", headers={"Want-Digest": "adler32", "Prefer": "wait=30"}
        )
        with urllib.request.urlopen(ask, timeout=40) as answer:
            assert answer.status == 200
            assert answer.headers["Digest"] == f"adler32={zlib.adler32(data):08x}"
        # the computed value reaches the shared database (written in the background)
        wait_for(
            lambda: pgservers.query(database, "SELECT COUNT(*) FROM checksums WHERE algorithm = 'adler32'") == [["1"]],
            20,
            "the checksum row in PostgreSQL",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        pgservers.drop_database(database)
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_shipped_configuration_parses(installed: Path, tmp_path: Path) -> None:
    """/etc/fedd as installed, copied with its absolute paths moved under a temporary root."""
    shutil.copytree(installed / "etc" / "fedd", tmp_path / "etc" / "fedd")
    shutil.copytree(installed / "var", tmp_path / "var")
    etc = tmp_path / "etc" / "fedd"
    for conf in [etc / "fedd.conf", *(etc / "conf.d").glob("*.conf")]:
        text = conf.read_text()
        for absolute in ("/etc/fedd", "/var/lib/fedd", "/var/log/fedd"):
            text = text.replace(absolute, str(tmp_path) + absolute)
        conf.write_text(text)
    config = parse_config(path=str(etc / "fedd.conf"), environ={})
    assert config.server.listen == ("ssl:443",)
    assert [(ep.id, ep.kind, ep.mappings) for ep in config.endpoints] == [("local-data", "local", (("/local", "/"),))]
    assert config.auth is not None and Path(config.auth.access_file).is_file()
    assert parse_access(Path(config.auth.access_file).read_text(), config.auth.access_file)
    # what fedd writes must be where the unit lets it write
    writable = [str(tmp_path) + d for d in re.findall(r"^ReadWritePaths=(.*)$", UNIT.read_text(), re.M)[0].split()]
    for path in (config.events.outbox, config.events.spool, config.server.access_log_file):
        assert any(path.startswith(d + "/") for d in writable), path


def test_packaged_console_script_runs(installed: Path, tmp_path: Path) -> None:
    ugr = tmp_path / "ugr.conf"
    ugr.write_text("glb.locplugin[]: libugrlocplugin_dav.so site 10 https://dav.example.org/data\n")
    result = run(str(installed / "usr/bin/fedd-import-ugr"), str(ugr), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[endpoint site]" in result.stdout


def digests(rpm: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in query(rpm, "[%{FILENAMES} %{FILEDIGESTS}\n]"))


def test_upgrade_keeps_edited_configuration(
    rpm_file: Path, installed: Path, rpm_release_2: tuple[Path, str], tmp_path: Path
) -> None:
    """`rpm -U` to release 2 keeps an edited /etc/fedd/fedd.conf (%config(noreplace)) and updates the tree."""
    rpm2, build_log = rpm_release_2
    assert "fetching" not in build_log, "the second build downloaded wheels again: " + build_log
    assert query(rpm2, "%{VERSION}-%{RELEASE}") == [f"{fedd.__version__}-2"]
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    conf = root / "etc/fedd/fedd.conf"
    edited = conf.read_text().replace("head_redirect = no", "head_redirect = yes") + "# edited by the site\n"
    conf.write_text(edited)
    access = (root / "etc/fedd/access.conf").read_text()
    plugin = root / SITE.strip("/") / "twisted/plugins/fedd_plugin.py"
    plugin.write_text("# damaged\n")
    result = rpm_root("--root", str(root), "-U", str(rpm2))
    assert result.returncode == 0, result.stdout + result.stderr
    query_root = run("rpm", "--dbpath", "/var/lib/rpm", "--root", str(root), "-q", "fedd")
    assert query_root.stdout.strip() == f"fedd-{fedd.__version__}-2.x86_64", query_root.stdout + query_root.stderr
    assert conf.read_text() == edited
    # a shipped default that changed between the builds is offered beside the edited file, never over it
    old = digests(rpm_file)
    changed = {
        name for name, digest in digests(rpm2).items() if name.startswith("/etc/fedd/") and old.get(name) != digest
    }
    offered = {f"/{p.relative_to(root)}" for p in (root / "etc/fedd").rglob("*") if p.suffix == ".rpmnew"}
    assert offered == {f"{name}.rpmnew" for name in changed & {"/etc/fedd/fedd.conf"}}
    if "/etc/fedd/access.conf" not in changed:  # unedited and unchanged: left as it was
        assert (root / "etc/fedd/access.conf").read_text() == access
    assert not [p for p in (root / "etc/fedd").rglob("*") if p.suffix in (".rpmsave", ".rpmorig")]
    assert plugin.read_text() == (ROOT / "twisted/plugins/fedd_plugin.py").read_text()  # program files replaced


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_settings() -> None:
    s = unit_settings()
    assert s["ExecStart"] == ["/usr/bin/fedd-twistd --nodaemon --pidfile= fedd --config /etc/fedd/fedd.conf"]
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
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/fedd-twistd ", f"ExecStart={twistd} "))
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
        wait_for(lambda: logged(proc, log, "starting on"), 30, f"twistd listening ({log})")
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
    fedd = build_service(config, reactor=MemoryReactorClock())  # built, never started: no port, no thread
    fedd.federation.health.success("ep1", 12.0)
    fedd.space.measurements["ep1"] = Measurement(space=Space(used=1, total=10), measured=0.0)
    metrics = fedd.metrics
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


def test_editable_install_gives_a_working_twistd_fedd(tmp_path: Path) -> None:
    """`pip install -e .` into a fresh venv, then `twistd fedd --help`. twistd finds plugins by scanning
    sys.path for twisted/plugins directories; setuptools' default editable install (an import hook)
    hides the checkout's, so setup.py's package_dir makes it a .pth naming the checkout instead.
    Offline and quick: the venv is /usr/bin/python3.11's (the RPM's interpreter; its Debian
    setuptools and wheel build the editable wheel, --no-build-isolation), the dependencies are the
    locked wheels from the cache the RPM build fills (packaging/rpm/wheels.sh fetch), --no-deps."""
    checkout = tmp_path / "checkout"  # the files setup.py reads, so the shared tree gets no build output
    for name in ("setup.py", "pyproject.toml", "README.md"):
        checkout.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    for package in ("fedd", "twisted"):
        shutil.copytree(ROOT / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    fetched = run(str(ROOT / "packaging" / "rpm" / "wheels.sh"), "fetch", str(wheels), timeout=BUILD_SECONDS)
    assert fetched.returncode == 0, fetched.stderr
    made = run("/usr/bin/python3.11", "-m", "venv", "--system-site-packages", "--without-pip", str(venv))
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    pip = (python, "-m", "pip", "--disable-pip-version-check", "--isolated", "install", "--quiet", "--no-deps")
    deps = run(
        *pip, "--no-index", "--require-hashes", "--find-links", str(wheels), "-r", str(wheels / "requirements.lock")
    )
    assert deps.returncode == 0, deps.stderr
    editable = run(*pip, "--no-index", "--no-build-isolation", "-e", str(checkout), timeout=180)
    assert editable.returncode == 0, editable.stderr
    # from elsewhere: a twisted/plugins directory in the working directory would hide the defect
    where = run(
        python, "-c", "import fedd, twisted.plugins.fedd_plugin as p; print(fedd.__file__, p.__file__)", cwd=tmp_path
    )
    assert where.stdout.split() == [
        str(checkout / "fedd" / "__init__.py"),
        str(checkout / "twisted/plugins/fedd_plugin.py"),
    ]
    listed = run(str(venv / "bin" / "twistd"), "--help", cwd=tmp_path)
    assert re.search(r"^\s+fedd\s+Storage federation daemon", listed.stdout, re.M), listed.stdout + listed.stderr
    helped = run(str(venv / "bin" / "twistd"), "fedd", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stdout + helped.stderr
    # editable: a change in the checkout is what runs, without reinstalling
    init = checkout / "fedd" / "__init__.py"
    init.write_text(init.read_text() + '\nEDITED = "yes"\n')
    edited = run(python, "-c", "import fedd; print(fedd.EDITED)", cwd=tmp_path)
    assert edited.stdout.strip() == "yes", edited.stderr

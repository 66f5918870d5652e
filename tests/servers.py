"""Real servers for integration tests, each on a free loopback port, stopped by pid.

memcached, Apache httpd with mod_dav (WebDAV endpoint), nginx answering 302 (benchmark reference),
and a single-node Ceph cluster with a RADOS Gateway (S3) following ../shared/testbed.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    try:
        wait_for(listening, timeout, f"a listener on 127.0.0.1:{port}", interval=0.05, ignore=(OSError,))
    except AssertionError as exc:
        raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s ({exc})") from None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _rgw_answers(url: str, proc: subprocess.Popen[bytes], workdir: Path) -> bool:
    """Does the gateway answer HTTP (any status)? Raises at once if it exited."""
    if proc.poll() is not None:
        raise RuntimeError(f"radosgw exited:\n{_tail(workdir / 'log' / 'client.rgw.a.log')}")
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        pass  # an answer all the same
    return True


def _stop_pid(pid: int | None, timeout: float = 10.0) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps our own child, which would linger as a zombie
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_for(gone, timeout, f"pid {pid} to exit after SIGTERM", interval=0.05)
        return
    except AssertionError:
        pass  # killed below
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- memcached ---------------------------------------------------------------------------------


@dataclass
class Memcached:
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["memcached", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-u", "nobody"],
            stdout=(self.workdir / "memcached.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 10, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_memcached(workdir: Path) -> Memcached:
    workdir.mkdir(parents=True, exist_ok=True)
    mc = Memcached(workdir, free_port())
    mc.start()
    return mc


# --- Apache httpd + mod_dav -----------------------------------------------------------------------

APACHE_MODULES = ("mpm_event", "authz_core", "dav", "dav_fs", "mime", "unixd", "dir")


@dataclass
class ApacheDav:
    workdir: Path
    docroot: Path
    port: int
    conf: Path
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        try:
            return int((self.workdir / "httpd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        pid = self.pid()
        subprocess.run(["apache2", "-f", str(self.conf), "-k", "stop"], capture_output=True, timeout=30)
        _stop_pid(pid)


def start_apache_dav(workdir: Path, docroot: Path) -> ApacheDav:
    workdir.mkdir(parents=True, exist_ok=True)
    docroot.mkdir(parents=True, exist_ok=True)
    (workdir / "lock").mkdir(exist_ok=True)
    port = free_port()
    mods = "\n".join(
        f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so"
        for m in APACHE_MODULES
        if Path(f"/usr/lib/apache2/modules/mod_{m}.so").exists()
    )
    conf = workdir / "httpd.conf"
    conf.write_text(f"""{mods}
ServerRoot {workdir}
ServerName localhost
Listen 127.0.0.1:{port}
User www-data
Group www-data
PidFile {workdir}/httpd.pid
ErrorLog {workdir}/error.log
Mutex file:{workdir}/lock default
TypesConfig /etc/mime.types
DavLockDB {workdir}/lock/davlock
KeepAliveTimeout 30
# Apache 2.4.54+ caps request bodies at 1 GiB by default; storage endpoints (dCache, EOS) do not
LimitRequestBody 0
MaxKeepAliveRequests 0
StartServers 1
ServerLimit 2
ThreadsPerChild 64
MaxRequestWorkers 128
DocumentRoot {docroot}
<Directory {docroot}>
    Dav On
    Options None
    AllowOverride None
    Require all granted
</Directory>
""")
    subprocess.run(["chown", "-R", "www-data:www-data", str(docroot), str(workdir / "lock")], check=True)
    for parent in docroot.resolve().parents:  # pytest's temporary directories are 0700: let www-data through
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    out = subprocess.run(["apache2", "-f", str(conf), "-k", "start"], capture_output=True, timeout=30, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"apache2 did not start: {out.stderr}\n{_tail(workdir / 'error.log')}")
    try:
        wait_for_port(port, 15)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{_tail(workdir / 'error.log')}") from None
    return ApacheDav(workdir, docroot, port, conf)


# --- nginx answering 302 (benchmark reference) ----------------------------------------------------


@dataclass
class Nginx:
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_nginx_redirect(workdir: Path, location: str, *, tls: str = "") -> Nginx:
    """nginx answering every request with 302 `location`; `tls` holds ssl_* directives for an https server."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port}{" ssl" if tls else ""};
        {tls}
        location / {{ return 302 {location}; }}
    }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "stderr.log").open("wb"),
    )
    try:
        wait_for_port(port, 10, proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{_tail(workdir / 'stderr.log')}\n{_tail(workdir / 'error.log')}") from None
    return Nginx(workdir, port, proc)


# --- Ceph: one monitor, one in-memory OSD, one RADOS Gateway ---------------------------------------


@dataclass
class CephRGW:
    workdir: Path
    conf: Path
    port: int
    access_key: str = "FEDDTESTACCESSKEY"
    secret_key: str = "feddtestsecretkey0123456789"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ceph(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run(
            ["ceph", "-c", str(self.conf), "--connect-timeout", "20", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ceph {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def admin(self, *args: str) -> str:
        out = subprocess.run(
            ["radosgw-admin", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"radosgw-admin {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def _daemon(self, name: str, *cmd: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / "log" / f"{name}.stdout").open("wb")
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _rgw(self) -> subprocess.Popen[bytes]:
        return next(p for p in reversed(self.procs) if "radosgw" in str(p.args))

    def kill_rgw(self) -> None:
        """SIGKILL the gateway (monitor and OSD keep running, the data stays)."""
        proc = self._rgw()
        proc.kill()
        proc.wait(10)
        self.procs.remove(proc)

    def start_rgw(self, timeout: float = 60.0) -> None:
        """Start the gateway again on the same port and wait until it answers."""
        proc = self._daemon("rgw", "radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw.a")
        try:
            wait_for(lambda: _rgw_answers(self.url, proc, self.workdir), timeout, "radosgw", ignore=(OSError,))
        except AssertionError as exc:
            raise RuntimeError(f"radosgw did not answer again in {timeout}s ({exc})") from None

    def pause_rgw(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered (a hanging endpoint)."""
        self._rgw().send_signal(signal.SIGSTOP)

    def resume_rgw(self) -> None:
        self._rgw().send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused gateway must hear the terminate
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def start_ceph_rgw(workdir: Path, timeout: float = 120.0) -> CephRGW:
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "log", "osd", "mon"):
        (workdir / sub).mkdir(exist_ok=True)
    mon_port, http_port = free_port(), free_port()
    fsid = str(uuid.uuid4())
    conf = workdir / "ceph.conf"
    conf.write_text(f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
ms bind msgr2 = false
run dir = {workdir}/run
log file = {workdir}/log/$name.log
admin socket = {workdir}/run/$name.asok
osd objectstore = memstore
memstore device bytes = 2147483648
osd data = {workdir}/osd
mon data = {workdir}/mon
# the OSD must not send crush/device-class updates at boot: before it has the cluster's fsid the
# monitor refuses them ('wrong fsid') and the OSD aborts; the test adds it to the crush map itself
osd crush update on start = false
osd class update on start = false
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{http_port}
rgw dns name = localhost
rgw thread pool size = 64
""")
    rgw = CephRGW(workdir, conf, http_port)

    def run(*cmd: str) -> str:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stdout}{out.stderr}")
        return out.stdout

    try:
        keyring = workdir / "mon.keyring"
        run("ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        monmap = workdir / "monmap"
        run("monmaptool", "--create", "--addv", "a", f"v1:127.0.0.1:{mon_port}", "--fsid", fsid, str(monmap))
        run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(keyring), "-c", str(conf))
        rgw._daemon("mon", "ceph-mon", "-f", "-i", "a", "-c", str(conf))
        wait_for_port(mon_port, 30, rgw.procs[-1])
        osd_uuid = str(uuid.uuid4())  # the same uuid for create and mkfs, or the OSD may boot with 'wrong fsid'
        osd_id = rgw.ceph("osd", "create", osd_uuid).strip()
        run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, "-c", str(conf))
        rgw._daemon("osd", "ceph-osd", "-f", "-i", osd_id, "-c", str(conf))
        rgw.ceph("osd", "crush", "add", f"osd.{osd_id}", "1", "root=default", "host=localhost")
        proc = rgw._daemon("rgw", "radosgw", "-f", "-c", str(conf), "-n", "client.rgw.a")
        try:
            wait_for(lambda: _rgw_answers(rgw.url, proc, workdir), timeout, "radosgw", interval=0.2, ignore=(OSError,))
        except AssertionError as exc:
            raise RuntimeError(
                f"radosgw did not answer in {timeout}s ({exc}):\n{_tail(workdir / 'log' / 'client.rgw.a.log')}"
            ) from None
        rgw.admin(
            "user",
            "create",
            "--uid=fedd",
            "--display-name=fedd",
            f"--access-key={rgw.access_key}",
            f"--secret={rgw.secret_key}",
        )
    except BaseException:
        rgw.stop()
        raise
    return rgw


def have(command: str) -> bool:
    return shutil.which(command) is not None


# --- Azurite (Azure Blob emulator) ------------------------------------------------------------------

AZURITE = Path(__file__).resolve().parent / "node" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]
    account: str = AZURITE_ACCOUNT
    key: str = AZURITE_KEY

    @property
    def url(self) -> str:
        """The blob service URL, account path included (Azurite's path-style addressing)."""
        return f"http://127.0.0.1:{self.port}/{self.account}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        # on SIGTERM Azurite waits for idle keep-alive connections (fedd's pools hold some): not for long
        if self.proc.poll() is None:
            _stop_pid(self.proc.pid, timeout=2)
            self.proc.wait(5)


def start_azurite(workdir: Path) -> Azurite:
    """Microsoft's emulator: it checks SharedKey and SAS signatures like the service does."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(workdir / "data"),
            "--silent",
            "--skipApiVersionCheck",
        ],
        stdout=(workdir / "azurite.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 30, proc)
    except RuntimeError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}\n{_tail(workdir / 'azurite.log')}") from None
    return Azurite(workdir, port, proc)


# --- fedd configuration blocks for these servers -------------------------------------------------------

SECRET_ENV = "FEDD_TEST_SECRET"  # the tests' configurations read the S3 secret from the environment


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def endpoint_block(endpoint_id: str, kind: str, map: str | tuple[str, ...] = "/atlas /atlas", **keys: object) -> str:
    """The `[endpoint <id>]` section fedd reads: `map` is one "<federation prefix> <endpoint prefix>"
    or several; `keys` in their order (True/False written yes/no, None left out, a tuple repeats the
    key)."""
    lines = [f"[endpoint {endpoint_id}]", f"kind = {kind}"]
    head = {
        k: keys.pop(k) for k in ("url", "path", "bucket", "access_key", "secret_key", "secret_key_env") if k in keys
    }
    lines += [f"{key} = {_value(value)}" for key, value in head.items() if value is not None]
    lines += [f"map = {m}" for m in ((map,) if isinstance(map, str) else map)]
    for key, value in keys.items():
        for one in value if isinstance(value, tuple) else (value,):
            if one is not None:
                lines.append(f"{key} = {_value(one)}")
    return "\n".join(lines) + "\n"


def ceph_endpoint(
    rgw: CephRGW,
    bucket: str,
    *,
    id: str = "ceph",
    map: str | tuple[str, ...] = "/atlas /atlas",
    secret_from_env: bool = True,
    **extra: object,
) -> str:
    """An S3 endpoint on the test Ceph gateway; the secret from $FEDD_TEST_SECRET unless told otherwise."""
    secret: dict[str, object] = {"secret_key_env": SECRET_ENV} if secret_from_env else {"secret_key": rgw.secret_key}
    return endpoint_block(id, "s3", map, url=rgw.url, bucket=bucket, access_key=rgw.access_key, **secret, **extra)


def dav_endpoint(
    apache: ApacheDav,
    *,
    id: str = "dav",
    map: str | tuple[str, ...] = "/atlas /atlas",
    **extra: object,
) -> str:
    """A WebDAV endpoint on a test Apache (mod_dav)."""
    return endpoint_block(id, "dav", map, url=apache.url, **extra)


def local_endpoint(
    path: str | Path,
    *,
    id: str = "local",
    map: str | tuple[str, ...] = "/atlas /",
    **extra: object,
) -> str:
    """A local-directory endpoint."""
    return endpoint_block(id, "local", map, path=path, **extra)

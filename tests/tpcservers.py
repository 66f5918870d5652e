"""Remote storages for third-party-copy tests, on loopback: an Apache mod_dav "remote site" with a
Basic-auth protected area and an access log of the Authorization header it got, and small threaded
HTTP sources that misbehave on purpose (die half-way, trickle slowly, lie about their checksum)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests.daemon import wait_for
from tests.servers import _tail, free_port, wait_for_port

MODULES = (
    "mpm_event",
    "authz_core",
    "authz_user",
    "authn_core",
    "authn_file",
    "auth_basic",
    "dav",
    "dav_fs",
    "mime",
    "dir",
)
USER, PASSWORD = "fts", "s3cret-tpc"


@dataclass
class RemoteSite:
    workdir: Path
    docroot: Path
    port: int
    conf: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def access_log(self) -> list[str]:
        path = self.workdir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def put_file(self, rel: str, data: bytes | None = None, *, sparse: int = 0) -> Path:
        path = self.docroot / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if sparse:
            with path.open("wb") as f:
                f.truncate(sparse)
        else:
            path.write_bytes(data or b"")
        shutil.chown(path, "www-data", "www-data")
        for parent in path.relative_to(self.docroot).parents:
            shutil.chown(self.docroot / parent, "www-data", "www-data")
        return path

    def stop(self) -> None:
        subprocess.run(["apache2", "-f", str(self.conf), "-k", "stop"], capture_output=True, timeout=30)
        pid = self.workdir / "httpd.pid"
        try:
            wait_for(lambda: not pid.exists(), 10, f"Apache to remove {pid} on stopping")
        except AssertionError:
            pass  # stopping is best effort: the work directory goes in any case
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_remote_site() -> RemoteSite:
    """Apache + mod_dav; `/private/` needs Basic auth (user fts); every request's Authorization is logged."""
    # not under pytest's 0700 temporary directories: Apache's www-data workers must reach it
    work = Path(tempfile.mkdtemp(prefix="fedd-tpc-remote-"))
    work.chmod(0o755)
    docroot = work / "docroot"
    (docroot / "private").mkdir(parents=True)
    (work / "lock").mkdir()
    salted = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
    (work / "htpasswd").write_text(f"{USER}:{{SHA}}{salted}\n")
    port = free_port()
    mods = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in MODULES)
    conf = work / "httpd.conf"
    conf.write_text(f"""{mods}
ServerRoot {work}
ServerName localhost
Listen 127.0.0.1:{port}
User www-data
Group www-data
PidFile {work}/httpd.pid
ErrorLog {work}/error.log
LogFormat "%m %U %>s %B auth=\\"%{{Authorization}}i\\"" tpc
CustomLog {work}/access.log tpc
Mutex file:{work}/lock default
TypesConfig /etc/mime.types
DavLockDB {work}/lock/davlock
KeepAliveTimeout 30
StartServers 1
ServerLimit 2
ThreadsPerChild 32
MaxRequestWorkers 64
EnableSendfile On
DocumentRoot {docroot}
<Directory {docroot}>
    Dav On
    Options None
    AllowOverride None
    Require all granted
</Directory>
<Directory {docroot}/private>
    AuthType Basic
    AuthName "remote"
    AuthBasicProvider file
    AuthUserFile {work}/htpasswd
    Require valid-user
</Directory>
""")
    subprocess.run(["chown", "-R", "www-data:www-data", str(docroot), str(work / "lock")], check=True)
    out = subprocess.run(["apache2", "-f", str(conf), "-k", "start"], capture_output=True, timeout=30, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"apache2 did not start: {out.stderr}\n{_tail(work / 'error.log')}")
    wait_for_port(port, 15)
    return RemoteSite(work, docroot, port, conf)


class TrickySource:
    """An HTTP source on loopback that answers every GET with `data`, in one of these modes:

    - "half": announces len(data), sends half of it, then closes the connection;
    - "slow": sends `data` in `chunk`-byte pieces, `delay` seconds apart;
    - "liar": sends `data` with a wrong `Digest: adler32=` header;
    - "honest": sends `data` with its right `Digest: adler32=`.
    """

    def __init__(self, data: bytes, mode: str, *, chunk: int = 4096, delay: float = 0.0) -> None:
        self.data, self.mode, self.chunk, self.delay = data, mode, chunk, delay
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                part = conn.recv(65536)
                if not part:
                    return
                head += part
            self.requests.append(head)
            adler = f"{zlib.adler32(self.data) & 0xFFFFFFFF:08x}"
            if self.mode == "liar":
                adler = f"{(zlib.adler32(self.data) + 1) & 0xFFFFFFFF:08x}"
            digest = f"Digest: adler32={adler}\r\n" if self.mode in ("liar", "honest") else ""
            conn.sendall(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.data)}\r\n{digest}"
                "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode()
            )
            if self.mode == "half":
                conn.sendall(self.data[: len(self.data) // 2])
                time.sleep(0.2)
            elif self.mode == "slow":
                for i in range(0, len(self.data), self.chunk):
                    conn.sendall(self.data[i : i + self.chunk])
                    time.sleep(self.delay)
            else:
                conn.sendall(self.data)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()

"""The XRootD HTTP redirector as a benchmark peer: a cmsd manager and one data server (XRootD 5.5,
Debian `xrootd-server` + `xrootd-server-plugins`, installed here with apt-get when missing and run
as root), each with XrdHttp on an HTTP port, run as user xrootd.

xrootd and cmsd listen on every interface: they run in a private network namespace of their own
(`ip netns`, only its loopback up), and whatever talks to them (curl, wrk) runs in it too
(`XRootD.wrap`). A GET on the manager's HTTP port answers 302 to the data server once the data
server has logged in (a second or two); XRootD closes the connection after each redirect (wrk
reconnects and counts a read error per request: the requests/s it reports are the answers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

PACKAGES = ("xrootd-server", "xrootd-server-plugins")
MANAGER_CMS = 3121
ROLES = {"manager": (1094, 8094), "server": (1095, 8095)}  # xroot port, HTTP port (inside the namespace)


def ensure_installed() -> None:
    """apt-get the XRootD packages when `xrootd` is missing (root only; else say how)."""
    if shutil.which("xrootd") and shutil.which("cmsd"):
        return
    if os.geteuid() != 0:
        raise SystemExit(f"XRootD is missing: apt-get install --no-install-recommends {' '.join(PACKAGES)} (as root)")
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        check=True,
        capture_output=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


class XRootD:
    """A manager and a data server exporting `export` from `data_root`, in namespace `fedd-xrd-<pid>`."""

    def __init__(self, work: Path, data_root: Path, export: str = "/atlas") -> None:
        ensure_installed()
        self.work = work
        self.netns = f"fedd-xrd-{os.getpid()}"
        self.wrap = ["ip", "netns", "exec", self.netns]
        self.url = f"http://127.0.0.1:{ROLES['manager'][1]}"
        work.mkdir(parents=True, exist_ok=True)
        for role, (xroot_port, http_port) in ROLES.items():
            (work / role).mkdir(exist_ok=True)
            local = f"oss.localroot {data_root}\n" if role == "server" else "cms.delay startup 1\n"
            (work / role / "cfg").write_text(
                f"all.role {role}\nall.manager 127.0.0.1:{MANAGER_CMS}\nall.export {export}\n"
                f"all.adminpath {work / role / 'admin'}\nall.pidpath {work / role}\n{local}"
                # inside `if exec xrootd`, or cmsd takes the HTTP port too
                f"if exec xrootd\nxrd.port {xroot_port}\nxrd.protocol XrdHttp:{http_port} libXrdHttp.so\nfi\n"
            )
        subprocess.run(["chown", "-R", "xrootd:xrootd", str(work), str(data_root)], check=True)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        try:
            subprocess.run([*self.wrap, "ip", "link", "set", "lo", "up"], check=True)
            for role in ROLES:
                for program in ("cmsd", "xrootd"):
                    d = work / role
                    cmd = ["runuser", "-u", "xrootd", "--", program, "-b", "-l", str(d / f"{program}.log")]
                    cmd += ["-c", str(d / "cfg"), "-n", role, "-s", str(d / f"{program}.pid")]
                    subprocess.run([*self.wrap, *cmd], check=True, timeout=30)
        except BaseException:
            self.stop()
            raise

    def status(self, path: str) -> str:
        """The status line and Location of a GET of `path` on the manager (curl, in the namespace)."""
        out = subprocess.run(
            [
                *self.wrap,
                "curl",
                "-s",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                self.url + path,
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip()

    def wait_redirect(self, path: str, timeout: float = 30.0) -> str:
        """Wait until the manager redirects `path` to the data server; its status and Location."""
        deadline = time.monotonic() + timeout
        answer = ""
        while time.monotonic() < deadline:
            answer = self.status(path)
            if answer.startswith("302 "):
                return answer
            time.sleep(0.5)  # the data server logs in to the manager on its own schedule (no event to await)
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.work.glob("*/*.log"))
        raise RuntimeError(f"XRootD did not redirect {path} within {timeout:g}s (last answer {answer!r}):\n{logs}")

    def stop(self) -> None:
        for pidfile in self.work.glob("*/*.pid"):
            try:
                os.kill(int(pidfile.read_text().split()[0]), 15)
            except (OSError, ValueError, IndexError):
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout.split()
            if not left:
                break
            time.sleep(0.1)
        else:
            for pid in left:
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

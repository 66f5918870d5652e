"""Cold locate latency with 3 WebDAV endpoints (Apache mod_dav), one of which answers slowly.

Scenario A: the slow endpoint is ranked last for the client: fedd answers when the best-ranked
endpoint confirmed the file, without waiting for the slow one.
Scenario B: the slow endpoint is ranked first: fedd must wait for it (or for the wait budget).
Reference: the fastest endpoint's own HEAD round trip, measured in the same run. fedd's own CPU per
cold locate (/proc) is printed beside each scenario: steadier than latency on a shared machine.
Every request asks for a different file, so every locate is cold.

Usage: python3 benchmarks/cold_locate.py [--quick]
"""

from __future__ import annotations

import asyncio
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import cpu_seconds, free_port, start_fedd

from tests import servers

DELAY = 0.300  # seconds the slow endpoint adds to every answer
GENEVA, LYON, CHICAGO = ("46.20 6.14", "45.76 4.84", "41.88 -87.63")


class DelayProxy:
    """TCP proxy on loopback that holds every chunk from the server for DELAY seconds."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            try:
                while data := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, 0), pipe(up_reader, writer, DELAY))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def timed_requests(port: int, method: str, paths: list[str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for path in paths:
        start = time.perf_counter()
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - start) * 1000)
        assert response.status in (200, 302), (path, response.status)
    conn.close()
    return times


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)
    return f"median {statistics.median(times):7.2f} ms   p90 {q[8]:7.2f} ms"


def config(port: int, urls: dict[str, str], where: dict[str, str]) -> str:
    text = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 2
[geo]
site = 127.0.0.0/8 {GENEVA}
fuzz_km = 50
[health]
interval = 600
"""
    for name, url in urls.items():
        lat, lon = where[name].split()
        text += f"[endpoint {name}]\nkind = dav\nurl = {url}\nmap = /atlas /atlas\nlat = {lat}\nlon = {lon}\n"
    return text


def main() -> None:
    count = 40 if "--quick" in sys.argv else 200
    work = Path(tempfile.mkdtemp(prefix="fedd-cold-"))
    davs: list[servers.ApacheDav] = []
    proxy = None
    try:
        for i in range(3):
            root = work / f"dav{i}"
            (root / "atlas" / "data").mkdir(parents=True)
            for n in range(2 * count):
                (root / "atlas" / "data" / f"f{n:05d}").write_bytes(b"x")
            davs.append(servers.start_apache_dav(work / f"apache{i}", root))
        proxy = DelayProxy(davs[2].port)
        urls = {"fast1": davs[0].url, "fast2": davs[1].url, "slow": f"http://127.0.0.1:{proxy.port}"}
        direct = timed_requests(davs[0].port, "HEAD", [f"/atlas/data/f{n:05d}" for n in range(count)])
        slow_direct = timed_requests(proxy.port, "HEAD", [f"/atlas/data/f{n:05d}" for n in range(5)])
        results = {}
        cpu: dict[str, float] = {}  # fedd's CPU milliseconds per cold locate
        scenarios = {
            "A: slow endpoint ranked last": ({"fast1": GENEVA, "fast2": LYON, "slow": CHICAGO}, 0),
            "B: slow endpoint ranked first": ({"fast1": LYON, "fast2": CHICAGO, "slow": GENEVA}, count),
        }
        for name, (where, offset) in scenarios.items():
            port = free_port()
            fedd = start_fedd(work / name[0], config(port, urls, where), port)
            try:
                paths = [f"/atlas/data/f{n:05d}" for n in range(offset, offset + count)]
                used = cpu_seconds(fedd.proc.pid)
                results[name] = timed_requests(port, "GET", paths)
                cpu[name] = (cpu_seconds(fedd.proc.pid) - used) / count * 1000
            finally:
                fedd.stop()
    finally:
        if proxy is not None:
            proxy.stop()
        for dav in davs:
            dav.stop()

    print(f"\nCold locate, {count} distinct files per scenario, 3 Apache mod_dav endpoints, one +{DELAY * 1000:.0f} ms")
    print(f"{'fastest endpoint HEAD (direct)':40} {summary(direct)}")
    print(f"{'slow endpoint HEAD (direct)':40} {summary(slow_direct) if len(slow_direct) > 1 else ''}")
    for name, times in results.items():
        print(f"{'fedd GET -> 302, ' + name:40} {summary(times)}   fedd CPU {cpu[name]:.2f} ms/locate")
    a = statistics.median(results["A: slow endpoint ranked last"])
    print(
        f"\nScenario A: fedd answers {a - statistics.median(direct):.2f} ms after the fastest endpoint's own RTT "
        f"(the slow endpoint's {DELAY * 1000:.0f} ms is not waited for)"
    )


if __name__ == "__main__":
    main()

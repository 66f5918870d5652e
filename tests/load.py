"""A bounded HTTP/1.1 load of keep-alive readers on loopback that records every answer.

Each connection sends GETs one after another (keep-alive) until the deadline or its request budget,
and notes for every answer the time, the status, the `Location` and `Retry-After` headers. A broken
connection is recorded too (status 0) and reopened: nothing is swallowed. Runs in its own thread
with its own asyncio loop, so a test can act (kill a server, declare a downtime) while it runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the answer was complete
    path: str
    status: int  # 0: the connection failed (refused, reset, timed out)
    location: str = ""
    retry_after: str = ""
    error: str = ""


@dataclass
class Load:
    port: int
    paths: list[str]  # connection i asks paths[i % len(paths)]
    connections: int
    seconds: float
    max_requests: int = 1_000_000  # per connection, a bound besides the time
    timeout: float = 10.0
    answers: list[Answer] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> list[Answer]:
        assert self._thread is not None
        self._thread.join(self.seconds + 2 * self.timeout + 10)
        if self._thread.is_alive():
            raise AssertionError("the load did not end within its bounds")
        return self.answers

    async def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        await asyncio.gather(
            *(self._reader(self.paths[i % len(self.paths)], deadline) for i in range(self.connections))
        )

    async def _reader(self, path: str, deadline: float) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUser-Agent: fedd-chaos\r\n\r\n".encode()
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        sent = 0
        while time.monotonic() < deadline and sent < self.max_requests and not self._stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), self.timeout
                    )
                assert reader is not None and writer is not None
                writer.write(request)
                sent += 1
                answer, keep = await asyncio.wait_for(self._answer(reader, path), self.timeout)
                self.answers.append(answer)
                if not keep:
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.answers.append(Answer(time.monotonic(), path, 0, error=f"{type(exc).__name__}: {exc}"))
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    @staticmethod
    async def _answer(reader: asyncio.StreamReader, path: str) -> tuple[Answer, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        keep = headers.get("connection", "").lower() != "close"
        return (
            Answer(time.monotonic(), path, status, headers.get("location", ""), headers.get("retry-after", "")),
            keep,
        )


def summary(answers: list[Answer]) -> dict[str, Counter[int]]:
    """Statuses per path, for messages and notes."""
    out: dict[str, Counter[int]] = {}
    for a in answers:
        out.setdefault(a.path, Counter())[a.status] += 1
    return out

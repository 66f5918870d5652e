"""The HTTP calls of one third-party copy, each tied to its job (a cancelled job cancels the call
waiting) and to `[tpc]`'s timeouts: GET of a source following redirects, draining a body, the reason
text of a refusal, the PUT that streams the pump to the destination (fedd.tpc.engine)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

from twisted.internet.defer import Deferred
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from fedd.config import TpcConfig
from fedd.tpc.pump import Drain, Pump
from fedd.tpc.transfer import Job, TransferFailed

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


class JobCalls:
    def __init__(self, reactor: Any, config: Callable[[], TpcConfig]) -> None:
        self.reactor = reactor
        self.config = config  # read at each call: a reload applies to the next one

    async def wait(self, job: Job, d: Deferred[Any], timeout: float | None) -> Any:
        if job.reason:
            d.cancel()
            raise TransferFailed(job.reason)
        if timeout is not None:
            d.addTimeout(timeout, self.reactor)
        job.pending = d
        try:
            return await d
        finally:
            job.pending = None

    async def get(self, job: Job, agent: Agent, url: str, headers: dict[str, str]) -> IResponse:
        """GET a source, following redirects (credentials only to the same host); the body unread."""
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            same = urlsplit(url).netloc == origin
            sent = {k: v for k, v in headers.items() if same or k.lower() not in ("authorization", "cookie")}
            hdrs = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in sent.items()})
            response: IResponse = await self.wait(
                job, agent.request(b"GET", url.encode("latin-1"), hdrs, None), self.config().connect_timeout
            )
            location = response.headers.getRawHeaders(b"location")
            if response.code not in REDIRECTS or not location:
                return response
            await self.drain(job, response)
            url = urljoin(url, location[-1].decode("latin-1"))
        raise TransferFailed(f"the source redirected more than {MAX_REDIRECTS} times")

    async def drain(self, job: Job, response: IResponse) -> bytes:
        drain = Drain()
        response.deliverBody(drain)
        data: bytes = await self.wait(job, drain.done, self.config().connect_timeout)
        return data

    async def refusal(self, job: Job, response: IResponse, who: str) -> str:
        detail = b""
        try:
            detail = await self.drain(job, response)
        except Exception:
            pass
        text = " ".join(detail.decode("utf-8", "replace").split())[:200]
        return f"{who} answered HTTP {response.code}{f' ({text})' if text and '<' not in text else ''}"

    async def send(self, job: Job, agent: Agent, url: str, headers: dict[str, str], pump: Pump) -> IResponse:
        job.pump = pump
        job.writing = True
        hdrs = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()})
        d = agent.request(b"PUT", url.encode("latin-1"), hdrs, pump)
        try:
            response: IResponse = await self.wait(job, d, None)
        except Exception:
            if pump.error:
                raise TransferFailed(pump.error) from None
            raise
        return response

"""What a third-party copy is: the request read from a `COPY`, the state of one running copy, and the
pure pieces of the protocol (performance markers, the adler32 a response announces, URLs fit for
logs, the reason text of a failure and the transfer-done/failed event)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers

from fedd.errors import BadRequest, FeddError, describe
from fedd.events.model import file_fields
from fedd.federation import Replica
from fedd.tpc.guard import HostRefused
from fedd.tpc.pump import Pump
from fedd.writes import PutTarget

_ADLER_RE = re.compile(r"(?:^|,)\s*adler32=([0-9A-Fa-f]{1,8})\s*(?:,|$)", re.IGNORECASE)


class TransferBusy(FeddError):
    """`[tpc] max_concurrent` copies are running already."""

    status = 503


class TransferFailed(Exception):
    """A copy failed after the 202 (the message is the reason for the failure line)."""


def perf_marker(now: float, transferred: int) -> bytes:
    """One HTTP-TPC performance marker, as dCache, StoRM and XRootD write them."""
    return (
        "Perf Marker\n"
        f"    Timestamp: {int(now)}\n"
        "    Stripe Index: 0\n"
        f"    Stripe Bytes Transferred: {transferred}\n"
        "    Total Stripe Count: 1\n"
        "End\n"
    ).encode()


def adler32_of(headers: Headers) -> str | None:
    """The adler32 a response announces: `Digest: adler32=...` (RFC 3230) or S3's `x-amz-meta-adler32`."""
    for value in headers.getRawHeaders(b"digest") or []:
        match = _ADLER_RE.search(value.decode("latin-1"))
        if match:
            return match.group(1).lower().zfill(8)
    for value in headers.getRawHeaders(b"x-amz-meta-adler32") or []:
        text = value.decode("latin-1").strip().lower()
        if re.fullmatch(r"[0-9a-f]{1,8}", text):
            return text.zfill(8)
    return None


def public_url(url: str) -> str:
    """A URL fit for logs and events: no query (presigned signatures, tokens) and no user:password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class CopyRequest:
    """What a `COPY` asks for, read from its headers by `fedd.web`."""

    mode: str  # "pull" (Source: remote -> path) or "push" (path -> Destination: remote)
    path: str
    remote: str
    transfer_headers: dict[str, str]
    credential: str = "none"
    client: str = ""
    client_dn: str | None = None
    activity: str | None = None


def mode_of(source: str | None, destination: str | None) -> str:
    if source and destination:
        raise BadRequest("a third-party COPY takes Source: (pull) or Destination: (push), not both")
    if source:
        return "pull"
    if destination:
        return "push"
    raise BadRequest("COPY needs a Source: (pull) or Destination: (push) header")


@dataclass(eq=False)
class Job:
    request: CopyRequest
    id: str
    started: float
    redirect: str | None = None
    target: PutTarget | None = None  # pull: where the bytes go
    replicas: list[Replica] = field(default_factory=list)  # push: where they come from
    endpoint: str = ""  # the federation side
    size: int | None = None
    bytes: int = 0
    last_progress: float = 0.0
    next_marker: float = 0.0
    reason: str = ""  # set when the copy is cancelled (timeouts, client gone)
    pending: Deferred[Any] | None = None
    pump: Pump | None = None
    writing: bool = False  # the destination request has started: something may have been created
    refused: bool = False  # ... and the destination answered it with an error: nothing was created
    adler: str | None = None

    def progress(self, n: int, now: float) -> None:
        self.bytes += n
        self.last_progress = now

    def cancel(self, reason: str) -> None:
        if self.reason:
            return
        self.reason = reason
        if self.pump is not None:
            self.pump.abort()
        if self.pending is not None and not self.pending.called:
            self.pending.cancel()


def transfer_event(job: Job, reason: str, duration: float) -> dict[str, Any]:
    """The payload of a transfer-done (or, with a `reason`, transfer-failed) event."""
    request = job.request
    remote = urlsplit(request.remote).hostname or ""
    here = job.target.url if job.target is not None else (job.replicas[0].url if job.replicas else "")
    local_url, remote_url = public_url(here) if here else None, public_url(request.remote)
    pull = request.mode == "pull"
    return {
        "request-id": job.id,
        **file_fields(request.path),
        "activity": request.activity,
        "tpc-mode": request.mode,
        "src-rse": remote if pull else job.endpoint,
        "dst-rse": job.endpoint if pull else remote,
        "src-url": remote_url if pull else local_url,
        "dst-url": local_url if pull else remote_url,
        "file-size": job.size,
        "bytes": job.bytes,
        "checksum-adler": job.adler,
        "duration": duration,
        "reason": reason or None,
        "client": request.client,
        "client_dn": request.client_dn,
    }


def failure_reason(exc: BaseException) -> str:
    """The text of a `failure:` line (and of the event's reason) for an exception."""
    if isinstance(exc, TransferFailed | FeddError):
        return str(exc)
    if isinstance(exc, CancelledError):
        return "cancelled"
    if isinstance(exc, ResponseNeverReceived):
        return "the connection closed before an answer: " + "; ".join(describe(r) for r in getattr(exc, "reasons", []))
    if isinstance(exc, HostRefused):
        return f"refused: {exc}"
    text = describe(exc)
    return text.replace("\n", " ")[:300]

"""Read a third-party `COPY` from its request headers (the only part of fedd.tpc that sees twisted.web)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fedd.errors import BadRequest, Forbidden
from fedd.tpc.engine import CopyRequest, mode_of

PREFIX = b"transferheader"
MAX_TRANSFER_HEADERS = 32
MAX_TRANSFER_HEADER_BYTES = 16384
_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# never taken from a client for the remote request: they describe the connection, not the file
_HOP_BY_HOP = {b"host", b"content-length", b"transfer-encoding", b"connection", b"te", b"upgrade", b"expect"}


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.strip() or None


def copy_letter(request: Any) -> str:
    """The access letter a COPY needs on its path: push (Destination:, no Source:) reads, pull writes."""
    if request.getHeader(b"destination") and not request.getHeader(b"source"):
        return "r"
    return "w"


def transfer_headers(request: Any) -> dict[str, str]:
    """`TransferHeader<Name>: value` -> `{<Name>: value}`, checked (token names, no line breaks)."""
    out: dict[str, str] = {}
    size = 0
    for name, values in request.requestHeaders.getAllRawHeaders():
        low = name.lower()
        if not low.startswith(PREFIX) or low == PREFIX:
            continue
        bare = name[len(PREFIX) :]
        if not _TOKEN_RE.match(bare) or bare.lower() in _HOP_BY_HOP:
            raise BadRequest(f"unusable transfer header {name[:60].decode('latin-1')!r}")
        for value in values:
            if b"\r" in value or b"\n" in value:
                raise BadRequest("a transfer header value holds a line break")
            size += len(bare) + len(value)
            out[bare.decode("ascii").title()] = value.decode("latin-1")
    if len(out) > MAX_TRANSFER_HEADERS or size > MAX_TRANSFER_HEADER_BYTES:
        raise BadRequest("too many or too large TransferHeader headers")
    return out


def copy_request(request: Any, path: str, client: str, client_dn: str | None) -> CopyRequest:
    source, destination = _header(request, b"source"), _header(request, b"destination")
    mode = mode_of(source, destination)
    remote = source if mode == "pull" else destination
    assert remote is not None
    try:
        parts = urlsplit(remote)
        parts.port  # noqa: B018  # raises ValueError for a port that is no number or out of range
    except ValueError:  # also "Invalid IPv6 URL" (an unclosed '[')
        raise BadRequest(f"unusable remote URL {remote[:200]!r}") from None
    if not parts.scheme and not parts.netloc:
        raise Forbidden("COPY within the federation is not supported: give a full http(s):// URL of another storage")
    host = (_header(request, b"host") or "").lower()
    if parts.netloc.lower() == host:
        raise Forbidden("COPY within the federation is not supported (the remote URL is fedd itself)")
    return CopyRequest(
        mode=mode,
        path=path,
        remote=remote,
        transfer_headers=transfer_headers(request),
        credential=_header(request, b"credential") or "none",
        client=client,
        client_dn=client_dn,
    )

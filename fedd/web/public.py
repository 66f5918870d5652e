"""Where the absolute URLs fedd builds (redirects to its own local data, `Link`, metalink) point:
the configured public URL, an allowed `Host`, or the address the client reached."""

from __future__ import annotations

import re

from twisted.web import server

from fedd.web.notes import noted

HOST_RE = re.compile(rb"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class PublicBase:
    """Where the absolute URLs fedd builds (redirects to its own local data, `Link`, metalink) point.

    - `public_url` set: always there; the client's `Host` is never copied into an answer.
    - `allowed_hosts` set: a `Host` in the list (a name alone matches any port, `name:port` only that
      port) is used as sent; any other goes to `public_url`, or to the first name of the list.
    - neither: the client's `Host` if it is a well-formed host[:port] (HOST_RE), else the address the
      client connected to. A client can then make fedd name any host in the answers it gets itself
      (a shared cache in front of fedd could keep such an answer: set one of the two above).
    """

    MEMO_ENTRIES = 4096

    def __init__(self, public_url: str = "", allowed_hosts: tuple[str, ...] = ()) -> None:
        self.public_url = public_url.rstrip("/")
        self.allowed = tuple(h.lower() for h in allowed_hosts)
        self._names = frozenset(h for h in self.allowed if not _has_port(h))
        self._exact = frozenset(h for h in self.allowed if _has_port(h))
        self._memo: dict[tuple[bytes | None, bool], str | None] = {}

    def base(self, host: bytes | None, secure: bool) -> str | None:
        """`scheme://host[:port]` for this Host value, or None for "the address the client reached"."""
        key = (host, secure)
        try:
            return self._memo[key]
        except KeyError:
            pass
        value = self._compute(host, secure)
        if len(self._memo) >= self.MEMO_ENTRIES:
            self._memo.clear()
        self._memo[key] = value
        return value

    def _compute(self, host: bytes | None, secure: bool) -> str | None:
        scheme = "https" if secure else "http"
        valid = host is not None and HOST_RE.match(host) is not None
        if not self.public_url and not self.allowed:
            return f"{scheme}://{host.decode('ascii')}" if valid and host is not None else None
        if valid and host is not None:
            name = host.decode("ascii").lower()
            if name in self._exact or _strip_port(name) in self._names:
                return f"{scheme}://{name}"
        if self.public_url:
            return self.public_url
        return f"{scheme}://{self.allowed[0]}"


def _has_port(host: str) -> bool:
    return host.rpartition("]")[2].count(":") == 1 if host.startswith("[") else ":" in host


def _strip_port(host: str) -> str:
    return host.rpartition(":")[0] if _has_port(host) else host


def absolute_url(request: server.Request, url: str) -> str:
    """fedd-local targets are paths: make them absolute on fedd's public base (see `PublicBase`).

    The base is worked out once per request (kept on it) and memoised per Host value by the site."""
    if not url.startswith("/"):
        return url
    base: str | None = getattr(request, "fedd_base", None)
    if base is None:
        site = getattr(request, "site", None)
        public: PublicBase = getattr(site, "public", None) or _DEFAULT_PUBLIC
        host = request.requestHeaders.getRawHeaders(b"host")
        base = public.base(host[0] if host else None, request.isSecure())
        if base is None:
            addr = request.getHost()
            scheme = "https" if request.isSecure() else "http"
            base = (
                f"{scheme}://{addr.host}:{addr.port}"
                if ":" not in addr.host
                else f"{scheme}://[{addr.host}]:{addr.port}"
            )
        noted(request).fedd_base = base
    return base + url


_DEFAULT_PUBLIC = PublicBase()

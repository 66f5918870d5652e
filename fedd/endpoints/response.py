"""An endpoint's answer as the HTTP clients give it (fedd.endpoints.http, fedd.endpoints.heads)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.web.http_headers import Headers


@dataclass(frozen=True)
class HttpResponse:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        return values[-1].decode("latin-1") if isinstance(values[-1], bytes) else values[-1]

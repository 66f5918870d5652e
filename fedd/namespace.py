"""The federation namespace: request paths, normalised and mapped onto endpoint paths.

Pure code: no I/O. A path that tries to climb out of its prefix never gets this far:
`normalise_path` refuses `.`/`..` segments (also percent-encoded), encoded slashes and NUL bytes.
It also refuses names no storage can hold (a segment over 255 bytes, a path over 4096 bytes, the
POSIX NAME_MAX/PATH_MAX), so such a request is the client's 400 and never an endpoint's error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from fedd.errors import BadRequest

MAX_SEGMENT_BYTES = 255  # NAME_MAX: ENAMETOOLONG on a POSIX file system, 400/414 on many object stores
MAX_PATH_BYTES = 4096  # PATH_MAX


def normalise_path(raw: bytes) -> str:
    """Turn the raw request path (no query) into a clean absolute path, or raise BadRequest.

    Repeated slashes collapse; a trailing slash is dropped (except for the root).
    """
    if not raw.startswith(b"/"):
        raise BadRequest("request path must be absolute")
    if len(raw) > 3 * MAX_PATH_BYTES:  # even fully percent-encoded it would be too long
        raise BadRequest(f"request path longer than {MAX_PATH_BYTES} bytes")
    segments: list[str] = []
    total = 0
    for piece in raw.split(b"/"):
        if not piece:
            continue
        try:
            seg = unquote_to_bytes(piece).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request path is not valid UTF-8") from None
        if seg in (".", ".."):
            raise BadRequest("'.' and '..' are not allowed in paths")
        if "/" in seg or "\\" in seg or "\x00" in seg:
            raise BadRequest("encoded slashes, backslashes and NUL are not allowed in paths")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg):
            raise BadRequest("control characters are not allowed in paths")
        size = len(seg.encode("utf-8"))
        if size > MAX_SEGMENT_BYTES:
            raise BadRequest(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
        total += size + 1
        if total > MAX_PATH_BYTES:
            raise BadRequest(f"request path longer than {MAX_PATH_BYTES} bytes")
        segments.append(seg)
    return "/" + "/".join(segments)


def is_under(path: str, prefix: str) -> bool:
    """True when `path` equals `prefix` or lies below it, on whole path components."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def join(base: str, rest: str) -> str:
    """Join an endpoint prefix and a relative remainder ('' or '/a/b')."""
    if base == "/":
        return rest or "/"
    return base + rest


@dataclass(frozen=True)
class Target:
    """One place a federation path may live: endpoint id and the path on that endpoint."""

    endpoint: str
    path: str


class Namespace:
    """Maps federation paths to endpoint paths by longest matching prefix per endpoint."""

    def __init__(self, mappings: Iterable[tuple[str, str, str]]) -> None:
        # (endpoint id, federation prefix, endpoint prefix), longest federation prefix first
        self._maps = sorted(mappings, key=lambda m: (-len(m[1]), m[0]))

    def targets(self, path: str) -> list[Target]:
        """Every endpoint that may hold `path`, with the path on that endpoint."""
        seen: set[str] = set()
        out: list[Target] = []
        for endpoint, fed, ep in self._maps:
            if endpoint in seen or not is_under(path, fed):
                continue
            seen.add(endpoint)
            rest = path[len(fed) :] if fed != "/" else path
            out.append(Target(endpoint, join(ep, rest if rest != "/" else "")))
        return out

    def virtual_children(self, path: str) -> set[str]:
        """Names of directories implied below `path` by deeper federation prefixes (e.g. `/atlas`)."""
        names: set[str] = set()
        for _, fed, _ in self._maps:
            if fed != path and is_under(fed, path):
                rest = fed[len(path) :].lstrip("/") if path != "/" else fed.lstrip("/")
                if rest:
                    names.add(rest.split("/", 1)[0])
        return names

    def to_federation(self, endpoint: str, endpoint_path: str) -> str | None:
        """Inverse mapping, used to turn listed endpoint paths back into federation paths."""
        for ep_id, fed, ep in self._maps:
            if ep_id == endpoint and is_under(endpoint_path, ep):
                rest = endpoint_path[len(ep) :] if ep != "/" else endpoint_path
                return join(fed, rest if rest != "/" else "")
        return None

"""`/.well-known/fedd/replication`: the replication status, or with `?path=/a/file` why that file is
(or is not) copied: its reads per region in the window and the decision for each (fedd.replicate).
Authorised as a read of `/.well-known/fedd/replication`, like the status."""

from __future__ import annotations

import json
from typing import Any

from twisted.web import server

from fedd.errors import BadRequest, FeddError, MethodNotAllowed, NotFound, describe
from fedd.namespace import normalise_path
from fedd.web.answer import start

REPLICATION_PATH = b"/.well-known/fedd/replication"


class Unexplained(FeddError):
    """The explanation needs the state database (the window's counts), which did not answer."""

    status = 503


def _json(request: server.Request, data: dict[str, Any]) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


def replication_answer(request: server.Request, replication: Any) -> bytes | int:
    if request.method not in (b"GET", b"HEAD"):
        raise MethodNotAllowed("replication decisions are read-only")
    if replication is None:
        raise NotFound("replication is not configured here ([replicate] enabled = yes needs [state] database)")
    asked = (request.args or {}).get(b"path")
    if not asked:
        return _json(request, replication.to_json())
    try:
        path = normalise_path(asked[-1])
    except Exception:
        raise BadRequest("path= must be a federation path such as /atlas/file") from None

    async def explain() -> bytes:
        try:
            answer = await replication.explain(path)
        except Exception as exc:  # the state database is down or slow: a 503 that says so, no traceback
            raise Unexplained(f"the replication records cannot be read now: {describe(exc)}") from None
        return _json(request, answer)

    return start(request, explain())

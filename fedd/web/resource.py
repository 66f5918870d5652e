"""The HTTP/WebDAV front: one leaf resource that authorises each request and dispatches it on path
and method to the read side (`fedd.web.reads`), the write side (`fedd.web.writing`) or fedd's own
paths (`fedd.web.admin`). Domain errors become HTTP statuses in one place, `fedd.web.answer`.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Protocol

from twisted.web import server

from fedd import __version__
from fedd.auth.identity import Identity
from fedd.auth.service import AuthService
from fedd.checksums.service import ChecksumService
from fedd.config import Config
from fedd.confirm.service import ConfirmService
from fedd.endpoints.local import LOCAL_PREFIX
from fedd.errors import FeddError, MethodNotAllowed
from fedd.events.service import EventsService
from fedd.federation import Federation
from fedd.namespace import normalise_path
from fedd.reload import ReloadStatus
from fedd.space.downtime import DowntimeBook
from fedd.space.gocdb import GocdbService
from fedd.space.service import SpaceService
from fedd.state.store import StateStore
from fedd.tpc.engine import TpcEngine
from fedd.twtypes import Resource
from fedd.web.admin import DOWNTIMES_PATH, STATUS_PATH, STATUS_PATHS, Admin
from fedd.web.answer import ALLOW, error, start
from fedd.web.gate import Gate
from fedd.web.metrics import Metrics
from fedd.web.notes import noted
from fedd.web.reads import PLAN_ENTRIES, Plan, Reads
from fedd.web.replication import REPLICATION_PATH, replication_answer
from fedd.web.writing import Writes
from fedd.writes import Writer


class WorkersSection(Protocol):
    """The status section of `[server] workers` (fedd.workers.shared.WorkersStatus)."""

    def to_json(self) -> dict[str, Any]: ...

    def add_peers(self, status: dict[str, Any]) -> None: ...


class FeddResource(Resource):
    isLeaf = True

    def __init__(
        self,
        federation: Federation,
        *,
        head_redirect: bool = False,
        events: EventsService | None = None,
        auth: AuthService | None = None,
        writer: Writer | None = None,
        tpc: TpcEngine | None = None,
        checksums: ChecksumService | None = None,
        space: SpaceService | None = None,
        downtimes: DowntimeBook | None = None,
        gocdb: GocdbService | None = None,
        metrics: Metrics | None = None,
        metrics_path: bytes = b"/metrics",
        srr_path: bytes = b"/.well-known/fedd/srr.json",
        reload_status: ReloadStatus | None = None,
        state: StateStore | None = None,
        workers: WorkersSection | None = None,
        confirm: ConfirmService | None = None,
        replication: Any = None,
        started: float | None = None,
    ) -> None:
        """Only `federation` is needed to serve reads; each other part adds what it serves (writes,
        third-party copies, checksums, space reports, downtimes, metrics, status sections).
        `started`: when this fedd started, the status's `fedd.started` (with `[server] workers`, the
        host's: its supervisor's start, not this worker's; None: now)."""
        super().__init__()
        self.fed = federation
        self.events = events
        self.auth = auth
        self.tpc = tpc
        self.checksums = checksums
        self.space = space
        self.downtimes = downtimes
        self.gocdb = gocdb
        self.metrics = metrics
        self.metrics_path = metrics_path
        self.srr_path = srr_path
        self.reload_status = reload_status
        self.state = state
        self.workers = workers  # [server] workers: which worker answered, and all of them
        self.replication = replication  # fedd.replicate.service.ReplicationService, with [replicate]
        # which host answered, in the status (behind a load balancer)
        self.host = state.identity.host if state is not None else socket.gethostname()
        self.started = time.time() if started is None else started
        self.gate = Gate(auth, federation.instance)
        self.admin = Admin(federation, status=self.status, auth=auth, space=space, downtimes=downtimes)
        self.reads = Reads(
            federation,
            head_redirect=head_redirect,
            events=events,
            checksums=checksums,
            auth=auth,
            quota=self.admin.quota,
            counter=replication.counter if replication is not None else None,
        )
        self.confirm = confirm  # [confirm]: uploads confirmed after their redirect
        self.writes = (
            Writes(federation, writer, tpc=tpc, events=events, auth=auth, confirm=confirm)
            if writer is not None
            else None
        )
        self._paths: dict[bytes, str] = {}  # raw request path -> normalised path

    def reconfigure(self, new: Config) -> list[str]:
        """A reload: the endpoint objects may have changed (see `refresh_local`)."""
        self.refresh_local()
        return []

    def refresh_local(self) -> None:
        """The local endpoints fedd serves bytes for, and no redirect plan made before."""
        self.admin.refresh_local()
        self.reads.clear_plans()

    # --- dispatch -----------------------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        raw = request.path
        noted(request).fedd_started = self.fed.clock.seconds()
        try:
            if raw == self.metrics_path and self.metrics is not None:
                request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
                return self.metrics.render()
            if raw == self.srr_path and self.space is not None:
                return self.admin.srr(request)
            if raw.startswith(b"/.well-known/fedd/"):
                if raw in STATUS_PATHS:
                    # both forms of the status are authorised as a read of STATUS_PATH (an access rule
                    # on it can limit the status to a site's admins)
                    path = STATUS_PATH.decode()

                    def handler() -> bytes | int:
                        return self.admin.internal(request, raw)

                elif raw == DOWNTIMES_PATH or raw.startswith(DOWNTIMES_PATH + b"/"):
                    path = DOWNTIMES_PATH.decode()

                    def handler() -> bytes | int:
                        return self.admin.downtimes_api(request, raw)

                elif raw == REPLICATION_PATH:
                    path = REPLICATION_PATH.decode()

                    def handler() -> bytes | int:
                        return replication_answer(request, self.replication)

                elif not raw.startswith(LOCAL_PREFIX.encode()):
                    return self.admin.internal(request, raw)
                else:
                    endpoint, endpoint_path, path = self.admin.local_target(request, raw[len(LOCAL_PREFIX) :])

                    def handler() -> bytes | int:
                        return self.admin.local_file(request, endpoint, endpoint_path)

            else:
                known = self._paths.get(raw)
                if known is None:
                    known = normalise_path(raw)
                    if len(self._paths) >= PLAN_ENTRIES:
                        self._paths.clear()
                    self._paths[raw] = known
                path = known
                via = request.requestHeaders.getRawHeaders(b"via")
                if via is not None:
                    self.gate.check_loop(request, via)

                def handler() -> bytes | int:
                    return self._dispatch(request, path)

            if self.auth is not None:
                authorization = request.getHeader(b"authorization")
                if authorization is not None and authorization[:7].lower() == b"bearer ":
                    return start(request, self.gate.with_token(request, path, authorization, handler))
                self.gate.authorize(request, self.gate.certificate_identity(request), path)
            return handler()
        except FeddError as exc:
            return error(request, exc)

    def hot_plan(
        self, method: bytes, raw: bytes, host: bytes | None, secure: bool, client: str, who: Identity
    ) -> tuple[Plan, str] | None:
        """The lean front's question (fedd.web.lean): may this GET/HEAD be answered from a cached
        redirect plan, without building a twisted.web request? (plan, path) when it may: the path
        is a plain federation path, `who` may read it, and a fresh plan exists. None sends the
        request through twisted.web, which answers everything else (and every error)."""
        if raw == self.metrics_path or raw == self.srr_path or raw.startswith(b"/.well-known/fedd/"):
            return None
        path = self._paths.get(raw)
        if path is None:
            try:
                path = normalise_path(raw)
            except FeddError:
                return None
            if len(self._paths) >= PLAN_ENTRIES:
                self._paths.clear()
            self._paths[raw] = path
        if self.auth is not None and not self.auth.decide(who, "r", path).allowed:
            return None
        plan = self.reads.cached_plan((path, client, method, host, secure))
        return (plan, path) if plan is not None else None

    def _dispatch(self, request: server.Request, path: str) -> bytes | int:
        method = request.method
        if method in (b"GET", b"HEAD"):
            return self.reads.read(request, path)
        if method == b"PROPFIND":
            return start(request, self.reads.propfind(request, path))
        writes = self.writes
        if writes is not None:
            if method == b"PUT":
                return start(request, writes.put(request, path))
            if method == b"DELETE":
                return start(request, writes.delete(request, path))
            if method == b"MKCOL":
                return start(request, writes.mkcol(request, path))
            if method == b"MOVE":
                return start(request, writes.move(request, path))
            if method == b"COPY" and self.tpc is not None:
                return start(request, writes.copy(request, path))
        if method == b"OPTIONS":
            request.setHeader(b"allow", ALLOW)
            request.setHeader(b"dav", b"1")
            request.setHeader(b"ms-author-via", b"DAV")
            return b""
        raise MethodNotAllowed(f"{method.decode('latin-1')} is not supported here")

    def status(self, *, peers: bool = True) -> dict[str, Any]:
        """The status; with `[server] workers`, its per-worker numbers summed over the host's workers
        (`peers=False`: this worker's own, what it shares with the others)."""
        data = self.fed.to_json()
        data["fedd"] = {
            "version": __version__,
            "started": self.started,
            "now": time.time(),
            "host": self.host,
            # what this host shares with others: the state database, the memcached servers
            "shared": {
                # the workers' implicit host-local state is shared with no other host
                "database": self.state.db.where if self.state is not None and not self.state.implicit else None,
                "memcached": list(self.fed.config.locate.memcached),
            },
        }
        sections: dict[str, Any] = {
            "events": self.events,
            "auth": self.auth,
            "space": self.space,
            "downtimes": self.downtimes,
            "tpc": self.tpc,
            "checksums": self.checksums,
            "reload": self.reload_status,
            "state": self.state,
            "workers": self.workers,
            "confirm": self.confirm,
            "replication": self.replication,
        }
        for name, part in sections.items():
            if part is not None:
                data[name] = part.to_json()
        if self.gocdb is not None and self.gocdb.sources:
            data["gocdb"] = self.gocdb.to_json()
        if peers and self.workers is not None:
            self.workers.add_peers(data)
        return data

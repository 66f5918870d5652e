"""The `confirm` service: after fedd redirected (or carried) a PUT, find out whether the object landed.

`expect` takes an upload into a bounded table (`fedd.confirm.pending`). Two ways bring the answer:
looks at the target (the endpoint's stat: HEAD or PROPFIND) with backoff, a few at a time, and, for
Ceph RGW endpoints with `[confirm] notify`, RGW's bucket notifications read from RabbitMQ
(`fedd.confirm.rgw`). Whichever comes first resolves the upload; later ones find nothing pending
(a notification delivered twice gives one event). Then: the path's cache entries are dropped,
`put-done` (with the adler32 the storage reports or `[checksums]` computes, waited for up to
`checksum_wait`) or `put-failed` is published (`fedd.confirm.outcomes`), and the outcome is counted
(status, metrics).

A notification for an object fedd did not place (or no longer waits for) only drops the path's cache
entries, so an object written past fedd is seen by the next read at once.

Every upload taken is also written to `[confirm] pending_file` (`fedd.confirm.kept`, in its own
thread, in batches: one transaction for what changed while the last one was written) and deleted
from it once decided; the PUT's 307 waits for the commit that holds its row (boundedly), so a kill
right after the answer loses no upload. At start the service takes over the uploads its previous
run left there (a worker: those of its index; a chunk at a reactor turn) and looks at each at
once: the deadline counts from the redirect, so one whose deadline passed while fedd was down
gets that one look, then put-done or put-failed. A write that fails is logged once (without a
traceback) and confirming goes on in memory. On shutdown the uploads still pending are logged, and
confirmed after the restart.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.logger import Logger

from fedd.config import Config
from fedd.config.schema import ConfirmConfig
from fedd.confirm.kept import KeptUploads, PendingFile
from fedd.confirm.outcomes import ADLER32, RECENT, Emit, Outcomes
from fedd.confirm.pending import Key, Table, Timing, Upload, Verdict, judge_look, judge_notification
from fedd.confirm.rgw import RgwNotifications
from fedd.endpoints.base import Stat
from fedd.endpoints.interfaces import IReadable
from fedd.errors import describe
from fedd.twtypes import MultiService
from fedd.workers import WorkerRole

# ADLER32, RECENT and Emit are fedd.confirm.outcomes's, imported from here too
__all__ = ["ADLER32", "RECENT", "ConfirmService", "Emit", "build_confirm", "timing"]

log = Logger(namespace="fedd.confirm")
UNTRACKED_LOG_INTERVAL = 60.0
SHUTDOWN_LOG_LINES = 100


def timing(config: ConfirmConfig) -> Timing:
    return Timing(config.deadline, config.poll_initial, config.poll_factor, config.poll_max)


class ConfirmService(MultiService):
    """Pending uploads, their looks and outcomes. `checksums` (a ChecksumService) brings adler32
    values; without it `put-done` carries what the storage's stat reported. `kept`: the file that
    keeps the pending uploads across a restart (None: memory only)."""

    name = "confirm"

    def __init__(
        self,
        config: ConfirmConfig,
        *,
        federation: Any,
        clock: Any,
        emit: Emit,
        checksums: Any = None,
        kept: PendingFile | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.fed = federation
        self.clock = clock
        self.outcomes = Outcomes(federation=federation, clock=clock, emit=emit, checksums=checksums)
        self.timing = timing(config)
        self.table = Table(config.max_pending)
        self._timer: Any = None
        self._looking = 0
        self._untracked_logged = -UNTRACKED_LOG_INTERVAL
        self.kept = KeptUploads(kept, clock) if kept is not None else None
        self.counts = {
            "done": 0,
            "failed": 0,
            "untracked": 0,
            "superseded": 0,
            "looks": 0,
            "look_errors": 0,
            "notifications": 0,
            "notifications_ignored": 0,
            "taken_over": 0,
        }

    # --- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._arm()
        if self.kept is not None and self.config.enabled:
            self.kept.start(self._take_over)

    def stopService(self) -> Deferred[Any]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        kept = self.kept is not None and self.kept.keeping
        closing = self.kept.close() if self.kept is not None else None
        pending = len(self.table)
        now = self.clock.seconds()
        later = "confirmed after the restart" if kept else "not kept"
        for upload in self.table.oldest(SHUTDOWN_LOG_LINES):
            log.warn(
                "stopping: upload of {path} to {endpoint} ({size} bytes) not confirmed after {age:.1f}s: {later}",
                path=upload.path,
                endpoint=upload.endpoint,
                size=upload.size,
                age=now - upload.started,
                later=later,
            )
        if pending and kept:
            log.warn(
                "stopping with {n} upload(s) not confirmed: kept in {file}, they are confirmed after the restart",
                n=pending,
                file=self.kept.path if self.kept is not None else "",
            )
        elif pending:
            log.warn("stopping with {n} upload(s) not confirmed: no put-done or put-failed for them", n=pending)
        stopped = super().stopService()
        if closing is None:
            return stopped
        return gatherResults([stopped, closing], consumeErrors=True)

    # --- the pending file ----------------------------------------------------------------------

    def _take_over(self, uploads: list[Upload]) -> tuple[int, int]:
        """Uploads the previous run left (KeptUploads hands them over TAKE_OVER_CHUNK at a reactor
        turn): each looked at now (max_pending holds; an upload of the same name taken since start
        is newer and stays). How many were taken, and how many were over max_pending."""
        assert self.kept is not None
        now = self.clock.seconds()
        notifying = {n.endpoint for n in self.config.notifies}
        taken = over = 0
        for upload in uploads:
            if upload.key in self.table:
                continue
            upload.notified = upload.endpoint in notifying
            ok, _ = self.table.add(upload, now, earlier=True)
            if ok:
                taken += 1
            else:
                over += 1
                self.kept.keep(upload.key, None)
        self.counts["taken_over"] += taken
        self.counts["untracked"] += over
        self._arm()
        return taken, over

    def _keep(self, key: Key, upload: Upload | None) -> None:
        if self.kept is not None:
            self.kept.keep(key, upload)

    def reconfigure(self, new: Config) -> list[str]:
        """Deadline, backoff and bounds apply at once (to pending uploads too); the broker and the
        notification queues are set up at start."""
        old, self.config = self.config, new.confirm
        self.timing = timing(new.confirm)
        self.table.limit = new.confirm.max_pending
        self._arm()
        later = []
        if (old.broker, old.notifies) != (new.confirm.broker, new.confirm.notifies):
            later.append("[confirm] broker, notify")
        if old.pending_file != new.confirm.pending_file:
            later.append("[confirm] pending_file")
        return later

    # --- taking uploads ----------------------------------------------------------------------

    def expect(self, path: str, endpoint: str, size: int | None, *, overwrite: bool = False) -> Deferred[bool] | None:
        """fedd is sending the client of `PUT path` to `endpoint`. With a pending file: a Deferred
        that fires once the upload is on disk there (True) or will not be (False; bounded by
        fedd.confirm.kept.KEEP_WAIT), for the answer to wait on; None: nothing to wait for."""
        if not self.config.enabled or not self.running:
            return None
        endpoint_path = next((t.path for t in self.fed.mapped(path) if t.endpoint == endpoint), None)
        if endpoint_path is None:
            return None
        now = self.clock.seconds()
        notified = any(n.endpoint == endpoint for n in self.config.notifies)
        upload = Upload(path, endpoint, endpoint_path, size, now, overwrite, notified)
        taken, old = self.table.add(upload, self.timing.first_look(upload))
        if not taken:
            self.counts["untracked"] += 1
            if now - self._untracked_logged >= UNTRACKED_LOG_INTERVAL:
                self._untracked_logged = now
                log.warn(
                    "{n} uploads wait for confirmation ([confirm] max_pending): {path} and others are not confirmed",
                    n=len(self.table),
                    path=path,
                )
            return None
        if old is not None:
            self.counts["superseded"] += 1
            log.info("{path}: a new upload to {endpoint} replaces one not yet confirmed", path=path, endpoint=endpoint)
        self._arm()
        if self.kept is None:
            return None
        self.kept.keep(upload.key, upload)
        return self.kept.written()

    def carried(self, path: str, endpoint: str, size: int, started: float, adler32: str | None) -> None:
        """fedd carried the body of `PUT path` to `endpoint` itself, which took all `size` bytes: the
        upload landed (nothing to look for), with the adler32 of the bytes fedd sent."""
        if not self.config.enabled or not self.running:
            return
        self.counts["done"] += 1
        self._forget(path)
        self.outcomes.carried(Upload(path, endpoint, path, size, started), self.clock.seconds(), adler32)

    # --- looking -----------------------------------------------------------------------------

    def _arm(self) -> None:
        """One timer, at the earliest due look."""
        if not self.running:
            return
        due = self.table.next_due()
        if self._timer is not None and self._timer.active():
            if due is not None and self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = None
        if due is not None:
            self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            free = self.config.max_polls - self._looking
            for upload in self.table.due(self.clock.seconds(), max(free, 0)):
                self._looking += 1
                ensureDeferred(self._look(upload)).addErrback(lambda f: log.failure("looking for an upload failed", f))
        finally:
            if self._looking < self.config.max_polls:
                self._arm()

    async def _look(self, upload: Upload) -> None:
        size = mtime = None
        exists = failed = False
        found: Stat | None = None
        try:
            endpoint = self.fed.endpoints.get(upload.endpoint)
            if endpoint is None or not IReadable.providedBy(endpoint):
                raise LookupError(f"{upload.endpoint} is no longer a readable endpoint")
            d = IReadable(endpoint).stat(upload.endpoint_path)
            d.addTimeout(endpoint.config.timeout * 2, self.clock)
            stat = await d
            self.counts["looks"] += 1
            upload.last_error = ""
            if stat is not None and not stat.is_dir:
                exists, size, mtime, found = True, stat.size, stat.mtime, stat
        except Exception as exc:  # an endpoint fault: try again later, fail only at the deadline
            self.counts["look_errors"] += 1
            upload.last_error = describe(exc)
            failed = True
        finally:
            self._looking -= 1
        upload.looks += 1
        try:
            self._judge(upload, size, mtime, exists, failed, found)
        except Exception:  # a bug: the upload must not stay unscheduled (never looked at, never failed)
            log.failure("judging a look at {path} failed", path=upload.path)
            if self.table.get(upload.key) is upload and upload.due == float("inf"):
                self.table.schedule(upload, self.timing.next_look(upload, self.clock.seconds()))
        self._arm()

    def _judge(
        self, upload: Upload, size: int | None, mtime: float | None, exists: bool, failed: bool, found: Stat | None
    ) -> None:
        if self.table.get(upload.key) is not upload:
            return  # resolved meanwhile (a notification), or replaced by a newer upload
        now = self.clock.seconds()
        verdict = judge_look(upload, size, mtime, exists, now, self.timing)
        if verdict.outcome == "wait":
            self.table.schedule(upload, self.timing.next_look(upload, now))
            return
        if verdict.outcome == "failed" and failed and upload.seen_size is None:
            verdict = Verdict("failed", f"deadline passed: the endpoint did not answer ({upload.last_error})")
        self._resolve(upload, verdict, "look", found)

    # --- notifications -----------------------------------------------------------------------

    def notified(self, endpoint: str, endpoint_path: str, size: int | None, event_time: float | None) -> None:
        """The storage says `endpoint_path` was created with `size` (RGW bucket notification)."""
        self.counts["notifications"] += 1
        upload = self.table.get((endpoint, endpoint_path))
        verdict = judge_notification(upload, size, event_time) if upload is not None else None
        if upload is None or verdict is None or verdict.outcome == "wait":
            self.counts["notifications_ignored"] += 1
            path = self.fed.namespace.to_federation(endpoint, endpoint_path)
            if path is not None:  # written past fedd (or a copy, a duplicate): readers see it at once
                self.fed.forget(path)
            return
        self._resolve(upload, verdict, "notification")

    # --- outcomes ----------------------------------------------------------------------------

    def _resolve(self, upload: Upload, verdict: Verdict, how: str, found: Stat | None = None) -> None:
        """`found`: the object as the look that resolved it saw it (its checksums need no second stat)."""
        self.table.pop(upload.key)
        self._keep(upload.key, None)
        now = self.clock.seconds()
        self._forget(upload.path)
        if verdict.outcome == "failed":
            self.counts["failed"] += 1
            log.warn(
                "upload of {path} to {endpoint} failed: {reason}",
                path=upload.path,
                endpoint=upload.endpoint,
                reason=verdict.reason,
            )
            self.outcomes.failed(upload, now, how, verdict.reason)
            return
        self.counts["done"] += 1
        done = self.outcomes.done(upload, verdict.size, now, how, found, self.config.checksum_wait)
        ensureDeferred(done).addErrback(
            lambda f: log.failure("publishing put-done for {path} failed", f, path=upload.path)
        )

    def _forget(self, path: str) -> None:
        """The locate caches (here, memcached, other processes through the invalidation log): what
        was read between the redirect and the landing (a 404, the old file) is not served again."""
        self.fed.forget(path)

    # --- status ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        now = self.clock.seconds()
        rgw = cast(RgwNotifications | None, self.namedServices.get("rgw-notifications"))
        return {
            "enabled": self.config.enabled,
            "pending": len(self.table),
            "max_pending": self.config.max_pending,
            "looking": self._looking,
            **self.counts,
            "oldest": [u.to_json(now) for u in self.table.oldest(10)],
            "recent": list(self.outcomes.recent),
            "rgw_notifications": rgw.to_json() if rgw is not None else None,
            "pending_file": self.kept.path if self.kept is not None else None,
            "pending_file_errors": self.kept.errors if self.kept is not None else 0,
            "pending_file_unkept": self.kept.unkept if self.kept is not None else 0,
            "taking_over": self.kept.handing_over if self.kept is not None else 0,
        }


def build_confirm(
    config: Config, reactor: Any, *, federation: Any, emit: Emit, checksums: Any, worker: WorkerRole | None = None
) -> ConfirmService:
    """The `confirm` service; with `[confirm] notify`, its RGW notification consumer is a child. With
    `[confirm] pending_file`, pending uploads are kept there, under this worker's index (0 alone)."""
    c = config.confirm
    kept = None
    if c.enabled and c.pending_file:
        index, count = (worker.index, worker.count) if worker is not None else (0, 1)
        kept = PendingFile(reactor, c.pending_file, index, count)
    confirm = ConfirmService(
        config.confirm, federation=federation, clock=reactor, emit=emit, checksums=checksums, kept=kept
    )
    if config.confirm.notifies:
        buckets = {ep.id: ep.bucket for ep in config.endpoints}
        RgwNotifications(
            reactor,
            config.confirm.broker or config.events.broker,
            config.confirm.notifies,
            buckets,
            confirm.notified,
            timeout=config.events.timeout,
        ).setServiceParent(confirm)
    return confirm

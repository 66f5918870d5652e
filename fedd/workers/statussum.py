"""The numbers of the status (`/.well-known/fedd/status`) that each worker counts on its own, and
their sum over the workers of a host. Pure.

Each worker writes `status_numbers(its own status)` beside its counters (fedd.workers.shared, every
second); the worker that answers a status read adds the others' to its own (`add_status`), so the
status says the same whichever worker answers. Counts ("counter": events sent, uploads confirmed,
copies, checksums, endpoint faults seen while serving, ...) are summed over the live workers and
those that have ended; quantities of the moment ("gauge": outbox depth, uploads pending, cache
entries, ...) over the live ones; lists of the moment ("list": recent upload outcomes, uploads
pending, copies and checksums running, transfers) are the live workers' lists one after the other
(the checksums finished lately: newest first, by `finished_at`).
Everything else in the status is either the host's (endpoint health and space: worker 0 measures,
the others follow) or stays the answering worker's (replication's hot files and decisions).
"""

from __future__ import annotations

from typing import Any

STAR = "*"  # any key of the dict at that place (an endpoint id)

_EVENTS_COUNTS = ("emitted", "sent", "failed_publishes", "connect_failures", "dropped", "sampled_out", "journal_errors")
_CONFIRM_COUNTS = ("done", "failed", "untracked", "superseded", "looks", "look_errors", "notifications")
_CHECKSUM_COUNTS = ("computed", "failed", "refused", "bytes_hashed", "stored_db", "stored_s3", "mismatches")

# (path, kind): kind "counter" (summed over the live and ended workers), "gauge" (the live ones) or
# "list" (the live workers' lists joined)
STATUS_SUMS: tuple[tuple[tuple[str, ...], str], ...] = (
    *((("events", k), "counter") for k in _EVENTS_COUNTS),
    (("events", "outbox_depth"), "gauge"),
    (("events", "pending"), "gauge"),
    *((("confirm", k), "counter") for k in (*_CONFIRM_COUNTS, "notifications_ignored", "taken_over")),
    (("confirm", "pending_file_errors"), "counter"),
    (("confirm", "pending_file_unkept"), "counter"),
    (("confirm", "taking_over"), "gauge"),
    *((("confirm", "rgw_notifications", k), "counter") for k in ("connections", "received", "unreadable", "failures")),
    (("confirm", "pending"), "gauge"),
    (("confirm", "recent"), "list"),
    (("confirm", "oldest"), "list"),
    (("replication", "running"), "list"),
    (("checksums", "running"), "list"),
    (("tpc", "transfers"), "list"),
    (("confirm", "looking"), "gauge"),
    *((("replication", k), "counter") for k in ("copied", "failed", "evicted", "bytes_copied")),
    *((("replication", k), "counter") for k in ("reads_counted", "reads_dropped")),
    *((("checksums", k), "counter") for k in _CHECKSUM_COUNTS),
    (("checksums", "queued"), "gauge"),
    (("checksums", "waiting_elsewhere"), "gauge"),
    (("checksums", "remembered"), "gauge"),
    *((("tpc", k), "counter") for k in ("done", "failed", "redirected")),
    (("tpc", "active"), "gauge"),
    *((("locate", k), "counter") for k in ("local_hits", "local_misses", "fanouts")),
    (("locate", "local_entries"), "gauge"),
    (("locate", "inflight"), "gauge"),
    *((("locate", "memcached", k), "counter") for k in ("hits", "misses", "errors")),
    *((("locate", "invalidations", k), "counter") for k in ("seen", "published", "applied", "flushes")),
    (("checksums", "recent"), "list"),
    *((("endpoints", STAR, "health", k), "counter") for k in ("passive_failures", "refusals")),
    (("state", "queued"), "gauge"),  # writes waiting for the state database, in every worker's queue
    *((("state", k), "counter") for k in ("written", "dropped")),
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_value(value: Any) -> bool:
    return _is_number(value) or isinstance(value, list)


def _found(data: Any, path: tuple[str, ...], at: list[str]) -> list[tuple[list[str], Any]]:
    if not path:
        return [(at, data)] if _is_value(data) else []
    if not isinstance(data, dict):
        return []
    head, rest = path[0], path[1:]
    keys = sorted(k for k in data if isinstance(k, str)) if head == STAR else [head]
    return [found for key in keys if key in data for found in _found(data[key], rest, [*at, key])]


def status_numbers(status: dict[str, Any], kinds: tuple[str, ...] = ("counter", "gauge", "list")) -> list[list[Any]]:
    """This worker's per-worker numbers: [[path (a list of keys), value], ...] (JSON data)."""
    return [
        [path, value] for pattern, kind in STATUS_SUMS if kind in kinds for path, value in _found(status, pattern, [])
    ]


def counter_paths() -> set[tuple[str, ...]]:
    return {pattern for pattern, kind in STATUS_SUMS if kind == "counter"}


_BY_HEAD: dict[tuple[int, str], list[tuple[str, ...]]] = {}
for _pattern, _kind in STATUS_SUMS:
    _BY_HEAD.setdefault((len(_pattern), _pattern[0]), []).append(_pattern)


def _pattern_of(path: list[Any]) -> tuple[str, ...] | None:
    if not path:
        return None
    for pattern in _BY_HEAD.get((len(path), path[0]), ()):
        if all(p in (STAR, k) for p, k in zip(pattern, path, strict=True)):
            return pattern
    return None


def add_numbers(lists: list[Any], *, counters_only: bool = False) -> list[list[Any]]:
    """Several workers' `status_numbers` added up, in the same form (the ended workers' file keeps
    the counters alone). An entry in another form is left out."""
    counters = counter_paths()
    total: dict[tuple[str, ...], Any] = {}
    for numbers in lists:
        for path, value in _entries(numbers):
            pattern = _pattern_of(path)
            if pattern is None or (counters_only and pattern not in counters):
                continue
            key = tuple(path)
            if key not in total:
                total[key] = value
            elif isinstance(total[key], list) == isinstance(value, list):
                total[key] = total[key] + value
    return [[list(path), value] for path, value in total.items()]


def _entries(numbers: Any) -> list[tuple[list[str], Any]]:
    if not isinstance(numbers, list):
        return []
    found = []
    for entry in numbers:
        if (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], list)
            and all(isinstance(k, str) for k in entry[0])
            and _is_value(entry[1])
        ):
            found.append((entry[0], entry[1]))
    return found


# lists of finished things joined newest first (by this key of their entries), not worker by worker
NEWEST_FIRST: dict[tuple[str, ...], str] = {("checksums", "recent"): "finished_at"}


def _newest_first(entries: list[Any], key: str) -> list[Any]:
    def when(entry: Any) -> float:
        value = entry.get(key) if isinstance(entry, dict) else None
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("-inf")

    return sorted(entries, key=when, reverse=True)


def add_status(status: dict[str, Any], others: list[Any]) -> None:
    """Add the other workers' numbers to this worker's `status`, in place. A number the answering
    worker does not have (a section or endpoint it lacks, e.g. during a reload) is left out."""
    for path, value in _entries(add_numbers(others)):
        place: Any = status
        for key in path[:-1]:
            place = place.get(key) if isinstance(place, dict) else None
        if not isinstance(place, dict):
            continue
        mine = place.get(path[-1])
        if (_is_number(mine) and _is_number(value)) or (isinstance(mine, list) and isinstance(value, list)):
            place[path[-1]] = mine + value
            order = NEWEST_FIRST.get(tuple(path)) if isinstance(mine, list) else None
            if order is not None:
                place[path[-1]] = _newest_first(place[path[-1]], order)

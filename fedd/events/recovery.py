"""What a killed process left in its event journal, stored before any event of the new run."""

from __future__ import annotations

from twisted.logger import Logger

from fedd.errors import describe
from fedd.events.journal import Journal, Segment
from fedd.events.outbox import Outbox
from fedd.events.sinks import Sink

log = Logger(namespace="fedd.events")


async def replay_journal(journal: Journal, outbox: Outbox | None, sink: Sink, prefix: str) -> tuple[int | None, int]:
    """Hand the journal's leftover segments to the outbox (or, with a spool, to the sink) and remove
    them once stored; a segment that cannot be stored is kept for the next start.
    Returns (the outbox's depth, None when unchanged; events the outbox dropped to take them)."""
    try:
        leftovers = journal.leftovers()
    except OSError as exc:
        log.error("cannot read the event journal {path}: {reason}", path=journal.base, reason=describe(exc))
        return None, 0
    if not leftovers:
        return None, 0
    paths = [segment.path for segment in leftovers]
    depth: int | None = None
    dropped = 0
    try:
        if outbox is not None:
            n, bad, depth, dropped = await outbox.replay(paths, prefix)
        else:
            n, bad = await sink.replay(paths, prefix)  # type: ignore[attr-defined]  # the spool's
    except Exception as exc:
        log.error("cannot replay the event journal ({reason}): kept for the next start", reason=describe(exc))
        for segment in leftovers:
            Journal.release(segment)
        return None, 0
    for segment in leftovers:
        _remove_segment(segment)
    log.info(
        "{n} events recovered from the journal of a previous run ({segments} segments, {bad} unreadable lines)",
        n=n,
        segments=len(leftovers),
        bad=bad,
    )
    return depth, dropped


def _remove_segment(segment: Segment) -> None:
    try:
        Journal.remove(segment)
    except OSError as exc:  # stored already: a leftover segment only means duplicates after a restart
        log.error("cannot remove journal segment {path}: {reason}", path=segment.path, reason=describe(exc))

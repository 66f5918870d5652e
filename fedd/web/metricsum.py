"""Several workers' metrics added up into one host's (fedd.web.metrics, fedd.workers.shared).

Each worker's snapshot (`Metrics.snapshot`) holds its request counters, redirect buckets and sum, and
every family its collectors gave, as JSON data: `add_snapshots` and `add_families` add several up
(counters and histograms summed over the workers, live and ended; a gauge as `GAUGE_MODES` declares),
`snapshot_of`, `families_of` and `metrics_of` turn them from and into prometheus-client families.
A snapshot or family in another form (another version) is left out; the rest still count.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from prometheus_client.core import Metric

# How one worker's gauge combines with the other workers' (prometheus-client's multiprocess modes):
# "sum": a quantity of each process, added up over the live workers; "host": a value of the whole host
# that every worker holds alike (worker 0 measures, the others follow its results), taken from the
# worker that answers; "min": 1 only when it is 1 on every worker. Undeclared gauges are "host".
GAUGE_MODES = {
    "fedd_endpoint_up": "host",
    "fedd_endpoint_latency_seconds": "host",
    "fedd_endpoint_space_free_bytes": "host",
    "fedd_endpoint_space_used_bytes": "host",
    "fedd_endpoint_space_total_bytes": "host",
    "fedd_endpoint_space_age_seconds": "host",
    "fedd_endpoint_space_stale": "host",
    "fedd_locate_cache_entries": "sum",
    "fedd_events_outbox_depth": "sum",
    "fedd_events_connected": "min",
    "fedd_open_connections": "sum",
    "fedd_uploads_pending": "sum",
    "fedd_uploads_taking_over": "sum",
    "fedd_replicate_hot_files": "sum",
    "fedd_replicate_copies_running": "sum",
    "fedd_replicate_bytes": "host",  # from the replica records of the state database
    "fedd_replicate_budget_left_bytes": "host",  # idem
    # the answering worker's own, added after the others' (a worker that cannot write its counters
    # file cannot tell the others)
    "fedd_counters_file_unwritten": "host",
    "fedd_counters_file_unwritten_since_seconds": "host",
}
SUMMED_TYPES = ("counter", "histogram", "summary")

REDIRECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# requests, redirect buckets, redirect seconds (exact: the sum of the workers' float sums, in any
# order, before or after an ended worker's is folded in, rounds to one float that only grows)
Totals = tuple[dict[tuple[bytes, int], int], list[int], Fraction]


def add_snapshots(snapshots: list[dict[str, Any]]) -> Totals:
    """Counters in `Metrics.snapshot`'s form added up (the workers of a host); a snapshot from
    another version is left out, the rest still count."""
    requests: dict[tuple[bytes, int], int] = {}
    redirects = [0] * (len(REDIRECT_BUCKETS) + 1)
    total = Fraction(0)
    for snap in snapshots:
        try:
            found = [((str(m).encode("latin-1"), int(s)), int(n)) for m, s, n in snap["requests"]]
            buckets = [int(b) for b in snap["redirects"]] if len(snap["redirects"]) == len(redirects) else None
            exact = snap.get("redirect_sum_exact")  # the ended workers' file: "numerator/denominator"
            seconds = Fraction(exact) if isinstance(exact, str) else Fraction(float(snap["redirect_sum"]))
        except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError):
            continue
        for key, n in found:
            requests[key] = requests.get(key, 0) + n
        if buckets is not None:
            redirects = [a + b for a, b in zip(redirects, buckets, strict=True)]
        total += seconds
    return requests, redirects, total


def snapshot_of(totals: tuple[dict[tuple[bytes, int], int], list[int], float | Fraction]) -> dict[str, Any]:
    """`add_snapshots`' result (or one worker's counters) in `Metrics.snapshot`'s form again."""
    requests, redirects, total = totals
    exact = {"redirect_sum_exact": str(total)} if isinstance(total, Fraction) else {}
    return {
        "requests": [[m.decode("latin-1"), s, n] for (m, s), n in requests.items()],
        "redirects": list(redirects),
        "redirect_sum": float(total),
        **exact,
    }


def families_of(families: Iterator[Metric] | list[Metric]) -> dict[str, Any]:
    """Metric families as JSON data: {name: [type, help, [[sample name, labels, value], ...]]}."""
    return {f.name: [f.type, f.documentation, [[x.name, x.labels, x.value] for x in f.samples]] for f in families}


def add_families(own: dict[str, Any] | None, others: list[dict[str, Any]]) -> dict[str, Any]:
    """`families_of` data of several workers in one (the same form). Counters and histograms are
    summed over all; gauges as `GAUGE_MODES` says, "host" ones taken from `own` alone. With `own`
    None (the ended workers' file) only counters and histograms are kept. A family or sample in
    another form (another version) is left out; the rest still count. Their samples are whole
    numbers (exact in a float up to 2**53): the same sum in any order, never below an earlier one."""
    merged: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for position, data in enumerate([own or {}, *others]):
        mine = own is not None and position == 0
        if not isinstance(data, dict):
            continue
        for name, family in data.items():
            try:
                kind, doc, raw = str(family[0]), str(family[1]), family[2]
                samples = [
                    (str(n), tuple(sorted((str(k), str(v)) for k, v in lab.items())), float(x)) for n, lab, x in raw
                ]
            except (IndexError, KeyError, TypeError, ValueError, AttributeError):
                continue
            mode = "sum" if kind in SUMMED_TYPES else GAUGE_MODES.get(name, "host")
            if (own is None and kind not in SUMMED_TYPES) or (mode == "host" and not mine):
                continue
            entry = merged.setdefault(name, (kind, doc, {}))
            if entry[0] != kind:
                continue
            values = entry[2]
            for sample, labels, value in samples:
                key = (sample, labels)
                if key not in values:
                    values[key] = value
                elif mode == "min":
                    values[key] = min(values[key], value)
                elif mode == "max":
                    values[key] = max(values[key], value)
                else:
                    values[key] += value
    return {
        name: [kind, doc, [[n, dict(labels), x] for (n, labels), x in values.items()]]
        for name, (kind, doc, values) in merged.items()
    }


def metrics_of(data: dict[str, Any]) -> Iterator[Metric]:
    """`families_of` data as prometheus-client families again."""
    for name, (kind, doc, samples) in data.items():
        family = Metric(name, doc, kind)
        for sample, labels, value in samples:
            family.add_sample(sample, labels, value)
        yield family

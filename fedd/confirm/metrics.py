"""Prometheus figures of the `confirm` service, read at scrape time (added to fedd's /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class ConfirmCollector(Collector):
    def __init__(self, confirm: Any) -> None:
        self.confirm = confirm

    def collect(self) -> Iterator[Any]:
        c = self.confirm
        yield GaugeMetricFamily("fedd_uploads_pending", "Uploads waiting to be confirmed", value=float(len(c.table)))
        outcomes = CounterMetricFamily(
            "fedd_uploads_confirmed", "Uploads by outcome (done, failed, untracked, superseded)", labels=["outcome"]
        )
        for outcome in ("done", "failed", "untracked", "superseded"):
            outcomes.add_metric([outcome], float(c.counts[outcome]))
        yield outcomes
        yield CounterMetricFamily(
            "fedd_uploads_taken_over",
            "Uploads a restarted process took over from its previous run ([confirm] pending_file)",
            value=float(c.counts["taken_over"]),
        )
        kept = c.kept
        yield CounterMetricFamily(
            "fedd_uploads_unkept",
            "PUTs redirected before their upload was on disk in [confirm] pending_file (a write failed or was slow)",
            value=float(kept.unkept if kept is not None else 0),
        )
        yield CounterMetricFamily(
            "fedd_pending_file_errors",
            "Writes of [confirm] pending_file that failed",
            value=float(kept.errors if kept is not None else 0),
        )
        yield GaugeMetricFamily(
            "fedd_uploads_taking_over",
            "Uploads left by the previous run still being handed to the confirm service",
            value=float(kept.handing_over if kept is not None else 0),
        )
        looks = CounterMetricFamily("fedd_upload_looks", "Looks at upload targets", labels=["result"])
        looks.add_metric(["answered"], float(c.counts["looks"]))
        looks.add_metric(["error"], float(c.counts["look_errors"]))
        yield looks
        notes = CounterMetricFamily("fedd_upload_notifications", "Storage notifications received", labels=["use"])
        notes.add_metric(["used"], float(c.counts["notifications"] - c.counts["notifications_ignored"]))
        notes.add_metric(["ignored"], float(c.counts["notifications_ignored"]))
        yield notes

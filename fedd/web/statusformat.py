"""Formatting for the status page (fedd.web.statuspage): text, numbers, sizes, durations and
times relative to the status's own `now`, health states, and whether a client wants HTML. Pure."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape
from typing import Any

DASH = "–"


def text(value: Any) -> str:
    """Any value as escaped text; None and empty strings become a dash."""
    if value is None or value == "":
        return DASH
    return escape(str(value), quote=True)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value)


def size(value: Any) -> str:
    n = number(value)
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return DASH  # not reached


def duration(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def when(at: Any, now: float | None) -> str:
    """An epoch time as UTC, with how long ago when `now` is known."""
    t = number(at)
    if t is None:
        return DASH
    try:
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return DASH
    if now is None:
        return stamp
    delta = now - t
    ago = f"in {duration(-delta)}" if delta < 0 else f"{duration(delta)} ago"
    return f'<span title="{stamp}">{ago}</span>'


def state_of(health: dict[str, Any]) -> tuple[str, str]:
    """(CSS class, label) of an endpoint's health: online, offline, no data, failing or unknown."""
    state = health.get("state")
    if state == "online":
        return "s-online", "online"
    if state == "offline":
        return "s-offline", "offline"
    if health.get("last_check") is None:
        return "s-nodata", "no data"
    failing = number(health.get("consecutive_failures"))
    if failing:
        return "s-failing", f"failing ({failing:.0f})"
    return "s-unknown", text(state) if state else "unknown"


def wants_html(accept: str | None) -> bool:
    """Whether an Accept header prefers text/html to application/json (browsers do, curl does not)."""
    if not accept:
        return False
    html_q: tuple[int, float] = (-1, 0.0)  # (specificity, q) of the most specific range that matches
    json_q: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for target, current in (("text/html", html_q), ("application/json", json_q)):
            kind = target.split("/")[0]
            specificity = 2 if media == target else 1 if media == kind + "/*" else 0 if media == "*/*" else -1
            if specificity > current[0]:
                if target == "text/html":
                    html_q = (specificity, q)
                else:
                    json_q = (specificity, q)
    return html_q[1] > json_q[1]

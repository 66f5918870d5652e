"""The status page for browsers: the status JSON rendered as one self-contained HTML page. Pure.

`render_status_page(status)` takes the dict that `/.well-known/fedd/status` answers with JSON and
returns a complete page: inline CSS only, no scripts, fonts, images or other requests (the favicon
is an empty data: URL), a `<meta http-equiv=refresh>` to reload every 10 s. Every string that comes
from the status (endpoint ids, URLs, error messages) is escaped. Times are shown relative to
`status["fedd"]["now"]`, so the page is a function of its input alone.

Parts of the status that a given fedd does not have yet (space, downtimes, events) are left out;
missing keys and `None` values anywhere are shown as a dash, never as an error. An endpoint whose
health has no data yet (state `unknown`, never checked) is "no data" in neutral grey, not red.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape
from typing import Any

REFRESH_SECONDS = 10
DASH = "–"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .5em}
.meta{color:#555;margin:0 0 1em}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{border:1px solid #d0d0d0;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eceff1}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.state{font-weight:600;color:#fff;text-align:center;white-space:nowrap}
.s-online{background:#2e7d32}.s-offline{background:#c62828}.s-nodata{background:#9e9e9e}
.s-failing{background:#ef6c00}.s-unknown{background:#757575}
.stale{color:#8d6e00;font-weight:600}.err{color:#b71c1c}.muted{color:#777}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
ul.errors{background:#fff;border:1px solid #d0d0d0;padding:.5em 1em .5em 2em;margin:0}
"""


def _text(value: Any) -> str:
    """Any value as escaped text; None and empty strings become a dash."""
    if value is None or value == "":
        return DASH
    return escape(str(value), quote=True)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value)


def _bytes(value: Any) -> str:
    n = _number(value)
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return DASH  # not reached


def _duration(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _when(at: Any, now: float | None) -> str:
    """An epoch time as UTC, with how long ago when `now` is known."""
    t = _number(at)
    if t is None:
        return DASH
    try:
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return DASH
    if now is None:
        return stamp
    delta = now - t
    ago = f"in {_duration(-delta)}" if delta < 0 else f"{_duration(delta)} ago"
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
    failing = _number(health.get("consecutive_failures"))
    if failing:
        return "s-failing", f"failing ({failing:.0f})"
    return "s-unknown", _text(state) if state else "unknown"


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


def _space_cell(space: Any, now: float | None) -> tuple[str, str, str, str]:
    """(free, used, total, measured) cells for one endpoint's space entry."""
    entry = _dict(space)
    if not entry:
        return DASH, DASH, DASH, '<span class="muted">not reported</span>'
    age = _number(entry.get("age"))
    measured = entry.get("measured")
    never = age is None and _number(measured) is None
    stale = bool(entry.get("stale")) and not never  # nothing measured yet: no figures to call stale
    cls = ' class="stale"' if stale else ""
    free, used, total = (f"<span{cls}>{_bytes(entry.get(k))}</span>" for k in ("free", "used", "total"))
    if age is not None:
        when = f"{_duration(age)} ago"
    elif not never:
        when = _when(measured, now)
    else:
        when = '<span class="muted">not measured yet</span>'
    notes = [when]
    if stale:
        notes.append('<span class="stale">stale</span>')
    reserved = _number(entry.get("reserved"))
    if reserved:
        notes.append(f"{_bytes(reserved)} reserved")
    if entry.get("source"):
        notes.append(f'<span class="muted">{_text(entry.get("source"))}</span>')
    if entry.get("error"):
        notes.append(f'<span class="err">{_text(entry.get("error"))}</span>')
    return free, used, total, "<br>".join(notes)


def _endpoint_rows(status: dict[str, Any], now: float | None) -> list[str]:
    spaces = _dict(status.get("space"))
    listed = status.get("downtimes")
    downtimes: list[Any] = listed if isinstance(listed, list) else []
    rows = []
    for eid, info in sorted(_dict(status.get("endpoints")).items()):
        info = _dict(info)
        health = _dict(info.get("health"))
        cls, label = state_of(health)
        active = [_dict(d) for d in downtimes if _dict(d).get("endpoint") == eid and _dict(d).get("active")]
        if active:
            label += "".join(f"<br>downtime ({_text(d.get('scope'))})" for d in active)
        latency = _number(health.get("latency_ms"))
        free, used, total, measured = _space_cell(spaces.get(eid), now)
        error = health.get("last_error")
        error_cell = (
            f'<span class="err">{_text(error)}</span><br>{_when(health.get("last_error_at"), now)}' if error else DASH
        )
        rows.append(
            "<tr>"
            f'<td class="id">{_text(eid)}</td><td>{_text(info.get("kind"))}</td><td>{_text(info.get("url"))}</td>'
            f'<td class="state {cls}" data-endpoint="{_text(eid)}">{label}</td>'
            f'<td class="num">{DASH if latency is None else f"{latency:.1f} ms"}</td>'
            f'<td class="num">{free}</td><td class="num">{used}</td><td class="num">{total}</td>'
            f"<td>{measured}</td><td>{_when(health.get('last_check'), now)}</td><td>{error_cell}</td>"
            "</tr>"
        )
    return rows


def _recent_errors(status: dict[str, Any], now: float | None) -> list[str]:
    """Last errors known to the status, newest first: endpoint health, space reports, the events sink."""
    found: list[tuple[float, str, str]] = []
    for eid, info in _dict(status.get("endpoints")).items():
        health = _dict(_dict(info).get("health"))
        if health.get("last_error"):
            at = _number(health.get("last_error_at"))
            found.append((at or 0.0, f"endpoint {eid}", str(health["last_error"])))
    for eid, entry in _dict(status.get("space")).items():
        entry = _dict(entry)
        if entry.get("error"):
            at = _number(entry.get("error_at")) or _number(entry.get("measured"))
            found.append((at or 0.0, f"space of {eid}", str(entry["error"])))
    for src in _dict(status.get("gocdb")).get("sources") or []:
        src = _dict(src)
        if src.get("last_error"):
            found.append((_number(src.get("last_error_at")) or 0.0, f"GOCDB {src.get('url')}", str(src["last_error"])))
    events = _dict(status.get("events"))
    if events.get("last_error"):
        found.append((0.0, "events", str(events["last_error"])))
    found.sort(key=lambda item: item[0], reverse=True)
    return [
        f'<li>{_when(at, now) if at else ""} <b>{_text(source)}</b>: <span class="err">{_text(message)}</span></li>'
        for at, source, message in found
    ]


def _pairs(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows) + "</table>"


def _events(status: dict[str, Any]) -> str:
    events = status.get("events")
    if not isinstance(events, dict):
        return '<p class="muted">no events service</p>'
    connected = events.get("connected")
    link = '<span class="ok">yes</span>' if connected else '<span class="bad">no</span>'
    return _pairs(
        [
            ("sink", _text(events.get("sink"))),
            ("connected", link if connected is not None else DASH),
            ("outbox depth", _text(events.get("outbox_depth"))),
            ("pending", _text(events.get("pending"))),
            ("emitted", _text(events.get("emitted"))),
            ("sent", _text(events.get("sent"))),
            ("failed publishes", _text(events.get("failed_publishes"))),
            ("dropped", _text(events.get("dropped"))),
            ("last error", f'<span class="err">{_text(events.get("last_error"))}</span>'),
        ]
    )


def _locate(status: dict[str, Any]) -> str:
    locate = _dict(status.get("locate"))
    hits, misses = _number(locate.get("local_hits")), _number(locate.get("local_misses"))
    ratio = (
        f"{100.0 * hits / (hits + misses):.1f} %" if hits is not None and misses is not None and hits + misses else DASH
    )
    rows = [
        ("cache entries", _text(locate.get("local_entries"))),
        ("cache hits", _text(locate.get("local_hits"))),
        ("cache misses", _text(locate.get("local_misses"))),
        ("hit ratio", ratio),
        ("fan-outs to endpoints", _text(locate.get("fanouts"))),
        ("locates in flight", _text(locate.get("inflight"))),
    ]
    memcached = locate.get("memcached")
    if isinstance(memcached, dict):
        servers = ", ".join(f"{_text(k)} {_text(v)}" for k, v in sorted(_dict(memcached.get("servers")).items()))
        rows += [
            ("memcached servers", servers or DASH),
            ("memcached hits", _text(memcached.get("hits"))),
            ("memcached misses", _text(memcached.get("misses"))),
            ("memcached errors", _text(memcached.get("errors"))),
        ]
    return _pairs(rows)


def _hosts(status: dict[str, Any], now: float | None) -> str:
    """What this host shares with others (state database, memcached) and the hosts it sees there."""
    shared = _dict(_dict(status.get("fedd")).get("shared"))
    state = _dict(status.get("state"))
    memcached = ", ".join(_text(m) for m in shared.get("memcached") or []) or DASH
    rows = [("state database", _text(shared.get("database")) if shared.get("database") else "none (per host)")]
    if state:
        if state.get("reachable"):
            reach = '<span class="ok">reachable</span>'
        else:
            reach = f'<span class="bad">unreachable</span> since {_when(state.get("unreachable_since"), now)}'
        rows += [
            ("database state", reach),
            ("queued writes", _text(state.get("queued"))),
            ("dropped writes", _text(state.get("dropped"))),
            ("last error", f'<span class="err">{_text(state.get("error"))}</span>'),
        ]
    rows.append(("memcached servers", memcached))
    hosts = [_dict(h) for h in state.get("hosts") or []]
    table = ""
    if hosts:
        table = (
            "<table><tr><th>host</th><th>version</th><th>listens on</th><th>started</th><th>last seen</th></tr>"
            + "".join(
                f"<tr><td>{_text(h.get('host'))}{' (this one)' if h.get('self') else ''}</td>"
                f"<td>{_text(h.get('version'))}</td><td>{_text(h.get('listen'))}</td>"
                f"<td>{_when(h.get('started'), now)}</td><td>{_when(h.get('seen'), now)}</td></tr>"
                for h in hosts
            )
            + "</table>"
        )
    return "<h2>Hosts and shared state</h2>" + _pairs(rows) + table


def _downtimes(status: dict[str, Any], now: float | None) -> str:
    downtimes = status.get("downtimes")
    if not isinstance(downtimes, list):
        return ""
    if not downtimes:
        return '<h2>Downtimes</h2><p class="muted">none scheduled</p>'
    rows = [
        f"<tr><td>{_text(d.get('endpoint'))}</td><td>{_scope(d.get('scope'))}</td>"
        f"<td>{_when(d.get('start'), now)}</td><td>{_when(d.get('end'), now)}</td>"
        f"<td>{'active' if d.get('active') else 'scheduled'}</td><td>{_source(d)}</td>"
        f"<td>{_text(d.get('reason'))}</td></tr>"
        for d in (_dict(x) for x in downtimes)
    ]
    return (
        "<h2>Downtimes</h2><table><tr><th>endpoint</th><th>scope</th><th>start</th><th>end</th>"
        "<th>state</th><th>source</th><th>reason</th></tr>" + "".join(rows) + "</table>"
    )


def _scope(scope: Any) -> str:
    """A downtime's scope; `none` (a GOCDB WARNING by default) is listed but blocks nothing."""
    return '<span class="muted">none (shown only)</span>' if scope == "none" else _text(scope)


def _source(downtime: dict[str, Any]) -> str:
    """Where a downtime comes from (config, admin, gocdb), linked to the source's page when known."""
    origin, link = _text(downtime.get("origin")), downtime.get("link")
    if isinstance(link, str) and link.startswith(("https://", "http://")):
        return f'<a href="{_text(link)}" rel="noreferrer">{origin}</a>'
    return origin


def _gocdb(status: dict[str, Any], now: float | None) -> str:
    """GOCDB sources: when each was last read, how many downtimes it gave, its last error."""
    gocdb = _dict(status.get("gocdb"))
    sources = gocdb.get("sources")
    if not isinstance(sources, list) or not sources:
        return ""
    rows = []
    for src in (_dict(x) for x in sources):
        unmatched = src.get("unmatched_hosts")
        hosts = ", ".join(_text(h) for h in unmatched) if isinstance(unmatched, list) and unmatched else DASH
        error = src.get("last_error")
        rows.append(
            f"<tr><td>{_text(src.get('url'))}</td><td>{_when(src.get('fetched_at'), now)}</td>"
            f'<td class="num">{_text(src.get("downtimes"))}</td><td class="num">{_text(src.get("pages"))}</td>'
            f"<td>{hosts}</td>"
            + (
                f'<td><span class="err">{_text(error)}</span><br>{_when(src.get("last_error_at"), now)}</td>'
                if error
                else f"<td>{DASH}</td>"
            )
            + "</tr>"
        )
    return (
        f'<h2>GOCDB</h2><p class="meta">{_text(gocdb.get("applied"))} downtime(s) on fedd endpoints · '
        f"OUTAGE → {_text(gocdb.get('outage'))}, WARNING → {_text(gocdb.get('warning'))} · "
        f"next read {_when(gocdb.get('next_refresh'), now)}</p>"
        "<table><tr><th>source</th><th>last read</th><th>downtimes</th><th>pages</th>"
        "<th>hosts on no endpoint</th><th>last error</th></tr>" + "".join(rows) + "</table>"
    )


def _embargoes(status: dict[str, Any], now: float | None) -> str:
    """Time-bounded access rules in force: those yet to start and those granting until a time."""
    auth = _dict(status.get("auth"))
    embargoes = auth.get("embargoes")
    if not isinstance(embargoes, list):
        return ""
    head = f'<h2>Access embargoes</h2><p class="meta">next change {_when(auth.get("next_change"), now)}</p>'
    if not embargoes:
        return head + '<p class="muted">no time-bounded rules in force</p>'
    rows = [
        f"<tr><td>{_text(e.get('prefix'))}</td><td>{_text(e.get('principal'))}</td><td>{_text(e.get('letters'))}</td>"
        f"<td>{_when(e.get('from'), now)}</td><td>{_when(e.get('until'), now)}</td>"
        f"<td>{'starts' if e.get('state') == 'pending' else 'ends'}</td><td>{_text(e.get('rule'))}</td></tr>"
        for e in (_dict(x) for x in embargoes)
    ]
    return (
        head + "<table><tr><th>prefix</th><th>principal</th><th>letters</th><th>from</th><th>until</th>"
        "<th>next</th><th>rule</th></tr>" + "".join(rows) + "</table>"
    )


def render_status_page(status: dict[str, Any]) -> bytes:
    """A complete HTML page (UTF-8) showing `status`, the dict behind the status JSON."""
    fedd = _dict(status.get("fedd"))
    now = _number(fedd.get("now"))
    started = _number(fedd.get("started"))
    uptime = _duration(now - started) if now is not None and started is not None else DASH
    rows = _endpoint_rows(status, now)
    errors = _recent_errors(status, now)
    endpoints = (
        "<table><tr><th>id</th><th>kind</th><th>url</th><th>state</th><th>latency</th><th>free</th>"
        "<th>used</th><th>total</th><th>space measured</th><th>last check</th><th>last error</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else '<p class="muted">no endpoints</p>'
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        "<title>fedd status</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>fedd status</h1>"
        f'<p class="meta">host {_text(fedd.get("host"))} · version {_text(fedd.get("version"))} · up {uptime} · '
        f"as of {_when(now, None)} · reloads every {REFRESH_SECONDS} s</p>"
        f"<h2>Endpoints</h2>{endpoints}"
        f"{_downtimes(status, now)}"
        f"{_gocdb(status, now)}"
        f"{_embargoes(status, now)}"
        "<h2>Recent errors</h2>"
        + (f'<ul class="errors">{"".join(errors)}</ul>' if errors else '<p class="muted">none</p>')
        + f"<h2>Events</h2>{_events(status)}"
        f"<h2>Locate cache</h2>{_locate(status)}"
        f"{_hosts(status, now)}"
        "</body></html>\n"
    )
    return page.encode("utf-8")

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

from typing import Any

from fedd.web import statusformat as fmt
from fedd.web.statusdowntimes import downtimes_section, embargoes_section, gocdb_section
from fedd.web.statusformat import DASH, as_dict, duration, number, size, state_of, text, wants_html
from fedd.web.statusreplication import replication_section

REFRESH_SECONDS = 10
__all__ = ["render_status_page", "state_of", "wants_html"]

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


def _space_cell(space: Any, now: float | None) -> tuple[str, str, str, str]:
    """(free, used, total, measured) cells for one endpoint's space entry."""
    entry = as_dict(space)
    if not entry:
        return DASH, DASH, DASH, '<span class="muted">not reported</span>'
    age = number(entry.get("age"))
    measured = entry.get("measured")
    never = age is None and number(measured) is None
    stale = bool(entry.get("stale")) and not never  # nothing measured yet: no figures to call stale
    cls = ' class="stale"' if stale else ""
    free, used, total = (f"<span{cls}>{size(entry.get(k))}</span>" for k in ("free", "used", "total"))
    if age is not None:
        when = f"{duration(age)} ago"
    elif not never:
        when = fmt.when(measured, now)
    else:
        when = '<span class="muted">not measured yet</span>'
    notes = [when]
    if stale:
        notes.append('<span class="stale">stale</span>')
    reserved = number(entry.get("reserved"))
    if reserved:
        notes.append(f"{size(reserved)} reserved")
    if entry.get("source"):
        notes.append(f'<span class="muted">{text(entry.get("source"))}</span>')
    if entry.get("error"):
        notes.append(f'<span class="err">{text(entry.get("error"))}</span>')
    return free, used, total, "<br>".join(notes)


def _endpoint_rows(status: dict[str, Any], now: float | None) -> list[str]:
    spaces = as_dict(status.get("space"))
    listed = status.get("downtimes")
    downtimes: list[Any] = listed if isinstance(listed, list) else []
    rows = []
    for eid, info in sorted(as_dict(status.get("endpoints")).items()):
        info = as_dict(info)
        health = as_dict(info.get("health"))
        cls, label = state_of(health)
        active = [as_dict(d) for d in downtimes if as_dict(d).get("endpoint") == eid and as_dict(d).get("active")]
        if active:
            label += "".join(f"<br>downtime ({text(d.get('scope'))})" for d in active)
        latency = number(health.get("latency_ms"))
        free, used, total, measured = _space_cell(spaces.get(eid), now)
        error = health.get("last_error")
        error_cell = (
            f'<span class="err">{text(error)}</span><br>{fmt.when(health.get("last_error_at"), now)}' if error else DASH
        )
        rows.append(
            "<tr>"
            f'<td class="id">{text(eid)}</td><td>{text(info.get("kind"))}</td><td>{text(info.get("url"))}</td>'
            f'<td class="state {cls}" data-endpoint="{text(eid)}">{label}</td>'
            f'<td class="num">{DASH if latency is None else f"{latency:.1f} ms"}</td>'
            f'<td class="num">{free}</td><td class="num">{used}</td><td class="num">{total}</td>'
            f"<td>{measured}</td><td>{fmt.when(health.get('last_check'), now)}</td><td>{error_cell}</td>"
            "</tr>"
        )
    return rows


def _recent_errors(status: dict[str, Any], now: float | None) -> list[str]:
    """Last errors known to the status, newest first: endpoint health, space reports, the events sink."""
    found: list[tuple[float, str, str]] = []
    for eid, info in as_dict(status.get("endpoints")).items():
        health = as_dict(as_dict(info).get("health"))
        if health.get("last_error"):
            at = number(health.get("last_error_at"))
            found.append((at or 0.0, f"endpoint {eid}", str(health["last_error"])))
    for eid, entry in as_dict(status.get("space")).items():
        entry = as_dict(entry)
        if entry.get("error"):
            at = number(entry.get("error_at")) or number(entry.get("measured"))
            found.append((at or 0.0, f"space of {eid}", str(entry["error"])))
    for src in as_dict(status.get("gocdb")).get("sources") or []:
        src = as_dict(src)
        if src.get("last_error"):
            found.append((number(src.get("last_error_at")) or 0.0, f"GOCDB {src.get('url')}", str(src["last_error"])))
    events = as_dict(status.get("events"))
    if events.get("last_error"):
        found.append((0.0, "events", str(events["last_error"])))
    found.sort(key=lambda item: item[0], reverse=True)
    return [
        f'<li>{fmt.when(at, now) if at else ""} <b>{text(source)}</b>: <span class="err">{text(message)}</span></li>'
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
            ("sink", text(events.get("sink"))),
            ("connected", link if connected is not None else DASH),
            ("outbox depth", text(events.get("outbox_depth"))),
            ("pending", text(events.get("pending"))),
            ("emitted", text(events.get("emitted"))),
            ("sent", text(events.get("sent"))),
            ("failed publishes", text(events.get("failed_publishes"))),
            ("dropped", text(events.get("dropped"))),
            ("last error", f'<span class="err">{text(events.get("last_error"))}</span>'),
        ]
    )


def _locate(status: dict[str, Any]) -> str:
    locate = as_dict(status.get("locate"))
    hits, misses = number(locate.get("local_hits")), number(locate.get("local_misses"))
    ratio = (
        f"{100.0 * hits / (hits + misses):.1f} %" if hits is not None and misses is not None and hits + misses else DASH
    )
    rows = [
        ("cache entries", text(locate.get("local_entries"))),
        ("cache hits", text(locate.get("local_hits"))),
        ("cache misses", text(locate.get("local_misses"))),
        ("hit ratio", ratio),
        ("fan-outs to endpoints", text(locate.get("fanouts"))),
        ("locates in flight", text(locate.get("inflight"))),
    ]
    memcached = locate.get("memcached")
    if isinstance(memcached, dict):
        servers = ", ".join(f"{text(k)} {text(v)}" for k, v in sorted(as_dict(memcached.get("servers")).items()))
        rows += [
            ("memcached servers", servers or DASH),
            ("memcached hits", text(memcached.get("hits"))),
            ("memcached misses", text(memcached.get("misses"))),
            ("memcached errors", text(memcached.get("errors"))),
        ]
    return _pairs(rows)


def _hosts(status: dict[str, Any], now: float | None) -> str:
    """What this host shares with others (state database, memcached) and the hosts it sees there."""
    shared = as_dict(as_dict(status.get("fedd")).get("shared"))
    state = as_dict(status.get("state"))
    memcached = ", ".join(text(m) for m in shared.get("memcached") or []) or DASH
    rows = [("state database", text(shared.get("database")) if shared.get("database") else "none (per host)")]
    if state:
        if state.get("reachable"):
            reach = '<span class="ok">reachable</span>'
        else:
            reach = f'<span class="bad">unreachable</span> since {fmt.when(state.get("unreachable_since"), now)}'
        rows += [
            ("database state", reach),
            ("queued writes", text(state.get("queued"))),
            ("dropped writes", text(state.get("dropped"))),
            ("last error", f'<span class="err">{text(state.get("error"))}</span>'),
        ]
    rows.append(("memcached servers", memcached))
    hosts = [as_dict(h) for h in state.get("hosts") or []]
    table = ""
    if hosts:
        table = (
            "<table><tr><th>host</th><th>version</th><th>listens on</th><th>started</th><th>last seen</th></tr>"
            + "".join(
                f"<tr><td>{text(h.get('host'))}{' (this one)' if h.get('self') else ''}</td>"
                f"<td>{text(h.get('version'))}</td><td>{text(h.get('listen'))}</td>"
                f"<td>{fmt.when(h.get('started'), now)}</td><td>{fmt.when(h.get('seen'), now)}</td></tr>"
                for h in hosts
            )
            + "</table>"
        )
    return "<h2>Hosts and shared state</h2>" + _pairs(rows) + table


def _workers(status: dict[str, Any], now: float | None) -> str:
    """`[server] workers`: the worker that answered this page, and all of them."""
    workers = as_dict(status.get("workers"))
    if not workers:
        return ""
    answered = as_dict(workers.get("answered_by"))
    rows = "".join(
        f"<tr><td>{text(w.get('index'))}{' (this page)' if w.get('pid') == answered.get('pid') else ''}</td>"
        f"<td>{text(w.get('pid'))}</td><td>{fmt.when(w.get('started'), now)}</td>"
        f"<td>{text(w.get('restarts'))}</td></tr>"
        for w in (as_dict(w) for w in workers.get("workers") or [])
    )
    counters = as_dict(workers.get("counters_file"))
    outage = (
        f'<p class="bad">worker {text(answered.get("index"))} cannot write its counters file since'
        f" {fmt.when(counters.get('unwritten_since'), now)}: {text(counters.get('error'))}; a count summed"
        " over the workers may go back from one read to the next</p>"
        if counters.get("written") is False
        else ""
    )
    return (
        f"<h2>Workers ({text(workers.get('count'))})</h2>"
        f'<p class="meta">this page from worker {text(answered.get("index"))}; the counts above are those of'
        " every worker added up (each writes its own every second)</p>"
        + outage
        + "<table><tr><th>worker</th><th>pid</th><th>started</th><th>restarts</th></tr>"
        + rows
        + "</table>"
    )


def _uploads(status: dict[str, Any]) -> str:
    """`[confirm]`: uploads waiting to be confirmed, and how the others ended."""
    confirm = as_dict(status.get("confirm"))
    if not confirm:
        return ""
    rows = [
        (name, text(confirm.get(key)))
        for name, key in (
            ("pending", "pending"),
            ("done", "done"),
            ("failed", "failed"),
            ("not tracked (table full)", "untracked"),
            ("taken over after a restart", "taken_over"),
            ("notifications", "notifications"),
        )
    ]
    if confirm.get("taking_over"):  # the previous run's uploads, still being handed over
        rows.append(("still being taken over", text(confirm.get("taking_over"))))
    for name, key in (
        ("redirected before kept on disk", "pending_file_unkept"),
        ("pending file write errors", "pending_file_errors"),
    ):
        if confirm.get(key):  # [confirm] pending_file in trouble: shown when it is
            rows.append((name, f'<span class="bad">{text(confirm.get(key))}</span>'))
    rgw = as_dict(confirm.get("rgw_notifications"))
    if rgw:
        up = '<span class="ok">yes</span>' if rgw.get("connected") else '<span class="bad">no</span>'
        rows.append(("RGW notifications connected", up))
    failures = [as_dict(e) for e in confirm.get("recent") or [] if as_dict(e).get("event") == "put-failed"]
    rows += [(text(e.get("path")), f'<span class="err">{text(e.get("reason"))}</span>') for e in failures[-5:]]
    return f"<h2>Uploads</h2>{_pairs(rows)}"


def render_status_page(status: dict[str, Any]) -> bytes:
    """A complete HTML page (UTF-8) showing `status`, the dict behind the status JSON."""
    fedd = as_dict(status.get("fedd"))
    now = number(fedd.get("now"))
    started = number(fedd.get("started"))
    uptime = duration(now - started) if now is not None and started is not None else DASH
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
        f'<p class="meta">host {text(fedd.get("host"))} · version {text(fedd.get("version"))} · up {uptime} · '
        f"as of {fmt.when(now, None)} · reloads every {REFRESH_SECONDS} s</p>"
        f"<h2>Endpoints</h2>{endpoints}"
        f"{downtimes_section(status, now)}"
        f"{gocdb_section(status, now)}"
        f"{embargoes_section(status, now)}"
        "<h2>Recent errors</h2>"
        + (f'<ul class="errors">{"".join(errors)}</ul>' if errors else '<p class="muted">none</p>')
        + f"<h2>Events</h2>{_events(status)}"
        f"{_uploads(status)}"
        f"{replication_section(status)}"
        f"<h2>Locate cache</h2>{_locate(status)}"
        f"{_hosts(status, now)}"
        f"{_workers(status, now)}"
        "</body></html>\n"
    )
    return page.encode("utf-8")

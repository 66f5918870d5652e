"""The parts of the HTML status page about planned unavailability: the downtimes in force or
scheduled (from the configuration, an admin or GOCDB), the GOCDB sources as last read, and the
time-bounded access rules (embargoes)."""

from __future__ import annotations

from typing import Any

from fedd.web import statusformat as fmt
from fedd.web.statusformat import DASH, as_dict, text


def downtimes_section(status: dict[str, Any], now: float | None) -> str:
    downtimes = status.get("downtimes")
    if not isinstance(downtimes, list):
        return ""
    if not downtimes:
        return '<h2>Downtimes</h2><p class="muted">none scheduled</p>'
    rows = [
        f"<tr><td>{text(d.get('endpoint'))}</td><td>{_scope(d.get('scope'))}</td>"
        f"<td>{fmt.when(d.get('start'), now)}</td><td>{fmt.when(d.get('end'), now)}</td>"
        f"<td>{'active' if d.get('active') else 'scheduled'}</td><td>{_source(d)}</td>"
        f"<td>{text(d.get('reason'))}</td></tr>"
        for d in (as_dict(x) for x in downtimes)
    ]
    return (
        "<h2>Downtimes</h2><table><tr><th>endpoint</th><th>scope</th><th>start</th><th>end</th>"
        "<th>state</th><th>source</th><th>reason</th></tr>" + "".join(rows) + "</table>"
    )


def _scope(scope: Any) -> str:
    """A downtime's scope; `none` (a GOCDB WARNING by default) is listed but blocks nothing."""
    return '<span class="muted">none (shown only)</span>' if scope == "none" else text(scope)


def _source(downtime: dict[str, Any]) -> str:
    """Where a downtime comes from (config, admin, gocdb), linked to the source's page when known."""
    origin, link = text(downtime.get("origin")), downtime.get("link")
    if isinstance(link, str) and link.startswith(("https://", "http://")):
        return f'<a href="{text(link)}" rel="noreferrer">{origin}</a>'
    return origin


def gocdb_section(status: dict[str, Any], now: float | None) -> str:
    """GOCDB sources: when each was last read, how many downtimes it gave, its last error."""
    gocdb = as_dict(status.get("gocdb"))
    sources = gocdb.get("sources")
    if not isinstance(sources, list) or not sources:
        return ""
    rows = []
    for src in (as_dict(x) for x in sources):
        unmatched = src.get("unmatched_hosts")
        hosts = ", ".join(text(h) for h in unmatched) if isinstance(unmatched, list) and unmatched else DASH
        error = src.get("last_error")
        rows.append(
            f"<tr><td>{text(src.get('url'))}</td><td>{fmt.when(src.get('fetched_at'), now)}</td>"
            f'<td class="num">{text(src.get("downtimes"))}</td><td class="num">{text(src.get("pages"))}</td>'
            f"<td>{hosts}</td>"
            + (
                f'<td><span class="err">{text(error)}</span><br>{fmt.when(src.get("last_error_at"), now)}</td>'
                if error
                else f"<td>{DASH}</td>"
            )
            + "</tr>"
        )
    return (
        f'<h2>GOCDB</h2><p class="meta">{text(gocdb.get("applied"))} downtime(s) on fedd endpoints · '
        f"OUTAGE → {text(gocdb.get('outage'))}, WARNING → {text(gocdb.get('warning'))} · "
        f"next read {fmt.when(gocdb.get('next_refresh'), now)}</p>"
        "<table><tr><th>source</th><th>last read</th><th>downtimes</th><th>pages</th>"
        "<th>hosts on no endpoint</th><th>last error</th></tr>" + "".join(rows) + "</table>"
    )


def embargoes_section(status: dict[str, Any], now: float | None) -> str:
    """Time-bounded access rules in force: those yet to start and those granting until a time."""
    auth = as_dict(status.get("auth"))
    embargoes = auth.get("embargoes")
    if not isinstance(embargoes, list):
        return ""
    head = f'<h2>Access embargoes</h2><p class="meta">next change {fmt.when(auth.get("next_change"), now)}</p>'
    if not embargoes:
        return head + '<p class="muted">no time-bounded rules in force</p>'
    rows = [
        f"<tr><td>{text(e.get('prefix'))}</td><td>{text(e.get('principal'))}</td><td>{text(e.get('letters'))}</td>"
        f"<td>{fmt.when(e.get('from'), now)}</td><td>{fmt.when(e.get('until'), now)}</td>"
        f"<td>{'starts' if e.get('state') == 'pending' else 'ends'}</td><td>{text(e.get('rule'))}</td></tr>"
        for e in (as_dict(x) for x in embargoes)
    ]
    return (
        head + "<table><tr><th>prefix</th><th>principal</th><th>letters</th><th>from</th><th>until</th>"
        "<th>next</th><th>rule</th></tr>" + "".join(rows) + "</table>"
    )

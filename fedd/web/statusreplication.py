"""The replication part of the HTML status page (the `replication` section of the status JSON):
copies running and done, bytes of copies per endpoint, the hour's budget left, the hot files and
the decision taken for each (every one in dry_run)."""

from __future__ import annotations

from typing import Any

from fedd.web.statusformat import as_dict, size, text


def replication_section(status: dict[str, Any]) -> str:
    rep = status.get("replication")
    if not isinstance(rep, dict):
        return ""
    mode = "dry run: decisions only" if rep.get("dry_run") else "copying"
    head = (
        f"<p>{mode} · {len(rep.get('running') or [])} running · {text(rep.get('copied'))} copied · "
        f"{text(rep.get('failed'))} failed · {text(rep.get('evicted'))} evicted · budget left "
        f"{size(rep.get('budget_left'))} of {size(rep.get('budget_per_hour'))} this hour</p>"
    )
    used = as_dict(rep.get("bytes_per_endpoint"))
    per_endpoint = "".join(f"<tr><td>{text(eid)}</td><td>{size(n)}</td></tr>" for eid, n in sorted(used.items()))
    decisions = [as_dict(d) for d in rep.get("decisions") or []]
    rows = "".join(
        f"<tr><td>{text(d.get('path'))}</td><td>{text(d.get('region'))}</td><td>{text(d.get('reads'))}</td>"
        f"<td>{text(d.get('action'))}</td><td>{text(d.get('target'))}</td><td>{text(d.get('reason'))}</td></tr>"
        for d in decisions[:50]
    )
    return (
        "<h2>Replication</h2>"
        + head
        + (f"<table><tr><th>endpoint</th><th>bytes of copies</th></tr>{per_endpoint}</table>" if per_endpoint else "")
        + (
            "<table><tr><th>hot file</th><th>region</th><th>reads</th><th>action</th><th>target</th>"
            f"<th>why</th></tr>{rows}</table>"
            if rows
            else '<p class="muted">no hot file</p>'
        )
    )

"""The report as one self-contained HTML page: inline CSS and hand-drawn SVG, no scripts.

Support staff open it from a file or an e-mail attachment, often offline: nothing may load
from the network, so there is no CDN, no web font and no JavaScript chart library. The
per-write detail of a problem group unfolds with `<details>`, which needs no script. Every
value goes through `html.escape`: a name or a HighLevel message is shown, never run.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

import pandas as pd

from mailsync.report.columns import STATUSES
from mailsync.report.markdown import TIME_FORMAT
from mailsync.report.model import Report, describe_filters

# Bar colours by funnel stage; tests look for the journey colour in a screenshot.
STAGE_COLOURS = {"journey": "#2b6cb0", "exception": "#dd6b20", "response": "#2f855a"}
STAGE_TITLES = {"journey": "Reached at least", "exception": "Exceptions",
                "response": "Responses"}
STATUS_COLOURS = {"done": "#2f855a", "rejected": "#c53030", "failed": "#b7791f",
                  "unknown": "#6b46c1", "pending": "#4a5568", "problems": "#c53030",
                  "problem_recipients": "#9b2c2c", "quarantined": "#975a16",
                  "unstored": "#9c4221", "planned": "#2b6cb0"}
TILE_LABELS = {"problems": "problem writes", "problem_recipients": "recipients to fix"}
RUNS_SHOWN = 20
"""Runs listed (newest first); the JSON has all of them."""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;
color:#1a202c;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted,.id{color:#4a5568}.id{font-size:11px}.tiles{display:flex;flex-wrap:wrap;gap:10px;
margin:14px 0}.tile{border-radius:6px;padding:8px 14px;color:#fff;min-width:92px}
.tile b{display:block;font-size:22px}.charts{display:flex;flex-wrap:wrap;gap:18px}
.chart{border:1px solid #e2e8f0;border-radius:6px;padding:10px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #e2e8f0;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f7fafc}td.n{text-align:right}td.w{min-width:160px}.kind{font-weight:600}
.ok{color:#2f855a;font-weight:600}ol.first{background:#fffaf0;border:1px solid #fbd38d;
border-radius:6px;padding:10px 10px 10px 34px}ol.first li{margin:4px 0}
details summary{cursor:pointer;color:#2b6cb0}details table{margin-top:4px}
.t{white-space:nowrap}tr.detail td{border-top:none;background:#fcfcfd}
"""


def _cell(value: Any) -> str:
    if value is None or (not isinstance(value, str | list | tuple) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp):
        return f'<span class="t">{value.strftime(TIME_FORMAT)}</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))


def _named(name: Any, ident: Any) -> str:
    """A name with its id below it, small (just the id when there is no name)."""
    name, ident = _cell(name), _cell(ident)
    if not name or name == ident:
        return ident
    return f'{name}<br><span class="id">{ident}</span>'


def _head(columns: list[str], labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    return "<thead><tr>" + "".join(
        f"<th>{escape(labels.get(c, c.replace('_', ' ')))}</th>" for c in columns
    ) + "</tr></thead>"


def _rows(df: pd.DataFrame, columns: list[str], numeric: Iterable[str] = (),
          wide: Iterable[str] = (), extra: dict[str, Any] | None = None) -> list[str]:
    """One `<tr>` per row; a column named in `extra` is made by its function of the row, as
    raw HTML (cells that escape their own parts: names with their ids)."""
    numeric, wide, extra = set(numeric), set(wide), extra or {}

    def cls(c: str) -> str:
        return ' class="n"' if c in numeric else ' class="w"' if c in wide else ""

    def cell(c: str, rec: dict[str, Any]) -> str:
        return extra[c](rec) if c in extra else _cell(rec[c])

    return ["<tr>" + "".join(f"<td{cls(c)}>{cell(c, rec)}</td>" for c in columns) + "</tr>"
            for rec in df.to_dict("records")]


def _table(df: pd.DataFrame, columns: list[str], numeric: Iterable[str] = (),
           wide: Iterable[str] = (), labels: dict[str, str] | None = None,
           extra: dict[str, Any] | None = None) -> str:
    """A table of `columns` (see `_rows` for `extra`)."""
    body = "".join(_rows(df, columns, numeric, wide, extra))
    return f"<table>{_head(columns, labels)}<tbody>{body}</tbody></table>"


def funnel_svg(rows: pd.DataFrame, title: str, width: int = 560) -> str:
    """A horizontal bar chart of one campaign's funnel rows (share of pieces per code), the
    journey ("reached at least", cumulative) apart from exceptions and responses."""
    bar_h, gap, label_w, head_h = 20, 6, 170, 22
    plot_w = width - label_w - 90
    stages = [s for s in STAGE_TITLES if (rows["stage"] == s).any()]
    height = 30 + len(stages) * head_h + len(rows) * (bar_h + gap) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="0" y="18" font-size="14" font-weight="600" fill="#1a202c">'
             f'{escape(title)}</text>']
    y = 30
    for stage in stages:
        parts.append(f'<text x="0" y="{y + 15}" font-size="12" font-weight="600" '
                     f'fill="{STAGE_COLOURS[stage]}">{STAGE_TITLES[stage]}</text>')
        y += head_h
        for rec in rows[rows["stage"] == stage].to_dict("records"):
            parts += _bar(rec, y, label_w, plot_w, bar_h)
            y += bar_h + gap
    parts.append("</svg>")
    return "".join(parts)


def _bar(rec: dict[str, Any], y: int, label_w: int, plot_w: int, bar_h: int) -> list[str]:
    w = max(1.0, plot_w * float(rec["share"])) if rec["recipients"] else 0.0
    colour = STAGE_COLOURS.get(rec["stage"], "#718096")
    label = escape(str(rec["label"]))
    out = [f'<text x="{label_w - 8}" y="{y + 14}" font-size="12" text-anchor="end" '
           f'fill="#2d3748">{label}</text>',
           f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" fill="#edf2f7"/>']
    if w:
        out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                   f'fill="{colour}"><title>{label}: {rec["recipients"]} of {rec["pieces"]}'
                   f'</title></rect>')
    out.append(f'<text x="{label_w + plot_w + 6}" y="{y + 14}" font-size="12" '
               f'fill="#2d3748">{rec["recipients"]} ({float(rec["share"]):.0%})</text>')
    return out


def _tiles(report: Report) -> str:
    totals = report.totals()
    names = ["planned", *STATUSES, "problems", "problem_recipients", "quarantined", "unstored"]
    return '<div class="tiles">' + "".join(
        f'<div class="tile" style="background:{STATUS_COLOURS[n]}"><b>{totals[n]}</b>'
        f"{escape(TILE_LABELS.get(n, n))}</div>" for n in names) + "</div>"


def _charts(report: Report) -> str:
    if report.funnel.empty:
        return '<p class="muted">No mail events stored yet.</p>'
    charts = []
    for drop, rows in report.funnel.groupby("drop_id", sort=True):
        pieces = int(rows["pieces"].iloc[0])
        title = f"{rows['campaign'].iloc[0]} ({drop}): {pieces} piece{'s' if pieces != 1 else ''}"
        charts.append(f'<div class="chart">{funnel_svg(rows, title)}</div>')
    legend = " ".join(f'<span style="color:{STAGE_COLOURS[s]}">&#9632;</span> {escape(t)}'
                      for s, t in STAGE_TITLES.items())
    return (f'<p class="muted">{legend}. Share of pieces; a piece counts at every step up to '
            "the furthest one it was scanned at, even when a scan in between never came."
            '</p><div class="charts">' + "".join(charts) + "</div>")


def _first_steps(report: Report) -> str:
    steps = report.first_steps()
    if steps.empty:
        return ""
    items = "".join(
        f"<li><b>{_cell(s['action'])}</b> in {_cell(s['location'])} "
        f'<span class="muted">({_cell(s["campaigns"])}): {s["recipients"]} recipient(s), '
        f"unblocks {s['writes']} write(s)</span></li>" for s in steps.to_dict("records"))
    return f'<h2>Do this first</h2><ol class="first">{items}</ol>'


_GROUP_COLUMNS = ["group", "problem", "campaign / location", "recipient", "email", "codes",
                  "writes", "since", "reason", "action"]
_WRITE_COLUMNS = ["code", "kind", "status", "attempts", "last_http_status", "planned_at",
                  "last_attempt_at", "contact_id", "reason", "ledger_id"]


def _group_rows(report: Report) -> str:
    """Each group's row, then a row under it whose `<details>` unfolds the group's writes."""
    by_group = {int(g): df for g, df in report.problems.groupby("group")}
    extra = {"campaign / location": lambda r: _named(r["campaign"], r["drop_id"]) + "<br>"
             + _named(r["location"], r["location_id"])}
    rows = _rows(report.problem_groups, _GROUP_COLUMNS, {"group", "writes"},
                 {"reason", "action"}, extra)
    body = []
    for row, group in zip(rows, report.problem_groups["group"], strict=True):
        body.append(row)
        writes = by_group.get(int(group))
        if writes is not None:
            detail = _table(writes, _WRITE_COLUMNS, {"attempts", "last_http_status"},
                            {"reason"})
            body.append(f'<tr class="detail"><td></td><td colspan="{len(_GROUP_COLUMNS) - 1}">'
                        f"<details><summary>the {len(writes)} write(s) of #{int(group)}"
                        f"</summary>{detail}</details></td></tr>")
    head = _head(_GROUP_COLUMNS, {"group": "#", "codes": "codes affected",
                                  "action": "what to do"})
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _problems(report: Report) -> str:
    if report.problem_groups.empty:
        return ('<h2>Problems by recipient</h2><p class="ok">No problem writes: everything '
                "planned was written.</p>")
    return (f"<h2>Problems by recipient ({len(report.problem_groups)})</h2>"
            '<p class="muted">One row per recipient and cause, the fix that unblocks most '
            "first; unfold a row's writes under it.</p>" + _group_rows(report))


def _summary(report: Report) -> str:
    configured, apart = report.configured_summary()
    counts = ["events_seen", "events_new", "quarantined", "planned", *STATUSES, "problems"]
    extra = {"campaign": lambda r: _named(r["campaign"], r["drop_id"]),
             "location": lambda r: _named(r["location"], r["location_id"])}

    def table(df: pd.DataFrame) -> str:
        return _table(df, ["campaign", "location", *counts], counts,
                      labels={"events_seen": "events seen (distinct)",
                              "events_new": "new events"}, extra=extra)

    out = "<h2>Per campaign and location</h2>" + (
        table(configured) if not configured.empty else
        '<p class="muted">Nothing in this window.</p>')
    if not apart.empty:
        out += ("<h2>Campaigns no longer configured</h2><p class=\"muted\">Still in the store "
                "from an earlier configuration (e.g. a drop id entered by mistake); not "
                "synced any more, and not counted under any configured campaign.</p>"
                + table(apart))
    return out


def _runs(report: Report) -> str:
    if report.runs.empty:
        return ""
    cols = ["started_at", "kind", "status", "events_read", "events_new", "quarantined",
            "planned", *STATUSES, "errors", "run_id"]
    return ("<h2>Runs</h2><p class=\"muted\">Events read counts every event a run read, "
            "re-reads included; new events are those it stored for the first time.</p>"
            + _table(report.runs.head(RUNS_SHOWN), cols,
                     {"events_read", "events_new", "quarantined", "planned", *STATUSES,
                      "errors"}))


def _quarantined(report: Report) -> str:
    if report.quarantined.empty:
        return '<p class="muted">None.</p>'
    return ('<p class="muted">Events Postalytics sent that could not be written. Names and '
            "addresses are not shown.</p>"
            + _table(report.quarantined, ["campaign", "first_seen", "problem", "reason",
                                          "action", "event", "event_id", "event_date",
                                          "recipient", "email"], wide={"reason", "action"},
                     labels={"action": "what to do"}))


def render_html(report: Report) -> str:
    """The whole report as one HTML document (UTF-8, no external resources)."""
    unstored = (_table(report.unstored, ["campaign", "drop_id", "code", "event_at",
                                         "recipient", "email", "event_key"])
                if not report.unstored.empty else
                '<p class="muted">None found (or not checked: `mailsync report '
                "--check-postalytics`).</p>")
    zone = escape(report.names.zone_name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>mailsync reconciliation report</title><style>{CSS}</style></head>
<body>
<h1>mailsync reconciliation report</h1>
<p class="muted">Generated {report.generated_at.strftime(TIME_FORMAT)} for
{escape(describe_filters(report.filters, report.names))}. Times are in {zone}.</p>
{_tiles(report)}
{_first_steps(report)}
{_problems(report)}
{_summary(report)}
<h2>How far the pieces got</h2>
{_charts(report)}
{_runs(report)}
<h2>Quarantined events</h2>
{_quarantined(report)}
<h2>Events at Postalytics that never reached the store</h2>
{unstored}
</body></html>
"""

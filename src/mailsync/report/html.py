"""The report as one self-contained HTML page: inline CSS and hand-drawn SVG, no scripts.

Support staff open it from a file or an e-mail attachment, often offline: nothing may load
from the network, so there is no CDN, no web font and no JavaScript chart library.
"""

from __future__ import annotations

from html import escape
from typing import Any

import pandas as pd

from mailsync.report.columns import STATUSES
from mailsync.report.model import Report, describe_filters

# Bar colours by funnel stage; tests look for the journey colour in a screenshot.
STAGE_COLOURS = {"journey": "#2b6cb0", "exception": "#dd6b20", "response": "#2f855a"}
STATUS_COLOURS = {"done": "#2f855a", "rejected": "#c53030", "failed": "#b7791f",
                  "unknown": "#6b46c1", "pending": "#4a5568", "problems": "#c53030",
                  "quarantined": "#975a16", "unstored": "#9c4221", "planned": "#2b6cb0"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;
color:#1a202c;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#4a5568}.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.tile{border-radius:6px;padding:8px 14px;color:#fff;min-width:92px}
.tile b{display:block;font-size:22px}.charts{display:flex;flex-wrap:wrap;gap:18px}
.chart{border:1px solid #e2e8f0;border-radius:6px;padding:10px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #e2e8f0;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f7fafc}td.n{text-align:right}td.w{min-width:150px}.kind{font-weight:600}
.ok{color:#2f855a;font-weight:600}
"""


def _cell(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M")
    return escape(str(value))


def _table(df: pd.DataFrame, columns: list[str], numeric: set[str] | None = None,
           wide: set[str] | None = None) -> str:
    numeric, wide = numeric or set(), wide or set()

    def cls(c: str) -> str:
        return ' class="n"' if c in numeric else ' class="w"' if c in wide else ""

    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in columns)
    body = []
    for rec in df[columns].to_dict("records"):
        cells = "".join(f"<td{cls(c)}>{_cell(rec[c])}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def funnel_svg(rows: pd.DataFrame, title: str, width: int = 560) -> str:
    """A horizontal bar chart of one campaign's funnel rows (share of pieces per code)."""
    bar_h, gap, label_w, top = 20, 6, 170, 30
    plot_w = width - label_w - 90
    height = top + len(rows) * (bar_h + gap) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="0" y="18" font-size="14" font-weight="600" fill="#1a202c">'
             f'{escape(title)}</text>']
    for i, rec in enumerate(rows.to_dict("records")):
        y = top + i * (bar_h + gap)
        w = max(1.0, plot_w * float(rec["share"])) if rec["recipients"] else 0.0
        colour = STAGE_COLOURS.get(rec["stage"], "#718096")
        parts.append(f'<text x="{label_w - 8}" y="{y + 14}" font-size="12" text-anchor="end" '
                     f'fill="#2d3748">{escape(str(rec["label"]))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" '
                     f'fill="#edf2f7"/>')
        if w:
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                         f'fill="{colour}"><title>{escape(str(rec["label"]))}: '
                         f'{rec["recipients"]} of {rec["pieces"]}</title></rect>')
        parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + 14}" font-size="12" '
                     f'fill="#2d3748">{rec["recipients"]} ({float(rec["share"]):.0%})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tiles(report: Report) -> str:
    totals = report.totals()
    names = ["planned", *STATUSES, "problems", "quarantined", "unstored"]
    return '<div class="tiles">' + "".join(
        f'<div class="tile" style="background:{STATUS_COLOURS[n]}"><b>{totals[n]}</b>'
        f"{escape(n)}</div>" for n in names) + "</div>"


def _charts(report: Report) -> str:
    if report.funnel.empty:
        return '<p class="muted">No mail events stored yet.</p>'
    charts = []
    for drop, rows in report.funnel.groupby("drop_id", sort=True):
        name = rows["campaign"].iloc[0] or f"drop {drop}"
        pieces = int(rows["pieces"].iloc[0])
        title = f"{name} ({drop}): {pieces} piece{'s' if pieces != 1 else ''}"
        charts.append(f'<div class="chart">{funnel_svg(rows, title)}</div>')
    legend = " ".join(f'<span style="color:{c}">&#9632;</span> {escape(s)}'
                      for s, c in STAGE_COLOURS.items())
    return f'<p class="muted">{legend} (share of pieces)</p><div class="charts">' + "".join(
        charts) + "</div>"


def _problems(report: Report) -> str:
    if report.problems.empty:
        return '<p class="ok">No problem writes: everything planned was written.</p>'
    actions = report.problem_actions()
    kinds = "".join(f'<tr><td class="kind">{escape(k)}</td><td class="n">{n}</td>'
                    f"<td>{escape(actions[k])}</td></tr>"
                    for k, n in report.problem_counts().items())
    cols = ["campaign", "recipient", "email", "contact_id", "code", "kind",
            "status", "attempts", "last_http_status", "problem", "reason", "action",
            "first_attempt_at", "last_attempt_at"]
    return ("<table><thead><tr><th>problem</th><th>writes</th><th>what to do</th></tr>"
            f"</thead><tbody>{kinds}</tbody></table>"
            + _table(report.problems, cols, {"attempts", "last_http_status"},
                     {"reason", "action"}))


def render_html(report: Report) -> str:
    """The whole report as one HTML document (UTF-8, no external resources)."""
    summary_cols = list(report.summary.columns)
    numeric = set(summary_cols) - {"drop_id", "campaign", "location_id"}
    quarantined = (_table(report.quarantined, ["campaign", "drop_id", "reason", "first_seen",
                                               "payload"], wide={"payload"})
                   if not report.quarantined.empty else '<p class="muted">None.</p>')
    unstored = (_table(report.unstored, ["campaign", "drop_id", "code", "event_at",
                                         "recipient", "email", "event_key"])
                if not report.unstored.empty else
                '<p class="muted">None found (or not checked: `mailsync report '
                "--check-postalytics`).</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>mailsync reconciliation report</title><style>{CSS}</style></head>
<body>
<h1>mailsync reconciliation report</h1>
<p class="muted">Generated {report.generated_at:%Y-%m-%d %H:%M} UTC for
{escape(describe_filters(report.filters))}.</p>
{_tiles(report)}
<h2>Per campaign and location</h2>
{_table(report.summary, summary_cols, numeric) if not report.summary.empty else
 '<p class="muted">Nothing in this window.</p>'}
<h2>How far the pieces got</h2>
{_charts(report)}
<h2>Writes that need attention</h2>
{_problems(report)}
<h2>Quarantined events</h2>
{quarantined}
<h2>Events at Postalytics that never reached the store</h2>
{unstored}
</body></html>
"""

"""The report as files and text: JSON, CSV, the markdown summary (Prefect artifact), and the
writing of `problems.csv`, `problem_writes.csv`, `quarantined.csv`, `report.json` and
`report.html`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailsync.report.frames import jsonable, records
from mailsync.report.html import render_html
from mailsync.report.markdown import TIME_FORMAT, frame_table
from mailsync.report.model import Report, describe_filters
from mailsync.report.safe import csv_frame, md_text
from mailsync.report.webhooks import webhooks_markdown

FILE_FORMATS = ("csv", "json", "html")
MARKDOWN_GROUPS = 50
"""Problem groups in the markdown summary; the table artifact and the files hold all."""

STEP_LABELS = {"step": "#", "action": "what to do", "location": "where",
               "recipients": "recipients", "writes": "writes it unblocks",
               "campaigns": "campaigns"}
STEP_SHOWN = ["step", "action", "location", "campaigns", "recipients", "writes"]
SUMMARY_LABELS = {"drop_id": "drop id", "location_id": "location id",
                  "events_seen": "events seen", "events_new": "new events"}
SUMMARY_SHOWN = ["campaign", "drop_id", "location", "events_seen", "events_new", "quarantined",
                 "planned", "done", "rejected", "failed", "unknown", "pending", "problems"]
GROUP_LABELS = {"group": "#", "codes": "codes affected", "since": "since",
                "action": "what to do", "writes": "writes"}
GROUP_SHOWN = ["group", "problem", "campaign", "location", "recipient", "email", "codes",
               "writes", "since", "reason", "action"]
NUMERIC = {"recipients", "writes", "events_seen", "events_new", "quarantined", "planned",
           "done", "rejected", "failed", "unknown", "pending", "problems", "step", "group"}


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready data (times ISO 8601 with the zone's offset)."""
    return {
        "generated_at": report.generated_at.isoformat(),
        "timezone": report.names.zone_name,
        "filters": {k: jsonable(v) for k, v in report.filters.items()},
        "totals": report.totals(),
        "problem_counts": report.problem_counts(),
        "do_first": records(report.first_steps(limit=len(report.steps))),
        "steps": records(report.steps),
        "summary": records(report.summary),
        "runs": records(report.runs),
        "problems": report.group_records(),
        "quarantined": records(report.quarantined),
        "unstored": records(report.unstored),
        "funnel": records(report.funnel),
        "webhooks": records(report.webhooks),
    }


def report_json(report: Report) -> str:
    """`report_dict` as indented JSON."""
    return json.dumps(report_dict(report), indent=2, default=str)


def headline(report: Report) -> str:
    """One sentence of totals, e.g. `653 writes planned: 510 done, 143 rejected, ...`."""
    t = report.totals()
    return (f"{t['planned']} writes planned: {t['done']} done, {t['rejected']} rejected, "
            f"{t['failed']} failed, {t['unknown']} unknown, {t['pending']} pending. "
            f"{t['problems']} problem writes for {t['problem_recipients']} recipients; "
            f"{t['events_seen']} events seen, {t['events_new']} new; {t['quarantined']} "
            f"quarantined; {t['unstored']} at Postalytics not stored.")


def problems_markdown(report: Report, limit: int = MARKDOWN_GROUPS) -> list[str]:
    """Markdown lines: what to do first, then the problems grouped by recipient."""
    steps = report.first_steps()
    lines: list[str] = []
    if not steps.empty:
        lines += ["", "## Do this first", ""]
        lines += frame_table(steps, STEP_SHOWN, labels=STEP_LABELS,
                             right={"step", "recipients", "writes"})
    if report.problem_groups.empty:
        return [*lines, "", "No problem writes: everything planned was written."]
    shown = report.problem_groups.head(limit)
    more = len(report.problem_groups) - len(shown)
    lines += ["", f"## Problems by recipient ({len(report.problem_groups)})", ""]
    lines += frame_table(shown, GROUP_SHOWN, labels=GROUP_LABELS, right={"group", "writes"})
    if more:
        lines += ["", f"... {more} more in the table artifact and in `problems.csv`."]
    return lines


def markdown_summary(report: Report, limit: int = MARKDOWN_GROUPS) -> str:
    """Markdown for a Prefect artifact: totals, what to do first, counts per campaign, and
    the problems grouped by recipient. Every value from outside is escaped."""
    window = describe_filters(report.filters, report.names) if report.filters else (
        "everything stored")
    configured, apart = report.configured_summary()
    lines = ["# mailsync reconciliation", "",
             f"Generated {report.generated_at.strftime(TIME_FORMAT)} "
             f"({md_text(report.names.zone_name)}) for {md_text(window)}.", "",
             md_text(headline(report))]
    lines += problems_markdown(report, limit)
    lines += ["", "## Per campaign and location", ""]
    lines += frame_table(configured, SUMMARY_SHOWN, labels=SUMMARY_LABELS, right=NUMERIC)
    if not apart.empty:
        lines += ["", "## Campaigns no longer configured", "",
                  "In the store from an earlier configuration; not synced any more.", ""]
        lines += frame_table(apart, SUMMARY_SHOWN, labels=SUMMARY_LABELS, right=NUMERIC)
    lines += webhooks_markdown(report.webhooks)
    return "\n".join(lines) + "\n"


def write_report_files(report: Report, out_dir: Path,
                       formats: Sequence[str] = FILE_FORMATS) -> list[Path]:
    """Write a built report: `problems.csv` (one row per recipient and problem),
    `problem_writes.csv` (one per write), `quarantined.csv`, `report.json`, `report.html`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if "csv" in formats:
        for name, df in (("problems.csv", report.problem_groups),
                         ("problem_writes.csv", report.problems),
                         ("quarantined.csv", report.quarantined)):
            csv_frame(df).to_csv(out_dir / name, index=False)
            paths.append(out_dir / name)
    if "json" in formats:
        (out_dir / "report.json").write_text(report_json(report), encoding="utf-8")
        paths.append(out_dir / "report.json")
    if "html" in formats:
        (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
        paths.append(out_dir / "report.html")
    return paths

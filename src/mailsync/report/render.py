"""The report as files and text: JSON, CSV, the markdown summary (Prefect artifact), and the
writing of `problems.csv`, `quarantined.csv`, `report.json` and `report.html`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mailsync.report.columns import SUMMARY_COLUMNS
from mailsync.report.frames import jsonable, records
from mailsync.report.html import render_html
from mailsync.report.markdown import frame_table, markdown_table
from mailsync.report.model import Report, describe_filters

FILE_FORMATS = ("csv", "json", "html")


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready data."""
    return {
        "generated_at": report.generated_at.isoformat(),
        "filters": {k: jsonable(v) for k, v in report.filters.items()},
        "totals": report.totals(),
        "problem_counts": report.problem_counts(),
        "summary": records(report.summary),
        "problems": report.problem_records(),
        "quarantined": records(report.quarantined),
        "unstored": records(report.unstored),
        "funnel": records(report.funnel),
    }


def report_json(report: Report) -> str:
    """`report_dict` as indented JSON."""
    return json.dumps(report_dict(report), indent=2, default=str)


def markdown_summary(report: Report) -> str:
    """Markdown for a Prefect artifact: totals, per-campaign counts, problems by kind."""
    t = report.totals()
    window = f" for {describe_filters(report.filters)}" if report.filters else ""
    lines = ["# mailsync reconciliation", "",
             f"Generated {report.generated_at:%Y-%m-%d %H:%M} UTC{window}.", "",
             f"**{t['planned']}** writes planned: {t['done']} done, {t['rejected']} "
             f"rejected, {t['failed']} failed, {t['unknown']} unknown, {t['pending']} "
             f"pending. **{t['problems']}** need attention; {t['quarantined']} events "
             f"quarantined; {t['unstored']} events at Postalytics not stored.", ""]
    lines += frame_table(report.summary, SUMMARY_COLUMNS)
    counts, actions = report.problem_counts(), report.problem_actions()
    if counts:
        lines.append("")
        lines += markdown_table(("problem", "writes", "what to do"),
                                [(k, n, actions[k]) for k, n in counts.items()],
                                right={"writes"})
    return "\n".join(lines) + "\n"


def _csv_ready(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].map(lambda v: v.isoformat() if not pd.isna(v) else "")
    return out


def write_report_files(report: Report, out_dir: Path,
                       formats: Sequence[str] = FILE_FORMATS) -> list[Path]:
    """Write a built report: `problems.csv` + `quarantined.csv`, `report.json`, `report.html`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if "csv" in formats:
        for name, df in (("problems.csv", report.problems),
                         ("quarantined.csv", report.quarantined)):
            _csv_ready(df).to_csv(out_dir / name, index=False)
            paths.append(out_dir / name)
    if "json" in formats:
        (out_dir / "report.json").write_text(report_json(report), encoding="utf-8")
        paths.append(out_dir / "report.json")
    if "html" in formats:
        (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
        paths.append(out_dir / "report.html")
    return paths

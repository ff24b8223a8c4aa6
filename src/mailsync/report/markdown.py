"""Markdown tables: the one helper the report and the Prefect artifacts both use.

Every cell is data, never markup: `safe.md_text` escapes whatever a name, an email, a label
or a HighLevel message could carry (a `|`, backticks, a link, an image, HTML).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from mailsync.report.safe import md_text

TIME_FORMAT = "%Y-%m-%d %H:%M"
"""How times are shown to people (the zone is named once, at the top)."""


def md_cell(value: Any) -> str:
    """A value as one table cell: empty for None/NaN, times to the minute, markup escaped,
    on one line."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, datetime):
        return value.strftime(TIME_FORMAT)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return md_text(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   right: Collection[str] = ()) -> list[str]:
    """A GitHub-flavoured markdown table's lines; columns named in `right` align right."""
    rule = "".join("---:|" if h in right else "---|" for h in header)
    out = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + rule]
    out += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return out


def frame_table(df: pd.DataFrame, columns: Sequence[str], *,
                empty: str = "(nothing in this window)",
                labels: Mapping[str, str] | None = None,
                right: Collection[str] = ()) -> list[str]:
    """`markdown_table` over a DataFrame's columns (headed by `labels`, else the column
    names), or one line saying it is empty."""
    if df.empty:
        return [empty]
    labels = labels or {}
    header = [labels.get(c, c) for c in columns]
    return markdown_table(header, df[list(columns)].itertuples(index=False),
                          right={labels.get(c, c) for c in right})

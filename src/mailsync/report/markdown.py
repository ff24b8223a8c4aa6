"""Markdown tables: the one helper the report and the Prefect artifacts both use."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pandas as pd


def md_cell(value: Any) -> str:
    """A value as one table cell: empty for None/NaN, pipes escaped, on one line."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   right: Collection[str] = ()) -> list[str]:
    """A GitHub-flavoured markdown table's lines; columns named in `right` align right."""
    rule = "".join("---:|" if h in right else "---|" for h in header)
    out = ["| " + " | ".join(header) + " |", "|" + rule]
    out += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return out


def frame_table(df: pd.DataFrame, columns: Sequence[str], *,
                empty: str = "(nothing in this window)") -> list[str]:
    """`markdown_table` over a DataFrame's columns, or one line saying it is empty."""
    if df.empty:
        return [empty]
    return markdown_table(columns, df[list(columns)].itertuples(index=False))

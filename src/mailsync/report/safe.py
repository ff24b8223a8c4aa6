"""Outside data is always data: text from Postalytics or HighLevel made safe for each format.

Names, emails, labels, URLs and HighLevel's error messages reach the report as they were
sent. Here, once per format: control characters are shown as escapes rather than acting on
a terminal or a spreadsheet; reasons are capped; markdown (Prefect artifacts) gets every
character that could make a link, an image, code, emphasis or HTML backslash-escaped; and
CSV cells that a spreadsheet would run as a formula get a leading `'` (OWASP's rule). HTML
escaping is `html.escape` in `mailsync.report.html`; JSON is `json.dumps`, data by nature.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

MAX_REASON = 300
"""Characters of a reason (HighLevel can echo a whole request body back)."""
MAX_TEXT = 200
"""Characters of any other outside text in a report cell (a name, a URL, a label)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SPACE = {"\n": " ", "\r": " ", "\t": " "}
# ASCII punctuation that makes markdown anywhere in a line (code, emphasis, links, images,
# HTML, entities, table cells); CommonMark shows a backslash-escaped one as itself. Those
# that act only at a line's start (headings, lists, rules) are escaped there alone.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>|~&!])")
_MD_LEADING = re.compile(r"^([#+\-=])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def visible(text: str) -> str:
    """Line breaks and tabs as spaces; other control and bidi-override characters as
    `\\uXXXX` text, so they are seen and never act (on a terminal, a page, a cell)."""
    return _CONTROL.sub(lambda m: _SPACE.get(m.group(0), f"\\u{ord(m.group(0)):04x}"), text)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """At most `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def outside(value: Any, limit: int = MAX_TEXT) -> str:
    """Outside text for a report cell: visible, capped; empty for None."""
    if value is None:
        return ""
    return clip(visible(str(value)), limit)


def md_text(value: Any) -> str:
    """A value as literal markdown text (one line): nothing in it is markup."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    text = _MD_SPECIAL.sub(r"\\\1", visible(str(value)).strip())
    return _MD_LEADING.sub(r"\\\1", text)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting `= + - @`, tab or CR gets `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Every text cell of a frame through `csv_cell`; times as ISO 8601 with their offset."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].map(lambda v: v.isoformat() if not pd.isna(v) else "")
        elif out[c].dtype == object:
            out[c] = out[c].map(csv_cell)
    return out

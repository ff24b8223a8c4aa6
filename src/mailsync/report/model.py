"""The report itself: its tables (`Report`), and the drift findings verify adds to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from mailsync.report.columns import STATUSES, UNSTORED_COLUMNS
from mailsync.report.frames import records
from mailsync.report.rules import DRIFT_DETAIL, KINDS


@dataclass(frozen=True)
class DriftFinding:
    """A write the ledger says is done whose tag or note is gone from HighLevel."""

    ledger_id: int
    detail: str = DRIFT_DETAIL
    location_id: str = ""
    contact_id: str = ""
    drop_id: str = ""
    code: str = ""
    kind: str = ""


@dataclass
class Report:
    """The reconciliation report's tables; every format is made from these."""

    summary: pd.DataFrame
    problems: pd.DataFrame
    quarantined: pd.DataFrame
    funnel: pd.DataFrame
    unstored: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=UNSTORED_COLUMNS))
    filters: dict[str, Any] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def totals(self) -> dict[str, int]:
        """Counts over all campaigns: planned, each status, problems, quarantined, unstored."""
        out = {c: int(self.summary[c].sum()) if len(self.summary) else 0
               for c in ("events_fetched", "events_new", "quarantined", "planned", *STATUSES)}
        out["problems"] = len(self.problems)
        out["unstored"] = len(self.unstored)
        return out

    def problem_counts(self) -> dict[str, int]:
        """Problem rows per kind (token, no_contact, ...), most actionable first."""
        counts = self.problems["problem"].value_counts().to_dict() if len(self.problems) else {}
        return {k: int(counts[k]) for k in KINDS if k in counts}

    def problem_actions(self) -> dict[str, str]:
        """The action to take per problem kind (the first row's), in `problem_counts` order."""
        if self.problems.empty:
            return {}
        first = self.problems.drop_duplicates("problem").set_index("problem")
        return {k: str(first.loc[k, "action"]) for k in self.problem_counts()}

    def problem_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per problem write (timestamps as ISO 8601 UTC)."""
        return records(self.problems)


def describe_filters(filters: dict[str, Any]) -> str:
    """The filters in words, e.g. `run ab12, since 2026-11-02 00:00`."""
    parts = []
    if filters.get("run_id"):
        parts.append(f"run {filters['run_id']}")
    if filters.get("since"):
        parts.append(f"since {filters['since']:%Y-%m-%d %H:%M}")
    if filters.get("until"):
        parts.append(f"until {filters['until']:%Y-%m-%d %H:%M}")
    if filters.get("drop_ids"):
        parts.append("campaigns " + ", ".join(filters["drop_ids"]))
    return ", ".join(parts) or "everything stored"

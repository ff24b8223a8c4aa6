"""The report itself: its tables (`Report`), and the drift findings verify adds to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from mailsync.report.columns import (
    FUNNEL_COLUMNS,
    GROUP_COLUMNS,
    PROBLEM_COLUMNS,
    QUARANTINE_COLUMNS,
    RUN_COLUMNS,
    STATUSES,
    STEP_COLUMNS,
    SUMMARY_COLUMNS,
    UNSTORED_COLUMNS,
)
from mailsync.report.frames import records
from mailsync.report.names import ReportNames
from mailsync.report.rules import DRIFT_DETAIL, KINDS, Owner


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


def _empty(columns: list[str]) -> Any:
    """A dataclass field defaulting to an empty table with these columns."""
    return field(default_factory=lambda: pd.DataFrame(columns=columns))


@dataclass
class Report:
    """The reconciliation report's tables; every format is made from these.

    `problems` has one row per problem write (the detail); `problem_groups` one per
    campaign, recipient and problem; `steps` one per fix, what to do first on top. Times
    are in the zone of `names` (the config's `timezone`, UTC without one).
    """

    summary: pd.DataFrame
    problems: pd.DataFrame
    quarantined: pd.DataFrame
    funnel: pd.DataFrame
    problem_groups: pd.DataFrame = _empty(GROUP_COLUMNS)  # noqa: RUF009
    steps: pd.DataFrame = _empty(STEP_COLUMNS)  # noqa: RUF009
    runs: pd.DataFrame = _empty(RUN_COLUMNS)  # noqa: RUF009
    unstored: pd.DataFrame = _empty(UNSTORED_COLUMNS)  # noqa: RUF009
    webhooks: pd.DataFrame = field(default_factory=pd.DataFrame)  # report.webhooks
    filters: dict[str, Any] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    names: ReportNames = field(default_factory=ReportNames)

    @classmethod
    def empty(cls, names: ReportNames | None = None) -> Report:
        """A report with nothing in it (a dry run's), showing times in the zone of `names`."""
        return cls(summary=pd.DataFrame(columns=SUMMARY_COLUMNS),
                   problems=pd.DataFrame(columns=PROBLEM_COLUMNS),
                   quarantined=pd.DataFrame(columns=QUARANTINE_COLUMNS),
                   funnel=pd.DataFrame(columns=FUNNEL_COLUMNS), names=names or ReportNames())

    def totals(self) -> dict[str, int]:
        """Counts over all campaigns: events seen, new and quarantined, writes planned, each
        status, problem writes (and the recipients and groups they make), unstored events."""
        out = {c: int(self.summary[c].sum()) if len(self.summary) else 0
               for c in ("events_seen", "events_new", "quarantined", "planned", *STATUSES)}
        out["problems"] = len(self.problems)
        out["problem_groups"] = len(self.problem_groups)
        out["problem_recipients"] = (
            self.problem_groups[["drop_id", "recipient_key"]].drop_duplicates().shape[0]
            if len(self.problem_groups) else 0)
        out["unstored"] = len(self.unstored)
        return out

    def first_steps(self, limit: int = 5) -> pd.DataFrame:
        """The fixes a person must make, the one that unblocks most writes first."""
        mine = self.steps[self.steps["owner"] == Owner.support.value]
        return mine.head(limit)

    def configured_summary(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(campaigns in the config, or all without one; campaigns no longer configured)."""
        apart = self.summary["configured"].eq(False) if len(self.summary) else pd.Series(
            dtype=bool)
        return self.summary[~apart], self.summary[apart]

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
        """One JSON-ready dict per problem write (timestamps as ISO 8601 with offset)."""
        return records(self.problems)

    def group_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per problem group, its writes listed under `detail`."""
        writes: dict[int, list[dict[str, Any]]] = {}
        for w in records(self.problems):
            writes.setdefault(int(w["group"]), []).append(w)
        return [{**g, "detail": writes.get(int(g["group"]), [])}
                for g in records(self.problem_groups)]


def describe_filters(filters: dict[str, Any], names: ReportNames | None = None) -> str:
    """The filters in words, e.g. `run ab12, since 2026-11-02 00:00` (in the zone of
    `names`)."""
    names = names or ReportNames()
    parts = []
    if filters.get("run_id"):
        parts.append(f"run {filters['run_id']}")
    for key in ("since", "until"):
        if filters.get(key):
            parts.append(f"{key} {names.local(filters[key]):%Y-%m-%d %H:%M}")
    if filters.get("drop_ids"):
        parts.append("campaigns " + ", ".join(f"{names.campaign(d)} ({d})"
                                              for d in filters["drop_ids"]))
    return ", ".join(parts) or "everything stored"

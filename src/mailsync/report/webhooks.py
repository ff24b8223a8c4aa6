"""Webhook or poll: per sync run and campaign, how events came, and how fast they were written.

For every campaign that has had a webhook, one row per scheduled sync run (and one for the
time since the last run):

- `by_webhook`: events whose webhook arrived (`received_at`), `late_webhooks` of them after
  the poll had stored the event already;
- `poll_only`: events only the poll found: their webhook was lost (or never configured);
- `awaiting_poll`: webhook events whose person nothing identified yet (no carried contact id,
  email or phone): written once the poll reads who it is;
- `written` and `latency_p50_s` / `latency_p95_s`: of the events a webhook stored first,
  those whose writes are all done, and the seconds from the webhook's arrival to the last of
  its writes done (the ledger's `updated_at`).

A webhook event belongs to the first sync run that started after it arrived (the run that
would have found it had it been lost); a polled event to the run that stored it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import case, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.report.load import ReportScope
from mailsync.report.markdown import frame_table
from mailsync.report.names import ReportNames
from mailsync.store.models import EventSource, MailEvent, SyncRun, WriteIntent, WriteStatus
from mailsync.sync.normalise import RecipientKind, recipient_kind

COLUMNS = ["run_id", "run_started_at", "drop_id", "campaign", "by_webhook", "late_webhooks",
           "poll_only", "awaiting_poll", "written", "latency_p50_s", "latency_p95_s"]
LABELS = {"run_id": "sync run", "run_started_at": "run started", "by_webhook": "by webhook",
          "late_webhooks": "after the poll", "poll_only": "poll only, webhook lost",
          "awaiting_poll": "awaiting the poll", "written": "written",
          "latency_p50_s": "latency p50, s", "latency_p95_s": "latency p95, s"}
SINCE_LAST_RUN = "since the last sync"
_COUNTS = ["by_webhook", "late_webhooks", "poll_only", "awaiting_poll", "written"]


def _webhook_drops(s: Session, scope: ReportScope) -> list[str]:
    q = select(MailEvent.drop_id).where(col(MailEvent.received_at).is_not(None)).distinct()
    if scope.drop_ids:
        q = q.where(col(MailEvent.drop_id).in_(scope.drop_ids))
    return sorted(s.exec(q).all())


def _events(s: Session, drops: list[str]) -> pd.DataFrame:
    rows = s.exec(select(MailEvent.key, MailEvent.drop_id, MailEvent.source,
                         MailEvent.received_at, MailEvent.fetched_at, MailEvent.run_id,
                         MailEvent.recipient_key)
                  .where(col(MailEvent.drop_id).in_(drops))).all()
    return pd.DataFrame([tuple(r) for r in rows],
                        columns=["key", "drop_id", "source", "received_at", "fetched_at",
                                 "run_id", "recipient_key"])


def _written(s: Session, drops: list[str]) -> pd.DataFrame:
    """Per webhook-first event: its writes, how many are done, and when the last was."""
    done = func.sum(case((col(WriteIntent.status) == WriteStatus.done, 1), else_=0))
    q = (select(WriteIntent.event_key, func.count(), done, func.max(WriteIntent.updated_at))
         .join(MailEvent, col(MailEvent.key) == col(WriteIntent.event_key))
         .where(col(MailEvent.drop_id).in_(drops), MailEvent.source == EventSource.webhook)
         .group_by(col(WriteIntent.event_key)))
    return pd.DataFrame([tuple(r) for r in s.exec(q).all()],
                        columns=["key", "writes", "done", "last_done"])


def _runs(s: Session) -> pd.DataFrame:
    rows = s.exec(select(SyncRun.id, SyncRun.started_at)
                  .where(SyncRun.kind == "sync", col(SyncRun.dry_run).is_(False))
                  .order_by(col(SyncRun.started_at))).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=["run_id", "run_started_at"])


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True)


def _buckets(events: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Each event's run: the storing run for a polled event, the first run started after a
    webhook's arrival for a webhook's (none yet: since the last run)."""
    events = events.copy()
    for c in ("received_at", "fetched_at"):
        events[c] = _utc(events[c])
    pushed = events["source"] == EventSource.webhook
    events["at"] = events["received_at"].where(pushed, events["fetched_at"])
    runs = runs.assign(run_started_at=_utc(runs["run_started_at"])).sort_values(
        "run_started_at")
    hooks = events[pushed].sort_values("at")
    if not hooks.empty and not runs.empty:
        hooks = pd.merge_asof(hooks.drop(columns="run_id"), runs, left_on="at",
                              right_on="run_started_at", direction="forward")
    else:
        hooks = hooks.assign(run_id=None)
    polled = events[~pushed]
    out = pd.concat([polled, hooks[polled.columns]], ignore_index=True)
    return out.merge(runs, on="run_id", how="left")


def _in_scope(events: pd.DataFrame, scope: ReportScope) -> pd.DataFrame:
    keep = pd.Series(True, index=events.index)
    if scope.run is not None:
        keep &= events["run_id"] == scope.run.id
    if scope.since is not None:
        keep &= events["at"] >= pd.Timestamp(scope.since)
    if scope.until is not None:
        keep &= events["at"] <= pd.Timestamp(scope.until)
    return events[keep]


def _latencies(events: pd.DataFrame, written: pd.DataFrame) -> pd.DataFrame:
    out = events.merge(written, on="key", how="left")
    complete = (out["source"] == EventSource.webhook) & (out["writes"] > 0) & (
        out["done"] == out["writes"])
    out["written"] = complete
    out["latency_s"] = (_utc(out["last_done"]) - out["received_at"]).dt.total_seconds().where(
        complete)
    return out


def _flags(events: pd.DataFrame) -> pd.DataFrame:
    came = events["received_at"].notna()
    polled = events["source"] == EventSource.poll
    waiting = events["recipient_key"].map(
        lambda k: recipient_kind(k) == RecipientKind.unidentified)
    return events.assign(by_webhook=came, late_webhooks=came & polled, poll_only=~came,
                         awaiting_poll=waiting & ~polled)


def channels_frame(engine: Engine, scope: ReportScope,
                   names: ReportNames | None = None) -> pd.DataFrame:
    """One row per sync run and campaign with webhooks: how its events came, how fast the
    webhook ones were written (see the module's docstring); empty without webhooks."""
    names = names or ReportNames()
    with Session(engine) as s:
        drops = _webhook_drops(s, scope)
        if not drops:
            return pd.DataFrame(columns=COLUMNS)
        events, written, runs = _events(s, drops), _written(s, drops), _runs(s)
    events = _in_scope(_buckets(events, runs), scope)
    if events.empty:
        return pd.DataFrame(columns=COLUMNS)
    events = _flags(_latencies(events, written))
    events["run_id"] = events["run_id"].fillna(SINCE_LAST_RUN)
    grouped = events.groupby(["run_id", "drop_id"], dropna=False)
    table = grouped[_COUNTS].sum().astype(int)
    table["latency_p50_s"] = grouped["latency_s"].quantile(0.5).round(2)
    table["latency_p95_s"] = grouped["latency_s"].quantile(0.95).round(2)
    table["run_started_at"] = grouped["run_started_at"].first()
    table = table.reset_index()
    table["campaign"] = table["drop_id"].map(names.campaign)
    table["run_started_at"] = _utc(table["run_started_at"]).dt.tz_convert(names.zone)
    table = table.sort_values(["run_started_at", "drop_id"], na_position="last", kind="stable")
    return table[COLUMNS].reset_index(drop=True)


def webhooks_markdown(frame: pd.DataFrame) -> list[str]:
    """The table as markdown lines under its heading; nothing when there were no webhooks."""
    if frame.empty:
        return []
    shown = [c for c in COLUMNS if c != "drop_id"]
    return ["", "## Webhooks and the poll", "",
            "Per sync run and campaign: events by webhook, those only the poll found "
            "(webhook lost), and seconds from a webhook's arrival to its writes done.", "",
            *frame_table(frame, shown, labels=LABELS,
                         right={c for c in shown if c not in ("run_id", "run_started_at",
                                                              "campaign")})]


def summary_counts(frame: pd.DataFrame) -> dict[str, Any]:
    """Totals over the table, for JSON and logs."""
    if frame.empty:
        return {c: 0 for c in _COUNTS}
    return {c: int(frame[c].sum()) for c in _COUNTS}

"""The report's tables as pandas DataFrames: summary, runs, funnel, unstored events.

Built from what `mailsync.report.load` read, with names for ids (`names`); personal data is
masked and outside text made visible here, once, so every format made from the frames is
safe to send. The problem tables are in `problems`, the quarantine's in `quarantine`.
`records` turns a frame into JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from mailsync.codes import MAIL_CODES, REST_LABEL, EventCode, codes_for_country
from mailsync.report.columns import (
    EVENT_COLUMNS,
    FUNNEL_COLUMNS,
    RUN_COLUMNS,
    STATUSES,
    SUMMARY_COLUMNS,
    UNSTORED_COLUMNS,
)
from mailsync.report.load import ReportScope, RunCounts
from mailsync.report.names import ReportNames
from mailsync.report.rules import mask_email
from mailsync.report.safe import outside
from mailsync.store.models import Campaign, WriteIntent

JOURNEY_END = EventCode.ProcessedForDelivery
EXCEPTION_CODES = (EventCode.ReRouted, EventCode.ReturnedToSender)
RESPONSE_CODES = (EventCode.pURLOpened, EventCode.pURLCompleted)
_OPTIONAL_STAGES = (EventCode.Addressed, EventCode.Printed)  # not every print network reports


def events_frame(rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """Stored events as rows of `EVENT_COLUMNS` (the funnel's and the new-event counts' input)."""
    return pd.DataFrame(list(rows), columns=EVENT_COLUMNS)


def _new_events(events: pd.DataFrame, scope: ReportScope) -> pd.DataFrame:
    """The events first stored in scope: by the run, or fetched inside the window."""
    if scope.run is not None:
        return events[events["run_id"] == scope.run.id]
    if scope.since is None and scope.until is None:
        return events
    fetched_at = pd.to_datetime(events["fetched_at"], utc=True)
    keep = pd.Series(True, index=events.index)
    if scope.since is not None:
        keep &= fetched_at >= pd.Timestamp(scope.since)
    if scope.until is not None:
        keep &= fetched_at <= pd.Timestamp(scope.until)
    return events[keep]


def _counts(df: pd.DataFrame, *keys: str) -> dict[Any, int]:
    """Rows per value of `keys` (a tuple of values when there are several)."""
    if df.empty:
        return {}
    return {k: int(n) for k, n in df.groupby(list(keys) if len(keys) > 1 else keys[0])
            .size().items()}


def _campaign_summary(drop: str, camp: Campaign | None, mine: pd.DataFrame,
                      event_counts: dict[str, dict[Any, int]],
                      problems_at: dict[Any, int], names: ReportNames) -> list[dict[str, Any]]:
    """A campaign's rows, one per location it wrote to (else its configured location)."""
    locations = sorted(set(mine["location_id"])) or [camp.location_id if camp else ""]
    recs = []
    for loc in locations:
        here = mine[mine["location_id"] == loc]
        by_status = here["status"].value_counts().to_dict()
        first = loc == locations[0]  # event counts belong to the campaign, shown once
        recs.append({
            "campaign": outside(names.campaign(drop)), "drop_id": drop,
            "location": outside(names.location(loc)), "location_id": loc,
            "configured": names.is_configured(drop),
            **{c: counts.get(drop, 0) if first else 0 for c, counts in event_counts.items()},
            "planned": len(here), **{st: int(by_status.get(st, 0)) for st in STATUSES},
            "problems": problems_at.get((drop, loc), 0),
        })
    return recs


def summary_frame(rows: Sequence[WriteIntent], problems: pd.DataFrame, events: pd.DataFrame,
                  quarantined: pd.DataFrame, seen_quarantined: dict[str, int],
                  scope: ReportScope, campaigns: dict[str, Campaign],
                  names: ReportNames) -> pd.DataFrame:
    """Counts per campaign and location, configured campaigns first: events seen (distinct,
    stored or quarantined, up to the window's end), new and quarantined in the window (on
    the campaign's first location only), writes planned, per status, and problems."""
    ledger = pd.DataFrame([(r.drop_id, r.location_id, r.status) for r in rows],
                          columns=["drop_id", "location_id", "status"])
    new = _new_events(events, scope)
    stored = _counts(events, "drop_id")
    seen = {d: stored.get(d, 0) + seen_quarantined.get(d, 0)
            for d in set(stored) | set(seen_quarantined)}
    event_counts = {"events_seen": seen, "events_new": _counts(new, "drop_id"),
                    "quarantined": _counts(quarantined, "drop_id")}
    problems_at = _counts(problems, "drop_id", "location_id")
    drops = set(ledger["drop_id"]) | set(new["drop_id"]) | set(quarantined["drop_id"])
    drops |= {d for d in set(campaigns) | set(names.configured or ())
              if not scope.drop_ids or d in scope.drop_ids}
    recs = []
    # Campaigns no longer configured go last, apart: their names are not to be trusted.
    for drop in sorted(drops, key=lambda d: (names.is_configured(d) is False,
                                             names.campaign(d), d)):
        recs += _campaign_summary(drop, campaigns.get(drop), ledger[ledger["drop_id"] == drop],
                                  event_counts, problems_at, names)
    return pd.DataFrame(recs, columns=SUMMARY_COLUMNS)


def _run_in_scope(run: Any, scope: ReportScope) -> bool:
    if scope.run is not None:
        return bool(run.id == scope.run.id)
    return scope.covers(run.started_at)


def _run_record(run: Any, counts: dict[str, Any], scope: ReportScope) -> dict[str, Any]:
    camps = [c for c in counts.get("campaigns") or [] if isinstance(c, dict)
             and (not scope.drop_ids or str(c.get("drop_id")) in scope.drop_ids)]
    outcomes: dict[str, int] = {}
    for loc in counts.get("locations") or []:
        for k, v in (loc.get("outcomes") or {} if isinstance(loc, dict) else {}).items():
            outcomes[str(k)] = outcomes.get(str(k), 0) + int(v or 0)
    return {"run_id": run.id, "kind": run.kind, "started_at": run.started_at,
            "finished_at": run.finished_at, "status": run.status,
            "events_read": sum(int(c.get("fetched") or 0) for c in camps),
            "events_new": sum(int(c.get("new_events") or 0) for c in camps),
            "quarantined": sum(int(c.get("quarantined") or 0) for c in camps),
            "planned": sum(int(c.get("planned") or 0) for c in camps),
            **{st: outcomes.get(st, 0) for st in STATUSES},
            "errors": len(counts.get("errors") or [])}


def runs_frame(runs: Iterable[RunCounts], scope: ReportScope) -> pd.DataFrame:
    """One row per run in scope, newest first: events read (re-reads included) and new."""
    recs = [_run_record(run, counts, scope) for run, counts in runs
            if _run_in_scope(run, scope)]
    df = pd.DataFrame(recs[::-1], columns=RUN_COLUMNS)
    for c in ("started_at", "finished_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df


def funnel_stage(code: EventCode) -> str | None:
    """Where a code sits in a piece's life: journey, exception, response (None: not shown)."""
    if code in EXCEPTION_CODES:
        return "exception"
    if code in RESPONSE_CODES:
        return "response"
    if MAIL_CODES.index(code) <= MAIL_CODES.index(JOURNEY_END):
        return "journey"
    return None


def _furthest(evs: pd.DataFrame) -> pd.Series:
    """Per recipient, the index in `MAIL_CODES` of the furthest journey step reported."""
    step = {c.value: MAIL_CODES.index(c) for c in MAIL_CODES if funnel_stage(c) == "journey"}
    journey = evs[evs["code"].isin(list(step))]
    return journey["code"].map(step).groupby(journey["recipient_key"]).max()


def _campaign_funnel(drop: str, evs: pd.DataFrame, camp: Campaign | None,
                     names: ReportNames) -> list[dict[str, Any]]:
    country = camp.country if camp else "US"
    pieces = evs["recipient_key"].nunique()
    reported = evs.groupby("code")["recipient_key"].nunique().to_dict()
    furthest = _furthest(evs)
    allowed = codes_for_country(country)
    recs = []
    for code in MAIL_CODES:
        stage = funnel_stage(code) if code in allowed else None
        if stage is None:
            continue
        own = int(reported.get(code.value, 0))
        if code in _OPTIONAL_STAGES and own == 0:
            continue  # this print network does not report it: not a drop-off
        # A piece scanned In Transit was mailed, even if the Mailed scan never came.
        n = int((furthest >= MAIL_CODES.index(code)).sum()) if stage == "journey" else own
        recs.append({"drop_id": drop, "campaign": outside(names.campaign(drop)),
                     "country": country, "stage": stage, "code": code.value,
                     "label": REST_LABEL[code], "recipients": n, "reported": own,
                     "pieces": int(pieces), "share": round(n / pieces, 4) if pieces else 0.0})
    return recs


def funnel(events: pd.DataFrame, campaigns: dict[str, Campaign] | None = None,
           names: ReportNames | None = None) -> pd.DataFrame:
    """How far each campaign's pieces got: recipients who reached at least each journey
    step (cumulative), and apart from it exceptions (re-routed, returned) and responses.

    `events` has drop_id, recipient_key and code columns; `share` is recipients over pieces
    (recipients with any stored event in the campaign).
    """
    campaigns, names = campaigns or {}, names or ReportNames()
    recs = []
    for drop, evs in events.groupby("drop_id", sort=True):
        recs += _campaign_funnel(str(drop), evs, campaigns.get(str(drop)), names)
    return pd.DataFrame(recs, columns=FUNNEL_COLUMNS)


def unstored_frame(items: Iterable[dict[str, Any]], names: ReportNames) -> pd.DataFrame:
    """Events Postalytics has and the store lacks (from `verify.unstored_events`), masked."""
    recs = [{"drop_id": str(i.get("drop_id", "")),
             "campaign": outside(names.campaign(str(i.get("drop_id", "")))),
             "event_key": outside(i.get("event_key", "")), "code": outside(i.get("code", "")),
             "event_at": i.get("event_at"), "recipient": outside(i.get("recipient", "")),
             "email": outside(mask_email(i.get("email")))} for i in items]
    df = pd.DataFrame(recs, columns=UNSTORED_COLUMNS)
    if not df.empty:
        df["event_at"] = pd.to_datetime(df["event_at"], utc=True)
    return df


def localise(df: pd.DataFrame, names: ReportNames) -> pd.DataFrame:
    """Every time column shown in the operator's zone (the store keeps UTC)."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].dt.tz_convert(names.zone)
    return out


def jsonable(value: Any) -> Any:
    """A cell as JSON-ready data: None for NaN/NaT, ISO 8601 for times, seconds for spans."""
    if value is None or (not isinstance(value, list | tuple | dict) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON-ready dict per row."""
    return [{k: jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]

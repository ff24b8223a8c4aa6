"""The report's tables as pandas DataFrames: summary, problems, quarantine, funnel, unstored.

Built from what `mailsync.report.load` read; personal data is masked here, once, so every
format made from the frames is safe to send. `records` turns a frame into JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from mailsync.codes import MAIL_CODES, REST_LABEL, EventCode, codes_for_country
from mailsync.redact import redact
from mailsync.report.columns import (
    EVENT_COLUMNS,
    FUNNEL_COLUMNS,
    PROBLEM_COLUMNS,
    QUARANTINE_COLUMNS,
    STATUSES,
    SUMMARY_COLUMNS,
    UNSTORED_COLUMNS,
)
from mailsync.report.load import ReportScope
from mailsync.report.rules import KINDS, Verdict, mask_email, mask_emails_in
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, WriteIntent

JOURNEY_END = EventCode.ProcessedForDelivery
EXCEPTION_CODES = (EventCode.ReRouted, EventCode.ReturnedToSender)
RESPONSE_CODES = (EventCode.pURLOpened, EventCode.pURLCompleted)
_OPTIONAL_STAGES = (EventCode.Addressed, EventCode.Printed)  # not every print network reports

ProblemRow = tuple[WriteIntent, Verdict]


def recipient_name(event: MailEvent | None, key: str) -> str:
    """A recipient's name, else their Postalytics id, for support staff."""
    if event is not None:
        name = " ".join(p for p in (event.first_name, event.last_name) if p)
        if name:
            return name
    return f"Postalytics id {key[2:]}" if key.startswith("d:") else f"recipient {key[:12]}"


def _problem_record(r: WriteIntent, v: Verdict, person: MailEvent | None,
                    names: dict[str, str]) -> dict[str, Any]:
    return {
        "ledger_id": r.id, "drop_id": r.drop_id, "campaign": names.get(r.drop_id, ""),
        "location_id": r.location_id, "recipient_key": r.recipient_key,
        "recipient": recipient_name(person, r.recipient_key),
        "email": mask_email(person.email if person else None),
        "contact_id": r.contact_id or "", "code": r.code, "kind": r.kind,
        "status": r.status, "attempts": r.attempts, "last_http_status": r.last_http_status,
        "problem": v.kind, "reason": mask_emails_in(redact(v.reason)),
        "action": v.action, "first_attempt_at": r.first_attempt_at,
        "last_attempt_at": r.last_attempt_at, "created_at": r.created_at,
        "source": "verify" if v.kind == "drift" and r.status == "done" else "ledger",
    }


def problems_frame(problem_rows: Sequence[ProblemRow], who: dict[tuple[str, str], MailEvent],
                   names: dict[str, str]) -> pd.DataFrame:
    """One row per problem write, most actionable kind first, emails masked."""
    recs = [_problem_record(r, v, who.get((r.drop_id, r.recipient_key)), names)
            for r, v in problem_rows]
    df = pd.DataFrame(recs, columns=PROBLEM_COLUMNS)
    if df.empty:
        return df
    df["last_http_status"] = df["last_http_status"].astype("Int64")
    for c in ("first_attempt_at", "last_attempt_at", "created_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    order = {k: i for i, k in enumerate(KINDS)}
    df = df.assign(_o=df["problem"].map(order)).sort_values(
        ["_o", "drop_id", "recipient", "code", "kind", "ledger_id"]).drop(columns="_o")
    return df.reset_index(drop=True)


def events_frame(rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """Stored events as rows of `EVENT_COLUMNS` (the funnel's and the new-event counts' input)."""
    return pd.DataFrame(list(rows), columns=EVENT_COLUMNS)


def quarantine_frame(events: Iterable[QuarantinedEvent], names: dict[str, str]) -> pd.DataFrame:
    """One row per quarantined event, its payload masked and cut short."""
    recs = [{"drop_id": e.drop_id, "campaign": names.get(e.drop_id, ""),
             "fingerprint": e.fingerprint, "reason": e.reason, "first_seen": e.first_seen,
             "run_id": e.run_id or "",
             # The raw payload carries personal data: mask emails and keep it short.
             "payload": mask_emails_in(redact(e.payload))[:300]}
            for e in events]
    df = pd.DataFrame(recs, columns=QUARANTINE_COLUMNS)
    if not df.empty:
        df["first_seen"] = pd.to_datetime(df["first_seen"], utc=True)
    return df


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
                      problems_at: dict[Any, int]) -> list[dict[str, Any]]:
    """A campaign's rows, one per location it wrote to (else its configured location)."""
    locations = sorted(set(mine["location_id"])) or [camp.location_id if camp else ""]
    recs = []
    for loc in locations:
        here = mine[mine["location_id"] == loc]
        by_status = here["status"].value_counts().to_dict()
        first = loc == locations[0]  # event counts belong to the campaign, shown once
        recs.append({
            "drop_id": drop, "campaign": camp.name or "" if camp else "", "location_id": loc,
            **{c: counts.get(drop, 0) if first else 0 for c, counts in event_counts.items()},
            "planned": len(here), **{st: int(by_status.get(st, 0)) for st in STATUSES},
            "problems": problems_at.get((drop, loc), 0),
        })
    return recs


def summary_frame(rows: Sequence[WriteIntent], problems: pd.DataFrame, events: pd.DataFrame,
                  quarantined: pd.DataFrame, fetched: dict[str, int], scope: ReportScope,
                  campaigns: dict[str, Campaign]) -> pd.DataFrame:
    """Counts per campaign and location: events fetched, new and quarantined (on the
    campaign's first location only), writes planned, per status, and problems."""
    ledger = pd.DataFrame([(r.drop_id, r.location_id, r.status) for r in rows],
                          columns=["drop_id", "location_id", "status"])
    new = _new_events(events, scope)
    event_counts = {"events_fetched": fetched, "events_new": _counts(new, "drop_id"),
                    "quarantined": _counts(quarantined, "drop_id")}
    problems_at = _counts(problems, "drop_id", "location_id")
    drops = set(ledger["drop_id"]) | set(new["drop_id"]) | set(quarantined["drop_id"]) | set(
        fetched)
    drops |= {d for d in campaigns if not scope.drop_ids or d in scope.drop_ids}
    recs = []
    for drop in sorted(drops):
        recs += _campaign_summary(drop, campaigns.get(drop), ledger[ledger["drop_id"] == drop],
                                  event_counts, problems_at)
    return pd.DataFrame(recs, columns=SUMMARY_COLUMNS)


def funnel_stage(code: EventCode) -> str | None:
    """Where a code sits in a piece's life: journey, exception, response (None: not shown)."""
    if code in EXCEPTION_CODES:
        return "exception"
    if code in RESPONSE_CODES:
        return "response"
    if MAIL_CODES.index(code) <= MAIL_CODES.index(JOURNEY_END):
        return "journey"
    return None


def _campaign_funnel(drop: str, evs: pd.DataFrame,
                     camp: Campaign | None) -> list[dict[str, Any]]:
    country = camp.country if camp else "US"
    pieces = evs["recipient_key"].nunique()
    reached = evs.groupby("code")["recipient_key"].nunique().to_dict()
    allowed = codes_for_country(country)
    recs = []
    for code in MAIL_CODES:
        stage = funnel_stage(code) if code in allowed else None
        if stage is None:
            continue
        n = int(reached.get(code.value, 0))
        if code in _OPTIONAL_STAGES and n == 0:
            continue  # this print network does not report it: not a drop-off
        recs.append({"drop_id": drop, "campaign": camp.name or "" if camp else "",
                     "country": country, "stage": stage, "code": code.value,
                     "label": REST_LABEL[code], "recipients": n, "pieces": int(pieces),
                     "share": round(n / pieces, 4) if pieces else 0.0})
    return recs


def funnel(events: pd.DataFrame, campaigns: dict[str, Campaign] | None = None) -> pd.DataFrame:
    """How far each campaign's pieces got: recipients per journey code, exceptions, responses.

    `events` has drop_id, recipient_key and code columns; `share` is recipients over pieces
    (recipients with any stored event in the campaign).
    """
    campaigns = campaigns or {}
    recs = []
    for drop, evs in events.groupby("drop_id", sort=True):
        recs += _campaign_funnel(str(drop), evs, campaigns.get(str(drop)))
    return pd.DataFrame(recs, columns=FUNNEL_COLUMNS)


def unstored_frame(items: Iterable[dict[str, Any]], names: dict[str, str]) -> pd.DataFrame:
    """Events Postalytics has and the store lacks (from `verify.unstored_events`), masked."""
    recs = [{"drop_id": str(i.get("drop_id", "")), "campaign": names.get(str(i.get("drop_id")), ""),
             "event_key": i.get("event_key", ""), "code": i.get("code", ""),
             "event_at": i.get("event_at"), "recipient": i.get("recipient", ""),
             "email": mask_email(i.get("email"))} for i in items]
    df = pd.DataFrame(recs, columns=UNSTORED_COLUMNS)
    if not df.empty:
        df["event_at"] = pd.to_datetime(df["event_at"], utc=True)
    return df


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

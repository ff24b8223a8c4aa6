"""Reconciliation reports: what was fetched and written, and every write that went wrong.

`build_report` reads the store (ledger, events, quarantine, runs) into pandas DataFrames;
the formats (terminal table, CSV, JSON, HTML) and the Prefect artifacts are made from the
`Report` it returns. The live checks that need HighLevel or Postalytics (`verify`, events
never stored) are in `mailsync.report.verify`; their findings can be passed in here.

Filters: `run_id` selects what one run planned (a sync) or attempted (a replay); `since` /
`until` select writes planned, events stored and events quarantined in that window; the
funnel covers every stored event of the selected campaigns up to `until` (how far the
pieces got is cumulative). Emails are masked and no token is ever read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.codes import MAIL_CODES, REST_LABEL, EventCode, codes_for_country
from mailsync.redact import redact
from mailsync.report.rules import (
    DRIFT_REASON,
    KINDS,
    LocationFacts,
    RowFacts,
    classify,
    mask_email,
    mask_emails_in,
)
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, SyncRun, WriteIntent

STATUSES = ("done", "rejected", "failed", "unknown", "pending")
SUMMARY_COLUMNS = ["drop_id", "campaign", "location_id", "events_fetched", "events_new",
                   "quarantined", "planned", *STATUSES, "problems"]
PROBLEM_COLUMNS = ["ledger_id", "drop_id", "campaign", "location_id", "recipient_key", "recipient",
                   "email", "contact_id", "code", "kind", "status", "attempts",
                   "last_http_status", "problem", "reason", "action", "first_attempt_at",
                   "last_attempt_at", "created_at", "source"]
QUARANTINE_COLUMNS = ["drop_id", "campaign", "fingerprint", "reason", "first_seen", "run_id",
                      "payload"]
FUNNEL_COLUMNS = ["drop_id", "campaign", "country", "stage", "code", "label", "recipients",
                  "pieces", "share"]
UNSTORED_COLUMNS = ["drop_id", "campaign", "event_key", "code", "event_at", "recipient",
                    "email"]
JOURNEY_END = EventCode.ProcessedForDelivery
EXCEPTION_CODES = (EventCode.ReRouted, EventCode.ReturnedToSender)
RESPONSE_CODES = (EventCode.pURLOpened, EventCode.pURLCompleted)
_OPTIONAL_STAGES = (EventCode.Addressed, EventCode.Printed)  # not every print network reports
_CHUNK = 500


@dataclass(frozen=True)
class DriftFinding:
    """A write the ledger says is done whose tag or note is gone from HighLevel."""

    ledger_id: int
    detail: str = DRIFT_REASON
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

    def problem_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per problem write (timestamps as ISO 8601 UTC)."""
        return _records(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready data."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "filters": {k: _jsonable(v) for k, v in self.filters.items()},
            "totals": self.totals(),
            "problem_counts": self.problem_counts(),
            "summary": _records(self.summary),
            "problems": self.problem_records(),
            "quarantined": _records(self.quarantined),
            "unstored": _records(self.unstored),
            "funnel": _records(self.funnel),
        }

    def to_json(self) -> str:
        """`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_markdown_summary(self) -> str:
        """Markdown for a Prefect artifact: totals, per-campaign counts, problems by kind."""
        t = self.totals()
        lines = ["# mailsync reconciliation", "",
                 f"Generated {self.generated_at:%Y-%m-%d %H:%M} UTC"
                 + (f" for {describe_filters(self.filters)}" if self.filters else "") + ".", "",
                 f"**{t['planned']}** writes planned: {t['done']} done, {t['rejected']} "
                 f"rejected, {t['failed']} failed, {t['unknown']} unknown, {t['pending']} "
                 f"pending. **{t['problems']}** need attention; {t['quarantined']} events "
                 f"quarantined; {t['unstored']} events at Postalytics not stored.", ""]
        lines += _markdown_table(self.summary, SUMMARY_COLUMNS)
        counts = self.problem_counts()
        if counts:
            first = self.problems.drop_duplicates("problem").set_index("problem")
            lines += ["", "| problem | writes | what to do |", "|---|---:|---|"]
            lines += [f"| {k} | {n} | {_md(first.loc[k, 'action'])} |" for k, n in counts.items()]
        return "\n".join(lines) + "\n"


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(df: pd.DataFrame, columns: list[str]) -> list[str]:
    if df.empty:
        return ["(nothing in this window)"]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for rec in df[columns].itertuples(index=False):
        out.append("| " + " | ".join(_md("" if pd.isna(v) else v) for v in rec) + " |")
    return out


def _jsonable(value: Any) -> Any:
    if value is None or (not isinstance(value, list | tuple | dict) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]


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


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (a naive one is taken to be UTC already)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- loading -------------------------------------------------------------------------------

@dataclass
class _Window:
    run: SyncRun | None
    since: datetime | None
    until: datetime | None
    drop_ids: list[str] | None

    def covers(self, when: datetime | None) -> bool:
        if when is None:
            return self.since is None and self.until is None
        return ((self.since is None or when >= self.since)
                and (self.until is None or when <= self.until))


def _ledger_rows(s: Session, w: _Window) -> list[WriteIntent]:
    q = select(WriteIntent)
    if w.drop_ids:
        q = q.where(col(WriteIntent.drop_id).in_(w.drop_ids))
    if w.run is not None and w.run.kind == "sync":
        q = q.where(WriteIntent.run_id == w.run.id)
    elif w.run is not None:  # a replay plans nothing: take what it attempted
        q = q.where(col(WriteIntent.last_attempt_at) >= w.run.started_at)
        if w.run.finished_at is not None:
            q = q.where(col(WriteIntent.last_attempt_at) <= w.run.finished_at)
    if w.since is not None:
        q = q.where(col(WriteIntent.created_at) >= w.since)
    if w.until is not None:
        q = q.where(col(WriteIntent.created_at) <= w.until)
    return list(s.exec(q.order_by(col(WriteIntent.id))).all())


def _runs(s: Session) -> list[tuple[SyncRun, dict[str, Any]]]:
    out = []
    for run in s.exec(select(SyncRun).order_by(col(SyncRun.started_at))).all():
        try:
            counts = json.loads(run.counts) if run.counts else {}
        except ValueError:
            counts = {}
        out.append((run, counts if isinstance(counts, dict) else {}))
    return out


def location_facts(runs: Iterable[tuple[SyncRun, dict[str, Any]]]) -> dict[str, LocationFacts]:
    """Per location, what the latest finished run that applied it said (token refused?)."""
    import re

    facts: dict[str, LocationFacts] = {}
    for run, counts in runs:  # oldest first: later runs overwrite
        if run.finished_at is None:
            continue
        for loc in counts.get("locations") or []:
            if isinstance(loc, dict) and loc.get("location_id"):
                facts[str(loc["location_id"])] = LocationFacts(last_run_finished=run.finished_at)
        for err in counts.get("errors") or []:
            m = re.match(r"location (\S+): (.*)$", str(err), re.S)
            if not m:
                continue
            text = redact(m.group(2))
            refused = "token" in text.lower() or re.search(r"HTTP 40[13]\b", text)
            status = re.search(r"HTTP (40[13])\b", text)
            facts[m.group(1)] = LocationFacts(
                token_refused=text if refused else None,
                token_http_status=int(status.group(1)) if status else None,
                last_run_finished=run.finished_at)
    return facts


def _recipients(s: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], MailEvent]:
    """The newest stored event of each (drop_id, recipient_key): who the recipient is."""
    out: dict[tuple[str, str], MailEvent] = {}
    keys = sorted({k for _, k in pairs})
    for start in range(0, len(keys), _CHUNK):
        q = select(MailEvent).where(col(MailEvent.recipient_key).in_(keys[start:start + _CHUNK]))
        for e in s.exec(q.order_by(col(MailEvent.event_at))).all():
            if (e.drop_id, e.recipient_key) in pairs:
                prev = out.get((e.drop_id, e.recipient_key))
                if prev is None or e.email or e.first_name or not (prev.email or prev.first_name):
                    out[(e.drop_id, e.recipient_key)] = e
    return out


def recipient_name(event: MailEvent | None, key: str) -> str:
    """A recipient's name, else their Postalytics id, for support staff."""
    if event is not None:
        name = " ".join(p for p in (event.first_name, event.last_name) if p)
        if name:
            return name
    return f"Postalytics id {key[2:]}" if key.startswith("d:") else f"recipient {key[:12]}"


# -- building ------------------------------------------------------------------------------

def build_report(engine: Engine, *, run_id: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, drop_ids: Sequence[str] | None = None,
                 pending_deadline: timedelta = timedelta(hours=24),
                 drift: Iterable[DriftFinding] = (),
                 unstored: Iterable[dict[str, Any]] = (),
                 now: datetime | None = None) -> Report:
    """The report for a run or a window, per campaign and location, with its problem writes.

    `drift` (from `reconcile.verify`) and `unstored` (from `reconcile.unstored_events`) add
    what only HighLevel and Postalytics can tell; `now` fixes the clock for the deadline.
    """
    now = utc(now) or datetime.now(UTC)
    drops = [str(d) for d in drop_ids] if drop_ids else None
    with Session(engine) as s:
        run = s.get(SyncRun, run_id) if run_id else None
        if run_id and run is None:
            raise LookupError(f"no run with id {run_id!r} in the store")
        w = _Window(run, utc(since), utc(until), drops)
        campaigns = {c.drop_id: c for c in s.exec(select(Campaign)).all()}
        rows = _ledger_rows(s, w)
        runs = _runs(s)
        facts = location_facts(runs)
        drifted = {d.ledger_id: d for d in drift}
        flagged = [(r, _verdict(r, facts, now, pending_deadline, drifted)) for r in rows]
        problem_rows = [(r, v) for r, v in flagged if v is not None]
        who = _recipients(s, {(r.drop_id, r.recipient_key) for r, _ in problem_rows})
        events = _events(s, w)
        quarantined = _quarantined(s, w, campaigns)
    names = {d: c.name or "" for d, c in campaigns.items()}
    problems = _problems_frame(problem_rows, who, names)
    summary = _summary(rows, problems, events, quarantined, runs, w, campaigns)
    return Report(summary=summary, problems=problems, quarantined=quarantined,
                  funnel=funnel(events, campaigns),
                  unstored=_unstored_frame(unstored, names),
                  filters={k: v for k, v in (("run_id", run_id), ("since", w.since),
                                             ("until", w.until), ("drop_ids", drops),
                                             ("pending_deadline", pending_deadline))
                           if v is not None},
                  generated_at=now)


def _verdict(r: WriteIntent, facts: dict[str, LocationFacts], now: datetime,
             deadline: timedelta, drifted: dict[int, DriftFinding]) -> Any:
    from mailsync.report.rules import Verdict

    if r.id in drifted and r.status == "done":
        return Verdict("drift", drifted[r.id].detail,  # type: ignore[index]
                       "run `mailsync verify --fix`, then replay to write it again")
    return classify(RowFacts(kind=r.kind, status=r.status, reason=r.reason,
                             attempts=r.attempts, last_http_status=r.last_http_status,
                             created_at=r.created_at),
                    facts.get(r.location_id, LocationFacts()), now, deadline)


def _problems_frame(problem_rows: list[tuple[WriteIntent, Any]],
                    who: dict[tuple[str, str], MailEvent], names: dict[str, str]) -> pd.DataFrame:
    recs = []
    for r, v in problem_rows:
        person = who.get((r.drop_id, r.recipient_key))
        recs.append({
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
        })
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


def _events(s: Session, w: _Window) -> pd.DataFrame:
    q = select(MailEvent.drop_id, MailEvent.recipient_key, MailEvent.code, MailEvent.event_at,
               MailEvent.fetched_at, MailEvent.run_id)
    if w.drop_ids:
        q = q.where(col(MailEvent.drop_id).in_(w.drop_ids))
    if w.until is not None:
        q = q.where(col(MailEvent.event_at) <= w.until)
    return pd.DataFrame(s.exec(q).all(),
                        columns=["drop_id", "recipient_key", "code", "event_at", "fetched_at",
                                 "run_id"])


def _quarantined(s: Session, w: _Window, campaigns: dict[str, Campaign]) -> pd.DataFrame:
    q = select(QuarantinedEvent)
    if w.drop_ids:
        q = q.where(col(QuarantinedEvent.drop_id).in_(w.drop_ids))
    if w.run is not None:
        q = q.where(QuarantinedEvent.run_id == w.run.id)
    recs = [{"drop_id": e.drop_id, "campaign": (campaigns.get(e.drop_id) or Campaign(
                drop_id="", location_id="")).name or "",
             "fingerprint": e.fingerprint, "reason": e.reason, "first_seen": e.first_seen,
             "run_id": e.run_id or "",
             # The raw payload carries personal data: mask emails and keep it short.
             "payload": mask_emails_in(redact(e.payload))[:300]}
            for e in s.exec(q.order_by(col(QuarantinedEvent.first_seen))).all()
            if w.covers(e.first_seen)]
    df = pd.DataFrame(recs, columns=QUARANTINE_COLUMNS)
    if not df.empty:
        df["first_seen"] = pd.to_datetime(df["first_seen"], utc=True)
    return df


def _fetched_by_drop(runs: list[tuple[SyncRun, dict[str, Any]]], w: _Window) -> dict[str, int]:
    out: dict[str, int] = {}
    for run, counts in runs:
        if w.run is not None and run.id != w.run.id:
            continue
        if w.run is None and not w.covers(run.started_at):
            continue
        for camp in counts.get("campaigns") or []:
            if isinstance(camp, dict) and camp.get("drop_id") is not None:
                d = str(camp["drop_id"])
                if not w.drop_ids or d in w.drop_ids:
                    out[d] = out.get(d, 0) + int(camp.get("fetched") or 0)
    return out


def _summary(rows: list[WriteIntent], problems: pd.DataFrame, events: pd.DataFrame,
             quarantined: pd.DataFrame, runs: list[tuple[SyncRun, dict[str, Any]]],
             w: _Window, campaigns: dict[str, Campaign]) -> pd.DataFrame:
    ledger = pd.DataFrame([(r.drop_id, r.location_id, r.status) for r in rows],
                          columns=["drop_id", "location_id", "status"])
    new = events
    if w.run is not None:
        new = events[events["run_id"] == w.run.id]
    elif w.since is not None or w.until is not None:
        fetched_at = pd.to_datetime(events["fetched_at"], utc=True)
        keep = pd.Series(True, index=events.index)
        if w.since is not None:
            keep &= fetched_at >= pd.Timestamp(w.since)
        if w.until is not None:
            keep &= fetched_at <= pd.Timestamp(w.until)
        new = events[keep]
    fetched = _fetched_by_drop(runs, w)
    drops = set(ledger["drop_id"]) | set(new["drop_id"]) | set(quarantined["drop_id"]) | set(
        fetched)
    drops |= {d for d in campaigns if not w.drop_ids or d in w.drop_ids}
    recs = []
    for drop in sorted(drops):
        camp = campaigns.get(drop)
        mine = ledger[ledger["drop_id"] == drop]
        locations = sorted(set(mine["location_id"])) or [camp.location_id if camp else ""]
        for loc in locations:
            here = mine[mine["location_id"] == loc]
            by_status = here["status"].value_counts().to_dict()
            first = loc == locations[0]  # event counts belong to the campaign, shown once
            recs.append({
                "drop_id": drop, "campaign": camp.name or "" if camp else "", "location_id": loc,
                "events_fetched": fetched.get(drop, 0) if first else 0,
                "events_new": int((new["drop_id"] == drop).sum()) if first else 0,
                "quarantined": int((quarantined["drop_id"] == drop).sum()) if first else 0,
                "planned": len(here), **{st: int(by_status.get(st, 0)) for st in STATUSES},
                "problems": int(((problems["drop_id"] == drop)
                                 & (problems["location_id"] == loc)).sum())
                if len(problems) else 0,
            })
    return pd.DataFrame(recs, columns=SUMMARY_COLUMNS)


def funnel(events: pd.DataFrame, campaigns: dict[str, Campaign] | None = None) -> pd.DataFrame:
    """How far each campaign's pieces got: recipients per journey code, exceptions, responses.

    `events` has drop_id, recipient_key and code columns; `share` is recipients over pieces
    (recipients with any stored event in the campaign).
    """
    campaigns = campaigns or {}
    recs = []
    for drop, evs in events.groupby("drop_id", sort=True):
        camp = campaigns.get(str(drop))
        country = camp.country if camp else "US"
        pieces = evs["recipient_key"].nunique()
        reached = evs.groupby("code")["recipient_key"].nunique().to_dict()
        allowed = codes_for_country(country)
        for code in MAIL_CODES:
            if code not in allowed:
                continue
            if code in EXCEPTION_CODES:
                stage = "exception"
            elif code in RESPONSE_CODES:
                stage = "response"
            elif MAIL_CODES.index(code) <= MAIL_CODES.index(JOURNEY_END):
                stage = "journey"
            else:
                continue
            n = int(reached.get(code.value, 0))
            if code in _OPTIONAL_STAGES and n == 0:
                continue  # this print network does not report it: not a drop-off
            recs.append({"drop_id": str(drop), "campaign": camp.name or "" if camp else "",
                         "country": country, "stage": stage, "code": code.value,
                         "label": REST_LABEL[code], "recipients": n, "pieces": int(pieces),
                         "share": round(n / pieces, 4) if pieces else 0.0})
    return pd.DataFrame(recs, columns=FUNNEL_COLUMNS)


def _unstored_frame(items: Iterable[dict[str, Any]], names: dict[str, str]) -> pd.DataFrame:
    recs = [{"drop_id": str(i.get("drop_id", "")), "campaign": names.get(str(i.get("drop_id")), ""),
             "event_key": i.get("event_key", ""), "code": i.get("code", ""),
             "event_at": i.get("event_at"), "recipient": i.get("recipient", ""),
             "email": mask_email(i.get("email"))} for i in items]
    df = pd.DataFrame(recs, columns=UNSTORED_COLUMNS)
    if not df.empty:
        df["event_at"] = pd.to_datetime(df["event_at"], utc=True)
    return df


# -- files ---------------------------------------------------------------------------------

def write_report_files(report: Report, out_dir: Path,
                       formats: Sequence[str] = ("csv", "json", "html")) -> list[Path]:
    """Write a built report: `problems.csv` + `quarantined.csv`, `report.json`, `report.html`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if "csv" in formats:
        for name, df in (("problems.csv", report.problems),
                         ("quarantined.csv", report.quarantined)):
            path = out_dir / name
            _csv_ready(df).to_csv(path, index=False)
            paths.append(path)
    if "json" in formats:
        path = out_dir / "report.json"
        path.write_text(report.to_json(), encoding="utf-8")
        paths.append(path)
    if "html" in formats:
        from mailsync.report.html import render_html

        path = out_dir / "report.html"
        path.write_text(render_html(report), encoding="utf-8")
        paths.append(path)
    return paths


def _csv_ready(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].map(lambda v: v.isoformat() if not pd.isna(v) else "")
    return out


def write_files(engine: Engine, out_dir: Path, **filters: Any) -> list[Path]:
    """Build the report (filters as for `build_report`) and write CSV, JSON and HTML files."""
    return write_report_files(build_report(engine, **filters), Path(out_dir))

"""Problem writes for people: grouped by recipient and cause, the fixes that unblock most first.

A recipient without a HighLevel contact has a tag and a note per event, all refused for
the same reason: support fixes the recipient once, not each write. So the report has three
levels, all masked and made of names, not ids alone:

- `steps`: one row per fix (who acts, the problem, the location, the action), with the
  recipients and writes it unblocks; a person's fixes first, the biggest first;
- `groups`: one row per campaign, recipient and problem, with the codes affected, how many
  writes, since when, the reason and the action, in the order of their step;
- `writes`: one row per ledger row (the detail), carrying its group's number.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mailsync.codes import MAIL_CODES
from mailsync.redact import redact
from mailsync.report.columns import GROUP_COLUMNS, PROBLEM_COLUMNS, STEP_COLUMNS
from mailsync.report.names import ReportNames
from mailsync.report.rules import KINDS, Owner, Verdict, mask_email, mask_emails_in
from mailsync.report.safe import MAX_REASON, outside
from mailsync.store.models import MailEvent, WriteIntent

ProblemRow = tuple[WriteIntent, Verdict]
_OWNER_ORDER = {o: i for i, o in enumerate(Owner)}
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}
_CODE_ORDER = {c.value: i for i, c in enumerate(MAIL_CODES)}
_TIMES = ("planned_at", "first_attempt_at", "last_attempt_at", "since")


def recipient_name(event: MailEvent | None, key: str) -> str:
    """A recipient's name, else their Postalytics id, for support staff."""
    if event is not None:
        name = " ".join(p for p in (event.first_name, event.last_name) if p)
        if name:
            return outside(name)
    return f"Postalytics id {outside(key[2:])}" if key.startswith("d:") else (
        f"recipient {outside(key[:12])}")


def _write_record(r: WriteIntent, v: Verdict, person: MailEvent | None,
                  names: ReportNames) -> dict[str, Any]:
    return {
        "group": 0, "problem": v.kind, "owner": v.owner.value,
        "campaign": outside(names.campaign(r.drop_id)), "drop_id": r.drop_id,
        "location": outside(names.location(r.location_id)), "location_id": r.location_id,
        "recipient": recipient_name(person, r.recipient_key),
        "email": outside(mask_email(person.email if person else None)),
        "contact_id": outside(r.contact_id), "code": r.code, "kind": r.kind,
        "status": r.status, "attempts": r.attempts, "last_http_status": r.last_http_status,
        "reason": outside(mask_emails_in(redact(v.reason)), MAX_REASON),
        "action": outside(mask_emails_in(redact(v.action)), MAX_REASON),
        "planned_at": r.created_at, "first_attempt_at": r.first_attempt_at,
        "last_attempt_at": r.last_attempt_at, "ledger_id": r.id,
        "recipient_key": r.recipient_key,
        "source": "verify" if v.kind == "drift" and r.status == "done" else "ledger",
    }


@dataclass
class _Group:
    """The writes of one campaign, location, recipient and problem."""

    writes: list[dict[str, Any]]

    def record(self) -> dict[str, Any]:
        ws = sorted(self.writes, key=lambda w: (w["last_attempt_at"] or w["planned_at"],
                                                w["ledger_id"] or 0))
        latest, first = ws[-1], ws[0]
        codes = sorted({w["code"] for w in ws}, key=lambda c: (_CODE_ORDER.get(c, 99), c))
        statuses = Counter(w["status"] for w in ws)
        reasons = {w["reason"] for w in ws}
        more = f" (and {len(reasons) - 1} other reason(s): see the writes)" if len(
            reasons) > 1 else ""
        attempted = [w for w in ws if w["last_attempt_at"] is not None]
        return {
            **{k: latest[k] for k in ("problem", "owner", "campaign", "drop_id", "location",
                                      "location_id", "recipient", "recipient_key", "action")},
            "email": next((w["email"] for w in ws if w["email"]), ""),
            "contact_id": next((w["contact_id"] for w in ws if w["contact_id"]), ""),
            "codes": ", ".join(codes), "writes": len(ws),
            "tags": sum(1 for w in ws if w["kind"] != "note"),
            "notes": sum(1 for w in ws if w["kind"] == "note"),
            "statuses": ", ".join(s if len(statuses) == 1 else f"{s} {n}"
                                  for s, n in sorted(statuses.items())),
            "since": first["planned_at"],
            "last_attempt_at": attempted[-1]["last_attempt_at"] if attempted else None,
            "last_http_status": attempted[-1]["last_http_status"] if attempted else None,
            "reason": latest["reason"] + more,
        }


def _step_key(g: dict[str, Any]) -> tuple[str, str, str, str]:
    return (g["owner"], g["problem"], g["location_id"], g["action"])


def _steps(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fix, numbered: a person's fixes first, then by writes unblocked."""
    by_fix: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        by_fix[_step_key(g)].append(g)
    steps = []
    for (owner, problem, location_id, action), gs in by_fix.items():
        steps.append({"step": 0, "owner": owner, "problem": problem, "action": action,
                      "location": gs[0]["location"], "location_id": location_id,
                      "campaigns": ", ".join(sorted({g["campaign"] for g in gs})),
                      "recipients": len({(g["drop_id"], g["recipient_key"]) for g in gs}),
                      "writes": sum(g["writes"] for g in gs)})
    steps.sort(key=lambda s: (_OWNER_ORDER[Owner(s["owner"])], -s["writes"],
                              _KIND_ORDER.get(s["problem"], 99), s["location"], s["action"]))
    for i, s in enumerate(steps, 1):
        s["step"] = i
    return steps


@dataclass
class ProblemTables:
    """The three levels of the problem writes (see the module's docstring)."""

    steps: pd.DataFrame
    groups: pd.DataFrame
    writes: pd.DataFrame


def problem_tables(rows: Sequence[ProblemRow], who: dict[tuple[str, str], MailEvent],
                   names: ReportNames) -> ProblemTables:
    """Steps, groups and writes from the ledger rows that have a problem."""
    writes = [_write_record(r, v, who.get((r.drop_id, r.recipient_key)), names)
              for r, v in rows]
    members: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for w in writes:
        members[(w["drop_id"], w["location_id"], w["recipient_key"], w["problem"])].append(w)
    groups = [(_Group(ws).record(), ws) for ws in members.values()]
    steps = _steps([g for g, _ in groups])
    step_of = {_step_key(s): s["step"] for s in steps}
    for g, _ in groups:
        g["step"] = step_of[_step_key(g)]
    groups.sort(key=lambda gw: (gw[0]["step"], -gw[0]["writes"], gw[0]["campaign"],
                                gw[0]["recipient"], gw[0]["recipient_key"]))
    for i, (g, ws) in enumerate(groups, 1):
        g["group"] = i
        for w in ws:
            w["group"] = i
    ordered = [w for _, ws in groups for w in sorted(
        ws, key=lambda w: (_CODE_ORDER.get(w["code"], 99), w["kind"], w["ledger_id"] or 0))]
    return ProblemTables(steps=_frame(steps, STEP_COLUMNS),
                         groups=_frame([g for g, _ in groups], GROUP_COLUMNS),
                         writes=_frame(ordered, PROBLEM_COLUMNS))


def _frame(recs: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(recs, columns=columns)
    if "last_http_status" in df:
        df["last_http_status"] = df["last_http_status"].astype("Int64")
    for c in _TIMES:
        if c in df:
            df[c] = pd.to_datetime(df[c], utc=True)
    return df

"""Quarantined events for people: what came, why it was kept aside, what to do.

The stored payload is the raw event as Postalytics sent it, names and street addresses
included. The report never shows it: it picks out the fields that identify the event (its
label, id, date and the recipient's Postalytics id) and masks the email; the reason is put
in words from its typed code, with the action for that code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd

from mailsync.redact import redact
from mailsync.report.columns import QUARANTINE_COLUMNS
from mailsync.report.names import ReportNames
from mailsync.report.rules import mask_email, mask_emails_in, quarantine_verdict
from mailsync.report.safe import MAX_REASON, outside
from mailsync.store.models import QuarantinedEvent

# The payload fields shown, by their key with case, `_` and `-` ignored (Postalytics' REST
# events are PascalCase, webhooks camelCase, some tools snake_case).
_SHOWN = {"event": "event", "eventtype": "event", "eventid": "event_id",
          "eventdate": "event_date", "date": "event_date", "dataid": "data_id",
          "email": "email"}
_ISO_TIME = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# A `"Key": value` pair in a payload that is not JSON any more (cut at the size cap).
_PAIR = re.compile(r'"([A-Za-z_\-]+)"\s*:\s*("(?:[^"\\]|\\.)*"|-?[\d.]+|\[[^\]]*\])')


def _key(name: str) -> str:
    return re.sub(r"[_\-\s]", "", name).lower()


def _scalar(value: Any) -> str:
    if isinstance(value, dict):  # e.g. DataId {"id": 88022}: show its one inner value
        inner = [v for v in value.values() if isinstance(v, str | int | float)]
        return str(inner[0]) if len(inner) == 1 else ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value if isinstance(v, str | int | float))
    return "" if value is None else str(value)


def event_fields(payload: str) -> dict[str, str]:
    """The identifying fields of a stored payload (never names, addresses or phones)."""
    found: dict[str, str] = {}
    try:
        data = json.loads(payload)
        pairs = list(data.items()) if isinstance(data, dict) else []
    except ValueError:
        pairs = []
        for key, raw in _PAIR.findall(payload):
            try:
                pairs.append((key, json.loads(raw)))
            except ValueError:
                continue
    for key, value in pairs:
        field = _SHOWN.get(_key(str(key)))
        if field and field not in found and (text := _scalar(value)):
            found[field] = text
    return found


def _event_date(text: str, names: ReportNames) -> str:
    """A payload's date in the operator's zone when it reads as ISO 8601, else as sent."""
    if not _ISO_TIME.match(text):  # e.g. 20261102: shown as it came, not made a time
        return outside(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return outside(text)
    local = names.local(when)
    return f"{local:%Y-%m-%d %H:%M}" if local is not None else outside(text)


def _record(e: QuarantinedEvent, names: ReportNames) -> dict[str, Any]:
    fields = event_fields(e.payload)
    code, reason, action = quarantine_verdict(e.reason_code, redact(e.reason))
    data_id = fields.get("data_id", "")
    return {"campaign": outside(names.campaign(e.drop_id)), "drop_id": e.drop_id,
            "first_seen": e.first_seen, "problem": code,
            "reason": outside(mask_emails_in(reason), MAX_REASON), "action": action,
            "event": outside(fields.get("event", "")), "event_id": outside(fields.get(
                "event_id", "")), "event_date": _event_date(fields.get("event_date", ""), names),
            "recipient": f"Postalytics id {outside(data_id)}" if data_id else "",
            "email": outside(mask_email(fields.get("email"))),
            "fingerprint": e.fingerprint, "run_id": e.run_id or ""}


def quarantine_frame(events: Iterable[QuarantinedEvent], names: ReportNames) -> pd.DataFrame:
    """One row per quarantined event: its identifying fields, the reason and the action."""
    df = pd.DataFrame([_record(e, names) for e in events], columns=QUARANTINE_COLUMNS)
    if not df.empty:
        df["first_seen"] = pd.to_datetime(df["first_seen"], utc=True)
    return df

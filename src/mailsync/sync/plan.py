"""New events → write intents for the ledger. Pure: no I/O.

Intent keys make a second identical intent impossible (the ledger's unique column):
- `tag|<drop>|<recipient>|<code>`: a tag, once per recipient and code, ever;
- `tag|<drop>|<recipient>|<code>|<event>` and `untag|<event>`: a retrigger code's removal and
  re-add for one event, so HighLevel workflows fire on every visit;
- `note|<event>`: one note per event.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailsync.codes import stored_code, tag_for
from mailsync.config import CampaignConfig
from mailsync.store.models import MailEvent, WriteIntent, WriteKind, detached, utcnow
from mailsync.sync.notes import marker_for, note_body


def plan_writes(events: Iterable[MailEvent], campaign: CampaignConfig,
                run_id: str | None = None) -> list[WriteIntent]:
    """The ledger rows that new events of a campaign cause."""
    selected = campaign.selected_codes
    retrigger = set(campaign.retrigger)
    now = utcnow()  # one time for the batch: each distinct time costs a conversion to store
    rows: list[WriteIntent] = []
    for event in events:
        code = stored_code(event.code)
        if code not in selected:
            continue
        key, drop_id, recipient = event.key, event.drop_id, event.recipient_key
        common = {"location_id": campaign.location, "drop_id": drop_id,
                  "recipient_key": recipient, "event_key": key, "code": code.value,
                  "contact_id": None, "run_id": run_id, "created_at": now, "updated_at": now}
        tag = tag_for(code)
        tag_intent = f"tag|{drop_id}|{recipient}|{code.value}"
        if code in retrigger:
            rows.append(detached(WriteIntent, intent_key=f"untag|{key}",
                                 kind=WriteKind.untag, tag=tag, **common))
            tag_intent = f"{tag_intent}|{key}"
        rows.append(detached(WriteIntent, intent_key=tag_intent, kind=WriteKind.tag, tag=tag,
                             **common))
        marker = marker_for(key)
        rows.append(detached(WriteIntent, intent_key=f"note|{key}", kind=WriteKind.note,
                             body=note_body(event, campaign.name, marker), marker=marker,
                             **common))
    return rows

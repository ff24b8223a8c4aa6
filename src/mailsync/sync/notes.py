"""The note text written on a contact's timeline, and its duplicate-detecting marker."""

from __future__ import annotations

from mailsync.codes import REST_LABEL, EventCode, describe
from mailsync.store.models import MailEvent
from mailsync.sync.normalise import short_hash

MARKER_PREFIX = "mailsync ref "


def marker_for(event_key: str) -> str:
    """The reference marker for an event: short, stable, and unlikely in anyone's prose."""
    return "ms-" + short_hash(event_key, length=16)


def note_body(event: MailEvent, campaign_name: str | None) -> str:
    """The note for one event, written for a person reading the contact's timeline."""
    code = EventCode(event.code)
    campaign = f"drop {event.drop_id}"
    if campaign_name:
        campaign = f"{campaign_name} ({campaign})"
    lines = [
        f"Postalytics: {REST_LABEL[code]}",
        f"Campaign: {campaign}",
        f"What happened: {describe(code)}",
        f"When: {event.event_at:%Y-%m-%d %H:%M} UTC",
    ]
    if event.expected_delivery:
        lines.append(f"Expected delivery: {event.expected_delivery}")
    if event.url:
        lines.append(f"Visited: {event.url}")
    lines.append(f"{MARKER_PREFIX}{marker_for(event.key)}")
    return "\n".join(lines)


def has_marker(note_text: str | None, marker: str) -> bool:
    """Whether a note fetched from HighLevel carries this marker."""
    return bool(note_text) and marker in note_text  # type: ignore[operator]


def already_there(remote_notes: object, marker: str) -> str | None:
    """The HighLevel id of a listed note carrying `marker` ("" when it has none), else None."""
    for note in remote_notes if isinstance(remote_notes, list) else []:
        if isinstance(note, dict) and has_marker(note.get("body"), marker):
            return str(note.get("id") or "")
    return None

"""Why a write is not done, or why an event was quarantined: typed codes, stored in columns.

The code is decided where the outcome is decided (apply, resolve, fetch) and read by the
report; the `reason` column beside it holds only the details (HighLevel's own words, the
field that was wrong). Words for people are rendered here from the two, so rewording a
sentence never re-classifies a row.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a ledger row is where it is (None on rows that are simply pending or done)."""

    no_contact = "no_contact"
    """The recipient has no HighLevel contact (looked up by carried id, email and phone)."""
    contact_gone = "contact_gone"
    """HighLevel says the linked contact does not exist (deleted or merged)."""
    lookup_refused = "lookup_refused"
    create_refused = "create_refused"
    lookup_unanswered = "lookup_unanswered"
    """The contact lookup or creation got no answer: tried again by the next run."""
    token_refused = "token_refused"
    refused = "refused"
    """HighLevel answered 4xx to the write itself; the details hold its words."""
    unanswered = "unanswered"
    """Retries spent on 429, 5xx or network errors: nothing is known to have happened."""
    sent_unanswered = "sent_unanswered"
    """A note was sent and no answer came: settled by its marker before anything is re-sent."""
    sending = "sending"
    """Marked just before the note's POST (a crash from here is settled by the marker)."""
    tag_missing = "tag_missing"
    """HighLevel answered the tag call, but the tag is not on the contact."""
    event_gone = "event_gone"
    daily_quota = "daily_quota"
    drift = "drift"
    """Written once, since removed in HighLevel; re-opened by `verify --fix`."""


class QuarantineReason(StrEnum):
    """Why a raw event was kept aside instead of being written."""

    bad_event = "bad_event"
    """Not a readable event: a field is missing, of the wrong type or too long."""
    unknown_code = "unknown_code"
    """The event's label is not one of Postalytics' known event codes."""
    id_reused = "id_reused"
    """Postalytics served an event id again with a different code, date or recipient."""
    unstorable = "unstorable"
    """The database refused the event's row even after its text was cleaned."""


_WORDS: dict[Reason, str] = {
    Reason.no_contact: "no HighLevel contact for {detail}",
    Reason.contact_gone: "HighLevel no longer has the contact ({detail})",
    Reason.lookup_refused: "HighLevel refused the contact lookup: {detail}",
    Reason.create_refused: "HighLevel refused to create the contact: {detail}",
    Reason.lookup_unanswered: "HighLevel did not answer the contact lookup: {detail}",
    Reason.token_refused: "HighLevel refused the location's token: {detail}",
    Reason.refused: "HighLevel refused the write: {detail}",
    Reason.unanswered: "HighLevel did not answer in time: {detail}",
    Reason.sent_unanswered: "sent, and no answer came: {detail}",
    Reason.sending: "being sent",
    Reason.tag_missing: "HighLevel answered, but the tag is not on the contact",
    Reason.event_gone: "the event behind this write is no longer stored",
    Reason.daily_quota: "HighLevel's daily request budget for the location is nearly spent",
    Reason.drift: "removed in HighLevel after it was written: {detail}",
}

_QUARANTINE_WORDS: dict[QuarantineReason, str] = {
    QuarantineReason.bad_event: "not a readable event: {detail}",
    QuarantineReason.unknown_code: "not a known event code: {detail}",
    QuarantineReason.id_reused: "Postalytics served this event id again with other content: "
                                "{detail}",
    QuarantineReason.unstorable: "the database refused the event: {detail}",
}


def describe(reason: Reason | QuarantineReason | None, detail: str | None) -> str:
    """The reason in words for a person, from its code and details."""
    if reason is None:
        return detail or ""
    template = (_WORDS[reason] if isinstance(reason, Reason)
                else _QUARANTINE_WORDS[reason])
    return template.format(detail=detail or "no detail")

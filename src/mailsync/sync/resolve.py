"""Which HighLevel contact a recipient is: carried id → cached link → lookup → (create) → none.

Lookups are cached in `contact_links`, misses too, so a run asks HighLevel once per recipient
at most. Replay re-resolves misses, since contacts may have been created since.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.clients.highlevel import HighLevelClient
from mailsync.store.models import ContactLink, GoneContact, MailEvent, utcnow
from mailsync.store.ops import insert_ignore
from mailsync.store.reasons import Reason


class MatchedBy(StrEnum):
    """How a recipient's contact was found (`contact_links.matched_by`)."""

    carried = "carried"
    email = "email"
    phone = "phone"
    created = "created"
    none = "none"
    """Looked up, not found: cached so a run asks once."""


class Resolved(StrEnum):
    """Whether resolving gave a contact, a final no, or no answer (try the next run)."""

    ok = "ok"
    rejected = "rejected"
    retry = "retry"


@dataclass(frozen=True)
class Recipient:
    """What we know of a recipient, from their latest event."""

    key: str
    drop_id: str
    carried_contact_id: str | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None

    def label(self) -> str:
        """Who this is, in words, without contact details (they end up in reasons)."""
        name = " ".join(p for p in (self.first_name, self.last_name) if p)
        ident = self.key[2:] if self.key.startswith("d:") else None
        if name and ident:
            return f"{name} (Postalytics id {ident})"
        return name or (f"Postalytics id {ident}" if ident else f"recipient {self.key[:12]}")


@dataclass(frozen=True)
class Resolution:
    """The contact for a recipient, or why there is none and whether to try again later."""

    contact_id: str | None
    matched_by: MatchedBy
    status: Resolved = Resolved.ok
    reason: Reason | None = None
    detail: str | None = None
    http_status: int | None = None


def load_recipients(engine: Engine,
                    pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Recipient]:
    """The known details of each (drop_id, recipient_key), newest event's details first."""
    out: dict[tuple[str, str], Recipient] = {}
    with Session(engine) as s:
        rows = s.exec(select(MailEvent)
                      .where(col(MailEvent.recipient_key).in_([k for _, k in pairs]))
                      .order_by(col(MailEvent.event_at))).all()
    for e in rows:
        pair = (e.drop_id, e.recipient_key)
        if pair not in pairs:
            continue
        prev = out.get(pair)

        def pick(name: str, e: MailEvent = e, prev: Recipient | None = prev) -> str | None:
            return getattr(e, name) or (getattr(prev, name) if prev else None)

        out[pair] = Recipient(key=e.recipient_key, drop_id=e.drop_id,
                              carried_contact_id=pick("carried_contact_id"), email=pick("email"),
                              phone=pick("phone"), first_name=pick("first_name"),
                              last_name=pick("last_name"))
    return out


def _save_link(engine: Engine, location_id: str, recipient_key: str, contact_id: str | None,
               matched_by: MatchedBy) -> None:
    with Session(engine) as s:
        link = s.get(ContactLink, (location_id, recipient_key)) or ContactLink(
            location_id=location_id, recipient_key=recipient_key, matched_by=matched_by)
        link.contact_id, link.matched_by, link.updated_at = contact_id, matched_by, utcnow()
        s.add(link)
        s.commit()


def forget_contact(engine: Engine, location_id: str, recipient_keys: set[str],
                   contact_id: str) -> None:
    """HighLevel no longer knows `contact_id`: drop the links to it and remember it as gone, so
    neither a carried id nor a lagging search leads to it again; the next resolve looks up."""
    with Session(engine) as s:
        s.execute(delete(ContactLink).where(
            col(ContactLink.location_id) == location_id,
            col(ContactLink.recipient_key).in_(recipient_keys),
            col(ContactLink.contact_id) == contact_id))
        insert_ignore(s, [GoneContact(location_id=location_id, contact_id=contact_id)])
        s.commit()


def _gone(s: Session, location_id: str, contact_ids: set[str | None]) -> set[str]:
    ids = [c for c in contact_ids if c]
    if not ids:
        return set()
    return set(s.exec(select(GoneContact.contact_id).where(
        GoneContact.location_id == location_id, col(GoneContact.contact_id).in_(ids))).all())


def _contact_id(data: Any) -> str | None:
    if isinstance(data, dict):
        ident = data.get("id") or data.get("_id")
        return str(ident) if ident else None
    return None


def _no_contact(who: Recipient) -> Resolution:
    return Resolution(None, MatchedBy.none, Resolved.rejected, Reason.no_contact, who.label())


async def resolve(engine: Engine, hl: HighLevelClient, location_id: str, who: Recipient, *,
                  reresolve: bool = False, create_missing: bool = False) -> Resolution:
    """Find (or, when allowed, create) the HighLevel contact for one recipient."""
    with Session(engine) as s:
        link = s.get(ContactLink, (location_id, who.key))
        gone = _gone(s, location_id, {who.carried_contact_id, link and link.contact_id})
    if who.carried_contact_id and who.carried_contact_id not in gone:
        return Resolution(who.carried_contact_id, MatchedBy.carried)
    if link is not None and link.contact_id not in gone and (link.contact_id or not reresolve):
        if link.contact_id:
            return Resolution(link.contact_id, MatchedBy(link.matched_by))
        return _no_contact(who)
    if who.email or who.phone:
        found = await _look_up(engine, hl, location_id, who)
        if found is not None:
            return found
    if create_missing and (who.email or who.phone):
        return await _create(engine, hl, location_id, who)
    _save_link(engine, location_id, who.key, None, MatchedBy.none)
    return _no_contact(who)


async def _look_up(engine: Engine, hl: HighLevelClient, location_id: str,
                   who: Recipient) -> Resolution | None:
    """The contact found by email, then phone; None when there is none (or only the gone one,
    which a lagging search index may still return)."""
    outcome = await hl.find_contact(email=who.email, phone=who.phone)
    if outcome.status == "ok":
        found = _contact_id(outcome.data)
        with Session(engine) as s:
            stale = found is not None and bool(_gone(s, location_id, {found}))
        if found and not stale:
            by = (MatchedBy.email if who.email and _matches_email(outcome.data, who.email)
                  else MatchedBy.phone)
            _save_link(engine, location_id, who.key, found, by)
            return Resolution(found, by)
        return None
    if outcome.status == "rejected":
        return Resolution(None, MatchedBy.none, Resolved.rejected, Reason.lookup_refused,
                          outcome.reason, outcome.http_status)
    # failed, unknown, deferred: HighLevel did not answer; try again next run
    return Resolution(None, MatchedBy.none, Resolved.retry, Reason.lookup_unanswered,
                      outcome.reason, outcome.http_status)


async def _create(engine: Engine, hl: HighLevelClient, location_id: str,
                  who: Recipient) -> Resolution:
    fields = {k: v for k, v in (("firstName", who.first_name), ("lastName", who.last_name),
                                ("email", who.email), ("phone", who.phone)) if v}
    outcome = await hl.upsert_contact(fields)
    created = outcome.remote_id if outcome.status == "ok" else None
    if created:
        _save_link(engine, location_id, who.key, created, MatchedBy.created)
        return Resolution(created, MatchedBy.created)
    if outcome.status == "rejected":
        return Resolution(None, MatchedBy.none, Resolved.rejected, Reason.create_refused,
                          outcome.reason, outcome.http_status)
    return Resolution(None, MatchedBy.none, Resolved.retry, Reason.lookup_unanswered,
                      f"creating the contact: {outcome.reason}", outcome.http_status)


def _matches_email(contact: Any, email: str) -> bool:
    if not isinstance(contact, dict):
        return False
    return str(contact.get("email") or "").casefold() == email.casefold()

"""Which HighLevel contact a recipient is: carried id → cached link → lookup → (create) → none.

Lookups are cached in `contact_links`, misses too, so a run asks HighLevel once per recipient
at most. Replay re-resolves misses, since contacts may have been created since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.clients.highlevel import HighLevelClient
from mailsync.store.models import ContactLink, MailEvent, utcnow


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
    matched_by: str
    status: Literal["ok", "rejected", "retry"] = "ok"
    reason: str | None = None
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
               matched_by: str) -> None:
    with Session(engine) as s:
        link = s.get(ContactLink, (location_id, recipient_key)) or ContactLink(
            location_id=location_id, recipient_key=recipient_key, matched_by=matched_by)
        link.contact_id, link.matched_by, link.updated_at = contact_id, matched_by, utcnow()
        s.add(link)
        s.commit()


def forget_link(engine: Engine, location_id: str, recipient_key: str) -> None:
    """Drop a cached link that HighLevel says is wrong (e.g. 404 Contact not found)."""
    with Session(engine) as s:
        link = s.get(ContactLink, (location_id, recipient_key))
        if link is not None:
            s.delete(link)
            s.commit()


def _contact_id(data: Any) -> str | None:
    if isinstance(data, dict):
        ident = data.get("id") or data.get("_id")
        return str(ident) if ident else None
    return None


async def resolve(engine: Engine, hl: HighLevelClient, location_id: str, who: Recipient, *,
                  reresolve: bool = False, create_missing: bool = False) -> Resolution:
    """Find (or, when allowed, create) the HighLevel contact for one recipient."""
    if who.carried_contact_id:
        return Resolution(who.carried_contact_id, "carried")
    with Session(engine) as s:
        link = s.get(ContactLink, (location_id, who.key))
    if link is not None and (link.contact_id or not reresolve):
        if link.contact_id:
            return Resolution(link.contact_id, link.matched_by)
        return Resolution(None, "none", "rejected", f"no HighLevel contact for {who.label()}")

    if who.email or who.phone:
        outcome = await hl.find_contact(email=who.email, phone=who.phone)
        if outcome.status == "ok":
            found = _contact_id(outcome.data)
            if found:
                by = "email" if who.email and _matches_email(outcome.data, who.email) else "phone"
                _save_link(engine, location_id, who.key, found, by)
                return Resolution(found, by)
        elif outcome.status == "rejected":
            return Resolution(None, "none", "rejected",
                              f"contact lookup refused: {outcome.reason}", outcome.http_status)
        else:  # failed, unknown, deferred: HighLevel did not answer; try again next run
            return Resolution(None, "none", "retry", f"contact lookup: {outcome.reason}",
                              outcome.http_status)

    if create_missing and (who.email or who.phone):
        fields = {k: v for k, v in (("firstName", who.first_name), ("lastName", who.last_name),
                                    ("email", who.email), ("phone", who.phone)) if v}
        outcome = await hl.upsert_contact(fields)
        created = outcome.remote_id if outcome.status == "ok" else None
        if created:
            _save_link(engine, location_id, who.key, created, "created")
            return Resolution(created, "created")
        if outcome.status == "rejected":
            return Resolution(None, "none", "rejected",
                              f"creating the contact was refused: {outcome.reason}",
                              outcome.http_status)
        return Resolution(None, "none", "retry", f"creating the contact: {outcome.reason}")

    _save_link(engine, location_id, who.key, None, "none")
    return Resolution(None, "none", "rejected", f"no HighLevel contact for {who.label()}")


def _matches_email(contact: Any, email: str) -> bool:
    if not isinstance(contact, dict):
        return False
    return str(contact.get("email") or "").casefold() == email.casefold()

"""Which HighLevel contact a recipient is: carried id → cached link → lookup → (create) → none.

Lookups are cached in `contact_links`, misses too, so a run asks HighLevel once per recipient
at most. Replay re-resolves misses, since contacts may have been created since. The apply
reads what the store knows of a chunk's recipients in two queries (`known_contacts`), decides
the cached ones without I/O (`cached`) and asks HighLevel about the rest (`ask`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from mailsync.clients.highlevel import HighLevelClient
from mailsync.store import ledger
from mailsync.store.models import ContactLink, GoneContact, MailEvent
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
    unreachable: bool = False
    """The lookup never reached HighLevel (refused, DNS, connect timeout)."""


_EVENTS = MailEvent.__table__  # type: ignore[attr-defined]
_LINKS = ContactLink.__table__  # type: ignore[attr-defined]
_GONE = GoneContact.__table__  # type: ignore[attr-defined]
_DETAILS = ("carried_contact_id", "email", "phone", "first_name", "last_name")


def load_recipients(engine: Engine,
                    pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Recipient]:
    """The known details of each (drop_id, recipient_key), newest event's details first."""
    if not pairs:
        return {}
    e = _EVENTS.c
    q = (select(e.drop_id, e.recipient_key, *(e[name] for name in _DETAILS))
         .where(e.recipient_key.in_(list({k for _, k in pairs}))).order_by(e.event_at))
    latest: dict[tuple[str, str], list[str | None]] = {}
    with engine.connect() as conn:
        for drop_id, key, *details in conn.execute(q):
            pair = (drop_id, key)
            if pair not in pairs:
                continue
            known = latest.setdefault(pair, details)
            if known is not details:  # a later event's blank field keeps an earlier one's
                for i, value in enumerate(details):
                    if value:
                        known[i] = value
    return {(drop_id, key): Recipient(key, drop_id, *details)
            for (drop_id, key), details in latest.items()}


@dataclass
class Known:
    """What the store knows of some recipients of a location, read at once: their links,
    and which of the contacts those name (or the recipients carry) HighLevel said are gone.
    Links decided since (looked up, created, none found) wait in `found` to be stored."""

    location_id: str
    links: dict[str, tuple[str | None, MatchedBy]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    found: list[tuple[str, str | None, str]] = field(default_factory=list)

    def link(self, who: Recipient, contact_id: str | None, matched_by: MatchedBy) -> None:
        """Remember (and queue for storing) the recipient's contact, or that there is none."""
        self.links[who.key] = (contact_id, matched_by)
        self.found.append((who.key, contact_id, matched_by.value))


def known_contacts(engine: Engine, location_id: str, recipients: Iterable[Recipient]) -> Known:
    """The links of these recipients, and every contact of the location HighLevel said is
    gone (few: the ones a write found deleted), so a lookup needs no query of its own."""
    who = list(recipients)
    known = Known(location_id)
    if not who:
        return known
    q = select(_LINKS.c.recipient_key, _LINKS.c.contact_id, _LINKS.c.matched_by).where(
        _LINKS.c.location_id == location_id,
        _LINKS.c.recipient_key.in_(list({w.key for w in who})))
    with engine.connect() as conn:
        known.links = {k: (c, MatchedBy(m)) for k, c, m in conn.execute(q)}
        known.gone = set(conn.execute(select(_GONE.c.contact_id).where(
            _GONE.c.location_id == location_id)).scalars())
    return known


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


def _contact_id(data: Any) -> str | None:
    if isinstance(data, dict):
        ident = data.get("id") or data.get("_id")
        return str(ident) if ident else None
    return None


def _no_contact(who: Recipient) -> Resolution:
    return Resolution(None, MatchedBy.none, Resolved.rejected, Reason.no_contact, who.label())


def cached(who: Recipient, known: Known, reresolve: bool = False) -> Resolution | None:
    """The resolution the store already holds (carried id, cached link or cached miss), or
    None when HighLevel must be asked."""
    if who.carried_contact_id and who.carried_contact_id not in known.gone:
        return Resolution(who.carried_contact_id, MatchedBy.carried)
    link = known.links.get(who.key)
    if link is not None and link[0] not in known.gone and (link[0] or not reresolve):
        if link[0]:
            return Resolution(link[0], link[1])
        return _no_contact(who)
    return None


async def resolve(engine: Engine, hl: HighLevelClient, location_id: str, who: Recipient, *,
                  reresolve: bool = False, create_missing: bool = False,
                  known: Known | None = None) -> Resolution:
    """Find (or, when allowed, create) the HighLevel contact for one recipient.

    With `known` (read for many recipients at once by `known_contacts`), links found are
    queued on it for the caller to store; without, they are stored here."""
    own = known is None
    known = known or known_contacts(engine, location_id, [who])
    try:
        return cached(who, known, reresolve) or await ask(
            hl, known, who, create_missing=create_missing)
    finally:
        if own:
            ledger.save_links(engine, location_id, known.found)


async def ask(hl: HighLevelClient, known: Known, who: Recipient, *,
              create_missing: bool = False) -> Resolution:
    """Ask HighLevel for the recipient's contact (by email, then phone), create it when
    allowed, else record that there is none; the link decided is queued on `known`."""
    if who.email or who.phone:
        found = await _look_up(hl, known, who)
        if found is not None:
            return found
    if create_missing and (who.email or who.phone):
        return await _create(hl, known, who)
    known.link(who, None, MatchedBy.none)
    return _no_contact(who)


async def _look_up(hl: HighLevelClient, known: Known, who: Recipient) -> Resolution | None:
    """The contact found by email, then phone; None when there is none (or only the gone one,
    which a lagging search index may still return)."""
    outcome = await hl.find_contact(email=who.email, phone=who.phone)
    if outcome.status == "ok":
        found = _contact_id(outcome.data)
        if found and found not in known.gone:
            by = (MatchedBy.email if who.email and _matches_email(outcome.data, who.email)
                  else MatchedBy.phone)
            known.link(who, found, by)
            return Resolution(found, by)
        return None
    if outcome.status == "rejected":
        return Resolution(None, MatchedBy.none, Resolved.rejected, Reason.lookup_refused,
                          outcome.reason, outcome.http_status)
    # failed, unknown, deferred: HighLevel did not answer; try again next run
    return Resolution(None, MatchedBy.none, Resolved.retry, Reason.lookup_unanswered,
                      outcome.reason, outcome.http_status, outcome.unreachable)


async def _create(hl: HighLevelClient, known: Known, who: Recipient) -> Resolution:
    fields = {k: v for k, v in (("firstName", who.first_name), ("lastName", who.last_name),
                                ("email", who.email), ("phone", who.phone)) if v}
    outcome = await hl.upsert_contact(fields)
    created = outcome.remote_id if outcome.status == "ok" else None
    if created:
        known.link(who, created, MatchedBy.created)
        return Resolution(created, MatchedBy.created)
    if outcome.status == "rejected":
        return Resolution(None, MatchedBy.none, Resolved.rejected, Reason.create_refused,
                          outcome.reason, outcome.http_status)
    return Resolution(None, MatchedBy.none, Resolved.retry, Reason.lookup_unanswered,
                      f"creating the contact: {outcome.reason}", outcome.http_status,
                      outcome.unreachable)


def _matches_email(contact: Any, email: str) -> bool:
    if not isinstance(contact, dict):
        return False
    return str(contact.get("email") or "").casefold() == email.casefold()

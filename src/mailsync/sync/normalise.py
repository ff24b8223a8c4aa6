"""Raw Postalytics events → MailEvent rows, or quarantine with a reason.

The live event shape is undocumented, so keys are matched case- and underscore-insensitively
through one alias table (`FIELD_ALIASES`): when the real shape is seen, only that changes.

One event may arrive twice, by webhook and from the events endpoint, and only the REST shape
has an event id. What both carry is the campaign, the code, the event time and who the piece
went to, so every event gets a **match key**: hash(drop, code, event time to the second,
person), where the person is the carried HighLevel contact id when there is one, else the
normalised name and 5-digit zip, else the email (`person_key`). A webhook event is known by
its match key alone (`w:<match key>`); a REST event keeps `e:<drop>:<EventId>`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from mailsync.codes import EventCode, UnknownEventLabel, parse_code
from mailsync.store.models import EventSource, MailEvent, QuarantinedEvent, detached, utcnow
from mailsync.store.reasons import QuarantineReason

# Folded key (lower case, no underscores or dashes) → our field. First match wins.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    # Not the webhook's mailId: that names the piece, and a piece has many events.
    "event_id": ("eventid", "id"),
    "label": ("event", "eventtype", "eventname", "status", "type"),
    "event_at": ("eventdate", "eventdatetime", "date", "timestamp", "createdat"),
    "expected_delivery": ("expecteddeliverydate", "expecteddelivery"),
    "recipient_id": ("dataid", "contactid", "recipientid"),
    "first_name": ("firstname", "first"),
    "last_name": ("lastname", "last"),
    # The webhook's `To` names the receiver in one field.
    "full_name": ("name", "fullname", "recipientname"),
    "zip": ("zip", "zipcode", "postalcode", "postcode"),
    "email": ("email", "emailaddress"),
    "phone": ("phone", "phonenumber", "mobile"),
    "var_fields": ("varfields", "variablefields", "fields"),
    "metadata": ("metadata", "meta"),
    "url": ("url", "purl", "visitedurl"),
    # The webhook's piece (one per recipient and campaign); documented as internal.
    "piece_id": ("mailid", "pieceid"),
}
# Containers the recipient fields may be nested in (the webhook's `To` section, the REST
# `Address`; a webhook's `To.address` is the street, a string, and is not a container).
RECIPIENT_CONTAINERS = ("to", "recipient", "contact", "address")
# A webhook's own delivery fields: they change on every retry, so they are no part of the
# event (and `status`, the HTTP result of the delivery, must not be read as its label).
WEBHOOK_DELIVERY_FIELDS = frozenset({"status", "statusdescription", "retryattempts"})
MATCH_VERSION = "m1"
"""Part of every match key: a change to how keys are made must change this."""

MAX_LEN = {"event_id": 64, "recipient_id": 64, "first_name": 255, "last_name": 255,
           "email": 320, "phone": 64, "expected_delivery": 32, "url": 2048,
           "carried_contact_id": 255, "label": 64, "full_name": 510, "zip": 16,
           "piece_id": 64}
MAX_PAYLOAD_CHARS = 20000

# What a database cannot hold in text: PostgreSQL refuses NUL, and neither driver can encode a
# lone UTF-16 surrogate ("\ud800" is valid JSON). Other C0 controls are noise in a name.
_UNSTORABLE = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff]")


def _replace_unstorable(match: re.Match[str]) -> str:
    return "\ufffd" if match.group() >= "\ud800" else ""


def clean_text(text: str) -> str:
    """Text any store can hold: C0 controls but tab and newline dropped, lone surrogates
    made U+FFFD (json.loads has already joined the valid pairs)."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(_replace_unstorable, text)


class BadEvent(ValueError):
    """A raw event that cannot become a MailEvent; the message is the reason."""


@dataclass(frozen=True)
class Normalised:
    """The outcome for one raw event: exactly one of `event` and `quarantine` is set."""

    event: MailEvent | None = None
    quarantine: QuarantinedEvent | None = None

    @property
    def key(self) -> str:
        """The store key this raw event is known by (event key or quarantine fingerprint)."""
        if self.event is not None:
            return self.event.key
        assert self.quarantine is not None
        return self.quarantine.fingerprint


@functools.lru_cache(maxsize=4096)
def _fold(key: str) -> str:
    # Cached: every event repeats the same few dozen keys (a quarter of normalising was this).
    return key.replace("_", "").replace("-", "").casefold()


def _folded(obj: dict[str, Any]) -> dict[str, Any]:
    return {_fold(k): v for k, v in obj.items() if isinstance(k, str)}


def _pick(folded: dict[str, Any], field: str) -> Any:
    for alias in FIELD_ALIASES[field]:
        if alias in folded and folded[alias] is not None:
            return folded[alias]
    return None


def _text(field: str, value: Any, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise BadEvent(f"missing {field}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadEvent(f"{field} has the wrong type ({type(value).__name__})")
    text = clean_text(str(value)).strip()
    limit = MAX_LEN.get(field)
    if limit is not None and len(text) > limit:
        raise BadEvent(f"{field} is {len(text)} characters long (at most {limit})")
    return text or None


def _lenient(field: str, value: Any) -> str | None:
    """`_text`, or None where it would refuse the value."""
    try:
        return _text(field, value)
    except BadEvent:
        return None


def parse_time(value: Any) -> datetime:
    """An event time as aware UTC: ISO 8601 (naive means UTC) or epoch seconds/milliseconds."""
    if isinstance(value, bool) or value is None or value == "":
        raise BadEvent("missing event date")
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 10**11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise BadEvent(f"event date {value!r} is out of range") from None
    if not isinstance(value, str):
        raise BadEvent(f"event date has the wrong type ({type(value).__name__})")
    text = value.strip()
    if len(text) > 40:
        raise BadEvent("event date is not a date")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadEvent(f"event date {text!r} is not an ISO 8601 date") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def short_hash(*parts: object, length: int = 32) -> str:
    """A stable hex digest of the parts, for deterministic keys."""
    try:
        joined = "\x1f".join(parts)  # type: ignore[arg-type]  # all text: nearly every call
    except TypeError:
        joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def recipient_key(recipient_id: str | None, email: str | None, phone: str | None,
                  first: str | None, last: str | None) -> str:
    """Postalytics' recipient id when it sends one, else a hash of who the piece went to."""
    if recipient_id:
        return f"{RecipientKind.data_id.value}:{recipient_id}"[:80]
    if not (email or phone or first or last):
        raise BadEvent("no recipient: no DataId, email, phone or name")
    return f"{RecipientKind.hashed.value}:" + short_hash((email or "").casefold(), phone, first,
                                                         last, length=40)


class RecipientKind(StrEnum):
    """What a recipient key is made from (its prefix)."""

    data_id = "d"
    """Postalytics' recipient id (`DataId`), which only the events endpoint sends."""
    hashed = "h"
    """A hash of the email, phone and name the event carried."""
    unidentified = "u"
    """A webhook's person with nothing to find their contact by (no carried id, email or
    phone) and no event stored before: their writes wait until the poll reads who it is."""


def recipient_kind(key: str) -> RecipientKind:
    """The kind of a recipient key."""
    return RecipientKind(key.partition(":")[0])


def unidentified_recipient(person: str) -> str:
    """The recipient key of a person the store cannot identify yet (see RecipientKind)."""
    return f"{RecipientKind.unidentified.value}:{person}"


_NOT_ASCII_ALNUM = re.compile("[^0-9a-z]")


def name_form(*parts: str | None) -> str:
    """A name as both channels can give it: "Ada Byrne", or "Ada" and "Byrne", or "ADA
    BYRNE" all become "adabyrne" (letters and digits only, accents and case folded)."""
    text = " ".join(p for p in parts if p)
    if text.isascii():  # nearly always: what NFKD and casefold leave of it, at once
        return _NOT_ASCII_ALNUM.sub("", text.lower())
    text = unicodedata.normalize("NFKD", text).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def zip_form(zip_code: str | None) -> str | None:
    """A postal code for matching: the 5-digit ZIP of a US code ("02110-1234" → "02110"),
    else the code's letters and digits upper-cased (Canada: "m5v 2t6" → "M5V2T6")."""
    text = "".join(ch for ch in (zip_code or "") if ch.isalnum()).upper()
    if len(text) >= 5 and text[:5].isdigit():
        return text[:5]
    return text if len(text) >= 3 else None


def person_key(carried: str | None, first: str | None, last: str | None,
               zip_code: str | None, email: str | None) -> str | None:
    """Who the piece went to, from what the webhook and the events endpoint both carry: the
    carried HighLevel contact id, else the name and zip, else the email; None if none.

    The order depends only on the recipient's own list data, which both channels echo, so
    both compute the same key for one person.
    """
    if carried:
        return short_hash("c", carried.strip(), length=40)
    name, zip5 = name_form(first, last), zip_form(zip_code)
    if name and zip5:
        return short_hash("n", name, zip5, length=40)
    if email and email.strip():
        return short_hash("e", email.strip().casefold(), length=40)
    return None


def match_key(drop_id: str, code: str, event_at: datetime, person: str) -> str:
    """The event's identity across channels: campaign, code, time to the second, person."""
    return short_hash(MATCH_VERSION, drop_id, code, to_the_second(event_at), person,
                      length=40)


def to_the_second(at: datetime) -> str:
    """`at` in UTC as "YYYY-MM-DDTHH:MM:SS", the text strftime gave: isoformat writes it at a
    fraction of the cost, but pads years before 1000, and a stored key must never change."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    if at.year < 1000:
        return at.strftime("%Y-%m-%dT%H:%M:%S")
    return at.isoformat(timespec="seconds")[:19]  # without the "+00:00"


def webhook_event_key(match: str) -> str:
    """The key of an event first stored from a webhook (it has no event id)."""
    return "w:" + match


def _canonical(raw: object) -> str:
    try:
        text = json.dumps(raw, sort_keys=True, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(raw)
    if len(text) > MAX_PAYLOAD_CHARS:
        text = text[:MAX_PAYLOAD_CHARS] + f"... [{len(text) - MAX_PAYLOAD_CHARS} more chars]"
    return text


def payload_text(raw: object) -> str:
    """The raw payload as stored in quarantine: canonical JSON, capped in size, and ASCII so
    that any store can hold it (a lone surrogate or a NUL becomes its JSON escape)."""
    try:
        text = json.dumps(raw, sort_keys=True, default=repr, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(raw)
    if len(text) > MAX_PAYLOAD_CHARS:
        text = text[:MAX_PAYLOAD_CHARS] + f"... [{len(text) - MAX_PAYLOAD_CHARS} more chars]"
    return clean_text(text)


def fingerprint(raw: object, drop_id: str) -> str:
    """The quarantine key of a raw event: the same payload served again is the same row."""
    # Hashed from the unescaped JSON, as before payloads were stored ASCII-only, so rows
    # quarantined by earlier versions keep their keys.
    return "q:" + short_hash(drop_id, _canonical(raw), length=40)


def quarantined(raw: object, drop_id: str, reason: QuarantineReason, detail: str,
                run_id: str | None = None) -> QuarantinedEvent:
    """The quarantine row for a raw event, with its reason code and details."""
    return detached(QuarantinedEvent, fingerprint=fingerprint(raw, drop_id), drop_id=drop_id,
                    payload=payload_text(raw), reason=clean_text(detail), reason_code=reason,
                    run_id=run_id)


def without_delivery_fields(raw: object) -> object:
    """A webhook payload without its delivery fields (`status`, `statusDescription`,
    `retryAttempts`): a retried delivery is then the same payload, quarantined once."""
    if not isinstance(raw, dict):
        return raw
    return {k: v for k, v in raw.items()
            if not (isinstance(k, str) and _fold(k) in WEBHOOK_DELIVERY_FIELDS)}


def normalise(raw: object, drop_id: str, contact_id_field: str | None = None,
              run_id: str | None = None, source: EventSource = EventSource.poll,
              fetched_at: datetime | None = None) -> Normalised:
    """Turn one raw event into a MailEvent, or into a QuarantinedEvent with the reason.

    A webhook payload (`source=webhook`) loses its delivery fields first, and must name its
    person well enough to be matched with the events endpoint, or it is quarantined.
    `fetched_at` (default: now) is one time for a page's events.
    """
    if source == EventSource.webhook:
        raw = without_delivery_fields(raw)
    try:
        return Normalised(event=_to_event(raw, drop_id, contact_id_field, run_id, source,
                                          fetched_at or utcnow()))
    except BadEvent as exc:
        code, detail = QuarantineReason.bad_event, str(exc)
    except UnknownEventLabel as exc:
        code, detail = QuarantineReason.unknown_code, str(exc)
    except Exception as exc:  # never a crash on bad input: keep it with the reason
        code, detail = QuarantineReason.bad_event, f"unreadable event ({exc.__class__.__name__})"
    return Normalised(quarantine=quarantined(raw, drop_id, code, detail, run_id))


def _recipient_fields(top: dict[str, Any]) -> dict[str, Any]:
    """The recipient's fields, folded: at the top or in a nested section (the webhook's `To`,
    the REST `Address`); the top wins, then the first section."""
    person = dict(top)
    for container in RECIPIENT_CONTAINERS:
        if isinstance(top.get(container), dict):
            person = {**_folded(top[container]), **person}
    for container in ("to", "recipient", "contact"):  # an address inside the `To` section
        inner = person.get(container)
        nested = inner.get("address") if isinstance(inner, dict) else None
        if isinstance(nested, dict):
            person = {**_folded(nested), **person}
    return person


def _label(top: dict[str, Any]) -> EventCode:
    label = _pick(top, "label")
    if label is None:
        raise BadEvent("missing event label")
    if isinstance(label, str):
        label = clean_text(label)
        if len(label) > MAX_LEN["label"]:
            raise BadEvent(f"event label is {len(label)} characters long")
    code = parse_code(label)
    if code in (EventCode.NONE,):
        raise BadEvent("status None: not a mail event")
    return code


def _names(person: dict[str, Any]) -> tuple[str | None, str | None]:
    """First and last name; a single full name (the webhook's `To.name`) is split at its
    last space, which `name_form` joins again, so matching does not depend on the split."""
    first = _text("first_name", _pick(person, "first_name"))
    last = _text("last_name", _pick(person, "last_name"))
    if first or last:
        return first, last
    full = _text("full_name", _pick(person, "full_name"))
    if not full:
        return None, None
    head, _, tail = full.rpartition(" ")
    return (head.strip() or None, tail) if head else (full, None)


def _to_event(raw: object, drop_id: str, contact_id_field: str | None,
              run_id: str | None, source: EventSource, fetched_at: datetime) -> MailEvent:
    if not isinstance(raw, dict):
        raise BadEvent(f"event is a {type(raw).__name__}, not an object")
    top = _folded(raw)
    person = _recipient_fields(top)
    code = _label(top)
    event_at = parse_time(_pick(top, "event_at"))

    meta = _pick(top, "metadata")
    meta = _folded(meta) if isinstance(meta, dict) else {}
    url = _text("url", _pick(meta, "url") or _pick(top, "url"))

    var_fields = _pick(top, "var_fields") or _pick(meta, "var_fields")
    variables = _folded(var_fields) if isinstance(var_fields, dict) else {}
    carried = None
    if contact_id_field:
        carried = _text("carried_contact_id", variables.get(_fold(contact_id_field)))

    recipient_id = _text("recipient_id", _pick(person, "recipient_id"))
    first, last = _names(person)
    # The webhook carries no email of its own: the list's variable data may.
    email = _text("email", _pick(person, "email") or _pick(variables, "email"))
    phone = _text("phone", _pick(person, "phone") or _pick(variables, "phone"))
    zip_code = _text("zip", _pick(person, "zip"))
    rkey = recipient_key(recipient_id, email, phone, first, last)
    who = person_key(carried, first, last, zip_code, email)
    # Documented as internal: a piece id that is not a short text is ignored, never a
    # reason to refuse the event.
    piece = _lenient("piece_id", _pick(top, "piece_id"))
    if source == EventSource.webhook and not recipient_id:
        # Without a DataId, names alone would make two namesakes one recipient (one contact
        # link, one carried id for both): the piece and the carried id keep them apart.
        rkey = f"{RecipientKind.hashed.value}:" + short_hash(
            "webhook", carried, piece, (email or "").casefold(), phone, who, length=40)
    match = match_key(drop_id, code.value, event_at, who) if who else None

    event_id = _text("event_id", _pick(top, "event_id"))
    if event_id:
        key = f"e:{drop_id}:{event_id}"
    elif source == EventSource.webhook:
        if match is None:
            raise BadEvent("nothing to match it with the events endpoint by: no carried "
                           "contact id, no name with a zip, no email")
        key = webhook_event_key(match)
    else:
        key = "h:" + short_hash(drop_id, rkey, code.value, event_at.isoformat(), url)
    return detached(
        MailEvent, key=key[:80], drop_id=drop_id, recipient_key=rkey, code=code.value,
        event_at=event_at,
        expected_delivery=_text("expected_delivery", _pick(top, "expected_delivery")),
        url=url, first_name=first, last_name=last, email=email, phone=phone,
        carried_contact_id=carried, run_id=run_id, match_key=match, person_key=who,
        zip=zip_code, source=source, piece_id=piece, fetched_at=fetched_at,
    )

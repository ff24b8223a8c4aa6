"""The note text written on a contact's timeline, and its duplicate-detecting marker."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, urlsplit

from mailsync.codes import REST_LABEL, EventCode, describe, stored_code
from mailsync.store.models import MailEvent
from mailsync.sync.normalise import short_hash, to_the_second

MARKER_PREFIX = "mailsync ref "


def marker_for(event_key: str) -> str:
    """The reference marker for an event: short, stable, and unlikely in anyone's prose."""
    return "ms-" + short_hash(event_key, length=16)


LINK_SCHEMES = frozenset({"http", "https"})
"""The only links a note carries: anything else (`javascript:`, `data:`, `file:`) could run
or load something when a HighLevel user clicks it."""
URL_CAP = 2048

# Control and invisible formatting characters (C0 but none kept, DEL, C1, zero-width, bidi
# overrides): each value is one line of the note, and what it shows is what it says.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e"
                       r"\u2060-\u2064\u2066-\u2069\ufeff]")
# Characters a URL never holds raw: percent-encoded, so the link cannot break out of itself.
_URL_UNSAFE = '"<>\\^`{|} '
_HAS_URL_UNSAFE = re.compile("[" + re.escape(_URL_UNSAFE) + "]")


def clean_line(value: object) -> str:
    """One line of outside data for a note: control characters become spaces, runs of
    whitespace one space."""
    return " ".join(_CONTROLS.sub(" ", str(value)).split())


def safe_link(url: str) -> tuple[str | None, str | None]:
    """(the URL to write as a link, or None; why it was not written, or None).

    Only an absolute http(s) URL with a host is a link; it is percent-encoded where it holds
    characters a URL never holds raw. Any other scheme is dropped and named, never passed.
    """
    text = clean_line(url)
    if not text:
        return None, None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None, "a visited URL that could not be read was left out"
    scheme = parts.scheme.lower()
    if scheme in LINK_SCHEMES and not parts.netloc:
        return None, "a link without a host was left out"
    if scheme not in LINK_SCHEMES:
        kind = f"a {scheme} link" if scheme else "a link without http(s)"
        return None, f"{kind} was left out (only http and https links are written)"
    quoted = text
    if _HAS_URL_UNSAFE.search(text):  # rare: checked at once, encoded character by character
        quoted = "".join(quote(c, safe="") if c in _URL_UNSAFE else c for c in text)
    if len(quoted) > URL_CAP:
        return None, "a visited URL longer than 2,048 characters was left out"
    return quoted, None


def note_body(event: MailEvent, campaign_name: str | None, marker: str | None = None) -> str:
    """The note for one event, written for a person reading the contact's timeline.

    Every value from outside is one clean line, and only http(s) links are written: a note
    is read (and its links clicked) inside HighLevel.
    """
    lines = [*_heading(stored_code(event.code), event.drop_id, campaign_name),
             f"When: {to_the_second(event.event_at).rpartition(':')[0].replace('T', ' ')} UTC"]
    expected = event.expected_delivery
    if expected and (expected := clean_line(expected)):
        lines.append(f"Expected delivery: {expected}")
    if url := event.url:
        link, dropped = safe_link(url)
        if link:
            lines.append(f"Visited: {link}")
        elif dropped:
            lines.append(f"Visited: {dropped}")
    lines.append(f"{MARKER_PREFIX}{marker or marker_for(event.key)}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=256)
def _heading(code: EventCode, drop_id: str, campaign_name: str | None) -> tuple[str, ...]:
    """A note's first lines, the same for every event of a code in a campaign (cached: a
    sync writes thousands of notes from a few campaigns' few codes)."""
    campaign = f"drop {clean_line(drop_id)}"
    if campaign_name and (name := clean_line(campaign_name)):
        campaign = f"{name} ({campaign})"
    return (f"Postalytics: {REST_LABEL[code]}", f"Campaign: {campaign}",
            f"What happened: {describe(code)}")


def has_marker(note_text: str | None, marker: str) -> bool:
    """Whether a note fetched from HighLevel carries this marker."""
    return bool(note_text) and marker in note_text  # type: ignore[operator]


def already_there(remote_notes: object, marker: str) -> str | None:
    """The HighLevel id of a listed note carrying `marker` ("" when it has none), else None."""
    for note in remote_notes if isinstance(remote_notes, list) else []:
        if isinstance(note, dict) and has_marker(note.get("body"), marker):
            return str(note.get("id") or "")
    return None

"""HighLevel's end state against the one Postalytics' ground truth implies.

Expected: every selected code of a matched recipient's events as a tag on their contact, and
exactly one note per selected event (found by the note's marker); nothing else of ours.
The demo ends with this check and the end-to-end tests assert it.

An event's note carries the marker of the key it was stored under: `e:<drop>:<EventId>` when
the poll stored it first, `w:<match key>` when its webhook did. Either counts, once: a note
under each would be a duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailsync.codes import EventCode, code_from_tag, codes_for_country, parse_code, tag_for, tag_key
from mailsync.sync.normalise import match_key, person_key, webhook_event_key
from mailsync.sync.notes import MARKER_PREFIX, marker_for


@dataclass
class EndState:
    """Differences between HighLevel and the truth; empty lists mean exact."""

    expected_tags: int = 0
    expected_notes: int = 0
    missing_tags: list[tuple[str, str]] = field(default_factory=list)
    extra_tags: list[tuple[str, str]] = field(default_factory=list)
    missing_notes: list[tuple[str, str]] = field(default_factory=list)
    duplicate_notes: list[tuple[str, str, int]] = field(default_factory=list)
    extra_notes: list[tuple[str, str]] = field(default_factory=list)
    unmatched_events: int = 0
    """Selected events of recipients with no HighLevel contact (they must be rejected rows)."""

    @property
    def exact(self) -> bool:
        """Whether HighLevel holds exactly what the truth implies."""
        return not (self.missing_tags or self.extra_tags or self.missing_notes
                    or self.duplicate_notes or self.extra_notes)

    def describe(self) -> str:
        """One line per kind of difference, for test failures and the demo."""
        if self.exact:
            return (f"exact: {self.expected_tags} tags and {self.expected_notes} notes as "
                    f"expected; {self.unmatched_events} events had no HighLevel contact")
        parts = []
        for name in ("missing_tags", "extra_tags", "missing_notes", "duplicate_notes",
                     "extra_notes"):
            items = getattr(self, name)
            if items:
                parts.append(f"{len(items)} {name.replace('_', ' ')} (e.g. {items[0]})")
        return "; ".join(parts)


def _marker_of(body: str) -> str | None:
    idx = body.rfind(MARKER_PREFIX)
    if idx < 0:
        return None
    return body[idx + len(MARKER_PREFIX):].split()[0] if body[idx + len(MARKER_PREFIX):] else None


def event_markers(drop: str, ev: Mapping[str, Any], who: Mapping[str, Any] | None,
             carried_field: str | None) -> tuple[str, ...]:
    """The markers the event's note may carry: from its REST key, and from the key its
    webhook would have stored it under (see sync.normalise)."""
    markers = [marker_for(f"e:{drop}:{ev['event_id']}")]
    if who is not None:
        carried = (who.get("var_fields") or {}).get(carried_field or "") or None
        zip_code = (who.get("address") or {}).get("Zip")
        person = person_key(carried, who.get("first_name"), who.get("last_name"), zip_code,
                            who.get("email"))
        if person is not None:
            at = datetime.fromisoformat(str(ev["event_date"]).replace("Z", "+00:00"))
            markers.append(marker_for(webhook_event_key(
                match_key(drop, parse_code(ev["code"]).value, at, person))))
    return tuple(markers)


def compare(truth: Mapping[str, Any], recipients: Iterable[Mapping[str, Any]],
            state: Mapping[str, Any],
            selected: Mapping[str, Iterable[EventCode | str]] | None = None) -> EndState:
    """Compare the sandbox's HighLevel state with its Postalytics truth.

    `selected` maps drop id → codes written (default: every code of the campaign's country).
    """
    people = {(str(r["drop_id"]), str(r["data_id"])): r for r in recipients}
    contact_of = {k: r.get("hl_contact_id") for k, r in people.items()}
    want_tags: set[tuple[str, str]] = set()
    want_notes: dict[str, tuple[str, str]] = {}  # marker → (contact id, the event's REST key)
    out = EndState()
    for camp in truth["campaigns"]:
        drop = str(camp["drop_id"])
        codes = ({parse_code(c) for c in selected[drop]} if selected and drop in selected
                 else set(codes_for_country(camp.get("country", "US"))))
        for ev in camp["events"]:
            if ev.get("malformed"):
                continue
            code = parse_code(ev["code"])
            if code not in codes:
                continue
            contact = contact_of.get((drop, str(ev["data_id"])))
            if not contact:
                out.unmatched_events += 1
                continue
            want_tags.add((contact, tag_key(tag_for(code))))
            for marker in event_markers(drop, ev, people.get((drop, str(ev["data_id"]))),
                                   camp.get("contact_id_field")):
                want_notes[marker] = (contact, f"e:{drop}:{ev['event_id']}")

    have_tags: set[tuple[str, str]] = set()
    note_count: Counter[tuple[str, str]] = Counter()
    for contact in state["contacts"]:
        cid = contact["id"]
        for tag in contact.get("tags") or []:
            if code_from_tag(tag) is not None:
                have_tags.add((cid, tag_key(tag)))
        for note in contact.get("notes") or []:
            marker = _marker_of(str(note.get("body") or ""))
            if marker:
                note_count[(cid, marker)] += 1

    per_event: dict[tuple[str, str], list[str]] = {}
    for marker, (contact, event) in want_notes.items():
        per_event.setdefault((contact, event), []).append(marker)
    out.expected_tags, out.expected_notes = len(want_tags), len(per_event)
    out.missing_tags = sorted(want_tags - have_tags)
    out.extra_tags = sorted(have_tags - want_tags)
    for (contact, _event), markers in per_event.items():
        n = sum(note_count.get((contact, m), 0) for m in markers)
        if n == 0:
            out.missing_notes.append((contact, markers[0]))
        elif n > 1:
            out.duplicate_notes.append((contact, markers[0], n))
    out.extra_notes = sorted(k for k in note_count
                             if (want_notes.get(k[1]) or ("",))[0] != k[0])
    return out

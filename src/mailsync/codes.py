"""The Postalytics event vocabulary: codes, every spelling of them, US/CA sets, HighLevel tags.

One code has several spellings (CRM name, REST label, webhook integer). When the live event
shape is seen, only the alias table below should need to change.
"""

from __future__ import annotations

import difflib
import functools
import re
from enum import StrEnum


class EventCode(StrEnum):
    """One Postalytics event; the value is the HighLevel tag suffix."""

    MailPieceCreated = "MailPieceCreated"
    Addressed = "Addressed"
    Printed = "Printed"
    Mailed = "Mailed"
    InTransit = "InTransit"
    InLocalArea = "InLocalArea"
    ProcessedForDelivery = "ProcessedForDelivery"
    ReRouted = "ReRouted"
    ReturnedToSender = "ReturnedToSender"
    pURLOpened = "pURLOpened"
    pURLCompleted = "pURLCompleted"
    # Postalytics statuses that are not mail events: they parse, but never become tags.
    NONE = "None"
    Error = "Error"


class UnknownEventLabel(ValueError):
    """A label or integer that names no known event code. The message is short (it is kept
    with every quarantined event); `choices` is the longer form for a person typing codes."""

    def __init__(self, label: object) -> None:
        self.label = label
        shown = repr(label)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.shown = shown
        super().__init__(f"unknown event label {shown}")

    def choices(self) -> str:
        """`unknown event code 'Mailled' (did you mean Mailed?): the codes are MailPieceCreated,
        ...` (the closest spelling, then every code a config may name)."""
        guess = closest_code(self.label) if isinstance(self.label, str) else None
        hint = f" (did you mean {guess.value}?)" if guess else ""
        return (f"unknown event code {self.shown}{hint}: the codes are "
                f"{', '.join(c.value for c in MAIL_CODES)}")


# (code, REST label, other spellings, webhook eventType, meaning for a person)
_TABLE: list[tuple[EventCode, str, tuple[str, ...], int | None, str]] = [
    (EventCode.MailPieceCreated, "Mail Piece Created", (), 0,
     "the final PDF was generated and sent to the print network"),
    (EventCode.Addressed, "Addressed", (), 9, "addressing was completed"),
    (EventCode.Printed, "Printed", (), 10, "printing was completed"),
    (EventCode.Mailed, "Mailed", (), 11, "first postal scan: the piece is in the mail stream"),
    (EventCode.InTransit, "In Transit", (), 4, "processed at the entry or origin facility"),
    (EventCode.InLocalArea, "In Local Area", (), 5, "processed at the destination facility"),
    (EventCode.ProcessedForDelivery, "Processed for Delivery", (), 6,
     "out for delivery within 1-2 business days"),
    (EventCode.ReRouted, "Re-Routed", (), 2,
     "re-routed: change of address, address error or relabelled"),
    (EventCode.ReturnedToSender, "Returned To Sender", ("Return to Sender",), 3,
     "returned to sender: barcode, ID tag or address error (not always final)"),
    (EventCode.pURLOpened, "pURL Opened", (), 7, "the recipient visited their personal URL"),
    (EventCode.pURLCompleted, "purl Completed", ("pURL Completed",), 8,
     "the recipient reached the goal page of their personal URL"),
    (EventCode.NONE, "None", (), None, "no event"),
    (EventCode.Error, "Error", (), None, "Postalytics reported an error for this piece"),
]

MAIL_CODES: tuple[EventCode, ...] = tuple(
    row[0] for row in _TABLE if row[0] not in (EventCode.NONE, EventCode.Error)
)
"""The eleven codes that are mail events and may become tags, in journey order."""

PRODUCTION_CODES = frozenset(
    {EventCode.MailPieceCreated, EventCode.Addressed, EventCode.Printed}
)
RESPONSE_CODES = frozenset({EventCode.pURLOpened, EventCode.pURLCompleted})
US_CODES = frozenset(MAIL_CODES)
CA_CODES = frozenset(PRODUCTION_CODES | RESPONSE_CODES | {EventCode.Mailed})
COUNTRY_CODES: dict[str, frozenset[EventCode]] = {"US": US_CODES, "CA": CA_CODES}



class WriteClass(StrEnum):
    """Groups of writes, in the order a location spends a short daily budget on them
    (`[highlevel] write_order`): what workflows fire on first, repeated visits' notes last."""

    tags = "tags"
    journey_notes = "journey_notes"
    """Notes of production, USPS and exception events."""
    response_notes = "response_notes"
    """Notes of pURL visits: every visit is a new event, so these grow without bound."""


TAG_PREFIX = "Postalytics Event: "

REST_LABEL: dict[EventCode, str] = {row[0]: row[1] for row in _TABLE}
MEANING: dict[EventCode, str] = {row[0]: row[4] for row in _TABLE}
WEBHOOK_TYPE: dict[EventCode, int] = {row[0]: row[3] for row in _TABLE if row[3] is not None}


@functools.lru_cache(maxsize=1024)
def _fold(label: str) -> str:
    """Case-, space-, hyphen- and underscore-insensitive form of a label (cached: every
    event's label is one of a few spellings)."""
    return re.sub(r"[\s_\-]+", "", label).casefold()


_BY_FOLDED: dict[str, EventCode] = {}
for _code, _label, _others, _int, _ in _TABLE:
    for _spelling in (_code.value, _label, *_others):
        _BY_FOLDED[_fold(_spelling)] = _code
_BY_INT: dict[int, EventCode] = {v: k for k, v in WEBHOOK_TYPE.items()}
_BY_VALUE: dict[str, EventCode] = {code.value: code for code in EventCode}


def stored_code(value: str) -> EventCode:
    """The code of a stored event's or ledger row's `code`: `EventCode(value)` as a dict
    lookup (the enum's call cost a microsecond, and planning made two per event)."""
    try:
        return _BY_VALUE[value]
    except KeyError:
        return EventCode(value)  # refused as the enum refuses it


def parse_code(label: object) -> EventCode:
    """Map any spelling (CRM name, REST label, webhook integer) to its code.

    Raises UnknownEventLabel for anything else, including wrong types.
    """
    if isinstance(label, EventCode):
        return label
    if isinstance(label, bool):  # bool is an int: True must not read as code 1
        raise UnknownEventLabel(label)
    if isinstance(label, int):
        if label in _BY_INT:
            return _BY_INT[label]
        raise UnknownEventLabel(label)
    if isinstance(label, str):
        text = label.strip()
        if text.isdigit() and len(text) < 4:
            return parse_code(int(text))
        code = _BY_FOLDED.get(_fold(text))
        if code is not None:
            return code
    raise UnknownEventLabel(label)


def closest_code(label: str) -> EventCode | None:
    """The code whose spelling (CRM name or REST label) is closest to a mistyped one."""
    spellings = {_fold(s): code for code, s in ((row[0], sp) for row in _TABLE
                                                 for sp in (row[0].value, row[1], *row[2]))
                 if code in MAIL_CODES}
    found = difflib.get_close_matches(_fold(label), list(spellings), n=1, cutoff=0.6)
    return spellings[found[0]] if found else None


def codes_for_country(country: str) -> frozenset[EventCode]:
    """The codes a mailing to this country (US or CA) can produce."""
    try:
        return COUNTRY_CODES[country.upper()]
    except KeyError:
        raise ValueError(f"unknown country {country!r}: expected one of US, CA") from None


def tag_for(code: EventCode) -> str:
    """The HighLevel tag text for a code: `Postalytics Event: <Code>`."""
    return f"{TAG_PREFIX}{code.value}"


def tag_key(tag: str) -> str:
    """The comparison form of a tag: HighLevel stores tags lower-cased."""
    return " ".join(tag.split()).casefold()


def tags_equal(a: str, b: str) -> bool:
    """Whether two tags are the same tag to HighLevel."""
    return tag_key(a) == tag_key(b)


def code_from_tag(tag: str) -> EventCode | None:
    """The code a mailsync tag stands for, or None if the tag is not one of ours."""
    key = tag_key(tag)
    prefix = tag_key(TAG_PREFIX)
    if not key.startswith(prefix):
        return None
    try:
        return parse_code(key[len(prefix):])
    except UnknownEventLabel:
        return None


def describe(code: EventCode) -> str:
    """The event in words, for notes and reports."""
    return f"{REST_LABEL[code]}: {MEANING[code]}"

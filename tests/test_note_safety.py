"""Note bodies: every outside value one clean line, and only http(s) links ever written."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from mailsync.store.models import MailEvent
from mailsync.sync.notes import MARKER_PREFIX, marker_for, note_body, safe_link

CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def event(**fields: object) -> MailEvent:
    base = {"key": "e:40211:ev-1", "drop_id": "40211", "recipient_key": "d:1", "code": "pURLOpened",
            "event_at": datetime(2026, 11, 20, 14, 3, tzinfo=UTC)}
    return MailEvent(**{**base, **fields})


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "JavaScript:alert(document.cookie)", "  javascript:alert(1)",
    "java\tscript:alert(1)", "data:text/html;base64,PHNjcmlwdD4=", "vbscript:msgbox(1)",
    "file:///etc/passwd", "ftp://example.com/x", "//evil.example/x", "example.com/no-scheme",
    "https://", "http:///path-only",
])
def test_links_that_are_not_http_are_dropped_and_said_so(url: str) -> None:
    body = note_body(event(url=url), "Fall postcard")
    visited = next(line for line in body.splitlines() if line.startswith("Visited: "))
    assert "left out" in visited
    assert url.strip() not in body  # never passed on, not even as text
    assert "javascript:" not in body.lower() and "data:" not in body.lower()


def test_an_http_link_is_kept_and_cannot_break_out_of_itself() -> None:
    link, dropped = safe_link('https://ok.example/p?q=1&r="><script>x</script> y')
    assert dropped is None and link is not None
    assert link.startswith("https://ok.example/p?q=1&r=")
    assert not any(c in link for c in '"<> ')
    assert safe_link("HTTP://Ok.Example/A")[0] == "HTTP://Ok.Example/A"


def test_no_control_characters_in_any_line() -> None:
    hostile = "a\x1b[31mb\x00c\rd\u202ee\x07f\ng\x85h"
    body = note_body(event(url=f"https://ok.example/{hostile}", expected_delivery=hostile[:30]),
                     f"Fall {hostile}")
    lines = body.splitlines()
    assert all(not CONTROLS.search(line) for line in lines), body
    assert lines[1].startswith("Campaign: Fall a [31mb c d e f g h")  # one line, spaced
    assert lines[-1] == f"{MARKER_PREFIX}{marker_for('e:40211:ev-1')}"
    assert len(lines) == 7  # nothing smuggled an extra line in


@pytest.mark.parametrize("at, when", [
    (datetime(2026, 11, 20, 14, 3, 59, tzinfo=UTC), "2026-11-20 14:03"),
    (datetime(5, 11, 20, 14, 3, tzinfo=UTC), "5-11-20 14:03"),  # as strftime wrote it
])
def test_a_notes_text_is_pinned(at: datetime, when: str) -> None:
    body = note_body(event(code="Mailed", event_at=at, expected_delivery="2026-11-21",
                           url="https://purl.example.com/ada"), "Fall postcard")
    assert body.splitlines() == [
        "Postalytics: Mailed", "Campaign: Fall postcard (drop 40211)",
        "What happened: Mailed: first postal scan: the piece is in the mail stream",
        f"When: {when} UTC", "Expected delivery: 2026-11-21",
        "Visited: https://purl.example.com/ada", f"{MARKER_PREFIX}{marker_for('e:40211:ev-1')}"]


def test_a_plain_note_is_unchanged() -> None:
    body = note_body(event(code="Mailed", expected_delivery="2026-11-21"), "Fall postcard")
    assert body.splitlines()[:2] == ["Postalytics: Mailed",
                                     "Campaign: Fall postcard (drop 40211)"]
    assert "Expected delivery: 2026-11-21" in body and "Visited" not in body

"""The event vocabulary: every spelling of API-FACTS' table maps to its one code."""

import pytest

from mailsync.codes import (
    CA_CODES,
    MAIL_CODES,
    US_CODES,
    EventCode,
    UnknownEventLabel,
    code_from_tag,
    codes_for_country,
    parse_code,
    stored_code,
    tag_for,
    tags_equal,
)

# (code, REST label, webhook eventType, US, CA) transcribed from ../shared/ref/API-FACTS.md
TABLE = [
    ("MailPieceCreated", "Mail Piece Created", 0, True, True),
    ("Addressed", "Addressed", 9, True, True),
    ("Printed", "Printed", 10, True, True),
    ("Mailed", "Mailed", 11, True, True),
    ("InTransit", "In Transit", 4, True, False),
    ("InLocalArea", "In Local Area", 5, True, False),
    ("ProcessedForDelivery", "Processed for Delivery", 6, True, False),
    ("ReRouted", "Re-Routed", 2, True, False),
    ("ReturnedToSender", "Returned To Sender", 3, True, False),
    ("pURLOpened", "pURL Opened", 7, True, True),
    ("pURLCompleted", "purl Completed", 8, True, True),
]


@pytest.mark.parametrize(("name", "label", "number", "us", "ca"), TABLE)
def test_every_spelling_parses_to_its_code(name: str, label: str, number: int, us: bool, ca: bool):
    code = EventCode(name)
    spellings = [name, label, number, str(number), label.upper(), label.lower(),
                 f"  {label}  ", label.replace(" ", ""), label.replace(" ", "_"),
                 "  ".join(label.split())]
    for spelling in spellings:
        assert parse_code(spelling) is code, spelling
    assert (code in US_CODES) is us
    assert (code in CA_CODES) is ca


def test_webhook_return_to_sender_spelling():
    assert parse_code("Return to Sender") is EventCode.ReturnedToSender
    assert parse_code("pURL Completed") is EventCode.pURLCompleted


def test_statuses_none_and_error_parse_but_are_never_mail_codes():
    assert parse_code("None") is EventCode.NONE
    assert parse_code("error") is EventCode.Error
    assert EventCode.NONE not in US_CODES | CA_CODES
    assert EventCode.Error not in MAIL_CODES


@pytest.mark.parametrize("bad", ["Delivered", "", "   ", 1, 12, -3, True, None, 3.5, ["Mailed"],
                                 {"x": 1}, "x" * 5000, "Mailed!"])
def test_unknown_labels_raise_the_typed_error_carrying_the_label(bad: object):
    with pytest.raises(UnknownEventLabel) as info:
        parse_code(bad)
    assert info.value.label == bad
    assert len(str(info.value)) < 120


def test_country_sets_match_the_table():
    assert len(MAIL_CODES) == 11
    assert US_CODES == {EventCode(row[0]) for row in TABLE if row[3]}
    assert CA_CODES == {EventCode(row[0]) for row in TABLE if row[4]}
    assert codes_for_country("ca") == CA_CODES
    with pytest.raises(ValueError, match="MX"):
        codes_for_country("MX")


def test_tags_compare_case_insensitively_like_highlevel_stores_them():
    tag = tag_for(EventCode.ProcessedForDelivery)
    assert tag == "Postalytics Event: ProcessedForDelivery"
    assert tags_equal(tag, "postalytics event: processedfordelivery")
    assert not tags_equal(tag, "postalytics event: mailed")
    code = code_from_tag("postalytics event: processedfordelivery")
    assert code is EventCode.ProcessedForDelivery
    assert code_from_tag("vip") is None
    assert code_from_tag("postalytics event: nonsense") is None


def test_a_stored_code_reads_back_as_its_member_and_nothing_else_does():
    assert all(stored_code(code.value) is code for code in EventCode)
    with pytest.raises(ValueError):
        stored_code("Delivered-ish")

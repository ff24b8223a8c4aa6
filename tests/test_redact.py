"""The redaction registry and the logging filter."""

from __future__ import annotations

import logging

import pytest

from mailsync.redact import (
    RedactingFilter,
    get_logger,
    install_log_redaction,
    redact,
    register_secret,
)


def test_registered_values_and_their_url_forms_are_masked() -> None:
    register_secret("abc+def/ghi=jkl")
    assert redact("x abc+def/ghi=jkl y") == "x *** y"
    assert redact("refresh_token=abc%2Bdef%2Fghi%3Djkl&x=1") == "refresh_token=***&x=1"


def test_short_or_empty_values_are_not_registered() -> None:
    register_secret("")
    register_secret(None)
    register_secret("abc")
    assert redact("abc and more") == "abc and more"


def test_longest_secret_wins() -> None:
    register_secret("overlap-secret")
    register_secret("overlap-secret-longer")
    assert redact("overlap-secret-longer") == "***"


def test_redact_accepts_any_object() -> None:
    register_secret("object-secret-1")
    assert redact(ValueError("bad object-secret-1")) == "bad ***"


def test_filter_rewrites_args_and_exception_text() -> None:
    register_secret("filter-secret-1")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", ("filter-secret-1",),
                               None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "token=***"
    try:
        raise RuntimeError("boom filter-secret-1")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    RedactingFilter().filter(record)
    assert record.exc_text and "filter-secret-1" not in record.exc_text


@pytest.mark.parametrize(
    "name", ["mailsync", "mailsync.sync.apply", "httpx", "httpcore.http11", "someone.else"]
)
def test_installed_redaction_covers_our_and_httpx_loggers(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    install_log_redaction()
    register_secret("installed-secret-1")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger(name).warning("header Authorization: Bearer %s", "installed-secret-1")
    assert caplog.records
    for record in caplog.records:
        assert "installed-secret-1" not in record.getMessage()
    assert "installed-secret-1" not in caplog.text


def test_get_logger_attaches_filter() -> None:
    logger = get_logger("mailsync.test.redact")
    assert any(isinstance(f, RedactingFilter) for f in logger.filters)


def test_install_is_idempotent() -> None:
    install_log_redaction()
    install_log_redaction()
    logger = logging.getLogger("httpx")
    assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1

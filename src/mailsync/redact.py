"""Process-wide secret redaction for log lines, exception text and reprs.

Every secret value the process handles (tokens, API keys, client secrets, the Basic
credential) is registered here once; `redact` then replaces any occurrence with `***`.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter values would mask innocent text (and cannot be real credentials anyway).
_MIN_LENGTH = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()

# httpcore creates these child loggers at import; logger filters do not apply to records
# propagated from children, so each known logger gets the filter itself.
_LOGGER_ROOTS = ("mailsync", "httpx", "httpcore")
_KNOWN_CHILDREN = (
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` masks it (and its URL-encoded forms) everywhere."""
    global _ordered
    if not value or len(value) < _MIN_LENGTH:
        return
    forms = {value, quote(value, safe=""), quote_plus(value)}
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first, so a secret containing another is masked whole.
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: object) -> str:
    """`text` as a string with every registered secret replaced by `***`."""
    out = text if isinstance(text, str) else str(text)
    for secret in _ordered:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string must not hide the record
        message = str(record.msg)
    clean = redact(message)
    if clean != message:
        # Only touched when needed: other handlers may rely on msg/args as given.
        record.msg = clean
        record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)


class RedactingFilter(logging.Filter):
    """A logging filter that formats each record once and masks registered secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and exception text) in place; always keep it."""
        _scrub(record)
        return True


_FILTER = RedactingFilter()
_factory_installed = False


def install_log_redaction(extra_loggers: tuple[str, ...] = ()) -> None:
    """Redact every log record: filters on mailsync's, httpx's and httpcore's loggers.

    Logger filters only see records logged on their own logger (not on children), so the
    filter goes on every existing child too, and a log-record factory catches records from
    loggers created later, whatever their name. Idempotent.
    """
    global _factory_installed
    names = set(_LOGGER_ROOTS) | set(_KNOWN_CHILDREN) | set(extra_loggers)
    for name in list(logging.root.manager.loggerDict):
        if any(name == root or name.startswith(root + ".") for root in _LOGGER_ROOTS):
            names.add(name)
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _ordered:
                _scrub(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def get_logger(name: str) -> logging.Logger:
    """A logger that redacts its own records even before `install_log_redaction` runs."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


class Secret:
    """A secret string: `repr`/`str` show `***`; `.get()` gives the raw value.

    Creating one registers the value for redaction process-wide.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.get()
        if not isinstance(value, str):
            raise TypeError(f"Secret needs a str, got {type(value).__name__}")
        self._value = value
        register_secret(value)

    def get(self) -> str:
        """The raw value: pass it only to the wire."""
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def as_secret(value: Secret | str) -> Secret:
    """Wrap a plain string (from config) as a `Secret`; pass a `Secret` through."""
    return value if isinstance(value, Secret) else Secret(value)

"""What an API answered, or why it could not be asked, in one short, clean, redacted line.

A server's error body is data from outside: a gateway's HTML page, kilobytes of text,
control characters, console markup. Reasons made from it are stored, logged and shown in
reports, so they are cut down here, once: the API's own JSON words are kept, a page is
summarised, text is cut with an ellipsis, and nothing in it is ever interpreted.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from collections.abc import Iterator

import httpx

from mailsync.redact import redact

BODY_CAP = 200
"""Characters of a server's own words kept in a reason."""
REASON_CAP = 400
"""Hard cap on any reason (the server's words plus what mailsync says around them)."""
ELLIPSIS = "…"

# ANSI escape sequences first (their tails are printable), then every other control or
# invisible formatting character (bidi overrides, zero-width marks); whitespace ones become
# spaces so words stay apart.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_WHITE_CONTROLS = re.compile(r"[\t\n\r\v\f\x1c-\x1f\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b-\u200f\u202a-\u202e"
                       r"\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]")
_HTML_START = re.compile(r"\s*(<!doctype\s+html|<html\b|<head\b|<body\b)", re.I)
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def one_line(text: object, limit: int = BODY_CAP) -> str:
    """`text` as one line: control characters gone, whitespace collapsed, secrets masked,
    at most `limit` characters (cut with an ellipsis). Markup is kept as plain text."""
    raw = text if isinstance(text, str) else str(text)
    raw = _CONTROLS.sub("", _WHITE_CONTROLS.sub(" ", _ANSI.sub("", redact(raw))))
    # Masked again: a control character inside a secret hid it from the first pass.
    return clip(redact(" ".join(raw.split())), limit)


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + ELLIPSIS


def _json_words(response: httpx.Response) -> str | None:
    """The message in a JSON error body (HighLevel's and Postalytics' shapes), or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    message = body.get("message", body.get("Message"))
    error = body.get("error", body.get("Error"))
    if isinstance(error, dict):  # Postalytics: {"error": {"message": ...}}
        message = message or error.get("message") or error.get("Message")
        error = None
    if isinstance(message, list):  # HighLevel 422: a list of complaints
        return "; ".join(str(m) for m in message)
    if message:
        return str(message)
    return str(error) if error else None


def is_html(response: httpx.Response) -> bool:
    """Whether the body is a web page (a gateway's or proxy's) rather than an API answer."""
    if "html" in response.headers.get("content-type", "").lower():
        return True
    return bool(_HTML_START.match(response.text[:256]))


def _answer_words(response: httpx.Response) -> tuple[str, bool]:
    """The body in words, and whether they are the API's own (from its JSON error body)."""
    if not response.content:
        return "", False
    words = _json_words(response)
    if words is not None:
        return one_line(words), True
    if is_html(response):
        # Never the page itself: a reason is no place for markup, and the page says little.
        kind = "gateway error page" if response.status_code in _GATEWAY_STATUSES else "HTML page"
        return f"{kind} ({len(response.content):,} bytes)", False
    return one_line(response.text), False


def error_message(response: httpx.Response) -> str:
    """The server's own words for an error answer, in one short redacted line."""
    return _answer_words(response)[0]


def describe_status(response: httpx.Response, service: str | None = None) -> str:
    """`HTTP 422 Unprocessable Entity: <the API's message>`; a body that is not the API's
    own words also names the service: `HTTP 503 Service Unavailable from HighLevel: ...`."""
    head = f"HTTP {response.status_code} {response.reason_phrase or ''}".rstrip()
    words, own = _answer_words(response)
    if service and not own:
        head = f"{head} from {service}"
    return f"{head}: {words}" if words else head


# -- transport failures ---------------------------------------------------------------------

def is_unreachable(error: BaseException) -> bool:
    """Whether the transport never reached the server (no connection could be opened)."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ETIMEDOUT: "connection timed out",
}


def connect_failure(error: BaseException) -> str:
    """Why a connection could not be opened, in plain words (`connection refused`, ...)."""
    if isinstance(error, httpx.ConnectTimeout):
        return "connection timed out"
    for cause in _causes(error):
        if isinstance(cause, socket.gaierror):
            return "host name not found (DNS)"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "TLS certificate not trusted"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(cause, OSError) and cause.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[cause.errno]
        if isinstance(cause, TimeoutError):
            return "connection timed out"
    return "connection failed"


def host_port(url: httpx.URL | str) -> str:
    """`host:port` of a URL: what to name when it cannot be reached (never its path,
    query or credentials)."""
    parsed = httpx.URL(url)
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{host}:{port}" if port else host


def cannot_reach(service: str, url: httpx.URL | str, error: BaseException) -> str:
    """`cannot reach HighLevel at services.leadconnectorhq.com:443: connection refused`."""
    return f"cannot reach {service} at {host_port(url)}: {connect_failure(error)}"


def transport_problem(error: BaseException) -> str:
    """A transport error in one line: its kind and whatever detail it carries."""
    detail = one_line(error, 120) or "no detail"
    return f"network error {type(error).__name__}: {detail}"

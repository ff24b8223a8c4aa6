"""Outside data is always data: markup and control characters in every field Postalytics or
HighLevel can send come out literal in the terminal, and never reach a note as a link.

A small hostile stand-in serves both APIs over real HTTP, built from the documented shapes
(not from the project's sandbox): event names, emails, labels, dates and URLs, a campaign's
name, HighLevel's error messages, tags and notes all carry Rich markup (`[/bold]`,
`[red]x[/red]`), an ANSI colour sequence, a screen clear and a bidi override. The real
`mailsync` commands run against it in child processes, as a person runs them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from rich.console import Console
from rich.table import Table

MARKUP = "[/bold][red]x[/red]"
HOSTILE = f"{MARKUP} \x1b[31mred\x1b[0m\x1b[2J \u202eevil\x07"
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
DROP = "40211"


def _event(i: int, label: str, **extra: Any) -> dict[str, Any]:
    return {"EventId": f"ev-{i}", "Event": label, "EventDate": f"2026-11-{10 + i:02d}T14:03:00Z",
            "ExpectedDeliveryDate": f"{HOSTILE}"[:30], "DataId": 1000 + i,
            "FirstName": HOSTILE, "LastName": f"Byrne{MARKUP}",
            "Email": f"ada{i}@example.com", "Phone": "",
            "Address": {"Street": HOSTILE, "City": "Boston", "State": "MA", "Zip": "02110",
                        "Country": "US"},
            "VarFields": {"var_field_1": extra.pop("contact", "")},
            "Metadata": {"Url": extra.pop("url", None)}, **extra}


EVENTS = [
    _event(1, "Mailed", contact="c-1"),
    _event(2, "pURL Opened", contact="c-2", url=f"javascript:alert('{MARKUP}')"),
    _event(3, "pURL Opened", contact="c-2", url="https://ok.example/p?x=<b>\x1b[31m"),
    _event(4, HOSTILE[:60]),                       # an unknown label: quarantined, shown
    _event(5, "Processed for Delivery"),           # no contact: rejected, shown
    _event(6, "Mailed", contact=HOSTILE[:40]),     # a carried contact id that is hostile too
]


class _Stub(BaseHTTPRequestHandler):
    notes: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == f"/pa/campaigns/{DROP}/events":
            page = int(query.get("PageNumber", ["1"])[0])
            self._send(200, EVENTS if page == 1 else [])
        elif url.path == f"/pa/campaigns/{DROP}/details":
            self._send(200, {"DirectMailDropId": DROP, "DirectMailName": HOSTILE,
                             "Status": 1, "Country": "US"})
        elif url.path == "/hl/contacts/search/duplicate":
            self._send(200, {"contact": None})
        elif url.path.endswith("/notes"):
            self._send(200, {"notes": [{"id": "n-x", "body": HOSTILE}]})
        elif url.path.startswith("/hl/contacts/"):
            cid = url.path.rsplit("/", 1)[-1]
            self._send(200, {"contact": {"id": cid, "tags": [HOSTILE]}})
        else:
            self._send(404, {"statusCode": 404, "message": f"no route {HOSTILE}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        if url.path.endswith("/notes"):
            _Stub.notes.append(str(body.get("body")))
            self._send(201, {"note": {"id": f"n-{len(_Stub.notes)}", "body": body.get("body")}})
        elif url.path.endswith("/tags"):
            self._send(422, {"statusCode": 422, "message": [HOSTILE, f"tag {MARKUP}"],
                             "error": "Unprocessable Entity"})
        else:
            self._send(400, {"statusCode": 400, "message": HOSTILE})

    def do_DELETE(self) -> None:
        self._body()
        self._send(200, {"tags": []})


@pytest.fixture
def stub() -> Iterator[str]:
    _Stub.notes = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _config(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "mailsync.toml"
    # The operator's own names can hold markup too: shown as typed.
    path.write_text(f"""
[database]
url = "sqlite:///{tmp_path / 'ms.db'}"
[postalytics]
base_url = "{base}/pa"
[highlevel]
base_url = "{base}/hl"
[[locations]]
id = "loc-1"
name = "Boston [bold]office"
token_env = "T_BOSTON"
[[campaigns]]
drop_id = "{DROP}"
name = "Fall [/red] postcard"
location = "loc-1"
contact_id_field = "var_field_1"
""")
    return path


def _cli(config: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNC_")}
    env.update({"T_BOSTON": "tok-abcdef123456", "POSTALYTICS_API_KEY": "key-123456",
                "MAILSYNC_CONFIG": str(config), "COLUMNS": "400"})
    done = subprocess.run([sys.executable, "-m", "mailsync", *args], env=env, text=True,
                          capture_output=True, timeout=180)
    return done.returncode, done.stdout + done.stderr


def _literal(out: str) -> None:
    """Nothing was obeyed: no control character reached the terminal, no markup error."""
    assert not RAW_CONTROLS.search(out), repr(out[:3000])
    assert "MarkupError" not in out and "Traceback" not in out, out


def test_every_command_shows_outside_data_literally(stub: str, tmp_path: Path) -> None:
    config = _config(tmp_path, stub)

    code, out = _cli(config, "sync", "--dry-run")
    assert code == 0, out
    _literal(out)
    assert MARKUP in out and "\\u202e" in out  # a name, shown as sent
    assert "Fall [/red] postcard" in out and "Boston [bold]office" in out

    code, out = _cli(config, "sync")
    assert code in (0, 1), out
    _literal(out)

    code, out = _cli(config, "report")
    assert code == 0, out
    _literal(out)
    assert MARKUP in out  # names, HighLevel's words and the quarantined label

    code, out = _cli(config, "verify")
    assert code in (0, 5, 6), out
    _literal(out)

    code, out = _cli(config, "config", "check", "--online")
    _literal(out)
    assert MARKUP in out  # Postalytics' campaign name


def test_notes_carry_no_control_characters_and_only_http_links(stub: str,
                                                               tmp_path: Path) -> None:
    config = _config(tmp_path, stub)
    code, out = _cli(config, "sync")
    assert code in (0, 1), out
    assert _Stub.notes, out
    for body in _Stub.notes:
        assert not RAW_CONTROLS.search(body.replace("\n", "")), repr(body)
        assert "javascript:" not in body.lower()
    dropped = [b for b in _Stub.notes if "a javascript link was left out" in b]
    assert len(dropped) == 1
    kept = next(b for b in _Stub.notes if "ok.example" in b)
    assert "Visited: https://ok.example/p?x=%3Cb%3E" in kept


def test_log_lines_show_outside_data_literally() -> None:
    import logging

    from mailsync.cli.main import _LiteralHandler

    out = StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    handler = _LiteralHandler(console=console, show_path=False, markup=False, show_time=False)
    record = logging.LogRecord("mailsync.fetch", logging.WARNING, __file__, 1,
                               "campaign %s: refused event %s", ("40211", HOSTILE), None)
    handler.emit(record)
    text = out.getvalue()
    assert MARKUP in text and "\\x1b[31m" in text and not RAW_CONTROLS.search(text)


def test_literal_cells_survive_tables() -> None:
    from mailsync.cli.options import literal, markup_safe

    out = StringIO()
    console = Console(file=out, width=300, force_terminal=True)
    table = Table()
    table.add_column("name")
    table.add_row(literal(HOSTILE))
    console.print(table)
    console.print(f"as markup: {markup_safe(HOSTILE)}")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # Rich's own styling
    assert text.count(MARKUP) == 2 and "\\x1b[2J" in text and "\\u202e" in text
    assert not RAW_CONTROLS.search(text)

"""`mailsync webhook url` and `mailsync webhook serve` as an operator runs them."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx

from mailsync.sandbox.webhooks import webhook_payload
from tests.sync_helpers import rig
from tests.webhook_helpers import SECRET, SECRET_ENV, add_webhooks_section

CONFIG = """
[database]
url = "sqlite:///{db}"

[[locations]]
id = "loc-1"
token_env = "HL_TOKEN_TEST"

[[campaigns]]
drop_id = "40211"
location = "loc-1"
"""


class Ran:
    """A command's exit code and what it printed (in this process: quick)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def mailsync(*args: str, env: dict[str, str] | None = None) -> Ran:
    from typer.testing import CliRunner

    from mailsync.cli.main import app

    result = CliRunner().invoke(app, list(args), env=env)
    return Ran(result.exit_code, result.stdout, result.stderr)


def config(tmp_path: Path, webhooks: str = "") -> Path:
    path = tmp_path / "mailsync.toml"
    path.write_text(CONFIG.format(db=tmp_path / "m.db") + webhooks)
    return path


def test_url_prints_the_address_to_paste_into_postalytics(tmp_path):
    path = config(tmp_path, f'\n[webhooks]\nsecret_env = "{SECRET_ENV}"\n'
                            'public_url = "https://hooks.example.com/"\n')
    out = mailsync("webhook", "url", "--campaign", "40211", "--config", str(path),
                   env={SECRET_ENV: SECRET})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"https://hooks.example.com/postalytics/40211?key={SECRET}"
    assert out.stderr == ""


def test_url_without_a_public_address_says_it_is_local(tmp_path):
    path = config(tmp_path, f'\n[webhooks]\nsecret_env = "{SECRET_ENV}"\n')
    out = mailsync("webhook", "url", "--campaign", "40211", "--config", str(path),
                   env={SECRET_ENV: SECRET})
    assert out.returncode == 0
    assert out.stdout.startswith("http://127.0.0.1:8787/postalytics/40211?key=")
    assert "public_url" in out.stderr


def test_url_refuses_what_it_cannot_give(tmp_path):
    path = config(tmp_path)
    none = mailsync("webhook", "url", "--campaign", "40211", "--config", str(path))
    assert none.returncode == 2 and "[webhooks] needs secret_env" in none.stderr
    path = config(tmp_path, f'\n[webhooks]\nsecret_env = "{SECRET_ENV}"\n')
    unknown = mailsync("webhook", "url", "--campaign", "999", "--config", str(path),
                       env={SECRET_ENV: SECRET})
    assert unknown.returncode == 2 and "999" in unknown.stderr
    short = mailsync("webhook", "url", "--campaign", "40211", "--config", str(path),
                     env={SECRET_ENV: "short"})
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    bad_mode = config(tmp_path, '\n[webhooks]\nmode = "kafka"\n')
    out = mailsync("config", "check", "--config", str(bad_mode))
    assert out.returncode == 2 and "webhooks.mode" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_webhooks_and_never_prints_its_key(tmp_path):
    with rig(tmp_path, contacts=12) as r:
        add_webhooks_section(r.config)
        r.sb.advance(12)
        drop = r.settings.campaigns[0].drop_id
        ev = next(e for e in r.sb.sandbox.scenario.campaign(drop).events
                  if e.recipient.match == "carried")
        port = _free_port()
        proc = r.spawn("webhook", "serve", "--port", str(port),
                       extra_env={SECRET_ENV: SECRET})
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
                time.sleep(0.1)
            ok = httpx.post(f"{base}/postalytics/{drop}?key={SECRET}",
                            json=webhook_payload(ev), timeout=10)
            assert ok.status_code == 202
            assert httpx.post(f"{base}/postalytics/{drop}?key=wrong-key-123456",
                              json={}, timeout=10).status_code == 404
            deadline = time.monotonic() + 20  # the inline apply writes the note
            while time.monotonic() < deadline:
                notes = [n for c in r.sb.state()["contacts"] for n in c["notes"]]
                if notes:
                    break
                time.sleep(0.2)
            assert notes
        finally:
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=30)
        assert SECRET not in output and "wrong-key-123456" not in output
        assert "key=***" in output

"""Helpers for the webhook tests: a receiver served over real HTTP beside a sandbox rig."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from mailsync.config import Settings, load_settings
from mailsync.redact import Secret
from mailsync.sync.context import SyncContext
from mailsync.webhook.service import build_receiver, inline_trigger, webhook_url
from mailsync.webhook.trigger import ApplyCoalescer, Trigger
from tests.sync_helpers import Rig, rig

SECRET = "whk-test-8f3a1c2e9b7d4f60a5c1"
SECRET_ENV = "MAILSYNC_TEST_WEBHOOK_SECRET"


def add_webhooks_section(config: Path, mode: str = "inline",
                         public_url: str | None = None) -> None:
    """Append a `[webhooks]` table to a config file (its secret in SECRET_ENV)."""
    lines = ["", "[webhooks]", f'secret_env = "{SECRET_ENV}"', f'mode = "{mode}"']
    if public_url:
        lines.append(f'public_url = "{public_url}"')
    with config.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


class ReceiverServer:
    """A receiver app served by uvicorn on a free loopback port, in a background thread."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ReceiverServer:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="receiver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:43210."""
        return f"http://127.0.0.1:{self.port}"


@dataclass
class WebhookRig:
    """A sandbox rig, its settings with `[webhooks]`, and the receiver serving them."""

    rig: Rig
    settings: Settings
    ctx: SyncContext
    receiver: ReceiverServer
    trigger: Trigger

    @property
    def sb(self) -> Any:
        return self.rig.sb

    def url(self, drop_id: str, key: str = SECRET) -> str:
        """The campaign's webhook URL at this receiver."""
        return webhook_url(self.settings, drop_id, Secret(key), base_url=self.receiver.url)

    def post(self, drop_id: str, body: Any = None, *, key: str = SECRET,
             content: bytes | None = None) -> httpx.Response:
        """POST to the receiver as Postalytics would (JSON body, or raw `content`)."""
        kw: dict[str, Any] = {"content": content} if content is not None else {"json": body}
        return httpx.post(self.url(drop_id, key), timeout=30, **kw)

    def drops(self) -> list[str]:
        return [c.drop_id for c in self.settings.campaigns]

    def wait_applied(self, timeout: float = 60.0) -> None:
        """Wait until the receiver's inline applies are done (none running or queued)."""
        assert isinstance(self.trigger, ApplyCoalescer)
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.trigger.busy():
                quiet_since = None
            else:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.3:
                    return
            time.sleep(0.05)
        raise TimeoutError("the receiver's applies did not finish")


@contextmanager
def webhook_rig(tmp_path: Path, db_url: str | None = None, *, trigger: Trigger | None = None,
                mode: str = "inline", **rig_options: Any) -> Iterator[WebhookRig]:
    """A sandbox rig plus a receiver for its campaigns (inline mode unless a trigger is
    given), over real HTTP."""
    with rig(tmp_path, db_url, **rig_options) as r:
        add_webhooks_section(r.config, mode)
        old = os.environ.get(SECRET_ENV)
        os.environ[SECRET_ENV] = SECRET
        try:
            settings = load_settings(r.config)
            ctx = SyncContext(settings, timeout=r.ctx.timeout)
            chosen = trigger or inline_trigger(ctx)
            with ReceiverServer(build_receiver(ctx, chosen)) as receiver:
                yield WebhookRig(r, settings, ctx, receiver, chosen)
        finally:
            if old is None:
                os.environ.pop(SECRET_ENV, None)
            else:
                os.environ[SECRET_ENV] = old

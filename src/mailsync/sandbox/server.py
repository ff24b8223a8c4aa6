"""The sandbox in-process: uvicorn on a free loopback port, in a background thread.

    with SandboxServer(seed=1, contacts=60) as sb:
        m = sb.manifest()
        sb.advance(48)
        ...  # point clients at m["postalytics_base_url"] and m["highlevel_base_url"]

Every helper goes through real HTTP to the server itself, so it sees exactly what clients see.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from mailsync.sandbox.app import Sandbox, SandboxConfig, create_app
from mailsync.sandbox.faults import FaultSpec


class SandboxServer:
    """A context manager that serves the sandbox on 127.0.0.1 and a free port."""

    def __init__(self, seed: int = 1, contacts: int = 60, faults: FaultSpec | str | None = None,
                 time_scale: float = 1.0, messy: bool = False, **options: Any) -> None:
        """Extra keyword options are SandboxConfig fields (e.g. `daily_quota`, `retry_after`)."""
        self.config = SandboxConfig(seed=seed, contacts=contacts, faults=faults,
                                    time_scale=time_scale, messy=messy, **options)
        self.app = create_app(self.config)
        self.sandbox: Sandbox = self.app.sandbox
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self.port = 0

    # -- lifecycle --

    def start(self) -> SandboxServer:
        """Bind a free port, start serving, and wait until the server accepts connections."""
        # Port 0 and read the port back: handing uvicorn a pre-bound socket instead skips
        # TCP_NODELAY on accepted connections, which costs ~40 ms per keep-alive request.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                access_log=False, lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sandbox-server",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self._client = httpx.Client(base_url=self.url, timeout=60)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- addresses --

    @property
    def url(self) -> str:
        """The server's base URL, e.g. http://127.0.0.1:54321."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def postalytics_url(self) -> str:
        """Base URL of the Postalytics API (`.../postalytics/api/v1`)."""
        return self.url + "/postalytics/api/v1"

    @property
    def highlevel_url(self) -> str:
        """Base URL of the HighLevel API (`.../highlevel`)."""
        return self.url + "/highlevel"

    # -- admin calls (real HTTP) --

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        if self._client is None:
            raise RuntimeError("the sandbox server is not running")
        resp = self._client.request(method, "/_sandbox" + path, **kw)
        resp.raise_for_status()
        return resp.json()

    def manifest(self) -> dict[str, Any]:
        """GET /_sandbox/manifest."""
        return self._call("GET", "/manifest")

    def advance(self, hours: float) -> dict[str, Any]:
        """POST /_sandbox/advance?hours=H → {clock, emitted, total, remaining}."""
        return self._call("POST", "/advance", params={"hours": hours})

    def set_faults(self, spec: FaultSpec | str | dict[str, Any] | None = None,
                   **rates: Any) -> dict[str, Any]:
        """POST /_sandbox/faults from a SPEC string, a dict, a FaultSpec, or keywords.

        `set_faults()` with nothing turns faults off. Setting faults restarts the seeded
        draw stream, so a test sees the same sequence every run.
        """
        if isinstance(spec, FaultSpec):
            body: dict[str, Any] = spec.to_json_fields()
        elif isinstance(spec, str):
            body = {"spec": spec}
        else:
            body = dict(spec or {})
        body.update(rates)
        return self._call("POST", "/faults", json=body)

    def state(self, location: str | None = None) -> dict[str, Any]:
        """GET /_sandbox/highlevel/state → {contacts: [...]}."""
        return self._call("GET", "/highlevel/state",
                          params={"location": location} if location else None)

    def truth(self, drop_id: str | None = None) -> dict[str, Any]:
        """GET /_sandbox/postalytics/events → {clock, campaigns: [{..., events: [...]}]}."""
        return self._call("GET", "/postalytics/events",
                          params={"drop_id": drop_id} if drop_id else None)

    def recipients(self, drop_id: str | None = None) -> list[dict[str, Any]]:
        """GET /_sandbox/postalytics/recipients → the recipient records."""
        return self._call("GET", "/postalytics/recipients",
                          params={"drop_id": drop_id} if drop_id else None)["recipients"]

    def stats(self) -> dict[str, Any]:
        """GET /_sandbox/stats."""
        return self._call("GET", "/stats")

    def reset_stats(self) -> dict[str, Any]:
        """POST /_sandbox/stats/reset (also clears the violation log)."""
        return self._call("POST", "/stats/reset")

    def reset_limits(self) -> None:
        """POST /_sandbox/limits/reset: fresh rate windows and daily quotas."""
        self._call("POST", "/limits/reset")

    def revoke(self, location: str) -> dict[str, Any]:
        """Make every token of a location answer 401 until `restore`."""
        return self._call("POST", f"/highlevel/locations/{location}/revoke")

    def restore(self, location: str) -> dict[str, Any]:
        """Undo `revoke`."""
        return self._call("POST", f"/highlevel/locations/{location}/restore")

    def expire_token(self, location: str) -> dict[str, Any]:
        """Expire an OAuth location's access token now (the next call gets 401)."""
        return self._call("POST", f"/highlevel/locations/{location}/expire-token")

    def set_daily_remaining(self, location: str, remaining: int) -> dict[str, Any]:
        """Pretend the location's daily quota is nearly spent."""
        return self._call("POST", f"/highlevel/locations/{location}/quota",
                          json={"daily_remaining": remaining})

    def reject_notes(self, contact_ids: list[str],
                     message: list[str] | None = None) -> dict[str, Any]:
        """Make note creation for these contacts answer 422 with `message` (a list)."""
        body: dict[str, Any] = {"contact_ids": contact_ids}
        if message is not None:
            body["message"] = message
        return self._call("POST", "/highlevel/reject-notes", json=body)

    def accept_notes(self, contact_ids: list[str] | None = None) -> dict[str, Any]:
        """Undo `reject_notes` for these contacts (all when None)."""
        kw: dict[str, Any] = {} if contact_ids is None else {"json": {"contact_ids": contact_ids}}
        return self._call("DELETE", "/highlevel/reject-notes", **kw)

    def create_contact(self, location_id: str, **fields: Any) -> dict[str, Any]:
        """Create a HighLevel contact directly (camelCase fields: email, phone, tags, ...)."""
        return self._call("POST", "/highlevel/contacts", json={"locationId": location_id,
                                                               **fields})

    def delete_contact(self, contact_id: str) -> dict[str, Any]:
        """Delete a HighLevel contact directly."""
        return self._call("DELETE", f"/highlevel/contacts/{contact_id}")

    def set_webhooks(self, urls: dict[str, str], **options: Any) -> dict[str, Any]:
        """POST /_sandbox/webhooks: deliver each new event of these campaigns to its URL as
        the clock advances; options are `WebhookOptions` fields (duplicate_rate, reorder,
        lost_rate, retry_attempts, retry_delay, concurrency, timeout)."""
        return self._call("POST", "/webhooks", json={"urls": urls, "options": options})

    def webhooks(self, log: bool = False) -> dict[str, Any]:
        """GET /_sandbox/webhooks: counts, whether deliveries are idle, and the log."""
        return self._call("GET", "/webhooks", params={"log": "1"} if log else None)

    def wait_webhooks(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until every queued delivery (retries included) is done; the final view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.webhooks()
            if view["idle"]:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhook deliveries still pending: {view}")
            time.sleep(0.05)

    def violations(self) -> list[dict[str, Any]]:
        """Requests that broke the HighLevel OpenAPI file since the last stats reset."""
        return self._call("GET", "/highlevel/violations")["violations"]

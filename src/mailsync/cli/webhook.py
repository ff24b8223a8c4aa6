"""`mailsync webhook serve` and `mailsync webhook url`: Postalytics' webhooks, in real time."""

from __future__ import annotations

from typing import Annotated

import typer

from mailsync.cli.options import ConfigOpt, announce_store, console, err_console, friendly_errors
from mailsync.config import Settings, WebhookMode, env_resolver, load_settings
from mailsync.sync.context import SyncContext
from mailsync.webhook.service import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    build_receiver,
    check_credentials,
    inline_trigger,
    prefect_trigger,
    serve,
    webhook_secret,
    webhook_url,
)
from mailsync.webhook.trigger import Trigger

webhook_app = typer.Typer(no_args_is_help=True,
                          help="Receive Postalytics' webhooks: events reach HighLevel in seconds.")


def _uses_blocks(settings: Settings) -> bool:
    """Whether any secret the receiver needs lives in a Prefect Secret block."""
    refs = [settings.webhooks.secret_secret]
    for loc in settings.locations:
        refs.append(loc.token_secret)
        if loc.oauth is not None:
            refs += [loc.oauth.client_id_secret, loc.oauth.client_secret_secret,
                     loc.oauth.refresh_token_secret]
    return any(refs)


def _context(settings: Settings) -> SyncContext:
    if _uses_blocks(settings):
        from tasks.secrets import prefect_secret_resolver  # Prefect only when blocks are named

        return SyncContext(settings, resolve_secret=prefect_secret_resolver())
    return SyncContext(settings, resolve_secret=env_resolver())


def _trigger(ctx: SyncContext) -> Trigger:
    if ctx.settings.webhooks.mode == WebhookMode.prefect:
        # The CLI wires Prefect in; the receiver library never imports it.
        from tasks.webhook_events import prefect_emitter

        return prefect_trigger(ctx, prefect_emitter())
    check_credentials(ctx)
    return inline_trigger(ctx)


@webhook_app.command("serve")
@friendly_errors
def serve_cmd(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback: put a TLS proxy "
                                           "in front).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
) -> None:
    """Receive webhooks at POST /postalytics/{drop_id}?key=SECRET and write them to HighLevel.

    Each event is committed to the store before the 202; its writes follow within seconds
    (`[webhooks] mode`: inline, applied here under the location's lease; or prefect, a
    Prefect event whose deployment trigger runs the apply flow). The scheduled sync stays
    the safety net for webhooks that never arrive.
    """
    settings = load_settings(config)
    ctx = _context(settings)
    announce_store(settings.database.url)
    app = build_receiver(ctx, _trigger(ctx))
    err_console.print(f"receiving webhooks for {len(settings.campaigns)} campaign(s) on "
                      f"http://{host}:{port}/postalytics/{{drop_id}}?key=*** "
                      f"(mode {settings.webhooks.mode.value})", highlight=False, markup=False)
    serve(app, host, port)


@webhook_app.command("url")
@friendly_errors
def url_cmd(
    campaign: Annotated[str, typer.Option("--campaign", help="The campaign's drop id.")],
    config: ConfigOpt = None,
) -> None:
    """Print the URL to paste into the campaign's webhook setting in Postalytics.

    It holds the secret key: paste it there only. The address is `[webhooks] public_url`
    (your TLS proxy), or this machine's loopback when none is set.
    """
    settings = load_settings(config)
    ctx = _context(settings)
    console.print(webhook_url(settings, campaign, webhook_secret(ctx)), highlight=False,
                  markup=False, soft_wrap=True)
    if not settings.webhooks.public_url:
        err_console.print("note: [webhooks] public_url is not set: this address is only "
                          "reachable from this machine", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add the `webhook` group to the app."""
    app.add_typer(webhook_app, name="webhook")

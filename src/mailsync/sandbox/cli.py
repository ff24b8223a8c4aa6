"""`mailsync sandbox serve`: both APIs simulated over real HTTP (see docs/sandbox.md)."""

from __future__ import annotations

import json

import typer
import uvicorn

from mailsync.sandbox.app import SandboxConfig, create_app
from mailsync.sandbox.faults import FaultSpec, FaultSpecError

sandbox_app = typer.Typer(no_args_is_help=True,
                          help="Postalytics and HighLevel simulated over real HTTP.")


@sandbox_app.callback()
def _group() -> None:
    """Postalytics and HighLevel simulated over real HTTP."""


@sandbox_app.command()
def serve(
    port: int = typer.Option(8765, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    seed: int = typer.Option(1, help="Seed of the scenario and of the fault draws."),
    contacts: int = typer.Option(60, help="Recipients over all campaigns."),
    faults: str = typer.Option("", help="Fault SPEC, e.g. error=0.1,drop=0.02,slow_seconds=5."),
    time_scale: float = typer.Option(1.0, help="Multiplies every window and delay."),
    messy: bool = typer.Option(False, help="Serve events in mixed shapes, some malformed."),
    campaigns: int = typer.Option(3, help="Campaigns (every third is Canadian)."),
    locations: int = typer.Option(3, help="HighLevel locations."),
    oauth_locations: int = typer.Option(1, help="How many locations use OAuth (the last ones)."),
    daily_quota: int = typer.Option(200_000, help="HighLevel requests per location per day."),
    retry_after: bool = typer.Option(False, help="Add Retry-After to 429 answers."),
    start_hours: float = typer.Option(0.0, help="Advance the simulated clock before serving."),
) -> None:
    """Serve Postalytics at /postalytics/api/v1, HighLevel at /highlevel, admin at /_sandbox."""
    try:
        spec = FaultSpec.parse(faults)
    except FaultSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--faults") from None
    config = SandboxConfig(seed=seed, contacts=contacts, faults=spec, time_scale=time_scale,
                           messy=messy, campaigns=campaigns, locations=locations,
                           oauth_locations=oauth_locations, daily_quota=daily_quota,
                           retry_after=retry_after, start_hours=start_hours)
    app = create_app(config)
    base = f"http://{host}:{port}"
    manifest = app.sandbox.manifest(base)
    typer.echo(f"Postalytics: {manifest['postalytics_base_url']}  "
               f"(API key {manifest['postalytics_api_key']})")
    typer.echo(f"HighLevel:   {manifest['highlevel_base_url']}")
    typer.echo(f"Manifest:    {base}/_sandbox/manifest")
    typer.echo(json.dumps({"faults": spec.to_string(), "time_scale": time_scale,
                           "clock": manifest["clock"]}))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                lifespan="off")

"""Serve all three deployments from this one process: no work pool, no worker.

    MAILSYNC_CONFIG=/etc/mailsync.toml MAILSYNC_TIMEZONE=Europe/Paris \\
        python -m deployments.serve

Same flows and schedules as prefect.yaml (sync every 15 minutes with one run at a time,
reconcile daily at 06:00 in MAILSYNC_TIMEZONE, replay on demand). Each flow run is executed
in a subprocess of this one; trigger a manual run from the UI or with
`prefect deployment run 'replay/mailsync-replay'`.
"""

from __future__ import annotations

import os

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval

from flows.reconcile import reconcile
from flows.replay import replay
from flows.sync import sync_campaigns

SYNC_EVERY_SECONDS = 15 * 60
RECONCILE_CRON = "0 6 * * *"


def build_deployments(timezone: str | None = None) -> list[RunnerDeployment]:
    """The three deployments, as prefect.yaml defines them, for `serve`."""
    tz = timezone or os.environ.get("MAILSYNC_TIMEZONE") or "UTC"
    return [
        sync_campaigns.to_deployment(
            "mailsync-sync", schedules=[Interval(SYNC_EVERY_SECONDS)], tags=["mailsync"],
            # A tick that finds the previous sync still running is dropped, not queued.
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)),
        reconcile.to_deployment(
            "mailsync-reconcile", schedules=[Cron(RECONCILE_CRON, timezone=tz)],
            tags=["mailsync"]),
        replay.to_deployment("mailsync-replay", tags=["mailsync"]),
    ]


def main() -> None:
    """Register the deployments and run their schedules until interrupted."""
    limit = int(os.environ.get("MAILSYNC_SERVE_LIMIT", "4"))
    serve(*build_deployments(), limit=limit)


if __name__ == "__main__":
    main()

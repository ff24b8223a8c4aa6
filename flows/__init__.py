"""Prefect flows: thin compositions of the tasks in `tasks/`."""

from flows.reconcile import reconcile
from flows.replay import replay
from flows.sync import sync_campaigns

__all__ = ["reconcile", "replay", "sync_campaigns"]

#!/usr/bin/env bash
# Create the process work pool (once) and deploy the three deployments from prefect.yaml.
#
#   PREFECT_API_URL=http://prefect.internal:4200/api deployments/pool.sh
#
# Optional: MAILSYNC_HOME (project directory on the workers; default: this checkout),
# MAILSYNC_TIMEZONE (zone of the daily 06:00 reconcile; default UTC), PREFECT (the CLI).
# Then, on each worker machine: prefect worker start --pool mailsync-pool
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PREFECT=${PREFECT:-prefect}
if [ -x .venv/bin/prefect ] && [ "$PREFECT" = prefect ]; then PREFECT=.venv/bin/prefect; fi
POOL=mailsync-pool

if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
  "$PREFECT" work-pool create "$POOL" --type process
fi
export MAILSYNC_HOME=${MAILSYNC_HOME:-$PWD}
"$PREFECT" --no-prompt deploy --all

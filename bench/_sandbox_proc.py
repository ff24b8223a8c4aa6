"""Serve the sandbox in its own process, with every `SandboxConfig` field settable.

`mailsync sandbox serve` runs the same app but has no option for `rate_limit`, which the
rate-limit benchmark needs to measure the machine's ceiling against an unlimited server.

    python -m bench._sandbox_proc --port 8765 --config '{"contacts": 100, "time_scale": 0.01}'
"""

from __future__ import annotations

import argparse
import json

import uvicorn

from mailsync.sandbox.app import SandboxConfig, create_app


def main() -> None:
    """Parse `--port` and `--config` (JSON of SandboxConfig fields) and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", default="{}", help="JSON object of SandboxConfig fields")
    args = parser.parse_args()
    app = create_app(SandboxConfig(**json.loads(args.config)))
    # Same uvicorn settings as `mailsync sandbox serve`; a longer keep-alive so idle client
    # pools between benchmark phases are not cut.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                lifespan="off", timeout_keep_alive=60)


if __name__ == "__main__":
    main()

"""`python -m bench <name> [options]` runs one benchmark; `all` (the default) runs each."""

from __future__ import annotations

import importlib
import os
import sys

from bench._common import ORDER

# Prefect must never phone home from a benchmark, in this process or in its children.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("DO_NOT_TRACK", "1")


def main(argv: list[str]) -> int:
    """Dispatch to the named benchmark (or every one, in order)."""
    name, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("all", argv)
    if name in ("-h", "--help", "help") or (name not in ORDER and name != "all"):
        print(__doc__)
        print("benchmarks: all, " + ", ".join(ORDER))
        return 0 if name in ("-h", "--help", "help") else 2
    for bench in ORDER if name == "all" else (name,):
        importlib.import_module(f"bench.{bench}").main(rest)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""mailsync's benchmarks: `python -m bench <name>|all [--quick]`; results in bench/RESULTS.md."""

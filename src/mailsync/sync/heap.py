"""The collector during a run: what was alive before it is left out of full collections.

Everything a process holds before a run (imported modules, settings, the engine, and in a
worker Prefect's own objects) outlives it. A full collection walks every tracked object, so
each of the 7 or 8 a 10,000-event sync set off walked all of that again: 0.5 s of a sync's
CPU, against 0.1 s with it frozen (bench/RESULTS.md, section 3). Frozen objects are freed
by their reference counts as usual; only cycles among them wait, until the last run in the
process ends and they are handed back to the collector.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_runs = 0


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze what exists now for the length of the block (runs in one process may
    overlap: the heap is handed back when the last of them ends)."""
    global _runs
    with _lock:
        _runs += 1
        gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                gc.unfreeze()

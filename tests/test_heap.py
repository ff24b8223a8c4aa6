"""The collector during runs: the heap before a run is frozen, and handed back after."""

from __future__ import annotations

import gc
import weakref

from mailsync.sync.heap import frozen_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_a_cycle_alive_when_a_run_starts_is_freed_once_the_last_overlapping_run_ends():
    node = _Node()
    gone = weakref.ref(node)
    with frozen_heap():
        del node
        with frozen_heap():
            assert gc.get_freeze_count() > 0
        gc.collect()
        assert gone() is not None  # frozen: the run's full collections skip it
        assert gc.get_freeze_count() > 0  # the outer run is still going
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # no run holds the heap: a long-lived worker does not leak it


def test_the_heap_is_handed_back_when_a_run_fails():
    try:
        with frozen_heap():
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0

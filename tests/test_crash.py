"""Crash safety: SIGKILL the sync anywhere, rerun, and HighLevel still ends exact.

The sync runs as a child process (`python -m mailsync sync`) against the in-process sandbox,
so a kill is a real SIGKILL of a real process holding real connections and a real store.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.sync_helpers import rig


def _finish(r) -> None:  # type: ignore[no-untyped-def]
    done = r.cli("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    end = r.end()
    assert end.exact, end.describe()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_is_exact(tmp_path):
    rnd = random.Random(20261126)
    with rig(tmp_path, contacts=60, time_scale=0.5, messy=True) as r:
        r.sb.set_faults("error=0.05,drop=0.03,reset=0.02")
        kills = attempts = 0
        while kills < 10 and attempts < 30:
            if attempts % 4 == 0:
                r.sb.advance(36)  # new mail arrives between some of the crashes
            attempts += 1
            proc = r.spawn("sync")
            time.sleep(rnd.uniform(0.8, 4.0))
            if proc.poll() is None:  # still working: kill it wherever it is
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=60)
        assert kills >= 10
        r.sb.set_faults(None)
        _finish(r)


# (point, which hit): spread over fetch, resolve, tags and notes, including the moment
# between a note's POST and its ledger update.
FAILPOINTS = [("page-stored", 1), ("page-stored", 3), ("resolved", 1), ("resolved", 6),
              ("before-tags-post", 1), ("before-tags-post", 4), ("after-tags-post", 1),
              ("after-tags-post", 3), ("after-tags-post", 7), ("before-note-post", 1),
              ("before-note-post", 6), ("after-note-post", 1), ("after-note-post", 2),
              ("after-note-post", 5), ("after-note-post", 9), ("after-note-post", 14),
              ("note-recorded", 1), ("note-recorded", 4), ("note-recorded", 11),
              ("page-stored", 2), ("after-note-post", 3), ("resolved", 2)]


@pytest.mark.slow
def test_sigkill_at_every_named_point_then_rerun_is_exact(tmp_path):
    with rig(tmp_path, contacts=60, time_scale=0.2) as r:
        died = 0
        for i, (point, n) in enumerate(FAILPOINTS):
            if i % 5 == 0:
                r.sb.advance(30)
            res = r.cli("sync", extra_env={"MAILSYNC_FAILPOINTS": f"{point}={n}"})
            died += res.returncode == -signal.SIGKILL
        assert died >= 20, f"only {died} of {len(FAILPOINTS)} points were reached"
        _finish(r)

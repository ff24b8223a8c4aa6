"""Location leases: one holder at a time; expired or dead holders are taken over."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import timedelta

from mailsync.store.engine import get_engine
from mailsync.store.leases import acquire_lease, lease_holder, release_lease, worker_identity


def test_one_holder_at_a_time_renewal_release_and_expiry(db_url):
    engine = get_engine(db_url)
    a, b = worker_identity(), worker_identity()
    assert a != b
    assert acquire_lease(engine, "loc", a, timedelta(seconds=30))
    assert not acquire_lease(engine, "loc", b)  # a is alive (this very process)
    assert acquire_lease(engine, "loc", a)  # renewal
    release_lease(engine, "loc", a)
    assert lease_holder(engine, "loc") is None
    assert acquire_lease(engine, "loc", b, timedelta(seconds=0.3))
    time.sleep(0.5)
    assert acquire_lease(engine, "loc", "another-host:123:abc")  # b's lease expired


def test_a_dead_process_on_this_machine_loses_its_lease_at_once(db_url):
    engine = get_engine(db_url)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = f"{socket.gethostname()}:{child.pid}:deadbeef"
    assert acquire_lease(engine, "loc", dead, timedelta(minutes=5))
    assert acquire_lease(engine, "loc", worker_identity())
    # A holder elsewhere cannot be checked: its lease must expire first.
    assert acquire_lease(engine, "loc2", "elsewhere:1:x", timedelta(minutes=5))
    assert not acquire_lease(engine, "loc2", worker_identity())

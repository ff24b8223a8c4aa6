"""The command line as people meet it: failures in one line with documented exit codes,
names instead of ids, honest verify, progress that never passes its total, a dry run that
shows what it would write, one `--since` syntax, `--out` that writes files, quiet Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from sqlmodel import Session, func, select

from mailsync.cli.sync import _CountColumn, _RunProgress
from mailsync.store.models import WriteIntent
from mailsync.sync.runner import RunHooks, run_sync
from tests.sync_helpers import rig

CLOSED = "http://127.0.0.1:9"
WIDE = {"COLUMNS": "250"}


def _lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.strip()]


def _mailsync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNC_")}
    return subprocess.run([sys.executable, "-m", "mailsync", *args], text=True,
                          capture_output=True, timeout=120, env={**full, **WIDE, **env})


# -- help ---------------------------------------------------------------------------------------

def test_flags_that_take_no_value_show_no_type() -> None:
    for args in (["sync", "--help"], ["report", "--help"], ["verify", "--help"],
                 ["config", "check", "--help"], ["--help"]):
        res = _mailsync(*args)
        assert res.returncode == 0, res.stderr
        assert "<bool>" not in res.stdout, res.stdout
    sync_help = _mailsync("sync", "--help").stdout
    assert "--dry-run" in sync_help and "<path>" in sync_help  # valued options keep theirs


# -- the progress display ---------------------------------------------------------------------

def test_a_writes_bar_never_passes_its_total() -> None:
    with Progress(disable=True) as bar:
        from mailsync.config import Settings

        shown = _RunProgress(bar, Settings())
        shown.on_apply("loc-1", 5)
        for _ in range(4):
            shown.on_write("loc-1", 2)
            task = bar.tasks[shown.writes["loc-1"]]
            assert task.completed <= (task.total or 0)
        assert (task.completed, task.total) == (8, 8)  # rows another worker added


def test_fetch_shows_what_was_read_and_how_fast_not_a_question_mark() -> None:
    with Progress(disable=True) as bar:
        task_id = bar.add_task("fetch", total=None)
        bar.update(task_id, completed=300, pages=3)
        text = _CountColumn().render(bar.tasks[task_id]).plain
    assert text.startswith("3 pages, 300 events") and "?" not in text


def test_the_total_is_counted_before_any_write_and_the_writes_stay_within_it(
        tmp_path: Path) -> None:
    with rig(tmp_path, contacts=40) as r:
        r.sb.advance(72)
        totals: dict[str, int] = {}
        done: dict[str, int] = {}

        def on_apply(location: str, total: int) -> None:
            assert location not in done  # before the first outcome of the location
            totals[location] = total

        def progress(location: str, n: int) -> None:
            done[location] = done.get(location, 0) + n
            assert done[location] <= totals[location]

        summary = asyncio.run(run_sync(r.ctx, hooks=RunHooks(on_apply=on_apply,
                                                            progress=progress)))
        assert not summary.errors and sum(done.values()) > 50
        assert done.keys() <= totals.keys()


# -- dry run ----------------------------------------------------------------------------------

def test_dry_run_shows_what_it_would_write_and_writes_nothing(tmp_path: Path) -> None:
    with rig(tmp_path, contacts=20) as r:
        r.sb.advance(72)
        res = r.cli("sync", "--dry-run", extra_env=WIDE)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "would write" in res.stdout and "the first 20 write(s)" in res.stdout
        assert "Postalytics Event: " in res.stdout  # a tag it would add
        name = r.settings.campaigns[0].name
        assert name and name in res.stdout  # campaigns by their names
        with Session(r.ctx.engine) as s:
            assert s.exec(select(func.count()).select_from(WriteIntent)).one() == 0


# -- one --since syntax, --out, bad input ------------------------------------------------------

def test_since_reads_the_same_everywhere_and_out_writes_the_files(tmp_path: Path) -> None:
    with rig(tmp_path, contacts=10) as r:
        r.sb.advance(48)
        r.sync()
        for args in (["replay", "--since", "24h"], ["verify", "--since", "7d"],
                     ["report", "--since", "2026-01-01"]):
            res = r.cli(*args, extra_env=WIDE)
            assert res.returncode in (0, 5), res.stdout + res.stderr
        bad = r.cli("replay", "--since", "yesterday-ish")
        assert bad.returncode == 2 and "cannot read the time 'yesterday-ish'" in bad.stderr
        assert len(_lines(bad.stdout + bad.stderr)) == 1
        status = r.cli("replay", "--status", "done")
        assert status.returncode == 2 and "cannot replay 'done'" in status.stderr
        out = tmp_path / "out"
        rep = r.cli("report", "--out", str(out), extra_env=WIDE)
        assert rep.returncode == 0, rep.stderr
        assert "writes per campaign and location" in rep.stdout  # the table, still
        assert {"report.json", "report.html"} <= {p.name for p in out.iterdir()}
        assert any(p.suffix == ".csv" for p in out.iterdir())


# -- an API down: one line, once, naming it ----------------------------------------------------

@pytest.mark.slow
def test_postalytics_down_is_told_once_naming_the_host_and_the_campaigns(
        tmp_path: Path) -> None:
    with rig(tmp_path, contacts=10) as r:
        env = {**WIDE, "MAILSYNC_POSTALYTICS_URL": f"{CLOSED}/api/v1"}
        started = time.monotonic()
        res = r.cli("sync", extra_env=env)
        out = res.stdout + res.stderr
        assert res.returncode == 4, out
        errors = [ln for ln in _lines(out) if ln.startswith("error:")]
        assert len(errors) == 1, out
        assert "cannot reach Postalytics at 127.0.0.1:9" in errors[0]
        for camp in r.settings.campaigns:
            assert f"{camp.name} ({camp.drop_id})" in errors[0]
        assert "Traceback" not in out and time.monotonic() - started < 60

        res = r.cli("report", "--check-postalytics", extra_env=env)
        out = res.stdout + res.stderr
        assert res.returncode == 4 and "Traceback" not in out, out
        assert len(_lines(out)) < 5 and "cannot reach Postalytics at 127.0.0.1:9" in out


def test_verify_never_claims_what_it_could_not_check(tmp_path: Path) -> None:
    with rig(tmp_path, contacts=30) as r:
        r.sb.advance(72)
        r.sync()
        res = r.cli("verify", extra_env={**WIDE, "MAILSYNC_HIGHLEVEL_URL": CLOSED})
        out = res.stdout + res.stderr
        assert res.returncode == 6, out  # could not check
        assert "No drift" not in out and "Checked 0 of " in out
        unchecked = [ln for ln in _lines(out) if "could not check" in ln and
                     ln.startswith("warning:")]
        assert 1 <= len(unchecked) <= len(r.settings.locations), out  # once per location
        for line in unchecked:
            assert "cannot reach HighLevel at 127.0.0.1:9" in line
            assert any(f"{loc.name} ({loc.id})" in line for loc in r.settings.locations)


# -- Ctrl-C ----------------------------------------------------------------------------------

_SILENT_CONFIG = """
[database]
url = "sqlite:///{db}"
[postalytics]
base_url = "http://127.0.0.1:{port}/api/v1"
[highlevel]
base_url = "{closed}/hl"
[[locations]]
id = "loc-1"
token_env = "T_1"
[[campaigns]]
drop_id = "1"
location = "loc-1"
"""


@pytest.fixture
def silent_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a sync whose Postalytics takes the connection and never answers:
    the run is still going when a signal comes (a refused port let it end first)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    config = tmp_path / "mailsync.toml"
    config.write_text(_SILENT_CONFIG.format(db=tmp_path / "ms.db", port=silent.getsockname()[1],
                                            closed=CLOSED))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNC_")}
    env.update({"MAILSYNC_CONFIG": str(config), "T_1": "tok-123456", "POSTALYTICS_API_KEY": "k"})
    with silent:
        yield env


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.2, 3.0])
def test_ctrl_c_at_any_moment_is_quiet(silent_env: dict[str, str], delay: float) -> None:
    proc = _sync_with_sigint(silent_env, signal.SIG_DFL)
    time.sleep(delay)  # from loading the command (imports) to the run itself
    assert proc.poll() is None, "the command ended before the signal"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert len(_lines(out)) <= 2, out


_CTRL_C_WHILE_BUILDING = """
import os, signal, sys
import mailsync.cli.main
cli = sys.modules["mailsync.cli.main"]

build = cli._hide_flag_types
def interrupted(command):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while Typer builds the command
    build(command)
cli._hide_flag_types = interrupted
sys.argv = ["mailsync", "config", "--help"]
cli.main()
"""


def test_ctrl_c_while_the_command_is_built_is_quiet() -> None:
    # Building the command reads every command's options: on a loaded machine, a moment
    # long enough for Ctrl-C to land there (it printed a traceback).
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_BUILDING], text=True,
                          capture_output=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def _sync_with_sigint(env: dict[str, str], disposition: signal.Handlers) -> subprocess.Popen:
    """`mailsync sync` started with SIGINT at `disposition`, whatever this test run inherited
    (a suite started in the background, `make test &`, passes SIGINT ignored to its children)."""
    return subprocess.Popen([sys.executable, "-m", "mailsync", "sync"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))


def test_a_sync_started_with_sigint_ignored_keeps_ignoring_it(silent_env: dict[str, str]
                                                              ) -> None:
    # As a shell script's `mailsync sync &`: ignored from the start to the end, not only
    # while the command loads (Postalytics never answers, so the run is still going).
    proc = _sync_with_sigint(silent_env, signal.SIG_IGN)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("store: ")  # the command is running
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
    finally:
        proc.kill()
        proc.communicate()


def test_a_log_console_is_plain(tmp_path: Path) -> None:
    """Not on a terminal, no live display is drawn (no stray blank line, no bars in logs)."""
    console = Console(file=StringIO(), force_terminal=False)
    assert not console.is_terminal

"""The benchmark harness works: every benchmark in --quick mode, results well-formed.

Targets are not asserted here (quick sizes say nothing about them); `python -m bench` does
the measuring. Each run writes to a temp RESULTS file, never to bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["ratelimit_efficiency", "calls_per_event", "cpu_memory", "locations_speedup",
           "prefect_overhead", "webhook_latency", "scale_out"]
NEEDS_POSTGRES = {"scale_out"}  # workers share one store, as in production
SLOW = {"scale_out": 400, "cpu_memory": 300}  # seconds: several sandboxes, a lease to expire

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", BENCHES)
def test_quick_benchmark_reports(name: str, tmp_path: Path) -> None:
    if name in NEEDS_POSTGRES and not os.environ.get("MAILSYNC_TEST_DATABASE_URL"):
        pytest.skip("postgres: MAILSYNC_TEST_DATABASE_URL is not set")
    results, out_json = tmp_path / "RESULTS.md", tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "bench", name, "--quick",
                           "--results", str(results), "--json", str(out_json)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=SLOW.get(name, 120))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["name"] == name and report["quick"] is True
    assert report["figures"], "no figures"
    for fig in report["figures"]:
        assert math.isfinite(fig["value"]), fig
        assert fig["ok"] in (True, False, None), fig
        if fig["target"]:
            assert fig["ok"] is not None, f"{fig['name']} has a target but no verdict"
    text = results.read_text()
    assert f"<!-- BEGIN {name} -->" in text and f"<!-- END {name} -->" in text
    assert f"python -m bench {name} --quick" in text
    assert "| figure | measured | target | verdict |" in text
    assert "cores" in text and "date:" in text


def test_results_sections_are_replaced_not_duplicated(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench._common import Report, write_section

    path = tmp_path / "RESULTS.md"
    for value in (1.0, 2.0):
        for name in ("cpu_memory", "ratelimit_efficiency"):
            rep = Report(name, f"title {name}", quick=True)
            rep.add("x", value, "≥ 1", value >= 1)
            write_section(rep, path)
    text = path.read_text()
    assert text.count("<!-- BEGIN cpu_memory -->") == 1
    assert text.count("<!-- BEGIN ratelimit_efficiency -->") == 1
    # Sections keep the benchmarks' order whatever order they were written in.
    assert text.index("ratelimit_efficiency -->") < text.index("cpu_memory -->")
    assert "| x | 2.000 | ≥ 1 | PASS |" in text


def test_a_profile_sample_is_the_http_client_s_when_any_frame_is_in_its_code() -> None:
    from bench.cpu_memory import attribute

    timed = "child_sync (/t/bench/cpu_memory.py:40)"
    raw = "\n".join([
        f"main (/t/bench/cpu_memory.py:9);{timed};_run_once (/py/asyncio/base_events.py:1)"
        ";send (/t/src/mailsync/clients/http.py:3);request (/v/site-packages/httpx/_c.py:5) 7",
        f"main (/t/bench/cpu_memory.py:9);{timed};_store_page (/t/src/mailsync/sync/fetch.py:2)"
        ";do_execute (/v/site-packages/sqlalchemy/engine/default.py:9) 3",
        f"main (/t/bench/cpu_memory.py:9);{timed};_run_once (/py/asyncio/base_events.py:1)"
        ";_SelectorSocketTransport._read_ready (/py/asyncio/selector_events.py:8) 2",
        # Before the clock: not counted.
        "main (/t/bench/cpu_memory.py:9);child_sync (/t/bench/cpu_memory.py:39);"
        "get (/v/site-packages/httpx/_c.py:5) 50",
    ])
    assert attribute(raw, "cpu_memory.py:40)") == {"http_samples": 9, "own_samples": 3}


def test_a_baseline_tree_takes_files_and_whole_directories_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import _common

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    (tmp_path / "src/pkg/versions").mkdir(parents=True)
    (tmp_path / "src/pkg/a.py").write_text("old\n")
    (tmp_path / "src/pkg/versions/0001.py").write_text("one\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    rev = git("rev-parse", "HEAD")
    (tmp_path / "src/pkg/a.py").write_text("new\n")
    (tmp_path / "src/pkg/versions/0002.py").write_text("two\n")  # a migration added since
    monkeypatch.setattr(_common, "ROOT", tmp_path)
    monkeypatch.setattr(_common, "SRC", tmp_path / "src")
    with _common.baseline_src(rev, ("src/pkg/a.py", "src/pkg/versions")) as old:
        assert (old / "pkg/a.py").read_text() == "old\n"
        assert sorted(p.name for p in (old / "pkg/versions").iterdir()) == ["0001.py"]

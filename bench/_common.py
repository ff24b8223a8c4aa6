"""What every benchmark shares: the sandbox in a child process, configs, figures, RESULTS.md.

The sandbox runs in its own process so the server and the code under test never share one
GIL (on two cores, sharing it would halve the throughput of both and measure neither).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # never phone home
os.environ.setdefault("DO_NOT_TRACK", "1")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
ORDER = ("ratelimit_efficiency", "calls_per_event", "cpu_memory", "locations_speedup",
         "prefect_overhead", "webhook_latency", "scale_out")
"""Section order in RESULTS.md (the order `python -m bench all` runs them)."""


# -- the machine ----------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> str:
    """One line describing where the figures were measured."""
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return (f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} cores{mem}, "
            f"Python {platform.python_version()}")


# -- the code under test, in child processes ------------------------------------------------

SRC = ROOT / "src"


def child_env(src: Path = SRC, **extra: str) -> dict[str, str]:
    """The environment of a child process that imports mailsync from `src` (by default this
    tree's own, whichever tree the benchmark runs from, not the installed one)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join((str(src), str(ROOT))), **extra}


@contextlib.contextmanager
def baseline_src(rev: str, paths: tuple[str, ...]) -> Iterator[Path]:
    """A copy of this tree's `src/` with `paths` (files or directories) as they were at git
    revision `rev`, left out where `rev` had none: the code a change replaced, measured beside
    it in one run, with everything else the same."""
    with tempfile.TemporaryDirectory(prefix="mailsync-bench-baseline-") as d:
        base = Path(d)
        shutil.copytree(SRC, base / "src", ignore=shutil.ignore_patterns("__pycache__"))
        for path in paths:
            target = base / path
            if target.is_dir():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
            for name in _git("ls-tree", "-r", "--name-only", rev, "--", path).decode().split():
                (base / name).parent.mkdir(parents=True, exist_ok=True)
                (base / name).write_bytes(_git("show", f"{rev}:{name}"))
        yield base / "src"


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


# -- the sandbox in a child process ----------------------------------------------------------

def free_port() -> int:
    """A loopback port free right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SandboxProcess:
    """`python -m bench._sandbox_proc` on a free port; admin calls over real HTTP."""

    def __init__(self, **config: Any) -> None:
        """`config` holds SandboxConfig fields (contacts, time_scale, rate_limit, ...)."""
        self.config = config
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin: httpx.Client | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SandboxProcess:
        """Start the child and wait until it answers its manifest."""
        for _attempt in range(3):  # the port may be taken between probe and bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench._sandbox_proc", "--port", str(self.port),
                 "--config", json.dumps(self.config)],
                cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.admin = httpx.Client(base_url=self.url + "/_sandbox", timeout=120)
            deadline = time.monotonic() + 60  # 100k-event scenarios take a while to build
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(httpx.TransportError):
                    self.admin.get("/clock").raise_for_status()
                    return self
                time.sleep(0.05)
            err = self.stop()
            if "address already in use" not in err.lower():
                raise RuntimeError(f"sandbox did not start: {err[-2000:]}")
        raise RuntimeError("sandbox did not start: no free port")

    def stop(self) -> str:
        """Stop the child (ours, by its own handle); returns what it wrote to stderr."""
        err = ""
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                _, raw = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, raw = self.proc.communicate()
            err = (raw or b"").decode(errors="replace")
            self.proc = None
        return err

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the sandbox process has used so far."""
        assert self.proc is not None, "sandbox not started"
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """One admin call (`/_sandbox` + path); the JSON answer."""
        assert self.admin is not None, "sandbox not started"
        resp = self.admin.request(method, path, **kw)
        resp.raise_for_status()
        return resp.json()

    def manifest(self) -> dict[str, Any]:
        """GET /_sandbox/manifest."""
        return self.call("GET", "/manifest")

    def advance(self, hours: float) -> dict[str, Any]:
        """POST /_sandbox/advance: move the mail clock; {emitted, total, remaining, ...}."""
        return self.call("POST", "/advance", params={"hours": hours})

    def stats(self) -> dict[str, Any]:
        """GET /_sandbox/stats."""
        return self.call("GET", "/stats")

    def reset_stats(self) -> None:
        """POST /_sandbox/stats/reset."""
        self.call("POST", "/stats/reset")

    def reset_limits(self) -> None:
        """POST /_sandbox/limits/reset: fresh rate windows."""
        self.call("POST", "/limits/reset")

    def contacts(self, location: str) -> list[dict[str, Any]]:
        """The location's HighLevel contacts."""
        return self.call("GET", "/highlevel/state", params={"location": location})["contacts"]

    def state(self) -> dict[str, Any]:
        """HighLevel's state: every contact with its tags and notes (for `end_state`)."""
        return self.call("GET", "/highlevel/state")

    def truth(self) -> dict[str, Any]:
        """Postalytics' ground truth: every campaign's events (for `end_state`)."""
        return self.call("GET", "/postalytics/events")

    def recipients(self) -> list[dict[str, Any]]:
        """Every recipient, with the HighLevel contact each has (for `end_state`)."""
        return self.call("GET", "/postalytics/recipients")["recipients"]

    def advance_all(self, step_hours: float = 24.0, max_steps: int = 60) -> int:
        """Advance until every scheduled event is emitted; returns how many there are."""
        total = 0
        for _ in range(max_steps):
            out = self.advance(step_hours)
            total = int(out["total"])
            if int(out["remaining"]) == 0:
                break
        return total


def highlevel_requests(stats: Mapping[str, Any]) -> int:
    """HighLevel requests the sandbox counted (429s included)."""
    return int(stats["highlevel"]["total"]["requests"])


# -- configs -------------------------------------------------------------------------------

@contextlib.contextmanager
def sandbox_env(manifest: Mapping[str, Any], directory: Path, db_url: str | None = None,
                **kw: Any) -> Iterator[Path]:
    """Write the sandbox config (`mailsync.cli.demo`) and put its secrets in os.environ."""
    from mailsync.cli.demo import write_sandbox_config

    db_url = db_url or f"sqlite:///{directory / 'mailsync.db'}"
    path, env = write_sandbox_config(manifest, directory, db_url, **kw)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield path
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory for one benchmark's store and config."""
    with tempfile.TemporaryDirectory(prefix=f"mailsync-bench-{prefix}-") as d:
        yield Path(d)


# -- figures and RESULTS.md ----------------------------------------------------------------

@dataclass
class Figure:
    """One measured figure beside its target; `ok` is None when there is no target."""

    name: str
    value: float
    target: str = ""
    ok: bool | None = None
    fmt: str = "{:.3f}"

    @property
    def verdict(self) -> str:
        """PASS, MISS or '' (information only)."""
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    """One benchmark's result: figures with targets, plus tables and notes in markdown."""

    name: str
    title: str
    quick: bool
    command: str = ""
    date: str = ""
    machine: str = ""
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, target: str = "", ok: bool | None = None,
            fmt: str = "{:.3f}") -> Figure:
        """Record a figure."""
        fig = Figure(name, float(value), target, ok, fmt)
        self.figures.append(fig)
        return fig

    def markdown(self) -> str:
        """The report's section of RESULTS.md."""
        lines = [f"## {self.title}", "",
                 f"- command: `{self.command}`" + (" (quick mode: small sizes)" if self.quick
                                                   else ""),
                 f"- date: {self.date}; took {self.seconds:.0f} s",
                 f"- machine: {self.machine}", "",
                 "| figure | measured | target | verdict |", "|---|---:|---|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.fmt.format(f.value)} | {f.target} | {f.verdict} |")
        lines.append("")
        lines += self.details
        return "\n".join(lines).rstrip() + "\n"

    def table(self) -> str:
        """A small plain-text table for the terminal."""
        width = max([len(f.name) for f in self.figures] + [6])
        rows = [f"{self.title}", "-" * (width + 40)]
        for f in self.figures:
            rows.append(f"{f.name:<{width}}  {f.fmt.format(f.value):>12}  {f.target:<16} "
                        f"{f.verdict}")
        return "\n".join(rows)


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    out.append("")
    return out


_HEADER = """# mailsync benchmarks

Produced by `python -m bench all` (or `make bench`); each section is rewritten by its own
benchmark (`python -m bench <name>`). Figures are ratios measured within one run, each beside
its target. The sandbox always runs in a separate process from the code under test.
"""


def write_section(report: Report, path: Path = RESULTS) -> None:
    """Replace (or add) the report's section of RESULTS.md, keeping the others."""
    text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    begin, end = f"<!-- BEGIN {report.name} -->", f"<!-- END {report.name} -->"
    block = f"{begin}\n{report.markdown()}{end}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        sections = {n: re.search(re.escape(f"<!-- BEGIN {n} -->"), text) for n in ORDER}
        later = [m.start() for n, m in sections.items()
                 if m and n in ORDER and report.name in ORDER
                 and ORDER.index(n) > ORDER.index(report.name)]
        if later:
            at = min(later)
            text = text[:at] + block + "\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc)
    p.add_argument("--quick", action="store_true", help="small sizes: proves the harness only")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="markdown file whose section is updated (default bench/RESULTS.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    return p


def finish(report: Report, args: argparse.Namespace, started: float, argv: list[str]) -> None:
    """Stamp, print, and store a report."""
    report.command = " ".join(["python -m bench", report.name,
                               *[shlex.quote(a) for a in argv if a != report.name]])
    report.date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report.machine = machine()
    report.seconds = time.monotonic() - started
    print(report.table(), flush=True)
    write_section(report, args.results)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process we started in a session of its own (and its children), politely
    first."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

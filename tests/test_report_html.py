"""The HTML report: self-contained, and its chart really renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mailsync.report.build import build_report
from mailsync.report.html import STAGE_COLOURS, render_html
from tests.report_store import CASES, NOW, US, US_REACH, make_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def read_png(path: Path) -> np.ndarray:
    """A screenshot as a (height, width, 3) uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def count_colour(pixels: np.ndarray, hex_colour: str, tolerance: int = 6) -> int:
    """Pixels within `tolerance` per channel of a #rrggbb colour."""
    want = np.frombuffer(bytes.fromhex(hex_colour.lstrip("#")), dtype=np.uint8).astype(int)
    return int((np.abs(pixels.astype(int) - want) <= tolerance).all(axis=2).sum())


@pytest.fixture
def html_file(tmp_path: Path) -> Path:
    engine = make_store(f"sqlite:///{tmp_path / 'r.db'}")
    path = tmp_path / "report.html"
    path.write_text(render_html(build_report(engine, now=NOW)), encoding="utf-8")
    return path


def test_html_is_self_contained_and_shows_the_problems(html_file: Path) -> None:
    html = html_file.read_text()
    # Nothing loads from anywhere: no scripts, stylesheets, images or fonts by URL.
    assert not re.search(r"<script|<link|<img|@import|url\(|src=", html, re.I)
    assert "xmlns=\"http://www.w3.org/2000/svg\"" in html  # a namespace, not a fetch
    assert html.count("<svg") == 2  # one chart per campaign
    assert "the location&#x27;s token was refused: renew it, then replay" in html
    assert "ada.byrne" not in html and "a***@example.com" in html
    problems = sum(1 for _, k in CASES.values() if k)
    assert f"<b>{problems}</b>problem writes" in html
    # Each journey bar is as wide as its share of pieces.
    widths = [float(w) for w in re.findall(r'width="([\d.]+)" height="20" fill="#2b6cb0"', html)]
    full = max(widths)
    journey = [n for c, n in US_REACH.items() if c.value in (
        "MailPieceCreated", "Mailed", "InTransit", "InLocalArea", "ProcessedForDelivery")]
    assert widths[:len(journey)] == pytest.approx([full * n / 20 for n in journey], abs=0.1)
    assert f"drop {US}" not in html or "Fall US Postcard" in html


def test_chart_renders_in_headless_chromium(html_file: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium first")
    png = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={png}", "--window-size=1280,2000", html_file.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = read_png(png)
    height, width, _ = pixels.shape
    assert (width, height) == (1280, 2000)
    journey = count_colour(pixels, STAGE_COLOURS["journey"])
    # Five journey bars of 20 px high, the widest ~300 px: thousands of pixels if drawn.
    assert journey > 3000, journey
    assert count_colour(pixels, STAGE_COLOURS["response"]) > 100
    white = count_colour(pixels, "#ffffff", 0)
    assert white < width * height * 0.97  # not a blank page

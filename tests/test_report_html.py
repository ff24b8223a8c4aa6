"""The HTML report: self-contained, and its chart really renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from mailsync.report.build import build_report
from mailsync.report.html import STAGE_COLOURS, render_html
from tests.test_report import CASES, NOW, US, US_REACH, make_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def read_png(data: bytes) -> np.ndarray:
    """An 8-bit, non-interlaced RGB or RGBA PNG as a (height, width, 3) uint8 array.

    Pillow is not a dependency: this is the few lines of PNG a screenshot needs. Sub and Up
    rows are unfiltered with numpy; Average and Paeth depend on the left pixel, so they loop.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        ftype, line = raw[y, 0], raw[y, 1:]
        if ftype == 0:
            cur = line.copy()
        elif ftype == 1:  # Sub: a running sum per channel along the row
            cur = (np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint64) % 256
                   ).astype(np.uint8).reshape(stride)
        elif ftype == 2:
            cur = line + prev  # uint8 wraps, as the filter wants
        else:
            cur = bytearray(line.tobytes())
            up = prev.tobytes()
            for i in range(stride):
                a = cur[i - channels] if i >= channels else 0
                b, c = up[i], up[i - channels] if i >= channels else 0
                if ftype == 3:
                    cur[i] = (cur[i] + (a + b) // 2) & 255
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    cur[i] = (cur[i] + pred) & 255
            cur = np.frombuffer(bytes(cur), dtype=np.uint8)
        out[y], prev = cur, cur
    return out.reshape(height, width, channels)[:, :, :3]


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
    pixels = read_png(png.read_bytes())
    height, width, _ = pixels.shape
    assert (width, height) == (1280, 2000)
    journey = count_colour(pixels, STAGE_COLOURS["journey"])
    # Five journey bars of 20 px high, the widest ~300 px: thousands of pixels if drawn.
    assert journey > 3000, journey
    assert count_colour(pixels, STAGE_COLOURS["response"]) > 100
    white = count_colour(pixels, "#ffffff", 0)
    assert white < width * height * 0.97  # not a blank page

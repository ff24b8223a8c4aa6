"""Headless Chromium for tests, through Playwright: Debian's /usr/bin/chromium, never a
browser Playwright would download (this machine cannot fetch one).

Screenshots go to the test's temporary folder, or to $MAILSYNC_SCREENSHOTS when set:
`MAILSYNC_SCREENSHOTS=docs/img pytest tests/test_report_support.py` refreshes the ones
docs/support.md shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh page in headless Chromium (no network beyond what the test opens)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium first")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def shot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $MAILSYNC_SCREENSHOTS, else the test's temporary folder."""
    target = Path(os.environ.get("MAILSYNC_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target

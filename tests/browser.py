"""Headless Chromium (Debian's chromium + chromium-driver, through Selenium) for the tests of the web pages:
the chat page, the review page, the eval report. (Not in conftest.py: nested conftest files would shadow
its name.)"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools_required import require

# Screenshots are kept here: $TWINLM_TEST_ARTIFACTS where set (CI collects that folder), else
# tests/artifacts/ (git-ignored).
ARTIFACTS = Path(os.environ.get("TWINLM_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


def kept(name: str) -> Path:
    """Where a screenshot called `name` is kept (the folder made)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


@contextlib.contextmanager
def chromium(profile: Path, *, width: int, height: int) -> Iterator[Any]:
    """A headless Chromium webdriver with a window of width x height, its own profile folder `profile`,
    none of the browser's own network traffic (updates, sync), and the browser console kept for
    `get_log("browser")`; quit when the block ends. Skipped (failed in CI) where Chromium is missing."""
    require("chromium")
    require("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    )
    try:
        yield driver
    finally:
        driver.quit()

"""The report opens in headless Chromium with no console errors and every plot present (each <img> a
decoded PNG), text from the chats shown as text (a chat line holding <script> and an <img onerror> runs
nothing), readable on a phone (no sideways scrolling at 390 px); a screenshot of it is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, kept
from eval_helpers import HOSTILE

from twinlm.evaluate.report import render_html


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chrome-profile"), width=1000, height=900) as driver:
        yield driver


def test_report_in_headless_chromium(browser: Any, evaluated: dict) -> None:  # type: ignore[type-arg]
    report = Path(evaluated["report"])
    browser.set_window_size(1000, 900)
    browser.get(report.as_uri())
    browser.get_log("browser")  # (drained: only this page's messages count below)
    browser.refresh()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    images = browser.find_elements("tag name", "img")
    alts = [image.get_attribute("alt") for image in images]
    # the loss curves, the metrics per checkpoint and one style plot per person with held-out replies
    assert alts == ["loss curves", "metrics per checkpoint", "style distributions of Alex Rivera"]
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        assert image.get_attribute("src").startswith("data:image/png;base64,")  # self-contained
    assert browser.execute_script("return document.scripts.length") == 0
    assert HOSTILE in browser.find_element("tag name", "body").text  # shown, not run
    assert "hey" in browser.find_element("tag name", "body").text  # the probe transcripts
    viewport = browser.find_element("css selector", "meta[name=viewport]").get_attribute("content")
    assert "width=device-width" in viewport

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1000, min(height + 100, 8000))
    shot = kept("eval-report.png")
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    browser.set_window_size(390, 844)  # a phone
    browser.refresh()
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert browser.save_screenshot(str(kept("eval-report-phone.png")))


def test_plots_missing_data_are_said_in_words() -> None:
    data = {
        "run": "r<1>",
        "created": "2026-01-01",
        "tuned": "final",
        "points": [{"label": "base", "step": 0}, {"label": "final", "step": 3}],
        "real": {},
        "best": {},
    }
    page = render_html(data)
    assert "<img" not in page
    assert "No data for: loss curves" in page and "r&lt;1&gt;" in page

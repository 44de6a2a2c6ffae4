"""The web chat page in headless Chromium (Debian's chromium + chromium-driver, through Selenium): it loads
with no console errors, sends a message, shows the reply streaming in piece by piece, never turns model
text into markup, switches persona and starts over.

A screenshot is kept: web-page.png in $TWINLM_TEST_ARTIFACTS where set (CI collects that folder), else
in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serve_fakes as kit
from browser import chromium, kept
from serving import serving, wait_until

from twinlm.config import ServeConfig
from twinlm.serve.backends import Sampling
from twinlm.serve.server import create_app

# Markup, an attribute-borne script and an emoji: shown as text, exactly.
REPLY = 'sure <b>sunday</b> & "evening" <img src=x onerror="document.title=1"> works 🍝'


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile", width=900, height=700) as browser:
        yield browser


def test_web_page_streams_replies_switches_persona_and_starts_over(driver: Any, tiny_tokenizer: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    backend = kit.FakeBackend(tiny_tokenizer, REPLY, delay=0.05)
    twin = kit.make_fake_twin(backend)
    personas: list[str] = []
    render = twin.prompt_from_messages

    def prompt_from_messages(persona: str, messages: Any, **kwargs: Any) -> list[int]:
        personas.append(persona)
        return render(persona, messages, **kwargs)

    twin.prompt_from_messages = prompt_from_messages  # type: ignore[method-assign]
    app = create_app(twin, ServeConfig(), sampling=Sampling())

    def messages() -> list[tuple[str, str, str]]:
        return [
            (
                box.get_attribute("class"),
                box.find_element(By.CLASS_NAME, "who").text,
                box.find_element(By.CLASS_NAME, "text").get_attribute("textContent"),
            )
            for box in driver.find_elements(By.CSS_SELECTOR, "#log .message")
        ]

    def send(text: str) -> list[str]:
        """Type and press Enter; the reply's texts as seen while it streamed."""
        box = driver.find_element(By.ID, "input")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        seen: list[str] = []

        def finished() -> bool:
            shown = messages()
            if shown and "assistant" in shown[-1][0]:
                seen.append(shown[-1][2])
                return "streaming" not in shown[-1][0]
            return False

        wait_until(finished, "the reply is complete", 60)
        return seen

    with serving(app) as url:
        driver.get(f"{url}/")
        persona = Select(driver.find_element(By.ID, "persona"))
        wait_until(lambda: len(persona.options) == 2, "the personas are listed")
        assert [o.text for o in persona.options] == ["Alex Rivera", "Sam"]
        assert [o.get_attribute("value") for o in persona.options] == ["alex-rivera", "sam"]

        seen = send("are you free on sunday?")
        assert messages() == [
            ("message user", "You", "are you free on sunday?"),
            ("message assistant", "Alex Rivera", REPLY),
        ]
        # It streamed: parts of the reply were on the page before all of it.
        partial = [text for text in seen if text and text != REPLY]
        assert partial and all(REPLY.startswith(text) for text in partial)
        # Model text is text: no element made from it, nothing run from it.
        assert driver.find_elements(By.CSS_SELECTOR, "#log b, #log img") == []
        assert driver.title == "twinlm"

        seen = send("and on monday?")
        assert [m[1:] for m in messages()][2:] == [("You", "and on monday?"), ("Alex Rivera", REPLY)]
        # The second request carried the whole chat.
        assert personas == ["Alex Rivera", "Alex Rivera"]

        persona.select_by_visible_text("Sam")
        assert messages() == []
        assert driver.find_element(By.ID, "status").text == "Chatting with Sam."
        send("hi Sam")
        assert messages() == [("message user", "You", "hi Sam"), ("message assistant", "Sam", REPLY)]
        assert personas[-1] == "Sam"

        shot = kept("web-page.png")
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        driver.find_element(By.ID, "reset").click()
        assert messages() == []

        logs = driver.get_log("browser")
        assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == [], logs


def test_web_page_asks_for_the_key_and_stops_a_reply(driver: Any, tiny_tokenizer: Any) -> None:
    """A server with TWINLM_API_KEY: the page asks for the key before its first call (no 401 in the
    console); the Stop button ends a reply mid-way, keeps what came, and frees the server's worker."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    backend = kit.FakeBackend(tiny_tokenizer, "word " * 2000, delay=0.1)
    app = create_app(kit.make_fake_twin(backend), ServeConfig(), sampling=Sampling(), api_key="k-123")
    with serving(app) as url:
        driver.get(f"{url}/")
        form = driver.find_element(By.ID, "key-form")
        wait_until(form.is_displayed, "the key is asked for")
        driver.find_element(By.ID, "key").send_keys("k-123")
        form.find_element(By.TAG_NAME, "button").click()
        persona = Select(driver.find_element(By.ID, "persona"))
        wait_until(lambda: len(persona.options) == 2, "the personas are listed")
        assert not form.is_displayed()

        driver.find_element(By.ID, "input").send_keys("tell me a long story\n")
        text = lambda: driver.find_element(By.CSS_SELECTOR, "#log .message.assistant .text")  # noqa: E731
        wait_until(lambda: len(text().get_attribute("textContent").split()) >= 3, "the reply streams")
        assert driver.find_element(By.ID, "send").text == "Stop"
        driver.find_element(By.ID, "send").click()
        wait_until(lambda: driver.find_element(By.ID, "status").text == "Stopped.", "the reply stops")
        kept = text().get_attribute("textContent")
        assert kept.startswith("word word word") and len(kept.split()) < 2000
        assert driver.find_element(By.ID, "send").text == "Send"
        wait_until(lambda: httpx.get(f"{url}/health", timeout=30).json()["busy"] == 0, "the worker is freed")

        logs = driver.get_log("browser")
        assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == [], logs

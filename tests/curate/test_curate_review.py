"""The review page (issue 13) in headless Chromium: filter, open a session, exclude it, edit a message, undo;
the corpus reflects each action, the browser logs no error, and a message holding HTML and script is shown
as text and never run. A screenshot is kept (in $TWINLM_TEST_ARTIFACTS when set). Plus the API's guards."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium
from curate_data import rows
from fastapi.testclient import TestClient
from serving import serving

from twinlm.corpus import changes
from twinlm.corpus.db import Corpus
from twinlm.serve.review import review_app

HOSTILE = (
    '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned too"</script> & <b>bold</b>'
)


def message(workspace: Path, text: str) -> int:
    return int(rows(workspace, "SELECT id FROM messages WHERE text = ?", (text,))[0][0])


def conversation(workspace: Path) -> int:
    return int(
        rows(workspace, "SELECT id FROM conversations WHERE source = 'telegram' AND native_id = '42'")[0][0]
    )


@pytest.fixture
def server(workspace: Path) -> Iterator[str]:
    with serving(review_app(workspace)) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with chromium(tmp_path / "chrome-profile", width=1400, height=1000) as driver:
        driver.implicitly_wait(0)
        yield driver


def wait(condition: object, what: str, timeout: float = 15) -> None:
    """Poll `condition` (the page re-renders after each change: an element may be replaced meanwhile)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def test_review_page_in_headless_chromium(
    server: str, browser: object, workspace: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    hostile_id = message(workspace, "then I need to try it this weekend")
    with Corpus(workspace / "corpus.db") as corpus:
        changes.apply(corpus, "edit", {}, "message", [hostile_id], {"user_text": HOSTILE})
    conv = conversation(workspace)
    driver.get(server + "/review")  # type: ignore[attr-defined]
    find = driver.find_element  # type: ignore[attr-defined]
    find_all = driver.find_elements  # type: ignore[attr-defined]
    wait(lambda: find(By.TAG_NAME, "body").get_attribute("data-ready") == "1", "the page to load")
    assert "7 conversations" in find(By.ID, "list-info").text

    # Filter: by chat name, then by text.
    find(By.ID, "f-chat").send_keys("jordan", Keys.ENTER)
    wait(lambda: "of 2 conversations" in find(By.ID, "list-info").text, "the chat filter")
    find(By.ID, "f-chat").clear()
    find(By.ID, "f-search").send_keys("north wall", Keys.ENTER)
    wait(lambda: "of 1 conversations" in find(By.ID, "list-info").text, "the text search")

    # Open the conversation; j moves to session 1, x excludes it.
    find(By.CSS_SELECTOR, f'#list li[data-id="{conv}"]').click()
    wait(lambda: len(find_all(By.CSS_SELECTOR, ".session")) == 2, "the sessions")
    assert find(By.CSS_SELECTOR, ".session.current").get_attribute("data-index") == "0"
    trained = [e.text for e in find_all(By.CSS_SELECTOR, '.session[data-index="0"] .msg.trained .text')]
    assert trained == ["yes, I will be there at seven", "sure thing, I have the long one"]
    body = find(By.TAG_NAME, "body")
    body.send_keys("j")
    wait(lambda: find(By.CSS_SELECTOR, ".session.current").get_attribute("data-index") == "1", "j")
    body.send_keys("x")
    session_1 = (
        "SELECT excluded FROM messages WHERE source = 'telegram' "
        "AND native_id IN ('42:5', '42:6', '42:7', '42:8')"
    )
    wait(lambda: rows(workspace, session_1) == [(1,)] * 4, "the session excluded in the corpus")
    wait(
        lambda: "excluded" in find(By.CSS_SELECTOR, '.session[data-index="1"]').get_attribute("class"),
        "shown",
    )

    # The script-bearing message is text: nothing of it became an element, nothing ran.
    hostile = f'.msg[data-id="{hostile_id}"] .text'
    wait(lambda: find(By.CSS_SELECTOR, hostile).text == HOSTILE, "the hostile message shown as text")
    assert find_all(By.CSS_SELECTOR, "#detail img, #detail script, #detail b") == []
    assert "pwned" not in driver.title  # type: ignore[attr-defined]

    # Edit a message inline.
    edited = message(workspace, "sure thing, I have the long one")
    wait(lambda: find(By.CSS_SELECTOR, f'.msg[data-id="{edited}"] .actions button').click() or True, "Edit")
    area = find(By.CSS_SELECTOR, f'.msg[data-id="{edited}"] textarea')
    area.clear()  # an empty text is refused with one line (the browser logs the 400 response itself)
    find(By.CSS_SELECTOR, f'.msg[data-id="{edited}"] button.save').click()
    wait(lambda: "the new text is empty" in find(By.ID, "status").text, "the error line")
    assert find(By.ID, "status").get_attribute("class") == "error"
    area.send_keys("sure, the 70 m rope")
    find(By.CSS_SELECTOR, f'.msg[data-id="{edited}"] button.save').click()
    user_text = "SELECT user_text FROM messages WHERE id = ?"
    wait(
        lambda: rows(workspace, user_text, (edited,)) == [("sure, the 70 m rope",)], "the edit in the corpus"
    )
    wait(
        lambda: find(By.CSS_SELECTOR, f'.msg[data-id="{edited}"] .text').text == "sure, the 70 m rope",
        "the edit shown",
    )
    assert "samples" in find(By.ID, "totals").text

    # u undoes the edit, then the exclusion.
    find(By.TAG_NAME, "body").send_keys("u")
    wait(lambda: rows(workspace, user_text, (edited,)) == [(None,)], "the edit undone")
    wait(lambda: "Undid change" in find(By.ID, "status").text, "the undo reported")
    find(By.TAG_NAME, "body").send_keys("u")
    wait(lambda: rows(workspace, session_1) == [(0,)] * 4, "the exclusion undone")
    wait(
        lambda: "excluded" not in find(By.CSS_SELECTOR, '.session[data-index="1"]').get_attribute("class"),
        "the exclusion undone on the page",
    )

    shot = tmp_path / "review.png"
    driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
    assert shot.stat().st_size > 1000
    artifacts = os.environ.get("TWINLM_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "review.png")
    errors = [
        e
        for e in driver.get_log("browser")  # type: ignore[attr-defined]
        if e["level"] == "SEVERE" and not ("/review/api/edit" in e["message"] and "400" in e["message"])
    ]
    assert errors == []


def test_review_api_guards(workspace: Path) -> None:
    client = TestClient(review_app(workspace), base_url="http://127.0.0.1:8765")
    mid = message(workspace, "not yet, is it hard?")
    # Another host name (DNS rebinding) and a form post (another site's page) are refused.
    elsewhere = TestClient(review_app(workspace), base_url="http://attacker.example")
    assert elsewhere.get("/review/api/conversations").status_code == 403
    form = client.post(
        "/review/api/edit",
        content=f"message={mid}&drop=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    assert client.post("/review/api/edit", json={"message": 999999, "text": "x"}).status_code == 404
    assert client.post("/review/api/edit", json={"message": mid, "text": "  "}).status_code == 400
    assert client.post("/review/api/edit", json={"message": "1; DROP TABLE", "drop": True}).status_code == 400
    assert client.get("/review/api/conversations/999999").status_code == 404
    assert (
        client.post(
            "/review/api/exclude", json={"conversation": conversation(workspace), "session": 9}
        ).status_code
        == 404
    )
    assert client.post("/review/api/undo", json={}).status_code == 409  # nothing to undo: one line
    assert client.get("/review/api/conversations", params={"search": "!!!"}).status_code == 409
    assert rows(workspace, "SELECT count(*) FROM changes") == [(0,)]
    page = client.get("/review")
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_live_count_follows_changes_before_and_after_a_build(workspace: Path) -> None:
    import json

    from twinlm.prepare.build import build
    from twinlm.workspace import open_workspace

    client = TestClient(review_app(workspace), base_url="http://127.0.0.1")
    conv = conversation(workspace)
    before = client.get("/review/api/totals").json()
    assert before["samples"] > 2 and "no build yet" in before["label"]
    client.post("/review/api/exclude", json={"conversation": conv, "session": 1})
    assert client.get("/review/api/totals").json()["samples"] == before["samples"] - 1
    client.post("/review/api/undo", json={})
    assert client.get("/review/api/totals").json() == before

    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        build(ws.config, corpus, workspace / "data")
    report = json.loads((workspace / "data" / "build.json").read_text())
    built = client.get("/review/api/totals").json()
    assert built["samples"] == sum(report["samples"].values())
    assert built["trained_tokens"] == sum(report["trained_tokens"].values())
    client.post("/review/api/exclude", json={"conversation": conv})
    after = client.get("/review/api/totals").json()
    assert after["samples"] == built["samples"] - 2 and after["trained_tokens"] < built["trained_tokens"]
    client.post("/review/api/undo", json={})
    assert client.get("/review/api/totals").json()["samples"] == built["samples"]


def test_twinlm_review_serves_the_page_on_loopback(workspace: Path) -> None:
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "twinlm",
        "review",
        "--no-browser",
        "--port",
        str(port),
        "-w",
        str(workspace),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        page = b""
        for _ in range(300):
            try:
                with direct.open(f"http://127.0.0.1:{port}/review", timeout=2) as response:
                    page = response.read()
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.1)
        assert b"twinlm review" in page, server.stdout.read() if server.poll() is not None else "no answer"
    finally:
        server.terminate()
        server.wait(10)


def test_a_corpus_another_command_holds_is_a_409_with_one_line_not_a_500(workspace: Path) -> None:
    """An ingest writing (an exclusive lock) or a build streaming a long chat (a shared lock, which keeps a
    change from being written): the page waits SQLite's 5 s, then says why, and nothing was half-done."""
    import sqlite3

    client = TestClient(review_app(workspace), base_url="http://127.0.0.1")
    mid = message(workspace, "not yet, is it hard?")
    other = sqlite3.connect(workspace / "corpus.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # an ingest, once its changes outgrow SQLite's cache
        listed = client.get("/review/api/conversations")
        other.execute("ROLLBACK")
        other.execute("BEGIN")  # a build reading: a shared lock until its read ends
        other.execute("SELECT count(*) FROM messages").fetchone()
        edited = client.post("/review/api/edit", json={"message": mid, "drop": True})
        other.execute("ROLLBACK")
    finally:
        other.close()
    for answer in (listed, edited):
        assert answer.status_code == 409, answer.text
        assert "the corpus is in use by another twinlm command" in answer.json()["detail"]
    assert rows(workspace, "SELECT count(*) FROM changes") == [(0,)]
    assert client.post("/review/api/edit", json={"message": mid, "drop": True}).status_code == 200

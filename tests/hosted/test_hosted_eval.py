"""`twinlm eval --backend mistral-api` (issue 14, item 2): a hosted run's fine-tuned model against its base
model, both through the fake Mistral API on loopback (the conftest socket guard fails anything else):
replies in held-out contexts and probes through eval's one generation function, the report written with
perplexity said to be unavailable (never a number), and nothing sent without the key and a confirmation."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fake_mistral import FakeMistral
from typer.testing import CliRunner

from twinlm import privacy
from twinlm.cli import app
from twinlm.evaluate.hosted import UNAVAILABLE

TUNED = "ft:open-mistral-7b:x:abc123"
BASE = "open-mistral-7b"  # the model the conftest's twin.yaml fine-tunes


def _trained(ws: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--backend", "mistral-api", "-w", str(ws), "--name", "h", "--yes"]
    )
    assert result.exit_code == 0, result.stderr


def _eval(ws: Path, *args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(app, ["eval", "-w", str(ws), "--backend", "mistral-api", *args], input=input)


class _Cells(HTMLParser):
    """The text of each table cell of a page (and whether it parses at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._in = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in = False

    def handle_data(self, data: str) -> None:
        if self._in:
            self.cells[-1] += data


def test_eval_asks_the_tuned_and_the_base_model_and_says_perplexity_is_unavailable(
    fake: FakeMistral, workspace: Path, key: str
) -> None:
    _trained(workspace)
    before = len(fake.requests)
    result = _eval(workspace, "--yes")
    assert result.exit_code == 0, result.stderr

    # Only chat completions, all to the fake (the socket guard fails any other address).
    sent = fake.requests[before:]
    assert sent and {(r.method, r.path) for r in sent} == {("POST", "/v1/chat/completions")}
    assert all(r.headers["authorization"] == f"Bearer {key}" for r in sent)
    # The tuned model first, then the base model, each asked the same things.
    models = [b["model"] for b in fake.chat_bodies]
    half = len(models) // 2
    assert models == [TUNED] * half + [BASE] * half and half == 5  # 1 held-out place + 2 probes x 2 starters
    said = [[m for m in b["messages"] if m["role"] != "system"] for b in fake.chat_bodies]
    assert said[:half] == said[half:]
    place = fake.chat_bodies[0]
    assert place["messages"][-1] == {"role": "user", "content": "Sam: movie friday?"}  # the eval split's chat
    assert (place["temperature"], place["max_tokens"], place["random_seed"]) == (0.0, 96, 0)  # greedy

    report = json.loads((workspace / "reports" / "eval-h.json").read_text())
    assert [(p["label"], p["model"]) for p in report["points"]] == [("base", BASE), ("final", TUNED)]
    for point in report["points"]:
        assert point["perplexity"] == point["eval_loss"] == UNAVAILABLE  # a sentence, never a number
        assert point["replies"] == {"Alex Rivera": [fake.reply]}
        assert isinstance(point["style_score"], float)
        assert [p["persona"] for p in point["probes"]] == ["Alex Rivera", "Sam"]
    assert report["hosted"]["fine_tuned_model"] == TUNED and report["hosted"]["base_url"] == fake.url
    assert report["train_metrics"]  # the job's own loss curve, from the run's metrics.jsonl
    assert report["real"]["Alex Rivera"][0]["real"] == "only if it's not a sequel"

    page = (workspace / "reports" / "eval-h.html").read_text()
    cells = _Cells()
    cells.feed(page)
    assert cells.cells.count(UNAVAILABLE) == 4  # eval loss and perplexity of base and tuned
    assert "no token probabilities" in page and fake.reply in page and "<script" not in page
    assert 'alt="loss curves"' in page
    assert "n/a" in result.stdout and "Report:" in result.stdout  # the table in the terminal


def test_refusing_the_confirmation_sends_nothing(
    fake: FakeMistral, workspace: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trained(workspace)
    before = len(fake.requests)
    result = _eval(workspace)  # no terminal to ask, no --yes
    assert result.exit_code == 1 and "run again with --yes" in result.stderr
    monkeypatch.setattr(privacy, "_interactive", lambda: True)
    result = _eval(workspace, input="n\n")
    assert result.exit_code == 1 and "nothing was sent to the Mistral API" in result.stderr
    # It said what would have been sent, and where.
    stderr = " ".join(result.stderr.split())
    assert f"each to {TUNED} (tuned) and to {BASE} (base)" in stderr and fake.url in stderr
    assert "1 held-out places to reply in, from 1 eval conversations" in stderr
    assert "is about to be sent 10 prompts" in stderr
    assert len(fake.requests) == before and fake.chat_bodies == []
    assert not (workspace / "reports" / "eval-h.json").exists()


def test_without_a_key_nothing_is_sent(
    fake: FakeMistral, workspace: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trained(workspace)
    before = len(fake.requests)
    monkeypatch.delenv("MISTRAL_API_KEY")
    result = _eval(workspace, "--yes")
    assert result.exit_code == 1 and "MISTRAL_API_KEY is not set" in result.stderr
    assert len(fake.requests) == before


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--pick", "style"], "a hosted run has one model, at Mistral"),
        (["local-run"], "not a hosted run (no hosted.json)"),
    ],
)
def test_options_that_do_not_fit_are_one_line(
    fake: FakeMistral, workspace: Path, key: str, args: list[str], said: str
) -> None:
    _trained(workspace)
    before = len(fake.requests)
    result = _eval(workspace, "--yes", *args)
    assert result.exit_code == 1 and said in " ".join(result.stderr.split())
    assert len(fake.requests) == before


def test_a_hosted_run_without_the_backend_points_at_it(fake: FakeMistral, workspace: Path, key: str) -> None:
    _trained(workspace)
    result = CliRunner().invoke(app, ["eval", "-w", str(workspace), "h"])
    assert result.exit_code == 1
    assert "evaluated with twinlm eval --backend mistral-api" in " ".join(result.stderr.split())


def test_a_base_model_the_api_does_not_serve_leaves_the_tuned_scores(
    fake: FakeMistral, workspace: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trained(workspace)
    chat = fake._chat

    def only_fine_tuned(h: Any, body: dict[str, Any]) -> None:
        if not body["model"].startswith("ft:"):
            fake.chat_bodies.append(body)
            return fake._send(h, 400, {"message": f"Invalid model: {body['model']}"})
        return chat(h, body)

    monkeypatch.setattr(fake, "_chat", only_fine_tuned)
    result = _eval(workspace, "--yes")
    assert result.exit_code == 0, result.stderr
    report = json.loads((workspace / "reports" / "eval-h.json").read_text())
    base, tuned = report["points"]
    assert "Invalid model: open-mistral-7b" in base["unavailable"] and "replies" not in base
    assert tuned["replies"] == {"Alex Rivera": [fake.reply]}
    assert any("could not be asked through the API" in w for w in report["warnings"])
    assert "could not be asked through the API" in " ".join(result.stderr.split())


def test_the_hosted_report_in_headless_chromium(
    fake: FakeMistral, workspace: Path, key: str, tmp_path: Path
) -> None:
    # As tests/evaluate/test_eval_report.py checks a local run's report: no console error, each plot a decoded
    # PNG, nothing run, no sideways scrolling on a phone even with the sentences in the score table.
    from browser import chromium, kept

    _trained(workspace)
    assert _eval(workspace, "--yes").exit_code == 0
    with chromium(tmp_path / "chrome-profile", width=1000, height=900) as browser:
        browser.get((workspace / "reports" / "eval-h.html").as_uri())
        browser.get_log("browser")
        browser.refresh()
        assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
        images = browser.find_elements("tag name", "img")
        assert [i.get_attribute("alt") for i in images] == [
            "loss curves",
            "metrics per checkpoint",
            "style distributions of Alex Rivera",
        ]
        for image in images:
            assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
        assert browser.execute_script("return document.scripts.length") == 0
        assert UNAVAILABLE in browser.find_element("tag name", "body").text
        browser.set_window_size(390, 844)
        browser.refresh()
        assert browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 0
        assert browser.save_screenshot(str(kept("eval-report-hosted-phone.png")))

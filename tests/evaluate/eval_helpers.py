"""Helpers of the evaluate tests: a tiny workspace built and trained a few steps (chats with friends, a
ChatGPT export for the assistant persona, held-out document questions), and the CLI run in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from twinlm.config import BuildConfig, TrainConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.evaluate.settings import EvalConfig
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.models.tiny import ensure_tiny
from twinlm.prepare.build import build
from twinlm.workspace import init_workspace

from testdata import EXAMPLES

CLEAN = {"low_quality_sessions": False, "conversation_enders": "off", "non_replies": False}
RUN = "r"
HOSTILE = "<script>console.error('x')</script><img src=x onerror=\"console.error('y')\">"
QUESTIONS = [
    {"question": "When is the rent due?", "answer": "on the first of the month", "chunk_id": "doc:a:0"},
    {"question": "Who pays for repairs?", "answer": "the landlord", "chunk_id": "doc:a:1"},
    {"question": "How long is the notice period?", "answer": "three months", "chunk_id": "doc:a:2"},
]


def make_workspace(root: Path, *, eval_fraction: float = 0.25, train: bool = True, steps: int = 4) -> Path:
    """A workspace with a tiny Mistral-architecture base, a built dataset and (with `train`) run `r`."""
    from twinlm.train.loop import train as train_run

    exports = root / "exports"
    exports.mkdir(parents=True)
    for k, who in enumerate(("Mom", "Sam", "Priya", "Jo")):
        lines = []
        for day in range(1, 5):
            t, m = f"{day:02d}/03/2024, {8 + k:02d}", 10 + 4 * k
            lines.append(f"{t}:{m:02d} - {who}: {who} here. Did you eat dinner today?")
            lines.append(f"{t}:{m + 1:02d} - Alex Rivera: yes, pasta with tomato sauce again 🍝")
            lines.append(
                f"{t}:{m + 2:02d} - {who}: Good, call me on sunday please {HOSTILE if day == 4 else ''}"
            )
            lines.append(f"{t}:{m + 3:02d} - Alex Rivera: sure, sunday evening works for me")
        (exports / f"WhatsApp Chat with {who}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (exports / "chatgpt").mkdir()
    shutil.copy(EXAMPLES / "chatgpt" / "conversations.json", exports / "chatgpt")  # the assistant persona
    ws = root / "ws"
    model_dir = ws / "models" / "base"
    ensure_tiny(model_dir)
    config = TwinConfig(
        me=["Alex Rivera"],
        build=BuildConfig(model=str(model_dir), eval_fraction=eval_fraction, max_length=256, clean=CLEAN),
        train=TrainConfig(
            method="lora",
            max_steps=steps,
            batch_tokens=256,
            grad_accum=1,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            eval_every=steps,
            save_every=2,
            log_every=1,
        ),
        eval=EvalConfig(max_replies=6, max_new_tokens=8, max_friends=2),
    )
    init_workspace(ws, config)
    with Corpus(ws / "corpus.db") as corpus:
        assert not ingest([exports], corpus, ParseOptions(timezone="UTC")).failed
        build(config, corpus, ws / "data")
    (ws / "data" / "heldout_questions.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8"
    )
    if train:
        train_run(config, ws, RUN)
    return ws


def invoke(*args: str) -> tuple[int, str, str]:
    from twinlm.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error")]

"""Helpers of the evaluate tests: a tiny workspace built and trained a few steps (chats with friends, a
ChatGPT export for the assistant persona, held-out document questions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tiny_workspace import CLEAN, write_chats

from twinlm.config import BuildConfig, TrainConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.evaluate.settings import EvalConfig
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.models.tiny import ensure_tiny
from twinlm.prepare.build import build
from twinlm.workspace import init_workspace

from testdata import EXAMPLES

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
    # Day 4's sunday line carries markup, which the report must show as text.
    friends = ("Mom", "Sam", "Priya", "Jo")
    write_chats(exports, friends, days=4, after_sunday=lambda day: " " + (HOSTILE if day == 4 else ""))
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

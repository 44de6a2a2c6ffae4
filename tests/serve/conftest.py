"""Fixtures of the use stage (chat, serve, discord-bot), built once per session and shared:

- `served_workspace`: a workspace with a tiny trained run `r` (two chat personas: "Alex Rivera", who
  is me, and "Sam") and its export in export/r/: merged/ (bf16, with twinlm-export.json) and the
  f32 GGUF r-f32.gguf (no parity check: tests/export checks that).
- `tiny_tokenizer`: the tiny preset's tokenizer (ChatML template), for tests that need no model.
- `fake_backend` / `fake_twin`: a deterministic Backend (serve_fakes.FakeBackend) that streams a
  fixed reply token by token, and a Twin around it with the two personas (serve_fakes.make_fake_twin);
  the prompts it was given are kept in `.prompts`. Import the classes from serve_fakes, not conftest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from serve_fakes import FRIEND, ME, FakeBackend, make_fake_twin
from tiny_workspace import CLEAN, write_chats

from twinlm.serve.twin import Twin

RUN = "r"


def make_served_workspace(root: Path) -> Path:
    """A workspace trained for a few steps on chats between Alex Rivera (me) and Sam (and others), both
    of them trained speakers, and exported (merged folder + f32 GGUF)."""
    from twinlm.config import BuildConfig, TrainConfig, TwinConfig
    from twinlm.corpus.db import Corpus
    from twinlm.export.pipeline import export_run
    from twinlm.ingest import ingest
    from twinlm.model import ParseOptions
    from twinlm.models.tiny import ensure_tiny
    from twinlm.prepare.build import build
    from twinlm.train.loop import train
    from twinlm.workspace import init_workspace

    exports = root / "exports"
    write_chats(exports, (FRIEND, "Priya"), me=ME)
    ws = root / "ws"
    model_dir = ws / "models" / "base"
    ensure_tiny(model_dir)
    steps = 2
    config = TwinConfig(
        me=[ME],
        build=BuildConfig(
            model=str(model_dir), eval_fraction=0.25, max_length=256, clean=CLEAN, targets=[ME, FRIEND]
        ),
        train=TrainConfig(
            method="lora",
            max_steps=steps,
            batch_tokens=256,
            grad_accum=1,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            eval_every=steps,
            save_every=steps,
            log_every=1,
        ),
    )
    init_workspace(ws, config)
    with Corpus(ws / "corpus.db") as corpus:
        assert not ingest([exports], corpus, ParseOptions(timezone="UTC")).failed
        build(config, corpus, ws / "data")
    train(config, ws, RUN)
    result = export_run(ws, RUN, qtype="f32", until="gguf")
    assert result.status != "failed", result.problems
    return ws


@pytest.fixture(scope="session")
def served_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_served_workspace(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from twinlm.models.tiny import build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tiny_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture
def fake_backend(tiny_tokenizer: Any) -> FakeBackend:
    return FakeBackend(tiny_tokenizer)


@pytest.fixture
def fake_twin(fake_backend: FakeBackend) -> Twin:
    return make_fake_twin(fake_backend)

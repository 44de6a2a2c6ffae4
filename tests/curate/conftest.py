"""Fixtures for curation: a workspace with a small corpus (our own Telegram exports plus the examples)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from curate_data import CHAT, ME, telegram_export
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.workspace import init_workspace

from testdata import EXAMPLES
from tiny_tokenizers import build_tokenizer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer("chatml", tmp_path_factory.mktemp("tokenizer") / "chatml")


@pytest.fixture
def workspace(tmp_path: Path, tiny_model: Path) -> Path:
    """A workspace whose corpus holds the examples and our Telegram chat with Jordan."""
    root = tmp_path / "twin"
    config = TwinConfig(
        name="alex",
        me=[ME, "Alex"],
        people={"Jordan Lee": ["Jordan", "jordan.l"]},
        build=BuildConfig(model=str(tiny_model)),
    )
    init_workspace(root, config)
    export = telegram_export(tmp_path / "exports" / "tg" / "result.json", CHAT)
    with Corpus(root / "corpus.db") as corpus:
        assert not ingest([EXAMPLES, export], corpus, ParseOptions(timezone="UTC")).failed
    return root


@pytest.fixture
def twinlm(workspace: Path) -> Callable[..., object]:
    """`twinlm(*args, input=None)`: run the CLI on the workspace; returns the click Result."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> object:
        return runner.invoke(app, [*args, "-w", str(workspace)], input=input, catch_exceptions=False)

    return run

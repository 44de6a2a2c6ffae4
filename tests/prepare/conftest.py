"""Fixtures for the build stage: tiny tokenizers of every chat-template family, built once per session, and
a corpus of the sample exports and documents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions

from testdata import DOCUMENTS, EXAMPLES
from tiny_tokenizers import FAMILIES, build_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tokenizer_dir(family)`: the folder of that family's tiny tokenizer, built on first use."""
    root = tmp_path_factory.mktemp("tokenizers")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in FAMILIES:
            raise KeyError(f"unknown tokenizer family {family!r}; known: {', '.join(FAMILIES)}")
        if family not in built:
            built[family] = build_tokenizer(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def load_tokenizer(tokenizer_dir: Callable[[str], Path]) -> Callable[[str], Any]:
    """`load_tokenizer(family)`: a fresh transformers tokenizer of that family (safe to modify)."""

    def load(family: str) -> Any:
        return AutoTokenizer.from_pretrained(tokenizer_dir(family))

    return load


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    """The sample exports and documents, ingested (a test file may define its own `corpus`)."""
    db = Corpus(tmp_path / "corpus.db")
    assert not ingest([EXAMPLES], db, ParseOptions(timezone="UTC"), documents=[DOCUMENTS]).failed
    return db

"""Hosted fine-tuning tests: a fake Mistral API on loopback and a workspace with a built dataset."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twinlm.config import TwinConfig
from twinlm.prepare.sample import Sample, Turn
from twinlm.workspace import init_workspace

sys.path.insert(0, str(Path(__file__).parent))

from fake_mistral import FakeMistral

KEY = "test-key"

SAMPLES = [
    Sample(
        id="s1",
        conversation="discord:c1",
        source="discord",
        kind="chat",
        system="You are Alex Rivera.",
        turns=(
            Turn("Sam", "dinner tonight?", False),
            Turn("Alex Rivera", "yes! where?", True),
            Turn("Sam", "the usual place", False),
            Turn("Alex Rivera", "see you at eight", True),
        ),
    ),
    Sample(
        id="s2",
        conversation="telegram:c2",
        source="telegram",
        kind="chat",
        turns=(
            Turn("Jo", "did you finish the report", False),
            Turn("Alex Rivera", "almost, tomorrow", True),
        ),
    ),
    Sample(
        id="s3",
        conversation="telegram:c3",
        source="telegram",
        kind="chat",
        split="eval",
        turns=(Turn("Sam", "movie friday?", False), Turn("Alex Rivera", "only if it's not a sequel", True)),
    ),
]


@pytest.fixture
def fake() -> Iterator[FakeMistral]:
    server = FakeMistral()
    yield server
    server.close()


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    return KEY


def make_workspace(tmp_path: Path, url: str, **hosted: Any) -> Path:
    ws = tmp_path / "twin"
    settings = {
        "base_url": url,
        "model": "open-mistral-7b",
        "training_steps": 3,
        "learning_rate": 0.0002,
        "poll_seconds": 0.01,
    }
    init_workspace(ws, TwinConfig(name="alex", me=["Alex Rivera"], hosted=settings | hosted))
    (ws / "data").mkdir(exist_ok=True)
    (ws / "data" / "samples.jsonl").write_bytes(b"".join(s.to_json() + b"\n" for s in SAMPLES))
    return ws


@pytest.fixture
def workspace(tmp_path: Path, fake: FakeMistral) -> Path:
    return make_workspace(tmp_path, fake.url)

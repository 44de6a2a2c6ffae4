"""`twinlm export` (and merge, gguf, ollama) takes the checkpoint `twinlm eval --pick` chose by default, says
which, and `--checkpoint final` still exports the final weights (issue 12)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from test_run import make_workspace
from typer.testing import CliRunner

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.train.loop import train
from twinlm.workspace import open_workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("pick") / "ws", check=False)
    config: TwinConfig = open_workspace(ws).config
    with Corpus(ws / "corpus.db") as corpus:
        assert not ingest([ws / "exports"], corpus, ParseOptions(timezone="UTC")).failed
        build(config, corpus, ws / "data")
    train(config, ws, "r")  # 4 steps, checkpoints step-2 and step-4
    return ws


def merge(ws: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    from twinlm.cli import app

    result = CliRunner().invoke(app, ["merge", "-w", str(ws), "--json", *extra])
    assert result.exit_code == 0, result.stderr
    return orjson.loads(result.stdout)


def test_export_takes_the_picked_checkpoint(trained: Path) -> None:
    pick = trained / "runs" / "r" / "picked.json"
    pick.write_text('{"twinlm_pick": 1, "checkpoint": "step-2", "step": 2, "metric": "style"}\n')
    try:
        made = merge(trained)
        assert made["checkpoint"] == "step-2"
        folder = trained / "export" / "r" / "merged-step-2"
        assert orjson.loads((folder / "twinlm-export.json").read_bytes())["step"] == 2
        assert orjson.loads((trained / "export" / "r" / "export.json").read_bytes())["checkpoint"] == "step-2"
        # `--checkpoint final` overrides the pick; a pick of the final weights (null) is the final weights.
        assert merge(trained, "--checkpoint", "final")["checkpoint"] == "final"
        pick.write_text('{"twinlm_pick": 1, "checkpoint": null, "step": 4, "metric": "eval_loss"}\n')
        assert merge(trained)["checkpoint"] == "final"
        assert (trained / "export" / "r" / "merged" / "twinlm-export.json").is_file()
    finally:
        pick.unlink()


def test_without_a_pick_the_final_weights_are_exported_and_the_summary_says_which(trained: Path) -> None:
    from twinlm.cli import app

    assert merge(trained)["checkpoint"] == "final"
    (trained / "runs" / "r" / "picked.json").write_text('{"twinlm_pick": 1, "checkpoint": "step-4"}\n')
    try:
        result = CliRunner().invoke(app, ["merge", "-w", str(trained)])
        assert result.exit_code == 0, result.stderr
        assert "run r (step-4)" in " ".join(result.stdout.split())
    finally:
        (trained / "runs" / "r" / "picked.json").unlink()

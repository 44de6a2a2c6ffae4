"""Dashboards only when asked: TensorBoard gets the same numbers as metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from twinlm.errors import TwinError
from twinlm.train.loop import train
from twinlm.train.report import Reporter

from test_loop import make_workspace, settings


def test_tensorboard_receives_what_metrics_jsonl_records(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_workspace(tmp_path, "mistral")
    cfg = config.model_copy(
        update={"train": settings("lora", steps=3, eval_every=3, report_to="tensorboard")}
    )
    run = train(cfg, tmp_path, "tb").run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [orjson.loads(line) for line in (run / "metrics.jsonl").read_bytes().splitlines()]
    train_losses = [(e["step"], e["loss"]) for e in logged if e["split"] == "train"]
    board = [(s.step, s.value) for s in events.Scalars("train/loss")]
    assert [step for step, _ in board] == [step for step, _ in train_losses] == [1, 2, 3]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(board, train_losses, strict=True))
    assert [s.step for s in events.Scalars("eval/loss")] == [0, 3]


def test_a_missing_dashboard_library_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(TwinError, match=r"train\.report_to: wandb is not installed"):
        Reporter("wandb", tmp_path, {})
    assert Reporter("none", tmp_path, {}).kind == "none"

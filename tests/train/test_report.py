"""Dashboards only when asked: TensorBoard gets the same numbers as metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from twinlm.errors import TwinError
from twinlm.train.loop import train
from twinlm.train.report import Reporter
from twinlm.train.run import RECORD

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


@pytest.mark.parametrize("when", ["between the splits", "while the model loads"])
def test_a_build_finishing_while_training_starts_stops_it_before_a_run_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A `twinlm build` run in another terminal can replace data/ while training reads it (and the model
    takes minutes to load): the run would train on one dataset and record the other. It stops instead."""
    import twinlm.train.loop as loop

    config = make_workspace(tmp_path, "mistral").model_copy(update={"train": settings("lora", steps=2)})
    build_json = tmp_path / "data" / "build.json"

    def rebuilt() -> None:  # what a build's commit does to build.json (and the rows, tokenizer with it)
        build_json.write_bytes(build_json.read_bytes().replace(b'"twinlm_dataset": 1', b'"twinlm_dataset":1'))

    if when == "between the splits":
        real_split = loop.load_split

        def split_then_rebuilt(folder: Path, split: str) -> object:
            found = real_split(folder, split)
            if split == "train":
                rebuilt()
            return found

        monkeypatch.setattr(loop, "load_split", split_then_rebuilt)
    else:
        real_load = loop.load_model

        def load_then_rebuilt(*args: object, **kwargs: object) -> object:
            found = real_load(*args, **kwargs)
            rebuilt()
            return found

        monkeypatch.setattr(loop, "load_model", load_then_rebuilt)
    with pytest.raises(
        TwinError, match=r"the dataset changed while training was starting .* start the training"
    ):
        train(config, tmp_path, "raced")
    assert not list((tmp_path / "runs").glob(f"*/{RECORD}"))  # no run recorded


def test_a_run_being_trained_is_not_resumed_by_a_second_train_at_the_same_time(tmp_path: Path) -> None:
    """Two `twinlm train --resume` of one run (another terminal, a `twinlm run` beside a manual resume)
    would both write its checkpoints and metrics: the second says so and touches nothing."""
    import fcntl

    from twinlm.train.run import TRAIN_LOCK

    config = make_workspace(tmp_path, "mistral").model_copy(update={"train": settings("lora", steps=2)})
    run = train(config, tmp_path, "busy").run_dir
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with open(run / TRAIN_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first training holds it
        with pytest.raises(TwinError, match=r"another `twinlm train` is training this run; let it finish"):
            train(config, tmp_path, "busy", resume=True)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == files

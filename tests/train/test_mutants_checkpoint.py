"""Checkpoint rules that `make mutate` found untested (docs/mutation.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_checkpoint import make_run

from twinlm.train.checkpoint import (
    TrainState,
    list_checkpoints,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)


def test_a_second_checkpoint_goes_beside_the_first(tmp_path: Path) -> None:
    model, opt, sched = make_run(0)
    run_dir = tmp_path / "runs" / "first"  # not made yet: the first save makes it
    for step in (3, 4):
        save_checkpoint(run_dir, step, model, opt, sched, TrainState(step=step), adapter_only=False)
    assert [step for step, _ in list_checkpoints(run_dir)] == [3, 4]
    meta = json.loads((run_dir / "checkpoints" / "step-000004" / "state.json").read_text())
    assert meta["format_version"] == 1  # the on-disk format checkpoints of this version are read with


def test_a_sharded_checkpoint_of_another_step_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint step 5 differs from the train state's step 4"):
        save_sharded_checkpoint(tmp_path, 5, None, TrainState(step=4))
    assert not (tmp_path / "checkpoints").exists()


def test_a_plain_checkpoint_is_not_loaded_as_shards(tmp_path: Path) -> None:
    model, opt, sched = make_run(0)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, TrainState(step=3), adapter_only=False)
    with pytest.raises(ValueError, match="holds module weights, not an FSDP / DeepSpeed run's shards"):
        load_sharded_checkpoint(path, None)

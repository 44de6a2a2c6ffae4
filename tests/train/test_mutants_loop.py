"""Loop behaviour that `make mutate` found untested (docs/mutation.md): ties for the best eval loss, the
last step off the log/eval/save intervals, and a window of exactly one trained token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.train import loop
from twinlm.train.checkpoint import list_checkpoints, read_train_state
from twinlm.train.data import load_split, pack
from twinlm.train.distributed import Strategy
from twinlm.train.loop import train

from test_loop import make_workspace, metric_events, settings

IGNORED = -100


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TwinConfig]:
    root = tmp_path_factory.mktemp("mutants-loop")
    return root, make_workspace(root, "llama")


def _scripted_eval(monkeypatch: pytest.MonkeyPatch, script: list[float], done: list[int]) -> None:
    real = loop._loss_sum

    def scripted(model: Any, batch: Any, labels: torch.Tensor, fused: bool) -> tuple[torch.Tensor, int]:
        part, n = real(model, batch, labels, fused)
        if torch.is_grad_enabled():
            return part, n
        return torch.tensor(script[done[0]] * n), n  # eval: every token's loss is the script's value

    monkeypatch.setattr(loop, "_loss_sum", scripted)


def test_an_equal_eval_loss_later_does_not_replace_the_best(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eval losses 5, 2, 2, 2 after steps 0..3: the best is the first step that reached 2 (step 1)."""
    root, config = workspace
    done = [0]
    _scripted_eval(monkeypatch, [5.0, 2.0, 2.0, 2.0], done)
    cfg = settings("lora", steps=3, eval_every=1, save_every=3)
    result = train(
        config.model_copy(update={"train": cfg}),
        root,
        "ties",
        on_step=lambda step, *_: done.__setitem__(0, step),
    )
    record = orjson.loads((result.run_dir / "result.json").read_bytes())
    assert record["best_step"] == 1 and record["best_eval_loss"] == pytest.approx(2.0)


def test_the_last_step_is_logged_evaluated_and_saved_off_the_intervals(
    workspace: tuple[Path, TwinConfig],
) -> None:
    """3 steps with log, eval and save every 2: steps 2 and 3 (the last) only, by hand."""
    root, config = workspace
    cfg = settings("lora", steps=3, log_every=2, eval_every=2, save_every=2, keep_last=5)
    result = train(config.model_copy(update={"train": cfg}), root, "intervals")
    events = metric_events(result.run_dir)
    assert [e["step"] for e in events if e["split"] == "train"] == [2, 3]
    assert [e["step"] for e in events if e["split"] == "eval"] == [0, 2, 3]
    assert [step for step, _ in list_checkpoints(result.run_dir)] == [2, 3]


def test_a_window_of_one_trained_token_is_a_step(tmp_path: Path) -> None:
    """Every sample trains exactly one token; batch_tokens is the longest sample, so that sample is a
    window of its own with one trained token: one epoch trains every sample's token (a window is
    skipped only when it has none)."""
    config = make_workspace(tmp_path, "llama")
    path = tmp_path / "data" / "train.parquet"
    table = pq.read_table(path)
    rows = table.column("labels").to_pylist()
    for row in rows:
        keep = next(j for j in range(1, len(row)) if row[j] != IGNORED)
        row[:] = [label if j == keep else IGNORED for j, label in enumerate(row)]
    column = table.schema.get_field_index("labels")
    table = table.set_column(column, table.field("labels"), pa.array(rows, type=table.field("labels").type))
    pq.write_table(table, path)
    longest = max(len(r) for r in table.column("input_ids").to_pylist())
    cfg = settings("lora", steps=0, epochs=1, batch_tokens=longest, eval_every=1000, save_every=1000)
    result = train(config.model_copy(update={"train": cfg}), tmp_path, "one-token")
    record = orjson.loads((result.run_dir / "result.json").read_bytes())
    assert record["tokens_seen"] == len(rows)


def test_a_train_split_with_no_trained_token_is_one_error_not_an_endless_loop(tmp_path: Path) -> None:
    """Every label masked: each window is skipped, so no step is ever made; before, the loop went round
    the epochs forever (found by the mutant `n_window == 0` -> `== 1`, killed only by a timeout)."""
    config = make_workspace(tmp_path, "llama")
    path = tmp_path / "data" / "train.parquet"
    table = pq.read_table(path)
    rows = [[IGNORED] * len(row) for row in table.column("labels").to_pylist()]
    column = table.schema.get_field_index("labels")
    table = table.set_column(column, table.field("labels"), pa.array(rows, type=table.field("labels").type))
    pq.write_table(table, path)
    cfg = settings("lora", steps=5, eval_every=1000, save_every=1000)
    with pytest.raises(TwinError, match="no sample of the train split has a trained token"):
        train(config.model_copy(update={"train": cfg}), tmp_path, "all-masked")


# --- issue 17: what only several processes do, in one process told it is one of two ---------------
# Strategy.world (and rank) is what the loop asks; with one real process every sum and broadcast is
# the value itself, so the loop runs as process `rank` of two would, minus the other process's share.


def _as_process_of_two(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    monkeypatch.setattr(Strategy, "world", property(lambda self: 2))
    monkeypatch.setattr(Strategy, "rank", property(lambda self: rank))


def test_two_processes_drop_an_epochs_last_incomplete_window(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An odd number of micro-batches over two processes (grad_accum 1): the last window would have a
    share for one process only, so each epoch is floor(n / 2) steps, and two epochs end at the end
    of the second epoch's last full window."""
    root, config = workspace
    train_set = load_split(root / "data", "train")
    base = settings("lora", steps=0, epochs=2, eval_every=1000, save_every=1000)
    batch_tokens = next(b for b in (768, 512, 1024, 384) if len(pack(train_set, b, base.seed, 0)) % 2)
    n = len(pack(train_set, batch_tokens, base.seed, 0))
    assert n >= 3 and n % 2 == 1
    _as_process_of_two(monkeypatch, rank=0)
    cfg = base.model_copy(update={"batch_tokens": batch_tokens})
    result = train(config.model_copy(update={"train": cfg}), root, "two-odd")
    assert result.steps == 2 * (n // 2)
    ((step, path),) = list_checkpoints(result.run_dir)
    state = read_train_state(path)
    assert (step, state.epoch, state.batch_in_epoch, state.world_size) == (2 * (n // 2), 1, n // 2, 2)


def test_a_process_left_without_an_eval_bin_runs_one_masked_forward(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One eval bin, two processes: the second has no bin of its own; it still runs one forward (so
    that sharded weight gathers stay paired) on a bin that exists, with every label masked: it adds
    no token, so alone it has no eval loss."""
    root, config = workspace
    base = settings("lora", steps=1, batch_tokens=2048, eval_every=1, save_every=1000)
    assert len(pack(load_split(root / "data", "eval"), 2048, base.seed, 0)) == 1
    _as_process_of_two(monkeypatch, rank=1)
    real, counted = loop._loss_sum, []

    def counting(model: Any, batch: Any, labels: torch.Tensor, fused: bool) -> tuple[torch.Tensor, int]:
        part, n = real(model, batch, labels, fused)
        if not torch.is_grad_enabled():
            counted.append(n)
        return part, n

    monkeypatch.setattr(loop, "_loss_sum", counting)
    result = train(config.model_copy(update={"train": base}), root, "two-one-eval-bin")
    assert result.steps == 1
    assert counted == [0, 0]  # step 0 and step 1: one forward each, no token counted
    assert result.first_eval_loss is None and result.last_eval_loss is None


def test_one_process_trains_an_epochs_last_incomplete_window(workspace: tuple[Path, TwinConfig]) -> None:
    """One process, grad_accum 2, an odd number n of micro-batches: the last window holds one
    micro-batch and is still a step, so one epoch is ceil(n / 2) steps (nothing of the data is left
    out; the mutant `world > 1` -> `>= 1` made it floor(n / 2))."""
    root, config = workspace
    train_set = load_split(root / "data", "train")
    base = settings("lora", steps=0, epochs=1, grad_accum=2, eval_every=1000, save_every=1000)
    batch_tokens = next(b for b in (768, 512, 1024, 384) if len(pack(train_set, b, base.seed, 0)) % 2)
    n = len(pack(train_set, batch_tokens, base.seed, 0))
    assert n >= 3 and n % 2 == 1
    cfg = base.model_copy(update={"batch_tokens": batch_tokens})
    result = train(config.model_copy(update={"train": cfg}), root, "one-odd")
    assert result.steps == (n + 1) // 2

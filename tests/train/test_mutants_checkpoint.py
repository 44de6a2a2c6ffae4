"""Checkpoint rules that `make mutate` found untested (docs/mutation.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from test_checkpoint import _tiny_llama, make_run
from torch import nn

from twinlm.train.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
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


# --- issue 17, the survivors left on 2026-12-05 (docs/mutation.md) ------------------------------


class _Renamed(nn.Module):
    """The toy's parameters, same shapes and order, but its output layer called `head`."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 1)


def test_a_module_checkpoint_is_refused_by_a_model_with_other_parameters(tmp_path: Path) -> None:
    """A checkpoint is loaded into a model built as for the run that wrote it: one whose parameters
    have other names must fail loudly, not keep its random `head` beside half the weights."""
    model, opt, sched = make_run(0)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, TrainState(step=3), adapter_only=False)
    other = _Renamed()
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)  # same shapes: the optimizer state would fit
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1.0)
    with pytest.raises(RuntimeError, match=r"head\.weight"):
        load_checkpoint(path, other, opt2, sched2)


def _lora(seed: int, targets: list[str], name: str) -> tuple[nn.Module, Any, Any]:
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama(seed=0, tie=False)  # the "hub" model: the same every time
    torch.manual_seed(seed)  # the adapter's random init (both A and B: init_lora_weights=False)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
    model = get_peft_model(base, config, adapter_name=name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _adapter(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_an_adapter_not_named_default_is_saved_and_loaded_back(tmp_path: Path) -> None:
    """peft's save_pretrained puts an adapter named other than "default" in a subfolder of its name;
    loading reads it from there and restores exactly the saved weights."""
    model, opt, sched = _lora(1, ["q_proj", "v_proj"], "persona")
    saved = _adapter(model)
    path = save_checkpoint(tmp_path, 2, model, opt, sched, TrainState(step=2), adapter_only=True)
    assert (path / "persona" / "adapter_model.safetensors").is_file()
    fresh, opt2, sched2 = _lora(2, ["q_proj", "v_proj"], "persona")  # another random init
    assert any(not torch.equal(saved[k], v) for k, v in _adapter(fresh).items())
    load_checkpoint(path, fresh, opt2, sched2)
    loaded = _adapter(fresh)
    assert loaded.keys() == saved.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_adapter_weights_the_model_lacks_are_named_five_at_most(tmp_path: Path) -> None:
    """An adapter trained on four projections loaded into a model with two: 8 tensors it does not
    have (2 layers x k_proj, o_proj x lora_A, lora_B); the one-line error names the first five."""
    model, opt, sched = _lora(1, ["q_proj", "k_proj", "v_proj", "o_proj"], "default")
    path = save_checkpoint(tmp_path, 2, model, opt, sched, TrainState(step=2), adapter_only=True)
    fewer, opt2, sched2 = _lora(1, ["q_proj", "v_proj"], "default")
    with pytest.raises(ValueError, match="adapter weights the model does not have") as caught:
        load_checkpoint(path, fewer, opt2, sched2)
    named = re.findall(r"'([^']+)'", str(caught.value))
    assert len(named) == 5 and all(("k_proj" in k or "o_proj" in k) and "lora_" in k for k in named)

"""train.compile and train.liger_kernels: the same training, faster; clear refusals where unavailable."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import torch

from twinlm.errors import TwinError
from twinlm.train.data import collate_packed
from twinlm.train.kernels import apply_liger_kernels
from twinlm.train.loop import _loss_sum, train

from test_data_loss import random_examples, tiny_model
from test_loop import make_workspace, metric_events, settings


@pytest.mark.parametrize("arch", ["mistral", "llama", "qwen2"])
def test_the_loss_the_model_computes_is_the_token_loss_sum(arch: str) -> None:
    # With train.liger_kernels the model computes the loss itself (Liger fuses it with the last
    # projection); asked for a sum (num_items_in_batch=1), it must be exactly what the loop's own
    # token_loss_sum gives on a packed row, gradients included.
    model = tiny_model(arch, "twinlm_packed").train()
    batch = collate_packed(random_examples([9, 17, 6, 30]), "twinlm_packed")
    labels = batch.pop("labels")
    ours, n_ours = _loss_sum(model, dict(batch), labels, model_computes_loss=False)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    theirs, n_theirs = _loss_sum(model, dict(batch), labels, model_computes_loss=True)
    theirs.backward()
    assert n_ours == n_theirs == int((labels[0, 1:] != -100).sum()) > 0
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-6)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_liger_kernels_are_refused_without_a_gpu() -> None:
    model = tiny_model("llama", "sdpa")
    with pytest.raises(TwinError, match=r"train\.liger_kernels: .* CUDA GPUs only"):
        apply_liger_kernels(model, "cpu")


@pytest.mark.slow
def test_a_compiled_run_trains_like_the_eager_one(tmp_path: Path) -> None:
    # torch.compile (inductor, dynamic shapes for the varying packed lengths) on the tiny model: ~1 min
    # of compiling on a CPU, then the same losses as the eager run to float precision.
    config = make_workspace(tmp_path, "mistral")
    base = settings("lora", steps=4, eval_every=2, save_every=4, lora={"dropout": 0.0})
    eager = train(config.model_copy(update={"train": base}), tmp_path, "eager")
    compiled = train(
        config.model_copy(update={"train": base.model_copy(update={"compile": True})}), tmp_path, "compiled"
    )
    a, b = metric_events(eager.run_dir), metric_events(compiled.run_dir)
    assert [(e["step"], e["split"]) for e in a] == [(e["step"], e["split"]) for e in b]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert orjson.loads((compiled.run_dir / "config.json").read_bytes())["config"]["train"]["compile"]

"""Checkpoints: a run cut at any step and resumed from fresh objects ends bit-identical to an uninterrupted
one (weights, optimizer, scheduler, dropout and data order), a SIGKILL mid-save included."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twinlm.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_train_state,
    save_checkpoint,
)

# --- a toy run: dropout (torch RNG), input noise (python and numpy RNG), shuffled batches, AdamW,
# --- a warmup+cosine LambdaLR; 24 samples in batches of 4 = 6 batches an epoch, 14 steps = 2+ epochs.

N_SAMPLES, BATCH, N_STEPS = 24, 4, 14


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.inp(x)))).squeeze(-1)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The toy's batch order: fixed by (seed, epoch) like twinlm.train.data's, never by global RNG."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(N_SAMPLES, 8, generator=gen)
    return x, x @ torch.randn(8, generator=gen)


def make_run(init_seed: int, optimizer: str = "adamw") -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(init_seed)
    model = Toy()
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb

        opt: Any = bnb.optim.AdamW8bit(model.parameters(), lr=1e-2, min_8bit_size=1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(_warmup_cosine, warmup=3, total=N_STEPS))
    return model, opt, sched


def train(
    model: nn.Module, opt: Any, sched: Any, state: TrainState, until: int, run_dir: Path | None = None
) -> list[float]:
    """Train from `state` to step `until`; with `run_dir`, checkpoint after every step."""
    x_all, y_all = _data()
    n_batches = N_SAMPLES // BATCH
    model.train()
    losses: list[float] = []
    while state.step < until:
        order = epoch_permutation(n_batches, state.data_seed, state.epoch)
        for b in order[state.batch_in_epoch :]:
            rows = slice(b * BATCH, (b + 1) * BATCH)
            noise = random.gauss(0, 0.01) + float(np.random.normal(0, 0.01))
            loss = F.mse_loss(model(x_all[rows] + noise), y_all[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            state.step += 1
            state.batch_in_epoch += 1
            state.tokens_seen += BATCH
            losses.append(loss.item())
            if run_dir is not None:
                save_checkpoint(run_dir, state.step, model, opt, sched, state, adapter_only=False)
            if state.step >= until:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    return losses


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _scramble_rng() -> None:
    """What a fresh process would have: nothing left from the run that saved."""
    _seed_all(987654)


def assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def uninterrupted(optimizer: str = "adamw") -> tuple[list[float], nn.Module, Any, Any]:
    _seed_all(0)
    model, opt, sched = make_run(0, optimizer)
    losses = train(model, opt, sched, TrainState(data_seed=7), N_STEPS)
    return losses, model, opt, sched


def resume_and_finish(run_dir: Path, optimizer: str = "adamw") -> tuple[list[float], nn.Module, Any, Any]:
    # Different init and RNG: everything that matters must come from the checkpoint.
    model, opt, sched = make_run(init_seed=99, optimizer=optimizer)
    _scramble_rng()
    path = latest_checkpoint(run_dir)
    assert path is not None
    state = load_checkpoint(path, model, opt, sched)
    return train(model, opt, sched, state, N_STEPS), model, opt, sched


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_save_load_continue_equals_uninterrupted(tmp_path: Path, optimizer: str) -> None:
    ref_losses, ref_model, ref_opt, ref_sched = uninterrupted(optimizer)

    _seed_all(0)
    model, opt, sched = make_run(0, optimizer)
    state = TrainState(data_seed=7, best_eval_loss=0.1 + 0.2, best_step=3)
    first = train(model, opt, sched, state, 8)  # 8 = mid second epoch
    save_checkpoint(tmp_path, 8, model, opt, sched, state, adapter_only=False)
    del model, opt, sched

    rest, model, opt, sched = resume_and_finish(tmp_path, optimizer)
    assert first + rest == ref_losses  # exact floats, step by step
    assert_same_state(model.state_dict(), ref_model.state_dict(), "model")
    assert_same_state(opt.state_dict(), ref_opt.state_dict(), "optimizer")
    assert_same_state(sched.state_dict(), ref_sched.state_dict(), "scheduler")
    loaded = read_train_state(checkpoint_of(tmp_path, 8))
    assert loaded == TrainState(
        step=8, epoch=1, batch_in_epoch=2, data_seed=7, best_eval_loss=0.1 + 0.2, best_step=3, tokens_seen=32
    )


def checkpoint_of(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def test_checkpoint_files_and_state_json(tmp_path: Path) -> None:
    model, opt, sched = make_run(0)
    state = TrainState(step=3, data_seed=1, tokens_seen=12)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, state, adapter_only=False)
    assert path == checkpoint_of(tmp_path, 3)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "optimizer.pt",
        "rng.pt",
        "scheduler.pt",
        "state.json",
    ]
    meta = json.loads((path / "state.json").read_text())
    assert meta["weights"] == "module" and meta["train_state"]["tokens_seen"] == 12
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]  # no temp left
    with pytest.raises(ValueError, match="needs a peft model"):
        save_checkpoint(tmp_path, 3, model, opt, sched, state, adapter_only=True)
    with pytest.raises(ValueError, match="differs"):
        save_checkpoint(tmp_path, 4, model, opt, sched, state, adapter_only=False)


# --- SIGKILL in the middle of a save ---------------------------------------------------------------

KILL_AT_STEP = 9


def _child(run_dir: Path) -> None:
    """Run the toy loop saving every step; die by SIGKILL halfway through writing checkpoint 9."""
    real_save = torch.save

    def save_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        path = Path(f)
        if path.name == "optimizer.pt" and f"step-{KILL_AT_STEP:06d}" in path.parent.name:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            with open(path, "wb") as out:
                out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)

    torch.save = save_then_die  # type: ignore[assignment]
    _seed_all(0)
    model, opt, sched = make_run(0)
    train(model, opt, sched, TrainState(data_seed=7), N_STEPS, run_dir=run_dir)


def test_sigkill_mid_save_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root = tmp_path / "checkpoints"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".tmp-step-{KILL_AT_STEP:06d}")
    assert [s for s, _ in list_checkpoints(tmp_path)] == list(range(1, KILL_AT_STEP))
    assert latest_checkpoint(tmp_path) == checkpoint_of(tmp_path, KILL_AT_STEP - 1)

    ref_losses, ref_model, ref_opt, _ = uninterrupted()
    rest, model, opt, _ = resume_and_finish(tmp_path)
    assert rest == ref_losses[KILL_AT_STEP - 1 :]
    assert_same_state(model.state_dict(), ref_model.state_dict(), "model")
    assert_same_state(opt.state_dict(), ref_opt.state_dict(), "optimizer")

    # The next save clears the killed save's temp folder.
    save_checkpoint(tmp_path, N_STEPS, model, opt, _, TrainState(step=N_STEPS), adapter_only=False)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


# --- pruning -----------------------------------------------------------------------------------------


def test_prune_keeps_last_k_and_best(tmp_path: Path) -> None:
    model, opt, sched = make_run(0)
    for step in range(1, 8):
        save_checkpoint(tmp_path, step, model, opt, sched, TrainState(step=step), adapter_only=False)
    removed = prune_checkpoints(tmp_path, keep_last=2, best_step=3)
    assert [p.name for p in removed] == ["step-000001", "step-000002", "step-000004", "step-000005"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 6, 7]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000003",
        "step-000006",
        "step-000007",
    ]
    # The best among the last K: nothing extra kept; no best: just the last K.
    prune_checkpoints(tmp_path, keep_last=2, best_step=7)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 7]
    prune_checkpoints(tmp_path, keep_last=1, best_step=None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [7]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=0, best_step=None)


def test_latest_ignores_temp_trash_and_incomplete(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    model, opt, sched = make_run(0)
    save_checkpoint(tmp_path, 2, model, opt, sched, TrainState(step=2), adapter_only=False)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000009-abc").mkdir()
    (root / ".trash-step-000001-1").mkdir()
    (root / "step-000005").mkdir()  # no state.json: not a checkpoint
    (root / "step-12").mkdir()  # not our name
    assert latest_checkpoint(tmp_path) == checkpoint_of(tmp_path, 2)


# --- tiny transformers models: LoRA (adapter only) and full fine-tuning with tied embeddings -------


def _tiny_llama(seed: int, tie: bool) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.1,  # dropout: the RNG state matters
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def _hf_run(kind: str, lora_seed: int) -> tuple[nn.Module, Any, Any]:
    model = _tiny_llama(seed=0, tie=kind == "full")  # the "hub" base: the same every time
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(lora_seed)
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(_warmup_cosine, warmup=2, total=6))
    return model, opt, sched


def _hf_train(model: nn.Module, opt: Any, sched: Any, state: TrainState, until: int) -> list[float]:
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(5))
    model.train()
    losses = []
    while state.step < until:
        batch = ids[torch.randperm(4)[:2]]  # shuffled from the global RNG: must resume exactly too
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        state.step += 1
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_transformers_model_resume_is_exact(tmp_path: Path, kind: str) -> None:
    _seed_all(0)
    ref_model, ref_opt, ref_sched = _hf_run(kind, lora_seed=1)
    ref_losses = _hf_train(ref_model, ref_opt, ref_sched, TrainState(), 6)

    _seed_all(0)
    model, opt, sched = _hf_run(kind, lora_seed=1)
    state = TrainState()
    first = _hf_train(model, opt, sched, state, 3)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, state, adapter_only=kind == "lora")
    if kind == "lora":
        from safetensors.torch import load_file

        keys = load_file(str(path / "adapter_model.safetensors"))
        assert keys and all("lora_" in k for k in keys)  # the adapter only, no base weights
        assert not (path / "model.safetensors").exists()
    else:
        assert (path / "model.safetensors").exists() and (path / "config.json").exists()

    model, opt, sched = _hf_run(kind, lora_seed=2)  # another LoRA init: the checkpoint must win
    if kind == "full":
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    _scramble_rng()
    state = load_checkpoint(path, model, opt, sched)
    assert state.step == 3
    rest = _hf_train(model, opt, sched, state, 6)
    assert first + rest == ref_losses
    assert_same_state(model.state_dict(), ref_model.state_dict(), "model")
    assert_same_state(opt.state_dict(), ref_opt.state_dict(), "optimizer")


if __name__ == "__main__":  # the child process of the SIGKILL test
    _child(Path(sys.argv[1]))

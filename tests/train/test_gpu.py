"""What only a CUDA GPU can show (skipped elsewhere, CI included): the sharded strategies' single-GPU
smoke runs with an exact resume, Liger's kernels, torch.compile and QLoRA in bf16."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import orjson
import pytest
import torch
from safetensors.torch import load_file

from twinlm.cli.train import launch_command
from twinlm.train.distributed import write_launch_config
from twinlm.train.loop import train

from test_loop import free_port, make_workspace, settings, write_run_script

pytestmark = pytest.mark.gpu


def _losses(run: Path) -> list[float]:
    return [orjson.loads(line)["loss"] for line in (run / "metrics.jsonl").read_bytes().splitlines()]


@pytest.mark.parametrize("strategy", ["fsdp", "zero2", "zero3"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_sharded_strategy_on_one_gpu_trains_and_resumes(tmp_path: Path, strategy: str, method: str) -> None:
    if strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    config = make_workspace(tmp_path, "llama")
    # fp32 and no dropout: the killed-and-resumed run must match the whole one closely.
    cfg = config.model_copy(
        update={
            "train": settings(
                method, steps=6, save_every=2, eval_every=3, precision="fp32", lora={"dropout": 0.0}
            ).model_copy(
                update={"distributed": strategy, "learning_rate": 1e-3 if method == "full" else 1e-2}
            )
        }
    )
    script = write_run_script(tmp_path, cfg, kill_at=3)
    config_file = write_launch_config(tmp_path / "launch", cfg.train, 1)

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        command = launch_command(config_file, [str(script), *args], port=free_port())
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)

    whole = launch("whole", "run")
    assert whole.returncode == 0, whole.stderr[-4000:]
    assert launch("killed", "kill").returncode != 0
    resumed = launch("killed", "resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    a, b = tmp_path / "runs" / "whole", tmp_path / "runs" / "killed"
    assert _losses(b) == pytest.approx(_losses(a), rel=1e-4)
    assert _losses(a)[-1] < _losses(a)[0]  # the last eval beats the first
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    wa, wb = load_file(a / "final" / weights), load_file(b / "final" / weights)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)


def test_liger_kernels_train_like_the_plain_loss(tmp_path: Path) -> None:
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")
    config = make_workspace(tmp_path, "llama")
    base = settings("lora", steps=4, eval_every=2, precision="fp32", lora={"dropout": 0.0})
    plain = train(config.model_copy(update={"train": base}), tmp_path, "plain")
    liger = train(
        config.model_copy(update={"train": base.model_copy(update={"liger_kernels": True})}),
        tmp_path,
        "liger",
    )
    assert _losses(liger.run_dir) == pytest.approx(_losses(plain.run_dir), rel=1e-3)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_bf16_training_on_a_gpu_lowers_the_eval_loss(tmp_path: Path, method: str) -> None:
    config = make_workspace(tmp_path, "mistral")
    cfg = config.model_copy(update={"train": settings(method, steps=30, compile=method == "lora")})
    result = train(cfg, tmp_path, method)
    assert orjson.loads((result.run_dir / "config.json").read_bytes())["dtype"] == "torch.bfloat16"
    assert result.last_eval_loss is not None and result.first_eval_loss is not None
    assert result.last_eval_loss < 0.95 * result.first_eval_loss

"""The training loop end to end on tiny models: it learns, and a killed run resumes exactly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
import torch
from safetensors.torch import load_file
from tiny_workspace import CLEAN, write_chats

from twinlm.config import BuildConfig, TrainConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.models.tiny import build_tiny_model, ensure_tiny
from twinlm.prepare.build import build
from twinlm.train.loop import train


def make_workspace(root: Path, arch: str) -> TwinConfig:
    """A learnable chat set: 10 chats (the train/eval split is by chat) of 3 sessions of one pattern."""
    exports = root / "exports"
    write_chats(exports, ("Mom", "Dad", "Sam", "Priya", "Jo", "Kim", "Lee", "Max", "Ana", "Ben"), emoji=False)
    model_dir = root / "models" / f"tiny-{arch}"
    ensure_tiny(model_dir)  # tokenizer (+ mistral weights)
    if arch != "mistral":
        build_tiny_model(model_dir, arch)
    config = TwinConfig(
        me=["Alex Rivera"],
        build=BuildConfig(model=str(model_dir), eval_fraction=0.2, max_length=256, clean=CLEAN),
    )
    with Corpus(root / "corpus.db") as corpus:
        assert not ingest([exports], corpus, ParseOptions(timezone="UTC")).failed
        build(config, corpus, root / "data")
    return config


def settings(method: str, steps: int = 30, **extra: object) -> TrainConfig:
    values: dict[str, object] = {
        "method": method,
        "max_steps": steps,
        "batch_tokens": 256,
        "grad_accum": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        "eval_every": steps,
        "save_every": steps,
        "log_every": 1,
        "lr_scheduler": "constant",
    }
    return TrainConfig(**(values | extra))


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, TwinConfig]]:
    made = {}
    for arch in ("mistral", "llama", "qwen2"):
        root = tmp_path_factory.mktemp(arch)
        made[arch] = (root, make_workspace(root, arch))
    return made


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
@pytest.mark.parametrize("arch", ["mistral", "llama", "qwen2"])
def test_training_lowers_the_eval_loss(workspaces: dict, arch: str, method: str) -> None:
    root, config = workspaces[arch]
    result = train(config.model_copy(update={"train": settings(method)}), root, f"{method}")
    assert result.first_eval_loss is not None and result.last_eval_loss is not None
    # 4-bit weights of a 64-wide random model are coarse: QLoRA learns, more slowly.
    assert result.last_eval_loss < (0.95 if method == "qlora" else 0.9) * result.first_eval_loss, (
        result.first_eval_loss,
        result.last_eval_loss,
    )
    if method == "full":
        assert result.trainable_params == result.total_params
    else:
        assert 0 < result.trainable_params < result.total_params
    run = result.run_dir
    assert {"config.json", "build.json", "tokenizer", "metrics.jsonl", "loss.png", "final"} <= {
        p.name for p in run.iterdir()
    }
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method", ["dora", "qdora"])
def test_dora_on_a_full_and_a_4bit_base_lowers_the_eval_loss(workspaces: dict, method: str) -> None:
    root, config = workspaces["llama"]
    result = train(config.model_copy(update={"train": settings(method)}), root, method)
    assert result.first_eval_loss is not None and result.last_eval_loss is not None
    assert result.last_eval_loss < 0.95 * result.first_eval_loss, (
        result.first_eval_loss,
        result.last_eval_loss,
    )
    saved = load_file(result.run_dir / "final" / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in key for key in saved)  # DoRA's magnitudes are saved too


def write_run_script(folder: Path, cfg: TwinConfig, kill_at: int = 0, kill_rank: int | None = None) -> Path:
    """A script, `python SCRIPT NAME MODE` (or under `accelerate launch`), that trains run NAME of `cfg` in
    `folder`. MODE: run; resume; kill: SIGKILL itself in the middle of step `kill_at` (after its
    on_step, before its log and checkpoint), in process `kill_rank` only when given."""
    script = folder / "run_training.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from twinlm.config import TwinConfig
        from twinlm.train.loop import train
        name, mode = sys.argv[1], sys.argv[2]
        def kill(step, total, loss, speed):
            rank_matches = {kill_rank!r} is None or os.environ.get("RANK") == str({kill_rank!r})
            if mode == "kill" and step == {kill_at} and rank_matches:
                os.kill(os.getpid(), signal.SIGKILL)
        cfg = TwinConfig.model_validate_json({cfg.model_dump_json()!r})
        train(cfg, Path({str(folder)!r}), name, resume=mode == "resume", on_step=kill)
    """)
    )
    return script


def metric_events(run: Path) -> list[dict]:
    """metrics.jsonl without what differs between identical runs (wall time, speed)."""
    events = [orjson.loads(line) for line in (run / "metrics.jsonl").read_bytes().splitlines()]
    return [{k: v for k, v in e.items() if k not in ("time", "tokens_per_s")} for e in events]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(workspaces: dict) -> None:
    root, config = workspaces["mistral"]
    cfg = config.model_copy(update={"train": settings("lora", steps=8, save_every=2, eval_every=2)})
    whole = train(cfg, root, "whole")
    # The same run in a child process, SIGKILLed in the middle of step 5 (after checkpoint 4).
    proc = subprocess.run(
        [sys.executable, str(write_run_script(root, cfg, kill_at=5)), "killed", "kill"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = train(cfg, root, "killed", resume=True)
    assert resumed.steps == whole.steps == 8
    a = load_file(whole.run_dir / "final" / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metric_events(resumed.run_dir) == metric_events(whole.run_dir)

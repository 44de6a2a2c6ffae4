"""Two CPU processes (gloo, through `accelerate launch`) train like one process with the same batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from twinlm.cli.train import launch_command
from twinlm.train.loop import train

from test_loop import make_workspace, settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _curve(run: Path) -> list[tuple[int, str, float]]:
    events = [orjson.loads(line) for line in (run / "metrics.jsonl").read_bytes().splitlines()]
    return [(e["step"], e["split"], e["loss"]) for e in events]


def test_two_processes_follow_the_single_process_loss_curve(tmp_path: Path) -> None:
    config = make_workspace(tmp_path, "mistral")
    # No dropout: each process draws its own random numbers, which is fine but not comparable.
    base = settings("lora", steps=6, eval_every=3, save_every=6, lora={"dropout": 0.0})
    one = config.model_copy(update={"train": base.model_copy(update={"grad_accum": 2})})
    two = config.model_copy(update={"train": base.model_copy(update={"grad_accum": 1})})
    single = train(one, tmp_path, "single")

    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from twinlm.config import TwinConfig
        from twinlm.train.loop import train
        train(TwinConfig.model_validate_json({two.model_dump_json()!r}), Path({str(tmp_path)!r}), "ddp")
    """)
    )
    command = launch_command(2, [str(script)], port=_free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected, got = _curve(single.run_dir), _curve(tmp_path / "runs" / "ddp")
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_cli_gpus_option_relaunches_in_several_processes(tmp_path: Path) -> None:
    from twinlm.config import render_config

    config = make_workspace(tmp_path, "llama")
    config = config.model_copy(update={"train": settings("lora", steps=2, eval_every=2, save_every=2)})
    (tmp_path / "twin.yaml").write_text(render_config(config), encoding="utf-8")
    twinlm = Path(sys.executable).parent / "twinlm"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    proc = subprocess.run(
        [str(twinlm), "train", "-w", str(tmp_path), "--gpus", "2", "--name", "two", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Training in 2 processes" in proc.stderr
    run = tmp_path / "runs" / "two"
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert [e["step"] for e in map(orjson.loads, (run / "metrics.jsonl").read_bytes().splitlines())] == [
        0,
        1,
        2,
        2,
    ]

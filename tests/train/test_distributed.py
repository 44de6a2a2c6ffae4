"""Two CPU processes (gloo, through `accelerate launch`) train like one process with the same batch, and
a killed two-process run resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
import torch
from safetensors.torch import load_file

from twinlm.cli.train import launch_command
from twinlm.config import TrainConfig, TwinConfig
from twinlm.errors import TwinError
from twinlm.train.distributed import write_launch_config
from twinlm.train.loop import train

from test_loop import free_port, make_workspace, metric_events, settings, write_run_script


def _launch(tmp_path: Path, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`script ARGS` in two CPU processes, through the ddp launch config twinlm writes."""
    config_file = write_launch_config(tmp_path / "launch", TrainConfig(distributed="ddp"), 2)
    command = launch_command(config_file, [str(script), *args], port=free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


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

    script = write_run_script(tmp_path, two)
    proc = _launch(tmp_path, script, "ddp", "run")
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected, got = _curve(single.run_dir), _curve(tmp_path / "runs" / "ddp")
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_a_killed_two_process_run_resumes_to_the_same_weights_and_metrics(tmp_path: Path) -> None:
    config = make_workspace(tmp_path, "llama")
    # With dropout: each process draws its own masks, so each process's random state must come back.
    cfg = config.model_copy(
        update={"train": settings("lora", steps=8, save_every=2, eval_every=2, lora={"dropout": 0.1})}
    )
    # The second process dies in the middle of step 5, after checkpoint 4.
    script = write_run_script(tmp_path, cfg, kill_at=5, kill_rank=1)
    assert _launch(tmp_path, script, "whole", "run").returncode == 0
    killed = _launch(tmp_path, script, "killed", "kill")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr + killed.stdout, killed.stderr[-3000:]
    run = tmp_path / "runs" / "killed"
    assert not (run / "final").exists()
    assert {p.name for p in (run / "checkpoints" / "step-000004").iterdir()} >= {"rng.pt", "rng-1.pt"}
    resumed = _launch(tmp_path, script, "killed", "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    whole = tmp_path / "runs" / "whole"
    assert metric_events(run) == metric_events(whole)
    assert [e["step"] for e in metric_events(run) if e["split"] == "eval"] == [0, 2, 4, 6, 8]
    a = load_file(whole / "final" / "adapter_model.safetensors")
    b = load_file(run / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # One process cannot continue what two started: the batch order and random states are per process.
    with pytest.raises(TwinError, match="resume it with --gpus 2"):
        train(TwinConfig.model_validate(cfg.model_dump()), tmp_path, "killed", resume=True)


def test_cli_gpus_option_relaunches_in_several_processes(tmp_path: Path) -> None:
    from twinlm.config import render_config

    config = make_workspace(tmp_path, "llama")
    config = config.model_copy(update={"train": settings("lora", steps=2, eval_every=2, save_every=2)})
    (tmp_path / "twin.yaml").write_text(render_config(config), encoding="utf-8")
    twinlm = Path(sys.executable).parent / "twinlm"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
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


def test_every_process_ends_its_process_group_before_python_shuts_down(tmp_path: Path) -> None:
    """A process whose gloo group is still alive when the interpreter tears down may abort after training
    finished (SIGABRT, "terminate called without an active exception": the resume test above failed so
    once in CI), and the launcher then reports the run failed. Each process ends its group at exit, after
    a finished run and after an error alike."""
    config = make_workspace(tmp_path, "llama")
    cfg = config.model_copy(update={"train": settings("lora", steps=2, eval_every=2, save_every=2)})
    script = tmp_path / "ends.py"
    script.write_text(
        textwrap.dedent(f"""
        import atexit, os, sys
        from pathlib import Path
        import torch.distributed as dist
        from twinlm.config import TwinConfig
        from twinlm.train.loop import train
        name = sys.argv[1]
        alive = Path({str(tmp_path)!r}) / f"alive-{{name}}-{{os.environ['RANK']}}.txt"
        # Registered before train(), so it runs after twinlm's exit handlers (last in, first out).
        atexit.register(lambda: alive.write_text(str(dist.is_initialized())))
        cfg = TwinConfig.model_validate_json({cfg.model_dump_json()!r})
        if name == "error":  # fewer micro-batches than one step needs: a TwinError in both processes
            cfg = cfg.model_copy(update={{"train": cfg.train.model_copy(update={{"grad_accum": 10**6}})}})
        train(cfg, Path({str(tmp_path)!r}), name)
        """)
    )
    finished = _launch(tmp_path, script, "run")
    assert finished.returncode == 0, finished.stderr[-3000:]
    failed = _launch(tmp_path, script, "error")
    assert failed.returncode != 0 and "fewer than 2 process(es)" in failed.stderr, failed.stderr[-3000:]
    for name in ("run", "error"):
        for rank in (0, 1):
            assert (tmp_path / f"alive-{name}-{rank}.txt").read_text() == "False", (name, rank)


def test_uneven_eval_bins_give_every_process_the_same_forwards_and_the_single_process_loss(
    tmp_path: Path,
) -> None:
    """An odd number of eval bins over two processes: both run as many eval forwards (one of them fully
    masked), which under FSDP / ZeRO-3 keeps the weight gathers paired, and the eval loss is the single
    process's."""
    config = make_workspace(tmp_path, "mistral")
    base = settings("lora", steps=2, eval_every=1, batch_tokens=400, lora={"dropout": 0.0})
    one = config.model_copy(update={"train": base.model_copy(update={"grad_accum": 2})})
    two = config.model_copy(update={"train": base.model_copy(update={"grad_accum": 1})})
    single = train(one, tmp_path, "single")
    script = tmp_path / "count_eval_forwards.py"
    script.write_text(
        textwrap.dedent(f"""
        import os
        from pathlib import Path
        import torch
        from twinlm.config import TwinConfig
        from twinlm.train import loop
        real, forwards = loop._loss_sum, [0]
        def counting(*args):
            forwards[0] += not torch.is_grad_enabled()
            return real(*args)
        loop._loss_sum = counting
        loop.train(TwinConfig.model_validate_json({two.model_dump_json()!r}), Path({str(tmp_path)!r}), "two")
        Path({str(tmp_path)!r}, "eval-forwards-" + os.environ["RANK"]).write_text(str(forwards[0]))
    """)
    )
    proc = _launch(tmp_path, script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from twinlm.train.data import load_split, pack

    bins = pack(load_split(tmp_path / "data", "eval"), 400, base.seed, 0)
    assert len(bins) % 2 == 1  # uneven over two processes
    evals = 3  # steps 0, 1, 2
    forwards = str(evals * (len(bins) + 1) // 2)
    assert [(tmp_path / f"eval-forwards-{rank}").read_text() for rank in (0, 1)] == [forwards] * 2
    expected = [(s, loss) for s, split, loss in _curve(single.run_dir) if split == "eval"]
    got = [(s, loss) for s, split, loss in _curve(tmp_path / "runs" / "two") if split == "eval"]
    assert [s for s, _ in got] == [s for s, _ in expected] == [0, 1, 2]
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-4)

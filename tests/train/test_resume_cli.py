"""`twinlm train` as a user drives it, in child processes: a killed run resumes as it was recorded (its
settings and step budget, on its data), a changed dataset or adapter shape is refused in one line, run
names stay inside runs/, Ctrl-C names the checkpoint to resume from, and a CPU run prints no library
noise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from twinlm.config import TwinConfig, render_config
from twinlm.corpus.db import Corpus
from twinlm.prepare.build import build

from test_loop import free_port, make_workspace, settings

TWINLM = Path(sys.executable).parent / "twinlm"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# twin.yaml's budget; the killed run was started with --max-steps KILLED_BUDGET.
YAML_STEPS, KILLED_BUDGET, KILL_AT = 6, 12, 5


def cli(ws: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`twinlm train -w WS ARGS` in a child process, as a user runs it."""
    command = [str(TWINLM), "train", "-w", str(ws), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def write_cli_script(folder: Path) -> Path:
    """`python SCRIPT SIGNAL WHERE ARGS...`: the `twinlm` CLI with ARGS, in-process, that sends itself
    SIGNAL (KILL or INT) in the middle of optimizer step WHERE (an integer: after that step's progress
    update, before its log and checkpoint) or at start-up (WHERE = "load": as the model starts loading)."""
    script = folder / "cli_with_signal.py"
    script.write_text(
        textwrap.dedent("""
        import os, signal, sys
        import twinlm.train.loop as loop
        from twinlm.cli import app
        sig, where, args = getattr(signal, "SIG" + sys.argv[1]), sys.argv[2], sys.argv[3:]
        real_train, real_load = loop.train, loop.load_model
        def train(*a, on_step=None, **kw):
            def step(n, total, loss, speed):
                if on_step:
                    on_step(n, total, loss, speed)
                if where == str(n):
                    os.kill(os.getpid(), sig)
            return real_train(*a, on_step=step, **kw)
        def load_model(*a, **kw):
            if where == "load":
                os.kill(os.getpid(), sig)
            return real_load(*a, **kw)
        loop.train, loop.load_model = train, load_model
        app(args, prog_name="twinlm")
    """)
    )
    return script


def signalled(ws: Path, sig: str, where: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = write_cli_script(ws.parent)
    command = [sys.executable, str(script), sig, where, "train", "-w", str(ws), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose run `r`, started with --max-steps 12 (twin.yaml says 6), was SIGKILLed in the
    middle of step 5, after checkpoint 4. Tests copy it."""
    ws = tmp_path_factory.mktemp("killed") / "ws"
    ws.mkdir()
    config = make_workspace(ws, "mistral")
    config = config.model_copy(
        update={"train": settings("lora", steps=YAML_STEPS, save_every=2, eval_every=2)}
    )
    (ws / "twin.yaml").write_text(render_config(config), encoding="utf-8")
    proc = signalled(ws, "KILL", str(KILL_AT), "--name", "r", "--max-steps", str(KILLED_BUDGET))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (ws / "runs" / "r" / "checkpoints" / "step-000004").is_dir()
    return ws


@pytest.fixture
def ws(killed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(killed, copy)
    return copy


def set_yaml(ws: Path, old: str, new: str) -> None:
    text = (ws / "twin.yaml").read_text(encoding="utf-8")
    assert old in text
    (ws / "twin.yaml").write_text(text.replace(old, new, 1), encoding="utf-8")


def test_resume_finishes_the_step_budget_the_run_started_with(ws: Path) -> None:
    proc = cli(ws, "--name", "r", "--resume", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Before: the resumed run took twin.yaml's max_steps and "finished" at 6.
    assert orjson.loads(proc.stdout)["steps"] == KILLED_BUDGET
    events = [orjson.loads(line) for line in (ws / "runs" / "r" / "metrics.jsonl").read_bytes().splitlines()]
    assert [e["step"] for e in events if e["split"] == "train"] == list(range(1, KILLED_BUDGET + 1))
    assert "train.max_steps" in proc.stderr  # the twin.yaml value left unused is named
    # A CPU run prints none of the libraries' noise (bitsandbytes' kernel hub advice, deprecations).
    assert "gemm_4bit_forward" not in proc.stderr and "trust_remote_code" not in proc.stderr
    assert "FutureWarning" not in proc.stderr and "Traceback" not in proc.stderr


def test_resume_refuses_a_rebuilt_dataset(ws: Path) -> None:
    config = TwinConfig.model_validate(
        orjson.loads((ws / "runs" / "r" / "config.json").read_bytes())["config"]
    )
    rebuilt = config.model_copy(update={"build": config.build.model_copy(update={"eval_fraction": 0.4})})
    with Corpus(ws / "corpus.db") as corpus:
        build(rebuilt, corpus, ws / "data")
    proc = cli(ws, "--name", "r", "--resume")
    # Before: exit 0, the run went on with the new samples.
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "dataset" in lines[0] and "--name" in lines[0], proc.stderr[-3000:]
    assert not (ws / "runs" / "r" / "final").exists()


def test_resume_refuses_a_changed_adapter_shape_or_method_in_one_line(ws: Path) -> None:
    set_yaml(ws, "r: 16", "r: 8")
    proc = cli(ws, "--name", "r", "--resume")
    # Before: a size-mismatch traceback from loading the adapter.
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "train.lora.r" in lines[0] and "16" in lines[0], proc.stderr[-3000:]

    set_yaml(ws, "r: 8", "r: 16")
    proc = cli(ws, "--name", "r", "--resume", "--method", "full")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--method" in lines[0] and "lora" in lines[0], proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "."])
def test_run_names_are_plain_names(ws: Path, name: str) -> None:
    for extra in ([], ["--resume"]):
        proc = cli(ws, "--name", name, "--max-steps", "1", *extra)
        # Before: `--name ../../x` trained into a folder outside the workspace.
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and "--name" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (ws.parent / "x").exists() and sorted(p.name for p in (ws / "runs").iterdir()) == ["r"]


def test_ctrl_c_in_training_names_the_checkpoint_and_the_resume_command(ws: Path) -> None:
    # A budget far beyond what runs before the signal: the run is mid-training when it comes.
    command = [str(TWINLM), "train", "-w", str(ws), "--name", "long", "--max-steps", "100000"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    checkpoints = ws / "runs" / "long" / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        while not list(checkpoints.glob("step-*/state.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # Before: exit 130 with nothing printed.
    assert proc.returncode == 130, stderr[-3000:]
    said = stdout + stderr
    assert "Traceback" not in said, said[-3000:]
    assert "checkpoints/step-" in said, said[-3000:]
    assert f"twinlm train -w {ws} --name long --resume" in " ".join(said.split()), said[-3000:]


def test_ctrl_c_at_start_up_prints_no_traceback(ws: Path, tmp_path: Path) -> None:
    # The `twinlm` script itself, interrupted while its first libraries import (typer, here).
    script = tmp_path / "interrupt_imports.py"
    script.write_text(
        textwrap.dedent(f"""
        import importlib.abc, os, runpy, signal, sys
        class InterruptOnTyper(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "typer":
                    os.kill(os.getpid(), signal.SIGINT)
                return None
        sys.meta_path.insert(0, InterruptOnTyper())
        sys.argv = ["twinlm", "train", "-w", {str(ws)!r}, "--name", "early"]
        runpy.run_path({str(TWINLM)!r}, run_name="__main__")
    """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV)
    # Before: a KeyboardInterrupt traceback from inside the imports, status -2.
    assert "Traceback" not in proc.stderr and proc.returncode == 130, proc.stderr[-3000:]
    # Interrupted as the model loads: nothing to resume, and said so.
    proc = signalled(ws, "INT", "load", "--name", "early", "--max-steps", "4")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Interrupted before training started" in proc.stderr, proc.stderr[-3000:]


def test_ctrl_c_mid_step_names_the_last_checkpoint_and_the_run_resumes(ws: Path) -> None:
    proc = signalled(ws, "INT", "3", "--name", "mid", "--max-steps", "8")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "step-000002" in said and "--name mid --resume" in said, said
    resumed = cli(ws, "--name", "mid", "--resume", "--json")
    assert resumed.returncode == 0 and orjson.loads(resumed.stdout)["steps"] == 8, resumed.stderr[-3000:]


def test_a_failed_multi_process_launch_shows_its_cause_without_tracebacks(ws: Path) -> None:
    set_yaml(ws, "grad_accum: 1", "grad_accum: 100")  # more micro-batches per step than an epoch has
    env = {**ENV, "MASTER_PORT": str(free_port())}
    command = [str(TWINLM), "train", "-w", str(ws), "--gpus", "2", "--name", "two"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    # Before: the error once per process, then the launcher's ChildFailedError traceback.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("lower train.grad_accum") == 1, proc.stderr[-3000:]


def interrupt_two_process_run(
    ws: Path, interrupt: Callable[[subprocess.Popen[str]], None]
) -> tuple[int, str]:
    """Start `twinlm train --gpus 2` in its own process group, `interrupt` it once its first checkpoint is
    written; its exit status and what it said on stderr."""
    env = {**ENV, "MASTER_PORT": str(free_port())}
    command = [str(TWINLM), "train", "-w", str(ws), "--gpus", "2", "--max-steps", "100000"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while not list(ws.glob("runs/run-*/checkpoints/step-*/state.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        interrupt(proc)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stderr


def test_ctrl_c_in_a_multi_process_run_names_the_resume_command_once(ws: Path) -> None:
    # The process group signalled whole: what Ctrl-C in a terminal does.
    code, stderr = interrupt_two_process_run(ws, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    (run,) = (ws / "runs").glob("run-*")
    said = " ".join(stderr.split())
    # The time-stamped name is picked once, and the run continues only in as many processes.
    assert said.count(f"--name {run.name} --resume --gpus 2") == 1, stderr[-3000:]


def test_ctrl_c_reaching_one_process_first_stops_them_all_at_the_same_step(ws: Path) -> None:
    """SIGINT reaches the processes of a run one by one (the launcher forwards it again): the one that has
    it must not leave while the others wait for it in a collective call. Here only rank 1 is signalled;
    both stop at the same window and rank 0 says where to resume."""
    import psutil

    def interrupt_rank_1(proc: subprocess.Popen[str]) -> None:
        workers = psutil.Process(proc.pid).children(recursive=True)
        (rank1,) = [p for p in workers if p.environ().get("RANK") == "1"]
        rank1.send_signal(signal.SIGINT)

    code, stderr = interrupt_two_process_run(ws, interrupt_rank_1)
    said = " ".join(stderr.split())
    assert code == 130 and "Traceback" not in stderr and "error:" not in said, stderr[-3000:]
    (run,) = (ws / "runs").glob("run-*")
    assert said.count(f"--name {run.name} --resume --gpus 2") == 1, stderr[-3000:]


def test_the_gpu_running_out_of_memory_is_one_line_with_what_lowers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA out of memory is how most fine-tunes fail; it was a torch traceback. (Raised here as torch
    raises it: the class exists in CPU builds too.)"""
    import torch
    from typer.testing import CliRunner

    import twinlm.train.loop as loop
    from twinlm.cli import app

    def out_of_memory(*args: object, **kwargs: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "train", out_of_memory)
    ws = tmp_path / "twin"
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(ws), "--me", "Bob"]).exit_code == 0
    said = runner.invoke(app, ["train", "-w", str(ws), "--name", "big", "--method", "lora"])
    assert said.exit_code == 1 and isinstance(said.exception, SystemExit), said.output
    (line,) = [line for line in said.stderr.splitlines() if line.strip()]
    assert line.startswith("error: run big: the GPU ran out of memory (train.method lora, batch_tokens ")
    assert "lower train.batch_tokens, turn on train.gradient_checkpointing, or train with method" in line

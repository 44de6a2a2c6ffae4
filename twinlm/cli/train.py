"""Training commands: train (and --resume)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from twinlm.cli import AsJson, Workspace, _help, _user_errors, app, err, out
from twinlm.config import TrainConfig
from twinlm.errors import TwinError
from twinlm.train.distributed import write_launch_config
from twinlm.workspace import open_workspace


@app.command("train")
@_user_errors
def train_command(
    workspace: Workspace = Path("."),
    name: Annotated[
        str | None, typer.Option(help="Run name (folder under runs/). Default: run-<time>.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue a run from its last checkpoint (the latest run if no --name).")
    ] = False,
    method: Annotated[str | None, typer.Option(help=_help(TrainConfig, "method"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=_help(TrainConfig, "max_steps"))] = None,
    gpus: Annotated[
        int,
        typer.Option(
            help="Processes to train with (one per GPU; on a CPU-only machine, CPU processes). "
            "Writes launch/accelerate.yaml for train.distributed and relaunches through `accelerate "
            "launch`; the same as running that yourself (see `twinlm launch-config`)."
        ),
    ] = 1,
    as_json: AsJson = False,
) -> None:
    """Fine-tune the base model on the built dataset (data/) into runs/NAME: checkpoints, metrics.jsonl,
    loss.png and the final weights (the adapter for LoRA methods)."""
    from twinlm.train.loop import train

    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch(gpus, workspace))
    ws = open_workspace(workspace)
    update = {k: v for k, v in {"method": method, "max_steps": max_steps}.items() if v is not None}
    try:
        settings = TrainConfig.model_validate({**ws.config.train.model_dump(), **update})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    config = ws.config.model_copy(update={"train": settings})
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("", total=None)

        def show(step: int, total: int, loss: float, speed: float) -> None:
            progress.update(
                task, completed=step, total=total, description=f"loss {loss:.3f}, {speed:,.0f} tok/s"
            )

        result = train(config, ws.root, name, resume=resume, on_step=show)
    summary = {
        "run": str(result.run_dir),
        "steps": result.steps,
        "first_eval_loss": result.first_eval_loss,
        "last_eval_loss": result.last_eval_loss,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
    }
    if as_json:
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    out.print(
        f"Trained {result.trainable_params:,} of {result.total_params:,} parameters for {result.steps} steps "
        f"into {result.run_dir}."
    )
    if result.first_eval_loss is not None and result.last_eval_loss is not None:
        out.print(
            f"Eval loss {result.first_eval_loss:.3f} -> {result.last_eval_loss:.3f}; curve: "
            f"{result.run_dir / 'loss.png'}"
        )


def _relaunch(processes: int, workspace: Path) -> int:
    """Run this same command in `processes` processes under `accelerate launch`, with the launch config
    for train.distributed written into the workspace's launch/ folder."""
    args = sys.argv[1:]
    for i, arg in enumerate(args):  # drop --gpus N / --gpus=N
        if arg == "--gpus":
            del args[i : i + 2]
            break
        if arg.startswith("--gpus="):
            del args[i]
            break
    ws = open_workspace(workspace)
    settings = ws.config.train
    config_file = write_launch_config(ws.root / "launch", settings, processes)
    command = launch_command(config_file, ["--module", "twinlm", *args])
    shown = " ".join(command[2:])
    err.print(f"Training in {processes} processes ({settings.distributed}): {shown}", highlight=False)
    return subprocess.run(command, check=False).returncode


def launch_command(config_file: Path, target: list[str], port: int | None = None) -> list[str]:
    """`accelerate launch --config_file CONFIG` of `target` (a script, or --module NAME ...).

    Its multi-process launcher is torchrun, which gives each process its rank; twinlm then uses nccl
    with CUDA and gloo without. (`accelerate launch --cpu` would start one plain process: several CPU
    processes there mean MPI.) A MASTER_PORT in the environment picks the port.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    port = port if port is not None else int(os.environ.get("MASTER_PORT", "0")) or None
    if port is not None:
        command += ["--main_process_port", str(port)]
    return [*command, *target]


@app.command("launch-config")
@_user_errors
def launch_config_command(
    workspace: Workspace = Path("."),
    gpus: Annotated[int, typer.Option(help="GPUs (processes) on each machine.")] = 1,
    machines: Annotated[int, typer.Option(help="Machines taking part.")] = 1,
    machine_rank: Annotated[
        int, typer.Option(help="This machine's number, 0 for the main one (each machine writes its own).")
    ] = 0,
    main_address: Annotated[
        str | None, typer.Option(help="The main machine's address, reachable from the others.")
    ] = None,
    main_port: Annotated[int | None, typer.Option(help="The main machine's port for the rendezvous.")] = None,
    distributed: Annotated[str | None, typer.Option(help=_help(TrainConfig, "distributed"))] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the files. Default: the workspace's launch/.")
    ] = None,
) -> None:
    """Write the `accelerate launch` config (and DeepSpeed JSON for ZeRO) for train.distributed, for
    one machine or several, and print the command to run on each machine."""
    ws = open_workspace(workspace)
    update = {"distributed": distributed} if distributed is not None else {}
    try:
        settings = TrainConfig.model_validate({**ws.config.train.model_dump(), **update})
    except ValidationError as e:
        raise TwinError(f"--distributed: {e.errors()[0]['msg']}") from None
    if not 0 <= machine_rank < machines:
        raise TwinError(f"--machine-rank {machine_rank}: must be from 0 to {machines - 1}")
    config_file = write_launch_config(
        out_dir or ws.root / "launch",
        settings,
        gpus * machines,
        machines=machines,
        machine_rank=machine_rank,
        main_address=main_address,
        main_port=main_port,
    )
    out.print(f"Wrote {config_file} ({settings.distributed}, {gpus} GPU(s) x {machines} machine(s)).")
    if machines > 1:
        out.print(
            "Write it on every machine with its own --machine-rank (0 on the main one), then run on each:"
        )
    run = f"accelerate launch --config_file {config_file} -m twinlm train -w {ws.root}"
    out.print(f"  {run}", highlight=False)

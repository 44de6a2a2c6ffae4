"""Training commands: train (and --resume)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from twinlm.cli import AsJson, Workspace, _help, _user_errors, app, err, out
from twinlm.config import TrainConfig, TwinConfig
from twinlm.errors import TwinError
from twinlm.train import run as run_record
from twinlm.train.distributed import write_launch_config
from twinlm.workspace import open_workspace

if TYPE_CHECKING:
    from twinlm.train.loop import TrainResult


@app.command("train")
@_user_errors
def train_command(
    workspace: Workspace = Path("."),
    name: Annotated[
        str | None, typer.Option(help="Run name (folder under runs/). Default: run-<time>.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue a run from its last checkpoint (the latest run if no --name), with the settings "
            "and dataset it started with."
        ),
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
    backend: Annotated[
        str,
        typer.Option(
            help="local (this machine), or mistral-api: upload the dataset to Mistral and fine-tune "
            "hosted.model there (asks first; key from MISTRAL_API_KEY; see the hosted: settings)."
        ),
    ] = "local",
    yes: Annotated[
        bool, typer.Option("--yes", help="mistral-api: upload without asking (the files are still listed).")
    ] = False,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="mistral-api: cancel the run's job (the latest if no --name).")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Fine-tune the base model on the built dataset (data/) into runs/NAME: checkpoints, metrics.jsonl,
    loss.png and the final weights (the adapter for LoRA methods); or, with --backend mistral-api,
    through the Mistral fine-tuning API (the dataset leaves this machine, after a confirmation)."""
    if backend != "local":
        from twinlm.cli.train_hosted import train_hosted_command

        if method is not None or max_steps is not None or gpus != 1:
            raise TwinError(
                f"--method, --max-steps and --gpus are for local training; --backend {backend} takes its "
                "settings from hosted: in twin.yaml"
            )
        train_hosted_command(workspace, name, backend, resume, yes, cancel, as_json)
        return
    if cancel:
        raise TwinError("--cancel: cancels a hosted job; use it with --backend mistral-api")
    _quiet_libraries()
    if name is not None:
        run_record.check_run_name(name)
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch(gpus, workspace, name))
    try:
        result = _train(workspace, name, resume, method, max_steps, as_json)
    except KeyboardInterrupt:  # Ctrl-C: one message, no traceback, the shell's status for it
        raise typer.Exit(130) from None
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


def _train(
    workspace: Path, name: str | None, resume: bool, method: str | None, max_steps: int | None, as_json: bool
) -> TrainResult:
    ws = open_workspace(workspace)
    update = {k: v for k, v in {"method": method, "max_steps": max_steps}.items() if v is not None}
    try:
        settings = TrainConfig.model_validate({**ws.config.train.model_dump(), **update})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    if resume:
        run = run_record.run_dir(ws.root, name, resume=True)  # the named run, or the latest
        name = run.name
        _check_resume(run, settings, update, ws.root / "data")
    else:
        name = name or run_record.new_run_name()
    config = ws.config.model_copy(update={"train": settings})
    from torch import OutOfMemoryError  # torch is loaded by training anyway

    try:
        return _train_with_progress(config, ws.root, name, resume, as_json)
    except OutOfMemoryError:
        if not _main_process():  # with several processes the main one says it, once
            raise typer.Exit(1) from None
        # The commonest way a fine-tune fails: the settings that decide memory, and what lowers it.
        checkpointing = "on" if settings.gradient_checkpointing else "off"
        raise TwinError(
            f"run {name}: the GPU ran out of memory (train.method {settings.method}, batch_tokens "
            f"{settings.batch_tokens}, gradient_checkpointing {checkpointing}): lower train.batch_tokens, "
            "turn on train.gradient_checkpointing, or train with method qlora, in a new run; `twinlm "
            "validate` estimates a run's peak memory"
        ) from None
    except KeyboardInterrupt as stop:
        if _main_process():
            _say_interrupted(ws.root, name)
        wait = getattr(stop, "wait_for_the_others", None)  # twinlm.train.loop.StoppedTogether
        if wait is not None:
            with contextlib.suppress(Exception):  # a process gone for a reason of its own: leave anyway
                wait()
        raise


def _train_with_progress(
    config: TwinConfig, root: Path, name: str, resume: bool, as_json: bool
) -> TrainResult:
    from twinlm.train.loop import train

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

        return train(config, root, name, resume=resume, on_step=show)


def _check_resume(run: Path, settings: TrainConfig, options: dict[str, object], data_dir: Path) -> None:
    """A resumed run keeps the settings it was recorded with: refuse options that would change them, an
    adapter shape its checkpoints cannot load into and another dataset (train() checks these too, but
    here they come before anything is printed), and say which of twin.yaml's settings go unused."""
    recorded = run_record.recorded_settings(run)
    for option, value in options.items():
        if getattr(recorded, option) != value:
            flag = "--" + option.replace("_", "-")
            raise TwinError(
                f"{flag} {value}: run {run.name} was started with {option} {getattr(recorded, option)} and "
                f"resumes as it was; leave out {flag}, or train a new run with another --name"
            )
    run_record.check_shape(run, recorded, settings)
    if (data_dir / "build.json").is_file():
        run_record.check_data(run, data_dir)
    unused = run_record.changed_settings(recorded, settings)
    if unused and _main_process():
        listed = ", ".join(f"train.{key} {now} (the run's: {was})" for key, (was, now) in unused.items())
        err.print(
            f"Resuming {run.name} with the settings it started with; not used from twin.yaml: {listed}",
            highlight=False,
            soft_wrap=True,
        )


def _say_interrupted(root: Path, name: str) -> None:
    """After Ctrl-C: where the run can continue from, and the command that continues it."""
    run = root / "runs" / name
    command = f"twinlm train -w {root} --name {name} --resume"
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:  # a run continues in as many processes as it started with
        command += f" --gpus {processes}"
    checkpoint = None
    if (run / "checkpoints").is_dir():  # (not importing torch just to find none)
        from twinlm.train.checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(run)
    if checkpoint is not None:
        said = f"Interrupted. Last checkpoint: {checkpoint}; continue with: {command}"
    elif (run / run_record.RECORD).is_file():
        said = f"Interrupted before the first checkpoint (train.save_every); start it over with: {command}"
    else:
        said = "Interrupted before training started; nothing was saved."
    err.print(said, highlight=False, soft_wrap=True)


def _main_process() -> bool:
    """Not one of the other processes of a multi-process run (they would print the same)."""
    return os.environ.get("RANK", "0") == "0"


def _quiet_libraries() -> None:
    """Silence what libraries print that a user cannot act on, before they are imported (the filters must
    be in place when the message is made). Targeted: their other warnings still show."""

    # bitsandbytes, on a CPU with AVX512-BF16, tries a faster 4-bit kernel from the Hugging Face kernel hub
    # and, refused, advises trust_remote_code=True (offline, the `kernels` package says it skips the check):
    # twinlm runs no remote code, and bitsandbytes' own CPU kernel is used.
    _drop_log_messages("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")
    _drop_log_messages(
        "kernels._internals.hf_hub",
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
    )
    # peft reads model.is_gradient_checkpointing, deprecated in transformers 5 (peft's to change).
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


def _drop_log_messages(logger: str, prefix: str) -> None:
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(prefix)

    logging.getLogger(logger).addFilter(Drop())


def _relaunch(processes: int, workspace: Path, name: str | None) -> int:
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
    if name is None and "--resume" not in args:
        # Named here: each process would otherwise pick its own time-stamped name for Ctrl-C's message.
        args += ["--name", run_record.new_run_name()]
    ws = open_workspace(workspace)
    settings = ws.config.train
    config_file = write_launch_config(ws.root / "launch", settings, processes)
    command = launch_command(config_file, ["--module", "twinlm", *args])
    shown = " ".join(command[2:])
    err.print(f"Training in {processes} processes ({settings.distributed}): {shown}", highlight=False)
    return _run_launcher(command, processes)


_ELASTIC_LOG = re.compile(r"[DIWE]\d{4} [\d:.]+ \d+ .*torch/distributed/elastic/")
_RANK_PREFIX = re.compile(r"\[rank\d+\]:")
# What a process's collective call raises when another process died (gloo's and NCCL's wording).
_PEER_GONE = ("remote worker", "Connection reset by peer", "Connection closed by peer", "NCCL communicator")


def _run_launcher(command: list[str], processes: int) -> int:
    """Run `accelerate launch`, passing its processes' output through but not the launcher's own report
    of a failure (torch elastic's log lines and ChildFailedError traceback): the processes have said
    why already (their one-line errors, shown once). A crash nobody explained keeps its traceback."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    shown_errors: set[str] = set()
    rank_lines: list[str] = []  # a process's uncaught traceback, prefixed "[rankN]:" by torch
    launcher: list[str] = []  # from the launcher's "Traceback" on

    def handle(line: str) -> None:
        text = line.rstrip("\n")
        if launcher or text == "Traceback (most recent call last):":
            launcher.append(text)
        elif _RANK_PREFIX.match(text):
            rank_lines.append(text)
        elif _ELASTIC_LOG.match(text):
            pass
        elif text.startswith("error:"):
            if text not in shown_errors:
                shown_errors.add(text)
                sys.stderr.write(line)
        else:
            sys.stderr.write(line)
        sys.stderr.flush()

    interrupted = False
    while True:
        try:
            for line in proc.stderr:
                handle(line)
            break
        except KeyboardInterrupt:  # the terminal sent it to the processes too: they say where to resume
            interrupted = True
    code = proc.wait()
    failed = _exit_codes(launcher)  # "130 (pid: 12)", "-15 (pid: 13) (SIGTERM)"
    if interrupted or (
        any(exit.startswith("130 ") for exit in failed)
        and all(exit.startswith("130 ") or exit.endswith("(SIGTERM)") for exit in failed)
    ):
        # Ctrl-C here, or in the processes only: they stopped together and said where to resume (the
        # launcher may stop a process with SIGTERM once another has ended)
        return 130
    if code == 0 or shown_errors:
        return code if code == 0 else 1
    # Nobody gave a reason: a crash. Its traceback stays, unless it is only a process noticing that another
    # one died (its connection broke); the launcher's is cut to its cause.
    if not any(mark in text for text in rank_lines[-3:] for mark in _PEER_GONE):
        for text in rank_lines:
            sys.stderr.write(text + "\n")
    ours = any(
        "accelerate/commands/launch.py" in text or "torch/distributed/run.py" in text for text in launcher
    )
    if not ours:
        sys.stderr.write("".join(text + "\n" for text in launcher))
    else:
        causes = [t for t in launcher if t and not t.startswith((" ", "\t", "Traceback"))]
        cause = causes[0] if causes else f"exit status {code}"
        if cause.rstrip().endswith("ChildFailedError:"):  # its table names the process's exit code
            # The root cause (first failure) is listed after the other failures.
            root = next((i for i, t in enumerate(launcher) if "Root Cause" in t), 0)
            exits = _exit_codes(launcher[root:])
            cause = f"a process ended with exit code {exits[0]}" if exits else cause
        err.print(
            f"[bold red]error:[/] training in {processes} processes failed: {cause}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
    return code or 1


def _exit_codes(launcher: list[str]) -> list[str]:
    """The exit codes in torch elastic's ChildFailedError table, as it writes them."""
    return [line.split(":", 1)[1].strip() for line in launcher if line.strip().startswith("exitcode")]


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

"""Dataset commands: build (with --preview), validate, export-data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from twinlm.cli import AsJson, Workspace, _help, _user_errors, app, err, out
from twinlm.cli.display import safe_rich_text, safe_text
from twinlm.config import BuildConfig, TrainConfig
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError
from twinlm.workspace import Workspace as TwinWorkspace
from twinlm.workspace import open_workspace


def _dataset_folder(ws: TwinWorkspace) -> Path:
    return ws.root / "data"


@app.command("build")
@_user_errors
def build_command(
    workspace: Workspace = Path("."),
    model: Annotated[str | None, typer.Option(help=_help(BuildConfig, "model"))] = None,
    targets: Annotated[
        list[str] | None, typer.Option(help=_help(BuildConfig, "targets") + " Repeat for several names.")
    ] = None,
    preview: Annotated[
        int, typer.Option(help="Then show this many samples, trained tokens highlighted.")
    ] = 0,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help="Send the document chunks to the teacher endpoint (build.teacher) without asking. Without "
            "it the build says where and how much, and asks; with no terminal to ask, it sends nothing.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Turn the corpus into a tokenized dataset for the base model (data/ in the workspace)."""
    from twinlm.prepare.build import build
    from twinlm.prepare.preview import preview as show_samples
    from twinlm.privacy import confirm_remote_send

    ws = open_workspace(workspace)
    update: dict[str, object] = {}
    if model:
        update["model"] = model
    if targets:
        update["targets"] = (
            targets[0]
            if len(targets) == 1 and targets[0] in ("auto", "me", "assistant", "everyone")
            else targets
        )
    try:
        settings = BuildConfig.model_validate({**ws.config.build.model_dump(), **update})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}") from None
    if not settings.model:
        raise TwinError(
            "build.model is empty: set it in twin.yaml to a local model folder or a hub id "
            "(e.g. mistralai/Mistral-7B-Instruct-v0.3), or pass --model"
        )
    config = ws.config.model_copy(update={"build": settings})
    folder = _dataset_folder(ws)
    with (
        Corpus(ws.corpus_path) as corpus,
        Progress(  # the numbers first: a narrow terminal crops the stage's name, at the end
            SpinnerColumn(),
            TextColumn("{task.fields[read]}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=err,
            expand=True,  # the stage's name takes the room the others leave
            transient=True,
            disable=as_json,
        ) as progress,
    ):
        task = progress.add_task("Building", total=None, read="")

        def show_reading(read: int, total: int) -> None:
            progress.update(task, completed=read, total=total, read=f"{read:,}/{total:,} messages")

        def confirm(url: str, chunks: int, characters: int) -> None:
            progress.stop()  # the bar would draw over the question
            try:
                confirm_remote_send(url, chunks, characters, yes=yes)
            finally:
                progress.start()

        try:
            result = build(
                config,
                corpus,
                folder,
                on_stage=lambda stage: progress.update(task, description=stage[:1].upper() + stage[1:]),
                confirm_send=confirm,
                on_progress=show_reading,
            )
        except KeyboardInterrupt:
            progress.stop()
            # The dataset's files are replaced together at the end (build.json last): old whole, or none.
            kept = "holds no dataset"
            if (folder / "build.json").is_file():
                kept = "keeps the previous dataset whole"
            err.print(
                f"Interrupted: {safe_text(folder)} {kept}; run the same command to build it.",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
    if result.removed_leftovers:  # on stderr: --json output stays JSON
        err.print(
            f"Removed {len(result.removed_leftovers)} temporary file(s) left by an interrupted build: "
            + ", ".join(result.removed_leftovers),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for warning in result.report["warnings"]:
        err.print(f"[bold yellow]warning:[/] {safe_text(warning)}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(orjson.dumps(result.report | {"folder": str(folder)}, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"Dataset in {safe_text(folder)}", title_justify="left")
    for column in ("split", "samples", "tokens", "trained tokens", "trained share"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("train", "eval"):
        share = result.trained_tokens[split] / result.tokens[split] if result.tokens[split] else 0
        table.add_row(
            split,
            f"{result.samples[split]:,}",
            f"{result.tokens[split]:,}",
            f"{result.trained_tokens[split]:,}",
            f"{share:.0%}",
        )
    out.print(table)
    counts = Table(title="What the rules did", title_justify="left")
    counts.add_column("rule")
    counts.add_column("count", justify="right")
    for rule, n in sorted(result.report["counts"].items(), key=lambda kv: (-kv[1], kv[0])):
        if n:
            counts.add_row(safe_text(rule), f"{n:,}")
    out.print(counts)
    redacted = {kind: n for kind, n in result.report["redacted"].items() if n}
    out.print(
        "Redacted: "
        + (", ".join(f"{safe_text(kind)} {n:,}" for kind, n in redacted.items()) or "nothing found")
        if config.build.redact.enabled
        else "Redacted: nothing (build.redact.enabled is false)"
    )
    for by in ("speaker", "source"):  # whose words are trained: a wrong `me:` shows here
        whose = Table(title=f"Trained, per {by}", title_justify="left")
        for column in (by, "turns", "tokens"):
            whose.add_column(column, justify="left" if column == by else "right")
        for name, row in result.report[f"trained_by_{by}"].items():
            whose.add_row(safe_text(name), f"{row['turns']:,}", f"{row['tokens']:,}")
        out.print(whose)
    histogram = result.report["length_histogram"]
    out.print("Sample lengths (tokens): " + ", ".join(f"{k}: {v:,}" for k, v in histogram.items() if v))
    if preview:
        from twinlm.prepare.preview import LEGEND

        out.print(LEGEND, highlight=False)
    for sample_id, text in show_samples(folder, preview) if preview else []:
        out.rule(safe_text(sample_id))
        out.print(safe_rich_text(text))


@app.command("validate")
@_user_errors
def validate_command(
    workspace: Workspace = Path("."),
    gpu: Annotated[
        str | None,
        typer.Option(
            help="GPU for the estimate: a name such as 4090, RTX 3060, A100 80GB, H100 (default H100)."
        ),
    ] = None,
    gpu_memory: Annotated[
        float | None, typer.Option(help="Any other GPU: its memory in GB (overrides a named one's).")
    ] = None,
    gpu_tflops: Annotated[
        float | None,
        typer.Option(help="Any other GPU: its peak dense bf16 TFLOP/s (overrides a named one's)."),
    ] = None,
    params_b: Annotated[
        float | None,
        typer.Option(help="Model size in billions of parameters. Default: counted from the dataset's model."),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="lora, qlora, dora, qdora or full. Default: train.method.")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Passes over the training split. Default: train.epochs.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check the built dataset (roles, empty turns, nothing trained, over-long samples, the eval share)
    and estimate the run twin.yaml describes: time and peak GPU memory. Exit status 1 when there are
    problems to fix."""
    from twinlm.prepare.validate import MFU, advice, estimate, find_gpu, gpu_label, model_size, validate

    ws = open_workspace(workspace)
    result = validate(_dataset_folder(ws))
    update: dict[str, object] = {}
    if method is not None:
        update["method"] = method
    if epochs is not None:
        update["epochs"] = epochs
        update["max_steps"] = 0  # the epochs asked for, not a step budget from twin.yaml
    try:
        settings = TrainConfig.model_validate({**ws.config.train.model_dump(), **update})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}") from None
    custom = gpu is None and gpu_memory is not None and gpu_tflops is not None
    card = find_gpu(None if custom else (gpu or "H100"), gpu_memory, gpu_tflops)
    size = model_size(result.model, ws.root, params_b)
    plan = estimate(size, result.tokens.get("train", 0), card, settings)
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "problems": dict(result.problems),
                    "warnings": dict(result.warnings),
                    "examples": result.examples,
                    "samples": result.samples,
                    "tokens": result.tokens,
                    "trained_tokens": result.trained_tokens,
                    "eval_share_of_trained_tokens": round(result.eval_share, 4),
                    "eval_fraction": result.eval_fraction,
                    "estimate_seconds": round(plan.hours * 3600, 2),
                    "memory_gb": round(plan.memory_gb, 2),
                    "memory_parts_gb": {k: round(v, 3) for k, v in plan.parts_gb.items()},
                    "fits": plan.fits,
                    "gpu": card.name,
                    "gpu_memory_gb": card.memory_gb,
                    "gpu_tflops": card.tflops,
                    "params": size.params,
                    "params_b": size.params / 1e9,
                    "params_source": size.source,
                    "method": settings.method,
                    "epochs": settings.epochs,
                    "max_steps": settings.max_steps,
                    "dtype": plan.dtype,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        for split in ("train", "eval"):
            out.print(
                f"{split}: {result.samples[split]:,} samples, {result.tokens[split]:,} tokens, "
                f"{result.trained_tokens[split]:,} trained"
            )
        out.print(
            f"eval holds {result.eval_share:.1%} of the trained tokens "
            f"(build.eval_fraction: {result.eval_fraction:.1%})"
        )
        for reason, n in result.problems.items():
            examples = safe_text(", ".join(result.examples[reason]))
            err.print(f"[bold red]problem:[/] {safe_text(reason)}: {n:,} (e.g. {examples})")
        for reason, n in result.warnings.items():
            out.print(
                f"[yellow]warning:[/] {safe_text(reason)}" + (f": {n:,}" if reason in result.examples else "")
            )
        run = f"{settings.max_steps:,} steps" if plan.step_budget else f"{settings.epochs:g} epoch(s)"
        out.print(
            f"Model: {safe_text(result.model)}, {_params(size.params)} parameters ({size.source}).",
            highlight=False,
        )
        out.print(
            f"Estimated training time: {_duration(plan.hours)} for {run} of {settings.method} "
            f"({plan.dtype}) on one {card.name}, {plan.tokens:,} tokens (at {MFU:.0%} of peak throughput).",
            highlight=False,
        )
        parts = ", ".join(f"{k} {v:.1f}" for k, v in plan.parts_gb.items())
        if plan.fits:
            out.print(
                f"Peak GPU memory: ~{plan.memory_gb:.1f} GB of {gpu_label(card)}: fits ({parts}).",
                highlight=False,
            )
        else:
            out.print(
                f"[bold red]Will not fit:[/] peak GPU memory ~{plan.memory_gb:,.1f} GB, more than the "
                f"{gpu_label(card)} has ({parts}); {advice(plan, settings)}.",
                highlight=False,
            )
    if result.problems:
        raise typer.Exit(1)


def _params(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count:,}"


@app.command("export-data")
@_user_errors
def export_data(
    format: Annotated[
        str, typer.Option("--format", help="sharegpt, alpaca, openai, mistral, axolotl or hf.")
    ],
    workspace: Workspace = Path("."),
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder. Default: export/data-FORMAT in the workspace."),
    ] = None,
) -> None:
    """Write the built dataset in another tool's format (train and eval files, field names as that tool
    documents them; Mistral fine-tuning API limits checked)."""
    from twinlm.prepare.interop import export_samples
    from twinlm.prepare.sample import read_samples

    ws = open_workspace(workspace)
    samples = read_samples(_dataset_folder(ws) / "samples.jsonl")  # read as written: memory flat
    target = out_dir or ws.root / "export" / f"data-{format}"
    report = export_samples(samples, format, target)
    for line in report.lines():
        out.print(safe_text(line), highlight=False)


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{hours:.1f} h"

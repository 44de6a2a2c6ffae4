"""Export commands: merge, gguf, ollama, and export (all of them plus the parity check).

Thin: the work is twinlm.export.pipeline.export_run, stopped after the command's step. Progress bars
and the lines about each step go to stderr; the summary (or --json) to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from twinlm.cli import AsJson, Workspace, _help, _user_errors, app, err, out
from twinlm.cli.display import safe_text
from twinlm.config import ExportConfig
from twinlm.errors import TwinError
from twinlm.workspace import open_workspace

Run = Annotated[
    str | None,
    typer.Argument(
        help="The run to export (a folder under runs/). Default: the latest run.", show_default=False
    ),
]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        help="A checkpoint of the run, step-N (see runs/RUN/checkpoints/), or final. Default: the one "
        "`twinlm eval --pick` chose (runs/RUN/picked.json), else the final weights."
    ),
]
QType = Annotated[str | None, typer.Option("--type", help=_help(ExportConfig, "type"), show_default=False)]
Persona = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="The persona the Modelfile speaks as (one per Modelfile). Default: the run's first (you).",
        show_default=False,
    ),
]


class _Bars:
    """The pipeline's events as rich progress bars (bytes written) and one line per step done or skipped."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars = not quiet and err.is_terminal  # no bars in a log file, only the lines
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def start(self, step: str, label: str) -> object:
        self._stop()
        if not self.bars:
            return None
        self.progress = Progress(
            TextColumn(f"[bold]{step}[/] {label}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=None)
        bar, task = self.progress, self.task

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        return update

    def finish(self, step: str, label: str) -> None:
        self._stop()
        if not self.quiet:
            err.print(f"{step}: {safe_text(label)}", highlight=False, soft_wrap=True)

    def skip(self, step: str, label: str) -> None:
        if not self.quiet:
            err.print(f"{step}: skipped, {safe_text(label)}", highlight=False, soft_wrap=True)

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self._stop()


def _settings(workspace: Path, qtype: str | None, check: bool | None) -> tuple[Path, ExportConfig]:
    ws = open_workspace(workspace)
    update = {k: v for k, v in {"type": qtype, "check": check}.items() if v is not None}
    try:
        settings = ExportConfig.model_validate({**ws.config.export.model_dump(), **update})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{first['loc'][0]} {qtype}: {first['msg']}") from None
    return ws.root, settings


def _run(
    workspace: Path,
    run: str | None,
    until: str,
    as_json: bool,
    *,
    qtype: str | None = None,
    check: bool | None = None,
    persona: str | None = None,
    checkpoint: str | None = None,
    merged_out: Path | None = None,
) -> None:
    from twinlm.export.pipeline import export_run

    root, settings = _settings(workspace, qtype, check)
    unchecked = until == "check" and not settings.check
    if unchecked:
        until = "modelfile"
    bars = _Bars(quiet=as_json)
    try:
        result = export_run(
            root,
            run,
            qtype=settings.type,
            until=until,  # type: ignore[arg-type]
            persona=persona,
            checkpoint=checkpoint,
            temperature=settings.temperature,
            merged_out=merged_out,
            events=bars,  # type: ignore[arg-type]
        )
    except KeyboardInterrupt:
        bars.close()
        err.print(
            "Interrupted: nothing half-written is left under a final name; the same command continues "
            "(finished steps are kept).",
            highlight=False,
        )
        raise typer.Exit(130) from None
    finally:
        bars.close()
    if as_json:
        typer.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _summary(result, unchecked)
    if result.status == "failed":
        raise typer.Exit(1)


def _summary(result: object, unchecked: bool) -> None:
    from twinlm.export.pipeline import ExportResult

    assert isinstance(result, ExportResult)
    what = f"run {result.run}" + (f" ({result.checkpoint})" if result.checkpoint else "")
    what += f" as {result.qtype}" if result.qtype else ""
    if result.persona:
        what += f", persona {result.persona}"
    if result.done:
        out.print(f"Exported {safe_text(what)} into {safe_text(result.folder)}:", highlight=False)
    else:
        out.print(
            f"Nothing changed since the last export of {safe_text(what)}: every step was skipped "
            f"({', '.join(result.skipped)}). Files in {safe_text(result.folder)}:",
            highlight=False,
            soft_wrap=True,
        )
    width = max((len(name) for name in result.files), default=0)
    for name, size in result.files.items():
        out.print(f"  {safe_text(name):<{width}}  {_size(size)}", highlight=False)
    if len(result.personas) > 1 and result.persona:
        others = ", ".join(p for p in result.personas if p != result.persona)
        out.print(f"Other personas (--as NAME, one Modelfile each): {safe_text(others)}", highlight=False)
    if result.parity is not None:
        from twinlm.export.parity import ParityReport

        fields = {k: v for k, v in result.parity.items() if k in ParityReport.__dataclass_fields__}
        figures = ParityReport(**fields).figures()
        for note in result.parity.get("notes") or []:
            err.print(f"Note: {safe_text(note)}", highlight=False, soft_wrap=True)
        if result.status == "ok":
            out.print(f"Parity with llama.cpp: ok ({figures})", highlight=False, soft_wrap=True)
        else:
            err.print(
                f"[bold red]Parity with llama.cpp FAILED[/] ({safe_text(figures)}):",
                highlight=False,
                soft_wrap=True,
            )
            for problem in result.problems:
                err.print(f"  - {safe_text(problem)}", highlight=False, soft_wrap=True)
            err.print(
                f"The export is marked failed in {safe_text(result.folder / 'export.json')}; do not use it.",
                highlight=False,
            )
            return
    elif unchecked:
        out.print("Parity not checked (--no-check).", highlight=False)
    if result.commands:
        out.print("Run it:", highlight=False)
        for command in result.commands:
            out.print(f"  {safe_text(command)}", highlight=False, soft_wrap=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


@app.command("merge")
@_user_errors
def merge_command(
    run: Run = None,
    workspace: Workspace = Path("."),
    checkpoint: Checkpoint = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder to write the merged model to. Default: export/RUN/merged."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Merge the run's adapter into its base model (16 bit, shard by shard): a standalone Hugging Face
    model folder with the tokenizer, the chat template and the persona prompts."""
    _run(workspace, run, "merge", as_json, checkpoint=checkpoint, merged_out=out_dir)


@app.command("gguf")
@_user_errors
def gguf_command(
    run: Run = None,
    workspace: Workspace = Path("."),
    qtype: QType = None,
    checkpoint: Checkpoint = None,
    as_json: AsJson = False,
) -> None:
    """Convert the merged run to a GGUF file for llama.cpp, LM Studio and Ollama (merging first if needed)."""
    _run(workspace, run, "gguf", as_json, qtype=qtype, checkpoint=checkpoint)


@app.command("ollama")
@_user_errors
def ollama_command(
    run: Run = None,
    workspace: Workspace = Path("."),
    persona: Persona = None,
    qtype: QType = None,
    checkpoint: Checkpoint = None,
    as_json: AsJson = False,
) -> None:
    """Write an Ollama Modelfile for the run's GGUF (making it first if needed) and print the commands
    that load it into Ollama."""
    _run(workspace, run, "modelfile", as_json, qtype=qtype, persona=persona, checkpoint=checkpoint)


@app.command("export")
@_user_errors
def export_command(
    run: Run = None,
    workspace: Workspace = Path("."),
    qtype: QType = None,
    persona: Persona = None,
    check: Annotated[
        bool | None, typer.Option("--check/--no-check", help=_help(ExportConfig, "check"), show_default=False)
    ] = None,
    checkpoint: Checkpoint = None,
    as_json: AsJson = False,
) -> None:
    """Merge, convert to GGUF, quantize, write the Modelfile and check parity with llama.cpp, into
    export/RUN/. Steps whose inputs did not change are skipped. Exits 1 when the parity check fails."""
    _run(workspace, run, "check", as_json, qtype=qtype, check=check, persona=persona, checkpoint=checkpoint)

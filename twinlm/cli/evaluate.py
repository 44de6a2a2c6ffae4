"""`twinlm eval [RUN]`: score the base model, each checkpoint and the tuned weights of a run; write the
report (reports/eval-RUN.html and .json); `--pick METRIC` marks the best checkpoint for `twinlm export`.

Thin: the work is twinlm.evaluate.evaluate.evaluate. Progress bars and a line per checkpoint go to
stderr; the summary (or --json) to stdout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from twinlm.cli import AsJson, Workspace, _user_errors, app, err, out
from twinlm.cli.display import plain_text, safe_text

Run = Annotated[
    str | None,
    typer.Argument(
        help="The run to evaluate (a folder under runs/). Default: the latest run.", show_default=False
    ),
]
Pick = Annotated[
    str | None,
    typer.Option(
        "--pick",
        help="Mark the best checkpoint by this metric in runs/RUN/picked.json, for `twinlm export`: "
        "eval_loss, style, doc_f1 or judge.",
        show_default=False,
    ),
]
Yes = Annotated[
    bool,
    typer.Option(
        "--yes",
        help="Send the document answers to the judge endpoint (eval.judge), and with --backend mistral-api "
        "the held-out chats to the Mistral API, without asking. Without it eval says where and how much, "
        "and asks; with no terminal to ask, it sends nothing.",
    ),
]
Backend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="local (a run trained here), or mistral-api: a hosted run (twinlm train --backend mistral-api), "
        "its fine-tuned model against its base model through the API (MISTRAL_API_KEY; no perplexity).",
    ),
]


class _Bars:
    """One transient rich bar per piece of work (only on a terminal; a log gets the lines only)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        if not quiet and err.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.progress.start()
        self.task: Any = None

    def __call__(self, what: str, total: int) -> Callable[[], None]:
        if self.progress is None:
            return lambda: None
        if self.task is not None:
            self.progress.remove_task(self.task)
        task = self.task = self.progress.add_task(safe_text(what), total=total or None)
        progress = self.progress
        return lambda: progress.advance(task)

    def note(self, line: str) -> None:
        if not self.quiet:
            err.print(safe_text(line), highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _number(value: Any, digits: int) -> str:
    if isinstance(value, str):  # a hosted model's perplexity: "not available for a hosted model"
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _tell(line: str) -> None:
    """A line of what eval would send (names from the chats in it): plain, before the confirmation."""
    err.print(Text(plain_text(line)), soft_wrap=True)


@app.command("eval")
@_user_errors
def eval_command(
    run: Run = None,
    workspace: Workspace = Path("."),
    pick: Pick = None,
    yes: Yes = False,
    as_json: AsJson = False,
    backend: Backend = "local",
) -> None:
    """Evaluate a run: perplexity, style fidelity, probes and documents for base, checkpoints and tuned."""
    from twinlm.evaluate.evaluate import evaluate

    bars = _Bars(quiet=as_json)
    try:
        result = evaluate(
            workspace, run, pick=pick, yes=yes, progress=bars, note=bars.note, backend=backend, tell=_tell
        )
    finally:
        bars.close()
    data = result.data
    if as_json:
        summary = {
            "run": result.run,
            "report": str(result.html),
            "json": str(result.json),
            "points": [
                {k: v for k, v in p.items() if k not in ("replies", "style", "probes", "documents")}
                for p in data["points"]
            ],
            "best": data["best"],
            "picked": result.picked,
            "warnings": data["warnings"],
        }
        if data.get("hosted"):
            summary["hosted"] = data["hosted"]
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"run {safe_text(result.run)}")
    for column in ("weights", "step", "eval loss", "perplexity", "style", "classifier", "doc F1", "judge"):
        table.add_column(column, overflow="fold", no_wrap=column != "weights")
    for p in data["points"]:
        table.add_row(
            safe_text(p["label"]),
            str(p["step"]),
            _number(p.get("eval_loss"), 4),
            _number(p.get("perplexity"), 2),
            _number(p.get("style_score"), 3),
            _number(p.get("indistinguishability"), 3),
            _number(p.get("doc_f1"), 3),
            _number(p.get("judge"), 3),
        )
    out.print(table)
    if data.get("note"):  # a hosted run: which models, and why there is no perplexity
        err.print(Text(plain_text(data["note"])), soft_wrap=True)
    for warning in data["warnings"]:
        err.print(f"warning: {safe_text(warning)}", highlight=False, soft_wrap=True)
    best = ", ".join(f"{k} {v}" for k, v in data["best"].items() if v)
    if best:
        out.print(f"Best: {safe_text(best)}", highlight=False, soft_wrap=True)
    if result.picked:
        chosen = result.picked["checkpoint"] or "final"
        out.print(
            f"Picked {safe_text(chosen)} by {result.picked['metric']} "
            f"({safe_text(result.html.parent.parent / 'runs' / result.run / 'picked.json')}).",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"Report: {safe_text(result.html)} (numbers: {safe_text(result.json)})",
        highlight=False,
        soft_wrap=True,
    )

"""`twinlm train --backend mistral-api`: the command-line side of hosted fine-tuning (twinlm.hosted)."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer

from twinlm.cli import err, out
from twinlm.cli.display import safe_text
from twinlm.errors import TwinError
from twinlm.train import run as run_record
from twinlm.workspace import open_workspace

BACKENDS = ("local", "mistral-api")


def train_hosted_command(
    workspace: Path, name: str | None, backend: str, resume: bool, yes: bool, cancel: bool, as_json: bool
) -> None:
    if backend not in BACKENDS:
        raise TwinError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if name is not None:
        run_record.check_run_name(name)
    from twinlm.hosted.train import train_hosted

    ws = open_workspace(workspace)
    try:
        result = train_hosted(
            ws.root,
            ws.config.hosted,
            name,
            resume=resume,
            yes=yes,
            cancel=cancel,
            console=err,
            safe=safe_text,
        )
    except KeyboardInterrupt:  # the job goes on; train_hosted said how to re-attach
        raise typer.Exit(130) from None
    summary = {
        "run": str(result.run_dir),
        "backend": backend,
        "job_id": result.job_id,
        "status": result.status,
        "fine_tuned_model": result.fine_tuned_model,
        "steps": result.steps,
        "first_eval_loss": result.first_eval_loss,
        "last_eval_loss": result.last_eval_loss,
    }
    if as_json:
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    if result.status == "CANCELLED":
        out.print(
            f"Job {safe_text(result.job_id)} cancelled (run {safe_text(result.run_dir)}).", highlight=False
        )
        return
    out.print(
        f"Job {safe_text(result.job_id)} done: model {safe_text(str(result.fine_tuned_model))} "
        f"({result.steps} steps), recorded in {safe_text(result.run_dir)}.",
        highlight=False,
    )
    if result.first_eval_loss is not None and result.last_eval_loss is not None:
        out.print(
            f"Eval loss {result.first_eval_loss:.3f} -> {result.last_eval_loss:.3f}; curve: "
            f"{safe_text(result.run_dir / 'loss.png')}",
            highlight=False,
        )

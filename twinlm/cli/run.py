"""`twinlm run`: ingest, build, train, eval and export in order, each only where its inputs or settings
changed since it last finished (twinlm.run keeps the fingerprints), a killed training resumed, then one
summary: where everything is, the eval headline and the commands to chat and serve.

Each stage is the verb's own command function (the same checks, output and errors as running it alone);
a stage that fails stops the run with its one error line, and the next `twinlm run` starts there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from twinlm import run as state_of
from twinlm.cli import Workspace, _user_errors, app, err, out
from twinlm.cli.display import safe_text
from twinlm.errors import TwinError
from twinlm.workspace import open_workspace


@app.command("run")
@_user_errors
def run_command(
    workspace: Workspace = Path("."),
    pick: Annotated[
        str | None,
        typer.Option(
            "--pick",
            help="Have eval mark the best checkpoint by this metric (eval_loss, style, doc_f1, judge); "
            "export then takes it. Default: the final weights.",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help="Send to the endpoints twin.yaml enables (build.teacher, eval.judge) without asking.",
        ),
    ] = False,
) -> None:
    """The whole way in one command: ingest (ingest.paths), build, train, eval and export, skipping every
    stage whose inputs and settings did not change and resuming a killed training."""
    from twinlm.cli.corpus import ingest_command
    from twinlm.cli.data import build_command
    from twinlm.cli.evaluate import eval_command
    from twinlm.cli.export import export_command
    from twinlm.cli.train import train_command
    from twinlm.train import run as run_record

    ws = open_workspace(workspace)
    root, config = ws.root, ws.config
    state = state_of.read_state(root)
    done: dict[str, str] = {}
    state["last_run"] = done

    def skip(stage: str, why: str) -> None:
        done[stage] = "skipped"
        err.print(f"[bold]{stage}[/]: {why}", highlight=False, soft_wrap=True)

    def start(stage: str, what: str = "ran") -> None:
        done[stage] = what
        err.rule(f"[bold]{stage}[/]", align="left")

    # 1. ingest
    fingerprint = state_of.fingerprints(root, config, "ingest")
    if not (config.ingest.paths or config.ingest.documents):
        if not ws.corpus_path.is_file():
            raise TwinError(
                f"{root / 'twin.yaml'}: ingest.paths is empty and nothing is ingested yet; list your exports "
                "under ingest.paths (and documents under ingest.documents), then run again"
            )
        skip("ingest", "ingest.paths is empty: the corpus as it is")
    elif state_of.is_fresh(state, "ingest", fingerprint) and ws.corpus_path.is_file():
        skip("ingest", "the exports did not change, skipped")
    else:
        start("ingest")
        ingest_command(workspace=root)
        state_of.record(root, state, "ingest", fingerprint)

    # 2. build
    fingerprint = state_of.fingerprints(root, config, "build")
    if state_of.is_fresh(state, "build", fingerprint) and (root / "data" / "build.json").is_file():
        skip("build", "the corpus and build settings did not change, skipped")
    else:
        start("build")
        build_command(workspace=root, yes=yes)
        state_of.record(root, state, "build", fingerprint)

    # 3. train: the run started on this dataset and these settings, resumed where it was killed
    fingerprint = state_of.fingerprints(root, config, "train")
    entry = state["stages"].get("train") or {}
    name = entry.get("run") if entry.get("fingerprint") == fingerprint else None
    run_dir = root / "runs" / name if name else None
    if run_dir is not None and entry.get("done") and (run_dir / "final").is_dir():
        skip("train", f"run {name} trained on this dataset with these settings, skipped")
    elif run_dir is not None and (run_dir / run_record.RECORD).is_file():
        start("train", "resumed")
        err.print(f"Resuming run {safe_text(name)} (it stopped before finishing).", highlight=False)
        train_command(workspace=root, name=name, resume=True)
        state_of.record(root, state, "train", fingerprint, run=name)
    else:
        start("train")
        name = run_record.new_run_name()
        state["stages"]["train"] = {"fingerprint": fingerprint, "run": name, "done": False}
        state_of.write_state(root, state)  # before training: a killed run is found and resumed
        train_command(workspace=root, name=name)
        state_of.record(root, state, "train", fingerprint, run=name)
    assert name is not None

    # 4. eval
    fingerprint = state_of.fingerprints(root, config, "eval", name) + f"-pick-{pick}"
    report = root / "reports" / f"eval-{name}.json"
    held_out = (_read_json(root / "data" / "build.json").get("samples") or {}).get("eval")
    if held_out == 0:  # eval would stop the run with its error; the model is still worth exporting
        skip("eval", "the dataset holds nothing out (build.eval_fraction is 0): not evaluated")
    elif state_of.is_fresh(state, "eval", fingerprint) and report.is_file():
        skip("eval", f"run {name} was evaluated with these settings, skipped")
    else:
        start("eval")
        eval_command(run=name, workspace=root, pick=pick, yes=yes)
        state_of.record(root, state, "eval", fingerprint)

    # 5. export
    fingerprint = state_of.fingerprints(root, config, "export", name)
    exported = _read_json(root / "export" / name / "export.json")
    if state_of.is_fresh(state, "export", fingerprint) and exported.get("status") in ("ok", "unchecked"):
        skip("export", f"run {name} was exported with these settings, skipped")
    else:
        start("export")
        export_command(run=name, workspace=root)
        state_of.record(root, state, "export", fingerprint)
    state_of.write_state(root, state)
    _summary(root, name, done)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _summary(root: Path, name: str, done: dict[str, str]) -> None:
    """Where the model, GGUF, Modelfile and report are, the eval headline, and what to run next."""
    exported = _read_json(root / "export" / name / "export.json")
    report = _read_json(root / "reports" / f"eval-{name}.json")
    picked = _read_json(root / "runs" / name / "picked.json")
    files = [root / f for f in exported.get("files") or {}]
    gguf = next((f for f in files if f.suffix == ".gguf"), None)
    modelfile = next((f for f in files if f.name == "Modelfile"), None)
    merged = next((f.parent for f in files if f.parent.name.startswith("merged")), None)
    merged = merged or next((f for f in files if f.name.startswith("merged")), None)
    lines = [
        "Stages: " + ", ".join(f"{stage} {what}" for stage, what in done.items()),
        f"Run:       {root / 'runs' / name} (weights: {picked.get('checkpoint') or 'final'})",
        f"Model:     {merged or root / 'export' / name / 'merged'}",
        f"GGUF:      {gguf or '(none)'}",
        f"Modelfile: {modelfile or '(none)'}",
        f"Report:    {root / 'reports' / f'eval-{name}.html'}",
    ]
    headline = _headline(report)
    if headline:
        lines.append(f"Eval:      {headline}")
    out.rule("[bold]twin ready[/]", align="left")
    for line in lines:
        out.print(safe_text(line), highlight=False, soft_wrap=True)
    out.print("Next:", highlight=False)
    commands = [f"twinlm chat -w {root}", f"twinlm serve -w {root}", *(exported.get("commands") or [])]
    for command in commands:
        out.print(f"  {safe_text(command)}", highlight=False, soft_wrap=True)


def _headline(report: dict[str, Any]) -> str:
    """Base against tuned: eval loss, style score and document F1 where measured."""
    points = {p.get("label"): p for p in report.get("points") or [] if isinstance(p, dict)}
    base, tuned = points.get("base"), points.get(report.get("tuned"))
    if not base or not tuned:
        return ""
    parts = []
    for key, label in (("eval_loss", "eval loss"), ("style_score", "style"), ("doc_f1", "doc F1")):
        a, b = base.get(key), tuned.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            parts.append(f"{label} {a:.3f} -> {b:.3f}")
    return ("base -> tuned: " + ", ".join(parts)) if parts else ""

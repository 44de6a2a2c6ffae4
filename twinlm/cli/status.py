"""`twinlm status`: where a workspace stands, read from what each stage left behind (nothing is loaded,
nothing is written): what is ingested, what the dataset was built with, which runs exist and which can
resume, what was evaluated and exported, and whether `twinlm run` would redo anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import typer

from twinlm.cli import AsJson, Workspace, _user_errors, app, out
from twinlm.cli.display import safe_text
from twinlm.workspace import open_workspace


def _json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _corpus(db: Path) -> dict[str, Any] | None:
    if not db.is_file():  # opening a Corpus would create it
        return None
    from types import SimpleNamespace

    from twinlm.corpus.db import read_only
    from twinlm.corpus.queries import source_stats

    with read_only(db) as conn:  # status writes nothing
        rows = source_stats(SimpleNamespace(db=conn), top=0)  # type: ignore[arg-type]
        last = conn.execute("SELECT max(finished_at) FROM imports").fetchone()
    return {
        "sources": {s.source: {"conversations": s.conversations, "messages": s.messages} for s in rows},
        "last_ingest": last[0] if last else None,
    }


def _dataset(data: Path) -> dict[str, Any] | None:
    info = _json(data / "build.json")
    if not info:
        return None
    build = (info.get("config") or {}).get("build") or {}
    return {
        "model": info.get("model"),
        "targets": build.get("targets"),
        "me": info.get("me"),
        "samples": info.get("samples"),
        "trained_tokens": info.get("trained_tokens"),
    }


def _steps(folder: Path) -> list[int]:
    found = []
    for item in (folder / "checkpoints").glob("step-*"):
        digits = item.name.removeprefix("step-")
        if digits.isdigit() and (item / "state.json").is_file():
            found.append(int(digits))
    return sorted(found)


def _runs(root: Path) -> list[dict[str, Any]]:
    from twinlm.train.run import RECORD

    runs = []
    records = [p.parent for p in (root / "runs").glob(f"*/{RECORD}") if not p.parent.name.startswith(".")]
    for folder in sorted(records, key=lambda p: (p / RECORD).stat().st_mtime):
        record = _json(folder / RECORD)
        settings = (record.get("config") or {}).get("train") or {}
        steps = _steps(folder)
        finished = (folder / "final").is_dir()
        run: dict[str, Any] = {
            "name": folder.name,
            "method": settings.get("method"),
            "finished": finished,
            "checkpoints": [f"step-{s}" for s in steps],
            "picked": (_json(folder / "picked.json").get("checkpoint") or "final")
            if (folder / "picked.json").is_file()
            else None,
        }
        if not finished:
            run["resume"] = f"twinlm train -w {root} --name {folder.name} --resume"
        runs.append(run)
    return runs


def _exports(root: Path) -> list[dict[str, Any]]:
    found = []
    for summary in sorted((root / "export").glob("*/export.json")):
        data = _json(summary)
        found.append(
            {
                "run": summary.parent.name,
                "status": data.get("status"),
                "type": data.get("type"),
                "checkpoint": data.get("checkpoint", "final"),
                "files": list(data.get("files") or {}),
            }
        )
    return found


def _pending(root: Path, config: Any) -> list[str] | None:
    """The stages `twinlm run` would do again (None where it never ran here)."""
    from twinlm import run as state_of

    state = state_of.read_state(root)
    if not state["stages"]:
        return None
    pending = []
    for stage in ("ingest", "build", "train"):
        if not state_of.is_fresh(state, stage, state_of.fingerprints(root, config, stage)):
            pending.append(stage)
    return pending


@app.command("status")
@_user_errors
def status_command(workspace: Workspace = Path("."), as_json: AsJson = False) -> None:
    """Where the workspace stands: what is ingested, what the dataset was built with, which runs exist and
    which can resume, what was evaluated and exported."""
    ws = open_workspace(workspace)
    root = ws.root
    report = {
        "workspace": str(root),
        "name": ws.config.name,
        "me": ws.config.me,
        "corpus": _corpus(ws.corpus_path),
        "dataset": _dataset(root / "data"),
        "runs": _runs(root),
        "reports": sorted(str(p) for p in (root / "reports").glob("eval-*.html")),
        "exports": _exports(root),
        "run_would_redo": _pending(root, ws.config),
    }
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    lines = [f"Workspace {root} (twin {ws.config.name}; you: {', '.join(ws.config.me) or 'not set'})"]
    corpus = report["corpus"]
    if not corpus or not corpus["sources"]:
        lines.append(f"Ingested: nothing yet. Next: twinlm ingest -w {root} PATH...")
    else:
        parts = [
            f"{s} {v['conversations']:,} chats, {v['messages']:,} messages"
            for s, v in corpus["sources"].items()
        ]
        lines.append("Ingested: " + "; ".join(parts) + f" (last ingest {corpus['last_ingest'] or '?'})")
    data = report["dataset"]
    if data is None:
        lines.append(f"Dataset: not built. Next: twinlm build -w {root}")
    else:
        samples = data.get("samples") or {}
        lines.append(
            f"Dataset: built with model {data['model']}, targets {data['targets']}, "
            f"{samples.get('train', 0):,} train / {samples.get('eval', 0):,} eval samples"
        )
    if not report["runs"]:
        lines.append(f"Runs: none. Next: twinlm train -w {root}")
    for run in report["runs"]:
        where = ", ".join(run["checkpoints"]) or "no checkpoint"
        state = "finished" if run["finished"] else f"stopped ({where}); resume: {run['resume']}"
        picked = f"; picked for export: {run['picked']}" if run["picked"] else ""
        lines.append(f"Run {run['name']} ({run['method']}): {state}{picked}")
    for path in report["reports"]:
        lines.append(f"Report: {path}")
    if not report["exports"]:
        lines.append("Exported: nothing yet. Next: twinlm export -w " + str(root))
    for item in report["exports"]:
        lines.append(
            f"Exported {item['run']} ({item['checkpoint']}, {item['type']}): {item['status']}; "
            + ", ".join(item["files"])
        )
    if report["run_would_redo"] is not None:
        redo = report["run_would_redo"]
        # Each later stage reruns only if what it reads changes: a re-ingest that adds nothing trains nothing.
        again = f"would redo {', '.join(redo)}, then each later stage whose inputs that changes"
        lines.append("twinlm run: " + (again if redo else "up to date"))
    for line in lines:
        out.print(safe_text(line), highlight=False, soft_wrap=True)

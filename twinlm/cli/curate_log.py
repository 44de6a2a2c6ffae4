"""Undo and the change log's commands: `twinlm undo`, `twinlm changes list|export|import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from twinlm.cli import AsJson, Workspace, _user_errors, app, out
from twinlm.cli.curate import _dump
from twinlm.cli.display import safe_text
from twinlm.corpus import changes as log
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError
from twinlm.files import write_atomic
from twinlm.workspace import open_workspace


@app.command()
@_user_errors
def undo(
    change: Annotated[int | None, typer.Argument(help="The change to undo (default: the latest).")] = None,
    workspace: Workspace = Path("."),
    as_json: AsJson = False,
) -> None:
    """Take back the latest change (or change N): every row it changed gets its previous value."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        done = log.undo(corpus, change)
    if as_json:
        _dump(
            {
                "undone": done.change.to_json(),
                "restored": done.restored,
                "kept": done.kept,
                "missing": done.missing,
            }
        )
        return
    out.print(f"Undid change {done.change.id} ({safe_text(done.change.action)}): {done.restored:,} restored.")
    if done.kept:
        out.print(f"{done.kept:,} changed again by a later change: left as they are (undo that one first).")
    if done.missing:
        out.print(f"{done.missing:,} no longer in the corpus.")


changes_app = typer.Typer(
    help="The change log: list, export to a JSON file, import one.", no_args_is_help=True
)
app.add_typer(changes_app, name="changes")


@changes_app.command("list")
@_user_errors
def changes_list(
    workspace: Workspace = Path("."),
    all_: Annotated[bool, typer.Option("--all", help="Undone changes too.")] = False,
    as_json: AsJson = False,
) -> None:
    """Every change: when, who, what, how many rows."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        found = log.log(corpus, undone=all_)
    if as_json:
        _dump([c.to_json() for c in found])
        return
    if not found:
        out.print("No changes yet.")
        return
    table = Table(title="Changes", title_justify="left")
    for column in ("id", "when", "who", "action", "what", "rows", "undone"):
        table.add_column(column, justify="right" if column in ("id", "rows") else "left")
    for c in found:
        what = ", ".join(f"{k}={v}" for k, v in c.selector.items())
        table.add_row(
            str(c.id),
            safe_text(c.at),
            safe_text(c.user),
            safe_text(c.action),
            safe_text(what),
            f"{len(c.items):,}",
            safe_text(c.undone_at or ""),
        )
    out.print(table)


@changes_app.command("export")
@_user_errors
def changes_export(
    file: Annotated[Path, typer.Argument(help="The JSON file to write.")],
    workspace: Workspace = Path("."),
    as_json: AsJson = False,
) -> None:
    """Write the changes in force to a JSON file (for version control or another machine)."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        document = log.export_changes(corpus)
    write_atomic(file, orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    if as_json:
        _dump({"file": str(file), "changes": len(document["changes"])})
    else:
        out.print(f"Wrote {len(document['changes']):,} changes to {safe_text(file)}.")


@changes_app.command("import")
@_user_errors
def changes_import(
    file: Annotated[Path, typer.Argument(help="A file written by `twinlm changes export`.")],
    workspace: Workspace = Path("."),
    as_json: AsJson = False,
) -> None:
    """Apply an exported change log to this corpus, by each row's stable key. Safe to run again."""
    ws = open_workspace(workspace)
    try:
        document = orjson.loads(file.read_bytes())
    except OSError as e:
        raise TwinError(f"{file}: cannot read it ({e.strerror})") from None
    except orjson.JSONDecodeError as e:
        raise TwinError(f"{file}: not valid JSON ({e})") from None
    with Corpus(ws.corpus_path) as corpus:
        done = log.import_changes(corpus, document, where=str(file))
    if as_json:
        _dump({"changes": done.changes, "new": done.new, "applied": done.applied, "missing": done.missing})
        return
    out.print(f"{done.changes:,} changes read ({done.new:,} new here): {done.applied:,} rows set.")
    if done.missing:
        out.print(
            f"{done.missing:,} rows are not in this corpus (yet): ingest their exports, then import again."
        )

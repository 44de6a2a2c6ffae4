"""Re-export commands: `superseded` (list or restore what newer exports no longer hold) and `merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from twinlm.cli import AsJson, Workspace, _user_errors, app, out
from twinlm.cli.display import safe_text
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import superseded as list_superseded
from twinlm.errors import TwinError
from twinlm.workspace import open_workspace


@app.command()
@_user_errors
def superseded(
    workspace: Workspace = Path("."),
    import_id: Annotated[
        int | None, typer.Option("--import", help="Only what this import superseded (its number).")
    ] = None,
    restore: Annotated[
        bool, typer.Option("--restore", help="Train these messages again (undo the superseding).")
    ] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many rows (0: all).")] = 50,
    as_json: AsJson = False,
) -> None:
    """Messages kept but not trained because the newest export of their conversation no longer holds
    them (an edited ChatGPT question's old branch, a message deleted for everyone)."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        if restore:
            n = corpus.restore_superseded(import_id)
            out.print(f"{n:,} message(s) restored: they are trained again from the next build.")
            return
        rows = list_superseded(corpus, import_id)
    if as_json:
        typer.echo(
            orjson.dumps(
                [
                    {
                        "import": r.import_id,
                        "source": r.source,
                        "conversation": r.native_id,
                        "title": r.title,
                        "author": r.author_name,
                        "time": r.timestamp.isoformat() if r.timestamp else None,
                        "text": r.text,
                    }
                    for r in rows
                ],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    if not rows:
        out.print("No superseded messages.")
        return
    table = Table(title=f"Superseded ({len(rows):,})", title_justify="left")
    for column in ("import", "source", "conversation", "time", "author", "text"):
        table.add_column(column)
    for r in rows[: limit or None]:
        when = r.timestamp.strftime("%Y-%m-%d %H:%M") if r.timestamp else ""
        text = r.text if len(r.text) <= 60 else r.text[:59] + "…"
        shown = (r.source, r.title, when, r.author_name, text)
        table.add_row(str(r.import_id), *(safe_text(value) for value in shown))
    out.print(table)
    out.print("Undo: twinlm superseded --restore [--import N]", markup=False)


@app.command("join-chats")
@_user_errors
def join_chats(
    from_conversation: Annotated[str, typer.Argument(help="SOURCE:ID of the conversation to merge away.")],
    into_conversation: Annotated[str, typer.Argument(help="SOURCE:ID of the conversation to keep.")],
    workspace: Workspace = Path("."),
) -> None:
    """Join two conversations that are one chat (ingest names them when it cannot be sure)."""
    source, _, from_id = from_conversation.partition(":")
    into_source, _, into_id = into_conversation.partition(":")
    if not from_id or not into_id or source != into_source:
        raise TwinError("join-chats: give two conversations of one source as SOURCE:ID SOURCE:ID")
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        moved, dropped = corpus.merge_conversations(source, from_id, into_id)
    out.print(f"Joined: {moved:,} message(s) moved, {dropped:,} copies dropped.")

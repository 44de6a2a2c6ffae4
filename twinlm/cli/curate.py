"""Curation commands: conversations, show, exclude, include, edit, note, review (undo and the change log:
`curate_log.py`).

Every change goes through `twinlm.corpus.changes` (logged, undoable, exportable); this layer turns options
into a selector, asks before a bulk change, and prints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from twinlm.cli import AsJson, Workspace, _user_errors, app, err, out
from twinlm.cli.display import safe_text
from twinlm.corpus import changes as log
from twinlm.corpus.browse import (
    Selector,
    conversation_row,
    count_messages,
    list_conversations,
    message_row,
    select_conversations,
    select_messages,
)
from twinlm.corpus.db import Corpus
from twinlm.curate.pieces import add_pieces
from twinlm.curate.view import ConversationView, Viewer, last_build
from twinlm.errors import TwinError
from twinlm.workspace import open_workspace

SHOW_SESSIONS = 50  # sessions `twinlm show` prints of a conversation unless --all or --session

Source = Annotated[str | None, typer.Option(help="Only this source (telegram, discord, whatsapp, ...).")]
Chat = Annotated[str | None, typer.Option("--chat", help="Chats whose name contains this (any case).")]
Person = Annotated[
    str | None,
    typer.Option(help="Where this person speaks: an alias from twin.yaml or any name `twinlm people` shows."),
]
Since = Annotated[str | None, typer.Option(help="From this day on (YYYY-MM-DD, UTC).")]
Until = Annotated[str | None, typer.Option(help="Up to this day, inclusive (YYYY-MM-DD, UTC).")]
Search = Annotated[str | None, typer.Option(help="Holding a message with all these words.")]


def _dump(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _day(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat() if ms is not None else "-"


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M") if ms is not None else "-"


@app.command()
@_user_errors
def conversations(
    workspace: Workspace = Path("."),
    source: Source = None,
    chat: Chat = None,
    person: Person = None,
    since: Since = None,
    until: Until = None,
    search: Search = None,
    excluded: Annotated[
        bool | None, typer.Option("--excluded/--included", help="Only excluded (or only included) ones.")
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (the next page).")] = 0,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    as_json: AsJson = False,
) -> None:
    """List conversations (filtered), with message counts and what the last build made of each."""
    ws = open_workspace(workspace)
    sel = Selector(
        source=source, chat=chat, person=person, since=since, until=until, search=search, excluded=excluded
    )
    with Corpus(ws.corpus_path) as corpus:
        total, rows = list_conversations(corpus, sel, ws.config, offset=offset, limit=limit)
    built = last_build(ws.root / "data")
    if as_json:
        _dump(
            {
                "total": total,
                "offset": offset,
                # The review page's rows, with the first and last days as dates (YYYY-MM-DD).
                "conversations": [
                    r.to_json(built)
                    | {
                        "first": _day(r.first_ms) if r.first_ms is not None else None,
                        "last": _day(r.last_ms) if r.last_ms is not None else None,
                    }
                    for r in rows
                ],
            }
        )
        return
    if not rows:
        out.print("No conversation matches." if total == 0 else f"No more: {total:,} match.")
        return
    table = Table(title=f"Conversations {offset + 1}-{offset + len(rows)} of {total:,}", title_justify="left")
    for column in ("id", "source", "chat", "messages", "from", "to", "samples", "trained turns", "state"):
        table.add_column(
            column, justify="right" if column in ("id", "messages", "samples", "trained turns") else "left"
        )
    for r in rows:
        b = built.get(r.key)
        state = []
        if r.excluded:
            state.append("[red]excluded[/]")
        if r.excluded_messages:
            state.append(f"{r.excluded_messages:,} messages excluded")
        if r.edited_messages:
            state.append(f"{r.edited_messages:,} edited")
        if r.note:
            state.append(f"note: {safe_text(r.note)}")
        table.add_row(
            str(r.id),
            safe_text(r.source),
            safe_text(r.title),
            f"{r.messages:,}",
            _day(r.first_ms),
            _day(r.last_ms),
            f"{b['samples']:,}" if b else "-",
            f"{b['trained_turns']:,}" if b else "-",
            ", ".join(state),
        )
    out.print(table)
    if not built:
        out.print(
            "[dim]samples and trained turns: run `twinlm build` to see what the build makes of each.[/]"
        )
    if offset + len(rows) < total:
        out.print(f"[dim]Next page: --offset {offset + len(rows)}[/]")


@app.command()
@_user_errors
def show(
    conversation: Annotated[
        str, typer.Argument(help="Conversation id (from `twinlm conversations`) or source:id.")
    ],
    workspace: Workspace = Path("."),
    session: Annotated[int | None, typer.Option(help="Only this session (numbered from 0).")] = None,
    all_sessions: Annotated[
        bool,
        typer.Option(
            "--all",
            help=f"Every session of a long conversation (without it, the first {SHOW_SESSIONS} are shown; "
            "--json always gives every one).",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """One conversation as it will be trained: cleaned, redacted, turns merged, trained turns marked."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        row = conversation_row(corpus, conversation)
        if session is not None and session < 0:
            raise TwinError(f"--session {session}: sessions are numbered from 0")
        viewer = Viewer(ws.config, corpus)
        # A chat of years holds hundreds of thousands of sessions: read, cleaned and printed whole, it
        # takes minutes and gigabytes. The terminal gets its first sessions unless --all asks for more.
        count = 1 if session is not None else None if all_sessions or as_json else SHOW_SESSIONS
        view = viewer.conversation(row, session or 0, count)
        try:  # the rows the build makes of each sample: it needs the build's tokenizer
            add_pieces(viewer, view, ws.root)
        except TwinError as e:
            if not as_json:
                err.print(f"[dim]Pieces under build.max_length not shown: {safe_text(str(e))}[/]")
    if session is not None and not view.parts:
        raise TwinError(f"--session {session}: conversation {row} has sessions 0 to {view.total_parts - 1}")
    if as_json:
        _dump(view.to_json())
        return
    _print_view(view)
    if session is None and len(view.parts) < view.total_parts:
        out.print(
            f"\n[dim]The first {len(view.parts)} of {view.total_parts:,} sessions: --session N shows session "
            "N, --all every one, and `twinlm review` pages through them.[/]"
        )


def _print_view(view: ConversationView) -> None:
    state = " [red](excluded)[/]" if view.excluded else ""
    out.print(f"[bold]{safe_text(view.title)}[/] [dim]{safe_text(view.key)} · id {view.id}[/]{state}")
    if view.note:
        out.print(f"note: {safe_text(view.note)}")
    samples = view.samples()
    # The figures are of the sessions shown: with --session, of that one, not of the whole chat.
    shown = f"{view.total_parts:,} sessions,"
    if len(view.parts) < view.total_parts:
        first, last = view.parts[0].index, view.parts[-1].index
        which = f"session {first}" if first == last else f"sessions {first} to {last}"
        shown = f"{which} of {view.total_parts:,}:"
    out.print(
        f"{shown} {len(samples):,} samples, "
        f"{sum(t.trained for s in samples for t in s.turns):,} trained turns "
        "([green]▶ trained[/], [dim]context[/], [red]✗ excluded[/], [yellow]dropped by a rule[/])"
    )
    rules = view.rule_counts()
    if rules:
        what = ", ".join(
            f"{safe_text(rule)} ×{n:,}" for rule, n in sorted(rules.items(), key=lambda kv: -kv[1])
        )
        out.print(f"What the rules did: {what}", highlight=False, soft_wrap=True)
    for part in view.parts:
        out.print(f"\n[bold]── session {part.index}[/]" + (" [red](excluded)[/]" if part.excluded else ""))
        for m in part.messages:
            head = f"{m.id:>7} {_time(m.ts)} {safe_text(m.speaker)}:"
            text = safe_text(m.trained_text if m.trained_text is not None else m.text)
            edited = " [cyan](edited)[/]" if m.edited else ""
            rules = ", ".join(f"{safe_text(k)}" + (f" ×{v}" if v > 1 else "") for k, v in m.rules.items())
            rules = f" [dim]({rules})[/]" if rules else ""
            if m.status == "trained":
                out.print(f"[green]▶ {head} {text}[/]{edited}{rules}", highlight=False, soft_wrap=True)
            elif m.status == "context":
                out.print(f"  {head} {text}{edited}{rules}", highlight=False, soft_wrap=True)
            elif m.status in ("excluded", "superseded"):
                shown = f"[red]✗ {head} {text}[/] [dim]({m.status})[/]{edited}"
                out.print(shown, highlight=False, soft_wrap=True)
            else:
                out.print(f"[yellow]- {head} {text}[/]{edited}{rules}", highlight=False, soft_wrap=True)
        for s in part.samples:
            if not s.kept:
                why = ", ".join(safe_text(k) for k in s.rules) or "no trained turn after the first"
                out.print(f"  [dim]sample {safe_text(s.id)}: not made ({why})[/]")
            else:
                out.print(
                    f"  [dim]sample {safe_text(s.id)}: {len(s.turns)} turns, "
                    f"{sum(t.trained for t in s.turns)} trained[/]"
                )
                if len(s.pieces) > 1:  # split under build.max_length: as `build --preview` names them
                    for p in s.pieces:
                        ids = ", ".join(str(m) for t in p.trained_turns for m in s.turns[t].messages)
                        out.print(f"    [dim]piece {safe_text(p.id)}: trains messages {ids}[/]")


def _selector(ids: list[str] | None, **given: Any) -> Selector:
    sel = Selector(ids=tuple(ids or ()), **given)
    if sel.empty:
        raise TwinError(
            "say what to change: conversation ids, or --chat, --person, --since/--until, --search, --source"
        )
    return sel


def _set_excluded(
    action: str,
    ids: list[str] | None,
    workspace: Path,
    messages: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    given: dict[str, Any],
) -> None:
    ws = open_workspace(workspace)
    sel = _selector(ids, **given)
    value = 1 if action == "exclude" else 0
    with Corpus(ws.corpus_path) as corpus:
        if messages:
            rows = select_messages(corpus, sel, ws.config)
            what = f"{len(rows):,} messages"
        else:
            rows = select_conversations(corpus, sel, ws.config)
            what = f"{len(rows):,} conversations ({count_messages(corpus, rows):,} messages)"
        if not rows:
            raise TwinError(f"{action}: nothing matches {_describe(sel)}; nothing was changed")
        if dry_run:
            if as_json:
                _dump({"action": action, "dry_run": True, "selected": len(rows), "selector": sel.to_json()})
            else:
                out.print(f"Would {action} {what} ({safe_text(_describe(sel))}).")
            return
        if sel.bulk and not yes:
            if as_json:
                raise TwinError(
                    f"{action}: {what} match; pass --yes to change them all (--json does not ask)"
                )
            if not typer.confirm(f"{action.capitalize()} {what} ({_describe(sel)})?", default=False):
                out.print("Nothing changed.")
                raise typer.Exit(1)
        target = "message" if messages else "conversation"
        selector = {"target": target, **sel.to_json()}
        change = log.apply(corpus, action, selector, target, rows, {"excluded": value})
    _report(change, action, len(rows), as_json)


_PAST = {
    "exclude": "excluded",
    "include": "included",
    "edit": "edited",
    "drop": "dropped",
    "keep": "kept",
    "restore": "restored",
    "note": "noted",
}


def _describe(sel: Selector) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sel.to_json().items())


def _report(change: log.Change | None, action: str, selected: int, as_json: bool) -> None:
    changed = len(change.items) if change else 0
    if as_json:
        _dump(
            {
                "action": action,
                "selected": selected,
                "changed": changed,
                "change": change and change.to_json(),
            }
        )
        return
    if change is None:
        out.print(f"Nothing to {action}: all {selected:,} already are.")
        return
    done = _PAST.get(action, action)
    out.print(f"{done.capitalize()}: {changed:,} (change {change.id}; `twinlm undo` takes it back).")


def _exclude_command(action: str) -> Any:
    def command(
        ids: Annotated[
            list[str] | None,
            typer.Argument(help="Conversation ids (from `twinlm conversations`) or source:id."),
        ] = None,
        workspace: Workspace = Path("."),
        source: Source = None,
        chat: Chat = None,
        person: Person = None,
        since: Since = None,
        until: Until = None,
        search: Search = None,
        messages: Annotated[
            bool,
            typer.Option(
                "--messages",
                help="Select messages, not whole conversations: the person's own messages, those in the "
                "date range, those holding the words.",
            ),
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before a bulk change.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would change.")] = False,
        as_json: AsJson = False,
    ) -> None:
        given = {
            "source": source,
            "chat": chat,
            "person": person,
            "since": since,
            "until": until,
            "search": search,
        }
        _set_excluded(action, ids, workspace, messages, yes, dry_run, as_json, given)

    command.__doc__ = (
        "Leave conversations (or, with --messages, messages) out of every dataset; logged, undoable."
        if action == "exclude"
        else "Take excluded conversations (or, with --messages, messages) back into the dataset; logged."
    )
    return command


app.command("exclude")(_user_errors(_exclude_command("exclude")))
app.command("include")(_user_errors(_exclude_command("include")))


@app.command()
@_user_errors
def edit(
    message: Annotated[str, typer.Argument(help="Message id (from `twinlm show`) or source:id.")],
    text: Annotated[str | None, typer.Argument(help="The text to train instead of the message's.")] = None,
    workspace: Workspace = Path("."),
    drop: Annotated[bool, typer.Option("--drop", help="Leave this message out.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Take a dropped message back.")] = False,
    restore: Annotated[bool, typer.Option("--restore", help="Train the exported text again.")] = False,
    as_json: AsJson = False,
) -> None:
    """Change what one message trains: new text, --drop, --keep or --restore. Logged, undoable."""
    chosen = [
        name
        for name, on in (
            ("TEXT", text is not None),
            ("--drop", drop),
            ("--keep", keep),
            ("--restore", restore),
        )
        if on
    ]
    if len(chosen) != 1:
        raise TwinError("edit: give exactly one of TEXT, --drop, --keep, --restore")
    if text is not None and not text.strip():
        raise TwinError("edit: the new text is empty; use --drop to leave the message out")
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        row = message_row(corpus, message)
        action, values = (
            ("edit", {"user_text": text})
            if text is not None
            else ("drop", {"excluded": 1})
            if drop
            else ("keep", {"excluded": 0})
            if keep
            else ("restore", {"user_text": None})
        )
        change = log.apply(corpus, action, {"target": "message", "ids": [message]}, "message", [row], values)
    _report(change, action, 1, as_json)


@app.command()
@_user_errors
def note(
    conversation: Annotated[str, typer.Argument(help="Conversation id or source:id.")],
    text: Annotated[str | None, typer.Argument(help="The note (why it is excluded, what to fix).")] = None,
    workspace: Workspace = Path("."),
    clear: Annotated[bool, typer.Option("--clear", help="Remove the note.")] = False,
    as_json: AsJson = False,
) -> None:
    """Keep a note on a conversation (shown by `conversations` and `show`). Logged, undoable."""
    if (text is None) == (not clear):
        raise TwinError("note: give the TEXT, or --clear")
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        row = conversation_row(corpus, conversation)
        change = log.apply(
            corpus,
            "note",
            {"target": "conversation", "ids": [conversation]},
            "conversation",
            [row],
            {"user_note": None if clear else text},
        )
    _report(change, "note", 1, as_json)


@app.command()
@_user_errors
def review(
    workspace: Workspace = Path("."),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    browser: Annotated[bool, typer.Option(help="Open the page in the browser.")] = True,
) -> None:
    """Review and fix the data in the browser (http://127.0.0.1:PORT/review), on this machine only."""
    import uvicorn

    from twinlm.serve.review import review_app

    ws = open_workspace(workspace)
    url = f"http://127.0.0.1:{port}/review"
    out.print(f"Review page: {url} (Ctrl-C to stop)")
    if browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, (url,)).start()
    uvicorn.run(review_app(ws.root), host="127.0.0.1", port=port, log_level="warning")


# Registers undo and the change log's commands (they use the helpers above).
from twinlm.cli import curate_log  # noqa: E402, F401

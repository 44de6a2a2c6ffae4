"""Corpus commands: init, config, ingest, people, stats."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from twinlm.cli import AsJson, Workspace, _help, _user_errors, app, err, out
from twinlm.cli.display import safe_text
from twinlm.config import (
    CONFIG_NAME,
    IngestConfig,
    TwinConfig,
    load_config,
    reference_markdown,
    render_config,
)
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import account_names, owners, source_stats, speakers
from twinlm.errors import TwinError
from twinlm.identities import Identities
from twinlm.ingest import IngestResult, ingest
from twinlm.sources import FORMATS
from twinlm.sources.whatsapp import LOCAL_TIME_NOTE
from twinlm.workspace import init_workspace, open_workspace


@app.command()
@_user_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the workspace in.")],
    name: Annotated[str | None, typer.Option(help=_help(TwinConfig, "name"))] = None,
    me: Annotated[list[str] | None, typer.Option(help=_help(TwinConfig, "me") + " Repeat for each.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Write twin.yaml again over an existing one: its settings are kept (with --name and --me "
            "applied), the comments and missing folders are brought up to date. One that cannot be read "
            "is kept as twin.yaml.bak."
        ),
    ] = False,
) -> None:
    """Create a workspace: a commented twin.yaml and the folders every stage writes to."""
    existing, loaded = TwinConfig(), False
    config_path = directory / CONFIG_NAME
    if force and config_path.is_file():
        try:
            existing, loaded = load_config(config_path), True
        except TwinError as e:  # unreadable: kept aside, never silently lost
            backup = config_path.with_name(CONFIG_NAME + ".bak")
            shutil.copy2(config_path, backup)
            err.print(
                f"warning: {safe_text(config_path)} could not be read ({safe_text(str(e).splitlines()[0])}); "
                f"kept as {safe_text(backup)}, a new one written",
                highlight=False,
                soft_wrap=True,
            )
    update: dict[str, object] = {}
    if name or not loaded:
        update["name"] = name or directory.resolve().name
    if me:
        update["me"] = me
    try:
        config = TwinConfig.model_validate({**existing.model_dump(), **update})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{first['loc'][0]}: {first['msg']}") from None
    path = init_workspace(directory, config, force=force)
    if loaded:
        out.print("Kept the settings of the existing twin.yaml.", highlight=False)
    out.print(
        f"Created [bold]{safe_text(path)}[/]. Next: [cyan]twinlm ingest -w {safe_text(directory)} PATH...[/]"
    )


@app.command()
@_user_errors
def config(
    workspace: Workspace = Path("."),
    defaults: Annotated[bool, typer.Option(help="Show the defaults, not a workspace's settings.")] = False,
    markdown: Annotated[
        bool, typer.Option(help="Print the Markdown reference of every setting (docs/configuration.md).")
    ] = False,
) -> None:
    """Print the settings of twin.yaml, each with its description (all of them, defaults included)."""
    if markdown:
        typer.echo(reference_markdown(), nl=False)
        return
    settings = TwinConfig() if defaults else open_workspace(workspace).config
    typer.echo(render_config(settings), nl=False)


@app.command("ingest")
@_user_errors
def ingest_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Export files, folders or zips. Default: ingest.paths from twin.yaml.", show_default=False
        ),
    ] = None,
    workspace: Workspace = Path("."),
    documents: Annotated[
        list[Path] | None,
        typer.Option(
            "--documents",
            help="Documents to train on: a .txt/.md/.pdf/.docx file, or a folder searched for them. "
            "Repeat for each. Documents are read only from here (or ingest.documents), never from "
            "inside an export. Default: ingest.documents when no paths are given.",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option("--format", help=f"Skip detection and read every file as: {', '.join(FORMATS)}."),
    ] = None,
    media: Annotated[str | None, typer.Option(help=_help(IngestConfig, "media"))] = None,
    timezone: Annotated[str | None, typer.Option(help=_help(IngestConfig, "timezone"))] = None,
    whatsapp_date_order: Annotated[
        str | None, typer.Option(help=_help(IngestConfig, "whatsapp_date_order"))
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Read exports into the corpus. Re-running with the same or a newer export adds only what is new."""
    ws = open_workspace(workspace)
    overrides = {
        k: v
        for k, v in {"media": media, "timezone": timezone, "whatsapp_date_order": whatsapp_date_order}.items()
        if v is not None
    }
    try:
        settings = IngestConfig.model_validate({**ws.config.ingest.model_dump(), **overrides})
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(
            f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg'].removeprefix('Value error, ')}"
        ) from None
    if format is not None and format not in FORMATS:
        raise TwinError(f"--format: unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if paths or documents:  # paths on the command line replace both lists of twin.yaml
        targets, document_paths = list(paths or []), list(documents or [])
    else:
        targets = [ws.root / p for p in settings.paths]
        document_paths = [ws.root / p for p in settings.documents]
    if not targets and not document_paths:
        raise TwinError(
            "nothing to ingest: give export paths (or --documents PATH), or list them under ingest.paths "
            "(ingest.documents) in twin.yaml"
        )

    started = time.perf_counter()
    with (
        Corpus(ws.corpus_path) as corpus,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=as_json,
        ) as progress,
    ):
        task = progress.add_task("Reading", total=None)

        def show(name: str, messages: int, done: int, size: int) -> None:
            label = safe_text(Path(name).name)
            progress.update(task, description=f"{label}: {messages:,} messages", completed=done, total=size)

        try:
            result = ingest(
                targets,
                corpus,
                settings.parse_options(),
                documents=document_paths,
                fmt=format,
                max_unpacked_bytes=int(settings.max_unpacked_gb * 2**30),
                on_file=lambda name: progress.reset(task, description=safe_text(Path(name).name), total=None),
                on_progress=show,
            )
        except KeyboardInterrupt:  # an import is one transaction: rolled back whole
            progress.stop()
            err.print(
                "Interrupted: nothing of this ingest was kept (the corpus is as it was); run the same "
                "command to ingest.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
    elapsed = time.perf_counter() - started
    if as_json:
        typer.echo(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_ingest(result, elapsed)
    if result.failed:
        raise typer.Exit(1)


def _print_ingest(result: IngestResult, elapsed: float) -> None:
    table = Table(title="Read", title_justify="left")
    for column in ("file", "format", "conversations", "messages", "new", "updated", "skipped"):
        table.add_column(column, justify="left" if column in ("file", "format") else "right")
    ok = [f for f in result.files if not f.error]
    for f in ok:
        table.add_row(
            safe_text(f.name),
            f.format or "",
            f"{f.report.conversations:,}",
            f"{f.report.messages:,}",
            f"{f.changes.new_messages:,}",
            f"{f.changes.updated_messages:,}",
            f"{sum(f.report.skipped.values()):,}",
        )
    total = result.total()
    if len(ok) > 1:
        table.add_row(
            "[bold]total",
            "",
            f"{total.report.conversations:,}",
            f"{total.report.messages:,}",
            f"{total.changes.new_messages:,}",
            f"{total.changes.updated_messages:,}",
            f"{sum(total.report.skipped.values()):,}",
        )
    if ok:
        out.print(table)
    reasons: Counter[str] = Counter()
    for f in ok:
        reasons.update({f"{f.format}: {reason}": n for reason, n in f.report.skipped.items()})
    reasons.update({f"file: {reason}": n for reason, n in result.not_exports.items()})
    if reasons:
        skipped = Table(title="Left out, by reason", title_justify="left")
        skipped.add_column("reason")
        skipped.add_column("count", justify="right")
        for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            skipped.add_row(safe_text(reason), f"{n:,}")
        out.print(skipped)
    _print_skipped_files(result)
    notes = Counter[str]()
    for f in ok:
        notes.update(f.report.notes)
    notes.pop(LOCAL_TIME_NOTE, None)  # said once, below, with the zone's name
    if notes:
        out.print("Notes: " + "; ".join(f"{safe_text(what)} ({n:,})" for what, n in sorted(notes.items())))
    if result.assumed_timezone:
        out.print(
            "Local times (WhatsApp, older Telegram exports) were read in "
            f"{safe_text(result.assumed_timezone)}, this machine's time zone: set ingest.timezone "
            "(or --timezone) if the exports were made elsewhere.",
            highlight=False,
        )
    if result.removed_leftovers:
        out.print(
            f"Removed {len(result.removed_leftovers)} temporary file(s) left by an interrupted ingest: "
            + ", ".join(safe_text(name) for name in result.removed_leftovers),
            highlight=False,
            soft_wrap=True,
        )
    for f in result.failed:
        err.print(f"[bold red]error:[/] {safe_text(f.error)}", highlight=False, soft_wrap=True)
    speed = f" ({total.report.messages / elapsed:,.0f} messages/s)" if elapsed >= 1 else ""
    out.print(
        f"{total.changes.new_messages:,} new messages, {total.changes.new_conversations:,} new "
        f"conversations in {elapsed:.1f}s{speed}."
    )


def _print_skipped_files(result: IngestResult, per_reason: int = 10) -> None:
    """Each file left out, by name, under its reason (the first `per_reason`; --json lists them all)."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in result.skipped:
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        out.print(f"Skipped, {safe_text(reason)}:", highlight=False)
        for name in names[:per_reason]:
            out.print(f"  {safe_text(name)}", highlight=False, soft_wrap=True)
        if len(names) > per_reason:
            out.print(f"  … and {len(names) - per_reason:,} more (--json lists them all)")


@app.command()
@_user_errors
def people(
    workspace: Workspace = Path("."),
    unmapped: Annotated[bool, typer.Option(help="Only speakers not yet mapped in twin.yaml.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many rows (0: all).")] = 50,
    as_json: AsJson = False,
) -> None:
    """List speakers with message counts per source, to fill in `me:` and `people:` in twin.yaml."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        identities = Identities(ws.config, owners(corpus), account_names(corpus))
        rows = speakers(corpus, identities)
    for warning in _alias_warnings(identities):
        err.print(f"[bold yellow]warning:[/] {safe_text(warning)}", highlight=False, soft_wrap=True)
    if unmapped:
        rows = [r for r in rows if r.person is None]
    if limit:
        rows = rows[:limit]
    if as_json:
        typer.echo(
            orjson.dumps(
                [
                    {
                        "source": r.source,
                        "author_id": r.author_id,
                        "name": r.author_name,
                        "messages": r.messages,
                        "first": _iso(r.first),
                        "last": _iso(r.last),
                        "person": r.person,
                        "matched_by": r.matched_by,
                        "names": list(r.names),
                    }
                    for r in rows
                ],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    table = Table(title="Speakers", title_justify="left")
    # The names and ids are what a user copies into me: and people:, so they are never cut or wrapped:
    # the other columns give way on a narrow terminal.
    whole = {
        "name": max((len(safe_text(r.author_name)) for r in rows), default=4),
        "author id": max((len(safe_text(r.author_id)) for r in rows), default=9),
    }
    for column in ("person", "name", "also", "source", "author id", "messages", "first", "last"):
        table.add_column(
            column,
            justify="right" if column == "messages" else "left",
            no_wrap=column in whole,
            min_width=whole.get(column),
            overflow="fold",
        )
    for r in rows:
        person = (
            "[bold green]me[/]" if r.person == "me" else (safe_text(r.person) if r.person else "[dim]-[/]")
        )
        also = ", ".join(n for n in r.names if n != r.author_name)
        table.add_row(
            person,
            safe_text(r.author_name),
            safe_text(also),
            safe_text(r.source),
            safe_text(r.author_id),
            f"{r.messages:,}",
            _day(r.first),
            _day(r.last),
        )
    out.print(table)
    matched = identities.alias_matches()
    if matched:
        aliases = Table(title="What each alias in twin.yaml matched", title_justify="left")
        for column in ("alias", "person", "accounts"):
            aliases.add_column(column)
        for alias, accounts in matched.items():
            shown = ", ".join(
                f"{source}:{author_id} ({identities.names[(source, author_id)][0]})"
                for source, author_id in accounts[:5]
            )
            more = f" and {len(accounts) - 5} more" if len(accounts) > 5 else ""
            person = identities.person_of(alias) or ""
            aliases.add_row(safe_text(alias), safe_text(person), safe_text(shown + more) or "[dim]nothing[/]")
        out.print(aliases)
    if not ws.config.me:
        out.print(
            "Add your own names/ids to [bold]me:[/] in twin.yaml (and others' aliases to "
            "[bold]people:[/]) so every platform's you is one speaker."
        )


def _alias_warnings(identities: Identities) -> list[str]:
    """An alias that catches several accounts of one platform (two people called Alex?), and accounts
    whose names match aliases of different persons (the first alias wins)."""
    found = []
    for alias, accounts in identities.alias_matches().items():
        per_source: dict[str, list[str]] = {}
        for source, author_id in accounts:
            per_source.setdefault(source, []).append(author_id)
        for source, ids in per_source.items():
            if len(ids) > 1:
                found.append(
                    f"alias {alias!r} matches {len(ids)} {source} accounts "
                    f"({', '.join(f'{source}:{i}' for i in ids[:5])}): if they are not all one person, "
                    "write the one you mean as source:id in twin.yaml"
                )
    for (source, author_id), _ in identities.names.items():
        persons = identities.persons(source, author_id)
        if len(persons) > 1:
            chosen = ", ".join(f"{person} (alias {alias!r})" for person, alias in persons)
            found.append(
                f"{source}:{author_id} matches several people: {chosen}; the first wins. "
                f"Write {source}:{author_id} under the right one in twin.yaml"
            )
    return found


@app.command()
@_user_errors
def stats(workspace: Workspace = Path("."), as_json: AsJson = False) -> None:
    """Per source: conversations, messages, date range and top speakers."""
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        rows = source_stats(corpus)
    if as_json:
        typer.echo(
            orjson.dumps(
                [
                    {
                        "source": s.source,
                        "conversations": s.conversations,
                        "messages": s.messages,
                        "first": _iso(s.first),
                        "last": _iso(s.last),
                        "top_speakers": [{"name": n, "messages": c} for n, c in s.top_speakers],
                    }
                    for s in rows
                ],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    if not rows:
        out.print("The corpus is empty: run [cyan]twinlm ingest PATH...[/] first.")
        return
    table = Table(title="Corpus", title_justify="left")
    for column in ("source", "conversations", "messages", "from", "to", "top speakers"):
        table.add_column(column, justify="right" if column in ("conversations", "messages") else "left")
    for s in rows:
        top = ", ".join(f"{name} ({count:,})" for name, count in s.top_speakers)
        table.add_row(
            safe_text(s.source),
            f"{s.conversations:,}",
            f"{s.messages:,}",
            _day(s.first),
            _day(s.last),
            safe_text(top),
        )
    out.print(table)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _day(t: datetime | None) -> str:
    return t.date().isoformat() if t else "-"

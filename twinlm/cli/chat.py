"""`twinlm chat`: talk to the twin in the terminal.

Thin: the conversation, its commands and multi-line input are twinlm.serve.chat; this module reads
lines, prints the reply as it streams, and turns Ctrl-C into "stop this reply" (the reply runs in a
worker thread that checks a cancel flag between tokens) or, twice at the prompt, into leaving.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.text import Text

from twinlm.cli import Workspace, _help, _user_errors, app, err, out
from twinlm.cli.display import plain_text, safe_rich_text, safe_text
from twinlm.config import ChatConfig, SamplingConfig
from twinlm.errors import TwinError
from twinlm.interrupts import ctrl_c_calls
from twinlm.workspace import open_workspace

if TYPE_CHECKING:
    from twinlm.serve.chat import ChatSession

Source = Annotated[
    str | None,
    typer.Argument(
        help="What to talk to: a run, an export folder (export/RUN), a merged model folder or a GGUF. "
        "Default: the newest export, else the newest run.",
        show_default=False,
    ),
]


def _shown(text: str) -> str:
    """Model text for the terminal: line breaks kept, control characters (escape sequences) made harmless."""
    return safe_rich_text(Text(text)).plain


@app.command()
@_user_errors
def chat(
    source: Source = None,
    workspace: Workspace = Path("."),
    persona: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Who the model speaks as (a persona of the export). Default: you.",
            show_default=False,
        ),
    ] = None,
    me: Annotated[
        str | None,
        typer.Option(
            "--me",
            help="Who you are in the chat (the model sees this name). Default: the persona's usual partner.",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        str | None,
        typer.Option(
            "--once",
            help="Answer this one message, print the reply and exit (for scripts).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="auto (a GGUF through llama.cpp where there is one, else transformers), transformers, "
            "llama.cpp, or mistral-api: the model of a hosted run (twinlm train --backend mistral-api; "
            "SOURCE names the run), your messages sent to the Mistral API."
        ),
    ] = "auto",
    device: Annotated[
        str | None,
        typer.Option(
            help="Where the transformers backend runs: cpu, cuda, cuda:1 ... (default: a GPU where there is "
            "one).",
            show_default=False,
        ),
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="A system prompt instead of the persona's own.", show_default=False)
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help=_help(SamplingConfig, "temperature"), show_default=False)
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help=_help(SamplingConfig, "top_p"), show_default=False)
    ] = None,
    min_p: Annotated[
        float | None, typer.Option(help=_help(SamplingConfig, "min_p"), show_default=False)
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help=_help(SamplingConfig, "repetition_penalty"), show_default=False)
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help=_help(SamplingConfig, "max_tokens"), show_default=False)
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help(SamplingConfig, "seed"), show_default=False)] = None,
    context_length: Annotated[
        int | None, typer.Option(help=_help(ChatConfig, "context_length"), show_default=False)
    ] = None,
) -> None:
    """Talk to your twin: as the AI version of you or of a friend (--as), with you as anyone (--me)."""
    from twinlm.serve import cpu_share
    from twinlm.serve.backends import Sampling
    from twinlm.serve.chat import ChatSession
    from twinlm.serve.twin import open_twin

    if backend not in ("auto", "transformers", "llama.cpp", "mistral-api"):
        raise TwinError(f"--backend {backend}: expected auto, transformers, llama.cpp or mistral-api")
    ws = open_workspace(workspace)
    wanted = {
        "temperature": temperature,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    try:
        settings = SamplingConfig.model_validate(
            ws.config.chat.sampling.model_dump() | {k: v for k, v in wanted.items() if v is not None}
        )
        chat_settings = ChatConfig.model_validate(
            ws.config.chat.model_dump() | ({"context_length": context_length} if context_length else {})
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise TwinError(f"--{str(first['loc'][-1]).replace('_', '-')}: {first['msg']}") from None
    cpu_share.configure(chat_settings.threads)
    if backend == "mistral-api":  # the hosted model takes messages: twinlm.hosted.twin adapts
        from twinlm.hosted.twin import open_hosted_twin

        twin: Any = open_hosted_twin(ws.root, ws.config, source)
    else:
        twin = open_twin(
            ws.root,
            source,
            backend=backend,  # type: ignore[arg-type]
            context_length=chat_settings.context_length,
            device=device,
        )
    err.print(f"Using {safe_text(twin.description)}.", highlight=False, soft_wrap=True)
    session = ChatSession.start(twin, Sampling.from_config(settings), persona, me)
    if system is not None:
        session.system = system
    try:
        if once is not None:
            _answer(session, once)
        else:
            _loop(session)
    finally:
        twin.close()


def _answer(session: ChatSession, text: str) -> bool:
    """Ask, stream the reply to stdout; Ctrl-C stops it. Returns whether it was stopped."""
    from twinlm.serve.chat import ThreadedReply

    if sys.stdout.isatty():
        out.print(f"[bold]{safe_text(session.persona)}:[/] ", end="", markup=True, highlight=False)
    reply = ThreadedReply(lambda cancel: session.ask(text, cancel))
    # Ctrl-C stops the reply however often it is pressed, also while the stop is shown and the reply kept:
    # a KeyboardInterrupt could land inside the reply queue's lock (see ThreadedReply).
    with ctrl_c_calls(reply.interrupt):
        while (piece := reply.next()) is not None:
            sys.stdout.write(_shown(piece))
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if reply.interrupted:
            err.print("[dim](stopped)[/]", markup=True, highlight=False)
        if reply.generation is not None:
            session.keep(reply.generation)
    return reply.interrupted


def _loop(session: ChatSession) -> None:
    from twinlm.serve.chat import LineEditor

    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  line editing and history for input()
    err.print(
        f"The model speaks as [bold]{safe_text(session.persona)}[/], you are "
        f"[bold]{safe_text(session.me)}[/]. /help for commands, Ctrl-C twice or /exit to leave.",
        markup=True,
        highlight=False,
        soft_wrap=True,
    )
    editor = LineEditor()
    interrupted = False
    while True:
        prompt = "... " if editor.pending else f"{plain_text(session.me)}> "
        try:
            line = input(prompt)
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            if editor.pending:
                editor.clear()
                interrupted = False
                continue
            if interrupted:
                return
            interrupted = True
            err.print("[dim](Ctrl-C again or /exit to leave)[/]", markup=True, highlight=False)
            continue
        interrupted = False
        text = editor.feed(line)
        if text is None:
            continue
        if not editor.pending and text.startswith("/") and "\n" not in text:
            try:
                said = session.command(text)
            except TwinError as e:
                err.print(f"[red]{safe_text(e)}[/]", markup=True, highlight=False, soft_wrap=True)
                continue
            if said is None:
                return
            err.print(_shown(said), markup=False, highlight=False, soft_wrap=True)
            continue
        if not text.strip():
            continue
        try:
            _answer(session, text)
        except TwinError as e:
            err.print(f"[red]{safe_text(e)}[/]", markup=True, highlight=False, soft_wrap=True)

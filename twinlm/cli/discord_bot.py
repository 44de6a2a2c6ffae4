"""`twinlm discord-bot`: the twin in a Discord server (twinlm.serve.discord_bot handles the messages).

The bot's token comes only from the environment variable DISCORD_BOT_TOKEN (never a flag, which other
users see in the process list, nor twin.yaml, which gets copied around).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from twinlm.cli import Workspace, _user_errors, app, err
from twinlm.cli.display import safe_text
from twinlm.errors import TwinError
from twinlm.workspace import open_workspace

if TYPE_CHECKING:
    from twinlm.serve.discord_bot import TwinBot

Backend = Literal["auto", "transformers", "llama.cpp"]


@app.command("discord-bot")
@_user_errors
def discord_bot_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help="What to talk to: a run, an export folder, a merged folder or a GGUF. Default: the newest "
            "export, else the newest run.",
            show_default=False,
        ),
    ] = None,
    workspace: Workspace = Path("."),
    channel: Annotated[
        list[int] | None,
        typer.Option(
            "--channel",
            metavar="ID",
            help="A channel id the bot answers in (repeat for more; added to discord.channels of twin.yaml).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="auto (a GGUF through llama.cpp where there is one, else transformers), transformers or "
            "llama.cpp."
        ),
    ] = "auto",
) -> None:
    """Answer in Discord as the AI versions of the people the twin learnt: `@bot as NAME: message`, or
    `@bot persona NAME` for a channel. Needs DISCORD_BOT_TOKEN in the environment (see the README)."""
    from twinlm.serve.discord_client import TOKEN_ENV

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise TwinError(
            f"{TOKEN_ENV} is not set: put the bot's token (Discord developer portal > your application > Bot "
            f"> Reset Token) in it, e.g. `export {TOKEN_ENV}=...`; it is never read from twin.yaml or a flag"
        )
    if backend not in ("auto", "transformers", "llama.cpp"):
        raise TwinError(f"--backend {backend}: expected auto, transformers or llama.cpp")
    ws = open_workspace(workspace)
    channels = [*ws.config.discord.channels, *(channel or [])]
    if not channels:
        raise TwinError(
            "no channel to answer in: pass --channel ID (repeatable) or list ids under discord.channels in "
            f"{ws.root / 'twin.yaml'}"
        )
    bot = make_bot(ws.root, source, backend, channel or [])  # type: ignore[arg-type]
    err.print(
        f"Talking as {', '.join(map(safe_text, bot.twin.personas))} from {safe_text(bot.twin.description)}",
        highlight=False,
        soft_wrap=True,
    )
    err.print(f"Answering in {len(channels)} channel(s); Ctrl-C stops.", highlight=False)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from twinlm.serve.discord_client import run_bot

    run_bot(bot, token)


def make_bot(root: Path, source: str | None, backend: Backend, extra_channels: list[int]) -> TwinBot:
    """The TwinBot of the workspace at `root`: its twin, its config, and the identities the build used
    (with the names each account had in the corpus, so members are named as in training)."""
    from twinlm.corpus.db import Corpus
    from twinlm.corpus.queries import account_names, owners
    from twinlm.identities import Identities
    from twinlm.serve import cpu_share
    from twinlm.serve.discord_bot import TwinBot
    from twinlm.serve.twin import open_twin

    ws = open_workspace(root)
    identities = Identities(ws.config)
    if ws.corpus_path.is_file():
        with Corpus(ws.corpus_path) as corpus:
            identities = Identities(ws.config, owners(corpus), account_names(corpus))
    cpu_share.configure(ws.config.chat.threads)
    twin = open_twin(ws.root, source, backend=backend, context_length=ws.config.chat.context_length)
    return TwinBot(twin, ws.config, identities=identities, extra_channels=extra_channels)

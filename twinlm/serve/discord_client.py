"""The discord.py client of `twinlm discord-bot`: the gateway connection, handing each message to TwinBot.

Intents: guilds and guild messages, plus message_content, a privileged intent the bot's application must
have switched on in the Discord developer portal (Bot > Privileged Gateway Intents), or every message
arrives with empty text.
"""

from __future__ import annotations

import logging

import aiohttp
import discord

from twinlm.errors import TwinError
from twinlm.serve.discord_bot import NO_PINGS, TwinBot

log = logging.getLogger("twinlm.discord")

TOKEN_ENV = "DISCORD_BOT_TOKEN"


def intents() -> discord.Intents:
    """What the bot receives: server channels and their messages with their text (no presences, no
    member list: the authors come with each message)."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.message_content = True
    return wanted


class TwinClient(discord.Client):
    """A discord.Client whose messages go to a TwinBot."""

    def __init__(self, bot: TwinBot, **options: object) -> None:
        # The bot never joins voice: no warning that voice's optional libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(intents=intents(), allowed_mentions=NO_PINGS, **options)  # type: ignore[arg-type]
        self.bot = bot

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "connected as %s (id %s); answering in %d channel(s)",
            user,
            user and user.id,
            len(self.bot.settings.channels),
        )

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None:  # not logged in yet
            return
        try:
            await self.bot.on_message(message, self.user)
        except discord.HTTPException as err:  # e.g. missing permission to send in that channel
            log.warning("could not answer in %s: %s", message.channel.id, err)

    async def close(self) -> None:
        self.bot.cancel.set()  # a reply being generated stops at its next token
        await super().close()


def run_bot(bot: TwinBot, token: str) -> None:
    """Connect and answer until stopped (Ctrl-C). A rejected token or a missing intent is one TwinError."""
    client = TwinClient(bot)
    try:
        client.run(token, log_handler=None)
    except discord.LoginFailure:
        raise TwinError(
            f"{TOKEN_ENV}: Discord refused the token; copy it again from the developer portal "
            "(your application > Bot > Reset Token)"
        ) from None
    except (aiohttp.ClientError, OSError) as err:  # no network, DNS, a proxy: before any reply was made
        raise TwinError(f"cannot reach Discord ({err}); check the network connection") from None
    except discord.PrivilegedIntentsRequired:
        raise TwinError(
            "Discord refused the message content intent: switch on Message Content Intent in the developer "
            "portal (your application > Bot > Privileged Gateway Intents)"
        ) from None

"""The Discord bot's handling of a message: who asks what, as whom, with which context, and the reply.

`TwinBot.on_message` takes a discord.py Message (the gateway's, or one built from a payload in the
tests) and replies through its channel: commands (`@bot as NAME: text`, `@bot persona NAME`,
`@bot personas`, `@bot help`; twinlm.serve.discord_text parses them), the allow-list of channels, the
rate limits, then the channel's recent messages as (speaker, text) turns and the persona's reply.

The context is the training sessions' shape: each author is the speaker the build named them (twin.yaml's
`me` and `people` aliases, else the name the corpus last saw on that Discord account, else the display
name), their messages cleaned by the build's rules (mentions as names, then `build.clean`), only the
last time-gap session, one author's consecutive messages merged into one turn
(twinlm.prepare.sessions), the bot's own replies as the persona that wrote them; Twin.prompt renders
them with the training rendering. Bots are never answered and are left out of the context, as build
left them out.

Generation blocks (a model): it runs in a worker thread (asyncio.to_thread), one at a time (the backend
is not thread-safe; others wait in line), under a typing indicator, so the gateway's heartbeat goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import discord

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.identities import ME, Identities
from twinlm.prepare.clean import CleanConfig, clean_message
from twinlm.prepare.sessions import merge_turns, split_by_gap
from twinlm.serve.backends import Sampling
from twinlm.serve.discord_text import (
    Ask,
    Command,
    Help,
    ListPersonas,
    RateLimits,
    SetPersona,
    match_persona,
    parse_command,
    split_message,
)

if TYPE_CHECKING:
    from twinlm.serve.twin import Twin

log = logging.getLogger("twinlm.discord")

SOURCE = "discord"  # the corpus's source name for Discord accounts (twinlm.sources.discord.FORMAT)
RATE_LIMITED = "\N{HOURGLASS WITH FLOWING SAND}"  # the reaction on a message refused by a rate limit
_SENT_REMEMBERED = 5000  # bot messages whose persona is remembered (their text is context later)
# Message types that are a person talking, as the Discord source keeps them (twinlm.sources.discord).
_TALK = frozenset({discord.MessageType.default, discord.MessageType.reply})
# A member, a role, a channel; or a custom emoji (group 2: its name), animated or not.
_MENTION = re.compile(r"<(@!?\d+|@&\d+|#\d+|a?:(\w+):\d+)>")
# No reply may ping anyone: the model writes what it learnt, "@everyone" included.
NO_PINGS = discord.AllowedMentions.none()


class Speakers:
    """The speaker name the build gave a Discord account, for a live server member.

    An account the corpus knows (`identities.names`) is named as the build named it: its person, else
    the latest name the corpus saw. Another is matched on its id and each of its current names (server
    nickname, global display name, username) against twin.yaml's aliases, else shown by its display
    name, as the Discord source would have recorded it. `me` is shown as `me_name`, as in training.
    """

    def __init__(self, identities: Identities, me_name: str) -> None:
        self.identities = identities
        self.me_name = me_name

    def __call__(self, user: discord.abc.User) -> str:
        account = (SOURCE, str(user.id))
        if account in self.identities.names:
            person: str | None = self.identities.speaker(*account, "")
        else:
            names = [user.display_name, getattr(user, "global_name", None), user.name]
            person = next(
                (hit for n in names if n and (hit := self.identities.resolve(*account, n)) is not None), None
            )
            person = person or user.display_name
        return self.me_name if person == ME else str(person)


@dataclass(frozen=True, slots=True)
class _Line:
    speaker: str
    text: str
    timestamp_ms: int | None


@dataclass(frozen=True)
class BotSettings:
    """What the bot needs from twin.yaml (`discord:`, build's session gap and cleaning, chat's sampling)."""

    channels: frozenset[int]
    context_messages: int
    session_gap_minutes: float
    clean: CleanConfig  # build.clean: the rules the training messages went through
    sampling: Sampling

    @classmethod
    def from_config(cls, config: TwinConfig, extra_channels: Iterable[int] = ()) -> BotSettings:
        return cls(
            channels=frozenset([*config.discord.channels, *extra_channels]),
            context_messages=config.discord.context_messages,
            session_gap_minutes=config.build.session_gap_minutes,
            clean=config.build.clean,
            sampling=Sampling.from_config(config.chat.sampling),
        )


class TwinBot:
    """The bot's state and handling: per-channel personas, the bot's sent replies, the rate limits."""

    def __init__(
        self,
        twin: Twin,
        config: TwinConfig,
        *,
        identities: Identities | None = None,
        extra_channels: Iterable[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.twin = on_discord(twin)
        self.settings = BotSettings.from_config(config, extra_channels)
        self.identities = identities or Identities(config)
        self.speakers = Speakers(self.identities, twin.me or (config.me[0] if config.me else ME))
        limits = config.discord
        self.limits = RateLimits(
            (limits.user_burst, limits.user_per_minute),
            (limits.channel_burst, limits.channel_per_minute),
            clock,
        )
        self.channel_personas: dict[int, str] = {}
        self.sent: OrderedDict[int, str] = OrderedDict()  # the bot's message id -> the persona it wrote as
        self.cancel = threading.Event()  # set on shutdown: a running generation stops at its next token
        self._turn = asyncio.Lock()  # one generation at a time, in arrival order
        self._bots = {name.casefold() for name in config.build.clean.bots}

    # --- deciding ---------------------------------------------------------------------------------------

    def allowed(self, channel: Any) -> bool:
        """The channel is on the allow-list, or is a thread of one that is."""
        return (
            channel.id in self.settings.channels
            or getattr(channel, "parent_id", None) in self.settings.channels
        )

    def command_of(self, message: discord.Message, bot_id: int) -> Command | None:
        """What `message` asks the bot (None: not for the bot, or from a bot, or not a person talking)."""
        if message.author.bot or message.author.id == bot_id or message.webhook_id is not None:
            return None
        if message.type not in _TALK or (
            self._bots and self.speakers(message.author).casefold() in self._bots
        ):
            return None
        mentioned = any(user.id == bot_id for user in message.mentions)
        return parse_command(message.content, bot_id, mentioned=mentioned)

    def persona_named(self, name: str) -> tuple[str | None, str]:
        """(persona, "") for a name a user typed, or (None, the reason to tell them)."""
        found, candidates = match_persona(name, self.twin.personas, self._person_of)
        if found is not None:
            return found, ""
        name = name if len(name) <= 100 else name[:99] + "…"  # echoed back: not a wall of text
        if candidates:
            return None, f"{name!r} could be {', '.join(candidates)}: say which."
        return None, f"I cannot be {name!r}. I can be: {', '.join(self.twin.personas)}."

    def _person_of(self, alias: str) -> str | None:
        person = self.identities.person_of(alias)
        return self.speakers.me_name if person == ME else person

    # --- handling ---------------------------------------------------------------------------------------

    async def on_message(self, message: discord.Message, bot: discord.abc.User) -> None:
        """Handle one message of the gateway; `bot` is the bot's own user."""
        if not self.allowed(message.channel):
            return
        command = self.command_of(message, bot.id)
        if command is None:
            return
        wait = self.limits.take(message.author.id, message.channel.id)
        if wait > 0:
            log.info("rate limit: %s in %s waits %.0f s", message.author.id, message.channel.id, wait)
            await _quietly(message.add_reaction(RATE_LIMITED))
            return
        if isinstance(command, Ask):
            await self._ask(message, command, bot)
        else:
            await self._send(message, self._answer(command, message.channel.id, bot))

    def _answer(self, command: Command, channel_id: int, bot: discord.abc.User) -> str:
        """The reply to a command other than Ask."""
        current = self.channel_personas.get(channel_id)
        if isinstance(command, ListPersonas):
            here = f" In this channel I am {current}." if current else ""
            return f"I can be: {', '.join(self.twin.personas)}.{here}"
        if isinstance(command, SetPersona):
            if command.name is None:
                self.channel_personas.pop(channel_id, None)
                return "No persona in this channel now: ask with `as NAME: message`."
            persona, why = self.persona_named(command.name)
            if persona is None:
                return why
            self.channel_personas[channel_id] = persona
            return f"In this channel I now answer as the AI version of {persona}."
        assert isinstance(command, Help)
        name = f"@{bot.display_name}"
        return (
            f"`{name} as NAME: message` replies as the AI version of NAME. `{name} persona NAME` makes NAME "
            f"answer `{name} message` in this channel (`{name} persona off` stops it); `{name} personas` "
            f"lists who I can be: {', '.join(self.twin.personas)}."
        )

    async def _ask(self, message: discord.Message, ask: Ask, bot: discord.abc.User) -> None:
        if ask.persona is not None:
            persona, why = self.persona_named(ask.persona)
        else:
            # A reply to one of the persona's messages goes on with that persona, else the channel's.
            replied = message.reference.message_id if message.reference is not None else None
            persona = self.sent.get(replied) if replied is not None else None
            persona = persona or self.channel_personas.get(message.channel.id)
            if persona is None and len(self.twin.personas) == 1:
                persona = next(iter(self.twin.personas))
            why = (
                "Who should answer? Say `as NAME: message`, or set this channel's persona with "
                f"`persona NAME`. I can be: {', '.join(self.twin.personas)}."
            )
        if persona is None:
            await self._send(message, why)
            return
        history = await self.history(message)
        turns = self.turns(history, message, ask, bot.id)
        async with message.channel.typing(), self._turn:
            try:
                text = await asyncio.to_thread(self.generate, persona, turns)
            except TwinError as err:
                log.warning("no reply in %s: %s", message.channel.id, err)
                await self._send(message, f"(no reply: {err})")
                return
        if not text.strip():
            log.info("empty reply as %s in %s", persona, message.channel.id)
            await _quietly(message.add_reaction("\N{SPEECH BALLOON}"))
            return
        await self._send(message, text, persona)

    async def history(self, message: discord.Message) -> list[discord.Message]:
        """The channel's messages before `message`, oldest first (none where the bot may not read them)."""
        try:
            found = [
                m async for m in message.channel.history(limit=self.settings.context_messages, before=message)
            ]
        except (discord.Forbidden, discord.NotFound) as err:
            log.warning(
                "cannot read the history of %s (%s): replying to the message alone", message.channel.id, err
            )
            return []
        return sorted(found, key=lambda m: (m.created_at, m.id))

    def turns(
        self, history: Sequence[discord.Message], message: discord.Message, ask: Ask, bot_id: int
    ) -> list[tuple[str, str]]:
        """The (speaker, text) turns the persona replies to: the last session of `history` and the asked
        text (kept even where a cleaning rule would drop it: it was said to the bot)."""
        counts: Counter[str] = Counter()
        lines: list[_Line] = []
        for m in history:
            line = self._line(m, bot_id, counts)
            if line is not None:
                lines.append(line)
        text = _named_mentions(ask.text, message)
        if text.strip():
            kept = clean_message(text, "text", self.settings.clean, counts) or text.strip()
            lines.append(_Line(self.speakers(message.author), kept, _ms(message)))
        sessions = split_by_gap(lines, self.settings.session_gap_minutes) if lines else [[]]
        return merge_turns((line.speaker, line.text) for line in sessions[-1])

    def _line(self, m: discord.Message, bot_id: int, counts: Counter[str]) -> _Line | None:
        """One earlier message as the build would have kept it, or None where it left it out."""
        if m.author.id == bot_id:
            persona = self.sent.get(m.id)
            # A reply of this run (its persona known) is the persona's turn; anything else the bot wrote
            # (help, errors, replies from before a restart) is not a person talking.
            return _Line(persona, m.content, _ms(m)) if persona and m.content.strip() else None
        if m.author.bot or m.webhook_id is not None or m.type not in _TALK:
            return None
        command = parse_command(m.content, bot_id, mentioned=any(u.id == bot_id for u in m.mentions))
        if command is not None and not isinstance(command, Ask):
            return None  # a command to the bot is not conversation
        speaker = self.speakers(m.author)
        if speaker.casefold() in self._bots:  # build.clean.bots: bots the exports did not mark
            return None
        raw = command.text if isinstance(command, Ask) else m.content
        text = clean_message(_named_mentions(raw, m), "text", self.settings.clean, counts)
        return _Line(speaker, text, _ms(m)) if text else None

    def generate(self, persona: str, turns: list[tuple[str, str]]) -> str:
        """The persona's reply (blocking: runs in a worker thread)."""
        generation = self.twin.reply(persona, turns, sampling=self.settings.sampling, cancel=self.cancel)
        return "".join(generation).strip()

    async def _send(self, message: discord.Message, text: str, persona: str | None = None) -> None:
        """`text` in the channel, in messages Discord accepts, the first one replying to `message`; the
        persona's are remembered as its turns."""
        # A reply to a message deleted meanwhile is still sent, as a plain message.
        reference = message.to_reference(fail_if_not_exists=False)
        for i, chunk in enumerate(split_message(text)):
            sent = await message.channel.send(
                chunk,
                reference=reference if i == 0 else None,
                mention_author=False,
                allowed_mentions=NO_PINGS,
            )
            if persona is not None:
                self.sent[sent.id] = persona
                while len(self.sent) > _SENT_REMEMBERED:
                    self.sent.popitem(last=False)


def on_discord(twin: Twin) -> Twin:
    """The twin with its persona prompts filled for a chat on Discord ("... on Discord"), as build filled
    them for each Discord session, rather than for the platform it learnt most from (the export's)."""
    settings = twin.provenance.get("persona_settings")
    if not isinstance(settings, dict):
        return twin
    return replace(twin, provenance={**twin.provenance, "persona_settings": {**settings, "platform": SOURCE}})


def _named_mentions(text: str, message: discord.Message) -> str:
    """Mentions and custom emoji as DiscordChatExporter writes them in the exports the model learnt from
    (its plain-text Markdown formatting): <@id> as "@Name" (the member's display name), <@&id> as
    "@Role", <#id> as "#channel", <:name:id> as ":name:"; the build's cleaning then makes "@Name"
    "Name". A mention it cannot name stays raw, and the cleaning removes it."""
    names = {f"@{user.id}": f"@{user.display_name}" for user in message.mentions}
    names.update({f"@&{role.id}": f"@{role.name}" for role in message.role_mentions})
    guild = message.guild
    for channel_id in message.raw_channel_mentions:
        channel = guild.get_channel_or_thread(channel_id) if guild is not None else None
        if channel is not None:
            names[f"#{channel_id}"] = f"#{channel.name}"

    def named(m: re.Match[str]) -> str:
        if m.group(2) is not None:  # a custom emoji
            return f":{m.group(2)}:"
        return names.get(m.group(1).replace("!", ""), m.group(0))

    return _MENTION.sub(named, text)


def _ms(message: discord.Message) -> int:
    return int(message.created_at.timestamp() * 1000)


async def _quietly(action: Any) -> None:
    """A reaction is a courtesy: missing permissions must not stop the bot."""
    try:
        await action
    except discord.HTTPException as err:
        log.info("reaction not added: %s", err)

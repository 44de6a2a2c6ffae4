"""`twinlm discord-bot`: the handling of messages, through discord.py's own objects, with no network
(the text rules alone, on strings: test_discord_text.py).

The messages are Discord API payloads (the gateway's MESSAGE_CREATE shape) that discord.py itself turns
into Message, Member and User objects: a real discord.Client whose ConnectionState holds a guild with
its channels, and whose HTTP client is replaced by `FakeHTTP`, which records what the bot sends, its
typing indicators and reactions, and answers history requests from the messages posted so far.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
import pytest
from serve_fakes import FAKE_REPLY, FRIEND, ME, FakeBackend, make_fake_twin
from typer.testing import CliRunner

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.identities import Identities
from twinlm.serve.backends import Sampling
from twinlm.serve.discord_bot import RATE_LIMITED, TwinBot
from twinlm.serve.discord_client import TwinClient, intents, run_bot
from twinlm.serve.discord_text import Ask

# Snowflake ids as Discord's (15 to 20 digits: discord.py only finds channel and role mentions that long).
BOT_ID = 1_000_000_000_000_000_999
GUILD = 1_000_000_000_000_000_001
GENERAL, CLOSED, THREAD = 1_000_000_000_000_000_010, 1_000_000_000_000_000_011, 1_000_000_000_000_000_012
ROLE = 1_000_000_000_000_000_500  # a role, "climbers"
T0 = datetime(2024, 3, 1, 18, 0, tzinfo=UTC)

# Server members: (id, username, global display name, server nickname)
ALEX = (1_000_000_000_000_000_021, "alexr", "Alex", None)  # me, by the username alias in twin.yaml
SAM = (1_000_000_000_000_000_022, "sam_l", "Sammy", "Sam the man")  # the friend "Sam", by an alias
PRIYA = (1_000_000_000_000_000_023, "priya", "Priya P", None)  # not in twin.yaml: her display name
OTHER_BOT = (1_000_000_000_000_000_030, "otherbot", None, None)

CONFIG = {
    "me": [ME, "alexr"],
    "people": {FRIEND: ["sam_l"]},
    "discord": {"channels": [GENERAL], "user_burst": 3, "user_per_minute": 6},
    "chat": {"sampling": {"max_tokens": 64, "temperature": 0}},
}


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ------------------------------------------------------------------------------- a server without network


def user_json(member: tuple[int, str, str | None, str | None], *, bot: bool = False) -> dict[str, Any]:
    uid, username, global_name, _ = member
    data: dict[str, Any] = {"id": str(uid), "username": username, "discriminator": "0", "avatar": None}
    data["global_name"] = global_name
    if bot:
        data["bot"] = True
    return data


def member_json(member: tuple[int, str, str | None, str | None]) -> dict[str, Any]:
    return {
        "nick": member[3],
        "roles": [],
        "joined_at": "2024-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
    }


class FakeHTTP:
    """Discord's REST API as the bot uses it, in memory: messages per channel (history), and the
    messages, typing indicators and reactions the bot sent."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sent: list[dict[str, Any]] = []  # payloads of the messages the bot sent
        self.events: list[tuple[str, Any]] = []  # ("typing", channel) / ("send", content) / ("react", emoji)
        self.reactions: list[tuple[int, str]] = []

    async def send_message(self, channel_id: int, *, params: Any) -> dict[str, Any]:
        payload = dict(params.payload)
        self.sent.append(payload)
        self.events.append(("send", payload["content"]))
        bot = (BOT_ID, "twin", None, None)
        return self.server.payload(bot, payload["content"], channel=int(channel_id), bot=True, seconds=1)

    async def send_typing(self, channel_id: int) -> None:
        self.events.append(("typing", int(channel_id)))

    async def add_reaction(self, channel_id: int, message_id: int, emoji: str) -> None:
        self.events.append(("react", emoji))
        self.reactions.append((int(message_id), emoji))

    async def logs_from(
        self, channel_id: int, limit: int, before: int | None = None, after: Any = None, around: Any = None
    ) -> list[dict[str, Any]]:
        found = [
            m for m in self.server.posted[int(channel_id)] if before is None or int(m["id"]) < int(before)
        ]
        # Fresh copies, as from the network: discord.py takes parts out of the payloads it reads.
        return copy.deepcopy(sorted(found, key=lambda m: int(m["id"]), reverse=True)[:limit])


class Server:
    """A guild with three channels in a discord.py client's state, the clock of the conversation, and
    the messages posted in each channel (which the history requests read)."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client
        self.state = client._connection
        self.http = FakeHTTP(self)
        self.state.http = self.http  # type: ignore[assignment]
        self.state.user = discord.ClientUser(
            state=self.state, data=user_json((BOT_ID, "twin", None, None), bot=True)
        )
        channel = {"type": 0, "position": 0, "permission_overwrites": [], "guild_id": str(GUILD)}
        thread = {
            "id": str(THREAD),
            "type": 11,
            "name": "a thread",
            "parent_id": str(GENERAL),
            "guild_id": str(GUILD),
            "owner_id": str(SAM[0]),
            "message_count": 0,
            "member_count": 1,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": T0.isoformat(),
            },
        }
        self.guild = self.state._add_guild_from_data(
            {
                "id": str(GUILD),
                "name": "friends",
                "channels": [
                    {**channel, "id": str(GENERAL), "name": "general"},
                    {**channel, "id": str(CLOSED), "name": "closed"},
                ],
                "threads": [thread],
                "roles": [
                    {"id": str(ROLE), "name": "climbers", "permissions": "0", "position": 1, "color": 0}
                ],
                "members": [],
            }
        )
        self.posted: dict[int, list[dict[str, Any]]] = {GENERAL: [], CLOSED: [], THREAD: []}
        self.now = T0
        self.serial = 0

    def payload(
        self,
        author: tuple[int, str, str | None, str | None],
        content: str,
        *,
        channel: int = GENERAL,
        minutes: float = 0,
        seconds: float = 0,
        bot: bool = False,
        mentions: tuple[tuple[int, str, str | None, str | None], ...] = (),
        kind: int = 0,
        webhook: bool = False,
        reply_to: int | None = None,
        roles: tuple[int, ...] = (),
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE payload posted `minutes` after the previous one (kept for history)."""
        self.now += timedelta(minutes=minutes, seconds=seconds)
        self.serial += 1
        data: dict[str, Any] = {
            "id": str(discord.utils.time_snowflake(self.now) + self.serial),  # a snowflake holds its time
            "channel_id": str(channel),
            "guild_id": str(GUILD),
            "author": user_json(author, bot=bot),
            "member": member_json(author),
            "content": content,
            "timestamp": self.now.isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [{**user_json(m, bot=m[0] == BOT_ID), "member": member_json(m)} for m in mentions],
            "mention_roles": [str(r) for r in roles],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": kind,
        }
        if webhook:
            data["webhook_id"] = "1000000000000004242"
        if reply_to is not None:  # a reply (type 19) to an earlier message of the channel
            data["type"] = 19
            data["message_reference"] = {
                "message_id": str(reply_to),
                "channel_id": str(channel),
                "guild_id": str(GUILD),
            }
        self.posted[channel].append(data)
        return copy.deepcopy(data)

    def post(
        self, author: tuple[int, str, str | None, str | None], content: str, **kw: Any
    ) -> discord.Message:
        """A message as discord.py makes it from the gateway's payload."""
        if f"<@{BOT_ID}>" in content or f"<@!{BOT_ID}>" in content:
            kw.setdefault("mentions", ((BOT_ID, "twin", None, None),))
        data = self.payload(author, content, **kw)
        channel, _ = self.state._get_guild_channel(data)
        return self.state.create_message(channel=channel, data=data)  # type: ignore[arg-type]

    @property
    def replies(self) -> list[str]:
        return [p["content"] for p in self.http.sent]


def make_bot(twin: Any, config: dict[str, Any] | None = None, **kw: Any) -> TwinBot:
    return TwinBot(twin, TwinConfig.model_validate(config or CONFIG), **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _server(bot: TwinBot) -> tuple[TwinClient, Server]:
    client = TwinClient(bot)
    await client._async_setup_hook()  # binds the client to this loop, as login does
    return client, Server(client)


def converse(bot: TwinBot, script: Callable[[Server, TwinClient], Awaitable[None]]) -> Server:
    """Run `script(server, client)`, posting messages and awaiting the bot, on a fresh server."""

    async def main() -> Server:
        client, server = await _server(bot)
        await script(server, client)
        return server

    return run(main())


async def ask(
    server: Server, client: discord.Client, author: Any, content: str, **kw: Any
) -> discord.Message:
    message = server.post(author, content, **kw)
    assert client.user is not None
    await client.bot.on_message(message, client.user)  # type: ignore[attr-defined]
    return message


@pytest.fixture
def twin(fake_twin: Any) -> Any:
    return fake_twin


def test_rate_limited_messages_get_a_reaction_and_no_reply(twin: Any) -> None:
    now = [1000.0]
    bot = make_bot(twin, clock=lambda: now[0])

    async def script(server: Server, client: TwinClient) -> None:
        for _ in range(4):  # a burst of 3, then the fourth is refused
            await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: hey")
        now[0] += 10  # one reply per 10 s (6 a minute)
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: hey again")

    server = converse(bot, script)
    assert server.replies == [FAKE_REPLY] * 4
    assert [e for e in server.http.events if e[0] == "react"] == [("react", RATE_LIMITED)]


# ------------------------------------------------------------------------------- who is answered


def test_bots_itself_webhooks_system_messages_and_other_channels_are_ignored(
    twin: Any, fake_backend: Any
) -> None:
    bot = make_bot(twin)

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, OTHER_BOT, f"<@{BOT_ID}> as Sam: hi", bot=True)
        await ask(server, client, (BOT_ID, "twin", None, None), f"<@{BOT_ID}> as Sam: hi")  # itself
        await ask(server, client, SAM, f"<@{BOT_ID}> as Sam: hi", webhook=True)
        await ask(server, client, SAM, f"<@{BOT_ID}> as Sam: hi", kind=7)  # a "member joined" notice
        await ask(server, client, SAM, f"<@{BOT_ID}> as Sam: hi", channel=CLOSED)
        await ask(server, client, SAM, "as Sam: hi")  # not addressed to the bot

    server = converse(bot, script)
    assert server.http.events == []
    assert fake_backend.prompts == []


def test_allowed_channels_and_their_threads(twin: Any) -> None:
    bot = make_bot(twin, extra_channels=[CLOSED])

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: in the thread", channel=THREAD)
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: in the closed one", channel=CLOSED)

    server = converse(bot, script)
    assert server.replies == [FAKE_REPLY, FAKE_REPLY]
    assert [e for e in server.http.events if e[0] == "typing"] == [("typing", THREAD), ("typing", CLOSED)]


def test_the_discord_objects_are_read_as_the_bot_expects(twin: Any) -> None:
    async def main() -> None:
        client, server = await _server(make_bot(twin))
        message = server.post(
            SAM, f"<@!{BOT_ID}> as Alex: hi <@{PRIYA[0]}>", mentions=((BOT_ID, "twin", None, None), PRIYA)
        )
        assert isinstance(message.author, discord.Member) and isinstance(message.channel, discord.TextChannel)
        assert message.author.display_name == "Sam the man"  # the server nickname
        assert [u.id for u in message.mentions] == [BOT_ID, PRIYA[0]]
        assert client.bot.command_of(message, BOT_ID) == Ask("Alex", f"hi <@{PRIYA[0]}>")
        thread = server.post(SAM, "x", channel=THREAD).channel
        assert isinstance(thread, discord.Thread) and client.bot.allowed(thread)

    run(main())


# ------------------------------------------------------------------------------- personas


def test_channel_persona_commands(twin: Any, fake_backend: FakeBackend) -> None:
    roomy = {"channels": [GENERAL], "user_burst": 10, "channel_burst": 10}
    bot = make_bot(twin, {**CONFIG, "discord": roomy})

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, ALEX, f"<@{BOT_ID}> what's up?")  # no persona yet
        await ask(server, client, ALEX, f"<@{BOT_ID}> persona SAM")
        await ask(server, client, ALEX, f"<@{BOT_ID}> personas")
        await ask(server, client, ALEX, f"<@{BOT_ID}> what's up?")  # answered as Sam
        await ask(server, client, ALEX, f"<@{BOT_ID}> persona nobody")
        await ask(server, client, ALEX, f"<@{BOT_ID}> persona off")
        await ask(server, client, ALEX, f"<@{BOT_ID}> what's up?")
        await ask(server, client, ALEX, f"<@{BOT_ID}> help")

    server = converse(bot, script)
    replies = server.replies
    assert replies[0].startswith("Who should answer?") and f"{ME}, {FRIEND}" in replies[0]
    assert replies[1] == f"In this channel I now answer as the AI version of {FRIEND}."
    assert replies[2] == f"I can be: {ME}, {FRIEND}. In this channel I am {FRIEND}."
    assert replies[3] == FAKE_REPLY
    assert replies[4] == f"I cannot be 'nobody'. I can be: {ME}, {FRIEND}."
    assert replies[5].startswith("No persona in this channel now")
    assert replies[6].startswith("Who should answer?")
    assert "@twin as NAME: message" in replies[7]
    assert len(fake_backend.prompts) == 1  # only the one question was given to the model
    assert bot.sent == {int(p["id"]): FRIEND for p in server.posted[GENERAL] if p["content"] == FAKE_REPLY}


def test_a_reply_to_a_persona_goes_on_with_it(twin: Any, fake_backend: FakeBackend) -> None:
    bot = make_bot(twin)

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: dinner?")
        (reply_id,) = bot.sent
        # Discord lists the replied-to author in `mentions` (the reply pings them) but not in the text.
        await ask(server, client, SAM, "really?", reply_to=reply_id, mentions=((BOT_ID, "twin", None, None),))
        human = int(server.posted[GENERAL][0]["id"])
        await ask(server, client, PRIYA, "who?", reply_to=human, mentions=((BOT_ID, "twin", None, None),))

    server = converse(bot, script)
    assert server.replies[:2] == [FAKE_REPLY, FAKE_REPLY]
    assert server.replies[2].startswith("Who should answer?")  # a reply to a person: no persona to go on with
    turns = [(FRIEND, "dinner?"), (ME, FAKE_REPLY), (FRIEND, "really?")]
    expected = bot.twin.prompt(ME, turns, max_new_tokens=bot.settings.sampling.max_tokens)
    assert fake_backend.prompts[-1] == expected


def test_build_clean_bots_are_neither_answered_nor_read(twin: Any, fake_backend: FakeBackend) -> None:
    config = {**CONFIG, "build": {"clean": {"bots": ["priya p"]}}}  # a bot the exports did not mark
    bot = make_bot(twin, config)

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, PRIYA, f"<@{BOT_ID}> as Alex: I am a bot in disguise")
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: hi")

    server = converse(bot, script)
    assert server.replies == [FAKE_REPLY]
    text = fake_backend.tokenizer.decode(fake_backend.prompts[0])
    assert "disguise" not in text and "hi<|im_end|>" in text


def test_without_history_access_the_message_alone_is_the_context(
    twin: Any, fake_backend: FakeBackend
) -> None:
    bot = make_bot(twin)

    async def forbidden(*args: Any, **kw: Any) -> None:
        raise discord.Forbidden(SimpleNamespace(status=403, reason="Forbidden"), "Missing Access")

    async def script(server: Server, client: TwinClient) -> None:
        server.post(PRIYA, "something the bot may not read")
        server.http.logs_from = forbidden  # type: ignore[method-assign]
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: hi")

    assert converse(bot, script).replies == [FAKE_REPLY]
    assert fake_backend.prompts == [
        bot.twin.prompt(ME, [(FRIEND, "hi")], max_new_tokens=bot.settings.sampling.max_tokens)
    ]


def test_a_single_persona_needs_no_choice(fake_backend: FakeBackend) -> None:
    twin = make_fake_twin(fake_backend)
    twin.personas = {ME: twin.personas[ME]}
    bot = make_bot(twin)

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, SAM, f"<@{BOT_ID}> hi")

    assert converse(bot, script).replies == [FAKE_REPLY]


# ------------------------------------------------------------------------------- context


def test_context_is_the_last_session_named_cleaned_and_merged_as_in_training(
    twin: Any, fake_backend: FakeBackend
) -> None:
    # An account the corpus knows is named as the build named it: Priya's Discord id was "Priya" there.
    ids = Identities(
        TwinConfig.model_validate(CONFIG), names={("discord", str(PRIYA[0])): ("Priya from the export",)}
    )
    bot = make_bot(twin, identities=ids)

    async def script(server: Server, client: TwinClient) -> None:
        server.post(SAM, "an old session, long ago")
        server.post(PRIYA, "who's coming tonight?", minutes=60)  # a pause over 10 minutes: a new session
        server.post(PRIYA, "lol")  # a non-reply, dropped by build.clean
        server.post(PRIYA, f"<@{SAM[0]}> you?", mentions=(SAM,))  # the mention as the name, as exported
        server.post(OTHER_BOT, "I am a bot", bot=True)  # bots were never in training
        server.post(ALEX, f"<@{BOT_ID}> persona Sam")  # a command is not conversation
        server.post(ALEX, "me for sure", minutes=2)
        server.post(ALEX, "bringing snacks")
        await ask(server, client, PRIYA, f"<@{BOT_ID}> as Sam: and you, Sam?")
        await ask(server, client, ALEX, f"<@{BOT_ID}> as Sam: so?")

    server = converse(bot, script)
    assert server.replies == [FAKE_REPLY, FAKE_REPLY]
    first = [
        ("Priya from the export", "who's coming tonight?\nSam the man you?"),
        (ME, "me for sure\nbringing snacks"),
        ("Priya from the export", "and you, Sam?"),
    ]
    second = [*first, (FRIEND, FAKE_REPLY), (ME, "so?")]  # the bot's reply is Sam's turn
    max_tokens = bot.settings.sampling.max_tokens
    assert fake_backend.prompts == [
        bot.twin.prompt(FRIEND, first, max_new_tokens=max_tokens),
        bot.twin.prompt(FRIEND, second, max_new_tokens=max_tokens),
    ]
    text = fake_backend.tokenizer.decode(fake_backend.prompts[1])
    assert "an old session" not in text and "I am a bot" not in text and "persona" not in text
    assert text.index("who's coming") < text.index("me for sure") < text.index("so?")
    # The persona prompt as build wrote it for a Discord session (the fake export learnt from WhatsApp).
    assert "A chat between Alex Rivera, Priya from the export and Sam on Discord." in text
    assert twin.provenance["persona_settings"]["platform"] == "whatsapp"  # the twin given is left as it was


def test_mentions_are_named_as_the_exports_wrote_them(twin: Any) -> None:
    bot = make_bot(twin)

    async def main() -> None:
        _, server = await _server(bot)
        unknown = "<#1000000000000424242> <@1000000000000000777>"  # a channel and a member not in the guild
        said = f"<@{SAM[0]}> <@&{ROLE}> see <#{CLOSED}> {unknown} <:pog:123><a:party_blob:456>"
        earlier = server.post(PRIYA, said, mentions=(SAM,), roles=(ROLE,))
        message = server.post(ALEX, f"<@{BOT_ID}> as Sam: <@!{PRIYA[0]}> ok", mentions=(PRIYA,))
        turns = bot.turns([earlier], message, Ask("Sam", f"<@!{PRIYA[0]}> ok"), BOT_ID)
        # DiscordChatExporter's "@Name", "@Role", "#channel" and ":emoji:", made "Name", "Role" by
        # build.clean's pings rule; a channel or member it cannot name is removed as a raw ping.
        said = "Sam the man climbers see #closed :pog::party_blob:"
        assert turns == [("Priya P", said), (ME, "Priya P ok")]

    run(main())


def test_context_limit_and_unknown_bot_messages(twin: Any, fake_backend: FakeBackend) -> None:
    config = {**CONFIG, "discord": {"channels": [GENERAL], "context_messages": 3}}
    bot = make_bot(twin, config)

    async def script(server: Server, client: TwinClient) -> None:
        for i in range(6):
            server.post(SAM if i % 2 else PRIYA, f"message {i}")
        server.post((BOT_ID, "twin", None, None), "a reply from before a restart", bot=True)
        message = server.post(ALEX, f"<@{BOT_ID}> as Sam: well?")
        history = await bot.history(message)
        assert [m.content for m in history] == ["message 4", "message 5", "a reply from before a restart"]
        assert bot.turns(history, message, Ask("Sam", "well?"), BOT_ID) == [
            ("Priya P", "message 4"),
            (FRIEND, "message 5"),
            (ME, "well?"),
        ]

    converse(bot, script)


# ------------------------------------------------------------------------------- the whole path


def test_gateway_message_to_reply(twin: Any, fake_backend: FakeBackend) -> None:
    """A MESSAGE_CREATE from the gateway, dispatched by discord.py to the client's on_message, generates
    in a worker thread under a typing indicator and replies (first part as a reply, no pings)."""
    threads: list[threading.Thread] = []
    real_generate = fake_backend.generate

    def generate(*args: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread())
        return real_generate(*args, **kw)

    fake_backend.generate = generate  # type: ignore[method-assign]
    fake_backend.reply = ("word " * 450).strip() + " @everyone"  # ~2,260 characters: two messages
    fake_backend.context_length = 4096
    bot = make_bot(twin, {**CONFIG, "chat": {"sampling": {"max_tokens": 2048}}})

    async def main() -> Server:
        _, server = await _server(bot)
        data = server.payload(
            SAM, f"<@{BOT_ID}> as Alex: tell me everything", mentions=((BOT_ID, "twin", None, None),)
        )
        server.state.parse_message_create(data)  # the gateway's event, as discord.py handles it
        for task in [t for t in asyncio.all_tasks() if t.get_name() == "discord.py: on_message"]:
            await task
        return server

    server = run(main())
    kinds = [kind for kind, _ in server.http.events]
    assert kinds[0] == "typing" and kinds.count("send") == 2 and kinds.index("send") > 0
    first, second = server.http.sent
    assert (first["content"] + " " + second["content"]).split() == fake_backend.reply.split()
    assert all(utf16(p["content"]) <= 2000 for p in server.http.sent)
    assert first["message_reference"]["message_id"] == int(server.posted[GENERAL][0]["id"])
    assert first["message_reference"]["fail_if_not_exists"] is False  # sent even if the question is deleted
    assert "message_reference" not in second
    assert all(p["allowed_mentions"] == {"parse": [], "replied_user": False} for p in server.http.sent)
    assert threads and threading.main_thread() not in threads  # generation left the event loop's thread
    assert sorted(bot.sent.values()) == [ME, ME]  # both parts are Alex's turn in later context


def test_the_event_loop_runs_while_generating_and_replies_queue(twin: Any) -> None:
    """While a reply is generated the event loop goes on (discord.py's heartbeat runs on it), and several
    questions at once are generated one at a time (a backend is not thread-safe), all answered."""
    bot = make_bot(twin)
    loop_ran = threading.Event()
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def generate(persona: str, turns: list[tuple[str, str]]) -> str:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            # Set by a coroutine on the loop: it can only run if generation left the loop's thread.
            assert loop_ran.wait(timeout=30), "the event loop was blocked while generating"
            return f"{persona} answers {turns[-1][1]}"
        finally:
            with lock:
                running["now"] -= 1

    bot.generate = generate  # type: ignore[method-assign]

    async def main() -> Server:
        client, server = await _server(bot)
        people = (SAM, PRIYA, SAM)
        asks = [ask(server, client, who, f"<@{BOT_ID}> as Alex: q{i}") for i, who in enumerate(people)]

        async def heartbeat() -> None:
            await asyncio.sleep(0)
            loop_ran.set()

        await asyncio.gather(*asks, heartbeat())
        return server

    server = run(main())
    assert sorted(server.replies) == [f"{ME} answers q0", f"{ME} answers q1", f"{ME} answers q2"]
    assert running == {"now": 0, "most": 1}  # one generation at a time


def test_generation_errors_are_one_line_replies(twin: Any) -> None:
    twin.backend.context_length = 512
    config = {**CONFIG, "chat": {"sampling": {"max_tokens": 600}}}  # more than the whole context
    bot = make_bot(twin, config)

    async def script(server: Server, client: TwinClient) -> None:
        await ask(server, client, SAM, f"<@{BOT_ID}> as Alex: hi")

    (reply,) = converse(bot, script).replies
    assert reply.startswith("(no reply: max_tokens 600 leaves no room") and "\n" not in reply


def test_client_wiring() -> None:
    wanted = intents()
    assert wanted.message_content and wanted.guild_messages and wanted.guilds
    assert not wanted.members and not wanted.presences  # privileged intents the bot does not need


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            discord.LoginFailure("Improper token has been passed."),
            "DISCORD_BOT_TOKEN: Discord refused the token",
        ),
        (discord.PrivilegedIntentsRequired(None), "switch on Message Content Intent"),
        (aiohttp.ClientConnectionError("Name or service not known"), "cannot reach Discord"),
    ],
)
def test_connection_failures_are_one_line_errors(
    twin: Any, monkeypatch: pytest.MonkeyPatch, error: Exception, says: str
) -> None:
    def refuse(self: TwinClient, token: str, **kw: Any) -> None:
        raise error

    monkeypatch.setattr(TwinClient, "run", refuse)
    with pytest.raises(TwinError, match=says) as caught:
        run_bot(make_bot(twin), "token")
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------- the command line


def test_cli_token_only_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twin: Any
) -> None:
    from twinlm.cli import app
    from twinlm.workspace import init_workspace

    init_workspace(tmp_path, TwinConfig.model_validate({"me": [ME], "discord": {"channels": [GENERAL]}}))
    runner = CliRunner()
    monkeypatch.delenv("DISCORD_BOT_TOKEN", raising=False)
    result = runner.invoke(app, ["discord-bot", "-w", str(tmp_path)])
    assert result.exit_code == 1
    assert "DISCORD_BOT_TOKEN is not set" in result.output and "Traceback" not in result.output

    started: list[tuple[TwinBot, str]] = []
    monkeypatch.setattr("twinlm.serve.twin.open_twin", lambda *a, **kw: twin)
    monkeypatch.setattr(
        "twinlm.serve.discord_client.run_bot", lambda bot, token: started.append((bot, token))
    )
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "  secret-token\n")
    result = runner.invoke(app, ["discord-bot", "-w", str(tmp_path), "--channel", str(CLOSED)])
    assert result.exit_code == 0, result.output
    ((bot, token),) = started
    assert token == "secret-token"
    assert bot.settings.channels == {GENERAL, CLOSED}
    assert "secret-token" not in result.output

    init_workspace(tmp_path / "none", TwinConfig())
    result = runner.invoke(app, ["discord-bot", "-w", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no channel to answer in" in result.output


# ------------------------------------------------------------------------------- a real tiny twin


def test_real_tiny_twin_replies_in_discord(served_workspace: Path) -> None:
    from twinlm.cli.discord_bot import make_bot as make_real_bot

    bot = make_real_bot(served_workspace, None, "transformers", [GENERAL])
    bot.settings = replace(bot.settings, sampling=Sampling(max_tokens=12, temperature=0))
    prompts: list[list[int]] = []
    real_generate = bot.twin.backend.generate

    def generate(ids: list[int], *args: Any, **kw: Any) -> Any:
        prompts.append(list(ids))
        return real_generate(ids, *args, **kw)

    bot.twin.backend.generate = generate  # type: ignore[method-assign]

    sam = (1_000_000_000_000_000_024, "samsam", None, "Sam")  # "Sam", as the corpus (WhatsApp) names him

    async def script(server: Server, client: TwinClient) -> None:
        server.post(sam, "Did you eat dinner today?")
        await ask(server, client, sam, f"<@{BOT_ID}> as alex: and?")  # "Alex Rivera", by its first word

    server = converse(bot, script)
    turns = [(FRIEND, "Did you eat dinner today?\nand?")]  # one speaker's messages merged into one turn
    assert prompts == [bot.twin.prompt(ME, turns, max_new_tokens=12)]
    assert len(server.replies) + len(server.http.reactions) == 1  # a reply, or the empty-reply reaction

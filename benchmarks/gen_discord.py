"""Generate a realistic DiscordChatExporter (DCE) JSON export of one guild channel.

`write_discord_export(path, n_messages, seed=0)` writes `n_messages` messages. Output is deterministic for a
given seed and streamed message by message, so a 1 GB file needs no more memory than a small one. The layout
copies DCE's writer (`JsonMessageWriter`, .NET `Utf8JsonWriter` with `Indented` and relaxed escaping):
two-space indentation, `"key": value`, empty arrays as `[]`, characters outside the BMP written as escaped
surrogate pairs ("\\uD83D\\uDE02") while other non-ASCII text stays raw, keys in DCE's order, today's schema
(`author.roles`, `components`, `inlineEmojis`, `reference.type`, `forwardedMessage`, `interaction`).
Exports made on Windows end lines with CRLF (`Environment.NewLine`): `crlf=True` writes those.

Mix: mostly `Default` messages, ~8% `Reply` (with `reference` and a mention), attachments, link embeds,
reactions with their users, stickers, edits, forwards, bot answers to slash commands and a few service
messages (joins, pins, thread creation).

    python benchmarks/gen_discord.py out.json 500000 [--seed N] [--crlf]
"""

from __future__ import annotations

import json
import random
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

_WORD_TEXT = """
ok yes no lol lmao haha maybe tomorrow today tonight really cool nice thanks please wait sure what why
when where who how the a to and of in is it you that he was for on are with as I his they be at one
have this from or had by hot word but some we can out other were all there use an each which she do
their time if will way about many then them write would like so these her long make thing see him
two has look more day could go come did number sound most people my over know water than call first
gg wp brb afk ping patch build raid queue server mod role bot emoji stream clip vc pog
привет спасибо hallo danke merci très bien déjà vu naïve café 😂 👍 ❤️ 🙂 🔥 😭 🤔 ✨
"""
_WORDS = _WORD_TEXT.split()
_PEOPLE = (
    ("anna.k", "Anna"),
    ("bobcat", "Bob the Builder"),
    ("carol_", None),
    ("dmitry", "Дмитрий"),
    ("eve", "eve"),
    ("frankly", "Frank"),
    ("greta.g", None),
    ("hiro", "Hiro Tanaka"),
    ("ivy", "ivy 🌿"),
    ("jon", "Jon"),
    ("kai", None),
    ("lena", "Lena M."),
)
_ROLES = (
    ("Admin", "#E74C3C", 10),
    ("Moderator", "#3498DB", 8),
    ("Regular", "#2ECC71", 3),
    ("Member", None, 1),
)
_SERVICE = ("GuildMemberJoin", "ChannelPinnedMessage", "ThreadCreated")
_SERVICE_TEXT = {
    "GuildMemberJoin": "Joined the server.",
    "ChannelPinnedMessage": "Pinned a message.",
    "ThreadCreated": "Started a thread.",
}
_FILES = (
    ("image.png", 0.35),
    ("IMG_2024.jpg", 0.25),
    ("clip.mp4", 0.1),
    ("screenshot.webp", 0.1),
    ("voice-message.ogg", 0.08),
    ("notes.pdf", 0.07),
    ("song.mp3", 0.05),
)
_EMOJI = (("👍", "thumbsup"), ("😂", "joy"), ("❤️", "heart"), ("🔥", "fire"), ("🎉", "tada"))
_CDN = "https://cdn.discordapp.com"
_EPOCH_MS = 1_420_070_400_000  # Discord's snowflake epoch
_OUTSIDE_BMP = re.compile("[\U00010000-\U0010ffff]")


def _escape_astral(match: re.Match[str]) -> str:
    """DCE's encoder writes a character outside the BMP as its UTF-16 surrogates, upper-case hex."""
    code = ord(match.group()) - 0x10000
    return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}"


def _snowflake(when: datetime, rng: random.Random) -> str:
    return str(((int(when.timestamp() * 1000) - _EPOCH_MS) << 22) | rng.getrandbits(22))


def _text(rng: random.Random) -> str:
    n = rng.choice((1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 35))
    return " ".join(rng.choice(_WORDS) for _ in range(n))


class _Writer:
    """Builds DCE message objects; keeps the state (clock, ids, recent messages) between them."""

    def __init__(self, rng: random.Random, channel_id: str, guild_id: str, offset: timezone) -> None:
        self.rng = rng
        self.channel_id = channel_id
        self.guild_id = guild_id
        self.offset = offset
        self.clock = datetime(2021, 3, 1, 12, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10**7))
        self.recent: list[str] = []  # ids of the last messages, for replies and pins
        self.users = [self._user(i, name, nick) for i, (name, nick) in enumerate(_PEOPLE)]
        bot = {**self._user(99, "HelperBot", None), "isBot": True, "roles": []}
        self.bot = bot

    def _user(self, i: int, name: str, nick: str | None) -> dict[str, Any]:
        roles = [
            {"id": str(700_000_000_000_000_000 + k), "name": r[0], "color": r[1], "position": r[2]}
            for k, r in enumerate(_ROLES)
            if (i + k) % 3 == 0 or r[0] == "Member"
        ]
        uid = str(300_000_000_000_000_000 + 7919 * i)
        return {
            "id": uid,
            "name": name,
            "discriminator": "0000",
            "nickname": nick or name,
            "color": roles[0]["color"] if roles else None,
            "isBot": False,
            "roles": roles,
            "avatarUrl": f"{_CDN}/avatars/{uid}/{i:032x}.png?size=512",
        }

    def _date(self, when: datetime) -> str:
        return when.astimezone(self.offset).isoformat(timespec="milliseconds")

    def _emoji(self, char: str, code: str) -> dict[str, Any]:
        hexes = "-".join(f"{ord(c):x}" for c in char if ord(c) != 0xFE0F)
        return {
            "id": "",
            "name": char,
            "code": code,
            "isAnimated": False,
            "imageUrl": f"https://cdn.jsdelivr.net/gh/twitter/twemoji@latest/assets/svg/{hexes}.svg",
        }

    def message(self) -> dict[str, Any]:
        rng = self.rng
        self.clock += timedelta(milliseconds=rng.choice((900, 4_000, 15_000, 60_000, 600_000, 7_200_000)))
        self.clock += timedelta(milliseconds=rng.randint(0, 999))
        mid = _snowflake(self.clock, rng)
        r = rng.random()
        mtype = "Default"
        author = rng.choice(self.users)
        content = _text(rng)
        if r < 0.02:
            mtype = rng.choice(_SERVICE)
            content = _SERVICE_TEXT[mtype]
        elif r < 0.10 and self.recent:
            mtype = "Reply"
        elif r < 0.115:
            mtype = "ChatInputCommand"
            author = self.bot
        m: dict[str, Any] = {
            "id": mid,
            "type": mtype,
            "timestamp": self._date(self.clock),
            "timestampEdited": None,
            "callEndedTimestamp": None,
            "isPinned": rng.random() < 0.005,
            "content": content,
            "author": author,
            "attachments": [],
            "components": [],
            "embeds": [],
            "stickers": [],
            "reactions": [],
            "mentions": [],
        }
        if rng.random() < 0.05:
            edited = self.clock + timedelta(seconds=rng.randint(5, 900))
            m["timestampEdited"] = self._date(edited)
        if mtype == "Default" and rng.random() < 0.02:
            m["content"] = f"{content} <:pepe_{rng.randint(1, 9)}:{rng.randint(10**17, 10**18)}>"
        x = rng.random()
        if mtype in ("Default", "Reply") and x < 0.07:
            name = rng.choices([f[0] for f in _FILES], [f[1] for f in _FILES])[0]
            aid = _snowflake(self.clock, rng)
            m["attachments"] = [
                {
                    "id": aid,
                    "url": f"{_CDN}/attachments/{self.channel_id}/{aid}/{name}",
                    "fileName": name,
                    "fileSizeBytes": rng.randint(2_000, 8_000_000),
                }
            ]
            if rng.random() < 0.6:
                m["content"] = ""
        elif mtype == "Default" and x < 0.11:
            link = f"https://example.com/{rng.choice(_WORDS)}/{rng.randint(1, 99999)}"
            m["content"] = f"{content} {link}" if rng.random() < 0.7 else link
            m["embeds"] = [
                {
                    "title": _text(rng)[:60],
                    "url": link,
                    "timestamp": None,
                    "description": _text(rng) + " " + _text(rng),
                    "color": "#1DA1F2",
                    "thumbnail": {
                        "url": link + "/thumb.jpg",
                        "canonicalUrl": link,
                        "width": 400,
                        "height": 225,
                    },
                    "images": [],
                    "fields": [],
                    "inlineEmojis": [],
                }
            ]
        elif mtype == "Default" and x < 0.12:
            m["content"] = ""
            m["stickers"] = [
                {
                    "id": str(rng.randint(10**17, 10**18)),
                    "name": "wave",
                    "format": "Png",
                    "sourceUrl": f"{_CDN}/s.png",
                }
            ]
        if rng.random() < 0.08:
            char, code = rng.choice(_EMOJI)
            users = rng.sample(self.users, rng.randint(1, 3))
            m["reactions"] = [
                {
                    "emoji": self._emoji(char, code),
                    "count": len(users),
                    "users": [{k: v for k, v in u.items() if k != "roles"} for u in users],
                }
            ]
        if mtype == "Reply":
            target = rng.choice(self.recent[-30:])
            replied = rng.choice(self.users)
            m["mentions"] = [replied]
            m["reference"] = {
                "type": "Default",
                "messageId": target,
                "channelId": self.channel_id,
                "guildId": self.guild_id,
            }
        elif mtype == "Default" and rng.random() < 0.03:
            m["mentions"] = [rng.choice(self.users)]
            m["content"] = f"@{m['mentions'][0]['nickname']} {m['content']}"
        elif mtype == "Default" and rng.random() < 0.005:
            m["content"] = ""
            m["reference"] = {"type": "Forward", "messageId": mid, "channelId": "1", "guildId": None}
            m["forwardedMessage"] = {
                "timestamp": self._date(self.clock - timedelta(days=1)),
                "timestampEdited": None,
                "content": _text(rng),
                "attachments": [],
                "embeds": [],
                "stickers": [],
            }
        elif mtype == "ChannelPinnedMessage" and self.recent:
            m["reference"] = {
                "type": "Default",
                "messageId": rng.choice(self.recent),
                "channelId": self.channel_id,
                "guildId": self.guild_id,
            }
        elif mtype == "ChatInputCommand":
            m["interaction"] = {
                "id": _snowflake(self.clock, rng),
                "name": "roll",
                "user": rng.choice(self.users),
            }
        emojis = re.findall(r"<:(\w+):(\d+)>", m["content"])
        m["inlineEmojis"] = [
            {
                "id": eid,
                "name": name,
                "code": name,
                "isAnimated": False,
                "imageUrl": f"{_CDN}/emojis/{eid}.png",
            }
            for name, eid in emojis
        ]
        self.recent.append(mid)
        del self.recent[:-100]
        return m


def _dump(value: Any, level: int) -> str:
    """The value as DCE writes it, its lines indented to sit at `level` (2 spaces per level)."""
    text = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + "  " * level)
    return _OUTSIDE_BMP.sub(_escape_astral, text)


def write_discord_export(path: Path, n_messages: int, seed: int = 0, *, crlf: bool = False) -> None:
    """Write a deterministic DCE export of one guild channel with `n_messages` messages to `path`."""
    rng = random.Random(seed)
    guild_id, channel_id = str(500_000_000_000_000_000 + seed), str(600_000_000_000_000_000 + seed)
    offset = timezone(timedelta(hours=rng.choice((0, 0, 1, 2, -5, 9))))
    writer = _Writer(rng, channel_id, guild_id, offset)
    header = {
        "guild": {"id": guild_id, "name": "Night Owls Гильдия", "iconUrl": f"{_CDN}/icons/{guild_id}/a.png"},
        "channel": {
            "id": channel_id,
            "type": "GuildTextChat",
            "categoryId": str(int(guild_id) + 1),
            "category": "Text Channels",
            "name": "general",
            "topic": "anything goes 🦉",
        },
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2025-01-01T00:00:00.000+00:00",
    }
    newline = "\r\n" if crlf else "\n"
    with open(path, "w", encoding="utf-8", newline=newline, buffering=1 << 20) as out:
        out.write("{")
        for key, value in header.items():
            out.write(f"\n  {json.dumps(key)}: {_dump(value, 1)},")
        out.write('\n  "messages": [')
        for i in range(n_messages):
            out.write(("," if i else "") + "\n    " + _dump(writer.message(), 2))
        out.write(
            f'\n  ],\n  "messageCount": {n_messages}\n}}' if n_messages else '],\n  "messageCount": 0\n}'
        )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    if "--seed" in sys.argv:
        args.remove(str(seed))
    write_discord_export(Path(args[0]), int(args[1]), seed=seed, crlf="--crlf" in sys.argv)

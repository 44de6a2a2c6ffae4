"""Generate a realistic Telegram Desktop JSON export ("Export chat history" -> result.json).

`write_telegram_export(path, n_messages, full=False, seed=0)` writes a single-chat export (`full=False`) or a
full-account export (`personal_information`, `contacts`, `chats.list`, `left_chats.list`, ...) holding
`n_messages` messages in total. Output is deterministic for a given seed and streamed message by message, so
a 1 GB file needs no more memory than a small one. The layout copies Telegram Desktop's writer: one-space
indentation per nesting level, keys in Telegram's order, today's schema (`from_id` "user123",
`date_unixtime`, `text_entities`, `edited_unixtime`, `reactions`, `forwarded_from_id`), raw UTF-8.

    python benchmarks/gen_telegram.py out.json 1000000 [--full] [--seed N]
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

_WORD_TEXT = """
ok yes no lol haha maybe tomorrow today tonight really cool nice thanks please wait sure what why
when where who how the a to and of in is it you that he was for on are with as I his they be at one
have this from or had by hot word but some we can out other were all there use an each which she do
their time if will way about many then them write would like so these her long make thing see him
two has look more day could go come did number sound most people my over know water than call first
привет как дела хорошо спасибо пока завтра сегодня ладно давай hallo danke gut bitte 😂 👍 ❤️ 🙂 🔥
"""
_WORDS = _WORD_TEXT.split()
_NAMES = (
    "Alice",
    "Bob Marley",
    "Carol",
    "Dmitry Ivanov",
    "Eve",
    "Frank",
    "Грета",
    "Hiro Tanaka",
    "Ivy",
    "Jon Snow",
)
_ACTIONS = ("pin_message", "invite_members", "joined_telegram", "phone_call", "edit_group_title")
_STICKERS = ("😂", "👍", "❤️", "😭", "🤔", "🔥", "😎")
_NOT_INCLUDED = "(File not included. Change data exporting settings to download.)"


def _text(rng: random.Random) -> str:
    n = rng.choice((1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30))
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _fmt_date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _message(rng: random.Random, mid: int, ts: int, people: list[tuple[str, int]]) -> dict[str, Any]:
    name, uid = rng.choice(people)
    r = rng.random()
    m: dict[str, Any] = {"id": mid}
    if r < 0.03:  # service message
        action = rng.choice(_ACTIONS)
        m.update(type="service", date=_fmt_date(ts), date_unixtime=str(ts))
        m.update(actor=name, actor_id=f"user{uid}", action=action)
        if action == "pin_message":
            m["message_id"] = max(1, mid - rng.randint(1, 50))
        elif action == "invite_members":
            m["members"] = [rng.choice(people)[0]]
        elif action == "phone_call":
            m.update(duration_seconds=rng.randint(1, 900), discard_reason="hangup")
        elif action == "edit_group_title":
            m["title"] = _text(rng)[:40]
        m.update(text="", text_entities=[])
        return m
    m.update(type="message", date=_fmt_date(ts), date_unixtime=str(ts))
    if rng.random() < 0.05:
        edited = ts + rng.randint(5, 600)
        m.update(edited=_fmt_date(edited), edited_unixtime=str(edited))
    m.update({"from": name, "from_id": f"user{uid}"})
    if rng.random() < 0.03:
        fname, fuid = rng.choice(people)
        m.update(forwarded_from=fname, forwarded_from_id=f"user{fuid}")
    if rng.random() < 0.10 and mid > 1:
        m["reply_to_message_id"] = max(1, mid - rng.randint(1, 30))
    text: str | list[Any] = _text(rng)
    entities: list[dict[str, Any]] = [{"type": "plain", "text": text}]
    if r < 0.08:  # photo, with a caption sometimes
        m.update(photo=_NOT_INCLUDED if rng.random() < 0.5 else f"photos/photo_{mid}@01-01-2023_12-00-00.jpg")
        m.update(photo_file_size=rng.randint(10_000, 900_000), width=1280, height=960)
        if rng.random() < 0.7:
            text, entities = "", []
    elif r < 0.11:  # sticker
        m.update(file=_NOT_INCLUDED, thumbnail=_NOT_INCLUDED, media_type="sticker")
        m.update(sticker_emoji=rng.choice(_STICKERS), width=512, height=512)
        text, entities = "", []
    elif r < 0.13:  # voice message
        m.update(file=f"voice_messages/audio_{mid}@01-01-2023_12-00-00.ogg", file_size=41234)
        m.update(media_type="voice_message", mime_type="audio/ogg", duration_seconds=rng.randint(1, 120))
        text, entities = "", []
    elif r < 0.14:  # video / GIF
        kind = rng.choice(("video_file", "animation", "video_message"))
        m.update(file=_NOT_INCLUDED, thumbnail=_NOT_INCLUDED, media_type=kind, mime_type="video/mp4")
        m.update(duration_seconds=rng.randint(1, 300), width=640, height=480)
        text, entities = "", []
    elif r < 0.22:  # formatted text: a list of strings and entity objects
        word = rng.choice(_WORDS)
        link = f"https://example.com/{word}/{mid}"
        head, tail = _text(rng), _text(rng)
        ent = rng.choice(
            (
                {"type": "link", "text": link},
                {"type": "bold", "text": word},
                {"type": "mention", "text": "@" + word},
                {"type": "text_link", "text": word, "href": link},
                {"type": "code", "text": word},
            )
        )
        text = [head + " ", ent, " " + tail]
        entities = [{"type": "plain", "text": head + " "}, ent, {"type": "plain", "text": " " + tail}]
    m["text"] = text
    m["text_entities"] = entities
    if rng.random() < 0.02:
        rname, ruid = rng.choice(people)
        m["reactions"] = [
            {
                "type": "emoji",
                "count": 1,
                "emoji": rng.choice(_STICKERS),
                "recent": [{"from": rname, "from_id": f"user{ruid}", "date": _fmt_date(ts + 60)}],
            }
        ]
    return m


def _indent(value: Any, level: int) -> str:
    """json.dumps with one-space indentation, shifted to sit at `level` like Telegram's writer."""
    return json.dumps(value, indent=1, ensure_ascii=False).replace("\n", "\n" + " " * level)


def _write_chat(
    out: TextIO, rng: random.Random, chat: dict[str, Any], n: int, level: int, people: list[tuple[str, int]]
) -> None:
    pad = " " * (level + 1)
    out.write("{")
    for key in ("name", "type", "id"):
        if key in chat:
            out.write(f"\n{pad}{json.dumps(key)}: {json.dumps(chat[key], ensure_ascii=False)},")
    out.write(f'\n{pad}"messages": [')
    ts = 1_600_000_000 + rng.randint(0, 10_000_000)
    mpad = " " * (level + 2)
    for i in range(n):
        ts += rng.choice((1, 3, 10, 30, 60, 120, 600, 3600, 20000))
        out.write(("," if i else "") + "\n" + mpad + _indent(_message(rng, i + 1, ts, people), level + 2))
    out.write(f"\n{pad}]\n{' ' * level}}}")


def _chat_sizes(rng: random.Random, n: int) -> list[int]:
    """Chat sizes that add up to n: a few big chats and a long tail of small ones."""
    k = max(3, min(200, n // 5000 + 3))
    weights = [rng.paretovariate(1.2) for _ in range(k)]
    total = sum(weights)
    sizes = [int(n * w / total) for w in weights]
    sizes[0] += n - sum(sizes)
    return sizes


def write_telegram_export(path: Path, n_messages: int, full: bool = False, seed: int = 0) -> None:
    """Write a deterministic Telegram Desktop export with `n_messages` messages to `path`."""
    rng = random.Random(seed)
    me = ("Me Myself", 777_000_001)
    people = [(name, 100_000_000 + 7919 * i) for i, name in enumerate(_NAMES)]
    with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
        if not full:
            chat = {"name": "Alice", "type": "personal_chat", "id": people[0][1]}
            _write_chat(out, rng, chat, n_messages, 0, [people[0], me])
            out.write("\n")
            return
        out.write('{\n "about": "Here is the data you requested.",\n "personal_information": ')
        info = {"user_id": me[1], "first_name": "Me", "last_name": "Myself", "phone_number": "+1 555 0100"}
        out.write(_indent(info, 1) + ',\n "profile_pictures": ' + _indent([], 1))
        contacts = [
            {"user_id": uid, "first_name": name, "last_name": "", "phone_number": "+1 555 0199"}
            for name, uid in people
        ]
        out.write(',\n "contacts": ' + _indent({"about": "Contacts.", "list": contacts}, 1))
        frequent = [
            {"id": uid, "category": "people", "type": "user", "name": name, "rating": 0.5}
            for name, uid in people
        ]
        out.write(',\n "frequent_contacts": ' + _indent({"about": "Frequent.", "list": frequent}, 1))
        sizes = _chat_sizes(rng, n_messages)
        types = ("personal_chat", "private_group", "private_supergroup", "public_channel", "bot_chat")
        split = len(sizes) - max(1, len(sizes) // 10)
        for section, chunk, first in (("chats", sizes[:split], 0), ("left_chats", sizes[split:], split)):
            out.write(f',\n "{section}": {{\n  "about": "This is the list of {section}.",\n  "list": [')
            for j, size in enumerate(chunk):
                if section == "chats" and j == 1:
                    chat: dict[str, Any] = {"type": "saved_messages", "id": me[1]}
                    members = [me]
                elif section == "chats" and j == 0:
                    chat = {"name": people[0][0], "type": "personal_chat", "id": people[0][1]}
                    members = [people[0], me]
                else:
                    ctype = "private_supergroup" if section == "left_chats" else types[j % len(types)]
                    # chat ids unique across both lists, as in a real export
                    chat = {"name": _text(rng)[:30], "type": ctype, "id": 1_000_000_000 + 101 * (first + j)}
                    members = [*rng.sample(people, 4), me]
                out.write(("," if j else "") + "\n   ")
                _write_chat(out, rng, chat, size, 3, members)
            out.write("\n  ]\n }")
        out.write("\n}\n")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    if "--seed" in sys.argv:
        args.remove(str(seed))
    write_telegram_export(Path(args[0]), int(args[1]), full="--full" in sys.argv, seed=seed)

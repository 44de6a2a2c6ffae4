"""Telegram Desktop JSON exports ("Export chat history" -> result.json).

Two shapes: a single-chat export (`{name, type, id, messages: [...]}`; Saved Messages has no `name`) and a
full-account export (`personal_information`, `contacts`, ..., `chats.list[]`, `left_chats.list[]`, each chat
`{name, type, id, messages: [...]}`). Two schemas: the 2020 one (integer `from_id`, local `date` only) and
today's (`from_id` "user123", `date_unixtime`, `text_entities`, `edited_unixtime`, `reactions`, ...).

Ids: conversation id = str(chat id) ("saved<id>" for Saved Messages), message id = "<conversation id>:<message
id>" (message ids are per chat; groups migrated to supergroups keep their old messages under negative ids).
Author ids: `from_id` as written ("user123", "channel123"); the 2020 schema's integer ids become "user<id>".
The exporter's own id ("user<id>", from `personal_information.user_id`, or the Saved Messages chat id) is
every conversation's `owner_id` (so `twinlm people` knows who "me" is) and returned by `exporter_id()`.

Exports reach gigabytes and are streamed with `_jsonstream` (see there for why its scanner is hand-written):
the walker here goes through the few structural levels (top object, chat lists, chat objects) itself and
hands each chat's `messages` array to `Stream.batches`, which parses them in orjson batches of ~64 KiB.
Memory stays flat: one buffer and one batch of messages at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, tzinfo
from itertools import chain
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources._common import clip, in_slices, new_message, stable_id, track
from twinlm.sources._jsonstream import Stream, key_path, open_stream
from twinlm.sources.whatsapp import LOCAL_TIME_NOTE

FORMAT = "telegram"

_CHAT_TYPES = (
    "personal_chat|private_group|private_supergroup|public_supergroup|public_channel|private_channel"
    "|bot_chat|saved_messages|replies"
)
_SNIFF_FULL = re.compile(r'"personal_information"\s*:\s*\{')
_SNIFF_TYPE = re.compile(r'"type"\s*:\s*"(?:' + _CHAT_TYPES + r')"')
_SNIFF_MESSAGES = re.compile(r'"messages"\s*:\s*\[')
_SNIFF_MESSAGE = re.compile(r'"type"\s*:\s*"(?:message|service)"\s*,\s*"date(?:_unixtime)?"\s*:')
_TITLES = {"saved_messages": "Saved Messages", "replies": "Replies"}
_MEDIA = {
    "voice_message": "voice message",
    "video_message": "video message",
    "video_file": "video",
    "animation": "GIF",
    "audio_file": "audio",
}
_MISSING = object()


def looks_like(head: str, path: Path) -> bool:
    """A Telegram Desktop result.json: a full export, or one chat with a Telegram chat type and messages."""
    text = head.lstrip()
    if not text.startswith("{"):
        return False
    if _SNIFF_FULL.search(text) and ('"chats"' in text or '"about"' in text or '"user_id"' in text):
        return True
    if not _SNIFF_MESSAGES.search(text):
        return False
    return bool(_SNIFF_TYPE.search(text) or _SNIFF_MESSAGE.search(text))


def exporter_id(path: Path) -> str | None:
    """The exporting account's id ("user123") from a full export's `personal_information`, else None.

    Reads only the start of the file (personal_information precedes the chats in real exports). For a
    single-chat export of Saved Messages, parse() puts the chat's id there instead (see platform_detail).
    """
    try:
        with open_stream(path) as f:
            s = Stream(path, f, ParseReport())
            if s.peek() != 0x7B:  # "{"
                return None
            s.pos += 1
            for key in s.keys("top level"):
                if key == "personal_information":
                    return _exporter(s.value(key))
                if key in ("chats", "left_chats", "messages"):
                    return None
                s.skip(key)
    except (ExportError, OSError):
        return None
    return None


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    try:
        f = track(open_stream(path))
    except OSError as e:
        raise ExportError(path, f"cannot read the file ({e.strerror or e})") from None
    with f:
        s = Stream(path, f, report)
        c = s.peek()
        if c < 0:
            raise ExportError(path, "empty file: not a Telegram export")
        if c != 0x7B:
            raise ExportError(path, "not a Telegram export: the file is not a JSON object", s.at())
        yield from _Walker(path, options, report).chat(s, "", top=True)
        s.finish("object")


def _nameless(header: dict[str, Any]) -> bool:
    """Saved Messages and Replies chats have no name key."""
    ctype = header.get("type")
    return isinstance(ctype, str) and ctype in _TITLES


def _exporter(info: Any) -> str | None:
    uid = info.get("user_id") if isinstance(info, dict) else None
    num = _num(uid)
    return f"user{num}" if num else None


def _num(value: Any) -> str | None:
    """A Telegram id as a string of digits (negative allowed), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return value
    return None


class _Clock:
    """Local `date` strings (exports without `date_unixtime`) to UTC, in options.timezone; one per chat.

    A local time inside a repeated hour (DST fall-back) has two readings. The first is taken unless it
    would put the message before the chat's previous one; then the second is: the export's message
    order decides, as in the WhatsApp parser. Without a zone, this machine's is used, noted once per file.
    """

    def __init__(self, path: Path, timezone: str | None, report: ParseReport) -> None:
        self.path = path
        self.name = timezone
        self.report = report
        self.zone: tzinfo | None = None
        self.last: datetime | None = None  # the chat's previous local-time message, in UTC

    def __call__(self, date: str) -> datetime:
        dt = datetime.fromisoformat(date)
        if dt.tzinfo is not None:
            self.last = dt.astimezone(UTC)
            return self.last
        if self.name is None:
            if LOCAL_TIME_NOTE not in self.report.notes:
                self.report.note(LOCAL_TIME_NOTE)
        elif self.zone is None:
            try:
                self.zone = ZoneInfo(self.name)
            except (ValueError, KeyError) as e:
                raise ExportError(self.path, f"unknown timezone {self.name!r} ({e})") from None
        if self.zone is not None:
            dt = dt.replace(tzinfo=self.zone)  # naive = this machine's local time
        utc = dt.astimezone(UTC)
        if self.last is not None and utc < self.last:
            utc = max(utc, dt.replace(fold=1).astimezone(UTC))  # later only inside a repeated hour
        self.last = utc
        return utc


class _Walker:
    """Walks the object structure (top level, chat lists, chats) and streams each chat's messages."""

    def __init__(self, path: Path, options: ParseOptions, report: ParseReport) -> None:
        self.path = path
        self.options = options
        self.report = report
        self.exporter: str | None = None  # "user123"

    def chat(self, s: Stream, where: str, top: bool = False, left: bool = False) -> Iterator[Conversation]:
        """A chat object (or the top-level object: a single-chat export, or a full export) at the cursor."""
        s.pos += 1
        header: dict[str, Any] = {}
        deferred: list[tuple[int, str, bytes | None]] = []
        found = False
        for key in s.keys(where or "top level"):
            if key == "messages":
                found = True
                if s.peek() != 0x5B:
                    s.skip(key_path(where, key))
                    self.report.skip("malformed chat")
                elif "id" in header and "type" in header and ("name" in header or _nameless(header)):
                    yield from self.emit(s, header, where, left, s.line_indent())
                else:  # a header key comes after the messages (not so in real exports): come back later
                    indent = s.line_indent()
                    deferred.append((s.offset + s.pos, where, indent))
                    s.report = ParseReport()  # this pass only skips: the second one counts notes
                    for _ in s.batches(key_path(where, key), indent):
                        pass
                    s.report = self.report
            elif key in ("name", "type", "id"):
                header[key] = s.value(key_path(where, key))
            elif top and key == "personal_information":
                found = True
                self.exporter = _exporter(s.value(key))
            elif top and key in ("chats", "left_chats"):
                found = True
                yield from self.chat_list(s, key)
            else:
                s.skip(key_path(where, key))
        if top and deferred and "type" not in header and "id" not in header:
            raise ExportError(self.path, "messages without a chat type or id: not a Telegram export")
        for offset, at, indent in deferred:
            with open(self.path, "rb") as f:
                f.seek(offset)
                yield from self.emit(Stream(self.path, f, self.report), header, at, left, indent)
        if top and not found:
            raise ExportError(self.path, "no chats or messages: not a Telegram export")

    def chat_list(self, s: Stream, key: str) -> Iterator[Conversation]:
        """`chats` / `left_chats`: {"about": ..., "list": [chat, ...]}."""
        if s.peek() != 0x7B:
            s.skip(key)
            self.report.skip("malformed chat list")
            return
        s.pos += 1
        for name in s.keys(key):
            if name != "list":
                s.skip(f"{key}.{name}")
            elif s.peek() != 0x5B:
                s.skip(f"{key}.list")
                self.report.skip("malformed chat list")
            else:
                s.pos += 1
                for i in s.items(f"{key}.list"):
                    if s.peek() == 0x7B:
                        yield from self.chat(s, f"{key}.list[{i}]", left=key == "left_chats")
                    else:
                        s.skip(f"{key}.list[{i}]")
                        self.report.skip("malformed chat")

    def emit(
        self, s: Stream, header: dict[str, Any], where: str, left: bool, indent: bytes | None
    ) -> Iterator[Conversation]:
        """The conversation of one chat, its messages streamed from the array at the cursor."""
        ctype = header.get("type") if isinstance(header.get("type"), str) else None
        num = _num(header.get("id"))
        exporter = self.exporter
        if ctype == "saved_messages":
            if exporter is None and num:
                exporter = f"user{num}"  # Saved Messages is the chat with oneself
            conv_id = "saved" + (num or (exporter or "")[4:])
        else:
            conv_id = num or "chat-" + stable_id(ctype, header.get("name"))
        name = header.get("name")
        title = name if isinstance(name, str) else _TITLES.get(ctype or "", "")
        detail = [ctype or "unknown"]
        if left:
            detail.append("left chat")
        template = Conversation(
            FORMAT, conv_id, title, "chat", (), platform_detail="; ".join(detail), owner_id=exporter
        )
        messages = self.messages(s.batches(key_path(where, "messages"), indent), conv_id, num, title, ctype)
        yield from in_slices(template, messages, self.options, self.report)

    def messages(
        self, batches: Iterator[list[Any]], conv_id: str, num: str | None, title: str, ctype: str | None
    ) -> Iterator[Message]:
        """The chat's messages: each parsed batch converted in one call, then chained at C speed."""
        return chain.from_iterable(map(self.converter(conv_id, num, title, ctype), batches))

    def converter(
        self, conv_id: str, num: str | None, title: str, ctype: str | None
    ) -> Callable[[list[Any]], list[Message]]:
        """A function from parsed message objects to Messages (the hot loop: keep it lean)."""
        options, report = self.options, self.report
        skip = report.skip
        prefix = conv_id + ":"
        max_chars = options.max_message_chars
        drop = options.media == "drop"
        fromts, utc, make = datetime.fromtimestamp, UTC, new_message
        clock = _Clock(self.path, options.timezone, report)  # per chat: its messages' order resolves DST
        text_kind, participant = Kind.TEXT, Role.PARTICIPANT
        channel = ctype is not None and ctype.endswith("channel")
        me = self.exporter[4:] if self.exporter else None
        user_ids: dict[int, str] = {}

        def convert(batch: list[Any]) -> list[Message]:
            out: list[Message] = []
            append = out.append
            for m in batch:
                if m.__class__ is not dict:
                    skip("malformed message")
                    continue
                mtype = m.get("type")
                if mtype != "message":
                    skip(_service_reason(m) if mtype == "service" else "unsupported message")
                    continue
                try:
                    text = m.get("text")
                    if text.__class__ is not str:
                        text = _flatten(m, text)
                    kind = text_kind
                    if not text or text.isspace():
                        media = _media(m)
                        if media is None:
                            skip("empty message")
                            continue
                        if drop:
                            skip(f"media dropped ({media[0]})")
                            continue
                        _, kind, text = media
                    unix = m.get("date_unixtime")
                    ts = fromts(int(unix), utc) if unix is not None else clock(m["date"])
                    mid = m["id"]
                    if mid.__class__ is not int:
                        mid = _message_id(mid)
                    author_id = m.get("from_id")
                    if author_id.__class__ is not str:
                        if author_id.__class__ is int:
                            author_id = user_ids.get(author_id) or _user(user_ids, author_id)
                        else:
                            author_id = None
                    author = m.get("from")
                    if author.__class__ is not str or not author:
                        author = "Deleted Account" if author_id else (title if channel else "unknown")
                    reply = m.get("reply_to_message_id")
                    if reply is not None:
                        reply = _reply(m, reply, prefix, num, me)
                    forwarded = None
                    if "forwarded_from" in m or "saved_from" in m:
                        forwarded = m.get("forwarded_from", _MISSING)
                        if forwarded is _MISSING:
                            forwarded = m.get("saved_from")
                        if forwarded.__class__ is not str:
                            forwarded = "unknown"
                    if len(text) > max_chars and kind is text_kind:
                        text = clip(text, options, report)
                    message = make(
                        prefix + str(mid),
                        author_id or author,
                        author,
                        ts,
                        text,
                        kind,
                        participant,
                        reply,
                        forwarded,
                        "edited" in m or "edited_unixtime" in m,
                    )
                except (KeyError, TypeError, ValueError, OverflowError, OSError, AttributeError):
                    skip("malformed message")
                    continue
                append(message)
            return out

        return convert


def _service_reason(m: dict[str, Any]) -> str:
    action = m.get("action")
    if isinstance(action, str) and action:
        return f"service message ({action[:40]})"
    return "service message (custom_action)" if "information_text" in m else "service message (unknown)"


def _flatten(m: dict[str, Any], text: Any) -> str:
    """`text` as a list of strings and entity objects ({type, text, ...}): the visible text, joined."""
    if text is None:
        text = m.get("text_entities")
        if text is None:
            return ""
    if text.__class__ is not list:
        raise TypeError("text")
    parts = []
    for part in text:
        if part.__class__ is str:
            parts.append(part)
        else:
            value = part["text"]
            if value.__class__ is not str:
                raise TypeError("text")
            parts.append(value)
    return "".join(parts)


def _media(m: dict[str, Any]) -> tuple[str, Kind, str] | None:
    """(what, kind, placeholder text) for a message without text, or None when it carries nothing."""
    media_type = m.get("media_type")
    if media_type is not None:
        if media_type == "sticker":
            emoji = m.get("sticker_emoji")
            return "sticker", Kind.STICKER, emoji if isinstance(emoji, str) and emoji else "[sticker]"
        what = _MEDIA.get(media_type, "file") if isinstance(media_type, str) else "file"
        return what, Kind.MEDIA, f"[{what}]"
    if "photo" in m:
        return "photo", Kind.MEDIA, "[photo]"
    if "file" in m:
        return "file", Kind.MEDIA, "[file]"
    poll = m.get("poll")
    if poll is not None:
        question = poll.get("question") if isinstance(poll, dict) else None
        return "poll", Kind.MEDIA, f"[poll: {question}]" if _nonempty(question) else "[poll]"
    todo = m.get("todo_list")
    if todo is not None:
        title = todo.get("title") if isinstance(todo, dict) else None
        return "todo list", Kind.MEDIA, f"[todo list: {title}]" if _nonempty(title) else "[todo list]"
    for key, what in _OTHER_MEDIA:
        if m.get(key) is not None:
            return what, Kind.MEDIA, f"[{what}]"
    return None


_OTHER_MEDIA = (
    ("contact_information", "contact"),
    ("contact_vcard", "contact"),
    ("location_information", "location"),
    ("place_name", "location"),
    ("game_title", "game"),
    ("invoice_information", "invoice"),
    ("giveaway_information", "giveaway"),
    ("giveaway_results", "giveaway results"),
    ("paid_stars_amount", "paid media"),
)


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _user(cache: dict[int, str], uid: int) -> str:
    """The 2020 schema's integer from_id as today's "user123" (cached: there are few authors)."""
    cache[uid] = author_id = f"user{uid}"
    return author_id


def _message_id(mid: Any) -> int:
    if isinstance(mid, str) and mid.lstrip("-").isdigit():
        return int(mid)
    raise TypeError("id")


def _reply(m: dict[str, Any], reply: Any, prefix: str, num: str | None, me: str | None) -> str:
    """reply_to: the same chat's message, or another chat's when reply_to_peer_id names a different chat."""
    if reply.__class__ is not int:
        reply = _message_id(reply)
    peer = m.get("reply_to_peer_id")
    if isinstance(peer, str):
        other = peer.lstrip("abcdefghijklmnopqrstuvwxyz")
        if other.isdigit() and other != num:
            # A reply across chats ("reply in another chat", comments to channel posts): that chat's id.
            return f"{'saved' if other == me else ''}{other}:{reply}"
    return f"{prefix}{reply}"

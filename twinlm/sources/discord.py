"""DiscordChatExporter (DCE) JSON: one file per channel, DM, group DM or thread.

Shape (all DCE versions since JSON export exists)::

    {"guild": {"id", "name", ...}, "channel": {"id", "type", "categoryId", "category", "name", ...},
     "dateRange": {...}, "exportedAt": "...", "messages": [{...}, ...], "messageCount": N}

Older DCE versions lack `timestampEdited`, `callEndedTimestamp`, `categoryId`/`category`,
`author.nickname`, sometimes `author.isBot`, and write local-time offsets ("+02:00"); newer ones
add `author.roles`, `inlineEmojis`, `interaction`, `components`, `forwardedMessage` and
`reference.type`.

Exports reach gigabytes (one channel's whole history, ~1.3 KB per message) and are streamed with
`_jsonstream` (see there for why its scanner is hand-written): the top-level object is walked key
by key, the header objects are read, and the `messages` array goes to `Stream.batches`, which
parses DCE's two-space layout in orjson batches of ~64 KiB. Memory stays flat: one buffer and
one batch of messages at a time. The header comes before the messages in DCE's output; re-saved
files with sorted keys put it after them, and those messages are read again once it is known.

Message ids are Discord snowflakes, namespaced by channel ("<channel id>:<message id>") so that
anonymised or hand-edited exports that reuse ids across files cannot collide in the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources._common import clip, in_slices, media_message, new_message, placeholder, track
from twinlm.sources._jsonstream import Stream, open_stream

FORMAT = "discord"

_GUILD_KEY = re.compile(r'"guild"\s*:\s*\{')
_CHANNEL_KEY = re.compile(r'"channel"\s*:\s*\{')

# Message types that are a person talking. DCE writes MessageKind.ToString(): names for the kinds
# it knows, the Discord API number for the others (e.g. "20" for a slash-command reply).
_USER_TYPES = frozenset({"Default", "Reply", "0", "19"})
_REPLY_TYPES = frozenset({"Reply", "19"})

# Everything else is left out and counted under a readable reason.
_SERVICE_REASONS: dict[str, str] = {
    "RecipientAdd": "recipient added",
    "RecipientRemove": "recipient removed",
    "Call": "call",
    "ChannelNameChange": "channel renamed",
    "ChannelIconChange": "channel icon changed",
    "ChannelPinnedMessage": "pin",
    "GuildMemberJoin": "member joined",
    "UserPremiumGuildSubscription": "boost",
    "GuildBoost": "boost",
    "GuildBoostTier1": "boost",
    "GuildBoostTier2": "boost",
    "GuildBoostTier3": "boost",
    "ChannelFollowAdd": "channel followed",
    "ThreadCreated": "thread created",
    "ThreadStarterMessage": "thread starter",
    "GuildInviteReminder": "invite reminder",
    "AutoModerationAction": "automod",
    # Discord API numbers, as DCE writes kinds its enum does not name.
    "1": "recipient added",
    "2": "recipient removed",
    "3": "call",
    "4": "channel renamed",
    "5": "channel icon changed",
    "6": "pin",
    "7": "member joined",
    "8": "boost",
    "9": "boost",
    "10": "boost",
    "11": "boost",
    "12": "channel followed",
    "14": "guild discovery",
    "15": "guild discovery",
    "16": "guild discovery",
    "17": "guild discovery",
    "18": "thread created",
    "21": "thread starter",
    "22": "invite reminder",
    "24": "automod",
    "25": "role subscription",
    "32": "poll result",
    "46": "poll result",
}
# Bot interactions: the message is the bot's answer to a slash command / context-menu command.
_COMMAND_TYPES = frozenset({"ChatInputCommand", "ContextMenuCommand", "20", "23"})

_THREAD_TYPES = frozenset({"GuildNewsThread", "GuildPublicThread", "GuildPrivateThread"})
_DM_TYPES = frozenset({"DirectTextChat"})
_GROUP_TYPES = frozenset({"DirectGroupTextChat"})

_IMAGE_EXT = frozenset(
    {"png", "jpg", "jpeg", "gif", "webp", "bmp", "heic", "heif", "tif", "tiff", "svg", "avif"}
)
_VIDEO_EXT = frozenset({"mp4", "mov", "webm", "mkv", "avi", "m4v", "wmv", "flv", "3gp"})
_AUDIO_EXT = frozenset({"mp3", "ogg", "oga", "opus", "wav", "flac", "m4a", "aac", "wma"})

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
# The header values kept, by object: scalars only, written as text (numbers and booleans too).
_HEADER_FIELDS = {
    "guild": frozenset({"id", "name"}),
    "channel": frozenset({"id", "type", "categoryId", "category", "name"}),
}
_NOT_DCE = "not a DiscordChatExporter export"
_VALUE_START = frozenset(b'["-0123456789tfn')  # bytes a JSON value other than an object starts with


def looks_like(head: str, path: Path) -> bool:
    """A JSON object with DCE's `guild` and `channel` header objects and a messages array."""
    if not head.lstrip().startswith("{"):
        return False
    if not (_GUILD_KEY.search(head) and _CHANNEL_KEY.search(head)):
        return False
    return '"messages"' in head or '"dateRange"' in head


@dataclass(frozen=True, slots=True)
class _Channel:
    id: str
    title: str
    detail: str


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    with track(open_stream(path)) as f:
        try:
            yield from _Reader(path, Stream(path, f, report), options, report).conversations()
        except RecursionError:
            raise ExportError(path, "JSON nested too deeply") from None


class _Reader:
    """Walks the top-level object: header objects first, then the messages array(s)."""

    def __init__(self, path: Path, s: Stream, options: ParseOptions, report: ParseReport) -> None:
        self.path = path
        self.s = s
        self.options = options
        self.report = report
        self.zone = _Zone(path, options)
        # (author id, username) where the display name is a nickname: the corpus keeps both names.
        self.usernames: set[tuple[str, str]] = set()

    def conversations(self) -> Iterator[Conversation]:
        path, s = self.path, self.s
        c = s.peek()
        if c != 0x7B:  # "{"
            if c < 0:
                raise ExportError(path, f"empty file (no JSON value): {_NOT_DCE}", s.at())
            if c in _VALUE_START:
                raise ExportError(path, f"{_NOT_DCE}: top level is not an object", s.at())
            s.unexpected(c, '"{"', "")
        s.pos += 1
        fields: dict[str, str] = {}
        done: set[str] = set()  # header objects read
        deferred: list[int] = []  # messages arrays met before the header was whole
        keys = s.keys("top level")
        at_messages = False
        for key in keys:
            c = s.peek()
            if key in _HEADER_FIELDS and c == 0x7B and not (deferred and len(done) == 2):
                self._header(key, fields)
                done.add(key)
            elif key == "messages" and c == 0x5B:  # "["
                if len(done) == 2:
                    # Streamed by _messages from here; `keys` then goes on with the rest of the object.
                    at_messages = True
                    break
                # Checked now, converted once the header is known: notes (repaired escapes) are
                # counted then, so this first reading counts them nowhere.
                deferred.append(s.offset + s.pos)
                s.report = ParseReport()
                for _ in _batches(s):
                    pass
                s.report = self.report
            else:
                s.skip(key)
        if "channel" not in done or not fields.get("channel.id"):
            raise ExportError(path, f"{_NOT_DCE}: no channel header with an id")
        if not (at_messages or deferred):
            raise ExportError(path, f"{_NOT_DCE}: no messages array")
        channel = _describe(fields)
        template = Conversation(FORMAT, channel.id, channel.title, "chat", (), platform_detail=channel.detail)
        messages = self._messages(keys if at_messages else None, deferred, channel.id)
        for part in in_slices(template, messages, self.options, self.report):
            # The usernames met while converting this slice (a batch ahead at most) travel with it.
            if self.usernames:
                part = replace(part, author_names=tuple(sorted(self.usernames)))
                self.usernames.clear()
            yield part

    def _header(self, name: str, fields: dict[str, str]) -> None:
        """A `guild` or `channel` object at the cursor: its wanted scalar fields go to `fields`.

        Key by key, so that duplicate keys and objects merge as they always have: a later scalar
        replaces an earlier one, a null or nested value leaves it."""
        s = self.s
        s.pos += 1
        wanted = _HEADER_FIELDS[name]
        for key in s.keys(name):
            where = f"{name}.{key}"
            if key not in wanted:
                s.skip(where)
                continue
            value = s.value(where)
            if value is not None and value.__class__ is not dict and value.__class__ is not list:
                fields[where] = str(value)

    def _messages(
        self, keys: Iterator[str] | None, deferred: list[int], channel_id: str
    ) -> Iterator[Message]:
        """Every messages array in file order: those met before the header was whole (read again),
        then the one at the cursor and any later ones. Each parsed batch is converted in one call
        and the results chained at C speed."""
        convert = self._converter(channel_id)
        for offset in deferred:
            with open(self.path, "rb") as f:
                f.seek(offset)
                yield from chain.from_iterable(map(convert, _batches(Stream(self.path, f, self.report))))
        s = self.s
        if keys is not None:
            yield from chain.from_iterable(map(convert, _batches(s)))
            for key in keys:
                if key == "messages" and s.peek() == 0x5B:
                    yield from chain.from_iterable(map(convert, _batches(s)))
                else:
                    s.skip(key)
        s.finish("object")

    def _converter(self, channel_id: str) -> Callable[[list[Any]], list[Message]]:
        """A function from parsed message objects to Messages: the hot loop, so it is kept flat, with
        exact-type checks where the JSON decoders only ever give exact types."""
        options, report, zone = self.options, self.report, self.zone
        skip = report.skip
        prefix = channel_id + ":"
        max_chars = options.max_message_chars
        fromiso, utc, text_kind, participant = datetime.fromisoformat, UTC, Kind.TEXT, Role.PARTICIPANT
        user_types, make = _USER_TYPES, new_message  # Message(...) at ~60% of the cost
        usernames = self.usernames

        def convert(batch: list[Any]) -> list[Message]:
            out: list[Message] = []
            append = out.append
            for m in batch:
                if m.__class__ is not dict:
                    skip("malformed message")
                    continue
                try:
                    mtype = m.get("type")
                    if mtype.__class__ is not str:
                        mtype = "Default" if mtype is None else str(mtype)
                    if mtype not in user_types:
                        skip(_skip_reason(mtype))
                        continue
                    author = m.get("author")
                    if author.__class__ is not dict:
                        skip("malformed message")
                        continue
                    if author.get("isBot") is True or m.get("interaction").__class__ is dict:
                        skip("bot author")
                        continue
                    native_id = m.get("id")
                    native_id = native_id.strip() if native_id.__class__ is str else _text_id(native_id)
                    author_id = author.get("id")
                    author_id = author_id.strip() if author_id.__class__ is str else _text_id(author_id)
                    if not native_id or not author_id:
                        skip("malformed message")
                        continue
                    raw_time = m.get("timestamp")
                    try:  # the common case inline: an ISO time with an offset, no spaces around it
                        timestamp = fromiso(raw_time)
                        if timestamp.tzinfo is None:
                            raise ValueError
                        timestamp = timestamp.astimezone(utc)
                    except (TypeError, ValueError, OverflowError):
                        timestamp = _timestamp(raw_time, zone)
                        if timestamp is None:
                            skip("malformed message (timestamp)")
                            continue

                    content = m.get("content")
                    if content.__class__ is str and content and not content.isspace():
                        text, kind, forwarded_from = content, text_kind, None
                        attachments, stickers = m.get("attachments"), m.get("stickers")
                        if attachments or stickers:
                            text = _with_media(text, _media_kinds(attachments, stickers), options, report)
                    else:
                        body = _blank(m, options, report)
                        if body is None:
                            continue
                        text, kind, forwarded_from = body
                    if len(text) > max_chars:
                        text = clip(text, options, report)

                    reference = m.get("reference")
                    reply_to = None if reference is None else _reply_to(reference, mtype, channel_id)
                    username = author.get("name")
                    name = author.get("nickname") or username or author_id
                    if name.__class__ is not str:
                        name = str(name)
                    if username and username != name and username.__class__ is str:
                        usernames.add((author_id, username))
                    message = make(
                        prefix + native_id,
                        author_id,
                        name,
                        timestamp,
                        text,
                        kind,
                        participant,
                        reply_to,
                        forwarded_from,
                        bool(m.get("timestampEdited")),
                    )
                except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
                    skip("malformed message")
                    continue
                append(message)
            return out

        return convert


def _batches(s: Stream) -> Iterator[list[Any]]:
    """The elements of the `messages` array at the cursor, in parsed batches.

    Without the array's indentation on purpose: given it, every batch first searches its 64 KiB for the
    array's closing line ("\\n  ]"), and the ~7 empty arrays ("[]") DCE writes per message make that
    search slow (~1 GB/s; 8% of the parse time). Without it the batches stop at the last message's
    closing line ("\\n    }\\n") just the same, and a batch that ran past the array would not parse."""
    return s.batches("messages", None)


def _describe(fields: dict[str, str]) -> _Channel:
    """Title and platform detail from the header: "Guild / #channel", "DM with X", group DMs."""
    channel_id = fields["channel.id"]
    ctype = fields.get("channel.type", "")
    name = fields.get("channel.name", "").strip()
    guild = fields.get("guild.name", "").strip()
    parent = fields.get("channel.category", "").strip()
    direct = fields.get("guild.id") == "0" or ctype in _DM_TYPES or ctype in _GROUP_TYPES
    if ctype in _GROUP_TYPES:
        return _Channel(channel_id, name or "group DM", "group DM")
    if direct:
        return _Channel(channel_id, f"DM with {name}" if name else "DM", "DM")
    if ctype in _THREAD_TYPES:
        where = f"{guild} / #{parent}" if parent else guild
        return _Channel(channel_id, f"{where} / {name or channel_id}", f"thread in #{parent or '?'}")
    return _Channel(channel_id, f"{guild} / #{name or channel_id}", "guild channel")


class _Zone:
    """options.timezone (or the machine's zone), resolved on first use: only exports whose
    timestamps lack an offset need it, and a bad name is then a clear error, not a skip."""

    def __init__(self, path: Path, options: ParseOptions) -> None:
        self._path = path
        self._name = options.timezone
        self._zone: tzinfo | None = None

    def get(self) -> tzinfo:
        if self._zone is None:
            if self._name is None:
                self._zone = datetime.now().astimezone().tzinfo or UTC
            else:
                try:
                    self._zone = ZoneInfo(self._name)
                except (ZoneInfoNotFoundError, ValueError):
                    raise ExportError(self._path, f"unknown timezone {self._name!r} in options") from None
        return self._zone


def _with_media(content: str, media: list[str], options: ParseOptions, report: ParseReport) -> str:
    """A text message's content with placeholders for its attachments and stickers, if any."""
    if not media:
        return content
    if options.media == "drop":
        report.note("media placeholder dropped from a text message")
        return content
    return "\n".join([content, *(placeholder(k) for k in media)])


def _blank(
    m: dict[str, Any], options: ParseOptions, report: ParseReport
) -> tuple[str, Kind, str | None] | None:
    """(text, kind, forwarded_from) of a message with blank content: a forward, media only, or nothing
    (counted, None)."""
    content = ""
    attachments, stickers = m.get("attachments"), m.get("stickers")
    forwarded_from = None
    forwarded = m.get("forwardedMessage")
    if forwarded.__class__ is dict:
        # Newer DCE: a forward has empty content and the original in `forwardedMessage`, without
        # the original author (the export does not say who wrote it).
        inner = forwarded.get("content")
        content = inner if inner.__class__ is str else ""
        attachments, stickers = forwarded.get("attachments"), forwarded.get("stickers")
        forwarded_from = "unknown"
    media = _media_kinds(attachments, stickers)
    if content.strip():
        return _with_media(content, media, options, report), Kind.TEXT, forwarded_from
    if media:
        if media_message(options, report, media[0]) is None:
            return None
        text = "\n".join(placeholder(k) for k in media)
        return text, Kind.STICKER if media == ["sticker"] else Kind.MEDIA, forwarded_from
    report.skip("empty message (embed only)" if m.get("embeds") else "empty message")
    return None


def _reply_to(reference: Any, mtype: str, channel_id: str) -> str | None:
    """The replied-to message id. A `Reply` always replies; a `Default` message with a reference
    to the same channel is a reply in some re-saved exports, while one pointing elsewhere is a
    crosspost from a followed channel. Forwards (reference.type "Forward") are not replies."""
    if not isinstance(reference, dict) or reference.get("type") not in (None, "Default"):
        return None
    ref_id = _text_id(reference.get("messageId"))
    ref_channel = _text_id(reference.get("channelId")) or channel_id
    if ref_id is None or (mtype not in _REPLY_TYPES and ref_channel != channel_id):
        return None
    return f"{ref_channel}:{ref_id}"


def _skip_reason(mtype: str) -> str:
    if mtype in _COMMAND_TYPES:
        return "bot command"
    reason = _SERVICE_REASONS.get(mtype)
    if reason is None:
        words = _CAMEL.sub(" ", mtype).lower().strip()[:40]
        reason = f"type {words}" if mtype.isdigit() else words or "unknown type"
    return f"service message ({reason})"


def _text_id(value: Any) -> str | None:
    """Ids are strings in DCE; accept ints from re-saved files, reject anything else or empty."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _timestamp(value: Any, zone: _Zone) -> datetime | None:
    """ISO 8601 with any offset, "Z", 0-7 fractional digits; naive times are in options.timezone."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone.get())
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _media_kinds(attachments: Any, stickers: Any) -> list[str]:
    """Placeholder kinds for attachments (by file extension) and stickers, deduplicated, in order."""
    kinds: list[str] = []
    if isinstance(attachments, list):
        for attachment in attachments:
            kind = _attachment_kind(attachment)
            if kind not in kinds:
                kinds.append(kind)
    if isinstance(stickers, list) and stickers and "sticker" not in kinds:
        kinds.append("sticker")
    return kinds


def _attachment_kind(attachment: Any) -> str:
    name = ""
    if isinstance(attachment, dict):
        for key in ("fileName", "url"):
            value = attachment.get(key)
            if isinstance(value, str) and value:
                name = value
                break
    elif isinstance(attachment, str):
        name = attachment
    path = name.replace("\\", "/").split("?", 1)[0]
    base = path.rsplit("/", 1)[-1]
    if not base or base == ".":  # a trailing "/" or "/.": the last real part, as PurePosixPath sees it
        base = PurePosixPath(path).name
    base = base.lower()
    ext = base.rsplit(".", 1)[-1] if "." in base else ""
    if base.startswith("voice-message") and ext in _AUDIO_EXT:
        return "voice message"
    if ext in _IMAGE_EXT:
        return "image"
    if ext in _VIDEO_EXT:
        return "video"
    if ext in _AUDIO_EXT:
        return "audio"
    return "file"

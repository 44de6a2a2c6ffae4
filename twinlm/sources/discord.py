"""DiscordChatExporter (DCE) JSON: one file per channel, DM, group DM or thread.

Shape (all DCE versions since JSON export exists)::

    {"guild": {"id", "name", ...}, "channel": {"id", "type", "categoryId", "category", "name", ...},
     "dateRange": {...}, "exportedAt": "...", "messages": [{...}, ...], "messageCount": N}

The header comes before the (possibly huge) messages array, so it is read from the event stream
first and the messages are then streamed one by one. Older DCE versions lack `timestampEdited`,
`callEndedTimestamp`, `categoryId`/`category`, `author.nickname`, sometimes `author.isBot`, and
write local-time offsets ("+02:00"); newer ones add `author.roles`, `inlineEmojis`,
`interaction`, `components`, `forwardedMessage` and `reference.type`.

Message ids are Discord snowflakes, namespaced by channel ("<channel id>:<message id>") so that
anonymised or hand-edited exports that reuse ids across files cannot collide in the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport
from twinlm.sources._common import (
    clip,
    in_slices,
    json_events,
    json_items,
    media_message,
    open_json,
    placeholder,
)

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

_MAX_DEPTH_CHARS = 2_000  # an event prefix this long is absurd nesting, not an export
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_HEADER_FIELDS = frozenset(
    {
        "guild.id",
        "guild.name",
        "channel.id",
        "channel.type",
        "channel.categoryId",
        "channel.category",
        "channel.name",
    }
)


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
    try:
        channel = _read_header(path)
        template = Conversation(
            source=FORMAT,
            id=channel.id,
            title=channel.title,
            kind="chat",
            messages=(),
            platform_detail=channel.detail,
        )
        yield from in_slices(template, _messages(path, channel.id, options, report), options, report)
    except UnicodeDecodeError as e:
        raise ExportError(path, "not UTF-8 text", f"byte {e.start}") from None
    except RecursionError:
        raise ExportError(path, "JSON nested too deeply") from None


def _read_header(path: Path) -> _Channel:
    """Read `guild` and `channel` from the event stream, stopping where the messages begin."""
    fields: dict[str, str] = {}
    done: set[str] = set()
    saw_messages = False
    with open_json(path) as f:
        events = json_events(path, f)
        first = next(events, None)
        if first is None or first[1] != "start_map":
            raise ExportError(path, "not a DiscordChatExporter export: top level is not an object", "byte 0")
        for prefix, event, value in events:
            if len(prefix) > _MAX_DEPTH_CHARS:
                raise ExportError(path, "JSON nested too deeply", f"byte {f.tell()}")
            if prefix in _HEADER_FIELDS:
                if event in ("string", "number", "boolean"):
                    fields[prefix] = str(value)
            elif event == "end_map" and prefix in ("guild", "channel"):
                done.add(prefix)
            elif prefix == "messages" and event == "start_array":
                saw_messages = True
            elif prefix == "" and event == "end_map":
                break
            if saw_messages and len(done) == 2:
                break
    if "channel" not in done or not fields.get("channel.id"):
        raise ExportError(path, "not a DiscordChatExporter export: no channel header with an id")
    if not saw_messages:
        raise ExportError(path, "not a DiscordChatExporter export: no messages array")
    return _describe(fields)


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


def _messages(path: Path, channel_id: str, options: ParseOptions, report: ParseReport) -> Iterator[Message]:
    zone = _Zone(path, options)
    with open_json(path) as f:
        for raw in json_items(path, f, "messages.item"):
            try:
                message = _message(raw, channel_id, options, report, zone)
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
                report.skip("malformed message")
                continue
            if message is not None:
                yield message


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


def _message(
    raw: Any, channel_id: str, options: ParseOptions, report: ParseReport, zone: _Zone
) -> Message | None:
    if not isinstance(raw, dict):
        report.skip("malformed message")
        return None
    mtype = raw.get("type")
    mtype = "Default" if mtype is None else str(mtype)
    if mtype not in _USER_TYPES:
        report.skip(_skip_reason(mtype))
        return None
    author = raw.get("author")
    if not isinstance(author, dict):
        report.skip("malformed message")
        return None
    if author.get("isBot") is True or isinstance(raw.get("interaction"), dict):
        report.skip("bot author")
        return None
    native_id = _text_id(raw.get("id"))
    author_id = _text_id(author.get("id"))
    if native_id is None or author_id is None:
        report.skip("malformed message")
        return None
    timestamp = _timestamp(raw.get("timestamp"), zone)
    if timestamp is None:
        report.skip("malformed message (timestamp)")
        return None

    content = raw.get("content")
    content = content if isinstance(content, str) else ""
    attachments = raw.get("attachments")
    stickers = raw.get("stickers")
    forwarded_from: str | None = None
    forwarded = raw.get("forwardedMessage")
    if not content.strip() and isinstance(forwarded, dict):
        # Newer DCE: a forward has empty content and the original in `forwardedMessage`, without
        # the original author (the export does not say who wrote it).
        inner = forwarded.get("content")
        content = inner if isinstance(inner, str) else ""
        attachments = forwarded.get("attachments")
        stickers = forwarded.get("stickers")
        forwarded_from = "unknown"
    media = _media_kinds(attachments, stickers)

    if content.strip():
        text = content
        if media:
            if options.media == "drop":
                report.note("media placeholder dropped from a text message")
            else:
                text = "\n".join([content, *(placeholder(k) for k in media)])
        kind = Kind.TEXT
    elif media:
        if media_message(options, report, media[0]) is None:
            return None
        text = "\n".join(placeholder(k) for k in media)
        kind = Kind.STICKER if media == ["sticker"] else Kind.MEDIA
    else:
        embeds = raw.get("embeds")
        report.skip("empty message (embed only)" if embeds else "empty message")
        return None

    reply_to = _reply_to(raw.get("reference"), mtype, channel_id)

    name = author.get("nickname") or author.get("name") or author_id
    return Message(
        id=f"{channel_id}:{native_id}",
        author_id=author_id,
        author_name=str(name),
        timestamp=timestamp,
        text=clip(text, options, report),
        kind=kind,
        reply_to=reply_to,
        forwarded_from=forwarded_from,
        edited=bool(raw.get("timestampEdited")),
    )


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
    base = PurePosixPath(name.replace("\\", "/").split("?", 1)[0]).name.lower()
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

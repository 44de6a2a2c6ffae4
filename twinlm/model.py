"""The one data model every source is converted into.

A `Conversation` is a thread of `Message`s from one source (a Discord channel, a Telegram chat, a
ChatGPT conversation, a document). Parsers stream: a large chat may be yielded as several
`Conversation` values with the same `(source, id)`, each carrying the next slice of messages in
order; consumers (the corpus) merge them by key. Plain frozen dataclasses with slots, not pydantic:
ingest builds millions of these and validation is done by the parsers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal


class Kind(StrEnum):
    """What a message carries. Everything but TEXT is a placeholder text such as "[photo]"."""

    TEXT = "text"
    MEDIA = "media"  # photo, video, voice, file, GIF...: text is a placeholder like "[photo]"
    STICKER = "sticker"  # text is the sticker's emoji or "[sticker]"
    DOCUMENT = "document"  # the full text of a document (chunked at build time)


class Role(StrEnum):
    """The author's role: assistant-style sources use all four, group chats only PARTICIPANT."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"
    PARTICIPANT = "participant"


ConversationKind = Literal["chat", "assistant", "document", "dataset"]


@dataclass(frozen=True, slots=True)
class Message:
    id: str  # native id, unique within the source (stable across re-exports)
    author_id: str  # platform id of the author when there is one, else the display name
    author_name: str  # display name as the export shows it
    timestamp: datetime | None  # UTC, timezone-aware; None only where the export has no time
    text: str
    kind: Kind = Kind.TEXT
    role: Role = Role.PARTICIPANT
    reply_to: str | None = None  # native id of the message replied to
    forwarded_from: str | None = None  # original author's name for forwarded messages
    edited: bool = False


@dataclass(frozen=True, slots=True)
class Conversation:
    source: str  # format name: "chatgpt", "discord", "telegram", ...
    id: str  # native id, unique within the source (stable across re-exports)
    title: str
    kind: ConversationKind
    messages: tuple[Message, ...]
    participants: tuple[str, ...] = ()  # display names, when the export lists them
    system_prompt: str | None = None  # e.g. ChatGPT custom instructions
    platform_detail: str = ""  # e.g. "guild: X / #general", "group DM", "personal_chat"
    owner_id: str | None = None  # author_id of whoever made the export, when the export says (Telegram)
    # (author id, another name of that account) the export shows beside the display names, e.g.
    # Discord's username beside a server nickname: kept by the corpus so an alias can match either.
    author_names: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ParseOptions:
    """How parsers treat what is not plain text. Mirrors `IngestConfig` in the config."""

    media: Literal["placeholder", "drop"] = "placeholder"
    max_message_chars: int = 20_000  # longer messages are cut there (counted)
    timezone: str | None = None  # IANA name for exports with local times; None = this machine's
    whatsapp_date_order: Literal["auto", "day_first", "month_first"] = "auto"
    batch_size: int = 5_000  # messages per yielded Conversation slice


@dataclass(slots=True)
class ParseReport:
    """What a parser read and what it left out, by reason. Reasons are short lowercase phrases."""

    conversations: int = 0
    messages: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # kept but changed: truncated, repaired...

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] += n

    def merge(self, other: ParseReport) -> None:
        self.conversations += other.conversations
        self.messages += other.messages
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)


def utc_from_ms(ms: int | float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def utc_from_s(seconds: int | float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)

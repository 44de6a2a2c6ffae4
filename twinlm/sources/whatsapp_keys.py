"""Ids for WhatsApp messages and chats, which the export does not have: built from what survives a re-export.

A re-export of the same chat may come from another phone (iOS writes seconds, Android minutes; another
address book names the contacts differently), in another time zone (every local time moves by the
same whole number of quarter hours), with media (file names instead of "<Media omitted>"), under
another file name ("Alice 2.zip", a loose `_chat.txt`), or after a message was edited. So:

- a message id is stable_id(chat key, UTC minute, key text, occurrence): the minute, not the second
  (the coarser of the two layouts); the text without edit marker, media placeholder lines and bidi
  marks; no author name; the occurrence counts equal (minute, key text) pairs in file order, so two
  "ok" in one minute differ and a message deleted elsewhere changes no other id.
- a chat key comes from the chat's first messages (`ANCHOR` of them): their key texts, the minutes
  between them, and the first minute modulo 15 (every time zone is a whole number of quarter hours
  from UTC), never from the file name. Two chats that start alike (same texts, same gaps, same
  quarter-hour phase) share a key: rare for chats of more than a message or two.

The ingest layer (`twinlm.corpus.rematch`) compares a new export's first messages with those of the chats
already in the corpus: it re-keys an export made in another time zone onto the earlier one, and
an export whose chat grew past `ANCHOR` messages onto the chat it continues.
"""

from __future__ import annotations

from datetime import datetime

from twinlm.sources._common import placeholder, stable_id

ANCHOR = 5
MINUTE_MS = 60_000
_PLACEHOLDER_LINES = frozenset(
    placeholder(what)
    for what in ("media", "photo", "video", "audio", "voice message", "sticker", "GIF", "file", "contact")
)
_BIDI = str.maketrans(dict.fromkeys("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def key_text(text: str) -> str:
    """The part of a message's text that every export of it writes alike."""
    if "[" in text:
        text = "\n".join(line for line in text.split("\n") if line.strip() not in _PLACEHOLDER_LINES)
    if not text.isascii():  # bidi marks are not ASCII; most texts are, and skip the translate
        text = text.translate(_BIDI)
    return " ".join(text.split())


def ms(when: datetime) -> int:
    """Milliseconds since the epoch, exactly as the corpus stores a message's time."""
    return int(when.timestamp() * 1000)


def chat_key(first: list[tuple[int, str]]) -> str | None:
    """The chat key from its first messages as (UTC minute, key text); None without messages."""
    if not first:
        return None
    start = first[0][0]
    parts: list[object] = [start % 15]
    for minute, text in first[:ANCHOR]:
        parts += (minute - start, text)
    return "chat-" + stable_id("whatsapp chat", *parts)


class MessageKeys:
    """Message ids for one chat, in file order. `offset_minutes` moves every time first (an export made
    in another time zone, re-aligned onto the earlier one)."""

    def __init__(self, chat: str, offset_minutes: int = 0) -> None:
        self.chat = chat
        self.offset = offset_minutes
        self.counts: dict[tuple[int, str], int] = {}
        self.newest = 0
        self.limit = 8192

    def __call__(self, ts_ms: int, text: str) -> str:
        minute = ts_ms // MINUTE_MS + self.offset
        if minute > self.newest:
            self.newest = minute
            if len(self.counts) > self.limit:  # forget minutes two days behind: memory stays flat
                horizon = minute - 2 * 1440
                self.counts = {k: n for k, n in self.counts.items() if k[0] >= horizon}
                self.limit = max(8192, 2 * len(self.counts))
        key = (minute, key_text(text))
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        return stable_id(self.chat, minute, key[1], n)
